//! concurrency: `spawn` beside stress-ng, round after round.
//!
//! - process: our fork + `_exit` + waitpid (the median of `spawn`'s process side) against
//!   `stress-ng --fork 1`, whose bogo op is one fork, the child's exit and the wait;
//! - thread: our time from just before the spawn to the new thread's first instruction
//!   (`first_run_us_p50`) against `stress-ng --pthread 1`'s "nanosecs to start a pthread",
//!   measured the same way (a clock read before pthread_create against one read by the thread).
//!
//! stress-ng's process is larger than ours (more page tables to copy), so its forks may cost
//! more: the band is 0.5–2 ×.

use anyhow::Result;

use super::tools::{STRESS_NG, stress_ng_fork_us, stress_ng_pthread_us};
use super::{Anchor, Ctx, Line, fact, median_of, sides};

pub const ANCHOR: Anchor = Anchor {
    row: "concurrency",
    title: "spawn beside stress-ng --fork 1 (process) and --pthread 1 (thread)",
    tools: &[&STRESS_NG],
    run,
};

fn run(ctx: &Ctx) -> Result<Vec<Line>> {
    let mut lines = [
        Line::new("fork + exit + wait  vs  --fork bogo op", "µs", "µs").band(
            0.5,
            2.0,
            "the same three calls; stress-ng's larger process has more page tables to copy",
        ),
        Line::new("call to first instruction  vs  --pthread start", "µs", "µs").band(
            0.5,
            2.0,
            "both read a clock before pthread_create and in the new thread",
        ),
    ];
    for round in 1..=ctx.rounds {
        eprintln!(
            "concurrency anchors, round {round}/{}: concurrency --only spawn, stress-ng --fork, --pthread",
            ctx.rounds
        );
        let report = ctx.ours("concurrency", &["--only", "spawn"])?;
        let (p, t) = sides(&report, "spawn")?;
        lines[0].push(median_of(p)?, stress_ng_fork_us(None)?);
        lines[1].push(fact(t, "first_run_us_p50")?, stress_ng_pthread_us(None)?);
    }
    Ok(lines.into_iter().collect())
}
