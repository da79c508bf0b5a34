//! Memory, the thread version: threads share the memory of their process.
//!
//! Every thread of a process runs in one address space: a global, a heap value or a buffer is
//! the same memory for all of them, at the same address. A write by one thread is there for
//! the others to read (with the synchronisation that makes it visible: here `join`), costs no
//! page fault when the page is already present, and a new thread adds only its stack and its
//! share of the allocator, not page tables for everything. Compare with process.rs: the same
//! functions in the same order, and only the lines marked "thread:" differ in mechanism.
//!
//! See also: pthreads(7), clone(2) (CLONE_VM), pthread_create(3), mallopt(3) (arenas per
//! thread), proc_pid_smaps(5); TLPI 29 (threads: introduction).

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use harness::stats;
use harness::{Ctx, deliver};

use crate::pages::{self, Added, BEFORE, Buffer, Gate, OwnPage, Pass, Usage};
use crate::{CowCopy, Footprint, PrivateWrite, SEGMENT_VALUE, SharedSegment};

/// A thread writes a global and a heap value; the thread that started it looks at both
/// afterwards.
pub fn private_write() -> Result<PrivateWrite> {
    // The observer sets both values; its writes also make both pages present and writable.
    pages::GLOBAL.value.store(BEFORE, Ordering::Relaxed);
    let heap = Box::new(OwnPage::new(BEFORE));
    // thread: the writer is a thread of this process: the same pages, already writable.
    let writer = thread::scope(|s| s.spawn(|| pages::write_both(&heap)).join())
        .map_err(|_| anyhow!("the writing thread panicked"))??;
    Ok(PrivateWrite {
        writer,
        observer_addresses: [pages::GLOBAL.address(), heap.address()],
        observer_saw: [pages::GLOBAL.value.load(Ordering::Relaxed), heap.value.load(Ordering::Relaxed)],
    })
}

/// A second thread writes a plain value of this process.
pub fn shared_segment() -> Result<SharedSegment> {
    // thread: no setup at all: every value of the process is already shared.
    let value = AtomicU64::new(0);
    let written = thread::scope(|s| {
        s.spawn(|| {
            value.store(SEGMENT_VALUE, Ordering::Release);
            SEGMENT_VALUE
        })
        .join()
    })
    .map_err(|_| anyhow!("the writing thread panicked"))?;
    Ok(SharedSegment { written, seen: value.load(Ordering::Acquire), segment: None })
}

/// A thread writes one byte to every page of a buffer the observer filled; the pages are
/// shared and already writable, so nothing is copied.
pub fn cow_copy(ctx: &Ctx, bytes: usize) -> Result<CowCopy> {
    let buffer = Buffer::filled(bytes)?;
    let mut passes: Vec<Pass> = Vec::new();
    let ns_per_page = stats::repeat(ctx.warmup(), ctx.runs(), || {
        // thread: the writer shares this address space; spawning it is setup, outside the
        // timed loop (the thread times only its own loop).
        let pass = thread::scope(|s| s.spawn(|| buffer.write_every_page()).join())
            .map_err(|_| anyhow!("the writing thread panicked"))??;
        passes.push(pass);
        Ok(pass.took_ns as f64 / buffer.pages() as f64)
    })?;
    // thread: every pass wrote the one shared buffer, so pass k found k-1 passes before it.
    let checksums_ok =
        passes.iter().enumerate().all(|(k, p)| p.checksum == pages::expected_checksum(buffer.pages(), k as u64 + 1));
    Ok(CowCopy::from_passes(ns_per_page, &buffer, &passes, ctx.runs(), checksums_ok))
}

/// N idle worker threads: what they add to the machine's memory, per worker.
pub fn footprint(ctx: &Ctx, workers: u64) -> Result<Footprint> {
    let args = [workers.to_string(), ctx.deadline().as_millis().to_string()];
    crate::footprint_runs(ctx, "footprint-threads", &args)
}

/// Runs in a fresh copy of this program: spawn N worker threads, let each touch a little
/// memory and go idle, then see how much this one process grew.
pub fn footprint_child(args: &[String]) -> Result<()> {
    let [workers, deadline_ms] = args else { bail!("usage: footprint-threads WORKERS DEADLINE_MS") };
    let workers: usize = workers.parse().context("WORKERS")?;
    let deadline = Duration::from_millis(deadline_ms.parse().context("DEADLINE_MS")?);
    Usage::of_self()?; // the first read allocates what later reads reuse
    let before = Usage::of_self()?;
    let gate = Gate::new()?;
    let me = procfs::process::Process::myself().context("opening /proc/self")?;
    let measured = thread::scope(|s| {
        let mut children = Vec::with_capacity(workers);
        for i in 0..workers {
            // thread: each worker is a thread of this process: a stack of its own, the rest
            // shared, and no page tables but those its new stack needs.
            let spawned = thread::Builder::new().name(format!("worker {i}")).spawn_scoped(s, || gate.work_then_idle());
            match spawned {
                Ok(h) => children.push(h),
                Err(e) => {
                    gate.release();
                    return Err(e).context("spawning a worker thread");
                }
            }
        }
        let idle = || -> Result<u64> {
            let mut states = Vec::new();
            for task in me.tasks().context("listing /proc/self/task")?.flatten() {
                if task.tid != me.pid {
                    states.push(task.stat().with_context(|| format!("reading the stat of task {}", task.tid))?.state);
                }
            }
            Ok(pages::sleeping(states.into_iter()))
        };
        let measured = gate.wait_ready(workers, deadline).and_then(|()| {
            pages::wait_until_idle(workers as u64, deadline, idle)?;
            // thread: the workers' memory is this process's memory.
            let after = Usage::of(&me)?;
            Ok(Added { workers: workers as u64, idle_when_measured: idle()?, usage: after - before })
        });
        gate.release();
        for h in children {
            h.join().map_err(|_| anyhow!("a worker thread panicked"))?.context("a worker thread")?;
        }
        measured
    })?;
    deliver("added", &measured);
    Ok(())
}
