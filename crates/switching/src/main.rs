//! The switching row: is a switch between threads faster than a switch between processes?
//!
//! Each experiment runs the same ping-pong (pingpong.rs) twice: once between two processes
//! (process.rs) and once between two threads (thread.rs), and reports ns per switch with the
//! evidence that the switches happened where we asked: voluntary context switches counted by
//! the kernel, and the CPU each task ran on.

mod pingpong;
mod process;
mod thread;

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Result;
use harness::cpu::Placement;
use harness::stats::{self, Plan, Summary};
use harness::{Better, Ctx, Expected, Findings, Needs, Side, Spec};

use pingpong::{Alone, Baseline, FutexOps, Outcome, PRIVATE, SHARED, Size, TaskEvidence, WorkingSets};

const UNIT: &str = "ns/switch";

const fn measure(
    id: &'static str,
    title: &'static str,
    unit: &'static str,
    expected: Expected,
    needs: Needs,
    run: fn(&Ctx) -> Result<Findings>,
) -> Spec {
    Spec::measure(id, title, unit, Better::Lower, expected, needs, run)
}

/// Every experiment runs one partner task (a child process or a thread) beside the driver.
const PARTNER: Needs = Needs::tasks(1);

static ROW: harness::Row = harness::Row {
    name: "switching",
    claim: "Switching between threads is faster than switching between processes: no address-space change.",
    experiments: &[
        measure(
            "pipe-same-cpu",
            "Ping-pong over two pipes, both tasks pinned to one CPU",
            UNIT,
            Expected::Thread,
            PARTNER,
            pipe_same_cpu,
        )
        .headline(),
        measure(
            "futex-same-cpu",
            "Ping-pong with the same futex wait/wake ops on one 32-bit word, both tasks on one CPU",
            UNIT,
            Expected::Thread,
            PARTNER,
            futex_same_cpu,
        )
        .headline(),
        measure(
            "futex-private",
            "What threads gain from private futexes: processes on the shared ops, threads on the _PRIVATE ops",
            UNIT,
            Expected::Thread,
            PARTNER,
            futex_private,
        ),
        measure(
            "pipe-cross-cpu",
            "Ping-pong over two pipes, the tasks pinned to two different CPUs",
            UNIT,
            Expected::Thread,
            PARTNER,
            pipe_cross_cpu,
        ),
        measure(
            "working-set-0",
            "Pipe ping-pong on one CPU, each task touching 0 bytes of its own per pass",
            UNIT,
            Expected::Thread,
            PARTNER,
            working_set_0,
        ),
        measure(
            "working-set-16k",
            "Pipe ping-pong on one CPU, each task touching 16 KiB of its own per pass",
            UNIT,
            Expected::Thread,
            PARTNER.and_memory(2 * (16 << 10)),
            working_set_16k,
        ),
        measure(
            "working-set-256k",
            "Pipe ping-pong on one CPU, each task touching 256 KiB of its own per pass",
            UNIT,
            Expected::Thread,
            PARTNER.and_memory(2 * (256 << 10)),
            working_set_256k,
        ),
        measure(
            "working-set-2m",
            "Pipe ping-pong on one CPU, each task touching 2 MiB of its own per pass",
            UNIT,
            Expected::Thread,
            PARTNER.and_memory(2 * (2 << 20)),
            working_set_2m,
        ),
        // The controls: no switch at all, so no difference is expected.
        measure(
            "baseline-pipe",
            "No switch: one task writes a byte to its own pipe and reads it back",
            UNIT,
            Expected::Same,
            PARTNER,
            baseline_pipe,
        ),
        measure(
            "baseline-syscall",
            "No switch: one trivial system call, getppid(2)",
            "ns/call",
            Expected::Same,
            PARTNER,
            baseline_syscall,
        ),
    ],
    children: &[],
};

fn main() -> ExitCode {
    harness::row::main(&ROW)
}

fn pipe_same_cpu(ctx: &Ctx) -> Result<Findings> {
    Ok(pipe(ctx, Placement::same_cpu()?)?.with_note(
        "Each thread-side run, in every experiment of this row, runs in a process of its own forked for it, \
         so that the row's process never starts a thread: glibc takes a process that ever started one, and \
         every child it forks later, for multi-threaded for good, and then switches cancellation on and off \
         around every read and write. Run here, the thread side would have charged that to the process side \
         (its pipe loops 4-13 % slower on the machine this was found on); glibc_single_threaded on the process \
         side says whether its tasks were spared.",
    ))
}

fn futex_same_cpu(ctx: &Ctx) -> Result<Findings> {
    futex(ctx, SHARED).map(|f| {
        f.with_note(format!(
            "both sides use {} on a word in a MAP_SHARED page, so the address space is the only difference",
            SHARED.name
        ))
    })
}

fn futex_private(ctx: &Ctx) -> Result<Findings> {
    futex(ctx, PRIVATE).map(|f| {
        f.with_note(format!(
            "processes must use {} (the kernel finds the waiters by the word's physical page); threads may use {} \
             (keyed by address space and address, no page lookup): compare with futex-same-cpu to see what the \
             private ops alone are worth",
            SHARED.name, PRIVATE.name
        ))
    })
}

/// The futex ping-pong on one CPU: the process side always on the shared ops, the thread
/// side on `thread_ops`.
fn futex(ctx: &Ctx, thread_ops: FutexOps) -> Result<Findings> {
    let place = match Placement::same_cpu()? {
        Ok(p) => p,
        Err(why) => return Ok(Findings::skipped(why)),
    };
    let (process, thread, _) = pingpong_sides(
        ctx,
        ctx.plan(),
        1,
        |size| process::futex_pingpong(ctx, place, SHARED, size),
        |size| ctx.hosted(|| thread::futex_pingpong(ctx, place, thread_ops, size)),
    )?;
    Ok(Findings { process, thread, ..Findings::default() })
}

/// Warm-up runs a side before the cross-CPU runs are timed. On the 2-vCPU KVM guest this was
/// built on, the first 5-10 runs of a ping-pong across CPUs took 1.3-8 times the steady
/// figure (waking the other vCPU got cheaper the more often it was done); with the usual 2
/// warm-ups a side, how many of those slow runs fell among the timed ones moved the medians
/// of a full run by up to 83 % from one run of the suite to the next.
const CROSS_CPU_WARMUP: usize = 10;

/// Calibration runs before the cross-CPU loop is sized by the last of them, for the same
/// reason: sized on the first run, the loop was 1.3-8 times too short, by an amount that
/// changed from one run of the suite to the next.
const CROSS_CPU_CALIBRATIONS: usize = 5;

/// Timed runs a side across CPUs in a full run: its runs spread most of the switching row's
/// (single runs up to 1.3 times the median), and with 12 the interval's upper end reached
/// 0.931-0.944 in eight invocations alone and past 0.95 (`tie`) in one of five suite
/// invocations, though the ratio stayed at 0.89-0.93. With 20: 0.916-0.941, the interval a
/// quarter narrower, for about 0.25 s more (the Intel guest, 2026-12-02).
const CROSS_CPU_FULL_RUNS: usize = 20;

/// The process side run again with a second, idle thread in each process (`p2`) against the
/// thread side run again (`t2`): its median, and the ratio with its 95 % interval.
fn with_an_idle_second_thread(side: Side, p2: &Summary, t2: &Summary) -> Side {
    let side = side.fact("ns_with_an_idle_second_thread", p2.median.round());
    match stats::ratio_fact(p2, t2) {
        Some([ratio, low, high]) => side
            .fact("ratio_with_an_idle_second_thread", ratio)
            .fact("ratio_with_an_idle_second_thread_interval", [low, high]),
        None => side,
    }
}

fn pipe_cross_cpu(ctx: &Ctx) -> Result<Findings> {
    let place = match Placement::cross_cpu()? {
        Ok(p) => p,
        Err(why) => return Ok(Findings::skipped(why)),
    };
    let plan = Plan { warmup: CROSS_CPU_WARMUP, ..ctx.plan_in_full_at_least(CROSS_CPU_FULL_RUNS) };
    let none = &WorkingSets::NONE;
    let thread_run = |size| ctx.hosted(|| thread::pipe_pingpong(ctx, place, none, size));
    let (process, thread, size) = pingpong_sides(
        ctx,
        plan,
        CROSS_CPU_CALIBRATIONS,
        |size| process::pipe_pingpong(ctx, place, none, size),
        thread_run,
    )?;
    // What the gap across CPUs comes with: the process side again, each of its two processes
    // with a second thread that only waits, against the thread side again (the fewest runs a
    // number may have, in turns). Not judged: a fact.
    let process = match (process, ctx.thread()) {
        (Some(side), true) => {
            let with_idle_threads = || process::pipe_pingpong_beside_idle_threads(ctx, place, size);
            let in_threads = || Ok(thread_run(size)?.run.ns_per_switch);
            match ctx.interleave_by(Plan::fixed(stats::MIN_RUNS), with_idle_threads, in_threads)? {
                (Some(p2), Some(t2)) => Some(with_an_idle_second_thread(side, &p2, &t2)),
                _ => Some(side),
            }
        }
        (side, _) => side,
    };
    Ok(Findings { process, thread, ..Findings::default() }.with_note(
        "every wake-up crosses CPUs: compare with pipe-same-cpu to see what placement costs. \
         ns_with_an_idle_second_thread is the process side again with each of its two processes first \
         starting a second thread that only waits (multi-threaded processes, each with its own address space; \
         the driver in a child of its own, so that the row forks only while single-threaded), \
         and ratio_with_an_idle_second_thread is that against the thread side again (with its 95 % interval, \
         ratio_with_an_idle_second_thread_interval): near 1 when being a multi-threaded process is the whole \
         difference.",
    ))
}

/// The pipe ping-pong where `placement` puts the two tasks; skipped with the reason when the
/// placement cannot be had here.
fn pipe(ctx: &Ctx, placement: std::result::Result<Placement, String>) -> Result<Findings> {
    pipe_by(ctx, ctx.plan(), 1, placement, &WorkingSets::NONE)
}

/// [`pipe`] by a plan of the experiment's own, its loop sized by the last of `calibrations`
/// calibration runs, each task touching its buffer of `sets` per pass.
fn pipe_by(
    ctx: &Ctx,
    plan: Plan,
    calibrations: usize,
    placement: std::result::Result<Placement, String>,
    sets: &WorkingSets,
) -> Result<Findings> {
    let place = match placement {
        Ok(p) => p,
        Err(why) => return Ok(Findings::skipped(why)),
    };
    let (process, thread, _) = pingpong_sides(
        ctx,
        plan,
        calibrations,
        |size| process::pipe_pingpong(ctx, place, sets, size),
        |size| ctx.hosted(|| thread::pipe_pingpong(ctx, place, sets, size)),
    )?;
    Ok(Findings { process, thread, ..Findings::default() })
}

fn working_set_0(ctx: &Ctx) -> Result<Findings> {
    working_set(ctx, 0, true)
}

fn working_set_16k(ctx: &Ctx) -> Result<Findings> {
    working_set(ctx, 16 << 10, false)
}

fn working_set_256k(ctx: &Ctx) -> Result<Findings> {
    working_set(ctx, 256 << 10, false)
}

fn working_set_2m(ctx: &Ctx) -> Result<Findings> {
    working_set(ctx, 2 << 20, true)
}

/// Each task touches its own `bytes` between passes, so a switch must bring them back into
/// the caches and the TLB (lmbench's `lat_ctx -s`).
fn working_set(ctx: &Ctx, bytes: usize, in_quick: bool) -> Result<Findings> {
    if ctx.quick && !in_quick {
        return Ok(Findings::skipped("--quick measures only the working sets of 0 and 2 MiB"));
    }
    // The 2 MiB working set takes at least 16 timed runs a side: a --quick run is 2 ms, a few
    // dozen passes over 2 MiB, and with 8 the interval on a ratio near 1.15 reached down past
    // 1.10 and 1.05. The smaller sets are steadier and keep the row's plan.
    let plan = if bytes >= 2 << 20 { ctx.plan().at_least(stats::NOISY_MIN_RUNS) } else { ctx.plan() };
    // Made once: every run of both sides touches the same two buffers (pingpong::WorkingSets).
    let sets = WorkingSets::new(bytes)?;
    let Findings { process, thread, skipped, .. } = pipe_by(ctx, plan, 1, Placement::same_cpu()?, &sets)?;
    if let Some(why) = skipped {
        return Ok(Findings::skipped(why));
    }
    // Measured in this experiment's window, on the driver's CPU: what touching the buffer
    // costs with warm caches and no switch, part of every pass on both sides.
    let touch_ns = round(pingpong::touch_cost(&sets.driver));
    let with_touch = |s: Option<Side>| s.map(|s| s.fact("touch_ns", touch_ns));
    let note = (bytes > 0).then(|| {
        "Each task reads its own buffer, a cache line at a time, before it passes the token. The two buffers \
         are made once, before the runs, and every run of both sides reads the same two: the fresh child \
         inherits the partner's through fork(2) and only reads it, so no page is copied \
         (minor_faults_once_ready counts both tasks' page faults from being ready to the end of each timed \
         run, warm-up included, over the timed runs); the fresh thread \
         shares it. touch_ns is one pass over the driver's buffer with warm caches and no switch."
            .to_string()
    });
    Ok(Findings { process: with_touch(process), thread: with_touch(thread), note, ..Findings::default() })
}

fn baseline_pipe(ctx: &Ctx) -> Result<Findings> {
    baseline(ctx, Baseline::Pipe, UNIT)
}

fn baseline_syscall(ctx: &Ctx) -> Result<Findings> {
    baseline(ctx, Baseline::Syscall, "ns/call")
}

/// A control measured in its own window: the same loop without a switch, in a process of
/// its own and in a thread, taking turns like every experiment.
fn baseline(ctx: &Ctx, what: Baseline, unit: &str) -> Result<Findings> {
    let place = match Placement::same_cpu()? {
        Ok(p) => p,
        Err(why) => return Ok(Findings::skipped(why)),
    };
    let cpu = place.driver;
    let size = Size::Count(calibrate(
        ctx,
        |size| Ok(ctx.hosted(|| thread::alone(ctx, cpu, what, size))?.n),
        |size| Ok(process::alone(ctx, cpu, what, size)?.n),
    )?);
    let (mut ps, mut ts) = (Vec::new(), Vec::new());
    // At least 16 runs a side, as for the working sets: with 8 quick runs the pipe loop's
    // real 6-7 % came out `tie` one run in two, its interval reaching up past 0.95.
    let (p, t) = ctx.interleave_by(
        ctx.plan().at_least(stats::NOISY_MIN_RUNS),
        || Ok(keep(&mut ps, process::alone(ctx, cpu, what, size)?).ns),
        || Ok(keep(&mut ts, ctx.hosted(|| thread::alone(ctx, cpu, what, size))?).ns),
    )?;
    // The pipe loop's cause, checked in every run: the same loop in a child that has a second,
    // idle thread, so that its descriptor table is shared as a thread's is, against the thread
    // again (the fewest runs a number may have, in turns). Not judged: a fact of the control.
    let sibling = match (what, ctx.process() && ctx.thread()) {
        (Baseline::Pipe, true) => {
            let with_sibling = || Ok(process::alone_beside_an_idle_thread(ctx, cpu, what, size)?.ns);
            let in_thread = || Ok(ctx.hosted(|| thread::alone(ctx, cpu, what, size))?.ns);
            match ctx.interleave_by(Plan::fixed(stats::MIN_RUNS), with_sibling, in_thread)? {
                (Some(p2), Some(t2)) => Some((p2, t2)),
                _ => None,
            }
        }
        _ => None,
    };
    let side = |summary: Summary, runs: &[Alone]| {
        let timed = &runs[runs.len() - summary.runs..];
        let tasks: Vec<TaskEvidence> = timed.iter().map(|a| a.task).collect();
        let switches = |f: fn(&TaskEvidence) -> i64| tasks.iter().map(f).sum::<i64>();
        Side::measured(&summary, unit)
            .fact("iterations", timed.iter().map(|a| a.n).sum::<u64>())
            .fact("voluntary_switches", switches(|t| t.voluntary))
            .fact("involuntary_switches", switches(|t| t.involuntary))
            .fact("pinned_cpu", cpu)
            .fact("ran_on_cpus", cpus_seen(&tasks))
            .fact("ran_on_pinned_cpu", tasks.iter().all(TaskEvidence::ran_where_pinned))
    };
    let process = p.map(|s| match &sibling {
        Some((p2, t2)) => with_an_idle_second_thread(side(s, &ps), p2, t2),
        None => side(s, &ps),
    });
    let note = (what == Baseline::Pipe).then(|| {
        "A thread looks up each descriptor in the table it shares with the other threads, so read(2) and \
         write(2) take and drop a reference on the file (fdget), and glibc's read and write, being cancellation \
         points, turn on asynchronous cancellation and off again around each call once a process has a second \
         thread; a single-threaded process skips both. ns_with_an_idle_second_thread is the process side again, \
         in a child that first starts a second thread that only waits, and ratio_with_an_idle_second_thread is \
         that against the thread (with its 95 % interval, ratio_with_an_idle_second_thread_interval): if being \
         a multi-threaded process is the whole difference, it is near 1."
            .to_string()
    });
    Ok(Findings { process, thread: t.map(|s| side(s, &ts)), note, ..Findings::default() })
}

/// Both sides of a ping-pong experiment: one calibration run sizes the loop, then the sides
/// take their timed runs in turns, each run with a partner of its own.
fn pingpong_sides(
    ctx: &Ctx,
    plan: Plan,
    calibrations: usize,
    process: impl Fn(Size) -> Result<Outcome>,
    thread: impl Fn(Size) -> Result<Outcome>,
) -> Result<(Option<Side>, Option<Side>, Size)> {
    // The last of `calibrations` calibration runs sizes the loop: where the first runs are slow
    // (across CPUs), the first would size it for a path not yet warm.
    let mut count = 0;
    for _ in 0..calibrations.max(1) {
        count = calibrate(ctx, |size| Ok(thread(size)?.run.n), |size| Ok(process(size)?.run.n))?;
    }
    let size = Size::Count(count);
    let (mut ps, mut ts) = (Vec::new(), Vec::new());
    let (p, t) = ctx.interleave_by(
        plan,
        || Ok(keep(&mut ps, process(size)?).run.ns_per_switch),
        || Ok(keep(&mut ts, thread(size)?).run.ns_per_switch),
    )?;
    Ok((p.map(|s| pingpong_side(&s, &ps)), t.map(|s| pingpong_side(&s, &ts)), size))
}

/// The loop size that fills one run's time budget, found by a run of whichever side is asked
/// for (the thread side when both are): the same count then serves every run of both sides.
fn calibrate(ctx: &Ctx, thread: impl Fn(Size) -> Result<u64>, process: impl Fn(Size) -> Result<u64>) -> Result<u64> {
    let budget = Size::Budget(pingpong::run_budget(ctx));
    if ctx.thread() { thread(budget) } else { process(budget) }
}

fn keep<T: Copy>(all: &mut Vec<T>, one: T) -> T {
    all.push(one);
    one
}

/// One side of a ping-pong as the report shows it: ns per switch, and the evidence, summed
/// over its timed runs, that the switches happened where we asked.
fn pingpong_side(summary: &Summary, runs: &[Outcome]) -> Side {
    // The last `runs` outcomes are the timed ones; the warm-up runs came first.
    let timed = &runs[runs.len() - summary.runs..];
    let round_trips: u64 = timed.iter().map(|o| o.run.round_trips).sum();
    let expected = 2 * round_trips;
    let tasks: Vec<TaskEvidence> = timed.iter().flat_map(|o| [o.run.driver, o.partner]).collect();
    let voluntary: i64 = tasks.iter().map(|t| t.voluntary).sum();
    let involuntary: i64 = tasks.iter().map(|t| t.involuntary).sum();
    let ratio = |count: i64| (count as f64 / expected as f64 * 1000.0).round() / 1000.0;
    let first = timed[0];
    // On one CPU the woken task often preempts the one that woke it before that one blocks:
    // its switch is then counted as involuntary. The sum is what must be two per round trip.
    Side::measured(summary, UNIT)
        .fact("round_trips", round_trips)
        .fact("expected_switches", expected)
        .fact("voluntary_switches", voluntary)
        .fact("involuntary_switches", involuntary)
        .fact("voluntary_switch_ratio", ratio(voluntary))
        .fact("switch_ratio", ratio(voluntary + involuntary))
        .fact("pinned_cpus", [first.run.driver.pinned, first.partner.pinned])
        .fact("ran_on_cpus", cpus_seen(&tasks))
        .fact("ran_on_pinned_cpus", tasks.iter().all(TaskEvidence::ran_where_pinned))
        .fact("minor_faults_once_ready", tasks.iter().map(|t| t.minor_faults).sum::<i64>())
}

/// The distinct CPUs the tasks were seen on at their marks (sched_getcpu(3)).
fn cpus_seen(tasks: &[TaskEvidence]) -> Vec<usize> {
    tasks.iter().flat_map(|t| t.seen).collect::<BTreeSet<_>>().into_iter().collect()
}

/// Nanoseconds with one decimal: finer digits are noise.
fn round(ns: f64) -> f64 {
    (ns * 10.0).round() / 10.0
}
