//! Switching between two processes: each pass of the token switches the CPU from one address
//! space to another, so the kernel loads the other process's page tables (a CR3 write) and,
//! without PCID, loses the TLB. The textbook says this makes a process switch slower than a
//! thread switch; the numbers this file produces say by how much, on this machine.
//!
//! The partner is a forked child; the token travels over two pipes, or through a futex word
//! in memory that both processes map. Compare with thread.rs: the same functions in the same
//! order, and only the lines marked "process:" differ in mechanism.
//!
//! See also: pingpong.rs (the loop both sides time), perf-bench(1) `sched pipe`, lmbench's
//! lat_ctx, futex(2), pipe(7).

use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use anyhow::{Context, Result};
use harness::cpu::Pinned;
use harness::{Ctx, deliver, fork_child, fork_child_keeping};
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};
use nix::unistd::pipe2;

use crate::pingpong::{self, Alone, Baseline, Driver, Measured, Outcome, Pipes, Placement, TaskEvidence};

/// Ping-pong over two pipes with a forked child, each task touching `working_set` bytes of
/// its own between passes.
pub fn pipe_pingpong(ctx: &Ctx, place: Placement, working_set: usize) -> Result<Outcome> {
    let _pinned = Pinned::to(place.driver)?;
    let (ping_rx, ping_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let (pong_rx, pong_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let child_ends = [ping_rx.as_raw_fd(), pong_tx.as_raw_fd()];
    // process: a new process with its own address space; every switch to it changes CR3.
    // It inherits its pipe ends through fork(2); our copies close when fork_child returns,
    // so that its death reads as end of file here.
    let child = fork_child_keeping(&child_ends, move || {
        let _pinned = Pinned::to(place.partner)?;
        let mut link = Pipes { rx: File::from(ping_rx), tx: File::from(pong_tx) };
        let evidence = pingpong::serve(&mut link, place.partner, working_set)?;
        deliver("partner", &evidence);
        Ok(())
    })?;
    let mut link = Pipes { rx: File::from(pong_rx), tx: File::from(ping_tx) };
    let measured =
        link.wait_ready(ctx.deadline()).and_then(|()| pingpong::drive(&mut link, ctx, place.driver, working_set));
    drop(link);
    finish(child, ctx, measured)
}

/// Ping-pong through a futex word with a forked child, both on one CPU.
pub fn futex_pingpong(ctx: &Ctx, place: Placement) -> Result<Outcome> {
    let _pinned = Pinned::to(place.driver)?;
    // process: the word lives in a MAP_SHARED page mapped before the fork, so parent and child
    // see the same physical memory at the same address.
    let shared = SharedWord::new()?;
    let word = shared.word();
    let child = fork_child(|| {
        let _pinned = Pinned::to(place.partner)?;
        // process: the shared futex ops; the _PRIVATE ones key the wait by this address
        // space and would never wake a waiter in another process.
        let mut link = pingpong::Futex::partner(word, pingpong::SHARED, ctx.deadline());
        let evidence = pingpong::serve(&mut link, place.partner, 0)?;
        deliver("partner", &evidence);
        Ok(())
    })?;
    let measured = std::thread::scope(|s| {
        // process: a futex word has no end-of-file either way: should the child die (or hang
        // past the deadline), a watch on it says GONE in the word, so the driver stops.
        let _watch = child.watch(s, ctx.deadline(), |_| pingpong::Futex::abandon(word, pingpong::SHARED))?;
        let mut link = pingpong::Futex::driver(word, pingpong::SHARED, ctx.deadline());
        link.wait_ready(ctx.deadline()).and_then(|()| pingpong::drive(&mut link, ctx, place.driver, 0))
    });
    finish(child, ctx, measured)
}

/// A baseline (no switch) measured in a forked child of its own.
pub fn alone(ctx: &Ctx, cpu: usize, what: Baseline) -> Result<Alone> {
    // process: the lone task is a process of its own.
    let child = fork_child(|| {
        let _pinned = Pinned::to(cpu)?;
        let found = pingpong::alone(ctx, cpu, what)?;
        deliver("samples", &found.summary.samples);
        deliver("task", &found.task);
        Ok(())
    })?;
    let exit = child.wait(ctx.deadline())?;
    exit.check("the measuring process")?;
    let samples: Vec<f64> = exit.received_one("samples")?;
    anyhow::ensure!(!samples.is_empty(), "the measuring process delivered no samples");
    let task: TaskEvidence = exit.received_one("task")?;
    Ok(Alone { summary: harness::stats::summarize(&samples), task })
}

/// Waits for the partner (with the deadline) and joins its evidence to the driver's numbers.
fn finish(child: harness::Child, ctx: &Ctx, measured: Result<Measured>) -> Result<Outcome> {
    let exit = child.wait(ctx.deadline())?;
    let measured = measured.with_context(|| format!("the partner process {}", exit.status))?;
    exit.check("the partner process")?;
    let partner: TaskEvidence = exit.received_one("partner")?;
    Ok(Outcome { measured, partner })
}

/// One page of anonymous MAP_SHARED memory holding the futex word (mmap(2)).
struct SharedWord {
    page: NonNull<libc::c_void>,
}

const PAGE: NonZeroUsize = NonZeroUsize::new(4096).unwrap();

impl SharedWord {
    fn new() -> Result<SharedWord> {
        // Safety: a fresh anonymous mapping at an address the kernel picks (mmap(2)); no
        // existing memory is affected.
        let page =
            unsafe { mmap_anonymous(None, PAGE, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED) }
                .context("mmap MAP_SHARED|MAP_ANONYMOUS")?;
        let shared = SharedWord { page };
        shared.word().store(pingpong::NOT_READY, std::sync::atomic::Ordering::Release);
        Ok(shared)
    }

    fn word(&self) -> &AtomicU32 {
        // Safety: the page is mapped, page-aligned and readable and writable for as long as
        // `self` lives; AtomicU32 has the size and alignment of u32 (std::sync::atomic), and
        // every access to the word goes through atomics.
        unsafe { AtomicU32::from_ptr(self.page.as_ptr().cast()) }
    }
}

impl Drop for SharedWord {
    fn drop(&mut self) {
        // Safety: we mapped exactly this page in `new` and no reference to it outlives `self`
        // (munmap(2)).
        let _ = unsafe { munmap(self.page, PAGE.get()) };
    }
}
