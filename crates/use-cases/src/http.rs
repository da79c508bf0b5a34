//! The web server both models run: a minimal HTTP/1.1 server, one connection at a time per
//! worker, keep-alive, every read and write under a deadline.
//!
//! process.rs runs [`worker_loop`] in each of N worker processes, thread.rs in each of N
//! threads of one process: the code that parses and answers is this one file, so the only
//! difference between the two servers is who the workers are.
//!
//! Paths: `GET /n/K` answers `ok K`; `GET /crash` writes through an invalid pointer (the poison
//! request). Bad input is answered or dropped, never waited on for longer than [`IDLE`]: a
//! request head over [`MAX_HEAD`] gets 414 or 431, a head that never ends gets 408, a client
//! that says nothing is dropped, a client that half-closes gets its answer and then the end.
//!
//! See also: RFC 9112 (HTTP/1.1 message syntax), accept(2), socket(7) SO_RCVTIMEO.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The longest request head (request line and headers) a worker reads.
pub const MAX_HEAD: usize = 8 << 10;

/// How long a worker waits for a client to send, or to take, bytes.
pub const IDLE: Duration = Duration::from_millis(200);

/// What a server process reports when it is stopped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerReport {
    /// Workers it started with.
    pub workers: usize,
    /// Requests its workers answered with 200.
    pub served: u64,
    /// Workers that answered at least one request.
    pub busy_workers: usize,
    /// Workers that died and were replaced (prefork only).
    pub replaced: usize,
    /// How each dead worker ended.
    pub deaths: Vec<String>,
}

/// A worker: accept a connection, serve it until it ends, repeat, until the listening socket
/// is shut down. Returns how many requests it answered with 200.
pub fn worker_loop(listener: &TcpListener) -> Result<u64> {
    let mut served = 0;
    loop {
        match listener.accept() {
            Ok((stream, _)) => served += serve_connection(stream),
            // shutdown(2) on the listening socket ends every accept(2) with EINVAL: the stop.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(served),
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
            Err(e) => return Err(e).context("accept"),
        }
    }
}

/// Stops every worker of a server: their accept(2) calls fail, in this process and in every
/// process that shares the socket (shutdown acts on the socket, not on one descriptor).
pub fn stop_accepting(listener: &TcpListener) -> Result<()> {
    // Safety: shutdown(2) on a descriptor we own.
    let r = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
    anyhow::ensure!(r == 0, "shutdown of the listening socket: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Waits until the writer of `stop` is closed (the order to stop a server), at most until
/// `until`: false if that passed first.
pub fn wait_for_stop(stop: &std::os::fd::OwnedFd, until: std::time::Instant) -> Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut fds = [PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
            // Readable means the end of file: nobody writes on this pipe.
            Ok(n) if n > 0 => return Ok(true),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll(2) on the stop pipe"),
        }
    }
}

/// Serves one keep-alive connection; returns how many requests were answered with 200.
fn serve_connection(mut stream: TcpStream) -> u64 {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_write_timeout(Some(IDLE));
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_HEAD);
    let mut served = 0;
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            if buf.len() >= MAX_HEAD {
                // A request line that does not even end within the limit is a URI too long.
                let status = if find(&buf, b"\r\n").is_none() { 414 } else { 431 };
                let _ = respond(&mut stream, status, "", true);
                return served;
            }
            let mut chunk = [0u8; 4096];
            let room = (MAX_HEAD - buf.len()).min(chunk.len());
            match stream.read(&mut chunk[..room]) {
                // The client closed (or half-closed) its side: nothing more will come.
                Ok(0) => return served,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    // Half a request and then silence: say so; total silence: just drop it.
                    if !buf.is_empty() {
                        let _ = respond(&mut stream, 408, "", true);
                    }
                    return served;
                }
                Err(_) => return served,
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let (status, body, close) = answer(&head);
        if respond(&mut stream, status, &body, close).is_err() || close {
            return served;
        }
        served += (status == 200) as u64;
    }
}

/// The status, body and whether to close, for one request head.
fn answer(head: &str) -> (u16, String, bool) {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (method, path, version) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
    let close = version != Some("HTTP/1.1")
        || lines.any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")
            })
        });
    if method != "GET" || version.is_none() {
        // A body we do not read would be taken for the next request: close instead.
        return (if version.is_none() { 400 } else { 405 }, String::new(), true);
    }
    if path == "/crash" {
        crash();
    }
    match path.strip_prefix("/n/").and_then(|k| k.parse::<u64>().ok()) {
        Some(k) => (200, body_for(k), close),
        None => (404, String::new(), close),
    }
}

/// The body of `GET /n/K`: the client checks every one.
pub fn body_for(k: u64) -> String {
    format!("ok {k}\n")
}

fn respond(stream: &mut TcpStream, status: u16, body: &str, close: bool) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        _ => "Request Header Fields Too Large",
    };
    let connection = if close { "Connection: close\r\n" } else { "" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nX-Served-By: {}/{}\r\n{connection}\r\n{body}",
        body.len(),
        std::process::id(),
        nix::unistd::gettid()
    );
    stream.write_all(response.as_bytes())
}

/// The poison request's handler: a write through an invalid pointer. The kernel answers
/// with SIGSEGV, whose default action ends the whole process the handler runs in.
fn crash() -> ! {
    // The crash is the demonstration: it must not leave a core file behind.
    harness::no_core_dump();
    // An aligned, non-null address below any mapping (mmap_min_addr is at least 4096).
    let invalid = 0x10 as *mut u64;
    // Safety: none. This write is the fault being demonstrated.
    unsafe { invalid.write_volatile(0xdead) };
    unreachable!("the write through an invalid pointer did not fault")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_answered_by_path_and_version() {
        assert_eq!(answer("GET /n/7 HTTP/1.1\r\nHost: x"), (200, "ok 7\n".into(), false));
        assert!(answer("GET /n/7 HTTP/1.1\r\nConnection: close").2);
        assert!(answer("GET /n/7 HTTP/1.0").2);
        assert_eq!(answer("GET /nope HTTP/1.1").0, 404);
        assert_eq!(answer("POST /n/1 HTTP/1.1").0, 405);
        assert_eq!(answer("garbage").0, 400);
    }
}
