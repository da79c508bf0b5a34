//! The communication row: processes must talk through IPC, threads through the memory they
//! share. What does each mechanism cost, in time, in CPU and in lines of code?
//!
//! Every mechanism carries the same exchange (exchange.rs). The process versions (process.rs)
//! are a pipe, a Unix socket pair, a POSIX message queue, ipc-channel and a ring in a
//! shared-memory segment; the thread versions (thread.rs) are the same pipe and socket pair
//! (the controls), std's mpsc, a crossbeam channel and the same ring in the process's own
//! memory (with the same futex ops: only the address space differs).
//! Each experiment pairs like with like and says which; the matrix of every mechanism is in
//! the facts of `cpu-cost` (latency and CPU) and `throughput-shm` (GB/s). See
//! docs/communication.md.

mod exchange;
mod links;
mod plumbing;
mod process;
mod thread;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use harness::cpu::{Pinned, Placement};
use harness::row::Which;
use harness::stats::{self, Latencies, Plan, Summary};
use harness::{Better, Ctx, Expected, Findings, Kind, Needs, Row, Side, Spec};

use exchange::{Moved, Session, Shape, Trips};

const LATENCY_UNIT: &str = "µs/round-trip";
/// CPU time, not latency; it still starts with a unit of time, so the busy rule treats it as
/// the timing it is (harness::row::is_timing looks at the part before the first '/').
const CPU_UNIT: &str = "µs/round-trip (CPU)";
const BULK_UNIT: &str = "µs/MiB";

/// One partner task per side and what it exchanges: for bulk, two rings of up to 4 MiB each.
const PARTNER: Needs = Needs::tasks(2);
const BULK_NEEDS: Needs = Needs::tasks(2).and_memory(4 * (8 << 20));

static ROW: Row = Row {
    name: "communication",
    claim: "Processes must talk through IPC (pipes, sockets, message queues, shared memory), which takes more \
            work and is slower; threads talk directly through the memory they share, which is simpler and \
            faster but needs synchronisation.",
    experiments: &[
        Spec::measure(
            "latency-channel",
            "A 64-byte message and its answer over a channel: ipc-channel between processes, a crossbeam \
             channel between threads, one CPU",
            LATENCY_UNIT,
            Better::Lower,
            Expected::Thread,
            PARTNER,
            latency_channel,
        )
        .headline(),
        Spec::measure(
            "latency-shm",
            "A 64-byte message and its answer through shared memory: a ring in a shared-memory segment \
             between processes, the same ring in a shared mapping of the process between threads, the same \
             futex ops, one CPU",
            LATENCY_UNIT,
            Better::Lower,
            Expected::Thread,
            PARTNER,
            latency_shm,
        ),
        Spec::measure(
            "latency-pipe",
            "Control: a 64-byte message and its answer over the same two pipes, between processes and between \
             threads, one CPU",
            LATENCY_UNIT,
            Better::Lower,
            Expected::Same,
            PARTNER,
            latency_pipe,
        ),
        Spec::measure(
            "throughput-shm",
            "Bulk in 1 MiB messages through shared memory, one CPU: a segment ring between processes, an \
             in-place ring between threads (matrix: every mechanism at 4 KiB, 64 KiB, 1 MiB)",
            BULK_UNIT,
            Better::Lower,
            Expected::Thread,
            BULK_NEEDS,
            throughput_shm,
        )
        .headline(),
        Spec::measure(
            "throughput-pipe",
            "Control: bulk in 1 MiB messages over the same two pipes, between processes and between threads, \
             one CPU",
            BULK_UNIT,
            Better::Lower,
            Expected::Same,
            PARTNER,
            throughput_pipe,
        ),
        Spec::measure(
            "cpu-cost",
            "CPU time of both tasks per 64-byte round trip over a channel, ipc-channel vs crossbeam, on two \
             CPUs (matrix: every mechanism's latency and CPU, one CPU and two)",
            CPU_UNIT,
            Better::Lower,
            Expected::Thread,
            PARTNER,
            cpu_cost,
        ),
        Spec {
            id: "effort",
            title: "Lines of code each mechanism needs for one exchange, counted in this row's own sources at build \
                    time",
            kind: Kind::Observe,
            unit: None,
            expected: Expected::Thread,
            needs: Needs::tasks(0),
            headline: true,
            run: effort,
        },
    ],
    children: &[("ipc-partner", process::ipc_partner)],
};

fn main() -> ExitCode {
    if let Err(e) = plumbing::remove_stale_queues() {
        eprintln!("warning: could not remove stale message queues: {e:#}");
    }
    harness::row::main(&ROW)
}

/// How a session of one side is started: process::X or thread::X.
type Start = fn(&Ctx, Placement, Shape) -> Result<Session>;

/// A mechanism on each side, like with like.
#[derive(Clone, Copy)]
struct Mechanism {
    process: (&'static str, Start),
    thread: (&'static str, Start),
}

const PIPE: Mechanism = Mechanism { process: ("pipe", process::pipe), thread: ("pipe", thread::pipe) };
const SOCKET: Mechanism =
    Mechanism { process: ("socket pair", process::socket), thread: ("socket pair", thread::socket) };
const QUEUE: Mechanism =
    Mechanism { process: ("POSIX message queue", process::queue), thread: ("std mpsc channel", thread::queue) };
const CHANNEL: Mechanism =
    Mechanism { process: ("ipc-channel", process::channel), thread: ("crossbeam channel", thread::channel) };
const RING: Mechanism =
    Mechanism { process: ("shared-memory ring", process::ring), thread: ("in-place ring", thread::ring) };
const MECHANISMS: [Mechanism; 5] = [PIPE, SOCKET, QUEUE, CHANNEL, RING];

impl Mechanism {
    fn side(&self, which: Which) -> (&'static str, Start) {
        if which == Which::Process { self.process } else { self.thread }
    }
}

/// How long one timed run of round trips lasts.
fn trip_budget(ctx: &Ctx) -> Duration {
    if ctx.quick { Duration::from_micros(500) } else { Duration::from_millis(1) }
}

/// Bytes one run of throughput-shm moves, quick or not: four fillings of a ring's 4 MiB of
/// slots, so that what a run pays once (the control messages, the first switch into a partner
/// whose data went cold) weighs little. At 4 MiB a timed run (what `--quick` had) and at 8 the
/// ring's ratio came out 1.06-1.20 with wide intervals against 1.22 in a full run; at 16 MiB
/// it is 1.18-1.22 in both. The runs
/// come as the plan allows (`Ctx::plan`): more of them where they are quick.
const RING_RUN_BYTES: usize = 16 << 20;

/// Bytes one run of the pipe control moves, quick or not: the pipe switches once per MiB
/// however long the run. At 8 MiB (about 2.2 ms a run) the runs sat on levels about 4 % apart
/// (261, 271, 281 µs/MiB) and the ratio of medians went 0.97-1.03 from one invocation to the
/// next, with intervals 3-10 % wide (`tie` in 4 of 5 `--quick` invocations); at 32 MiB six full
/// runs gave 1.01-1.03 with intervals 1-3.5 % wide, for about 0.2 s more a row.
const PIPE_RUN_BYTES: usize = 32 << 20;

/// The pipe control's timed runs a side in a full run. A run takes about 25 ms, so the plan's
/// budget never adds to its 12. Eight invocations alone of each, in turns, on the Intel guest
/// (2026-12-02): with 12, ratios 0.985-1.022 (sd 0.014), `tie` in 2 of 8 (the interval
/// reaching past 1.05); with 24, 1.004-1.009 (sd 0.0016; more than the √2 that twice the runs
/// alone would give, and eight invocations are few), `tie` in 1 of 8, for 0.6 s more.
/// `--quick` keeps its 8: the quick suite has no time to spare.
const PIPE_FULL_RUNS: usize = 24;

/// Bytes each mechanism moves per message size in the matrix, at least.
fn matrix_total(ctx: &Ctx) -> usize {
    if ctx.quick { 4 << 20 } else { 16 << 20 }
}

const MATRIX_SIZES: [usize; 3] = [4 << 10, 64 << 10, 1 << 20];

/// Starts a session and waits for its partner's READY: nothing before it is timed.
fn start(ctx: &Ctx, which: Which, m: &Mechanism, place: Placement, shape: Shape) -> Result<Session> {
    let (name, start) = m.side(which);
    if which == Which::Process {
        // A fork copies only the forking thread: none may be left from an earlier session.
        plumbing::ensure_forks_allowed().with_context(|| format!("the {name} was not started"))?;
    }
    let mut session = start(ctx, place, shape).with_context(|| format!("starting the {name}"))?;
    match exchange::wait_ready(&mut *session.link, ctx.deadline()) {
        Ok(()) => Ok(session),
        Err(e) => Err(session.fail(e.context(format!("the {name}")))),
    }
}

/// What one side of a pair gave: the summary of its timed runs, what each run saw (the
/// warm-up runs apart), the most threads its driver's process had at the end of a run, and
/// the memory its messages were written into (the rings), read after its first run.
struct Ran<T> {
    summary: Summary,
    warmup: Vec<T>,
    /// The untimed run before each run (warm-up ones too), for bulk (see `pair`).
    settle: Vec<T>,
    timed: Vec<T>,
    /// Threads in this (the driver's) process at the end of each run, the most seen: 1 on
    /// the process side, 2 (driver and partner) on the thread side.
    driver_process_threads: u64,
    /// A ring's mapping as smaps showed it after the side's first run (None for the other
    /// mechanisms): read once a side, since a thread run's ring is a new mapping each time
    /// and a read of smaps after every run took 0.1 s of a `--quick` row.
    memory: Option<harness::mem::Seen>,
}

impl<T> Ran<T> {
    /// Every run the side made: warm-up, settle and timed.
    fn all(&self) -> impl Iterator<Item = &T> {
        self.warmup.iter().chain(&self.settle).chain(&self.timed)
    }
}

/// Both sides of a pair, run in turns by `plan` (harness::stats::interleave). The process
/// side's partner is forked once, while this process is single-threaded, and serves every
/// process run. The thread side's runs are served by a process of their own (a host,
/// `Ctx::thread_host`), forked with it: there each thread run starts a partner thread and
/// ends it after the run, so the row's process never starts a thread (glibc would take it,
/// and every partner it forks later, for multi-threaded for good: docs/report.md), and the
/// host is a two-thread process only while a run is on (were the partner alive between runs,
/// the driver would pay for a shared descriptor table in every system call on a descriptor,
/// fdget's reference count, switching's baseline-pipe: an idle second thread made
/// latency-pipe's process side 5-7 % slower, docs/communication.md).
/// `size`, when given, sizes the runs before any run: on the process link first (its
/// driver still alone), then on a thread link of its own in the host, ended before the runs;
/// both sides get the smaller count. Each run is `run` on one side's link with that count (0
/// when nothing was sized), after the same untimed round trips (exchange::warm), and returns
/// the run's number and what else it saw.
#[allow(clippy::type_complexity)]
fn pair<T>(
    ctx: &Ctx,
    m: &Mechanism,
    place: Placement,
    shape: Shape,
    plan: Plan,
    size: Option<&dyn Fn(&mut dyn exchange::Link) -> Result<u64>>,
    run: impl FnMut(&mut dyn exchange::Link, Which, u64) -> Result<(f64, T)>,
) -> Result<[Option<Ran<T>>; 2]>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    // Both sides call `run`, one at a time (the thread side in its host, on the host's copy).
    let run = std::cell::RefCell::new(run);
    let _pinned = Pinned::to(place.driver)?;
    // Bulk runs are settled (harness::stats::settled): each timed run follows an untimed run
    // of its own side, because a run leaves its 4 MiB of messages in the caches and the other
    // side's next run started 7-14 % slower from that (docs/report.md). Round trips left
    // nothing measurable.
    let settle = shape.bulk > 0;
    // One timed run of a side on its session: the warm round trips, the settle run for bulk,
    // the run itself; then, untimed, the threads of this process and, when asked (after a
    // side's first run), what smaps shows of a ring's memory, the same on both sides.
    let one_side = |which: Which, session: &mut Session, sized: u64, memory: bool| -> Result<OneRun<T>> {
        let link = &mut *session.link;
        exchange::warm(link, exchange::RUN_WARM_TRIPS, ctx.deadline())?;
        let mut once = || (run.borrow_mut())(link, which, sized);
        let settled = if settle { Some(once()?.1) } else { None };
        let (value, seen) = once()?;
        let threads = harness::child::threads_in_this_process()?;
        let memory = match (session.memory, memory) {
            (Some(at), true) => Some(harness::mem::seen_at(at as *const u8)?),
            _ => None,
        };
        Ok(OneRun { value, settle: settled, seen, threads, memory })
    };
    // The host is forked before the process partner, while this process is as it was.
    let mut host = ctx.thread_host(|ask: Ask| -> Result<Said<T>> {
        match ask {
            Ask::Size => {
                let size = size.context("no sizing for this pair")?;
                Ok(Said::Sized(on_a_partner_thread(ctx, m, place, shape, |t| size(&mut *t.link))?))
            }
            Ask::Run { sized, memory } => {
                Ok(Said::Ran(on_a_partner_thread(ctx, m, place, shape, |t| one_side(Which::Thread, t, sized, memory))?))
            }
        }
    })?;
    let mut p = ctx.process_side(|| start(ctx, Which::Process, m, place, shape))?;
    let mut sized = 0;
    if let Some(size) = size {
        let mut n = u64::MAX;
        if let Some(session) = p.as_mut() {
            match size(&mut *session.link) {
                Ok(v) => n = n.min(v),
                Err(e) => return Err(end_both(ctx, p, None, Some(Which::Process), e)),
            }
        }
        if ctx.thread() {
            match host.call(&Ask::Size).and_then(Said::sized) {
                Ok(v) => n = n.min(v),
                Err(e) => return Err(end_both(ctx, p, None, Some(Which::Thread), e)),
            }
        }
        sized = n;
    }
    let (mut pa, mut ta) = (Kept::default(), Kept::default());
    let failed = std::cell::Cell::new(None);
    let process_run = || {
        let session = p.as_mut().expect("a side runs only when set up");
        one_side(Which::Process, session, sized, pa.memory.is_none())
            .map(|r| pa.keep(r))
            .inspect_err(|_| failed.set(Some(Which::Process)))
            .with_context(|| format!("the {}", m.process.0))
    };
    let thread_run = || {
        host.call(&Ask::Run { sized, memory: ta.memory.is_none() })
            .and_then(Said::ran)
            .map(|r| ta.keep(r))
            .inspect_err(|_| failed.set(Some(Which::Thread)))
            .with_context(|| format!("the {}", m.thread.0))
    };
    let runs = ctx.interleave_by(plan, process_run, thread_run);
    let (ps, ts) = match runs {
        Ok(r) => r,
        Err(e) => return Err(end_both(ctx, p, None, failed.get(), e)),
    };
    p.map_or(Ok(()), |s| s.finish(ctx.deadline())).context("ending the process side")?;
    host.finish().context("ending the thread side's host")?;
    let ran = |summary: Summary, mut kept: Kept<T>| {
        let timed = kept.runs.split_off(plan.warmup.min(kept.runs.len()));
        Ran {
            summary,
            warmup: kept.runs,
            settle: kept.settle,
            timed,
            driver_process_threads: kept.threads,
            memory: kept.memory,
        }
    };
    Ok([ps.map(|s| ran(s, pa)), ts.map(|s| ran(s, ta))])
}

/// What the thread side's host is asked for: the runs' size on a link of its own, or a run.
#[derive(serde::Serialize, serde::Deserialize)]
enum Ask {
    Size,
    /// A run of `sized` (see `pair`); `memory`: read what smaps shows of a ring after it.
    Run {
        sized: u64,
        memory: bool,
    },
}

/// The host's answer to an [`Ask`].
#[derive(serde::Serialize, serde::Deserialize)]
enum Said<T> {
    Sized(u64),
    Ran(OneRun<T>),
}

impl<T> Said<T> {
    fn sized(self) -> Result<u64> {
        match self {
            Said::Sized(n) => Ok(n),
            Said::Ran(_) => bail!("the thread side's host answered a sizing with a run"),
        }
    }

    fn ran(self) -> Result<OneRun<T>> {
        match self {
            Said::Ran(r) => Ok(r),
            Said::Sized(_) => bail!("the thread side's host answered a run with a size"),
        }
    }
}

/// One run of a side as `pair` keeps it: its number, the settle run's and its own evidence,
/// the threads of the driver's process at its end, and a ring's memory if it was read.
#[derive(serde::Serialize, serde::Deserialize)]
struct OneRun<T> {
    value: f64,
    settle: Option<T>,
    seen: T,
    threads: u64,
    memory: Option<harness::mem::Seen>,
}

/// Starts a thread session, runs `f` on it and ends it: finished when `f` succeeds, failed
/// (its partner's fate added to the error) when it does not.
fn on_a_partner_thread<R>(
    ctx: &Ctx,
    m: &Mechanism,
    place: Placement,
    shape: Shape,
    f: impl FnOnce(&mut Session) -> Result<R>,
) -> Result<R> {
    let mut t = start(ctx, Which::Thread, m, place, shape)?;
    match f(&mut t) {
        Ok(value) => t.finish(ctx.deadline()).context("ending a thread partner").map(|()| value),
        Err(e) => Err(t.fail(e)),
    }
}

/// What one side's runs saw, as they go (see `pair`).
struct Kept<T> {
    runs: Vec<T>,
    settle: Vec<T>,
    threads: u64,
    memory: Option<harness::mem::Seen>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept { runs: Vec::new(), settle: Vec::new(), threads: 0, memory: None }
    }
}

impl<T> Kept<T> {
    /// Keeps a run's evidence and returns its number.
    fn keep(&mut self, r: OneRun<T>) -> f64 {
        self.settle.extend(r.settle);
        self.runs.push(r.seen);
        self.threads = self.threads.max(r.threads);
        if self.memory.is_none() {
            self.memory = r.memory;
        }
        r.value
    }
}

/// After a failure: the side that failed (or both, when it is not known) fails with the
/// error, and the other closes normally, its own error added to the context.
fn end_both(
    ctx: &Ctx,
    p: Option<Session>,
    t: Option<Session>,
    failed: Option<Which>,
    e: anyhow::Error,
) -> anyhow::Error {
    let mut e = e;
    for (which, session) in [(Which::Process, p), (Which::Thread, t)] {
        let Some(session) = session else { continue };
        if failed.is_none() || failed == Some(which) {
            e = session.fail(e);
        } else if let Err(other) = session.close(ctx.deadline()) {
            e = e.context(format!("{other:#}"));
        }
    }
    e
}

/// The plan of a matrix line: fewer runs than a headline pair, no verdict, still in turns.
fn matrix_plan(ctx: &Ctx) -> Plan {
    let runs = ctx.runs().next_multiple_of(2);
    Plan::fixed(runs)
}

/// The round trips a run makes on `link` to fill the budget, sized after 64 untimed ones
/// and never fewer than 16; a pair takes the smaller of its two links' counts, so that both
/// sides do the same work.
fn trips_per_run(ctx: &Ctx, link: &mut dyn exchange::Link) -> Result<u64> {
    Ok(exchange::size_trips(link, trip_budget(ctx), ctx.deadline())?.max(1))
}

/// A latency pair: each run is `n` round trips, its number the run's median in µs.
struct LatencySide {
    name: &'static str,
    ran: Ran<Trips>,
    all: Latencies,
}

fn latency_pair(ctx: &Ctx, m: &Mechanism, place: Placement, plan: Plan) -> Result<[Option<LatencySide>; 2]> {
    let [p, t] =
        pair(ctx, m, place, Shape::CONTROL, plan, Some(&|link| trips_per_run(ctx, link)), |link, _, trips| {
            let mut round_trips = Latencies::new();
            let run = exchange::trips(link, trips, Some(&mut round_trips), ctx.deadline())?;
            Ok((run.p50_ns / 1000.0, (run, round_trips)))
        })?;
    // Every round trip of the timed runs goes into the percentiles; the warm-up runs' into none.
    let side = |name: &'static str, ran: Ran<(Trips, Latencies)>| {
        let mut all = Latencies::new();
        ran.timed.iter().for_each(|(_, l)| all.add(l));
        let trips = |v: Vec<(Trips, Latencies)>| v.into_iter().map(|(t, _)| t).collect::<Vec<_>>();
        let ran = Ran {
            summary: ran.summary,
            warmup: trips(ran.warmup),
            settle: trips(ran.settle),
            timed: trips(ran.timed),
            driver_process_threads: ran.driver_process_threads,
            memory: ran.memory,
        };
        LatencySide { name, ran, all }
    };
    Ok([p.map(|ran| side(m.process.0, ran)), t.map(|ran| side(m.thread.0, ran))])
}

fn latency_side(s: &LatencySide, place: Placement) -> Side {
    let runs = &s.ran.timed;
    let trips: u64 = runs.iter().map(|r| r.round_trips).sum();
    let cpu = stats::median(&runs.iter().map(|r| r.cpu_ns / 1000.0).collect::<Vec<_>>());
    let ran_on = runs.last().map(|r| r.ran_on).unwrap_or([usize::MAX; 2]);
    let side = Side::measured(&s.ran.summary, LATENCY_UNIT)
        .fact("mechanism", s.name)
        .fact("message_bytes", exchange::CONTROL_BYTES)
        .fact("round_trips", trips)
        .fact("p50_us", micros(s.all.percentile_ns(50.0) as f64))
        .fact("p99_us", micros(s.all.percentile_ns(99.0) as f64))
        .fact("cpu_us_per_round_trip", round2(cpu))
        .fact("pinned_cpus", [place.driver, place.partner])
        .fact("ran_on_cpus", ran_on)
        .fact("ran_on_pinned_cpus", ran_on == [place.driver, place.partner]);
    with_run_evidence(side, &s.ran)
}

/// What every side of a pair shows besides its numbers: the threads of the driver's process
/// (1 for processes, 2 for threads: no other thread was there), and for a ring what smaps
/// showed of its memory after the side's first run: the huge pages behind it (both sides asked for base
/// pages) and whether it is a MAP_SHARED mapping (both sides' are).
fn with_run_evidence<T>(side: Side, ran: &Ran<T>) -> Side {
    let side = side.fact("driver_process_threads", ran.driver_process_threads);
    match ran.memory {
        Some(seen) => side.fact("huge_kib", seen.huge_kib).fact("ring_mapping", seen.sharing.flag()),
        None => side,
    }
}

fn same_cpu() -> Result<std::result::Result<Placement, String>> {
    Placement::same_cpu()
}

fn latency_experiment(ctx: &Ctx, m: &Mechanism, note: &str) -> Result<Findings> {
    let place = match same_cpu()? {
        Ok(p) => p,
        Err(why) => return Ok(Findings::skipped(why)),
    };
    let [p, t] = latency_pair(ctx, m, place, ctx.plan())?;
    Ok(Findings {
        process: p.map(|s| latency_side(&s, place)),
        thread: t.map(|s| latency_side(&s, place)),
        note: Some(note.to_string()),
        ..Findings::default()
    })
}

/// Said by every experiment whose runs are sized by round trips.
const SIZED: &str = "Both sides make the same number of round trips per run, sized before any run on the \
                     process link and on a thread link of its own (the smaller count), after 64 untimed \
                     ones, and at least 16. The thread side's runs are served by a process of their own, in \
                     which each run starts its partner thread and ends it after the run: the row's process, \
                     the process side's driver, never starts a thread, so glibc takes it and its partners \
                     for single-threaded (glibc_single_threaded), and the thread side's driver has its \
                     descriptor table to itself between runs (driver_process_threads: the threads of the \
                     driver's process at the end of each run, the most seen); every run of either side \
                     begins with 8 untimed round trips.";

fn latency_channel(ctx: &Ctx) -> Result<Findings> {
    latency_experiment(
        ctx,
        &CHANNEL,
        &format!(
            "Channel against channel: both send typed values and block in the receive. ipc-channel serializes \
             each value (bincode) into a Unix socket and the kernel wakes the other process; crossbeam moves the \
             value through memory and wakes the other thread with a futex. Each run is the median of its round \
             trips; p50/p99 are over every round trip of the timed runs. {SIZED}"
        ),
    )
}

fn latency_shm(ctx: &Ctx) -> Result<Findings> {
    latency_experiment(
        ctx,
        &RING,
        &format!(
            "Shared memory against shared memory: the same ring code on both sides. Between processes the memory \
             is a named segment mapped before fork, between threads an anonymous MAP_SHARED mapping of the \
             process: the same kind of memory, and both sides use the shared futex ops (FUTEX_WAIT/FUTEX_WAKE: \
             the kernel finds the waiters by the word's page), the only ones that wake another process. Threads \
             could use the _PRIVATE ops instead; switching's futex-private measures what they save. Both \
             mappings ask for base pages (MADV_NOHUGEPAGE); huge_kib is what /proc/self/smaps showed behind each \
             ring after its first run, ring_mapping its kind (MAP_SHARED on both sides). What remains is what being a \
             process costs on this path. {SIZED}"
        ),
    )
}

fn latency_pipe(ctx: &Ctx) -> Result<Findings> {
    latency_experiment(
        ctx,
        &PIPE,
        &format!(
            "Control, kernel pipe against kernel pipe: the same two pipes and the same code between two processes \
             and between two threads. If the two sides cost the same, the gap between IPC and thread channels lies \
             in the mechanism, not in being a process. Every receive waits in poll(2) with the deadline (read, \
             poll, read), which costs more than perf bench's bare read. {SIZED}"
        ),
    )
}

/// A bulk side: each run's µs per MiB, and what it moved.
struct BulkSide {
    name: &'static str,
    ran: Ran<Moved>,
}

/// Messages of `size` bytes that move at least `bytes`, and never fewer than four.
fn messages_for(bytes: usize, size: usize) -> u64 {
    (bytes.div_ceil(size) as u64).max(4)
}

fn bulk_run(link: &mut dyn exchange::Link, size: usize, count: u64, seed: &mut u64, ctx: &Ctx) -> Result<(f64, Moved)> {
    *seed += 1;
    let moved = exchange::bulk(link, size, count, *seed, ctx.deadline())?;
    Ok((1e6 / (moved.gb_per_s * 1e9 / f64::from(1 << 20)), moved))
}

/// A throughput pair: each run moves `run_bytes` in messages of `size` bytes.
fn bulk_pair(
    ctx: &Ctx,
    plan: Plan,
    m: &Mechanism,
    place: Placement,
    size: usize,
    run_bytes: usize,
) -> Result<[Option<BulkSide>; 2]> {
    let count = messages_for(run_bytes, size);
    let mut seed = 0;
    let [p, t] = pair(ctx, m, place, Shape { bulk: size }, plan, None, |link, _, _| {
        bulk_run(link, size, count, &mut seed, ctx)
    })?;
    Ok([p.map(|ran| BulkSide { name: m.process.0, ran }), t.map(|ran| BulkSide { name: m.thread.0, ran })])
}

fn bulk_side(s: &BulkSide, size: usize) -> Side {
    // Every figure is what the runs counted: the sender's bytes over warm-up and timed runs,
    // the receiver's over the timed runs.
    let sent: u64 = s.ran.all().map(|r| r.bytes_sent).sum();
    let received: u64 = s.ran.timed.iter().map(|r| r.bytes_received).sum();
    let gbs = stats::median(&s.ran.timed.iter().map(|r| r.gb_per_s).collect::<Vec<_>>());
    let side = Side::measured(&s.ran.summary, BULK_UNIT)
        .fact("mechanism", s.name)
        .fact("message_bytes", size)
        .fact("gb_per_s", round2(gbs))
        .fact("bytes_sent", sent)
        .fact("bytes_received_timed_runs", received)
        .fact("checksums_match", s.ran.all().all(Moved::checksums_match));
    with_run_evidence(side, &s.ran)
}

/// Both tasks on one CPU, as in the latency experiments: the producer fills the mechanism
/// until it is full and blocks, then the consumer empties it. For the ring (4 MiB of slots)
/// that is a switch per few MiB and the figure is the cost of moving the bytes, comparable
/// with a memcpy; a pipe here holds 1 MiB ([`links::PIPE_BYTES`]), a switch per MiB.
fn throughput_experiment(
    ctx: &Ctx,
    plan: Plan,
    m: &Mechanism,
    size: usize,
    run_bytes: usize,
) -> Result<Option<[Option<Side>; 2]>> {
    let place = match same_cpu()? {
        Ok(p) => p,
        Err(_) => return Ok(None),
    };
    let [p, t] = bulk_pair(ctx, plan, m, place, size, run_bytes)?;
    // A rate of bytes that did not arrive as they were sent measures nothing: an error, not a
    // number (the matrix, which has no verdict, says CHECKSUMS DIFFER instead).
    for (which, s) in [("process", &p), ("thread", &t)] {
        let Some(s) = s else { continue };
        if let Some(bad) = s.ran.all().find(|r| !r.checksums_match()) {
            bail!(
                "the {which} side's {}: the bytes received are not the bytes sent (checksum {:x} received, {:x} \
                 sent; {} of {} bytes)",
                s.name,
                bad.checksum_received,
                bad.checksum_sent,
                bad.bytes_received,
                bad.bytes_sent
            );
        }
    }
    Ok(Some([p.map(|s| bulk_side(&s, size)), t.map(|s| bulk_side(&s, size))]))
}

/// Where /dev/mqueue is not mounted, a queue's name cannot be registered for the cleanup.
fn queue_cleanup_note() -> &'static str {
    if harness::cleanup::mqueue_mounted() {
        "Message queues are registered for the interrupt cleanup (/dev/mqueue is mounted here)."
    } else {
        "/dev/mqueue is not mounted here, so a message queue's name is not registered for the interrupt cleanup: \
         an interrupt between its mq_open and its unlink right after the fork would leave it behind."
    }
}

/// The ring's plan: at least 16 timed runs a side. A run of the ring takes about a
/// millisecond and its runs spread by ±10 %, so the 8 of `--quick` left the interval on a
/// ratio near 1.15 reaching below 1.10 or even 1.05 (`marginal` or `tie` from one run to
/// the next); the 8 more pairs, settle runs included, cost about 30 ms.
fn ring_plan(ctx: &Ctx) -> Plan {
    ctx.plan().at_least(stats::NOISY_MIN_RUNS)
}

fn throughput_shm(ctx: &Ctx) -> Result<Findings> {
    let Some([mut p, mut t]) = throughput_experiment(ctx, ring_plan(ctx), &RING, 1 << 20, RING_RUN_BYTES)? else {
        return Ok(Findings::skipped("pinning to a CPU was refused here"));
    };
    // The whole matrix: every mechanism at every size, each pair in turns, one line per side.
    let mut all_match = [true, true];
    for m in &MECHANISMS {
        let lines = matrix_bulk(ctx, m)?;
        for (i, (side, line)) in [&mut p, &mut t].into_iter().zip(lines).enumerate() {
            if let (Some(side), Some((line, matched))) = (side, line) {
                all_match[i] &= matched;
                side.set(m.side(if i == 0 { Which::Process } else { Which::Thread }).0, line);
            }
        }
    }
    for (side, matched) in [&mut p, &mut t].into_iter().zip(all_match) {
        if let Some(side) = side {
            side.set("matrix_checksums_match", matched);
        }
    }
    Ok(Findings {
        process: p,
        thread: t,
        note: Some(format!(
            "Shared memory against shared memory, both tasks on one CPU: the producer fills the ring until it is \
             full and blocks, then the consumer empties it. The producer writes each message in place into a slot \
             and the consumer checksums it where it lies, so no byte is copied through the kernel on either side; \
             both sleep and wake with the same (shared) futex ops on the same kind of memory, as in latency-shm. \
             Both rings ask for base pages (MADV_NOHUGEPAGE); huge_kib is what /proc/self/smaps showed behind \
             each after its first run, ring_mapping its kind. The receiver's checksum of every message is compared \
             with the sender's: checksums_match is what was seen, never assumed; bytes_sent is what the sender \
             counted over the warm-up, settle and timed runs, {} MiB each. The unit is µs per MiB (lower is \
             better); gb_per_s says the same as a rate. The thread side's partner is started for each of its \
             runs (driver_process_threads: see latency-pipe's note). The matrix (one fact per mechanism) runs \
             each pair in turns too, moves fewer bytes per size and has no verdict; std's SyncSender has no send with a timeout, so a full mpsc channel is retried with \
             sched_yield. {}",
            RING_RUN_BYTES >> 20,
            queue_cleanup_note()
        )),
        ..Findings::default()
    })
}

fn throughput_pipe(ctx: &Ctx) -> Result<Findings> {
    let Some([p, t]) = throughput_experiment(
        ctx,
        ctx.plan_in_full_at_least(PIPE_FULL_RUNS),
        &PIPE,
        links::PIPE_BYTES,
        PIPE_RUN_BYTES,
    )?
    else {
        return Ok(Findings::skipped("pinning to a CPU was refused here"));
    };
    // What a pipe made as the sessions make theirs holds here: the sessions' own are gone.
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
    let held = links::hold_a_message(&[&rx, &tx]);
    let [p, t] = [p, t].map(|side| side.map(|s| s.fact("pipe_bytes", held)));
    let mut note = format!(
        "Control, kernel pipe against kernel pipe: every byte is copied into the pipe's buffer and out again, \
         whichever kind of task is at the other end. Each pipe is asked to hold 1 MiB (F_SETPIPE_SZ; pipe_bytes is \
         what a pipe made the same way held) and each message is 1 MiB, so with both tasks on one CPU the writer \
         fills the pipe and the reader empties it, a switch per MiB as in the rings: the figure is the copy, over \
         {} MiB a run. Both sides copy out of and into page-aligned buffers, as the rings' slots are, so that where \
         an allocator happens to put a buffer cannot make the difference (docs/communication.md). The thread \
         side's partner is started for each of its runs (driver_process_threads: see latency-pipe's note).",
        PIPE_RUN_BYTES >> 20
    );
    if held < links::PIPE_BYTES {
        note.push_str(&format!(
            " Here a pipe held only {} KiB (pipe-max-size or the user's pipe-user-pages-soft), so the figure also \
             includes a switch per {} KiB, which costs a process more (latency-pipe).",
            held >> 10,
            held >> 10
        ));
    }
    Ok(Findings { process: p, thread: t, note: Some(note), ..Findings::default() })
}

/// One matrix line per side: a mechanism's GB/s at each size, and whether every checksum
/// matched. Each size is a pair run in turns.
fn matrix_bulk(ctx: &Ctx, m: &Mechanism) -> Result<[Option<(String, bool)>; 2]> {
    let place = same_cpu()?.map_err(|why| anyhow::anyhow!(why))?;
    let mut parts: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    let mut all_match = [true, true];
    let mut bytes = [0u64; 2];
    let queue_limit = plumbing::queue_message_limit()?;
    for size in MATRIX_SIZES {
        // A message queue refuses messages over msgsize_max: its partner runs alone then.
        let refused = m.process.0 == QUEUE.process.0 && Shape { bulk: size }.message_bytes() > queue_limit;
        let mut sides = ctx.clone();
        if refused {
            parts[0].push(format!("{} not possible (msgsize_max)", kib(size)));
            if !ctx.thread() {
                continue;
            }
            sides.side = Some(Which::Thread);
        }
        let count = (matrix_total(ctx) / (1 + ctx.runs())).div_ceil(size).max(1) as u64;
        let mut seed = 1000;
        let ran = pair(&sides, m, place, Shape { bulk: size }, matrix_plan(ctx), None, |link, _, _| {
            let (_, moved) = bulk_run(link, size, count, &mut seed, ctx)?;
            Ok((moved.gb_per_s, moved))
        })?;
        for (i, ran) in ran.into_iter().enumerate() {
            let Some(ran) = ran else { continue };
            all_match[i] &= ran.all().all(Moved::checksums_match);
            bytes[i] += ran.timed.iter().map(|r| r.bytes_received).sum::<u64>();
            parts[i].push(format!("{} {} GB/s", kib(size), harness::report::fmt_num(ran.summary.median)));
        }
    }
    let line = |i: usize| {
        let checked = if all_match[i] { "checksums match" } else { "CHECKSUMS DIFFER" };
        (format!("{}; {checked} ({} MiB)", parts[i].join(", "), bytes[i] >> 20), all_match[i])
    };
    Ok([ctx.process().then(|| line(0)), ctx.thread().then(|| line(1))])
}

fn kib(size: usize) -> String {
    if size >= 1 << 20 { format!("{} MiB", size >> 20) } else { format!("{} KiB", size >> 10) }
}

fn cpu_cost(ctx: &Ctx) -> Result<Findings> {
    let (place, where_) = match Placement::cross_cpu()? {
        Ok(p) => (p, "two CPUs"),
        Err(_) => match same_cpu()? {
            Ok(p) => (p, "one CPU (only one is allowed here)"),
            Err(why) => return Ok(Findings::skipped(why)),
        },
    };
    let [p, t] = latency_pair(ctx, &CHANNEL, place, ctx.plan())?;
    let side = |s: LatencySide| -> Result<Side> {
        // The latency pair's runs, summarized by their CPU time instead of their latency.
        let cpu: Vec<f64> = s.ran.timed.iter().map(|r| r.cpu_ns / 1000.0).collect();
        let summary = stats::summarize_again(&s.ran.summary, &cpu)?;
        let latency = latency_side(&s, place);
        let mut side = Side::measured(&summary, CPU_UNIT);
        side.facts = latency.facts;
        side.set("latency_p50_us_median_of_runs", round2(s.ran.summary.median));
        Ok(side)
    };
    let (mut p, mut t) = (p.map(side).transpose()?, t.map(side).transpose()?);
    for m in &MECHANISMS {
        let [pl, tl] = matrix_latency(ctx, m)?;
        for (which, side, line) in [(Which::Process, &mut p, pl), (Which::Thread, &mut t, tl)] {
            if let (Some(side), Some(line)) = (side, line) {
                side.set(m.side(which).0, line);
            }
        }
    }
    Ok(Findings {
        process: p,
        thread: t,
        note: Some(format!(
            "Measured on {where_}. The number is the CPU time both tasks used (CLOCK_THREAD_CPUTIME_ID of the \
             driver and of the partner, which reports its own) per round trip, beside its latency: a mechanism \
             that spins or polls while it waits shows here what it burns for its speed. {SIZED} The matrix gives \
             every mechanism's p50/p99 latency and CPU per round trip on one CPU and, where there are two, on \
             two, each pair run in turns, with no verdict. {}",
            queue_cleanup_note()
        )),
        ..Findings::default()
    })
}

/// One matrix line per side: a mechanism's latency and CPU per round trip, one CPU and two.
fn matrix_latency(ctx: &Ctx, m: &Mechanism) -> Result<[Option<String>; 2]> {
    let mut parts: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    let placements = [("one CPU", same_cpu()?.ok()), ("two CPUs", Placement::cross_cpu()?.ok())];
    for (label, place) in placements {
        let Some(place) = place else {
            for part in &mut parts {
                part.push(format!("{label}: not possible here"));
            }
            continue;
        };
        let sides = latency_pair(ctx, m, place, matrix_plan(ctx))?;
        for (part, s) in parts.iter_mut().zip(sides) {
            let Some(s) = s else { continue };
            let cpu: Vec<f64> = s.ran.timed.iter().map(|r| r.cpu_ns / 1000.0).collect();
            part.push(format!(
                "{label}: p50 {} µs, p99 {} µs, CPU {} µs",
                harness::report::fmt_num(s.all.percentile_ns(50.0) as f64 / 1000.0),
                harness::report::fmt_num(s.all.percentile_ns(99.0) as f64 / 1000.0),
                harness::report::fmt_num(stats::median(&cpu))
            ));
        }
    }
    let [p, t] = parts;
    Ok([ctx.process().then(|| p.join("; ")), ctx.thread().then(|| t.join("; "))])
}

/// The sources the effort experiment counts, as they were when this binary was built.
const SOURCES: [(&str, &str); 3] = [
    ("process.rs", include_str!("process.rs")),
    ("thread.rs", include_str!("thread.rs")),
    ("links.rs", include_str!("links.rs")),
];

/// Lines of code (not blank, not only a comment) between `// effort: NAME begin` and
/// `// effort: end` in one source, over every such region.
fn effort_lines(source: &str, name: &str) -> usize {
    let begin = format!("// effort: {name} begin");
    let mut inside = false;
    let mut count = 0;
    for line in source.lines().map(str::trim) {
        if line == begin {
            inside = true;
        } else if line == "// effort: end" {
            inside = false;
        } else if inside && !line.is_empty() && !line.starts_with("//") {
            count += 1;
        }
    }
    count
}

/// Each mechanism's setup region (process.rs or thread.rs) and the link it sends with (links.rs).
/// Several regions are separated by commas. The helpers that start a partner are not counted
/// on either side: harness::fork_child for processes, `spawn` (std's thread::Builder) for
/// threads; nor is plumbing.rs (the liveness checks, the message queues' names and cleanup,
/// and the ipc-channel rendezvous's cleanup, which the thread side has no counterpart of).
const EFFORT: [(&str, &str, &str, &str); 5] = [
    ("pipe", "stream", "pipe", "stream"),
    ("socket", "stream", "socket", "stream"),
    ("queue", "queue", "queue", "channel,mpsc"),
    ("ipc-channel", "ipc-channel", "channel", "channel,crossbeam"),
    ("ring", "ring", "ring", "ring"),
];

/// The harness code only processes need: fork and wait with deadlines, the interrupt
/// cleanup of children and segments, and named segments. Threads need none of it.
const HARNESS_FOR_PROCESSES: [&str; 3] = [
    include_str!("../../harness/src/child.rs"),
    include_str!("../../harness/src/cleanup.rs"),
    include_str!("../../harness/src/shm.rs"),
];

/// Lines of code (not blank, not only a comment) before a file's unit tests.
fn code_lines(source: &str) -> usize {
    source
        .lines()
        .map(str::trim)
        .take_while(|l| *l != "#[cfg(test)]")
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .count()
}

/// The lines of every region named in `names` (comma-separated).
fn regions(source: &str, names: &str) -> usize {
    names.split(',').map(|n| effort_lines(source, n)).sum()
}

fn effort(ctx: &Ctx) -> Result<Findings> {
    let [(_, process_rs), (_, thread_rs), (_, links_rs)] = SOURCES;
    let count = |file: &str, setup: &str, link: &str| regions(file, setup) + regions(links_rs, link);
    let mut p = Side::observed("");
    let mut t = Side::observed("");
    let mut lines = Vec::new();
    for (i, (p_setup, p_link, t_setup, t_link)) in EFFORT.iter().enumerate() {
        let m = &MECHANISMS[i];
        let (pl, tl) = (count(process_rs, p_setup, p_link), count(thread_rs, t_setup, t_link));
        anyhow::ensure!(pl > 0 && tl > 0, "no effort markers found for {} / {}", m.process.0, m.thread.0);
        p.set(m.process.0, pl);
        t.set(m.thread.0, tl);
        lines.push((pl, tl));
    }
    let [pipe, socket, _, channel, ring] = [lines[0], lines[1], lines[2], lines[3], lines[4]];
    p.set("harness_code_lines_processes_rely_on", HARNESS_FOR_PROCESSES.iter().map(|s| code_lines(s)).sum::<usize>());
    p.summary = format!("{} lines for ipc-channel, {} for the shared-memory ring", channel.0, ring.0);
    t.summary = format!("{} lines for crossbeam, {} for the in-place ring", channel.1, ring.1);
    for side in [&mut p, &mut t] {
        side.set("pipe_lines_equal_on_both_sides", pipe.0 == pipe.1);
        side.set("socket_lines_equal_on_both_sides", socket.0 == socket.1);
    }
    // The claim, like with like: the channel and the shared memory take more lines between processes.
    let matches = channel.0 > channel.1 && ring.0 > ring.1;
    Ok(Findings {
        process: ctx.process().then_some(p),
        thread: ctx.thread().then_some(t),
        matches_claim: (ctx.process() && ctx.thread()).then_some(matches),
        note: Some(
            "Not a measurement of this machine: the counts are static properties of this row's sources, \
             counted at build time (include_str! of process.rs, thread.rs and links.rs), and come out the same on \
             every machine and every run of this build; they change only when the sources do. Counted between the \
             `// effort: NAME begin` and `// effort: end` markers: each mechanism's setup (creating it, starting \
             the partner, handing it its end) plus its send and receive. Blank and comment-only lines do not \
             count. The pipe and socket pair are the same code on both sides except for how the partner gets its \
             end; the channel and the ring are the like-with-like pairs the verdict compares: it holds when both \
             take more lines between processes. The helpers that start the partner are counted on neither side; \
             harness_code_lines_processes_rely_on is the harness code (fork and wait with deadlines, interrupt \
             cleanup, named segments) that exists because processes need it."
                .to_string(),
        ),
        skipped: None,
    })
}

/// µs from ns, two decimals.
fn micros(ns: f64) -> f64 {
    round2(ns / 1000.0)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effort_counts_code_lines_between_markers_only() {
        let src = "fn a() {}\n// effort: x begin\nlet a = 1;\n\n// a comment\nlet b = 2;\n// effort: end\nlet c = 3;\n\
                   // effort: x begin\nlet d = 4;\n// effort: end\n";
        assert_eq!(effort_lines(src, "x"), 3);
        assert_eq!(effort_lines(src, "y"), 0);
    }

    #[test]
    fn every_mechanism_has_its_markers_in_the_sources() {
        let [(_, p), (_, t), (_, l)] = SOURCES;
        for (p_setup, p_link, t_setup, t_link) in EFFORT {
            for (source, names, file) in [
                (p, p_setup, "process.rs"),
                (t, t_setup, "thread.rs"),
                (l, p_link, "links.rs"),
                (l, t_link, "links.rs"),
            ] {
                for name in names.split(',') {
                    assert!(effort_lines(source, name) > 0, "no region {name} in {file}");
                }
            }
        }
    }

    #[test]
    fn bulk_runs_move_at_least_their_bytes() {
        assert_eq!(messages_for(RING_RUN_BYTES, 1 << 20), 16);
        assert_eq!(messages_for(RING_RUN_BYTES + 1, 1 << 20), 17, "at least the bytes");
        assert_eq!(messages_for(1, 1 << 20), 4, "at least four messages a run");
    }
}
