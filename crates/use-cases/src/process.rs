//! Use cases, the process version: work that needs isolation.
//!
//! A prefork web server (as Apache's prefork MPM and PostgreSQL's postmaster): a master
//! process forks N workers that accept on the listening socket they share, and replaces any
//! worker that dies, so a request that crashes its handler takes only that worker with it.
//! A sandbox: untrusted code runs in a separately started child process with limits of its
//! own (setrlimit), and cannot read its host's memory. A video filter: worker
//! processes share the frames through a shared-memory segment, or get copies through pipes.
//! Compare with thread.rs: the same functions in the same order (this file adds
//! `filter_frame_through_pipes`, the copying contrast); lines marked `process:` are where the
//! mechanism differs.
//!
//! See also: http.rs (the server both run), untrusted.rs, frame.rs; fork(2), setrlimit(2),
//! shm_overview(7), pipe(7).

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use harness::{Child, fork_child, fork_child_keeping, spawn_sacrificial, wait_all};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::pipe2;

use crate::http::{self, ServerReport};
use crate::untrusted::{self, Runaway};
use harness::shm::Segment;

use crate::{FilterRun, frame};

/// Bytes a worker of the piped filter gets at a time: a MiB, whole pixels.
pub const PIECE: usize = 1 << 20;

/// The prefork master: forks `workers` worker processes on `listener`, replaces each one that
/// dies, and when `stop` becomes readable (its writer closed) stops them all. Runs in a
/// process of its own, which stays single-threaded so that it may fork at any time.
pub fn serve(listener: TcpListener, workers: usize, stop: OwnedFd, deadline: Duration) -> Result<ServerReport> {
    let mut pool: Vec<Child> = (0..workers).map(|_| start_worker(&listener)).collect::<Result<_>>()?;
    let mut report = ServerReport { workers, ..ServerReport::default() };
    let mut served = Vec::new();
    let until = Instant::now() + deadline;
    let ordered = loop {
        // process: the master learns of a worker's death from its pidfd, as a parent does from
        // SIGCHLD and waitpid(2), while it also listens for the order to stop.
        let pidfds: Vec<OwnedFd> = pool.iter().map(|w| harness::child::pidfd(w.pid())).collect::<Result<_>>()?;
        let mut fds = vec![PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        fds.extend(pidfds.iter().map(|p| PollFd::new(p.as_fd(), PollFlags::POLLIN)));
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // At the deadline the server stops by itself, and says so once its workers are done.
            break false;
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        // Deaths first: a worker that died just before the order to stop is still replaced
        // and counted, however the scheduler ordered the two.
        let stopping = fds[0].any().unwrap_or(false);
        let dead: Vec<usize> = (0..pool.len()).filter(|&i| fds[i + 1].any().unwrap_or(false)).collect();
        for i in dead.into_iter().rev() {
            let exit = pool.remove(i).wait(deadline)?;
            report.deaths.push(exit.status.to_string());
            served.push(exit.received::<u64>("served")?.first().copied().unwrap_or(0));
            // process: a new worker replaces the dead one; the others never noticed.
            pool.push(start_worker(&listener)?);
            report.replaced += 1;
            // Said as it happens, for whoever waits on it (poison-request).
            harness::deliver("replaced", &report.replaced);
        }
        if stopping {
            break true;
        }
    };
    http::stop_accepting(&listener)?;
    for exit in wait_all(pool, deadline)? {
        match exit.status.signal() {
            Some(_) => report.deaths.push(exit.status.to_string()),
            None => exit.check("a worker")?,
        }
        served.push(exit.received::<u64>("served")?.first().copied().unwrap_or(0));
    }
    report.served = served.iter().sum();
    report.busy_workers = served.iter().filter(|&&n| n > 0).count();
    anyhow::ensure!(ordered, "no order to stop within the deadline of {} ms", deadline.as_millis());
    Ok(report)
}

/// One worker process: a copy of the master with the listening socket.
fn start_worker(listener: &TcpListener) -> Result<Child> {
    // process: fork(2) gives the worker its own address space; a crash there is its own.
    fork_child_keeping(&[listener.as_raw_fd()], || {
        let served = http::worker_loop(listener)?;
        harness::deliver("served", &served);
        Ok(())
    })
}

/// Starts untrusted code that runs away in a child process with limits of its own; it is
/// told `address`, where this process (its host) keeps a secret.
pub fn start_sandbox(runaway: Runaway, address: usize) -> Result<Child> {
    // process: a new program (execve), so the child holds no copy of the host's memory (a
    // forked one would have the secret at that very address), and it has threads of its own
    // making only.
    spawn_sacrificial("sandboxed", &[runaway.name().to_string(), format!("{address:x}")])
}

/// The sandboxed child: limits itself, then runs the untrusted code as its only work.
pub fn sandboxed(args: &[String]) -> Result<()> {
    let [name, address] = args else { bail!("usage: sandboxed RUNAWAY ADDRESS") };
    let runaway = Runaway::parse(name).with_context(|| format!("unknown runaway {name:?}"))?;
    let address = usize::from_str_radix(address, 16).context("ADDRESS")?;
    // process: the limits bind this process only; the host that started it goes on unlimited.
    untrusted::limit_this_process()?;
    untrusted::untrusted_code(runaway, address)
}

/// The clip's frames the filter runs over: a named shared-memory segment, mapped here before the
/// workers are forked so that they inherit it; its name goes at once, the mapping stays.
pub fn frames(len: usize) -> Result<Segment> {
    // process: only memory mapped MAP_SHARED is seen by parent and children alike.
    let mut segment = Segment::create(len)?;
    segment.unlink()?;
    // Base pages on both sides, so that only the mechanism differs (huge pages are observed).
    segment.no_huge_pages()?;
    Ok(segment)
}

/// One filter run over one frame: a worker process per chunk, each brightening its chunk of
/// `pixels` in place. `pixels` must be shared memory (a MAP_SHARED segment) for the parent
/// to see the result.
pub fn filter_frame(pixels: &mut [u8], delta: i8, workers: usize, deadline: Duration) -> Result<FilterRun> {
    let start = Instant::now();
    let mut children = Vec::new();
    let mut rest = pixels;
    for range in frame::chunks(rest.len(), workers) {
        let (chunk, tail) = rest.split_at_mut(range.len());
        rest = tail;
        // process: the child writes into the shared segment it inherited; no byte is copied.
        children.push(fork_child(move || {
            frame::brighten(chunk, delta);
            Ok(())
        })?);
    }
    let exits = wait_all(children, deadline)?;
    let elapsed = start.elapsed();
    for e in &exits {
        e.check("a filter worker")?;
    }
    let minor_faults = exits.iter().map(|e| e.usage.minor_faults).sum::<i64>() as u64;
    Ok(FilterRun { elapsed, minor_faults })
}

/// What a run through pipes did.
pub struct Piped {
    /// Bytes that went through the pipes, counted as they passed.
    pub copied: u64,
    /// The smallest capacity of its pipes, as F_GETPIPE_SZ gave it after the resize.
    pub pipe_bytes: u64,
}

/// The same filter run over one frame, but each worker gets a copy of its chunk through a
/// pipe, a piece at a time, and sends each piece back filtered through another, as a filter
/// in a shell pipeline does: two copies of every byte, and no memory shared.
pub fn filter_frame_through_pipes(pixels: &mut [u8], delta: i8, workers: usize, deadline: Duration) -> Result<Piped> {
    let mut children = Vec::new();
    let mut links = Vec::new();
    let mut pipe_bytes = u64::MAX;
    for range in frame::chunks(pixels.len(), workers) {
        let (to_child, from_parent) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
        let (from_child, to_parent) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
        // Pipes that hold a whole piece instead of the default 64 KiB, where the kernel allows
        // it: a smaller pipe only splits a piece into more writes (a worker reads its whole
        // piece before it writes, so neither side waits on the other for good).
        let held = harness::pipe::ask_to_hold(&[from_parent.as_fd(), to_parent.as_fd()], PIECE);
        pipe_bytes = pipe_bytes.min(held as u64);
        let keep = [to_child.as_raw_fd(), to_parent.as_raw_fd()];
        let len = range.len();
        // process: the child has the frame only as the bytes it reads from its pipe.
        children.push(fork_child_keeping(&keep, move || {
            let (mut input, mut output) = (File::from(to_child), File::from(to_parent));
            let mut piece = vec![0u8; PIECE.min(len)];
            for n in frame::pieces(len, PIECE) {
                input.read_exact(&mut piece[..n]).context("read from the pipe")?;
                frame::brighten(&mut piece[..n], delta);
                output.write_all(&piece[..n]).context("write to the pipe")?;
            }
            Ok(())
        })?);
        links.push((range, File::from(from_parent), File::from(from_child)));
    }
    let mut copied = 0u64;
    // A piece to every worker, then each one back: a worker reads its whole piece before it
    // writes, so no pipe waits on the other, and the workers filter side by side.
    let mut done = 0;
    while links.iter().any(|(range, _, _)| done < range.len()) {
        // A worker whose chunk is through gets an empty piece (a write and a read of nothing).
        let pieces: Vec<_> = links.iter().map(|(r, _, _)| frame::piece_at(r, done, PIECE)).collect();
        for ((_, to, _), piece) in links.iter_mut().zip(&pieces) {
            to.write_all(&pixels[piece.clone()]).context("write to a filter worker")?;
            copied += piece.len() as u64;
        }
        for ((_, _, from), piece) in links.iter_mut().zip(&pieces) {
            from.read_exact(&mut pixels[piece.clone()]).context("read from a filter worker")?;
            copied += piece.len() as u64;
        }
        done += PIECE;
    }
    drop(links);
    for e in &wait_all(children, deadline)? {
        e.check("a filter worker")?;
    }
    Ok(Piped { copied, pipe_bytes })
}
