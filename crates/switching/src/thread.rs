//! Switching between two threads of one process: each pass of the token switches the CPU
//! between two tasks that share one address space, so the kernel keeps the page tables (no
//! CR3 write) and the TLB as they are, and changes only registers, stack and kernel state.
//! The textbook says this makes a thread switch faster than a process switch; the numbers
//! this file produces say by how much, on this machine.
//!
//! The partner is a second thread; the token travels over two pipes, or through a futex word
//! both threads can see. Each function is one timed run; the row runs it in turns with the
//! same function of process.rs. Compare with process.rs: the same functions in the same
//! order, and only the lines marked "thread:" differ in mechanism.
//!
//! See also: pingpong.rs (the loop both sides time), perf-bench(1) `sched pipe -T`,
//! futex(2), pipe(7), pthreads(7).

use std::fs::File;

use anyhow::{Context, Result, anyhow};
use harness::Ctx;
use harness::cpu::{Pinned, Placement};
use harness::mem::{Mapping, Sharing};
use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use crate::pingpong::{
    self, Alone, Baseline, Driver, FutexOps, Outcome, Pipes, Run, Size, TaskEvidence, WorkingSet, WorkingSets,
};

/// One run of a ping-pong over two pipes with a second thread, each task touching
/// its own buffer of `sets` between passes.
pub fn pipe_pingpong(ctx: &Ctx, place: Placement, sets: &WorkingSets, size: Size) -> Result<Outcome> {
    let _pinned = Pinned::to(place.driver)?;
    let (ping_rx, ping_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let (pong_rx, pong_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    std::thread::scope(|s| {
        // thread: a new task in this address space; a switch to it keeps CR3 and the TLB.
        // It shares its buffer as it shares all memory: the same pages as the process side's
        // partner reads.
        let partner = s.spawn(move || {
            let _pinned = Pinned::to(place.partner)?;
            // thread: descriptors belong to the process, so the thread just takes its ends.
            let mut link = Pipes::new(File::from(ping_rx), File::from(pong_tx));
            pingpong::serve(&mut link, place.partner, &sets.partner)
        });
        let mut link = Pipes::new(File::from(pong_rx), File::from(ping_tx));
        let run =
            link.wait_ready(ctx.deadline()).and_then(|()| pingpong::drive(&mut link, size, place.driver, &sets.driver));
        drop(link);
        finish(partner.join(), run)
    })
}

/// One run of a ping-pong through a futex word with a second thread.
pub fn futex_pingpong(ctx: &Ctx, place: Placement, ops: FutexOps, size: Size) -> Result<Outcome> {
    let _pinned = Pinned::to(place.driver)?;
    // thread: any memory of the process is shared; the word sits in the same kind of page as
    // the process side's (MAP_SHARED), so that with the same ops only the address space differs.
    let page = Mapping::anonymous(4, Sharing::Shared)?;
    let word = page.word(0)?;
    word.store(pingpong::NOT_READY, std::sync::atomic::Ordering::Release);
    std::thread::scope(|s| {
        let partner = s.spawn(|| {
            let _pinned = Pinned::to(place.partner)?;
            let mut link = pingpong::Futex::partner(word, ops, ctx.deadline());
            pingpong::serve(&mut link, place.partner, &WorkingSet::NONE)
        });
        let mut link = pingpong::Futex::driver(word, ops, ctx.deadline());
        let run = link
            .wait_ready(ctx.deadline())
            .and_then(|()| pingpong::drive(&mut link, size, place.driver, &WorkingSet::NONE));
        drop(link);
        finish(partner.join(), run)
    })
}

/// One run of a baseline (no switch) in a thread of its own.
pub fn alone(_ctx: &Ctx, cpu: usize, what: Baseline, size: Size) -> Result<Alone> {
    // thread: the lone task is a thread of this process.
    std::thread::scope(|s| {
        s.spawn(|| {
            let _pinned = Pinned::to(cpu)?;
            pingpong::alone(size, cpu, what)
        })
        .join()
        .map_err(|_| anyhow!("the measuring thread panicked"))?
    })
}

/// Joins the partner and its evidence to the driver's run.
fn finish(joined: std::thread::Result<Result<TaskEvidence>>, run: Result<Run>) -> Result<Outcome> {
    let partner = joined.map_err(|_| anyhow!("the partner thread panicked"))?;
    let run = run?;
    let partner = partner.context("the partner thread")?;
    Ok(Outcome { run, partner })
}
