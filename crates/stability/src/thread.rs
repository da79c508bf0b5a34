//! Stability, the thread version: a crashing thread can take its whole process down.
//!
//! The same four workers as in process.rs, but as threads of one process. A fault that the
//! kernel answers with a signal (SIGSEGV, SIGABRT) ends the process, and with it every
//! thread and every result not yet delivered. A Rust panic is different: it unwinds only its
//! own thread, and `join` reports it. Compare with process.rs.
//!
//! See also: pthreads(7), signal(7) ("a signal ... delivered to a process"), std::thread.

use std::sync::Mutex;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crossbeam::channel::{Sender, unbounded};
use harness::{deliver, panics, spawn_sacrificial, stats};

use crate::work::{self, FAULTY, Fault, WORKERS};
use crate::{Aftermath, Poisoning, Restart};

/// Four worker threads in one process; worker 2 commits `fault`. The process is a
/// sacrificial copy of this program, so that we survive to observe it from outside.
pub fn crash(fault: Fault, job_time: Duration, deadline: Duration) -> Result<Aftermath> {
    let args = [fault.name().to_string(), job_time.as_millis().to_string()];
    let exit = spawn_sacrificial("crash", &args)?.wait(deadline)?;
    let delivered = exit.received::<(u64, u64)>("result")?.iter().filter(|(id, _)| *id != FAULTY as u64).count();
    let panicked = exit.received::<u64>("panicked")?.contains(&(FAULTY as u64));
    let faulty_worker = if panicked {
        "panicked; join returned Err".to_string()
    } else {
        format!("ended with its process ({})", exit.status)
    };
    Ok(Aftermath {
        faulty_worker,
        faulty_status: None,
        whole_process: Some(exit.status),
        others_delivered: delivered,
        message: exit.message().map(str::to_string),
    })
}

/// Runs inside the sacrificial child: the four workers as threads of this one process.
pub fn crash_child(args: &[String]) -> Result<()> {
    let [fault, job_ms] = args else { bail!("usage: crash FAULT JOB_MS") };
    let fault = Fault::parse(fault).with_context(|| format!("unknown fault {fault:?}"))?;
    let job_time = Duration::from_millis(job_ms.parse().context("JOB_MS")?);
    let mut workers = Vec::new();
    for id in 0..WORKERS {
        // The mechanism: each worker is a thread sharing this process's address space.
        let w = thread::Builder::new().name(format!("worker {id}")).spawn(move || {
            let result = work::worker(id, work::fault_of(id, fault), job_time);
            deliver("result", &(id as u64, result));
        });
        workers.push(w.context("spawning a worker thread")?);
    }
    for (id, w) in workers.into_iter().enumerate() {
        // JoinHandle::join (pthread_join(3)) sees a panic as Err; a fatal signal never gets
        // here: it ends the process.
        if w.join().is_err() {
            deliver("panicked", &(id as u64));
        }
    }
    Ok(())
}

/// A worker panics while it holds the lock on the state all threads share. Every thread that
/// locks it afterwards gets a PoisonError: the shared state may be half-updated.
pub fn poison() -> Result<Poisoning> {
    // The process's state, behind a lock. Every thread sees this one copy.
    let state = Mutex::new(0u64);
    let (outcome, messages) = panics::captured(|| {
        thread::scope(|s| {
            let crasher = thread::Builder::new().name(format!("worker {FAULTY}")).spawn_scoped(s, || {
                let mut guard = state.lock().expect("nobody has panicked yet");
                *guard += 1;
                if work::crasher_panics() {
                    panic!("worker {FAULTY} panicked while holding the lock");
                }
            });
            let crashed = crasher.context("spawning a worker thread")?.join();
            let others: Vec<_> = (0..WORKERS - 1)
                // Changed line: this is the very lock the crasher held when it panicked.
                .map(|_| s.spawn(|| state.lock().is_err()))
                .collect();
            let poisoned: Vec<bool> = others.into_iter().map(|h| h.join().unwrap_or(false)).collect();
            Ok::<_, anyhow::Error>((crashed, poisoned))
        })
    });
    let (crashed, poisoned) = outcome?;
    // What the crasher did, as observed: its write is in the shared state (it held the lock)
    // and join() returned its panic.
    let held_lock = *state.lock().unwrap_or_else(|e| e.into_inner()) == 1;
    Ok(Poisoning {
        crasher: if crashed.is_err() { "panicked; join returned Err" } else { "returned" }.to_string(),
        crasher_held_lock: held_lock,
        crasher_panicked: crashed.is_err(),
        others_poisoned: poisoned.iter().filter(|p| **p).count(),
        others: poisoned.len(),
        observer_poisoned: state.is_poisoned(),
        message: messages.into_iter().next(),
    })
}

/// One job of four chunks; the worker thread of chunk 2 panics, the pool notices through a
/// guard dropped during the unwinding and starts a replacement thread, and the job still
/// completes. One timed run: the time from the crash to the replacement running.
pub fn restart(deadline: Duration) -> Result<Restart> {
    // The panic message is expected: keep it off the terminal.
    panics::captured(|| restart_once(deadline)).0
}

/// What the pool's workers tell the supervisor.
enum Msg {
    Result(u64),
    Crash(u64),
    Start(u64, Option<usize>),
    Died(usize),
}

fn restart_once(deadline: Duration) -> Result<Restart> {
    let (tx, rx) = unbounded();
    let mut workers: Vec<Option<JoinHandle<()>>> = Vec::new();
    for chunk in 0..WORKERS {
        workers.push(Some(start_worker(chunk, false, tx.clone())?));
    }
    let (mut total, mut results, mut crashed_at, mut started, mut replacements) = (0u64, 0, None, None, 0);
    let until = Instant::now() + deadline;
    while results < WORKERS {
        // The supervisor learns of a death from the dying thread's own guard.
        match rx.recv_deadline(until).context("waiting for the pool's workers")? {
            Msg::Result(r) => {
                total = total.wrapping_add(r);
                results += 1;
            }
            Msg::Crash(t) => crashed_at = Some(t),
            Msg::Start(t, cpu) => started = Some((t, cpu)),
            Msg::Died(chunk) => {
                if let Some(dead) = workers[chunk].take() {
                    let _ = dead.join();
                }
                workers[chunk] = Some(start_worker(chunk, true, tx.clone())?);
                replacements += 1;
            }
        }
    }
    for w in workers.into_iter().flatten() {
        let _ = w.join();
    }
    let ((started_at, replacement_cpu), crashed_at) = started.zip(crashed_at).context("no crash was replaced")?;
    let latency_ns = started_at.saturating_sub(crashed_at);
    Ok(Restart { total, latency_ns, replacements, replacement_cpu })
}

/// Starts the worker of one chunk; the first worker of chunk 2 panics, its replacement not.
fn start_worker(chunk: usize, replacement: bool, tx: Sender<Msg>) -> Result<JoinHandle<()>> {
    // The mechanism: a replacement is a new thread in the same process.
    let w = thread::Builder::new().name(format!("worker {chunk}")).spawn(move || {
        let _guard = DeathNotice { chunk, tx: tx.clone() };
        if replacement {
            let at = stats::monotonic_ns();
            let _ = tx.send(Msg::Start(at, harness::cpu::current().ok()));
        } else if chunk == FAULTY {
            let _ = tx.send(Msg::Crash(stats::monotonic_ns()));
            panic!("worker {chunk} panicked on purpose");
        }
        let _ = tx.send(Msg::Result(work::job(chunk)));
    });
    w.context("spawning a worker thread")
}

/// Dropped when its worker's thread ends; if that is by a panic, tells the supervisor.
/// (Thread pools such as `threadpool` notice dead workers the same way.)
struct DeathNotice {
    chunk: usize,
    tx: Sender<Msg>,
}

impl Drop for DeathNotice {
    fn drop(&mut self) {
        if thread::panicking() {
            let _ = self.tx.send(Msg::Died(self.chunk));
        }
    }
}
