//! Use cases, the thread version: closely related tasks that share memory.
//!
//! A thread-pool web server: N threads of one process accept on one listening socket and
//! answer; a request that crashes its handler takes the whole process, every thread and every
//! connection with it. A "sandbox" thread: a thread cannot get limits of its own, so the only
//! way to stop a runaway thread is to limit, and lose, its whole host; and it can read all of
//! its host's memory. A video filter: threads work in place on one buffer, nothing copied.
//! Compare with process.rs: the same functions in the same order; lines marked `thread:` are
//! where the mechanism differs.
//!
//! See also: http.rs (the server both run), untrusted.rs, frame.rs; pthreads(7),
//! setrlimit(2) ("resource limits are per-process attributes ... shared by all threads").

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use harness::mem::{Mapping, Sharing};
use harness::{Child, Usage, spawn_sacrificial};

use crate::http::{self, ServerReport};
use crate::untrusted::{self, Runaway};
use crate::{FilterRun, frame};

/// The thread-pool server: `workers` threads on `listener`; when `stop` becomes readable (its
/// writer closed) it stops them all. Runs in a process of its own; a dead worker thread is
/// not replaced, because a crash never leaves the rest of the process to carry on.
pub fn serve(listener: TcpListener, workers: usize, stop: OwnedFd, deadline: Duration) -> Result<ServerReport> {
    let until = Instant::now() + deadline;
    std::thread::scope(|s| {
        // thread: the workers share this process: its memory, its descriptors, its fate.
        let pool: Vec<_> = (0..workers)
            .map(|i| {
                std::thread::Builder::new().name(format!("worker {i}")).spawn_scoped(s, || http::worker_loop(&listener))
            })
            .collect::<std::io::Result<_>>()
            .context("spawning a worker thread")?;
        // At the deadline the server stops by itself, and says so once its workers are done.
        let ordered = http::wait_for_stop(&stop, until)?;
        http::stop_accepting(&listener)?;
        let mut served = Vec::new();
        for w in pool {
            match w.join() {
                Ok(n) => served.push(n?),
                Err(_) => bail!("a worker thread panicked"),
            }
        }
        ensure!(ordered, "no order to stop within the deadline of {} ms", deadline.as_millis());
        Ok(ServerReport {
            workers,
            served: served.iter().sum(),
            busy_workers: served.iter().filter(|&&n| n > 0).count(),
            replaced: 0,
            deaths: Vec::new(),
        })
    })
}

/// Starts the same untrusted code in a thread. The limits can only be set on the whole host,
/// so the host is a sacrificial copy of this program, limited as a whole; it keeps `secret`.
pub fn start_sandbox(runaway: Runaway, secret: &[u8; 16]) -> Result<Child> {
    // thread: setrlimit(2) limits a process, never one thread of it.
    spawn_sacrificial("sandbox-host", &[runaway.name().to_string(), untrusted::secret_to_arg(secret)])
}

/// The sacrificial host: keeps the secret, limits itself, runs the untrusted code in a
/// thread, and would then do its own work and report it.
pub fn sandbox_host(args: &[String]) -> Result<()> {
    let [name, secret] = args else { bail!("usage: sandbox-host RUNAWAY SECRET") };
    let runaway = Runaway::parse(name).with_context(|| format!("unknown runaway {name:?}"))?;
    let secret = Box::new(untrusted::secret_from_arg(secret)?);
    let address = std::ptr::from_ref::<[u8; 16]>(&secret) as usize;
    untrusted::limit_this_process()?;
    // thread: the untrusted code shares the host's address space: `address` is the secret.
    let untrusted =
        std::thread::Builder::new().name("untrusted".into()).spawn(move || untrusted::untrusted_code(runaway, address));
    // thread: the limit was the host's, so what it stops is the host, this thread included.
    let outcome = untrusted.context("spawning the untrusted thread")?.join();
    harness::deliver("untrusted-returned", &format!("{outcome:?}"));
    harness::deliver("host-done", &untrusted::host_job());
    drop(secret);
    Ok(())
}

/// The clip's frames the filter runs over: ordinary private memory, mapped in the row and
/// then kept by the process that hosts the thread side's runs (a fork keeps it).
pub fn frames(len: usize) -> Result<Mapping> {
    // thread: every thread of the process sees private memory; nothing needs to be shared.
    let buffer = Mapping::anonymous(len, Sharing::Private)?;
    // Base pages on both sides, so that only the mechanism differs (huge pages are observed).
    buffer.no_huge_pages()?;
    Ok(buffer)
}

/// One filter run over one frame: a scoped thread per chunk, each brightening its chunk of
/// `pixels` in place.
/// A thread cannot be killed from outside as a child process can: each one stops by itself
/// if the deadline passes, and the run is then an error.
pub fn filter_frame(pixels: &mut [u8], delta: i8, workers: usize, deadline: Duration) -> Result<FilterRun> {
    let before = Usage::of_process()?;
    let start = Instant::now();
    let until = start + deadline;
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        let mut rest = pixels;
        for range in frame::chunks(rest.len(), workers) {
            let (chunk, tail) = rest.split_at_mut(range.len());
            rest = tail;
            // thread: the thread writes into the one buffer all threads share; no byte is copied.
            handles.push(s.spawn(move || frame::brighten_until(chunk, delta, until)));
        }
        for h in handles {
            let finished = h.join().map_err(|_| anyhow::anyhow!("a filter thread panicked"))?;
            ensure!(finished, "a filter thread passed the deadline of {} ms", deadline.as_millis());
        }
        Ok(())
    })?;
    let elapsed = start.elapsed();
    let minor_faults = Usage::of_process()?.since(before).minor_faults as u64;
    Ok(FilterRun { elapsed, minor_faults })
}
