//! Concurrency, the process version: processes run at the same time as well as threads do,
//! but each is a whole address space, so starting one costs more, and that cost grows with
//! the parent: fork(2) copies the parent's page tables (not its pages: copy-on-write) and the
//! child's exit tears its copy down again. What processes do not share, they do not fight
//! over: each has its own mmap lock and its own TLB to flush.
//!
//! Workers here are bare forked children (`harness::bare`): they reset their signals, run their
//! share and `_exit`; their reports come back through result slots in memory mapped shared
//! before the fork (MAP_SHARED), and shared counters live there too. The churn workers of
//! `contention`, whose timing is their own, are `harness::fork_child` workers that deliver over
//! a pipe. Compare with thread.rs: the same functions in the same order, and only the lines
//! marked "process:" differ in mechanism.
//!
//! See also: jobs.rs (the work both sides run), plumbing.rs (result slots), harness/src/bare.rs,
//! fork(2), clone(2), posix_spawn(3), vfork(2); TLPI 24 (process creation) and 28.3 (the
//! speed of process creation); LEBench (Ren et al., SOSP 2019) for the first-run latency.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use harness::cpu::Seat;
use harness::mem::{Mapping, Sharing};
use harness::stats::monotonic_ns;
use harness::{Child, deliver, fork_child_keeping, wait_all};
use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use crate::jobs::{self, Churn, Places, Report, Tasks};
use crate::plumbing::{SharedStamp, Slots, wait_for_go};
use crate::{Spawned, Started};
use harness::bare::{self, Bare, BareExit, Program};

/// Starts `n` empty workers one after the other and waits for each: fork(2), the child
/// `_exit(0)`s, waitpid. Each child first writes the clock: how long after the call it ran.
pub fn spawn_and_wait(n: u64, deadline: Duration) -> Result<Spawned> {
    // process: the child has no memory of ours to write to, unless it is mapped shared.
    let stamp = SharedStamp::new()?;
    let slot = stamp.slot();
    // process: a fork copies every mapping of its parent (docs/concurrency.md, "How much the
    // mappings weigh"); counted before the clock starts.
    let mappings =
        procfs::process::Process::myself().and_then(|me| me.maps()).context("reading /proc/self/maps")?.len();
    let mut first_run_ns = Vec::with_capacity(n as usize);
    let mut minor_faults = 0;
    let start = Instant::now();
    for _ in 0..n {
        let before = monotonic_ns();
        // process: fork(2) copies this process: its page tables, descriptors and signal state.
        let child = bare::fork_bare(|| {
            slot.store(monotonic_ns(), Ordering::Relaxed);
            Ok(())
        })?;
        let exit = child.wait(deadline)?;
        ensure!(exit.success(), "an empty child {exit}");
        first_run_ns.push(slot.load(Ordering::Relaxed).saturating_sub(before));
        minor_faults += exit.minor_faults;
    }
    let took = start.elapsed();
    Ok(Spawned { took, first_run_ns, child_minor_faults: Some(minor_faults), parent_mappings: Some(mappings) })
}

/// The job split over `workers` workers started at once; the clock runs from the first start
/// to the last report back.
pub fn split_job(numbers: u64, workers: u64, deadline: Duration) -> Result<(Duration, Vec<Report>)> {
    // process: a child has no memory of ours to report into, unless it is mapped shared.
    let slots = Slots::new(workers as usize)?;
    let start = Instant::now();
    let children = (0..workers)
        .map(|k| {
            // process: each worker is a copy of this process; its share comes back in its slot.
            bare::fork_bare(|| slots.put(k as usize, Report::run(jobs::piece(numbers, workers, k))?.to_words()))
        })
        .collect::<Result<Vec<Bare>>>()?;
    let reports = reports_of(children, &slots, deadline)?;
    Ok((start.elapsed(), reports))
}

/// Every task in a worker of its own, `in_flight` at a time.
pub fn worker_per_task(tasks: Tasks, in_flight: u64, deadline: Duration) -> Result<(Duration, Vec<Report>)> {
    // process: one shared slot per task, mapped before the first fork.
    let slots = Slots::new(tasks.count as usize)?;
    let start = Instant::now();
    let mut next = 0;
    while next < tasks.count {
        let wave = in_flight.min(tasks.count - next);
        let children = (next..next + wave)
            .map(|i| {
                // process: a new process for every task.
                bare::fork_bare(|| slots.put(i as usize, Report::run(tasks.range(i))?.to_words()))
            })
            .collect::<Result<Vec<Bare>>>()?;
        bare::wait_all(children, deadline, "a worker")?;
        next += wave;
    }
    let reports = slots.all()?.into_iter().map(Report::from_words).collect();
    Ok((start.elapsed(), reports))
}

/// A pool: `workers` workers started once take the tasks one by one from a shared counter.
pub fn pool(tasks: Tasks, workers: u64, deadline: Duration) -> Result<(Duration, Vec<Report>)> {
    // process: the counter and the reports must be in memory mapped shared before the fork.
    let shared = Mapping::anonymous(4, Sharing::Shared)?;
    let counter = shared.word(0)?;
    let slots = Slots::new(workers as usize)?;
    let start = Instant::now();
    let children = (0..workers)
        .map(|k| {
            bare::fork_bare(|| {
                let r = jobs::take_tasks(counter, &tasks)?;
                slots.put(k as usize, r.to_words())
            })
        })
        .collect::<Result<Vec<Bare>>>()?;
    let reports = reports_of(children, &slots, deadline)?;
    Ok((start.elapsed(), reports))
}

/// `workers` workers each map, touch and unmap their place's bytes, `ops` times, all
/// starting together.
pub fn churn(workers: u64, places: Places, ops: u64, deadline: Duration) -> Result<Vec<Churn>> {
    // Closing the write end is the start signal: every reader sees end of file at once.
    let (go_rx, go_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let children = (0..workers as usize)
        .map(|i| {
            // process: each worker maps and faults in an address space of its own, where its
            // mapping is alone.
            fork_child_keeping(&[go_rx.as_raw_fd()], || {
                // A CPU of its own, taken before the start (jobs::churn says why).
                let seat = Seat::take(i);
                wait_for_go(&go_rx)?;
                deliver("churn", &jobs::churn(places.of(i), places.bytes(), seat, ops)?);
                Ok(())
            })
        })
        .collect::<Result<Vec<Child>>>()?;
    drop(go_tx);
    let exits = wait_all(children, deadline)?;
    exits
        .iter()
        .map(|e| {
            e.check("a churn worker")?;
            e.received_one("churn")
        })
        .collect()
}

/// Waits for every worker (one deadline for all) and reads their reports from the slots.
fn reports_of(children: Vec<Bare>, slots: &Slots<6>, deadline: Duration) -> Result<Vec<Report>> {
    bare::wait_all(children, deadline, "a worker")?;
    Ok(slots.all()?.into_iter().map(Report::from_words).collect())
}

// Process only, for contrast: other ways to start a process. They have no thread
// counterpart; `spawn` reports them beside fork.

/// fork(2) then execve(2) of a small program, and wait.
pub fn fork_exec(program: &Program, n: u64, deadline: Duration) -> Result<Started> {
    started(n, || bare::fork_exec(program)?.wait(deadline))
}

/// posix_spawn(3) (vfork-style: the child borrows our address space until it execs), and wait.
pub fn posix_spawn(program: &Program, n: u64, deadline: Duration) -> Result<Started> {
    started(n, || bare::posix_spawn(program)?.wait(deadline))
}

/// `std::process::Command::status()`: what a Rust program most often writes.
pub fn command(program: &Program, n: u64) -> Result<Started> {
    let path = program.path().to_str().context("a program path that is not UTF-8")?.to_string();
    let start = Instant::now();
    for _ in 0..n {
        let status =
            std::process::Command::new(&path).env_clear().status().with_context(|| format!("spawning {path}"))?;
        ensure!(status.success(), "{path} ended with {status}");
    }
    Ok(Started { took: start.elapsed(), runs: n })
}

fn started(n: u64, mut one: impl FnMut() -> Result<BareExit>) -> Result<Started> {
    let start = Instant::now();
    for _ in 0..n {
        let exit = one()?;
        ensure!(exit.success(), "the started program {exit}");
    }
    Ok(Started { took: start.elapsed(), runs: n })
}
