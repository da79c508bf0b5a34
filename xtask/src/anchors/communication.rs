//! communication: the row's figures beside perf bench's, on the CPU our tasks were pinned to.
//!
//! - pipe: `latency-pipe`'s round trip (processes, threads) against `perf bench sched pipe`
//!   (and `-T`); one perf op is one round trip. Our receive waits in poll(2) with a deadline,
//!   so ours should be somewhat slower: a scale.
//! - socket pair: half the socket pair's one-CPU round trip from the matrix (µs per message)
//!   against `perf bench sched messaging` (processes, and `-t` threads: 20 senders and 20
//!   receivers per group over Unix socket pairs, 100-byte messages), µs per message. Different
//!   shapes (one pair ping-ponging against 40 tasks streaming): a scale.
//! - shared-memory bulk at 1 MiB messages (`throughput-shm`): the segment ring's GB/s against
//!   the in-place thread ring's (at least 0.8) and against `perf bench mem memcpy -s 4MB` on
//!   the same CPU (at least 0.4). The ring makes two passes over every byte where memcpy makes
//!   one (the writer's copy in, the reader's checksum where it lies), so a ring that adds
//!   nothing of its own reaches about half memcpy's GB/s where a read costs what a copy does
//!   (0.45-0.55 on an AMD EPYC guest whose 4 MB copy runs from L3 at 35-39 GB/s; 0.88 on the
//!   Intel guest, whose copy went to memory at 13 GB/s); the band was 0.5, with no room for
//!   the two switches per ring-full, and read `NO` at 0.497 there. An extra copy on the way
//!   (three passes) would give about a third where reads cost what copies do, and so fail;
//!   where the copy goes to memory and the reader's pass stays in cache (the Intel guest), it
//!   would still pass: the floor catches it only on the first kind of machine.
//!
//!   4 MB is the ring's size (four 1 MiB slots, `Shape::slots`): a copy of that much goes through the caches as the ring's messages do. It was `-s 1MB`,
//!   which stays in a core's L2 where L2 holds 2 MiB (29 GB/s on the Intel guest, against
//!   13.4 at 4 MB and 12.8 at 16 MB), so the line said more about the L2's size than about
//!   the ring: 0.38-0.39 there, 0.79 on an AMD guest whose 1 MB copy already left L2.

use anyhow::{Context, Result};

use super::tools::{PERF, TASKSET, perf_memcpy, perf_messaging, perf_pipe};
use super::{Anchor, Ctx, Line, fact, median_of, pinned_cpu, sides};

pub const ANCHOR: Anchor = Anchor {
    row: "communication",
    title: "pipe, socket pair and shared-memory ring beside perf bench sched pipe (-T), sched messaging (-t), mem memcpy",
    tools: &[&TASKSET, &PERF],
    run,
};

/// The ring's size, as perf bench writes it: four slots of 1 MiB messages.
const RING_SIZE: &str = "4MB";

fn run(ctx: &Ctx) -> Result<Vec<Line>> {
    if !(ctx.has(&TASKSET) && ctx.has(&PERF)) {
        return Ok(Vec::new());
    }
    const POLL: &str = "our receive waits in poll(2) with a deadline: somewhat slower";
    const SHAPES: &str = "one pair ping-ponging against 40 tasks streaming";
    let mut lines = [
        Line::new("pipe round trip, processes  vs  sched pipe", "µs", "µs/op").scale(POLL),
        Line::new("pipe round trip, threads  vs  sched pipe -T", "µs", "µs/op").scale(POLL),
        Line::new("socket pair per message, processes  vs  sched messaging", "µs", "µs/msg").scale(SHAPES),
        Line::new("socket pair per message, threads  vs  sched messaging -t", "µs", "µs/msg").scale(SHAPES),
        Line::new("shared-memory ring, 1 MiB  vs  in-place thread ring", "GB/s", "GB/s").band(
            0.8,
            f64::INFINITY,
            "the same ring, in a segment between processes or in place between threads",
        ),
        Line::new(format!("shared-memory ring, 1 MiB  vs  mem memcpy -s {RING_SIZE}"), "GB/s", "GB/s").band(
            0.4,
            f64::INFINITY,
            "a ring copies each message once in and the reader reads it once more (its checksum): two passes \
             where memcpy makes one, so about half memcpy's GB/s, less the switches; the copy is of the ring's size",
        ),
    ];
    for round in 1..=ctx.rounds {
        eprintln!("communication anchors, round {round}/{}: communication, then perf bench", ctx.rounds);
        let report =
            ctx.ours("communication", &["--only", "latency-pipe", "--only", "throughput-shm", "--only", "cpu-cost"])?;
        let (pp, pt) = sides(&report, "latency-pipe")?;
        let cpu = pinned_cpu(pp)?;
        lines[0].push(median_of(pp)?, perf_pipe(cpu, false)?);
        lines[1].push(median_of(pt)?, perf_pipe(cpu, true)?);
        let (mp, mt) = sides(&report, "cpu-cost")?;
        lines[2].push(socket_us_per_message(mp)?, perf_messaging(cpu, false)?);
        lines[3].push(socket_us_per_message(mt)?, perf_messaging(cpu, true)?);
        let (rp, rt) = sides(&report, "throughput-shm")?;
        let ring = fact(rp, "gb_per_s")?;
        lines[4].push(ring, fact(rt, "gb_per_s")?);
        lines[5].push(ring, perf_memcpy(Some(cpu), RING_SIZE, 200)?);
    }
    Ok(lines.into_iter().collect())
}

/// Half the socket pair's one-CPU p50 round trip, from the matrix line "one CPU: p50 10.3 µs, ...".
fn socket_us_per_message(side: &harness::report::Side) -> Result<f64> {
    let line = side.facts.get("socket pair").and_then(|v| v.as_str()).context("no socket pair line")?;
    let p50: f64 = line
        .strip_prefix("one CPU: p50 ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no one-CPU p50 in {line:?}"))?;
    Ok(p50 / 2.0)
}
