//! The load generator: keep-alive connections to 127.0.0.1, each in a thread of its own,
//! sending `GET /n/K` for consecutive K until a request count or a time limit is reached,
//! and checking every response's status and body. A failed request (refused, reset, closed
//! without an answer, a wrong body) is counted, and its connection is opened again for the
//! next request, as a browser would; so is one left idle long enough that the server may
//! close it (half its [`IDLE`]).
//!
//! It runs in a process of its own ([`Generator`]), and it also sends the bad input a server on
//! the internet gets ([`bad_input`]), from another.
//!
//! See also: wrk(1), which `cargo xtask anchors use-cases` runs against the same servers.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use harness::child::Host;
use harness::stats::Latencies;
use harness::{Child, deliver, fork_child};
use serde::{Deserialize, Serialize};

use crate::http::{self, IDLE};

/// How long a client waits for an answer before it counts the request as failed.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(2);

/// One load run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub connections: usize,
    pub max_requests: u64,
    pub max_time: Duration,
    /// The number of the request that is `GET /crash` instead.
    pub poison_at: Option<u64>,
}

/// What one request did.
#[derive(Debug, Clone)]
pub struct Request {
    pub number: u64,
    /// When it was sent, from the start of the run.
    pub sent: Duration,
    pub latency: Duration,
    pub outcome: std::result::Result<(), String>,
    /// "pid/tid" of the worker that answered.
    pub served_by: Option<String>,
}

/// What a load run saw.
pub struct Outcome {
    pub requests: Vec<Request>,
    /// From the start barrier to the last answer.
    pub elapsed: Duration,
}

impl Outcome {
    pub fn ok(&self) -> u64 {
        self.requests.iter().filter(|r| r.outcome.is_ok()).count() as u64
    }

    pub fn failed(&self) -> u64 {
        self.requests.len() as u64 - self.ok()
    }

    pub fn per_second(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Records every successful request's latency.
    pub fn record_latencies(&self, into: &mut Latencies) {
        for r in self.requests.iter().filter(|r| r.outcome.is_ok()) {
            into.record(r.latency);
        }
    }

    /// The workers (pid/tid) that answered, and the processes they belong to.
    pub fn servers(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let tasks: BTreeSet<String> = self.requests.iter().filter_map(|r| r.served_by.clone()).collect();
        let pids = tasks.iter().filter_map(|t| t.split('/').next().map(str::to_string)).collect();
        (tasks, pids)
    }

    /// What the run comes to, small enough to send from the process that ran it.
    pub fn tally(&self) -> Tally {
        let mut latencies = Latencies::default();
        self.record_latencies(&mut latencies);
        let (tasks, pids) = self.servers();
        Tally {
            ok: self.ok(),
            per_second: self.per_second(),
            us_per_request: self.elapsed.as_secs_f64() * 1e6 / self.ok().max(1) as f64,
            latencies,
            tasks,
            pids,
        }
    }
}

/// What a load run came to ([`Outcome::tally`]).
#[derive(Serialize, Deserialize)]
pub struct Tally {
    pub ok: u64,
    pub per_second: f64,
    /// From the start to the last answer, per request answered.
    pub us_per_request: f64,
    /// Of the requests answered.
    pub latencies: Latencies,
    /// The workers (pid/tid) that answered, and the processes they belong to.
    pub tasks: BTreeSet<String>,
    pub pids: BTreeSet<String>,
}

/// Runs the load: every connection connects first, then all start together.
pub fn run(addr: SocketAddr, load: Load) -> Result<Outcome> {
    let next = AtomicU64::new(0);
    // Every client connects, then all start together once the clock has been read: the start
    // is a lock this thread holds for writing until then, and the clients wait to read it, so
    // that they all wake at once instead of taking a barrier's mutex one after another.
    let ready = Barrier::new(load.connections + 1);
    let start: RwLock<Option<Instant>> = RwLock::new(None);
    let mut gate = start.write().unwrap_or_else(|e| e.into_inner());
    // Requests after the poison wait until its client has seen what became of it.
    let poison_seen = (Mutex::new(false), Condvar::new());
    let all = Mutex::new(Vec::new());
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..load.connections {
            let (next, ready, start, all, poison_seen) = (&next, &ready, &start, &all, &poison_seen);
            let client = std::thread::Builder::new().name("load".into()).spawn_scoped(s, move || {
                let mut conn = connect(addr).ok();
                let mut last_used = Instant::now();
                ready.wait();
                // None only if the run was given up before its start.
                let t0 = start.read().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(Instant::now);
                let until = t0 + load.max_time;
                let mut mine = Vec::new();
                loop {
                    let number = next.fetch_add(1, Ordering::Relaxed);
                    // Every connection sends at least one request, however late it starts.
                    if number >= load.max_requests || (Instant::now() >= until && !mine.is_empty()) {
                        break;
                    }
                    if load.poison_at.is_some_and(|p| number > p) {
                        wait_for(poison_seen, until + ANSWER_DEADLINE);
                    }
                    // A connection left idle for half the time a worker waits for a request
                    // (http::IDLE) may be closed under it: a client drops it first, as an HTTP
                    // client's pool does with its idle timeout (on a busy machine the wait at
                    // the start, or for the poison, can last that long).
                    if last_used.elapsed() >= IDLE / 2 {
                        conn = None;
                    }
                    let sent = Instant::now();
                    let crash = load.poison_at == Some(number);
                    let (outcome, served_by) = match conn.as_mut() {
                        Some(c) => one_request(c, number, crash),
                        None => match connect(addr) {
                            Ok(c) => one_request(conn.insert(c), number, crash),
                            Err(e) => (Err(e), None),
                        },
                    };
                    if crash {
                        *poison_seen.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
                        poison_seen.1.notify_all();
                    }
                    if outcome.is_err() {
                        // This connection is spoilt; the next request gets a new one.
                        conn = None;
                    }
                    last_used = Instant::now();
                    mine.push(Request { number, sent: sent - t0, latency: sent.elapsed(), outcome, served_by });
                }
                all.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
            });
            client?;
        }
        ready.wait();
        *gate = Some(Instant::now());
        drop(gate);
        Ok(())
    })?;
    let mut requests = all.into_inner().unwrap_or_else(|e| e.into_inner());
    requests.sort_by_key(|r| r.number);
    let elapsed = requests.iter().map(|r| r.sent + r.latency).max().unwrap_or_default();
    Ok(Outcome { requests, elapsed })
}

/// Waits until the flag is set, or the deadline passes.
fn wait_for(flag: &(Mutex<bool>, Condvar), until: Instant) {
    let mut set = flag.0.lock().unwrap_or_else(|e| e.into_inner());
    while !*set {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        set = flag.1.wait_timeout(set, left).unwrap_or_else(|e| e.into_inner()).0;
    }
}

fn connect(addr: SocketAddr) -> std::result::Result<BufReader<TcpStream>, String> {
    let s = TcpStream::connect_timeout(&addr, ANSWER_DEADLINE).map_err(|e| reason(&e))?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(ANSWER_DEADLINE));
    Ok(BufReader::new(s))
}

/// Sends one request on a keep-alive connection and checks the answer.
fn one_request(
    conn: &mut BufReader<TcpStream>,
    number: u64,
    crash: bool,
) -> (std::result::Result<(), String>, Option<String>) {
    let path = if crash { "/crash".to_string() } else { format!("/n/{number}") };
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    if let Err(e) = conn.get_mut().write_all(request.as_bytes()) {
        return (Err(reason(&e)), None);
    }
    let (status, served_by, body) = match read_response(conn) {
        Ok(r) => r,
        Err(e) => return (Err(e), None),
    };
    let expected = http::body_for(number);
    let outcome = if status != 200 {
        Err(format!("status {status}"))
    } else if body != expected.as_bytes() {
        Err(format!("wrong body {:?}", String::from_utf8_lossy(&body)))
    } else {
        Ok(())
    };
    (outcome, served_by)
}

/// Reads one response: its status, its X-Served-By, and its body (by Content-Length).
pub fn read_response(conn: &mut BufReader<TcpStream>) -> std::result::Result<(u16, Option<String>, Vec<u8>), String> {
    let mut line = String::new();
    let n = conn.read_line(&mut line).map_err(|e| reason(&e))?;
    if n == 0 {
        return Err("closed without an answer".into());
    }
    let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("a malformed status line")?;
    let (mut length, mut served_by) = (0usize, None);
    loop {
        line.clear();
        if conn.read_line(&mut line).map_err(|e| reason(&e))? == 0 {
            return Err("closed in the middle of an answer".into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| "a malformed Content-Length")?;
            } else if k.eq_ignore_ascii_case("x-served-by") {
                served_by = Some(v.trim().to_string());
            }
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).map_err(|e| reason(&e))?;
    Ok((status, served_by, body))
}

/// A failure in words a snapshot can keep.
fn reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        ErrorKind::UnexpectedEof => "closed in the middle of an answer".into(),
        ErrorKind::BrokenPipe => "broken pipe".into(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "no answer in time".into(),
        _ => format!("{e}"),
    }
}

/// A load generator, a process of its own as wrk is (a harness Host forked from the row, so
/// that its clients' threads never start in the row's process): each request is a server's
/// address and a connection count, and its answer what `per_level` of load at that count came
/// to. Every request of a load must succeed (a failed one is an error of the experiment), and
/// at least one.
pub type Generator = Host<(SocketAddr, usize), Tally>;

/// Forks a [`Generator`].
pub fn generator(per_level: Duration, deadline: Duration) -> Result<Generator> {
    Host::start(deadline, move |(addr, connections): (SocketAddr, usize)| {
        let out = run(addr, Load { connections, max_requests: 1_000_000, max_time: per_level, poison_at: None })?;
        if let Some(r) = out.requests.iter().find(|r| r.outcome.is_err()) {
            bail!("request {} to {addr} failed: {}", r.number, r.outcome.clone().unwrap_err());
        }
        ensure!(out.ok() > 0, "no request was answered in {} ms", per_level.as_millis());
        Ok(out.tally())
    })
}

/// The bad input a server on the internet gets, each on a connection of its own.
pub const BAD_INPUT: [&str; 4] =
    ["request line of 1 MiB", "header with no end", "connects and says nothing", "half-closed after a request"];

/// What became of one piece of bad input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BadOutcome {
    pub what: String,
    /// "answered 414", "dropped", "answered 200 then closed".
    pub result: String,
    /// From the first byte sent (or the connect) to the server's answer or close.
    pub took: Duration,
}

/// Sends every piece of [`BAD_INPUT`] at once, each from a thread of its own, and says what
/// the server did with it. The deadline is the server's [`IDLE`] plus a margin.
pub fn bad_input(addr: SocketAddr) -> Result<Vec<BadOutcome>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = BAD_INPUT.iter().map(|&what| s.spawn(move || send_bad(addr, what))).collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("a bad-input client panicked"))?).collect()
    })
}

/// The tag of the bad input's outcomes on its sender's stdout.
const BAD_OUTCOMES: &str = "bad-input";

/// Sends [`bad_input`] to the server at `addr` from a forked process of its own, as it would
/// come from elsewhere on the internet, while this process goes on.
pub fn send_bad_input(addr: SocketAddr) -> Result<Child> {
    fork_child(move || {
        deliver(BAD_OUTCOMES, &bad_input(addr)?);
        Ok(())
    })
}

/// What became of the bad input that `sender` sent ([`send_bad_input`]), once it has ended
/// (within `deadline`, or it is killed).
pub fn bad_input_outcomes(sender: Child, deadline: Duration) -> Result<Vec<BadOutcome>> {
    let exit = sender.wait(deadline)?;
    exit.check("the bad-input client")?;
    exit.received_one(BAD_OUTCOMES)
}

fn send_bad(addr: SocketAddr, what: &'static str) -> Result<BadOutcome> {
    let mut s = TcpStream::connect(addr)?;
    // The server must answer or drop within its IDLE; we wait some more, never forever.
    s.set_read_timeout(Some(IDLE * 5))?;
    let start = Instant::now();
    match what {
        "request line of 1 MiB" => {
            let mut line = b"GET /".to_vec();
            line.resize(1 << 20, b'a');
            // The server stops reading at its limit; our write may then fail: that is fine.
            s.set_write_timeout(Some(IDLE * 5))?;
            let _ = s.write_all(&line);
        }
        "header with no end" => s.write_all(b"GET /n/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")?,
        "connects and says nothing" => {}
        _ => {
            s.write_all(b"GET /n/5 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
            s.shutdown(Shutdown::Write)?;
        }
    }
    let mut got = Vec::new();
    let result = match s.read_to_end(&mut got) {
        Ok(_) if got.is_empty() => "dropped".to_string(),
        Ok(_) => format!("answered {}, then closed", status_of(&got)),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            format!("still open after {} ms", (IDLE * 5).as_millis())
        }
        Err(e) if !got.is_empty() => format!("answered {}, then {}", status_of(&got), reason(&e)),
        Err(e) => format!("dropped ({})", reason(&e)),
    };
    Ok(BadOutcome { what: what.to_string(), result, took: start.elapsed() })
}

fn status_of(response: &[u8]) -> String {
    String::from_utf8_lossy(response).split(' ').nth(1).unwrap_or("?").to_string()
}
