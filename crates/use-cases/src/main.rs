//! The use-cases row: small but real versions of the programs the textbook names. Processes
//! for work that needs isolation (a prefork web server, a sandbox); threads for closely
//! related tasks that share memory (a thread-pool server, a video editor's filter).
//!
//! Every experiment runs process::X and thread::X and turns what they measured or observed
//! into findings; the harness computes the verdicts. See docs/use-cases.md.

mod frame;
mod http;
mod load;
mod plumbing;
mod process;
mod thread;
mod untrusted;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use harness::row::Which;
use harness::stats::{Latencies, Plan, median};
use harness::{Better, Child, Ctx, Exit, Expected, Findings, Kind, Needs, Room, Row, Side, Spec, Status, cpu, deliver};
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::pipe2;
use serde::{Deserialize, Serialize};

use http::ServerReport;
use load::Load;
use untrusted::Runaway;

/// Workers of each web server: one for each connection of the largest load and one for each
/// piece of bad input sent meanwhile, so that every connection has a worker of its own in
/// both models.
const SERVER_WORKERS: usize = 64 + load::BAD_INPUT.len();
/// The connection counts the web servers are loaded with.
const LEVELS: [usize; 3] = [1, 8, 64];
/// Workers and connections of the poison-request experiment.
const POISON_WORKERS: usize = 8;

/// How long poison-request's prefork server may take to replace its crashed worker before it
/// is told to stop (it takes well under a millisecond on an idle machine).
const REPLACEMENT_WAIT: Duration = Duration::from_secs(2);
/// Frames of 3840 × 2160 RGBA in the clip the filter runs over, a frame per timed run; fewer
/// where the memory left holds fewer (shared_frame checks).
const FRAMES: usize = 8;
/// The clip with --quick: a frame. Filling 8 on both sides and piping them would take a third
/// of the row's --quick budget of 1.5 s, beside the sandbox's second of CPU; the runs go
/// round a clip of several frames in the full run and in this crate's unit test.
const QUICK_FRAMES: usize = 1;

static ROW: Row = Row {
    name: "use-cases",
    claim: "Processes suit work that needs isolation (servers with a process per request, sandboxes, browsers); \
            threads suit closely related tasks that share memory (editors, a server's worker pool).",
    experiments: &[
        Spec {
            id: "web-server",
            title: "HTTP/1.1 on 127.0.0.1: prefork (68 worker processes) against a pool of 68 threads, \
                    1, 8 and 64 keep-alive connections beside 4 clients of bad input; µs per request at 64",
            kind: Kind::Measure,
            unit: Some(("µs/request", Better::Lower)),
            expected: Expected::Same,
            // Two servers, their master and host, two load generators with 64 client threads at
            // most between them, and for each server a bad-input process with a client thread
            // per piece.
            needs: Needs::tasks(2 * SERVER_WORKERS as u64 + 2 + 2 + 64 + 2 * (1 + load::BAD_INPUT.len() as u64)),
            headline: false,
            run: web_server,
        },
        Spec {
            id: "poison-request",
            title: "Mid-load, one request (GET /crash) writes through an invalid pointer in its handler",
            kind: Kind::Observe,
            unit: None,
            expected: Expected::Process,
            needs: Needs::tasks(2 * POISON_WORKERS as u64 + 2),
            headline: false,
            run: poison_request,
        }
        .headline(),
        Spec {
            id: "sandbox",
            title: "Untrusted code that allocates without bound or loops forever, under RLIMIT_AS and RLIMIT_CPU; \
                    and a secret in the host's memory",
            kind: Kind::Observe,
            unit: None,
            expected: Expected::Process,
            needs: Needs::tasks(6).and_memory(4 * untrusted::MEMORY_ROOM),
            headline: false,
            run: sandbox,
        }
        .headline(),
        Spec {
            id: "shared-frame",
            title: "Brightness filter over a clip of 8 frames of 3840×2160 RGBA (1 with --quick, fewer if memory is short), \
                    frame by frame: \
                    processes on a shared-memory segment, threads in place on one buffer",
            kind: Kind::Measure,
            unit: Some(("ms/frame", Better::Lower)),
            expected: Expected::Thread,
            // The least it runs with: the quick clip and one worker. shared_frame checks the
            // room for its own clip and workers.
            needs: Needs::tasks(64).and_memory(shared_frame_memory(QUICK_FRAMES, 1)),
            headline: false,
            run: shared_frame,
        }
        .headline(),
    ],
    children: &[
        ("sandbox-host", thread::sandbox_host),
        ("sandboxed", process::sandboxed),
        ("serve", serve_child),
        ("load", load_child),
    ],
};

fn main() -> ExitCode {
    harness::row::main(&ROW)
}

/// One filter run, as both sides time it.
#[derive(Debug, Clone, Copy)]
pub struct FilterRun {
    pub elapsed: Duration,
    pub minor_faults: u64,
}

// ---------------------------------------------------------------------------------------
// The web servers.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    Prefork,
    ThreadPool,
}

impl Model {
    fn parse(name: &str) -> Option<Model> {
        match name {
            "prefork" => Some(Model::Prefork),
            "threads" => Some(Model::ThreadPool),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Model::Prefork => "prefork",
            Model::ThreadPool => "threads",
        }
    }
}

/// A running server: a sacrificial child of ours, this program started again (the prefork
/// master, or the process that hosts the thread pool), the pipe that tells it to stop (its
/// stdin) and the pipe it talks back on (its stdout).
struct Server {
    child: Child,
    stop: OwnedFd,
    said: std::fs::File,
    addr: SocketAddr,
}

impl Server {
    /// Starts `use-cases __child serve MODEL WORKERS DEADLINE_MS` and waits for its port.
    /// A new program, not a fork: the thread pool may crash its whole process, and a server
    /// forked from the row would carry the row's memory.
    fn start(model: Model, workers: usize, deadline: Duration) -> Result<Server> {
        let (stop_r, stop_w) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
        let args = [model.name().to_string(), workers.to_string(), deadline.as_millis().to_string()];
        let (child, mut said) = plumbing::spawn_talking("serve", &args, stop_r)?;
        let line = plumbing::read_line(&mut said, deadline, "the server's port")?;
        let port: u16 = harness::received(&line, "listening")?.into_iter().next().context("no port")?;
        Ok(Server { child, stop: stop_w, said, addr: SocketAddr::from(([127, 0, 0, 1], port)) })
    }

    /// Reads what the server says until a message with `tag`, for at most `wait` (or until
    /// the server ends).
    fn wait_for(&mut self, tag: &str, wait: Duration) {
        let until = Instant::now() + wait;
        while let Ok(line) = plumbing::read_line(&mut self.said, until.saturating_duration_since(Instant::now()), tag) {
            if line.starts_with(tag) {
                return;
            }
        }
    }

    /// Tells the server to stop and waits for it; its report, or how it ended.
    fn stop(mut self, deadline: Duration) -> Result<(Exit, Option<ServerReport>)> {
        drop(self.stop);
        let exit = self.child.wait(deadline)?;
        let rest = plumbing::read_rest(&mut self.said, deadline)?;
        let report = harness::received::<ServerReport>(&rest, "server")?.into_iter().next();
        Ok((exit, report))
    }
}

fn run_server(
    model: Model,
    listener: TcpListener,
    workers: usize,
    stop: OwnedFd,
    deadline: Duration,
) -> Result<ServerReport> {
    match model {
        Model::Prefork => process::serve(listener, workers, stop, deadline),
        Model::ThreadPool => thread::serve(listener, workers, stop, deadline),
    }
}

/// What one side's load runs added up to.
#[derive(Default)]
struct Loaded {
    per_second: [Vec<f64>; 3],
    latencies: [Latencies; 3],
    ok: u64,
    tasks: BTreeSet<String>,
    pids: BTreeSet<String>,
}

impl Loaded {
    /// One timed run: the load at each level in turn; the value is µs per request at the last.
    fn run(&mut self, generator: &mut load::Generator, addr: SocketAddr) -> Result<f64> {
        let mut last = 0.0;
        for (i, connections) in LEVELS.into_iter().enumerate() {
            let tally = generator.call(&(addr, connections))?;
            self.latencies[i].add(&tally.latencies);
            self.per_second[i].push(tally.per_second);
            self.ok += tally.ok;
            self.tasks.extend(tally.tasks);
            self.pids.extend(tally.pids);
            last = tally.us_per_request;
        }
        Ok(last)
    }
}

fn web_server(ctx: &Ctx) -> Result<Findings> {
    let per_level = Duration::from_millis(if ctx.quick { 2 } else { 10 });
    let prefork = ctx.process_side(|| Server::start(Model::Prefork, SERVER_WORKERS, ctx.deadline()))?;
    let pool = ctx.thread_side(|| Server::start(Model::ThreadPool, SERVER_WORKERS, ctx.deadline()))?;
    // The load generator's and the bad input's threads start in processes of their own, never
    // in this one, which forks shared-frame's filter workers later: glibc takes a process that
    // ever started a thread, and every child it forks, for multi-threaded for good
    // (docs/report.md, "Processes that glibc took for threads").
    let mut generator_p = ctx.process_side(|| load::generator(per_level, ctx.deadline()))?;
    let mut generator_t = ctx.thread_side(|| load::generator(per_level, ctx.deadline()))?;
    let (mut p, mut t) = (Loaded::default(), Loaded::default());
    // The bad input goes to both servers while the load runs, as it would on the internet,
    // sent just before the first warm-up pair, each piece settling at its own pace (a piece
    // may hold a worker for up to the server's IDLE), and the servers have a worker for each
    // piece besides one for every connection of the load. Every request of the timed runs must
    // still succeed: a failed one is an error of the experiment.
    let bad_p = prefork.as_ref().map(|s| load::send_bad_input(s.addr)).transpose()?;
    let bad_t = pool.as_ref().map(|s| load::send_bad_input(s.addr)).transpose()?;
    let timed = ctx.interleave(
        || {
            let generator = generator_p.as_mut().context("no load generator")?;
            p.run(generator, prefork.as_ref().context("no prefork server")?.addr)
        },
        || {
            let generator = generator_t.as_mut().context("no load generator")?;
            t.run(generator, pool.as_ref().context("no thread-pool server")?.addr)
        },
    );
    // Waited for before the timed runs' result is looked at: no client outlives the servers.
    let settled = |bad: Option<Child>| bad.map(|b| load::bad_input_outcomes(b, ctx.deadline())).transpose();
    let (bad_p, bad_t) = (settled(bad_p), settled(bad_t));
    let (ps, ts) = timed?;
    let (bad_p, bad_t) = (bad_p?, bad_t?);
    for generator in [generator_p, generator_t].into_iter().flatten() {
        generator.finish()?;
    }
    let stopped = |server: Option<Server>| -> Result<Option<ServerReport>> {
        let Some(server) = server else { return Ok(None) };
        let (exit, report) = server.stop(ctx.deadline())?;
        exit.check("the server")?;
        report.context("the server stopped without its report").map(Some)
    };
    let (report_p, report_t) = (stopped(prefork)?, stopped(pool)?);
    let side = |summary: harness::stats::Summary, l: &Loaded, report: ServerReport, bad: Vec<load::BadOutcome>| {
        let mut side = Side::measured(&summary, "µs/request");
        for (i, c) in LEVELS.into_iter().enumerate() {
            side.set(&format!("requests_per_s_{c}"), median(&l.per_second[i]).round());
            side.set(&format!("p50_us_{c}"), l.latencies[i].percentile_ns(50.0) / 1000);
            side.set(&format!("p99_us_{c}"), l.latencies[i].percentile_ns(99.0) / 1000);
        }
        side.set("responses_checked", l.ok);
        side.set("server_counted", report.served);
        // The half-closed client's request is answered too: the server counts it.
        let bad_ok = bad.iter().filter(|b| b.result.starts_with("answered 200")).count() as u64;
        side.set("server_count_matches", report.served == l.ok + bad_ok);
        side.set("workers", report.workers);
        side.set("answering_processes", l.pids.len());
        side.set("answering_tasks", l.tasks.len());
        let bad_map: serde_json::Map<String, serde_json::Value> =
            bad.iter().map(|b| (b.what.to_string(), serde_json::Value::from(b.result.clone()))).collect();
        side.set("bad_input", bad_map);
        side.set("bad_input_settled_within_ms", bad.iter().map(|b| b.took.as_millis()).max().unwrap_or(0));
        side
    };
    let process = match (ps, report_p, bad_p) {
        (Some(s), Some(r), Some(b)) => Some(side(s, &p, r, b)),
        _ => None,
    };
    let thread = match (ts, report_t, bad_t) {
        (Some(s), Some(r), Some(b)) => Some(side(s, &t, r, b)),
        _ => None,
    };
    Ok(Findings {
        process,
        thread,
        note: Some(
            "The textbook puts servers in both columns; both models make the same system calls per request, so \
             no difference in speed is expected. Each connection has a worker of its own (one connection at a \
             time per worker, as Apache's prefork MPM): the servers are child processes, and each side's load \
             generator is a process of its own, its clients threads of it, as wrk's are. Bad input (a 1 MiB \
             request line, a head with no end, a silent client, a half-closed client) goes to each server \
             from another process, a thread a piece, started just before the first (warm-up) pair of runs, \
             the prefork server's a moment before the pool's; each piece \
             settles at its own pace while the runs go on (bad_input_settled_within_ms: the slowest piece, \
             from its connection), and every request of the timed runs had to succeed (a failed one is an \
             error of the experiment); each server has a worker for each piece of bad input besides the 64 \
             for the load."
                .to_string(),
        ),
        ..Findings::default()
    })
}

// ---------------------------------------------------------------------------------------
// The poison request.

/// What one model did with the poison request.
struct Poisoned {
    load: AfterPoison,
    server: String,
    report: Option<ServerReport>,
}

/// What the load generator saw of the poison request and after it.
#[derive(Serialize, Deserialize)]
struct AfterPoison {
    poison: String,
    after_ok: u64,
    after_failed: u64,
    casualties: u64,
    recovered: bool,
    unavailable: Duration,
}

fn poison_run(model: Model, ctx: &Ctx) -> Result<Poisoned> {
    let requests = if ctx.quick { 400 } else { 2000 };
    let mut server = Server::start(model, POISON_WORKERS, ctx.deadline())?;
    // The load generator's threads start in a process of their own, as in web-server.
    let load = ctx.hosted(|| poison_load(server.addr, requests));
    // The prefork master hears of a death from the worker's pidfd, readable once the worker
    // has finished exiting: a moment after its connection closed, and on a busy machine after
    // the rest of the load. The order to stop waits for it to say it replaced the worker.
    if model == Model::Prefork && load.as_ref().is_ok_and(|l| l.poison.starts_with("failed")) {
        server.wait_for("replaced", REPLACEMENT_WAIT);
    }
    let (exit, report) = server.stop(ctx.deadline())?;
    Ok(Poisoned {
        load: load?,
        server: match exit.message() {
            Some(m) if !exit.status.success() && exit.status.signal().is_none() => format!("{}: {m}", exit.status),
            _ => exit.status.to_string(),
        },
        report,
    })
}

/// `requests` requests to the server at `addr` on [`POISON_WORKERS`] connections; the one
/// in the middle is the poison.
fn poison_load(addr: SocketAddr, requests: u64) -> Result<AfterPoison> {
    let poison_at = requests / 2;
    let load = Load {
        connections: POISON_WORKERS,
        max_requests: requests,
        max_time: Duration::from_secs(5),
        poison_at: Some(poison_at),
    };
    let out = load::run(addr, load)?;
    let poison = out.requests.iter().find(|r| r.number == poison_at).context("the poison request was not sent")?;
    // The generator holds back every request numbered after the poison until the poison's
    // client has seen what became of it: "after" means after the crash.
    let after: Vec<_> = out.requests.iter().filter(|r| r.number > poison_at).collect();
    let casualties = out.requests.iter().filter(|r| r.number < poison_at && r.outcome.is_err()).count();
    let first_ok = after.iter().filter(|r| r.outcome.is_ok()).map(|r| r.sent + r.latency).min();
    let end = out.requests.iter().map(|r| r.sent + r.latency).max().unwrap_or(poison.sent);
    Ok(AfterPoison {
        poison: match &poison.outcome {
            Ok(()) => "answered".to_string(),
            Err(e) => format!("failed: {e}"),
        },
        after_ok: after.iter().filter(|r| r.outcome.is_ok()).count() as u64,
        after_failed: after.iter().filter(|r| r.outcome.is_err()).count() as u64,
        casualties: casualties as u64,
        recovered: first_ok.is_some(),
        unavailable: first_ok.unwrap_or(end).saturating_sub(poison.sent),
    })
}

fn poison_request(ctx: &Ctx) -> Result<Findings> {
    let process = ctx.process_side(|| poison_run(Model::Prefork, ctx))?;
    let thread = ctx.thread_side(|| poison_run(Model::ThreadPool, ctx))?;
    let side = |p: &Poisoned| {
        let l = &p.load;
        let mut s = Side::observed(format!(
            "poison {}; after it: {} ok, {} failed; server {}",
            l.poison, l.after_ok, l.after_failed, p.server
        ))
        .fact("poison_request", &l.poison)
        .fact("after_poison_ok", l.after_ok)
        .fact("after_poison_failed", l.after_failed)
        .fact("in_flight_failed", l.casualties)
        .fact("recovered", l.recovered)
        .fact("unavailable_ms", (l.unavailable.as_secs_f64() * 1e4).round() / 10.0)
        .fact("server", &p.server);
        if let Some(r) = &p.report {
            s.set("workers_replaced", r.replaced);
            s.set("worker_deaths", &r.deaths);
        }
        s
    };
    // The claim, as observed: in the prefork server only the poison failed, its worker was
    // replaced and every later request succeeded; the thread pool's process died of it, and
    // every later request failed.
    let isolated = process.as_ref().map(|p| {
        p.load.poison.starts_with("failed")
            && p.load.after_failed == 0
            && p.load.after_ok > 0
            && p.report.as_ref().is_some_and(|r| r.replaced == 1 && r.deaths == ["killed by SIGSEGV"])
    });
    let shared_fate = thread.as_ref().map(|t| {
        t.load.poison.starts_with("failed")
            && t.load.after_ok == 0
            && t.load.after_failed > 0
            && t.server == "killed by SIGSEGV"
    });
    Ok(Findings {
        process: process.as_ref().map(side),
        thread: thread.as_ref().map(side),
        matches_claim: isolated.zip(shared_fate).map(|(i, s)| i && s),
        note: Some(format!(
            "{POISON_WORKERS} keep-alive connections, {} requests, request {} is GET /crash. Requests numbered \
             after it wait until its client has seen it fail; a failed connection is opened again for \
             the next request. The prefork server is told to stop once its master has said it replaced \
             the worker (or {} s have passed). Nothing restarts the thread pool's process here: a supervisor (systemd, say) \
             would restart it whole, dropping every connection it held.",
            if ctx.quick { 400 } else { 2000 },
            if ctx.quick { 200 } else { 1000 },
            REPLACEMENT_WAIT.as_secs()
        )),
        skipped: None,
    })
}

// ---------------------------------------------------------------------------------------
// The sandbox.

fn sandbox(ctx: &Ctx) -> Result<Findings> {
    // The host's secret, in its memory; the untrusted code is told where it is. On the process
    // side this process is the host; the thread side's host is a sacrificial copy that keeps
    // the same bytes.
    let secret = Box::new(untrusted::secret()?);
    let address = std::ptr::from_ref::<[u8; 16]>(&secret) as usize;
    // All four start at once, so that the two CPU runaways share the second they each burn.
    let mut children = Vec::new();
    for runaway in Runaway::ALL {
        if ctx.process() {
            children.push(((Which::Process, runaway), process::start_sandbox(runaway, address)?));
        }
        if ctx.thread() {
            children.push(((Which::Thread, runaway), thread::start_sandbox(runaway, &secret)?));
        }
    }
    let (which, children): (Vec<_>, Vec<Child>) = children.into_iter().unzip();
    let exits = harness::wait_all(children, ctx.deadline())?;
    // The process side's host is this process: once its children have ended, it does its own
    // work, and the result is checked against the closed form.
    let host_work_done = untrusted::host_job() == untrusted::host_job_expected();
    let outcome = |model: Which, runaway: Runaway| -> Option<&Exit> {
        which.iter().position(|w| *w == (model, runaway)).map(|i| &exits[i])
    };
    let said = |e: &Exit| match e.message() {
        Some(m) => format!("{}: {}", e.status, m.trim_start_matches("error: ")),
        None => e.status.to_string(),
    };
    let stopped_by_limit = |e: &Exit, runaway: Runaway| match runaway {
        // An allocation that fails aborts (Rust's handle_alloc_error) or returns an error.
        Runaway::Memory => matches!(e.status, Status::Killed(Signal::SIGABRT | Signal::SIGSEGV) | Status::Exited(1)),
        Runaway::Cpu => matches!(e.status, Status::Killed(Signal::SIGXCPU | Signal::SIGKILL)),
    };
    type Peeked = std::result::Result<[u8; 16], String>;
    // What the untrusted code found at the secret's address, in the limited process itself
    // (the child, or the host's thread): one peek from each runaway.
    let peeks = |mem: &Exit, cpu: &Exit| -> Result<[Peeked; 2]> {
        Ok([mem.received_one("peeked").context("memory")?, cpu.received_one("peeked").context("cpu")?])
    };
    let saw = |peeked: &Peeked| peeked.as_ref().is_ok_and(|b| b == &*secret);
    let peek_words = |peeked: &Peeked| match peeked {
        Ok(b) if b == &*secret => "read the secret".to_string(),
        Ok(_) => "read other bytes".to_string(),
        Err(e) => format!("nothing there: {e}"),
    };
    // `limited` is who the limits stopped: the sandbox (a child) or the whole host.
    let side = |mem: &Exit, cpu: &Exit, limited: &str, host_done: bool, peeked: &[Peeked; 2]| {
        let seen = peeked.iter().filter(|p| saw(p)).count();
        let host = if limited == "host" { "the whole host " } else { "" };
        Side::observed(format!(
            "{limited} {} / {}; {}; secret {}",
            mem.status,
            cpu.status,
            if host_done { "host carried on" } else { "host's own work lost" },
            if seen > 0 { "read" } else { "not readable" }
        ))
        .fact("memory_runaway", format!("{host}{}", said(mem)))
        .fact("cpu_runaway", format!("{host}{}", said(cpu)))
        .fact("host_work_done", host_done)
        .fact("secret_seen_by", seen)
        .fact("peek", peek_words(&peeked[0]))
    };
    let process = ctx.process_side(|| {
        let (mem, cpu) = (
            outcome(Which::Process, Runaway::Memory).context("memory")?,
            outcome(Which::Process, Runaway::Cpu).context("cpu")?,
        );
        let peeked = peeks(mem, cpu)?;
        let ok = stopped_by_limit(mem, Runaway::Memory)
            && stopped_by_limit(cpu, Runaway::Cpu)
            && host_work_done
            && !peeked.iter().any(saw);
        Ok((side(mem, cpu, "sandbox", host_work_done, &peeked), ok))
    })?;
    let thread = ctx.thread_side(|| {
        let (mem, cpu) = (
            outcome(Which::Thread, Runaway::Memory).context("memory")?,
            outcome(Which::Thread, Runaway::Cpu).context("cpu")?,
        );
        // The host delivers its job's result only if it lived to do it.
        let host_done = |e: &Exit| e.received::<u64>("host-done").map(|v| v == [untrusted::host_job_expected()]);
        let done = host_done(mem)? || host_done(cpu)?;
        let peeked = peeks(mem, cpu)?;
        let ok = stopped_by_limit(mem, Runaway::Memory)
            && stopped_by_limit(cpu, Runaway::Cpu)
            && !done
            && peeked.iter().all(saw);
        Ok((side(mem, cpu, "host", done, &peeked), ok))
    })?;
    Ok(Findings {
        matches_claim: process.as_ref().zip(thread.as_ref()).map(|(p, t)| p.1 && t.1),
        process: process.map(|p| p.0),
        thread: thread.map(|t| t.0),
        note: Some(format!(
            "Limits (setrlimit in the limited process itself): address space {} MiB above what it had mapped \
             (RLIMIT_AS), {} s of CPU (RLIMIT_CPU: SIGXCPU, SIGKILL a second later). On the process side the \
             limited process is the untrusted code's own (a new program, started by execve); a thread has no \
             limits of its own, so on the thread side it is the whole host. The secret is 16 random bytes; the \
             untrusted code, told where its host keeps them, reads there with process_vm_readv(2) on its own \
             process, then runs away; secret_seen_by counts the two runaways that read it. host_work_done: the \
             host's own job (a sum of squares) matched its closed form after the runaways ended. A real \
             sandbox adds more walls (seccomp, namespaces, no ptrace): Chrome's renderers, for one.",
            untrusted::MEMORY_ROOM >> 20,
            untrusted::CPU_SECONDS
        )),
        skipped: None,
    })
}

// ---------------------------------------------------------------------------------------
// The shared frame.

/// One side's clip and the filter runs over it. Run after run filters the clip's next frame,
/// as an editor filters a clip frame by frame, and starts over at its end.
struct Clip<'a> {
    frames: &'a mut [u8],
    frame_bytes: usize,
    /// How many times each frame has been filtered: its next change is +STEP after an even
    /// count and -STEP after an odd one, so that every frame starts every second pass over
    /// the clip from the pixels it was filled with.
    filtered: Vec<u64>,
    /// The frame the next run filters.
    next: usize,
    /// Runs made so far, warm-up runs included.
    runs: usize,
    /// The warm-up runs, which the harness makes before the timed ones.
    warmup: usize,
    /// The minor faults of each timed run (the warm-up runs' are left out).
    faults: Vec<f64>,
    /// The whole clip's checksum after the first pass, every frame filtered once.
    checksum: Option<u64>,
}

impl<'a> Clip<'a> {
    fn new(frames: &'a mut [u8], frame_bytes: usize, warmup: usize) -> Clip<'a> {
        let len = frames.len() / frame_bytes;
        Clip {
            frames,
            frame_bytes,
            filtered: vec![0; len],
            next: 0,
            runs: 0,
            warmup,
            faults: Vec::new(),
            checksum: None,
        }
    }

    fn len(&self) -> usize {
        self.filtered.len()
    }

    /// Filters frame `i` with `filter` (a side's mechanism) and the change that frame is due.
    fn filter<T>(&mut self, i: usize, filter: impl FnOnce(&mut [u8], i8) -> Result<T>) -> Result<T> {
        let pixels = &mut self.frames[i * self.frame_bytes..(i + 1) * self.frame_bytes];
        let out = filter(pixels, frame::delta_of(self.filtered[i]))?;
        self.filtered[i] += 1;
        Ok(out)
    }

    /// One run, warm-up or timed: the next frame of the clip; returns its time in ms.
    fn filter_next(&mut self, filter: impl FnOnce(&mut [u8], i8) -> Result<FilterRun>) -> Result<f64> {
        let run = self.filter(self.next, filter)?;
        self.next = (self.next + 1) % self.len();
        self.runs += 1;
        if self.runs > self.warmup {
            self.faults.push(run.minor_faults as f64);
        }
        if self.next == 0 && self.checksum.is_none() {
            self.checksum = Some(frame::checksum(self.frames));
        }
        Ok(run.elapsed.as_secs_f64() * 1e3)
    }

    /// What the runs left: the clip's checksum, the timed runs' faults, and the huge pages
    /// behind its frames now.
    fn seen(&self) -> Result<ClipSeen> {
        Ok(ClipSeen {
            runs: self.runs,
            checksum: self.checksum,
            minor_faults_per_run: median(&self.faults).round(),
            huge_kib: harness::mem::huge_kib_at(self.frames.as_ptr())?,
        })
    }

    /// Gives every frame back the pixels it was filled with (untimed): a frame filtered an
    /// odd number of times is filtered once more, the other way.
    fn restore(&mut self, filter: impl Fn(&mut [u8], i8) -> Result<FilterRun>) -> Result<()> {
        for i in 0..self.len() {
            if self.filtered[i] % 2 == 1 {
                self.filter(i, &filter)?;
            }
        }
        Ok(())
    }
}

/// What one side's clip showed after its runs ([`Clip::seen`]).
#[derive(Debug, Serialize, Deserialize)]
struct ClipSeen {
    runs: usize,
    checksum: Option<u64>,
    minor_faults_per_run: f64,
    huge_kib: u64,
}

/// What the thread side's host is asked in shared-frame, and what it answers.
#[derive(Debug, Serialize, Deserialize)]
enum ClipAsk {
    /// Fill the clip (untimed).
    Fill,
    /// One run, warm-up or timed: filter the clip's next frame.
    Filter,
    /// What the runs left.
    Seen,
}

#[derive(Debug, Serialize, Deserialize)]
enum ClipSaid {
    Filled,
    /// The run's time in ms.
    Filtered(f64),
    Seen(ClipSeen),
}

/// Memory shared-frame touches at once with a clip of `frames` and `workers` filter workers:
/// both sides' clips, and in the piped contrast each worker's piece with at most a piece more
/// in its pipes.
const fn shared_frame_memory(frames: usize, workers: usize) -> u64 {
    (2 * frames * frame::FRAME_BYTES + workers * 2 * process::PIECE) as u64
}

fn shared_frame(ctx: &Ctx) -> Result<Findings> {
    let wanted = if ctx.quick { QUICK_FRAMES } else { FRAMES };
    let workers = cpu::allowed()?.len();
    // The clip is as long as the memory left allows, up to `wanted`, and the note says so when
    // it is shorter: a fork per worker and frame, no more tasks than the harness checked.
    let room = Room::probe()?;
    let refusal =
        |frames: usize| room.refuse(Needs::tasks(workers as u64).and_memory(shared_frame_memory(frames, workers)));
    let Some(frames) = (1..=wanted).rev().find(|&n| refusal(n).is_none()) else {
        return Ok(Findings::skipped(refusal(1).unwrap_or_default()));
    };
    let shorter = refusal(wanted).map(|why| format!(" Only {frames} of the {wanted} frames fit here ({why})."));
    let len = frames * frame::FRAME_BYTES;
    let deadline = ctx.deadline();
    let mut segment = ctx.process_side(|| process::frames(len))?;
    let buffer = ctx.thread_side(|| thread::frames(len))?;
    // Safety: each slice covers exactly its own mapping, and nothing else refers to that
    // memory meanwhile. The segment lives until the end of this function; the buffer's slice
    // goes, with the buffer itself, into the thread side's host below.
    let mut p_frames = segment.as_mut().map(|s| unsafe { std::slice::from_raw_parts_mut(s.as_ptr(), len) });
    // Safety: as above.
    let mut t_frames = buffer.as_ref().map(|m| unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), len) });
    // Setup, untimed: the pages of every frame of both clips are mapped in turns, a page of
    // each frame at a time, so that every frame of either side lies on the same mix of
    // physical memory.
    let mut every_frame: Vec<&mut [u8]> =
        p_frames.iter_mut().chain(t_frames.iter_mut()).flat_map(|f| f.chunks_mut(frame::FRAME_BYTES)).collect();
    harness::mem::populate_in_turns(&mut every_frame)?;
    // The warm-up goes once through the whole clip: the first filtering of each frame after
    // the fill was slower than every later one (on the segment about 7 ms a frame against 5.5,
    // in the buffer 3.7 against 3.4: the Intel guest, 2026-12-02), and with 2 warm-up runs the
    // first pass's 6 slow frames fell among a full run's timed runs, a second level: the
    // interval's upper end was 1.95-2.10 in 9 of 10 invocations, on ratios of 1.5-1.7.
    let plan = Plan { warmup: ctx.warmup().max(frames), ..ctx.plan() };
    let clip = |f| Clip::new(f, frame::FRAME_BYTES, plan.warmup);
    let (mut p, t) = (p_frames.map(clip), t_frames.map(clip));
    // The thread side's clip and its filter threads live in a process of their own, forked
    // now with the buffer's pages in place. Its closure owns the clip and the buffer: this
    // process drops both unused once the host is forked (Host::start), which unmaps the buffer
    // here, so that its pages are the host's alone; and it never starts a thread, so that
    // glibc takes it and the workers it forks for single-threaded (docs/report.md, "Processes
    // that glibc took for threads").
    let mut threads = ctx.thread_host({
        // The clip before the mapping it lies in, so that it goes first.
        let mut t = t.zip(buffer);
        move |ask: ClipAsk| {
            let (clip, _mapping) = t.as_mut().context("no buffer")?;
            Ok(match ask {
                ClipAsk::Fill => {
                    frame::fill(clip.frames);
                    ClipSaid::Filled
                }
                ClipAsk::Filter => {
                    ClipSaid::Filtered(clip.filter_next(|f, delta| thread::filter_frame(f, delta, workers, deadline))?)
                }
                ClipAsk::Seen => ClipSaid::Seen(clip.seen()?),
            })
        }
    })?;
    // Both clips are filled at once, the buffer by its host while this process fills the
    // segment.
    ctx.thread_side(|| threads.send(&ClipAsk::Fill))?;
    if let Some(clip) = p.as_mut() {
        frame::fill(clip.frames);
    }
    ctx.thread_side(|| threads.reply())?;
    let p_filter = |f: &mut [u8], delta: i8| process::filter_frame(f, delta, workers, deadline);
    let (ps, ts) = ctx.interleave_by(
        plan,
        || p.as_mut().context("no segment")?.filter_next(p_filter),
        || match threads.call(&ClipAsk::Filter)? {
            ClipSaid::Filtered(ms) => Ok(ms),
            other => bail!("the thread side's host answered a filter run with {other:?}"),
        },
    )?;
    // What the runs left, huge pages included: both asked for base pages only.
    let p_seen = p.as_ref().map(Clip::seen).transpose()?;
    let t_seen = ctx.thread_side(|| match threads.call(&ClipAsk::Seen)? {
        ClipSaid::Seen(seen) => Ok(seen),
        other => bail!("the thread side's host answered with {other:?} instead of its clip"),
    })?;
    threads.finish()?;
    for seen in p_seen.iter().chain(t_seen.iter()) {
        ensure!(seen.checksum.is_some(), "{} runs did not go once through the clip of {frames} frames", seen.runs);
    }
    // For contrast, the process side filters its clip once more, untimed, from the pixels it
    // was filled with, but with copies through pipes instead of the segment: the bytes that
    // went through, and the checksum, which must be the first pass's.
    let piped = match p.as_mut() {
        Some(clip) => {
            clip.restore(p_filter)?;
            let (mut copied, mut capacity) = (0, u64::MAX);
            for i in 0..clip.len() {
                let run =
                    clip.filter(i, |f, delta| process::filter_frame_through_pipes(f, delta, workers, deadline))?;
                copied += run.copied;
                capacity = capacity.min(run.pipe_bytes);
            }
            Some((copied, capacity, frame::checksum(clip.frames)))
        }
        None => None,
    };
    let (p_sum, t_sum) = (p_seen.as_ref().and_then(|c| c.checksum), t_seen.as_ref().and_then(|c| c.checksum));
    let hex = |c: Option<u64>| c.map(|c| format!("{c:016x}")).unwrap_or_default();
    let common = |s: Side, seen: &ClipSeen| {
        s.fact("frames", frames)
            .fact("bytes", len)
            .fact("memory_left_mib", room.memory.amount >> 20)
            .fact("filter_workers", workers)
            .fact("checksum", hex(seen.checksum))
            .fact("minor_faults_per_run", seen.minor_faults_per_run)
            .fact("huge_kib", seen.huge_kib)
    };
    let same_checksums = p_sum.is_some() && p_sum == t_sum && piped.as_ref().is_none_or(|(_, _, c)| Some(*c) == p_sum);
    let process = ps.zip(p_seen.as_ref()).map(|(s, seen)| {
        let mut side =
            common(Side::measured(&s, "ms/frame"), seen).fact("mechanism", "shared-memory segment (shm_open, mmap)");
        if let Some((copied, capacity, checksum)) = piped {
            side.set("through_pipes_bytes_copied", copied);
            side.set("through_pipes_capacity_bytes", capacity);
            side.set("through_pipes_checksum", hex(Some(checksum)));
        }
        side.set("checksums_equal", same_checksums);
        side
    });
    let thread = ts.zip(t_seen.as_ref()).map(|(s, seen)| {
        common(Side::measured(&s, "ms/frame"), seen)
            .fact("mechanism", "one buffer, scoped threads on disjoint chunks")
            .fact("checksums_equal", same_checksums)
    });
    if process.is_some() && thread.is_some() && !same_checksums {
        bail!("the sides' output checksums differ: {} {}", hex(p_sum), hex(t_sum));
    }
    Ok(Findings {
        process,
        thread,
        note: Some(format!(
            "A clip of {frames}, filtered frame by frame: each timed run brightens the clip's next frame \
             (ms/frame) and the runs cycle through the clip, each pass changing the brightness the other way \
             (+16, then -16), so that every frame starts every second pass from the pixels it was filled with. \
             checksum is the whole clip's after the first pass. One worker per allowed CPU, each on a disjoint \
             chunk of the frame; the workers are created for every frame (fork or spawn), as a filter \
             invocation would. On the segment and in the threads' buffer every worker writes in place: no byte \
             goes through a pipe or a copy. For contrast, the process side then filters its clip once more, \
             untimed, from the pixels it was filled with, copying each chunk to its worker and back through \
             pipes a MiB at a time: through_pipes_bytes_copied counts the bytes as they pass, and its checksum \
             must match. Each pipe is asked to hold a MiB (F_SETPIPE_SZ), where the kernel allows it; \
             through_pipes_capacity_bytes is the smallest that F_GETPIPE_SZ then gave. Both sides ask for base \
             pages (MADV_NOHUGEPAGE); huge_kib is what /proc/self/smaps shows behind the frames after the runs. \
             The pages of every frame of both clips are mapped in turns, a page of each frame at a time, so that \
             every frame of either side lies on the same mix of physical memory. The thread side's clip and \
             its threads then go to a process of their own, forked with those pages in place, which fills the \
             buffer while the row fills the segment: the row, which forks the process side's workers, never \
             starts a thread (glibc_single_threaded). The clip has {wanted} \
             unless the room left here holds fewer (half of memory_left_mib, the tightest of MemAvailable and the cgroup's limit; ulimit -v), \
             counting both clips and, for each piped worker, its MiB and a MiB in its pipes.{}",
            shorter.unwrap_or_default(),
            frames = harness::report::counted(frames, "frame", "frames"),
            wanted = harness::report::counted(wanted, "frame", "frames"),
        )),
        ..Findings::default()
    })
}

// ---------------------------------------------------------------------------------------
// Entry points for `cargo xtask anchors use-cases`.

/// `use-cases __child serve prefork|threads WORKERS [DEADLINE_MS]`: serves on 127.0.0.1 until
/// stdin closes (at most DEADLINE_MS, 60 s if not given); delivers "listening PORT" first and
/// the server's report at the end. The row's servers and `cargo xtask anchors use-cases`.
fn serve_child(args: &[String]) -> Result<()> {
    let (model, workers, deadline) = match args {
        [m, w] => (m, w, Duration::from_secs(60)),
        [m, w, ms] => (m, w, Duration::from_millis(ms.parse().context("DEADLINE_MS")?)),
        _ => bail!("usage: serve prefork|threads WORKERS [DEADLINE_MS]"),
    };
    let model = Model::parse(model).with_context(|| format!("unknown model {model:?}"))?;
    let workers: usize = workers.parse().context("WORKERS")?;
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    deliver("listening", &listener.local_addr()?.port());
    // Safety: dup(2) of our stdin, so that the server owns a descriptor that ends with it.
    let stop = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) }.try_clone_to_owned().context("dup stdin")?;
    let report = run_server(model, listener, workers, stop, deadline)?;
    deliver("server", &report);
    Ok(())
}

/// `use-cases __child load ADDR CONNECTIONS MS`: our load generator against a server for MS
/// milliseconds; delivers what it did.
fn load_child(args: &[String]) -> Result<()> {
    let [addr, connections, ms] = args else { bail!("usage: load ADDR CONNECTIONS MS") };
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    ensure!(addr.ip().is_loopback(), "the load stays on 127.0.0.1");
    let load = Load {
        connections: connections.parse().context("CONNECTIONS")?,
        max_requests: u64::MAX / 2,
        max_time: Duration::from_millis(ms.parse().context("MS")?),
        poison_at: None,
    };
    let out = load::run(addr, load)?;
    deliver("load", &(out.ok(), out.failed(), out.per_second()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runs_go_round_the_clip_and_restore_gives_it_back_as_filled() {
        // A clip of 3 frames of 64 bytes, filtered in place as both sides do.
        let mut clip = vec![0u8; 3 * 64];
        frame::fill(&mut clip);
        let filled = clip.clone();
        let mut once = filled.clone();
        frame::brighten(&mut once, frame::STEP);
        let filter = |f: &mut [u8], delta: i8| {
            frame::brighten(f, delta);
            Ok(FilterRun { elapsed: Duration::ZERO, minor_faults: 0 })
        };
        // One warm-up run, then six timed ones.
        let mut c = Clip::new(&mut clip, 64, 1);
        for _ in 0..7 {
            c.filter_next(filter).unwrap();
        }
        // Frame 0 was filtered three times, frames 1 and 2 twice each; the faults are the
        // timed runs' only.
        assert_eq!(c.filtered, [3, 2, 2]);
        assert_eq!(c.faults.len(), 6);
        assert_eq!(c.checksum, Some(frame::checksum(&once)), "the checksum is the first pass's");
        c.restore(filter).unwrap();
        assert_eq!(c.filtered, [4, 2, 2]);
        drop(c);
        assert_eq!(clip, filled);
    }
}
