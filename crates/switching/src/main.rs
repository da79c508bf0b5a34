//! The switching row: is a switch between threads faster than a switch between processes?
//!
//! Each experiment runs the same ping-pong (pingpong.rs) twice: once between two processes
//! (process.rs) and once between two threads (thread.rs), and reports ns per switch with the
//! evidence that the switches happened where we asked: voluntary context switches counted by
//! the kernel, and the CPU each task ran on.

mod pingpong;
mod process;
mod thread;

use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Result;
use harness::row::Which;
use harness::{Better, Ctx, Expected, Findings, Kind, Needs, Side, Spec, cpu};

use harness::cpu::Pinned;
use pingpong::{Alone, Baseline, Outcome, Placement};

const UNIT: &str = "ns/switch";

const fn measure(
    id: &'static str,
    title: &'static str,
    unit: &'static str,
    expected: Expected,
    needs: Needs,
    run: fn(&Ctx) -> Result<Findings>,
) -> Spec {
    Spec { id, title, kind: Kind::Measure, unit: Some((unit, Better::Lower)), expected, needs, headline: false, run }
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
            "Ping-pong with futex wait/wake on one 32-bit word, both tasks on one CPU",
            UNIT,
            Expected::Thread,
            PARTNER,
            futex_same_cpu,
        )
        .headline(),
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
    let place = match same_cpu()? {
        Ok(p) => p,
        Err(reason) => return Ok(Findings::skipped(reason)),
    };
    let process = ctx.process_side(|| {
        let o = process::pipe_pingpong(ctx, place, 0)?;
        let base = baseline(ctx, Which::Process, Baseline::Pipe, place.driver)?;
        Ok(pingpong_side(&o)
            .fact("baseline_pipe_ns", round(base.summary.median))
            .fact("minus_baseline_ns", round(o.measured.summary.median - base.summary.median)))
    })?;
    let thread = ctx.thread_side(|| {
        let o = thread::pipe_pingpong(ctx, place, 0)?;
        let base = baseline(ctx, Which::Thread, Baseline::Pipe, place.driver)?;
        Ok(pingpong_side(&o)
            .fact("baseline_pipe_ns", round(base.summary.median))
            .fact("minus_baseline_ns", round(o.measured.summary.median - base.summary.median)))
    })?;
    Ok(Findings { process, thread, ..Findings::default() })
}

fn futex_same_cpu(ctx: &Ctx) -> Result<Findings> {
    let place = match same_cpu()? {
        Ok(p) => p,
        Err(reason) => return Ok(Findings::skipped(reason)),
    };
    // Each switch costs one FUTEX_WAKE and one FUTEX_WAIT besides the switch itself.
    let minus_syscalls = |o: &Outcome, call: &Alone| round(o.measured.summary.median - 2.0 * call.summary.median);
    let process = ctx.process_side(|| {
        let o = process::futex_pingpong(ctx, place)?;
        let call = baseline(ctx, Which::Process, Baseline::Syscall, place.driver)?;
        Ok(pingpong_side(&o)
            .fact("futex_ops", pingpong::SHARED.name)
            .fact("minus_two_syscalls_ns", minus_syscalls(&o, &call)))
    })?;
    let thread = ctx.thread_side(|| {
        let o = thread::futex_pingpong(ctx, place)?;
        let call = baseline(ctx, Which::Thread, Baseline::Syscall, place.driver)?;
        Ok(pingpong_side(&o)
            .fact("futex_ops", pingpong::PRIVATE.name)
            .fact("minus_two_syscalls_ns", minus_syscalls(&o, &call)))
    })?;
    Ok(Findings { process, thread, ..Findings::default() })
}

fn pipe_cross_cpu(ctx: &Ctx) -> Result<Findings> {
    let place = match cross_cpu()? {
        Ok(p) => p,
        Err(reason) => return Ok(Findings::skipped(reason)),
    };
    let process = ctx.process_side(|| Ok(pingpong_side(&process::pipe_pingpong(ctx, place, 0)?)))?;
    let thread = ctx.thread_side(|| Ok(pingpong_side(&thread::pipe_pingpong(ctx, place, 0)?)))?;
    Ok(Findings { process, thread, ..Findings::default() }
        .with_note("every wake-up crosses CPUs: compare with pipe-same-cpu to see what placement costs"))
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
    let place = match same_cpu()? {
        Ok(p) => p,
        Err(reason) => return Ok(Findings::skipped(reason)),
    };
    let side = |o: &Outcome, base: &Alone| {
        let m = &o.measured;
        pingpong_side(o)
            .fact("working_set_bytes", bytes)
            .fact("touch_ns", round(m.touch_ns))
            .fact("minus_baseline_and_touch_ns", round(m.summary.median - base.summary.median - m.touch_ns))
    };
    let process = ctx.process_side(|| {
        let o = process::pipe_pingpong(ctx, place, bytes)?;
        Ok(side(&o, &baseline(ctx, Which::Process, Baseline::Pipe, place.driver)?))
    })?;
    let thread = ctx.thread_side(|| {
        let o = thread::pipe_pingpong(ctx, place, bytes)?;
        Ok(side(&o, &baseline(ctx, Which::Thread, Baseline::Pipe, place.driver)?))
    })?;
    Ok(Findings { process, thread, ..Findings::default() })
}

fn baseline_pipe(ctx: &Ctx) -> Result<Findings> {
    baseline_experiment(ctx, Baseline::Pipe, UNIT)
}

fn baseline_syscall(ctx: &Ctx) -> Result<Findings> {
    baseline_experiment(ctx, Baseline::Syscall, "ns/call")
}

fn baseline_experiment(ctx: &Ctx, what: Baseline, unit: &str) -> Result<Findings> {
    let place = match same_cpu()? {
        Ok(p) => p,
        Err(reason) => return Ok(Findings::skipped(reason)),
    };
    let side = |a: &Alone| {
        let t = &a.task;
        Side::measured(&a.summary, unit)
            .fact("voluntary_switches", t.voluntary)
            .fact("involuntary_switches", t.involuntary)
            .fact("pinned_cpu", t.pinned)
            .fact("ran_on_cpu", t.seen[1])
            .fact("ran_on_pinned_cpu", t.ran_where_pinned())
    };
    let process = ctx.process_side(|| Ok(side(&baseline(ctx, Which::Process, what, place.driver)?)))?;
    let thread = ctx.thread_side(|| Ok(side(&baseline(ctx, Which::Thread, what, place.driver)?)))?;
    Ok(Findings { process, thread, ..Findings::default() })
}

/// A baseline, measured once per run and side, then reused by every experiment that
/// subtracts it.
fn baseline(ctx: &Ctx, which: Which, what: Baseline, cpu: usize) -> Result<Alone> {
    static MEASURED: Mutex<Vec<(Which, Baseline, Alone)>> = Mutex::new(Vec::new());
    let cached = MEASURED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(w, b, _)| *w == which && *b == what)
        .map(|(_, _, a)| a.clone());
    if let Some(a) = cached {
        return Ok(a);
    }
    let a = match which {
        Which::Process => process::alone(ctx, cpu, what)?,
        Which::Thread => thread::alone(ctx, cpu, what)?,
    };
    MEASURED.lock().unwrap_or_else(|e| e.into_inner()).push((which, what, a.clone()));
    Ok(a)
}

/// One side of a ping-pong as the report shows it: ns per switch, and the evidence that the
/// switches happened where we asked.
fn pingpong_side(o: &Outcome) -> Side {
    let (m, d, p) = (&o.measured, &o.measured.driver, &o.partner);
    let expected = 2 * m.round_trips;
    let (voluntary, involuntary) = (d.voluntary + p.voluntary, d.involuntary + p.involuntary);
    let ratio = |count: i64| (count as f64 / expected as f64 * 1000.0).round() / 1000.0;
    // On one CPU the woken task often preempts the one that woke it before that one blocks:
    // its switch is then counted as involuntary. The sum is what must be two per round trip.
    Side::measured(&m.summary, UNIT)
        .fact("round_trips", m.round_trips)
        .fact("expected_switches", expected)
        .fact("voluntary_switches", voluntary)
        .fact("involuntary_switches", involuntary)
        .fact("voluntary_switch_ratio", ratio(voluntary))
        .fact("switch_ratio", ratio(voluntary + involuntary))
        .fact("pinned_cpus", [d.pinned, p.pinned])
        .fact("ran_on_cpus", [d.seen[1], p.seen[1]])
        .fact("ran_on_pinned_cpus", d.ran_where_pinned() && p.ran_where_pinned())
}

/// Both tasks on the first CPU we may use, or why that cannot be arranged here.
fn same_cpu() -> Result<Result<Placement, String>> {
    let Some(&first) = cpu::allowed()?.first() else {
        return Ok(Err("sched_getaffinity reports no CPU we may run on".to_string()));
    };
    Ok(match Pinned::to(first) {
        Ok(_undo) => Ok(Placement { driver: first, partner: first }),
        Err(e) => Err(format!("pinning was refused: {e:#}")),
    })
}

/// The tasks on two different CPUs, or why that cannot be arranged here.
fn cross_cpu() -> Result<Result<Placement, String>> {
    let Some((a, b)) = cpu::two_distinct()? else {
        return Ok(Err("only one CPU is allowed here: a wake-up cannot cross CPUs".to_string()));
    };
    Ok(match Pinned::to(a).and_then(|_undo| Pinned::to(b)) {
        Ok(_undo) => Ok(Placement { driver: a, partner: b }),
        Err(e) => Err(format!("pinning was refused: {e:#}")),
    })
}

/// Nanoseconds with one decimal: finer digits are noise.
fn round(ns: f64) -> f64 {
    (ns * 10.0).round() / 10.0
}
