//! The memory row: does a process really have memory of its own, and do threads really share
//! theirs?
//!
//! Every experiment runs process::X and thread::X and turns what they observed or measured
//! into findings, with the evidence in facts: the addresses written, the values each side saw,
//! the page faults the kernel counted, the memory /proc accounted. The harness computes the
//! verdicts. See docs/memory.md.

mod pages;
mod process;
mod thread;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use harness::stats::{self, Summary};
use harness::{Better, Ctx, Expected, Findings, Kind, Needs, Room, Row, Side, Spec, spawn_sacrificial};

use pages::{Added, BEFORE, Buffer, Pass, WRITTEN, Writes, hex};

static ROW: Row = Row {
    name: "memory",
    claim: "A process has its own address space and shares nothing unless it maps memory on purpose; the \
            threads of a process share all of its memory.",
    experiments: &[
        Spec {
            id: "private-write",
            title: "A forked child, or a thread, writes a global and a heap value: does the parent see it?",
            kind: Kind::Observe,
            unit: None,
            expected: Expected::Process,
            needs: Needs::tasks(1).and_memory(2 * OWN_PAGE),
            headline: true,
            run: private_write,
        },
        Spec {
            id: "shared-segment",
            title: "Sharing one value: a named POSIX segment another program maps, or a plain value a thread writes",
            kind: Kind::Observe,
            unit: None,
            expected: Expected::Thread,
            needs: Needs::tasks(1).and_memory(OWN_PAGE),
            headline: false,
            run: shared_segment,
        },
        Spec {
            id: "cow-copy",
            title: "After fork, the child writes one byte per page of the parent's buffer; a thread writes the same",
            kind: Kind::Measure,
            unit: Some(("ns/page", Better::Lower)),
            expected: Expected::Thread,
            // Each side's buffer, and a child's copy of the process side's.
            needs: Needs::tasks(1).and_memory(3 * COW_BYTES as u64),
            headline: true,
            run: cow_copy,
        },
        Spec {
            id: "footprint",
            title: "Memory each idle worker adds (anonymous Pss + page tables): processes or threads",
            kind: Kind::Measure,
            unit: Some((FOOTPRINT_UNIT, Better::Lower)),
            expected: Expected::Thread,
            // The fewest it runs with, plus the host; it sizes itself to the room left (see
            // `footprint`), so the runner must refuse only when not even that fits.
            needs: Needs::tasks(MIN_WORKERS + 1).and_memory(MIN_WORKERS * WORKER_MEMORY),
            headline: true,
            run: footprint,
        },
    ],
    children: &[
        ("open-segment", process::open_segment),
        ("footprint-processes", process::footprint_child),
        ("footprint-threads", thread::footprint_child),
    ],
};

/// The size of a value alone on its page ([`pages::OwnPage`]).
const OWN_PAGE: u64 = size_of::<pages::OwnPage>() as u64;

/// The buffer cow-copy writes: 64 MiB, 8 MiB with --quick.
const COW_BYTES: usize = 64 << 20;
const COW_BYTES_QUICK: usize = 8 << 20;

/// The value shared-segment's writers store.
pub const SEGMENT_VALUE: u64 = 42;

const FOOTPRINT_UNIT: &str = "KiB/worker";
/// Idle workers footprint wants, and the fewest it will measure: with fewer, the fixed costs of
/// the host blur the figure per worker.
const WORKERS: u64 = 128;
const WORKERS_QUICK: u64 = 16;
const MIN_WORKERS: u64 = 4;
/// A generous bound on what one idle worker may use, for sizing the experiment to the machine.
const WORKER_MEMORY: u64 = 1 << 20;

/// What a writer did, and what the observer saw at the same addresses afterwards.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PrivateWrite {
    pub writer: Writes,
    /// The global's and the heap value's addresses, as the observer sees them.
    pub observer_addresses: [usize; 2],
    /// The global and the heap value, as the observer reads them after the writer is done.
    pub observer_saw: [u64; 2],
}

/// One value shared between two tasks: what the observer read, and how.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SharedSegment {
    /// The value the observer read where the writer stored [`SEGMENT_VALUE`].
    pub seen: u64,
    /// The thread side: the observer read the value while the writer still ran, before the
    /// join.
    pub seen_before_join: Option<bool>,
    /// The process side: what happened to the segment.
    pub segment: Option<SegmentFacts>,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct SegmentFacts {
    /// Permission bits of /dev/shm/NAME.
    pub mode: u32,
    /// The name was gone while both processes still had the segment mapped.
    pub unlinked_while_both_mapped: bool,
    /// After the unlink, the other program could no longer open the segment by its name.
    pub other_found_name_gone: bool,
    pub owner_address: usize,
    pub other_address: usize,
}

fn main() -> ExitCode {
    harness::row::main(&ROW)
}

fn private_write(ctx: &Ctx) -> Result<Findings> {
    let process = ctx.process_side(|| process::private_write(ctx.deadline()))?;
    // Every thread side of this row starts its threads in a process of its own (Ctx::hosted,
    // Ctx::thread_host), so that this process, which forks the process sides' children, never
    // starts one (docs/report.md, "Processes that glibc took for threads").
    let thread = ctx.thread_side(|| ctx.hosted(thread::private_write))?;
    let wrote = |w: &PrivateWrite| w.writer.read_back == [WRITTEN, WRITTEN];
    // The claim: the child's write stays in the child, the thread's is the observer's too.
    let matches = process.as_ref().zip(thread.as_ref()).map(|(p, t)| {
        wrote(p) && p.observer_saw == [BEFORE, BEFORE] && wrote(t) && t.observer_saw == [WRITTEN, WRITTEN]
    });
    let side = |w: PrivateWrite, writer: &str, observer: &str| {
        let same = w.observer_addresses == [w.writer.global_address, w.writer.heap_address];
        let [global, heap] = w.observer_saw;
        let [back_global, back_heap] = w.writer.read_back;
        let summary = format!(
            "{writer} reads back {back_global} and {back_heap}; {observer} reads {global} and {heap} at {} addresses; \
             {} minor faults",
            if same { "the same" } else { "other" },
            w.writer.minor_faults
        );
        Side::observed(summary)
            .fact("writer_read_back", w.writer.read_back)
            .fact("observer_saw_global", global)
            .fact("observer_saw_heap", heap)
            .fact("write_seen", w.observer_saw == [WRITTEN, WRITTEN])
            .fact("global_address", hex(w.writer.global_address))
            .fact("heap_address", hex(w.writer.heap_address))
            .fact("same_addresses", same)
            .fact("writer_minor_faults", w.writer.minor_faults)
    };
    Ok(Findings {
        process: process.map(|p| side(p, "child", "parent")),
        thread: thread.map(|t| side(t, "thread", "observer")),
        matches_claim: matches,
        note: Some(format!(
            "The observer sets a global and a heap value, each alone on its page, to {BEFORE}; the writer stores \
             {WRITTEN} into both (two stores, two pages). Same address, different memory: after fork(2) the child \
             writes at the very addresses the parent reads, but to its own copy of each page, made by the kernel \
             at the first write (copy-on-write: one minor fault per page). A thread writes the one page of the \
             one address space, which is already writable: no fault, and the observer reads the new value."
        )),
        skipped: None,
    })
}

fn shared_segment(ctx: &Ctx) -> Result<Findings> {
    let process = ctx.process_side(|| process::shared_segment(ctx.deadline()))?;
    let thread = ctx.thread_side(|| ctx.hosted(|| thread::shared_segment(ctx.deadline())))?;
    let seen = |s: &SharedSegment| s.seen == SEGMENT_VALUE;
    // The claim: processes share what they map on purpose, through a segment whose name is
    // private and short-lived, and the write arrives; a thread's plain store arrives as it is,
    // to an observer that reads it while the writer still runs.
    let through_segment =
        |s: &SharedSegment| s.segment.as_ref().is_some_and(|g| g.unlinked_while_both_mapped && g.other_found_name_gone);
    let matches = process
        .as_ref()
        .zip(thread.as_ref())
        .map(|(p, t)| seen(p) && through_segment(p) && seen(t) && t.seen_before_join == Some(true));
    let side = |s: SharedSegment| {
        let how = match (&s.segment, s.seen_before_join) {
            (Some(_), _) => "the other program mapped the segment by name and ended; the owner read".to_string(),
            (None, Some(before)) => {
                format!("the observer read, {} the writer ended,", if before { "before" } else { "after" })
            }
            (None, None) => "the observer read".to_string(),
        };
        let summary =
            format!("{how} {} ({})", s.seen, if seen(&s) { "the value stored" } else { "not the value stored" });
        let mut side = Side::observed(summary).fact("value_seen", s.seen).fact("write_seen", seen(&s));
        if let Some(before) = s.seen_before_join {
            side.set("seen_before_join", before);
        }
        if let Some(g) = &s.segment {
            side.set("segment_mode", format!("{:04o}", g.mode));
            side.set("name_unlinked_while_both_mapped", g.unlinked_while_both_mapped);
            side.set("other_could_not_open_it_by_name_after_unlink", g.other_found_name_gone);
            side.set("owner_address", hex(g.owner_address));
            side.set("other_address", hex(g.other_address));
        }
        side
    };
    Ok(Findings {
        process: process.map(side),
        thread: thread.map(side),
        matches_claim: matches,
        note: Some(format!(
            "The writer stores {SEGMENT_VALUE}. Processes can share memory, but only memory they map on purpose: \
             here a POSIX segment (shm_open + mmap) that the other program finds by name, possibly at another \
             address. The name is unlinked as soon as both have it mapped; the memory lives as long as the \
             mappings. The thread side is the reference: a plain value of the process, no setup at all; the \
             writer stores it and waits, and the observer, running beside it, must read it before the join (only \
             an atomic store and load make it visible)."
        )),
        skipped: None,
    })
}

fn cow_copy(ctx: &Ctx) -> Result<Findings> {
    let bytes = if ctx.quick { COW_BYTES_QUICK } else { COW_BYTES };
    // Setup, once and outside the timed runs: each side's buffer, filled by its owner. The
    // thread side's lives in the process that hosts its runs, made there on its first request.
    let process_buffer = ctx.process_side(|| process::cow_copy_buffer(bytes))?;
    let mut thread_buffer = None;
    let mut threads = ctx.thread_host(move |ask: Ask| {
        let buffer = match &thread_buffer {
            Some(buffer) => buffer,
            None => thread_buffer.insert(thread::cow_copy_buffer(bytes)?),
        };
        Ok(match ask {
            Ask::Passes(passes) => Said::Pass(thread::cow_copy_pass(buffer, passes)?),
            Ask::Owner => Said::Owner(Owned::of(buffer)),
        })
    })?;
    let mut pass = |passes: u64| -> Result<Pass> {
        match threads.call(&Ask::Passes(passes))? {
            Said::Pass(pass) => Ok(pass),
            Said::Owner(_) => anyhow::bail!("the thread side's host answered a pass with its buffer"),
        }
    };
    let pages = bytes / harness::mem::page_size();
    let (mut ps, mut ts) = (Vec::new(), Vec::new());
    // A child's first write to each page is the copy, so a process run is one pass. A thread
    // pass over a present page is mostly a TLB miss a page, 0.13-0.3 ms for 64 MiB: timed
    // alone, it measured whichever of the machine's fast or slow stretches it fell in (the
    // thread side's median read 16-30 ns/page from one invocation to the next on a KVM guest;
    // with runs of 10 ms of passes, 8.3-9.0). So a thread run makes as many passes as fill its
    // budget, sized once on its buffer (these sizing runs count in the checksums too).
    let passes = if ctx.thread() {
        stats::iterations_for(Duration::from_millis(if ctx.quick { 2 } else { 10 }), |n| {
            let pass = pass(n)?;
            ts.push(pass);
            Ok(Duration::from_nanos(pass.took_ns))
        })?
    } else {
        1
    };
    // The thread side is settled: each of its timed runs follows an untimed run of its own, since
    // a thread pass right after a process pass (a fork and 64 MiB of copies) was 23-114 % slower
    // (docs/report.md), the caches full of the copies. A process pass after a thread pass was
    // not, so it is not settled.
    let (p, t) = ctx.interleave(
        || {
            let buffer = process_buffer.as_ref().context("the process side's buffer")?;
            Ok(ns_per_page(&mut ps, pages, process::cow_copy_pass(buffer, ctx.deadline())?))
        },
        stats::settled(|| Ok(ns_per_page(&mut ts, pages, pass(passes)?))),
    )?;
    let thread_buffer = ctx.thread_side(|| match threads.call(&Ask::Owner)? {
        Said::Owner(owned) => Ok(owned),
        Said::Pass(_) => anyhow::bail!("the thread side's host answered for its buffer with a pass"),
    })?;
    threads.finish()?;
    let process_buffer = process_buffer.as_ref().map(Owned::of);
    let process = p.zip(process_buffer).map(|(summary, buffer)| {
        // process: every child started from the parent's copy, so each pass was the first.
        let ok = ps.iter().all(|p| p.checksum == pages::expected_checksum(buffer.pages, 1));
        cow_side(&summary, buffer, &ps, PROCESS_CALLS_PER_RUN, ok)
    });
    let thread = t.zip(thread_buffer).map(|(summary, buffer)| {
        // thread: every pass wrote the one shared buffer, so each run found all passes before it.
        let mut done = 0;
        let ok = ts.iter().all(|p| {
            done += p.passes;
            p.checksum == pages::expected_checksum(buffer.pages, done)
        });
        cow_side(&summary, buffer, &ts, THREAD_CALLS_PER_RUN, ok)
    });
    Ok(Findings {
        process,
        thread,
        note: Some(
            "Both sides write one byte per page of a private anonymous buffer its owner filled, with \
             MADV_NOHUGEPAGE; the sides take their runs in turns, and the thread side's buffer is MADV_DONTFORK \
             so that the process side's forks do not write-protect it. Only the write loop is timed, by the writer \
             itself. The child's first write to each page faults and the kernel copies the page (copy-on-write), \
             so the process side counts about one minor fault per page and its owner never sees the writes; the \
             thread writes the owner's own pages, as many passes per run as fill its budget (passes_per_run), since a \
             lone pass, well under a millisecond, timed the moment more than the write; first_pass_ns_per_page is \
             the first pass of each run alone, which a new writer makes with its caches cold (a process run is only \
             that pass). huge_pages_kib is what /proc/self/smaps showed backed by huge \
             pages after each pass (the most of any pass)."
                .to_string(),
        ),
        ..Findings::default()
    })
}

/// Keeps a run for the evidence and returns its time per page written.
fn ns_per_page(all: &mut Vec<Pass>, pages: usize, pass: Pass) -> f64 {
    all.push(pass);
    per_page_written(pages, &pass)
}

/// What cow-copy's thread side asks the process that hosts it: a run of passes, or, at the
/// end, what its buffer's owner sees.
#[derive(serde::Serialize, serde::Deserialize)]
enum Ask {
    Passes(u64),
    Owner,
}

/// The host's answer to an [`Ask`].
#[derive(serde::Serialize, serde::Deserialize)]
enum Said {
    Pass(Pass),
    Owner(Owned),
}

/// A side's buffer as its owner sees it after the runs.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Owned {
    pages: usize,
    page: usize,
    checksum: u64,
}

impl Owned {
    fn of(buffer: &Buffer) -> Owned {
        Owned { pages: buffer.pages(), page: buffer.page(), checksum: buffer.checksum() }
    }
}

fn per_page_written(pages: usize, pass: &Pass) -> f64 {
    pass.took_ns as f64 / (pages as u64 * pass.passes) as f64
}

/// How many calls of `cow_copy_pass` a side makes for each of its runs (each call is one
/// `Pass` record, of `passes` passes): the thread side's runs are settled (`stats::settled`
/// in `cow_copy`: an untimed call, then the timed one), the process side's are not. Keep in
/// step with `cow_copy`.
const PROCESS_CALLS_PER_RUN: usize = 1;
const THREAD_CALLS_PER_RUN: usize = 2;

/// The timed runs among all of a side's `runs`, oldest first, where the side makes `per_run`
/// calls for each run and the timed one last: the thread side's sizing runs come first, then
/// its pairs of an untimed settle run and a timed run, the warm-up before the timed ones; so
/// the timed runs are every `per_run`-th run from the last.
fn timed_runs(runs: &[Pass], timed: usize, per_run: usize) -> Vec<&Pass> {
    let mut last: Vec<&Pass> = runs.iter().rev().step_by(per_run).take(timed).collect();
    last.reverse();
    last
}

/// One side of cow-copy from all of its `runs` (see [`timed_runs`]); `checksums_ok` is the
/// side's own check of every run.
fn cow_side(summary: &Summary, buffer: Owned, runs: &[Pass], per_run: usize, checksums_ok: bool) -> Side {
    let timed = timed_runs(runs, summary.runs, per_run);
    let faults = stats::median(&timed.iter().map(|p| p.minor_faults as f64).collect::<Vec<_>>()).round() as u64;
    let pages = buffer.pages;
    Side::measured(summary, "ns/page")
        .fact("pages_written", pages)
        .fact("page_bytes", buffer.page)
        .fact("passes_per_run", timed.last().map_or(1, |p| p.passes))
        .fact("first_pass_ns_per_page", {
            let first: Vec<f64> = timed.iter().map(|p| p.first_pass_ns as f64 / pages as f64).collect();
            (stats::median(&first) * 100.0).round() / 100.0
        })
        .fact("huge_pages_kib", runs.iter().map(|p| p.huge_kib).max().unwrap_or(0))
        .fact("minor_faults_per_run", faults)
        // Per page of the buffer, per run: a write-protected page faults on the run's first
        // pass only.
        .fact("minor_faults_per_page", (faults as f64 / pages as f64 * 1000.0).round() / 1000.0)
        .fact("checksum", timed.last().map_or(0, |p| p.checksum))
        .fact("checksums_ok", checksums_ok)
        .fact("owner_sees_writes", buffer.checksum != pages::expected_checksum(pages, 0))
}

fn footprint(ctx: &Ctx) -> Result<Findings> {
    let wanted = if ctx.quick { WORKERS_QUICK } else { WORKERS };
    // The same number of workers on both sides, as many as fit here (tasks, memory, address space).
    let room = Room::probe()?;
    let workers = room.fit(wanted, WORKER_MEMORY);
    if workers < MIN_WORKERS {
        return Ok(Findings::skipped(format!(
            "refused: only {workers} idle workers fit here (at least {MIN_WORKERS} are needed for a figure per \
             worker); tasks left: {}, {}",
            room.tasks.as_ref().map_or("no limit".to_string(), |t| format!("{} ({})", t.amount, t.why)),
            room.memory.why
        )));
    }
    // Each run is a fresh host that ends with its workers: nothing outlives a run, so the
    // process side's forks always happen in a single-threaded host.
    let (mut ps, mut ts) = (Vec::new(), Vec::new());
    let (p, t) = ctx.interleave(
        || Ok(kib_per_worker(&mut ps, process::footprint(workers, ctx.deadline())?)),
        || Ok(kib_per_worker(&mut ts, thread::footprint(workers, ctx.deadline())?)),
    )?;
    Ok(Findings {
        process: p.map(|s| footprint_side(&s, &ps)),
        thread: t.map(|s| footprint_side(&s, &ts)),
        note: Some(format!(
            "Each run starts a fresh copy of this program as the host, so both sides grow from the same start; \
             each worker touches {} KiB of heap and {} KiB of stack, then sleeps. The measured figure is \
             Pss_Anon + VmPTE, after minus before: of the host and every worker for processes (Pss splits a \
             shared page among the processes that map it, so the sum counts every page once), of the host \
             alone for threads. File-backed pages (the program, libc) are in the page cache once whoever maps \
             them and are not counted. The kernel's share comes from /proc/meminfo, read once PageTables \
             has stopped falling (the previous run's tasks free theirs after an RCU grace period: \
             page_tables_steady_before_every_run), right before the first worker starts, and again once \
             all are idle: kernel_stack (KernelStack), slab_unreclaimable \
             (SUnreclaim: task, mm and VMA structures) and machine_page_tables (PageTables, which VmPTE already \
             counts); with_kernel_kib_per_worker is the measured figure plus kernel stack and slab. These \
             counters are machine-wide and include other programs' noise: each is the median over the timed \
             runs of one before/after pair per run.",
            pages::HEAP_TOUCHED >> 10,
            pages::STACK_TOUCHED >> 10
        )),
        ..Findings::default()
    })
}

/// Keeps a host's findings for the evidence and returns its figure, KiB per worker.
fn kib_per_worker(all: &mut Vec<Added>, added: Added) -> f64 {
    all.push(added);
    added.kib_per_worker()
}

/// One side of footprint: the measured figure, and per worker the medians over the timed
/// runs of what each part added (the warm-up runs came first in `runs`).
fn footprint_side(summary: &Summary, runs: &[Added]) -> Side {
    let timed = &runs[runs.len() - summary.runs..];
    let median_kib = |per_worker: fn(&Added) -> f64| {
        (stats::median(&timed.iter().map(per_worker).collect::<Vec<_>>()) * 10.0).round() / 10.0
    };
    Side::measured(summary, FOOTPRINT_UNIT)
        .fact("workers", timed.iter().map(|a| a.workers).min().unwrap_or(0))
        .fact("workers_idle_when_measured", timed.iter().map(|a| a.idle_when_measured).min().unwrap_or(0))
        .fact("anon_kib_per_worker", median_kib(|a| a.per_worker_kib(a.usage.anon)))
        .fact("page_tables_kib_per_worker", median_kib(|a| a.per_worker_kib(a.usage.page_tables)))
        .fact("file_backed_kib_per_worker_not_counted", median_kib(|a| a.per_worker_kib(a.usage.file)))
        .fact("kernel_stack_kib_per_worker", median_kib(|a| a.per_worker_kib(a.kernel.stacks)))
        .fact("slab_unreclaimable_kib_per_worker", median_kib(|a| a.per_worker_kib(a.kernel.slab_unreclaimable)))
        .fact("machine_page_tables_kib_per_worker", median_kib(|a| a.per_worker_kib(a.kernel.page_tables)))
        .fact("with_kernel_kib_per_worker", median_kib(|a| a.with_kernel_kib_per_worker()))
        .fact("page_tables_steady_before_every_run", timed.iter().all(|a| a.kernel_steady))
}

/// One footprint run: a fresh copy of this program as the host (`footprint-processes` or
/// `footprint-threads`) starts `workers` idle workers and delivers what they added.
pub fn footprint_host(host: &str, workers: u64, deadline: Duration) -> Result<Added> {
    let args = [workers.to_string(), deadline.as_millis().to_string()];
    let exit = spawn_sacrificial(host, &args)?.wait(deadline)?;
    exit.check("the footprint host")?;
    let added: Added = exit.received_one("added")?;
    anyhow::ensure!(
        added.idle_when_measured == added.workers,
        "only {} of {} workers were idle when their memory was read",
        added.idle_when_measured,
        added.workers
    );
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(passes: u64, took_ns: u64) -> Pass {
        Pass { passes, took_ns, first_pass_ns: took_ns / passes, minor_faults: 0, checksum: 0, huge_kib: 0 }
    }

    #[test]
    fn a_run_of_several_passes_counts_every_page_written() {
        assert_eq!(per_page_written(100, &run(1, 2_000)), 20.0);
        assert_eq!(per_page_written(100, &run(40, 80_000)), 20.0);
    }

    #[test]
    fn the_timed_runs_are_the_last_of_each_runs_passes() {
        // Thread: two sizing runs, one warm-up pair, then three (settle, timed) pairs.
        let runs: Vec<Pass> = [(1, 1), (4, 2), (9, 3), (9, 4), (9, 5), (9, 6), (9, 7), (9, 8), (9, 9), (9, 10)]
            .map(|(p, t)| run(p, t))
            .to_vec();
        let took: Vec<u64> = timed_runs(&runs, 3, THREAD_CALLS_PER_RUN).iter().map(|p| p.took_ns).collect();
        assert_eq!(took, [6, 8, 10]);
        // Process: a warm-up run, then three timed runs, one pass each.
        let runs: Vec<Pass> = [(1, 1), (1, 2), (1, 3), (1, 4)].map(|(p, t)| run(p, t)).to_vec();
        let took: Vec<u64> = timed_runs(&runs, 3, PROCESS_CALLS_PER_RUN).iter().map(|p| p.took_ns).collect();
        assert_eq!(took, [2, 3, 4]);
    }
}
