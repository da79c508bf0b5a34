//! The concurrency row: processes run at the same time as well as threads, but is a thread
//! really the lighter way to do it?
//!
//! Every experiment runs process::X and thread::X in turns (`Ctx::interleave`) and turns what
//! they measured into findings, with the evidence in facts: how many workers really ran at
//! once and on how many CPUs, the checksum of the work, the page faults the kernel counted,
//! the parent's resident size and page tables. The harness computes the verdicts.
//! See docs/concurrency.md.

mod jobs;
mod plumbing;
mod process;
mod thread;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use harness::cpu::Seat;
use harness::mem::{Mapping, Sharing};
use harness::stats::{self, Latencies, Plan, Summary, TimedRun};
use harness::{Better, Ctx, Expected, Findings, Needs, Room, Row, Side, Spec};

use jobs::{Churn, Places, Report, Tasks, Together};

const fn measure(
    id: &'static str,
    title: &'static str,
    unit: &'static str,
    better: Better,
    needs: Needs,
    run: fn(&Ctx) -> Result<Findings>,
) -> Spec {
    Spec::measure(id, title, unit, better, Expected::Thread, needs, run)
}

static ROW: Row = Row {
    name: "concurrency",
    claim: "Processes run concurrently but each costs more to start and keep; threads are the lighter way to run \
            work concurrently inside one program.",
    experiments: &[
        measure(
            "spawn",
            "Start an empty worker and wait for it: fork + _exit + waitpid, or thread spawn + join",
            "µs",
            Better::Lower,
            Needs::tasks(1),
            spawn,
        )
        .headline(),
        measure(
            "spawn-vs-size",
            "fork + exit + wait, or thread spawn + join, while the parent holds touched memory (the largest size)",
            "µs",
            Better::Lower,
            Needs::tasks(1).and_memory(SIZES_QUICK[1]),
            spawn_vs_size,
        )
        .headline(),
        measure(
            "speedup",
            "A CPU-bound job split over as many workers as CPUs: time from the first start to the last result",
            "ms",
            Better::Lower,
            Needs::tasks(2),
            speedup,
        ),
        measure(
            "granularity",
            "The same job cut into small tasks, a new worker for each task: time per task",
            "µs/task",
            Better::Lower,
            Needs::tasks(2),
            granularity,
        ),
        measure(
            "contention",
            "Every worker, pinned to a CPU of its own, maps 16 MiB (4 MiB with --quick), touches each page, unmaps it, all at once: time per op",
            "µs/op",
            Better::Lower,
            Needs::tasks(1).and_memory(CHURN_BYTES as u64),
            contention,
        )
        .headline(),
    ],
    children: &[],
};

fn main() -> ExitCode {
    harness::row::main(&ROW)
}

/// What a side of `spawn` measured in one call: `n` starts, one after the other.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Spawned {
    pub took: Duration,
    /// For each start: ns from just before the call to the worker's first instruction.
    pub first_run_ns: Vec<u64>,
    /// Page faults of all the children together (wait4's rusage); threads have none of their own.
    pub child_minor_faults: Option<i64>,
    /// The mappings of the parent as it forked (/proc/self/maps), each of which a fork copies;
    /// a thread copies none.
    pub parent_mappings: Option<usize>,
}

/// `n` starts of another program (process only).
pub struct Started {
    pub took: Duration,
    pub runs: u64,
}

impl Started {
    fn us_each(&self) -> f64 {
        self.took.as_secs_f64() * 1e6 / self.runs as f64
    }
}

/// How long one timed run of an experiment lasts, in full and with --quick.
fn budget(ctx: &Ctx, full_ms: u64, quick_ms: u64) -> Duration {
    Duration::from_millis(if ctx.quick { quick_ms } else { full_ms })
}

fn spawn(ctx: &Ctx) -> Result<Findings> {
    let deadline = ctx.deadline();
    // Size the loop by the slower side, so that both start as many workers per run.
    let n = stats::iterations_for(budget(ctx, 6, 2), |n| Ok(process::spawn_and_wait(n, deadline)?.took))?.max(4);
    let (mut p_first, mut t_first) = (Latencies::new(), Latencies::new());
    let mut p_faults = 0;
    // The thread side's runs are served by a process of their own (Ctx::thread_host): the
    // forks of the process side never write-protect its pages, so nothing carries over.
    let mut threads = ctx.thread_host(|n| thread::spawn_and_wait(n, deadline))?;
    let mut mappings = 0;
    let (p, t) = ctx.interleave(
        || {
            let s = process::spawn_and_wait(n, deadline)?;
            s.first_run_ns.iter().for_each(|&ns| p_first.record(Duration::from_nanos(ns)));
            p_faults += s.child_minor_faults.unwrap_or(0);
            mappings = mappings.max(s.parent_mappings.unwrap_or(0));
            Ok(s.took.as_secs_f64() * 1e6 / n as f64)
        },
        || {
            let s = threads.call(&n)?;
            s.first_run_ns.iter().for_each(|&ns| t_first.record(Duration::from_nanos(ns)));
            Ok(s.took.as_secs_f64() * 1e6 / n as f64)
        },
    )?;
    threads.finish()?;
    let first = |l: &Latencies, side: Side| {
        side.fact("starts", l.len())
            .fact("first_run_us_p50", round1(l.percentile_ns(50.0) as f64 / 1e3))
            .fact("first_run_us_p99", round1(l.percentile_ns(99.0) as f64 / 1e3))
    };
    let process = match p {
        Some(s) => {
            let mut side = first(&p_first, Side::measured(&s, "µs"));
            // Warm-up runs recorded faults too: per fork over everything recorded.
            side.set("child_minor_faults_per_fork", round1(p_faults as f64 / p_first.len().max(1) as f64));
            side.set("parent_mappings", mappings);
            contrast(ctx, &mut side)?;
            Some(side)
        }
        None => None,
    };
    let thread = t.map(|s| first(&t_first, Side::measured(&s, "µs")));
    Ok(Findings {
        process,
        thread,
        note: Some(
            "Each run starts workers one after the other and waits for each. first_run_us is the LEBench measure: \
             the clock read just before fork(2) or pthread_create(3), against the one the new worker reads first \
             (through a MAP_SHARED page for a child, which reads it after the harness's few calls every forked \
             child makes first: its signals reset and die-with-parent, prctl(2), so a little late). A fork \
             copies every mapping of its parent: parent_mappings is how many the row held as it forked (the \
             most of any run). For \
             contrast, the process side also starts /bin/true with fork + execve, posix_spawn(3) (vfork-style: no page tables copied) and std::process::Command."
                .to_string(),
        ),
        ..Findings::default()
    })
}

/// The other ways to start a process, measured on the process side of `spawn` for contrast.
fn contrast(ctx: &Ctx, side: &mut Side) -> Result<()> {
    let program = harness::bare::Program::new("/bin/true")?;
    if !std::path::Path::new("/bin/true").exists() {
        side.set("exec_contrast", "not measured: /bin/true is missing");
        return Ok(());
    }
    let deadline = ctx.deadline();
    let n = stats::iterations_for(budget(ctx, 4, 1), |n| Ok(process::fork_exec(&program, n, deadline)?.took))?.max(2);
    let each = |f: &mut dyn FnMut() -> Result<Started>| -> Result<f64> {
        Ok(round1(stats::repeat(1, ctx.runs(), || Ok(f()?.us_each()))?.median))
    };
    side.set("fork_exec_us", each(&mut || process::fork_exec(&program, n, deadline))?);
    side.set("posix_spawn_us", each(&mut || process::posix_spawn(&program, n, deadline))?);
    side.set("command_us", each(&mut || process::command(&program, n))?);
    Ok(())
}

/// The parent's sizes for spawn-vs-size: 0, 256 MiB and 1 GiB (0, 16 and 64 MiB with --quick).
const SIZES: [u64; 3] = [0, 256 << 20, 1 << 30];
const SIZES_QUICK: [u64; 3] = [0, 16 << 20, 64 << 20];

/// What the parent looked like, and what starting a worker cost, at one size.
struct AtSize {
    bytes: u64,
    rss_kib: u64,
    pte_kib: u64,
    huge_kib: u64,
    process: Option<Summary>,
    thread: Option<Summary>,
    child_faults_per_fork: f64,
    /// Workers each side starts per timed run: as many as fill its own budget.
    starts_per_run: (u64, u64),
}

fn spawn_vs_size(ctx: &Ctx) -> Result<Findings> {
    // Never more than a quarter of the memory that is left.
    let room = Room::probe()?;
    let cap = room.memory.amount / 4;
    let wanted = if ctx.quick { SIZES_QUICK } else { SIZES };
    let mut sizes: Vec<u64> = wanted.iter().map(|&s| s.min(cap)).collect();
    sizes.dedup();
    let capped = wanted.iter().any(|&s| s > cap);
    let deadline = ctx.deadline();
    let mut points = Vec::new();
    // One private buffer of the largest size (huge pages off); each size writes more of it, so
    // the parent holds exactly `bytes` of present, written pages, each with a page-table entry.
    let largest = *sizes.last().context("no size to measure")?;
    let held = Mapping::anonymous(largest.max(1) as usize, Sharing::Private)?;
    held.no_huge_pages()?;
    let mut written = 0;
    for &bytes in &sizes {
        populate(&held, written as usize, bytes as usize)?;
        written = bytes;
        let status =
            procfs::process::Process::myself().and_then(|p| p.status()).context("reading /proc/self/status")?;
        // Each side starts as many workers per run as fill its own budget: at 1 GiB that is one
        // fork, and a run of one lone thread start measured 120-150 µs here against 40-46 µs a
        // start in a run of a hundred, at every size: the lone start timed the pause before it.
        let own = |side: bool, run: &mut dyn FnMut(u64) -> Result<Spawned>| -> Result<u64> {
            if !side {
                return Ok(1);
            }
            Ok(stats::iterations_for(budget(ctx, 5, 2), |n| Ok(run(n)?.took))?.max(1))
        };
        // The thread side's host is forked here, holding the same memory as the parent.
        let mut threads = ctx.thread_host(|n| thread::spawn_and_wait(n, deadline))?;
        let n = own(ctx.process(), &mut |n| process::spawn_and_wait(n, deadline))?;
        let tn = own(ctx.thread(), &mut |n| threads.call(&n))?;
        let (mut faults, mut forks) = (0i64, 0u64);
        let (p, t) = interleave_at(
            ctx,
            (bytes == largest).then(|| ctx.plan()),
            || {
                let s = process::spawn_and_wait(n, deadline)?;
                faults += s.child_minor_faults.unwrap_or(0);
                forks += n;
                Ok(s.took.as_secs_f64() * 1e6 / n as f64)
            },
            || Ok(threads.call(&tn)?.took.as_secs_f64() * 1e6 / tn as f64),
        )?;
        threads.finish()?;
        points.push(AtSize {
            bytes,
            rss_kib: status.vmrss.unwrap_or(0),
            pte_kib: status.vmpte.unwrap_or(0),
            huge_kib: if bytes > 0 { held.huge_kib()? } else { 0 },
            process: p,
            thread: t,
            child_faults_per_fork: round1(faults as f64 / forks.max(1) as f64),
            starts_per_run: (n, tn),
        });
    }
    let last = points.last().context("no size to measure")?;
    let shared = |side: Side, pick: fn(&AtSize) -> &Option<Summary>| {
        side.fact("memory_left_mib", room.memory.amount >> 20)
            .fact("parent_mib", points.iter().map(|a| a.bytes >> 20).collect::<Vec<_>>())
            .fact("parent_rss_kib", points.iter().map(|a| a.rss_kib).collect::<Vec<_>>())
            .fact("parent_vm_pte_kib", points.iter().map(|a| a.pte_kib).collect::<Vec<_>>())
            .fact("parent_huge_page_kib", points.iter().map(|a| a.huge_kib).collect::<Vec<_>>())
            .fact(
                "us_at_each_size",
                points.iter().map(|a| pick(a).as_ref().map(|s| round1(s.median))).collect::<Vec<_>>(),
            )
    };
    let process = last.process.as_ref().map(|s| {
        shared(Side::measured(s, "µs"), |a| &a.process)
            .fact("child_minor_faults_per_fork", points.iter().map(|a| a.child_faults_per_fork).collect::<Vec<_>>())
            .fact("starts_per_run", points.iter().map(|a| a.starts_per_run.0).collect::<Vec<_>>())
    });
    let thread = last.thread.as_ref().map(|s| {
        shared(Side::measured(s, "µs"), |a| &a.thread)
            .fact("starts_per_run", points.iter().map(|a| a.starts_per_run.1).collect::<Vec<_>>())
    });
    let mut note = "The parent writes every page of a private buffer (huge pages off, MADV_NOHUGEPAGE; written by \
                    MADV_POPULATE_WRITE), so each page has a page-table entry; fork(2) copies those entries and marks the pages copy-on-write, and the \
                    child's exit drops them again. A thread shares the page tables and copies nothing. Each side's \
                    runs start as many workers, one after the other, as fill its own time budget \
                    (starts_per_run at each size). The ratio is at the largest size; us_at_each_size has all."
        .to_string();
    if capped {
        note.push_str(&format!(
            " Sizes were capped at a quarter of the memory left ({} MiB): {}.",
            cap >> 20,
            room.memory.why
        ));
    }
    Ok(Findings { process, thread, note: Some(note), ..Findings::default() })
}

/// Makes bytes `from..to` of `held` present and written (harness::mem::populate: one
/// MADV_POPULATE_WRITE, much faster on a VM than a trap per page), so that each page ends up
/// private to us, with its own page-table entry.
fn populate(held: &Mapping, from: usize, to: usize) -> Result<()> {
    ensure!(from <= to && to <= held.len(), "populate {from}..{to} outside a mapping of {}", held.len());
    // Safety: the range lies inside our own mapping, and nothing else refers to it meanwhile.
    harness::mem::populate(unsafe { std::slice::from_raw_parts_mut(held.as_ptr().add(from), to - from) })
}

/// Worker counts to try: 1, 2, ... up to `most`; past 8, powers of two and `cpus`.
fn worker_counts(cpus: u64, most: u64) -> Vec<u64> {
    let mut counts: Vec<u64> = if most <= 8 {
        (1..=most).collect()
    } else {
        (0..).map(|i| 1u64 << i).take_while(|&w| w <= most).chain([cpus, most]).collect()
    };
    counts.sort_unstable();
    counts.dedup();
    counts
}

/// The CPUs this run may use, and the most workers the machine's task limit leaves room for.
fn cpus_and_room(wanted: u64, memory_each: u64) -> Result<(u64, u64, Room)> {
    let room = Room::probe()?;
    let cpus = room.cpus as u64;
    Ok((cpus, room.fit(wanted, memory_each), room))
}

/// The two sides' runs at one point of a sweep (a worker count, a size): the judged point gets
/// `judged`, the experiment's plan; the others, shown as facts, the fewest runs a number may
/// have ([`stats::MIN_RUNS`]), still in turns, so that a sweep fits its budget.
fn interleave_at(
    ctx: &Ctx,
    judged: Option<Plan>,
    process: impl FnMut() -> Result<f64>,
    thread: impl FnMut() -> Result<f64>,
) -> Result<(Option<Summary>, Option<Summary>)> {
    ctx.interleave_by(judged.unwrap_or(Plan::fixed(stats::MIN_RUNS)), process, thread)
}

/// One side's results at each point of a sweep.
struct Sweep<T> {
    at: Vec<(Option<Summary>, Vec<T>)>,
}

impl<T> Sweep<T> {
    fn new() -> Sweep<T> {
        Sweep { at: Vec::new() }
    }

    fn medians(&self) -> Vec<Option<f64>> {
        self.at.iter().map(|(s, _)| s.as_ref().map(|s| s.median)).collect()
    }

    /// For each point, the largest value `pick` gave over its runs.
    fn most(&self, pick: impl Fn(&T) -> u64) -> Vec<u64> {
        self.at.iter().map(|(_, all)| all.iter().map(&pick).max().unwrap_or(0)).collect()
    }

    fn all(&self) -> impl Iterator<Item = &T> {
        self.at.iter().flat_map(|(_, all)| all.iter())
    }
}

/// µs of hashing on one CPU that `speedup` splits.
fn job_us(ctx: &Ctx) -> f64 {
    if ctx.quick { 1_000.0 } else { 2_000.0 }
}

fn speedup(ctx: &Ctx) -> Result<Findings> {
    let (cpus, fits, room) = cpus_and_room(2 * Room::probe()?.cpus as u64, 0)?;
    let counts = worker_counts(cpus, fits);
    let Some(at) = counts.iter().position(|&w| w == cpus.min(fits)) else {
        return Ok(Findings::skipped(format!("refused: no room for {cpus} workers: {:?}", room.tasks)));
    };
    let note_fewer = (fits < 2 * cpus).then(|| format!(" Only {fits} workers fit here ({:?}).", room.tasks));
    let numbers = (jobs::numbers_per_us()? * job_us(ctx)) as u64;
    let deadline = ctx.deadline();
    let (mut ps, mut ts) = (Sweep::new(), Sweep::new());
    let one = |seen: &mut Vec<Together>, (took, reports): (Duration, Vec<Report>)| -> Result<f64> {
        seen.push(Together::of(&reports));
        Ok(took.as_secs_f64() * 1e3)
    };
    let mut threads = ctx.thread_host(|w| thread::split_job(numbers, w, deadline))?;
    for (i, &w) in counts.iter().enumerate() {
        let (mut pseen, mut tseen) = (Vec::new(), Vec::new());
        let (p, t) = interleave_at(
            ctx,
            (i == at).then(|| ctx.plan()),
            || one(&mut pseen, process::split_job(numbers, w, deadline)?),
            || one(&mut tseen, threads.call(&w)?),
        )?;
        ps.at.push((p, pseen));
        ts.at.push((t, tseen));
    }
    threads.finish()?;
    let expected = jobs::checksum(0..numbers);
    let side = |sw: &Sweep<Together>| {
        let judged = sw.at[at].0.as_ref()?;
        let ms = sw.medians();
        let one_worker = ms[0].unwrap_or(f64::NAN);
        Some(
            Side::measured(judged, "ms")
                .fact("cpus_allowed", cpus)
                .fact("workers", &counts)
                .fact("ms_median", ms.iter().map(|m| m.map(round2)).collect::<Vec<_>>())
                .fact("speedup", ms.iter().map(|m| m.map(|m| round2(one_worker / m))).collect::<Vec<_>>())
                .fact("most_at_once", sw.most(|t| t.at_once as u64))
                .fact("most_cpus_seen", sw.most(|t| u64::from(t.cpus_seen)))
                .fact("share_of_runs_on_one_cpu", sw.at.iter().map(|(_, all)| on_one_cpu(all)).collect::<Vec<_>>())
                .fact("numbers_hashed", numbers)
                .fact("checksum_same_in_every_configuration", sw.all().all(|t| t.checksum == expected))
                .fact("every_number_hashed_once", sw.all().all(|t| t.numbers == numbers)),
        )
    };
    Ok(Findings {
        process: side(&ps),
        thread: side(&ts),
        note: Some(format!(
            "Each worker count splits the same job (hash numbers_hashed numbers, about {} ms on one CPU: short \
             enough that the workers' starts show in the time); the \
             ratio is at as many workers as CPUs this run may use, the other counts have {} runs a side. Speed-up \
             is the median time with one worker over the median with w; the linear reference is min(w, CPUs). \
             Past the CPU count, extra workers only queue (Amdahl: the serial part, here the starts and the \
             collection, bounds the speed-up). The workers are not pinned: they run where the kernel puts them, \
             as in any program that starts workers, and share_of_runs_on_one_cpu says, per count, in what share \
             of its runs (the untimed first ones too) every worker was seen on one and the same CPU, taking \
             turns (docs/concurrency.md).{}",
            job_us(ctx) / 1e3,
            stats::MIN_RUNS,
            note_fewer.unwrap_or_default()
        )),
        ..Findings::default()
    })
}

/// Of a count's runs (the untimed first ones too), the share in which every worker was seen
/// on one and the same CPU: the kernel placed them all there, so they took turns. None for a
/// single worker, who is always on one CPU.
fn on_one_cpu(runs: &[Together]) -> Option<f64> {
    let many = runs.first().is_some_and(|t| t.workers > 1);
    many.then(|| round2(runs.iter().filter(|t| t.cpus_seen == 1).count() as f64 / runs.len() as f64))
}

/// One way of running tasks (process.rs, thread.rs).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Way {
    /// A new worker per task.
    PerTask,
    /// A pool of workers that take the tasks in turn.
    Pool,
}

/// What one way of running the tasks gave: how long, and each worker's report.
type Ran = (Duration, Vec<Report>);

/// What one side of `granularity` saw over its runs.
#[derive(Default)]
struct Granular {
    /// Start-up overhead per task of each run, µs: the extra time over the pool.
    overhead_us: Vec<f64>,
    /// Every group of workers, a new worker per task and the pool alike.
    groups: Vec<Together>,
    pool_ms: Vec<f64>,
}

fn granularity(ctx: &Ctx) -> Result<Findings> {
    let (cpus, fits, _) = cpus_and_room(Room::probe()?.cpus as u64, 0)?;
    let in_flight = cpus.min(fits).max(1);
    let per_us = jobs::numbers_per_us()?;
    // The job: about 6 ms on one CPU (2 ms with --quick), cut into 8 tasks per worker.
    let total_us = if ctx.quick { 2_000.0 } else { 6_000.0 };
    let count = 8 * in_flight;
    let tasks = Tasks { count, numbers_each: (per_us * total_us / count as f64) as u64 };
    let deadline = ctx.deadline();
    // Each run: a new worker per task (timed: the number judged), then the same tasks on a pool
    // of `in_flight` workers, for the overhead.
    let run = |into: &mut Granular, way: &mut dyn FnMut(Way, Tasks) -> Result<Ran>| -> Result<f64> {
        let (new_took, new_reports) = way(Way::PerTask, tasks)?;
        let (pool_took, pool_reports) = way(Way::Pool, tasks)?;
        let extra = new_took.as_secs_f64() - pool_took.as_secs_f64();
        // Tasks run `in_flight` at a time, so each task's start-up delays the job by 1/in_flight of it.
        into.overhead_us.push(extra * 1e6 * in_flight as f64 / count as f64);
        into.pool_ms.push(pool_took.as_secs_f64() * 1e3);
        into.groups.extend([Together::of(&new_reports), Together::of(&pool_reports)]);
        Ok(new_took.as_secs_f64() * 1e6 / count as f64)
    };
    let (mut pg, mut tg) = (Granular::default(), Granular::default());
    let mut processes = |way: Way, tasks: Tasks| match way {
        Way::PerTask => process::worker_per_task(tasks, in_flight, deadline),
        Way::Pool => process::pool(tasks, in_flight, deadline),
    };
    let threads = std::cell::RefCell::new(ctx.thread_host(|(way, tasks): (Way, Tasks)| match way {
        Way::PerTask => thread::worker_per_task(tasks, in_flight, deadline),
        Way::Pool => thread::pool(tasks, in_flight, deadline),
    })?);
    let mut threads_way = |way: Way, tasks: Tasks| threads.borrow_mut().call(&(way, tasks));
    let (p, t) = ctx.interleave(|| run(&mut pg, &mut processes), || run(&mut tg, &mut threads_way))?;
    // Check the estimate: tasks of each side's own threshold size, a new worker for each
    // against the pool, both sides in turns (warm-up, then the fewest runs a number may have).
    let most = if ctx.quick { 3_000.0 } else { 20_000.0 };
    let threshold_us = |g: &Granular| 10.0 * stats::median(&g.overhead_us).max(0.0);
    let checkable =
        |s: &Option<Summary>, g: &Granular| s.as_ref().map(|_| threshold_us(g)).filter(|&us| us > 0.0 && us <= most);
    let (p_size, t_size) = (checkable(&p, &pg), checkable(&t, &tg));
    let share = |size_us: f64, way: &mut dyn FnMut(Way, Tasks) -> Result<Ran>| -> Result<f64> {
        let check = Tasks { count: 2 * in_flight, numbers_each: (per_us * size_us) as u64 };
        let new = way(Way::PerTask, check)?.0.as_secs_f64();
        let pooled = way(Way::Pool, check)?.0.as_secs_f64();
        Ok(new / pooled - 1.0)
    };
    let mut p_check = || share(p_size.unwrap_or(0.0), &mut processes);
    let mut t_check = || share(t_size.unwrap_or(0.0), &mut threads_way);
    let plan = Plan::fixed(stats::MIN_RUNS);
    let (p_share, t_share) = stats::interleave(
        plan,
        p_size.is_some().then_some(&mut p_check as TimedRun<'_>),
        t_size.is_some().then_some(&mut t_check as TimedRun<'_>),
    )?;
    threads.into_inner().finish()?;
    let expected = jobs::checksum(0..tasks.numbers());
    let side = |s: &Summary, g: &Granular, checked: &Option<Summary>| -> Side {
        let overhead = stats::median(&g.overhead_us).max(0.0);
        // The overhead is under 10 % of the work once a task is at least ten times the overhead.
        let mut side = Side::measured(s, "µs/task")
            .fact("tasks", count)
            .fact("workers_in_flight", in_flight)
            .fact("task_us", round1(total_us / count as f64))
            .fact("pool_ms", round2(stats::median(&g.pool_ms)))
            .fact("startup_overhead_us_per_task", round1(overhead))
            .fact("task_us_for_overhead_under_10pct", round1(threshold_us(g)))
            .fact("checksum_same_in_every_run", g.groups.iter().all(|t| t.checksum == expected))
            .fact("every_task_ran_once", g.groups.iter().all(|t| t.tasks == count))
            .fact("most_at_once", g.groups.iter().map(|t| t.at_once).max().unwrap_or(0))
            .fact(
                "share_of_new_worker_runs_on_one_cpu",
                on_one_cpu(&g.groups.iter().copied().step_by(2).collect::<Vec<_>>()),
            )
            .fact(
                "share_of_pool_runs_on_one_cpu",
                on_one_cpu(&g.groups.iter().copied().skip(1).step_by(2).collect::<Vec<_>>()),
            );
        // A number, or null with the reason beside it: one type under one name.
        match checked {
            Some(c) => side.set("overhead_share_at_that_size", round2(c.median)),
            None => {
                side.set("overhead_share_at_that_size", None::<f64>);
                side.set(
                    "overhead_share_not_checked",
                    if threshold_us(g) > most {
                        format!("tasks over {most} µs take too long here")
                    } else {
                        "no overhead was measured".to_string()
                    },
                );
            }
        }
        side
    };
    Ok(Findings {
        process: p.as_ref().map(|s| side(s, &pg, &p_share)),
        thread: t.as_ref().map(|s| side(s, &tg, &t_share)),
        note: Some(format!(
            "The same job (about {total_us:.0} µs of hashing on one CPU) cut into 8 tasks per CPU this run may \
             use, as many in flight as CPUs: a new worker for every task (the number judged), then a pool of as \
             many workers, which take the tasks from a shared counter. The start-up overhead per task is the \
             extra time over the pool times the workers in flight over the tasks; it is under 10 % of the work \
             once a task is ten times that, and overhead_share_at_that_size checks it on tasks of that size \
             (new over pool, minus one: the median of {} runs a side, the sides in turns). Nothing is pinned: \
             share_of_new_worker_runs_on_one_cpu and share_of_pool_runs_on_one_cpu say in what share of the runs \
             the kernel put every worker of that way on one CPU, where they took turns (docs/concurrency.md).",
            stats::MIN_RUNS
        )),
        ..Findings::default()
    })
}

/// The bytes each contention worker maps per operation (4 MiB with --quick).
const CHURN_BYTES: usize = 16 << 20;
const CHURN_BYTES_QUICK: usize = 4 << 20;

fn contention(ctx: &Ctx) -> Result<Findings> {
    let bytes = if ctx.quick { CHURN_BYTES_QUICK } else { CHURN_BYTES };
    let (cpus, fits, room) = cpus_and_room(Room::probe()?.cpus as u64, bytes as u64)?;
    let most = cpus.min(fits);
    if most == 0 {
        return Ok(Findings::skipped(format!(
            "refused: not one worker of {} MiB fits: {}",
            bytes >> 20,
            room.memory.why
        )));
    }
    let counts = worker_counts(cpus, most);
    let at = counts.len() - 1;
    let deadline = ctx.deadline();
    // Every worker of either side maps at its own place, side by side (jobs::Places).
    let places = Places::side_by_side(most as usize, bytes);
    let ops = stats::iterations_for(budget(ctx, 60, 12), |n| {
        let c = jobs::churn(places.of(0), bytes, Seat::default(), n)?;
        Ok(Duration::from_nanos(c.end_ns - c.start_ns))
    })?
    .max(1);
    // The plan's runs, also with --quick. Before the workers were pinned, --quick took 16 runs a
    // side: its thread runs spread from 1.05 to 1.8 times the process side's, as the scheduler
    // placed them. Pinned, 8 runs read about as 16 did (0.94-0.96 in 4 invocations each); over
    // later suites the ratio went 0.88-0.96, on the 0.95 line (docs/concurrency.md).
    let plan = ctx.plan();
    let (mut pr, mut tr) = (Sweep::new(), Sweep::new());
    let one = |seen: &mut Vec<Vec<Churn>>, all: Vec<Churn>| -> Result<f64> {
        ensure!(all.iter().all(|c| c.ops == ops), "a worker did not do all its operations");
        let us = us_per_op(&all);
        seen.push(all);
        Ok(us)
    };
    let mut threads = ctx.thread_host(|w| thread::churn(w, places, ops, deadline))?;
    for (i, &w) in counts.iter().enumerate() {
        let (mut pseen, mut tseen) = (Vec::new(), Vec::new());
        let (p, t) = interleave_at(
            ctx,
            (i == at).then_some(plan),
            || one(&mut pseen, process::churn(w, places, ops, deadline)?),
            || one(&mut tseen, threads.call(&w)?),
        )?;
        pr.at.push((p, pseen));
        tr.at.push((t, tseen));
    }
    threads.finish()?;
    // Observed once, here in the parent and outside every timed run: reading smaps takes the
    // mmap lock the workers contend on.
    let huge_kib = jobs::huge_kib_of_one_op(places.of(0), bytes)?;
    let side = |sw: &Sweep<Vec<Churn>>| {
        let judged = sw.at[at].0.as_ref()?;
        let per_worker_ops_s = |(_, runs): &(Option<Summary>, Vec<Vec<Churn>>)| {
            let each: Vec<f64> =
                runs.iter().map(|all| all.iter().map(Churn::ops_per_s).sum::<f64>() / all.len() as f64).collect();
            round1(stats::median(&each))
        };
        let faults = sw.all().flatten().map(|c| c.minor_faults).sum::<i64>();
        let (where_asked, done) = placed(sw);
        Some(
            Side::measured(judged, "µs/op")
                .fact("cpus_allowed", cpus)
                .fact("workers", &counts)
                .fact("ops_per_s_per_worker", sw.at.iter().map(per_worker_ops_s).collect::<Vec<_>>())
                .fact("most_at_once", sw.most(|all| Churn::at_once(all) as u64))
                .fact("most_cpus_seen", sw.most(|all| u64::from(Churn::cpus_seen(all))))
                .fact("stayed_on_pinned_cpus", each_on_its_own_cpu(sw, cpus))
                .fact("ops_per_worker", ops)
                .fact("huge_page_kib_per_op", huge_kib)
                .fact("minor_faults_per_op", round1(faults as f64 / done.max(1) as f64))
                .fact("mapped_where_asked", where_asked == done),
        )
    };
    let mut note = format!(
        "will-it-scale's page_fault1: each operation is mmap of {} MiB with huge pages off (MADV_NOHUGEPAGE), one \
         write per page (a page fault each: as many per op as the mapping over the page size), munmap; huge_page_kib_per_op is \
         AnonHugePages of one such mapping in smaps, read once outside the timed runs. Each worker pins \
         itself to a CPU of its own before it waits for the start, as will-it-scale pins its tasks \
         (stayed_on_pinned_cpus says whether every worker of every run did and ran only there); unpinned, \
         threads woken together often shared one CPU for the first milliseconds of a run and a process worker \
         often started milliseconds after the other, which with --quick's short runs made the thread side \
         10-85 % slower (docs/concurrency.md). Workers start \
         together from one pipe; the ratio is at as many workers as CPUs this run may use. Each worker asks for its \
         mapping at an address of its own, right after the previous worker's (mapped_where_asked: every op's \
         mapping was there), as mmap places mappings made one after another with nothing between them: \
         between threads, mappings side by side made the thread side about 9 % slower than with something \
         between them, and left to the kernel which of the two happened depended on what the process had \
         mapped before (docs/concurrency.md). Threads share one address \
         space: its lock (mmap_lock) serialises their mmap and munmap and each munmap must flush the TLB of \
         the other threads' CPUs; processes have one each.",
        bytes >> 20,
    );
    if most < cpus {
        note.push_str(&format!(" Only {most} workers fit here, not {cpus}: {}.", room.memory.why));
    }
    for (name, sw) in [("process", &pr), ("thread", &tr)] {
        if !each_on_its_own_cpu(sw, cpus) {
            note.push_str(&format!(
                " On the {name} side not every worker was pinned to a CPU of its own (sched_setaffinity(2) failed) \
                 or stayed there, so its figure is partly where the scheduler put the workers."
            ));
        }
        let (asked, done) = placed(sw);
        if asked < done {
            note.push_str(&format!(
                " On the {name} side only {asked} of {done} ops' mappings were where asked (the kernel placed the \
                 rest: ulimit -v refused the room, or something else took the place), so its figure is partly \
                 the kernel's placement."
            ));
        }
    }
    Ok(Findings { process: side(&pr), thread: side(&tr), note: Some(note), ..Findings::default() })
}

/// Whether in every run of a side's sweep each worker was pinned to a CPU of its own and
/// stayed there ([`Seat::each_own`]).
fn each_on_its_own_cpu(sw: &Sweep<Vec<Churn>>, cpus: u64) -> bool {
    sw.all().all(|all| Seat::each_own(&all.iter().map(|c| c.seat).collect::<Vec<_>>(), cpus as usize))
}

/// Of all ops at every point of a side's sweep: how many had their mapping where asked, and
/// how many there were.
fn placed(sw: &Sweep<Vec<Churn>>) -> (u64, u64) {
    let all = || sw.all().flatten();
    (all().map(|c| c.where_asked).sum(), all().map(|c| c.ops).sum())
}

/// µs per operation of a group of workers, the mean of each worker's own.
fn us_per_op(all: &[Churn]) -> f64 {
    all.iter().map(|c| 1e6 / c.ops_per_s()).sum::<f64>() / all.len() as f64
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
