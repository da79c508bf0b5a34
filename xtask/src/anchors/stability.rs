//! stability: `restart`, the time from a worker's crash to its replacement's first
//! instruction, beside what starting a task costs by stress-ng: `--fork` (fork, exit, wait)
//! for the process side and `--pthread` (start of a pthread) for the thread side.
//!
//! A restart also includes noticing the crash (waitpid through a pidfd, or a join) and the
//! supervisor's bookkeeping, while stress-ng's fork op does more than a bare fork (its child
//! makes five more calls before it exits: anchors/concurrency.rs): the ratios are scales, not
//! bands. The restarts share one CPU, and stress-ng's forks run there too.

use anyhow::Result;

use super::tools::{STRESS_NG, TASKSET, stress_ng_fork_us, stress_ng_pthread_us};
use super::{Anchor, Ctx, Line, fact, median_of, sides};

pub const ANCHOR: Anchor = Anchor {
    row: "stability",
    title: "restart beside stress-ng --fork (process) and --pthread (thread)",
    tools: &[&TASKSET, &STRESS_NG],
    run,
};

fn run(ctx: &Ctx) -> Result<Vec<Line>> {
    const WHY: &str = "a restart is noticing the crash, then a start (stress-ng's fork op does more than a bare fork)";
    let mut lines = [
        Line::new("restart, process  vs  stress-ng --fork bogo op", "µs", "µs").scale(WHY),
        Line::new("restart, thread  vs  stress-ng --pthread start", "µs", "µs").scale(WHY),
    ];
    for round in 1..=ctx.rounds {
        eprintln!(
            "stability anchors, round {round}/{}: stability --only restart, stress-ng --fork, --pthread",
            ctx.rounds
        );
        let report = ctx.ours("stability", &["--only", "restart"])?;
        let (p, t) = sides(&report, "restart")?;
        // stress-ng's forks on the CPU the restarts shared. Its pthread starts run free: pinned,
        // a new thread waits for the creator's time slice (1.6 ms here), which times nothing.
        lines[0].push(median_of(p)?, stress_ng_fork_us(Some(fact(p, "pinned_cpu")? as usize))?);
        lines[1].push(median_of(t)?, stress_ng_pthread_us(None)?);
    }
    Ok(lines.into_iter().collect())
}
