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

use anyhow::Result;
use harness::stats::{self, Summary};
use harness::{Better, Ctx, Expected, Findings, Kind, Needs, Room, Row, Side, Spec, spawn_sacrificial};

use pages::{Added, BEFORE, WRITTEN, Writes, hex};

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
            // The parent's buffer and the child's copy of it.
            needs: Needs::tasks(1).and_memory(2 * COW_BYTES as u64),
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

fn main() -> ExitCode {
    harness::row::main(&ROW)
}

/// What a writer did, and what the observer saw at the same addresses afterwards.
pub struct PrivateWrite {
    pub writer: Writes,
    /// The global's and the heap value's addresses, as the observer sees them.
    pub observer_addresses: [usize; 2],
    /// The global and the heap value, as the observer reads them after the writer is done.
    pub observer_saw: [u64; 2],
}

/// One value shared between two tasks, and what the sharing took.
pub struct SharedSegment {
    pub written: u64,
    pub seen: u64,
    /// The process side: what happened to the segment.
    pub segment: Option<SegmentFacts>,
}

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

/// Writing every page of a buffer, over repeated runs.
pub struct CowCopy {
    pub ns_per_page: Summary,
    pub pages: usize,
    pub page_bytes: usize,
    /// Minor faults of each timed run's write loop.
    pub faults_per_run: Vec<u64>,
    /// Every pass found the contents it should have.
    pub checksums_ok: bool,
    /// The last pass's checksum.
    pub checksum: u64,
    /// The buffer's owner sees the writers' writes afterwards.
    pub owner_sees_writes: bool,
}

impl CowCopy {
    /// What the writers' passes over `buffer` showed: `passes` holds the warm-up passes and
    /// then the timed ones; `checksums_ok` is each side's own check of every pass.
    pub fn from_passes(
        ns_per_page: Summary,
        buffer: &pages::Buffer,
        passes: &[pages::Pass],
        runs: usize,
        checksums_ok: bool,
    ) -> CowCopy {
        let timed = &passes[passes.len().saturating_sub(runs)..];
        CowCopy {
            ns_per_page,
            pages: buffer.pages(),
            page_bytes: buffer.page(),
            faults_per_run: timed.iter().map(|p| p.minor_faults).collect(),
            checksums_ok,
            checksum: timed.last().map_or(0, |p| p.checksum),
            owner_sees_writes: buffer.checksum() != pages::expected_checksum(buffer.pages(), 0),
        }
    }
}

/// N idle workers, over repeated runs.
pub struct Footprint {
    pub kib_per_worker: Summary,
    /// What each timed run found.
    pub runs: Vec<Added>,
}

fn private_write(ctx: &Ctx) -> Result<Findings> {
    let process = ctx.process_side(|| process::private_write(ctx.deadline()))?;
    let thread = ctx.thread_side(thread::private_write)?;
    let wrote = |w: &PrivateWrite| w.writer.read_back == [WRITTEN, WRITTEN];
    // The claim: the child's write stays in the child, the thread's is the observer's too.
    let matches = process.as_ref().zip(thread.as_ref()).map(|(p, t)| {
        wrote(p) && p.observer_saw == [BEFORE, BEFORE] && wrote(t) && t.observer_saw == [WRITTEN, WRITTEN]
    });
    let side = |w: PrivateWrite, writer: &str, observer: &str| {
        let same = w.observer_addresses == [w.writer.global_address, w.writer.heap_address];
        let [global, heap] = w.observer_saw;
        let summary = format!(
            "{writer} wrote {WRITTEN}; {observer} reads {global} and {heap} at {} addresses; {} minor faults",
            if same { "the same" } else { "other" },
            w.writer.minor_faults
        );
        Side::observed(summary)
            .fact("writer_wrote", WRITTEN)
            .fact("writer_read_back", w.writer.read_back)
            .fact("observer_saw_global", global)
            .fact("observer_saw_heap", heap)
            .fact("write_seen", w.observer_saw == [WRITTEN, WRITTEN])
            .fact("global_address", hex(w.writer.global_address))
            .fact("heap_address", hex(w.writer.heap_address))
            .fact("same_addresses", same)
            .fact("pages_written", 2)
            .fact("writer_minor_faults", w.writer.minor_faults)
    };
    Ok(Findings {
        process: process.map(|p| side(p, "child", "parent")),
        thread: thread.map(|t| side(t, "thread", "observer")),
        matches_claim: matches,
        note: Some(
            "Same address, different memory: after fork(2) the child writes at the very addresses the parent \
             reads, but to its own copy of each page, made by the kernel at the first write (copy-on-write: one \
             minor fault per page). A thread writes the one page of the one address space, which is already \
             writable: no fault, and the observer reads the new value."
                .to_string(),
        ),
        skipped: None,
    })
}

fn shared_segment(ctx: &Ctx) -> Result<Findings> {
    let process = ctx.process_side(|| process::shared_segment(ctx.deadline()))?;
    let thread = ctx.thread_side(thread::shared_segment)?;
    let seen = |s: &SharedSegment| s.seen == s.written;
    // The claim: processes share what they map on purpose, through a segment whose name is
    // private and short-lived, and the write arrives; a thread's plain store arrives as it is.
    let through_segment =
        |s: &SharedSegment| s.segment.as_ref().is_some_and(|g| g.unlinked_while_both_mapped && g.other_found_name_gone);
    let matches = process.as_ref().zip(thread.as_ref()).map(|(p, t)| seen(p) && through_segment(p) && seen(t));
    let side = |s: SharedSegment| {
        let (who, how) = match s.segment {
            Some(_) => ("another program mapped the segment by name and", "through the segment"),
            None => ("a thread", "a plain store, no setup"),
        };
        let summary = format!("{who} wrote {}; {} ({how})", s.written, if seen(&s) { "seen" } else { "not seen" });
        let mut side = Side::observed(summary)
            .fact("value_written", s.written)
            .fact("value_seen", s.seen)
            .fact("write_seen", seen(&s));
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
        note: Some(
            "Processes can share memory, but only memory they map on purpose: here a POSIX segment (shm_open + \
             mmap) that the other program finds by name, possibly at another address. The name is unlinked as \
             soon as both have it mapped; the memory lives as long as the mappings. Threads share every value of \
             their process with no setup at all, and need synchronisation instead (here the join)."
                .to_string(),
        ),
        skipped: None,
    })
}

fn cow_copy(ctx: &Ctx) -> Result<Findings> {
    let bytes = if ctx.quick { COW_BYTES_QUICK } else { COW_BYTES };
    let process = ctx.process_side(|| process::cow_copy(ctx, bytes))?;
    let thread = ctx.thread_side(|| thread::cow_copy(ctx, bytes))?;
    let side = |c: CowCopy| {
        let faults = stats::summarize(&c.faults_per_run.iter().map(|&f| f as f64).collect::<Vec<_>>()).median as u64;
        Side::measured(&c.ns_per_page, "ns/page")
            .fact("pages_written", c.pages)
            .fact("page_bytes", c.page_bytes)
            .fact("huge_pages", "off (MADV_NOHUGEPAGE)")
            .fact("minor_faults_per_run", faults)
            .fact("minor_faults_per_page", (faults as f64 / c.pages as f64 * 1000.0).round() / 1000.0)
            .fact("checksum", c.checksum)
            .fact("checksums_ok", c.checksums_ok)
            .fact("owner_sees_writes", c.owner_sees_writes)
    };
    Ok(Findings {
        process: process.map(side),
        thread: thread.map(side),
        note: Some(
            "Only the write loop is timed, by the writer itself. The child's first write to each page faults and \
             the kernel copies the page (copy-on-write), so the process side counts about one minor fault per \
             page and its owner never sees the writes; the thread writes the owner's own pages."
                .to_string(),
        ),
        ..Findings::default()
    })
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
    let process = ctx.process_side(|| process::footprint(ctx, workers))?;
    let thread = ctx.thread_side(|| thread::footprint(ctx, workers))?;
    let side = |f: Footprint, measured: &str| {
        let kib = |pick: fn(&Added) -> i64| {
            let per_worker: Vec<f64> =
                f.runs.iter().map(|a| pick(a) as f64 / 1024.0 / a.workers.max(1) as f64).collect();
            (stats::summarize(&per_worker).median * 10.0).round() / 10.0
        };
        Side::measured(&f.kib_per_worker, FOOTPRINT_UNIT)
            .fact("workers", workers)
            .fact("workers_idle_when_measured", f.runs.iter().map(|a| a.idle_when_measured).min().unwrap_or(0))
            .fact("heap_and_stack_touched_kib", (pages::HEAP_TOUCHED + pages::STACK_TOUCHED) / 1024)
            .fact("anon_kib_per_worker", kib(|a| a.usage.anon))
            .fact("page_tables_kib_per_worker", kib(|a| a.usage.page_tables))
            .fact("file_backed_kib_per_worker_not_counted", kib(|a| a.usage.file))
            .fact("measured", measured)
    };
    Ok(Findings {
        process: process.map(|f| side(f, "Pss_Anon + VmPTE of the host and every worker, after minus before")),
        thread: thread.map(|f| side(f, "Pss_Anon + VmPTE of the host process, after minus before")),
        note: Some(
            "Each run starts a fresh copy of this program as the host, so both sides grow from the same start. \
             Pss splits a shared page among the processes that map it, so summing it over the host and its \
             workers counts every page once. File-backed pages (the program, libc) are in the page cache once \
             whoever maps them and are not counted; neither are kernel structures (each task's kernel stack, \
             and for a process its mm and VMAs), which /proc does not show per task."
                .to_string(),
        ),
        ..Findings::default()
    })
}

/// Runs a footprint host, a fresh copy of this program, once per run, and collects what it
/// found; the figure of a run is KiB per worker.
pub fn footprint_runs(ctx: &Ctx, host: &str, args: &[String]) -> Result<Footprint> {
    let mut runs = Vec::new();
    let kib_per_worker = stats::repeat(ctx.warmup(), ctx.runs(), || {
        let exit = spawn_sacrificial(host, args)?.wait(ctx.deadline())?;
        exit.check("the footprint host")?;
        let added: Added = exit.received_one("added")?;
        anyhow::ensure!(
            added.idle_when_measured == added.workers,
            "only {} of {} workers were idle when their memory was read",
            added.idle_when_measured,
            added.workers
        );
        runs.push(added);
        Ok(added.kib_per_worker())
    })?;
    let timed = runs.split_off(runs.len() - ctx.runs());
    Ok(Footprint { kib_per_worker, runs: timed })
}
