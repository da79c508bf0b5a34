//! memory: `cow-copy`'s cost per page beside a bare copy of a 4 KiB page, derived from
//! `perf bench mem memcpy` copying as much memory as the experiment writes (so that neither
//! sits in a cache the other does not have).
//!
//! A copy-on-write fault is a trap, a page allocated, 4 KiB copied and a page-table entry
//! changed; the copy alone is its floor. The ratio says how many bare copies one fault
//! costs: a scale, well above 1. The thread side writes the same pages with no fault: its
//! ratio says how a write in place compares with a copy.

use anyhow::Result;

use super::tools::{PERF, perf_memcpy};
use super::{Anchor, Ctx, Line, fact, median_of, sides};

pub const ANCHOR: Anchor = Anchor {
    row: "memory",
    title: "cow-copy ns/page beside a bare 4 KiB copy from perf bench mem memcpy (same amount of memory)",
    tools: &[&PERF],
    run,
};

fn run(ctx: &Ctx) -> Result<Vec<Line>> {
    let mut lines = [
        Line::new("copy-on-write fault (process)  vs  4 KiB memcpy", "ns/page", "ns/4 KiB").scale(
            "a fault is a trap, a new page, the copy and a page-table update: how many bare copies one fault costs",
        ),
        Line::new("write in place (thread)  vs  4 KiB memcpy", "ns/page", "ns/4 KiB")
            .scale("the thread writes the same pages with no fault and no copy"),
    ];
    for round in 1..=ctx.rounds {
        eprintln!("memory anchors, round {round}/{}: memory --only cow-copy, perf bench mem memcpy", ctx.rounds);
        let report = ctx.ours("memory", &["--only", "cow-copy"])?;
        let (p, t) = sides(&report, "cow-copy")?;
        let bytes = fact(p, "pages_written")? * fact(p, "page_bytes")?;
        let gbs = perf_memcpy(None, &format!("{}KB", (bytes / 1024.0).round()), 20)?;
        // GB/s is bytes per ns: one 4 KiB page takes 4096 / rate ns.
        let page_ns = 4096.0 / gbs;
        lines[0].push(median_of(p)?, page_ns);
        lines[1].push(median_of(t)?, page_ns);
    }
    Ok(lines.into_iter().collect())
}
