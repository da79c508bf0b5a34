//! Concurrency, the thread version: threads are the lighter way to run work at the same time.
//! A new thread is a clone(2) that shares the address space (CLONE_VM), the descriptors and the
//! signal handlers: the kernel copies no page table, and the cost does not grow with the
//! process's memory. What threads share, they also contend on: every mmap, page fault and
//! munmap of any thread takes the one address space's locks, and a munmap must flush the TLB
//! of every CPU where another thread of the process runs.
//!
//! Workers here are threads of this process; their reports come back through `join`, and
//! shared counters are ordinary atomics. Compare with process.rs: the same functions in the
//! same order, and only the lines marked "thread:" differ in mechanism.
//!
//! Every function takes the same `deadline` as its process.rs twin and ignores it (`_deadline`):
//! a thread cannot be killed at a deadline. There is no safe way to stop one from outside, and
//! a thread cancelled or killed mid-work would leave its locks and memory to the threads that
//! remain. A hung worker here hangs the row until its own end; the row's promise for threads
//! is only that the work is bounded (sized by a time budget) and that the deadline of the
//! process side, and Ctrl-C, still end the row. A thread that must be stoppable has to live in
//! a sacrificial child process (`harness::spawn_sacrificial`), as the stability row does.
//!
//! See also: jobs.rs (the work both sides run), pthread_create(3), clone(2) (CLONE_VM,
//! CLONE_THREAD), futex(2); TLPI 29 (threads) and 28.2 (the clone() system call).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use harness::cpu::Seat;
use harness::stats::monotonic_ns;
use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use crate::Spawned;
use crate::jobs::{self, Churn, Places, Report, Tasks};
use crate::plumbing::wait_for_go;

/// Starts `n` empty workers one after the other and waits for each: a thread that returns at
/// once, and join. Each thread first writes the clock: how long after the call it ran.
pub fn spawn_and_wait(n: u64, _deadline: Duration) -> Result<Spawned> {
    // thread: the worker writes straight into our memory.
    let slot = AtomicU64::new(0);
    let mut first_run_ns = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for _ in 0..n {
        let before = monotonic_ns();
        // thread: clone(2) with CLONE_VM: a new stack and a task, no page table copied.
        thread::scope(|s| s.spawn(|| slot.store(monotonic_ns(), Ordering::Relaxed)).join())
            .map_err(|_| anyhow!("an empty thread panicked"))?;
        first_run_ns.push(slot.load(Ordering::Relaxed).saturating_sub(before));
    }
    let took = start.elapsed();
    Ok(Spawned { took, first_run_ns, child_minor_faults: None, parent_mappings: None })
}

/// The job split over `workers` workers started at once; the clock runs from the first start
/// to the last report back.
pub fn split_job(numbers: u64, workers: u64, _deadline: Duration) -> Result<(Duration, Vec<Report>)> {
    let start = Instant::now();
    let reports = thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            // thread: each worker is a thread of this process; its share comes back through join.
            .map(|k| s.spawn(move || Report::run(jobs::piece(numbers, workers, k))))
            .collect();
        joined(handles)
    })?;
    Ok((start.elapsed(), reports))
}

/// Every task in a worker of its own, `in_flight` at a time.
pub fn worker_per_task(tasks: Tasks, in_flight: u64, _deadline: Duration) -> Result<(Duration, Vec<Report>)> {
    let start = Instant::now();
    let mut reports = Vec::with_capacity(tasks.count as usize);
    let mut next = 0;
    while next < tasks.count {
        let wave = in_flight.min(tasks.count - next);
        reports.extend(thread::scope(|s| {
            // thread: a new thread for every task.
            let handles: Vec<_> = (next..next + wave).map(|i| s.spawn(move || Report::run(tasks.range(i)))).collect();
            joined(handles)
        })?);
        next += wave;
    }
    Ok((start.elapsed(), reports))
}

/// A pool: `workers` workers started once take the tasks one by one from a shared counter.
pub fn pool(tasks: Tasks, workers: u64, _deadline: Duration) -> Result<(Duration, Vec<Report>)> {
    // thread: the counter is an ordinary atomic: all threads see our memory.
    let counter = AtomicU32::new(0);
    let start = Instant::now();
    let reports = thread::scope(|s| {
        let handles: Vec<_> = (0..workers).map(|_| s.spawn(|| jobs::take_tasks(&counter, &tasks))).collect();
        joined(handles)
    })?;
    Ok((start.elapsed(), reports))
}

/// `workers` workers each map, touch and unmap their place's bytes, `ops` times, all
/// starting together.
pub fn churn(workers: u64, places: Places, ops: u64, _deadline: Duration) -> Result<Vec<Churn>> {
    // Closing the write end is the start signal: every reader sees end of file at once.
    let (go_rx, go_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    thread::scope(|s| {
        let handles: Vec<_> = (0..workers as usize)
            // thread: every worker maps and faults in the one address space of this process,
            // its mapping right beside the next worker's.
            .map(|i| {
                let go_rx = &go_rx;
                s.spawn(move || {
                    // A CPU of its own, taken before the start (jobs::churn says why).
                    let seat = Seat::take(i);
                    wait_for_go(go_rx)?;
                    jobs::churn(places.of(i), places.bytes(), seat, ops)
                })
            })
            .collect();
        drop(go_tx);
        joined(handles)
    })
}

fn joined<T>(handles: Vec<thread::ScopedJoinHandle<'_, Result<T>>>) -> Result<Vec<T>> {
    handles.into_iter().map(|h| h.join().map_err(|_| anyhow!("a worker thread panicked"))?).collect()
}

// Threads have no counterpart of process.rs's fork_exec, posix_spawn and command: those start
// another program, which only a process can be.
