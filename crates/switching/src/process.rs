//! Switching between two processes: each pass of the token switches the CPU from one address
//! space to another, so the kernel loads the other process's page tables (a CR3 write) and,
//! without PCID, loses the TLB. The textbook says this makes a process switch slower than a
//! thread switch; the numbers this file produces say by how much, on this machine.
//!
//! The partner is a forked child; the token travels over two pipes, or through a futex word
//! in memory that both processes map. Each function is one timed run; the row runs it in
//! turns with the same function of thread.rs. Compare with thread.rs: the same functions in
//! the same order, and only the lines marked "process:" differ in mechanism.
//!
//! See also: pingpong.rs (the loop both sides time), perf-bench(1) `sched pipe`, lmbench's
//! lat_ctx, futex(2), pipe(7).

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, ensure};
use harness::cpu::{Pinned, Placement};
use harness::mem::{Mapping, Sharing};
use harness::{Ctx, deliver, fork_child, fork_child_keeping};
use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use crate::pingpong::{
    self, Alone, Baseline, Driver, FutexOps, Outcome, Pipes, Run, Size, TaskEvidence, WorkingSet, WorkingSets,
};

/// One run of a ping-pong over two pipes with a forked child, each task touching
/// its own buffer of `sets` between passes.
pub fn pipe_pingpong(ctx: &Ctx, place: Placement, sets: &WorkingSets, size: Size) -> Result<Outcome> {
    pipe_pingpong_of(ctx, place, sets, size, false)
}

/// The same with no buffers, but the driver and its partner are each a process that also has
/// a second thread that only waits: two address spaces, two multi-threaded processes. The
/// check of how much of a gap between the sides comes with being a multi-threaded process at
/// all (thread.rs has no counterpart). ns per switch.
pub fn pipe_pingpong_beside_idle_threads(ctx: &Ctx, place: Placement, size: Size) -> Result<f64> {
    // The driver moves into a child of its own, so that this process stays single-threaded
    // for its later forks; that child forks the partner before it starts its second thread.
    let driver = fork_child(|| {
        let outcome = pipe_pingpong_of(ctx, place, &WorkingSets::NONE, size, true)?;
        deliver("ns_per_switch", &outcome.run.ns_per_switch);
        Ok(())
    })?;
    let exit = driver.wait(ctx.deadline())?;
    exit.check("the driving process")?;
    exit.received_one("ns_per_switch")
}

fn pipe_pingpong_of(
    ctx: &Ctx,
    place: Placement,
    sets: &WorkingSets,
    size: Size,
    idle_threads: bool,
) -> Result<Outcome> {
    let _pinned = Pinned::to(place.driver)?;
    let (ping_rx, ping_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let (pong_rx, pong_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let child_ends = [ping_rx.as_raw_fd(), pong_tx.as_raw_fd()];
    // process: a new process with its own address space; every switch to it changes CR3.
    // It inherits its pipe ends through fork(2); our copies close when fork_child returns,
    // so that its death reads as end of file here. It inherits its buffer the same way: the
    // same pages as the thread side's partner touches, read only, so none is copied.
    let child = fork_child_keeping(&child_ends, move || {
        let _pinned = Pinned::to(place.partner)?;
        let _idle = idle_threads.then(idle_thread);
        let mut link = Pipes::new(File::from(ping_rx), File::from(pong_tx));
        let evidence = pingpong::serve(&mut link, place.partner, &sets.partner)?;
        deliver("partner", &evidence);
        Ok(())
    })?;
    // Only once the partner is forked: this process must not fork with a second thread.
    let _idle = idle_threads.then(idle_thread);
    let mut link = Pipes::new(File::from(pong_rx), File::from(ping_tx));
    let run =
        link.wait_ready(ctx.deadline()).and_then(|()| pingpong::drive(&mut link, size, place.driver, &sets.driver));
    drop(link);
    finish(child, ctx, run)
}

/// A second thread that only waits. It never wakes: the process's _exit ends it with the rest.
fn idle_thread() -> std::thread::JoinHandle<()> {
    std::thread::spawn(|| {
        loop {
            std::thread::park()
        }
    })
}

/// One run of a ping-pong through a futex word with a forked child.
pub fn futex_pingpong(ctx: &Ctx, place: Placement, ops: FutexOps, size: Size) -> Result<Outcome> {
    // process: only the shared ops reach a waiter in another address space; the _PRIVATE
    // ones key the wait by this address space and would never wake the child.
    ensure!(!ops.private, "a futex between processes needs the shared ops, not {}", ops.name);
    let _pinned = Pinned::to(place.driver)?;
    // process: the word lives in a MAP_SHARED page mapped before the fork, so parent and child
    // see the same physical memory at the same address.
    let page = Mapping::anonymous(4, Sharing::Shared)?;
    let word = page.word(0)?;
    word.store(pingpong::NOT_READY, std::sync::atomic::Ordering::Release);
    let child = fork_child(|| {
        let _pinned = Pinned::to(place.partner)?;
        let mut link = pingpong::Futex::partner(word, ops, ctx.deadline());
        let evidence = pingpong::serve(&mut link, place.partner, &WorkingSet::NONE)?;
        deliver("partner", &evidence);
        Ok(())
    })?;
    // process: a futex word has no end-of-file either way: should the child die (or hang
    // past the deadline), a watch on it (a process of its own, which shares the page) says
    // GONE in the word, so the driver stops. It ends with the run.
    let run = child.watch(ctx.deadline(), |_| pingpong::Futex::abandon(word, ops)).and_then(|_watch| {
        let mut link = pingpong::Futex::driver(word, ops, ctx.deadline());
        link.wait_ready(ctx.deadline()).and_then(|()| pingpong::drive(&mut link, size, place.driver, &WorkingSet::NONE))
    });
    finish(child, ctx, run)
}

/// One run of a baseline (no switch) in a forked child of its own.
pub fn alone(ctx: &Ctx, cpu: usize, what: Baseline, size: Size) -> Result<Alone> {
    alone_in_child(ctx, cpu, what, size, false)
}

/// The same, in a child that first starts a second thread that only waits, so that its
/// descriptor table is shared, as every thread's is: the check of what makes the pipe
/// baseline differ (thread.rs has no counterpart).
pub fn alone_beside_an_idle_thread(ctx: &Ctx, cpu: usize, what: Baseline, size: Size) -> Result<Alone> {
    alone_in_child(ctx, cpu, what, size, true)
}

fn alone_in_child(ctx: &Ctx, cpu: usize, what: Baseline, size: Size, idle_sibling: bool) -> Result<Alone> {
    // process: the lone task is a process of its own.
    let child = fork_child(|| {
        let _pinned = Pinned::to(cpu)?;
        let _sibling = idle_sibling.then(idle_thread);
        deliver("alone", &pingpong::alone(size, cpu, what)?);
        Ok(())
    })?;
    let exit = child.wait(ctx.deadline())?;
    exit.check("the measuring process")?;
    exit.received_one("alone")
}

/// Waits for the partner (with the deadline) and joins its evidence to the driver's run.
fn finish(child: harness::Child, ctx: &Ctx, run: Result<Run>) -> Result<Outcome> {
    let exit = child.wait(ctx.deadline())?;
    let run = run.with_context(|| format!("the partner process {}", exit.status))?;
    exit.check("the partner process")?;
    let partner: TaskEvidence = exit.received_one("partner")?;
    Ok(Outcome { run, partner })
}
