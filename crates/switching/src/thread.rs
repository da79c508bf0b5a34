//! Switching between two threads of one process: each pass of the token switches the CPU
//! between two tasks that share one address space, so the kernel keeps the page tables (no
//! CR3 write) and the TLB as they are, and changes only registers, stack and kernel state.
//! The textbook says this makes a thread switch faster than a process switch; the numbers
//! this file produces say by how much, on this machine.
//!
//! The partner is a second thread; the token travels over two pipes, or through a futex word
//! both threads can see. Compare with process.rs: the same functions in the same order, and
//! only the lines marked "thread:" differ in mechanism.
//!
//! See also: pingpong.rs (the loop both sides time), perf-bench(1) `sched pipe -T`,
//! futex(2), pipe(7), pthreads(7).

use std::fs::File;
use std::sync::atomic::AtomicU32;

use anyhow::{Context, Result, anyhow};
use harness::Ctx;
use harness::cpu::Pinned;
use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use crate::pingpong::{self, Alone, Baseline, Driver, Measured, Outcome, Pipes, Placement, TaskEvidence};

/// Ping-pong over two pipes with a second thread, each task touching `working_set` bytes of
/// its own between passes.
pub fn pipe_pingpong(ctx: &Ctx, place: Placement, working_set: usize) -> Result<Outcome> {
    let _pinned = Pinned::to(place.driver)?;
    let (ping_rx, ping_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let (pong_rx, pong_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    std::thread::scope(|s| {
        // thread: a new task in this address space; a switch to it keeps CR3 and the TLB.
        let partner = s.spawn(move || {
            let _pinned = Pinned::to(place.partner)?;
            // thread: descriptors belong to the process, so the thread just takes its ends.
            let mut link = Pipes { rx: File::from(ping_rx), tx: File::from(pong_tx) };
            pingpong::serve(&mut link, place.partner, working_set)
        });
        let mut link = Pipes { rx: File::from(pong_rx), tx: File::from(ping_tx) };
        let measured =
            link.wait_ready(ctx.deadline()).and_then(|()| pingpong::drive(&mut link, ctx, place.driver, working_set));
        drop(link);
        finish(partner.join(), measured)
    })
}

/// Ping-pong through a futex word with a second thread, both on one CPU.
pub fn futex_pingpong(ctx: &Ctx, place: Placement) -> Result<Outcome> {
    let _pinned = Pinned::to(place.driver)?;
    // thread: any memory of the process is shared; a word on this stack will do.
    let word = AtomicU32::new(pingpong::NOT_READY);
    std::thread::scope(|s| {
        let partner = s.spawn(|| {
            let _pinned = Pinned::to(place.partner)?;
            // thread: the _PRIVATE ops, as every thread library uses them (glibc's pthread
            // mutexes, Rust's std::sync): the waiters are keyed by (address space, address),
            // which skips the lookup of the physical page that the shared ops need. That
            // lookup is part of what a process pays, so we let each side pay its own way.
            let mut link = pingpong::Futex::partner(&word, pingpong::PRIVATE, ctx.deadline());
            pingpong::serve(&mut link, place.partner, 0)
        });
        let mut link = pingpong::Futex::driver(&word, pingpong::PRIVATE, ctx.deadline());
        let measured = link.wait_ready(ctx.deadline()).and_then(|()| pingpong::drive(&mut link, ctx, place.driver, 0));
        drop(link);
        finish(partner.join(), measured)
    })
}

/// A baseline (no switch) measured in a thread of its own.
pub fn alone(ctx: &Ctx, cpu: usize, what: Baseline) -> Result<Alone> {
    // thread: the lone task is a thread of this process.
    std::thread::scope(|s| {
        s.spawn(|| {
            let _pinned = Pinned::to(cpu)?;
            pingpong::alone(ctx, cpu, what)
        })
        .join()
        .map_err(|_| anyhow!("the measuring thread panicked"))?
    })
}

/// Joins the partner and its evidence to the driver's numbers.
fn finish(joined: std::thread::Result<Result<TaskEvidence>>, measured: Result<Measured>) -> Result<Outcome> {
    let partner = joined.map_err(|_| anyhow!("the partner thread panicked"))?;
    let measured = measured?;
    let partner = partner.context("the partner thread")?;
    Ok(Outcome { measured, partner })
}
