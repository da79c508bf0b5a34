//! The stability row: does a crash stay inside its process, and can a crashing thread take
//! its whole process down?
//!
//! Every experiment runs process::X and thread::X and turns what they observed into
//! findings; the harness computes the verdicts. See docs/stability.md.

mod process;
mod thread;
mod work;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use harness::cpu::{Pinned, Placement};
use harness::stats::Summary;
use harness::{Better, Ctx, Expected, Findings, Kind, Needs, Row, Side, Spec, Status};
use nix::sys::signal::Signal;

use work::{FAULTY, Fault, WORKERS};

/// The workers that did not fault.
const OTHERS: usize = WORKERS - 1;

static ROW: Row = Row {
    name: "stability",
    claim: "A crash in one process leaves the other processes running; a crash in one thread can take down \
            the whole process and every thread in it.",
    experiments: &[
        observe("segfault", "One of 4 workers writes through an invalid pointer (SIGSEGV)", segfault).headline(),
        observe("abort", "One of 4 workers calls abort() (SIGABRT)", abort),
        observe("stack-overflow", "One of 4 workers recurses without end into its stack's guard page", stack_overflow),
        observe("panic", "One of 4 workers panics: Rust unwinds instead of signalling", panic),
        observe("poison", "A worker panics while holding the lock on shared state", poison),
        Spec {
            id: "restart",
            title: "A supervisor replaces a crashed worker: time from the crash to the replacement running",
            kind: Kind::Measure,
            unit: Some(("µs", Better::Lower)),
            expected: Expected::Thread,
            needs: TASKS,
            headline: true,
            run: restart,
        },
    ],
    children: &[("crash", thread::crash_child)],
};

const fn observe(id: &'static str, title: &'static str, run: fn(&Ctx) -> Result<Findings>) -> Spec {
    Spec::observe(id, title, Expected::Process, TASKS, run)
}

/// At most, at once: the workers, plus the sacrificial process that hosts them as threads.
const TASKS: Needs = Needs::tasks(WORKERS as u64 + 1);

fn main() -> ExitCode {
    harness::row::main(&ROW)
}

/// What was left after a worker faulted.
pub struct Aftermath {
    /// How the faulty worker ended, as observed by whoever could observe it.
    pub faulty_worker: String,
    /// The process version: how the faulty worker process ended (waitpid).
    pub faulty_status: Option<Status>,
    /// The thread version: how the whole process hosting the threads ended.
    pub whole_process: Option<Status>,
    /// Results of the other workers that reached the observer.
    pub others_delivered: usize,
    /// What the runtime printed: a panic or stack-overflow message.
    pub message: Option<String>,
}

/// What a panic under a lock did to the others.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Poisoning {
    pub crasher: String,
    /// The crasher took the lock and wrote under it (observed: its write, or its word).
    pub crasher_held_lock: bool,
    /// It ended by a panic: exit code 101, or join() returning Err.
    pub crasher_panicked: bool,
    pub others_poisoned: usize,
    pub others: usize,
    pub observer_poisoned: bool,
    pub message: Option<String>,
}

/// One job whose faulty worker was replaced.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Restart {
    /// The sum of the chunks' results: correct only if every chunk was done once.
    pub total: u64,
    /// From the crash to the replacement running.
    pub latency_ns: u64,
    /// Replacements the supervisor started.
    pub replacements: usize,
    /// The CPU the replacement ran on as it started (sched_getcpu), if it could say.
    pub replacement_cpu: Option<usize>,
}

fn segfault(ctx: &Ctx) -> Result<Findings> {
    crash(ctx, Fault::Segfault)
}

fn abort(ctx: &Ctx) -> Result<Findings> {
    crash(ctx, Fault::Abort)
}

fn stack_overflow(ctx: &Ctx) -> Result<Findings> {
    crash(ctx, Fault::StackOverflow)
}

fn panic(ctx: &Ctx) -> Result<Findings> {
    crash(ctx, Fault::Panic)
}

/// How long the healthy workers' job takes: long enough that the fault happens first.
fn job_time(ctx: &Ctx) -> Duration {
    Duration::from_millis(if ctx.quick { 30 } else { 150 })
}

fn crash(ctx: &Ctx, fault: Fault) -> Result<Findings> {
    let process = ctx.process_side(|| process::crash(fault, job_time(ctx), ctx.deadline()))?;
    let thread = ctx.thread_side(|| thread::crash(fault, job_time(ctx), ctx.deadline()))?;
    let signals = expected_signals(fault);
    // The claim, as observed: the faulty process died alone and the others delivered ...
    let isolated = process.as_ref().map(|p| {
        let died_as_expected = match fault {
            Fault::Panic => p.faulty_status == Some(Status::Exited(harness::child::PANIC_EXIT_CODE)),
            _ => p.faulty_status.and_then(Status::signal).is_some_and(|s| signals.contains(&s)),
        };
        died_as_expected && p.others_delivered == OTHERS
    });
    // ... while the faulty thread took its whole process, and undelivered results, with it.
    let shared_fate = thread.as_ref().map(|t| {
        t.whole_process.and_then(Status::signal).is_some_and(|s| signals.contains(&s)) && t.others_delivered < OTHERS
    });
    let note = match fault {
        Fault::Panic => {
            "The textbook claim is about faults the kernel answers with a signal. A Rust panic unwinds \
                         only its own thread: join() returns Err and the process lives on. With panic = \"abort\" \
                         in the profile it would end the whole process like abort() does. Rust contains a panic \
                         in a thread as well as in a process."
        }
        Fault::StackOverflow => {
            "Rust's runtime catches the SIGSEGV on the guard page, prints \"has overflowed its \
                                 stack\" and aborts, so the process usually ends by SIGABRT; either signal ends \
                                 every thread."
        }
        _ => {
            "A signal caused by a fault is delivered to the faulting thread, but its default action ends the whole \
              process (signal(7))."
        }
    };
    Ok(Findings {
        process: process.map(crash_side),
        thread: thread.map(crash_side),
        matches_claim: isolated.zip(shared_fate).map(|(i, s)| i && s),
        note: Some(note.to_string()),
        skipped: None,
    })
}

/// The signals that the textbook expects for a fault: the ones that end a process.
fn expected_signals(fault: Fault) -> &'static [Signal] {
    match fault {
        Fault::Segfault => &[Signal::SIGSEGV],
        Fault::Abort => &[Signal::SIGABRT],
        Fault::StackOverflow => &[Signal::SIGSEGV, Signal::SIGABRT],
        // The textbook would have the panicking thread end its process; any signal would do.
        Fault::Panic => &[Signal::SIGABRT, Signal::SIGSEGV],
    }
}

fn crash_side(a: Aftermath) -> Side {
    let summary = match a.whole_process {
        Some(p) => format!("process {p}; {}/{OTHERS} others delivered", a.others_delivered),
        None => format!("worker {FAULTY} {}; {}/{OTHERS} others delivered", a.faulty_worker, a.others_delivered),
    };
    let mut side = Side::observed(summary)
        .fact("faulty_worker", &a.faulty_worker)
        .fact("others_delivered", a.others_delivered)
        .fact("results_lost", OTHERS - a.others_delivered);
    if let Some(p) = a.whole_process {
        side.set("whole_process", p.to_string());
    }
    if let Some(m) = &a.message {
        side.set("message", m);
    }
    side
}

fn poison(ctx: &Ctx) -> Result<Findings> {
    let process = ctx.process_side(|| process::poison(ctx.deadline()))?;
    // The thread side's threads start in a process of its own (Ctx::hosted), not in this one,
    // which forks the process side's (and restart's) children (docs/report.md).
    let thread = ctx.thread_side(|| ctx.hosted(thread::poison))?;
    // The claim holds only if each crasher really panicked while holding the lock, and then
    // no process but every thread found the lock poisoned.
    let crashed_under_lock = |p: &Poisoning| p.crasher_held_lock && p.crasher_panicked;
    let matches = process.as_ref().zip(thread.as_ref()).map(|(p, t)| {
        crashed_under_lock(p)
            && crashed_under_lock(t)
            && p.others_poisoned == 0
            && !p.observer_poisoned
            && t.others_poisoned == t.others
            && t.observer_poisoned
    });
    let side = |p: Poisoning| {
        let summary = format!(
            "crasher {}; {}/{} others got PoisonError; observer's lock {}",
            p.crasher,
            p.others_poisoned,
            p.others,
            if p.observer_poisoned { "poisoned" } else { "clean" }
        );
        let mut s = Side::observed(summary)
            .fact("crasher", &p.crasher)
            .fact("crasher_held_lock", p.crasher_held_lock)
            .fact("crasher_panicked", p.crasher_panicked)
            .fact("others_poisoned", p.others_poisoned)
            .fact("others", p.others)
            .fact("observer_poisoned", p.observer_poisoned);
        if let Some(m) = &p.message {
            s.set("message", m);
        }
        s
    };
    Ok(Findings {
        process: process.map(side),
        thread: thread.map(side),
        matches_claim: matches,
        note: Some(
            "A poisoned Mutex says the state it guards may be half-updated. Threads share that state, so all \
             of them inherit the doubt; each process had its own copy, so there was nothing to poison."
                .to_string(),
        ),
        skipped: None,
    })
}

fn restart(ctx: &Ctx) -> Result<Findings> {
    // Both sides on one CPU: the workers and their replacements inherit the mask. Left free,
    // a new worker lands on the idle CPU, and how long a halted vCPU takes to wake (a VM guest
    // with no cpuidle driver, 2026-11-29) moved the process side's median by 15 % from run to run.
    let place = match Placement::same_cpu()? {
        Ok(p) => p,
        Err(why) => return Ok(Findings::skipped(why)),
    };
    let _pinned = Pinned::to(place.driver)?;
    let (mut ps, mut ts) = (Vec::new(), Vec::new());
    // The thread side's jobs run in a process of their own, forked once (pinned like this one),
    // so that this process, which forks the process side's workers, never starts a thread: glibc
    // would take it for multi-threaded from then on, and its forks cost more (docs/report.md).
    // The forks of the process jobs do not reach that process either, so nothing carries over.
    let mut threads = ctx.thread_host(|()| thread::restart(ctx.deadline()))?;
    let (p, t) = ctx.interleave(
        || Ok(kept(&mut ps, process::restart(ctx.deadline())?)),
        || Ok(kept(&mut ts, threads.call(&())?)),
    )?;
    threads.finish()?;
    let side = |summary: Summary, jobs: &[Restart]| -> Result<Side> {
        let correct = jobs.iter().filter(|r| r.total == work::expected_total()).count();
        anyhow::ensure!(correct == jobs.len(), "only {correct} of {} jobs had the correct result", jobs.len());
        Ok(Side::measured(&summary, "µs")
            .fact("jobs", jobs.len())
            .fact("jobs_with_correct_result", correct)
            .fact("replacements", jobs.iter().map(|r| r.replacements).sum::<usize>())
            .fact("pinned_cpu", place.driver)
            .fact("replacements_ran_on_pinned_cpu", jobs.iter().all(|r| r.replacement_cpu == Some(place.driver))))
    };
    Ok(Findings {
        process: p.map(|s| side(s, &ps)).transpose()?,
        thread: t.map(|s| side(s, &ts)).transpose()?,
        matches_claim: None,
        note: Some(
            "Isolation has a price: replacing a process means exit, reap (the supervisor hears of the death \
             through waitpid, here a pidfd) and fork; replacing a thread means unwind (a guard dropped while \
             the thread unwinds tells the pool), join and spawn. Every job, warm-up included, still delivered \
             its full, correct result. The supervisor, its workers and their replacements share one CPU on both \
             sides (pinned_cpu), so that the figure is the replacement's work and not the wake-up of an idle CPU. \
             The process side's figure also holds the harness's plumbing for every child (harness::fork_child: \
             two pipes for its output before the fork and a pidfd for it after, the child's signal reset and \
             die-with-parent before its first act, the dead worker's messages read back before the replacement \
             is forked), which a thread, told over a channel, does not pay: on an AMD EPYC guest a fork_child and \
             its wait cost 73-127 µs more than a bare fork and its wait (docs/stability.md), so some tens of µs \
             of the process side's figure are that plumbing."
                .to_string(),
        ),
        skipped: None,
    })
}

/// Keeps a job's outcome for the evidence and returns its latency in µs.
fn kept(all: &mut Vec<Restart>, job: Restart) -> f64 {
    all.push(job);
    job.latency_ns as f64 / 1000.0
}
