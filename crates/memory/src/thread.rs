//! Memory, the thread version: threads share the memory of their process.
//!
//! Every thread of a process runs in one address space: a global, a heap value or a buffer is
//! the same memory for all of them, at the same address. A write by one thread is there for
//! the others to read (with the synchronisation that makes it visible: an atomic store and
//! load, or `join`), costs no
//! page fault when the page is already present, and a new thread adds only its stack and its
//! share of the allocator, not page tables for everything. Compare with process.rs: the same
//! functions in the same order, and only the lines marked "thread:" differ in mechanism.
//!
//! See also: pthreads(7), clone(2) (CLONE_VM), pthread_create(3), mallopt(3) (arenas per
//! thread), proc_pid_smaps(5); TLPI 29 (threads: introduction).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use harness::deliver;

use crate::pages::{self, Added, BEFORE, Buffer, Gate, Kernel, OwnPage, Pass, Usage};
use crate::{PrivateWrite, SEGMENT_VALUE, SharedSegment};
use harness::poll::poll_until;

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

/// A second thread writes a plain value of this process and waits until the first, still
/// running beside it, has seen it.
pub fn shared_segment(deadline: Duration) -> Result<SharedSegment> {
    // thread: no setup at all: every value of the process is already shared.
    let value = AtomicU64::new(0);
    let acknowledged = AtomicBool::new(false);
    thread::scope(|s| {
        let writer = s.spawn(|| {
            value.store(SEGMENT_VALUE, Ordering::Release);
            // The writer stays until its value has been seen, so that the observer's read
            // happens while both run, not after a join that would synchronise them anyway.
            poll_until(deadline, "the observer to see the value", Duration::ZERO, || {
                Ok(acknowledged.load(Ordering::Acquire).then_some(()))
            })
        });
        // thread: the observer reads the very same value, with no copy and no message.
        let seen = poll_until(deadline, "the writer's value", Duration::ZERO, || {
            let v = value.load(Ordering::Acquire);
            Ok((v != 0).then_some(v))
        });
        let writer_was_running = !writer.is_finished();
        acknowledged.store(true, Ordering::Release);
        writer.join().map_err(|_| anyhow!("the writing thread panicked"))?.context("the writing thread")?;
        let seen = seen?;
        Ok(SharedSegment { seen, seen_before_join: Some(writer_was_running), segment: None })
    })
}

/// The buffer the thread side's writers write: filled by its owner, so that every page is
/// present and private.
pub fn cow_copy_buffer(bytes: usize) -> Result<Buffer> {
    // thread: the buffer is kept out of any fork: one would write-protect its pages, and our
    // next pass would fault on every page because of a fork, not because of a thread. (The row
    // runs the thread side in a process of its own, which does not fork; this keeps the
    // function right wherever it runs.)
    Buffer::filled(bytes)?.kept_from_forks()
}

/// One run: a thread writes one byte to every page of a buffer the observer filled, `passes`
/// times over; the pages are shared and already writable, so nothing is copied.
pub fn cow_copy_pass(buffer: &Buffer, passes: u64) -> Result<Pass> {
    // thread: the writer shares this address space; spawning it is setup, outside the timed
    // loop (the thread times only its own loop). No write copies anything, so a run is as
    // many passes as fill its budget.
    thread::scope(|s| s.spawn(|| buffer.write_every_page_times(passes)).join())
        .map_err(|_| anyhow!("the writing thread panicked"))?
}

/// One run of N idle worker threads, in a fresh host: what they add, per worker.
pub fn footprint(workers: u64, deadline: Duration) -> Result<Added> {
    crate::footprint_host("footprint-threads", workers, deadline)
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
    let (kernel_before, kernel_steady) = Kernel::steady()?;
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
            let kernel = Kernel::now()? - kernel_before;
            Ok(Added {
                workers: workers as u64,
                idle_when_measured: idle()?,
                usage: after - before,
                kernel,
                kernel_steady,
            })
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
