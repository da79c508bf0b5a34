//! Stability, the process version: a crash stays inside the process that crashed.
//!
//! A supervisor forks four worker processes; one of them commits a fault. Each worker has
//! its own address space, so the fault can only end that one process: waitpid tells the
//! supervisor which signal killed it, and the other three still deliver their results.
//! Compare with thread.rs, where the same four workers are threads of one process.
//!
//! See also: fork(2), waitpid(2), signal(7); TLPI chapters 24–26.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use harness::{Status, deliver, fork_child, stats, wait_all, wait_any};

use crate::work::{self, FAULTY, Fault, WORKERS};
use crate::{Aftermath, Poisoning, Restart};

/// Four worker processes; worker 2 commits `fault`. The supervisor (this process) reaps them.
pub fn crash(fault: Fault, job_time: Duration, deadline: Duration) -> Result<Aftermath> {
    let mut workers = Vec::new();
    for id in 0..WORKERS {
        // The mechanism: each worker is a copy of this process in its own address space.
        workers.push(fork_child(move || {
            let result = work::worker(id, work::fault_of(id, fault), job_time);
            deliver("result", &(id as u64, result));
            Ok(())
        })?);
    }
    // waitpid(2) tells the supervisor how each worker ended; the supervisor itself goes on.
    let exits = wait_all(workers, deadline)?;
    let faulty = &exits[FAULTY];
    let delivered = exits
        .iter()
        .enumerate()
        .filter(|(id, e)| *id != FAULTY && !e.received::<(u64, u64)>("result").unwrap_or_default().is_empty())
        .count();
    Ok(Aftermath {
        faulty_worker: faulty.status.to_string(),
        faulty_status: Some(faulty.status),
        whole_process: None,
        others_delivered: delivered,
        message: faulty.message().map(str::to_string),
    })
}

/// A worker panics while it holds the lock on its state. The other workers and the
/// supervisor have their own copies of that state, so none of them finds it poisoned.
pub fn poison(deadline: Duration) -> Result<Poisoning> {
    // The supervisor's state, behind a lock. Each child gets a private copy at fork.
    let state = Mutex::new(0u64);
    let crasher = fork_child(|| {
        let mut guard = state.lock().map_err(|_| anyhow::anyhow!("already poisoned"))?;
        *guard += 1;
        deliver("locked", &*guard);
        if work::crasher_panics() {
            panic!("worker {FAULTY} panicked while holding the lock");
        }
        Ok(())
    })?;
    let crashed = crasher.wait(deadline)?;
    // What the crasher did, as observed: it held the lock (it said so from inside) and it
    // ended the way an uncaught panic ends a process.
    let held_lock = crashed.received::<u64>("locked")? == [1];
    let panicked = crashed.status == Status::Exited(harness::child::PANIC_EXIT_CODE);
    let mut others = Vec::new();
    for _ in 0..WORKERS - 1 {
        others.push(fork_child(|| {
            // Changed line: this lock is the child's own copy, never touched by the crasher.
            let poisoned = state.lock().is_err();
            deliver("poisoned", &poisoned);
            Ok(())
        })?);
    }
    let exits = wait_all(others, deadline)?;
    let mut poisoned_seen = 0;
    for e in &exits {
        e.check("worker")?;
        poisoned_seen += e.received::<bool>("poisoned")?.into_iter().filter(|&p| p).count();
    }
    Ok(Poisoning {
        crasher: crashed.status.to_string(),
        crasher_held_lock: held_lock,
        crasher_panicked: panicked,
        others_poisoned: poisoned_seen,
        others: exits.len(),
        observer_poisoned: state.is_poisoned(),
        message: crashed.message().map(str::to_string),
    })
}

/// One job of four chunks; the worker of chunk 2 panics, the supervisor notices through
/// waitpid and forks a replacement, and the job still completes. One timed run: the time
/// from the crash to the replacement running.
pub fn restart(deadline: Duration) -> Result<Restart> {
    let mut children = Vec::new();
    let mut chunks = Vec::new();
    for chunk in 0..WORKERS {
        children.push(start_worker(chunk, false)?);
        chunks.push(chunk);
    }
    let (mut total, mut crashed_at, mut started, mut replacements) = (0u64, None, None, 0);
    while !children.is_empty() {
        // The supervisor learns of a death from waitpid(2) (here through a pidfd).
        let (i, exit) = wait_any(&mut children, deadline)?;
        let chunk = chunks.remove(i);
        if let Some((_, result)) = exit.received::<(u64, u64)>("result")?.first() {
            total = total.wrapping_add(*result);
        }
        if let Some(&at) = exit.received::<(u64, Option<usize>)>("start")?.first() {
            started = Some(at);
        }
        match exit.status {
            Status::Exited(0) => {}
            Status::TimedOut => bail!("worker {chunk} {}", exit.status),
            _ if crashed_at.is_none() => {
                crashed_at = exit.received::<u64>("crash")?.first().copied();
                children.push(start_worker(chunk, true)?);
                chunks.push(chunk);
                replacements += 1;
            }
            _ => exit.check("replacement worker")?,
        }
    }
    let ((started_at, replacement_cpu), crashed_at) = started.zip(crashed_at).context("no crash was replaced")?;
    let latency_ns = started_at.saturating_sub(crashed_at);
    Ok(Restart { total, latency_ns, replacements, replacement_cpu })
}

/// Starts the worker of one chunk; the first worker of chunk 2 panics, its replacement not.
fn start_worker(chunk: usize, replacement: bool) -> Result<harness::Child> {
    // The mechanism: a replacement is a new process, forked from the supervisor.
    fork_child(move || {
        if replacement {
            let at = stats::monotonic_ns();
            deliver("start", &(at, harness::cpu::current().ok()));
        } else if chunk == FAULTY {
            deliver("crash", &stats::monotonic_ns());
            panic!("worker {chunk} panicked on purpose");
        }
        deliver("result", &(chunk as u64, work::job(chunk)));
        Ok(())
    })
}
