//! switching: our `pipe-same-cpu` beside the standard switch benchmarks, all pinned to the CPU
//! our two tasks were pinned to.
//!
//! - `perf bench sched pipe` (processes) and `-T` (threads): one perf op is one round trip,
//!   two switches; both pass a few bytes each way over two pipes, so ours should agree
//!   (0.85–1.15);
//! - `stress-ng --switch 1 --switch-method pipe`: its pair of processes passes messages over a
//!   pipe too, and it reports ns per context switch: a scale against our process side;
//! - `hackbench -p` and `-p -T` (rt-tests): its place is here, not in concurrency, because its
//!   time is that of 40 tasks on one CPU waking each other over pipes, that is wake-ups and
//!   context switches, and it has a process mode and a thread mode: its P/T is the ratio this
//!   row reports, taken with many tasks instead of a pair.

use anyhow::Result;

use super::tools::{HACKBENCH, PERF, STRESS_NG, TASKSET, hackbench_s, perf_pipe, stress_ng_switch_ns};
use super::{Anchor, Ctx, Line, median_of, pinned_cpu, sides};

pub const ANCHOR: Anchor = Anchor {
    row: "switching",
    title: "pipe-same-cpu beside perf bench sched pipe (-T), stress-ng --switch and hackbench (-T), on our CPU",
    tools: &[&TASKSET, &PERF, &STRESS_NG, &HACKBENCH],
    run,
};

fn run(ctx: &Ctx) -> Result<Vec<Line>> {
    const AGREE: &str =
        "both pin two tasks to one CPU and pass a few bytes each way over two pipes; one perf op is one round trip";
    let mut perf = [
        Line::new("round trip, processes  vs  perf bench sched pipe", "µs", "µs/op").band(0.85, 1.15, AGREE),
        Line::new("round trip, threads  vs  perf bench sched pipe -T", "µs", "µs/op").band(0.85, 1.15, AGREE),
    ];
    let mut switch = Line::new("one switch, processes  vs  stress-ng --switch (pipe)", "ns", "ns")
        .scale("stress-ng's pair passes messages over a pipe on one CPU too and counts its own switches: a scale");
    let mut hackbench = Line::new("P/T of the switch  vs  hackbench -p P/T (-T)", "×", "×").scale(
        "hackbench times 40 tasks waking each other over pipes, in process and thread mode: its P/T asks this row's question with many tasks",
    );
    let pin = ctx.has(&TASKSET);
    for round in 1..=ctx.rounds {
        eprintln!("switching anchors, round {round}/{}: switching --only pipe-same-cpu, then the tools", ctx.rounds);
        let report = ctx.ours("switching", &["--only", "pipe-same-cpu"])?;
        let (p, t) = sides(&report, "pipe-same-cpu")?;
        let (process_ns, thread_ns, cpu) = (median_of(p)?, median_of(t)?, pinned_cpu(p)?);
        if pin && ctx.has(&PERF) {
            perf[0].push(2.0 * process_ns / 1000.0, perf_pipe(cpu, false)?);
            perf[1].push(2.0 * thread_ns / 1000.0, perf_pipe(cpu, true)?);
        }
        if pin && ctx.has(&STRESS_NG) {
            switch.push(process_ns, stress_ng_switch_ns(cpu)?);
        }
        if pin && ctx.has(&HACKBENCH) {
            hackbench.push(process_ns / thread_ns, hackbench_s(cpu, false)? / hackbench_s(cpu, true)?);
        }
    }
    let [a, b] = perf;
    Ok([a, b, switch, hackbench].into_iter().filter(|l| !l.ours.is_empty()).collect())
}
