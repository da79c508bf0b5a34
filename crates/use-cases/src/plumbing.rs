//! Plumbing this row needs and the harness does not have (yet): a sacrificial child whose
//! stdout we read while it runs, and reads with a deadline.
//!
//! See also: harness::child (spawn_sacrificial, whose child's stdout is read only once it has
//! ended), proc(5) for /proc/self/smaps.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use harness::Child;
use nix::fcntl::OFlag;
use nix::poll::PollFlags;
use nix::unistd::pipe2;

/// Starts this program again as `<row> __child NAME ARGS...` (as harness::spawn_sacrificial
/// does), with `stdin` as its standard input and its standard output a pipe whose read end
/// we return: the child can tell us things while it runs, not only when it has ended.
pub fn spawn_talking(name: &str, args: &[String], stdin: OwnedFd) -> Result<(Child, File)> {
    let exe = std::env::current_exe().context("current_exe")?;
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).context("pipe2 for a child's stdout")?;
    let mut cmd = Command::new(exe);
    cmd.arg(harness::child::CHILD_SUBCOMMAND).arg(name).args(args);
    cmd.stdin(Stdio::from(stdin)).stdout(Stdio::from(out_w)).stderr(Stdio::piped());
    // Our copy of the write end goes with `cmd`, so the pipe ends when the child does.
    let child = harness::child::spawn_command(cmd)?;
    Ok((child, File::from(out_r)))
}

/// Waits up to `left` for `fd` to become readable (or reach its end); false at the deadline.
fn readable(fd: &File, left: Duration) -> Result<bool> {
    harness::poll::ready(fd.as_fd(), PollFlags::POLLIN, left).context("waiting on a child's stdout")
}

/// Reads one line from `from` within `deadline`, a byte at a time so that nothing after the
/// line is taken from the pipe. An error at the deadline or at the end of the pipe.
pub fn read_line(from: &mut File, deadline: Duration, what: &str) -> Result<String> {
    let until = Instant::now() + deadline;
    let mut line = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if !readable(from, left)? {
            if left.is_zero() {
                bail!("gave up waiting for {what}: the deadline of {} ms passed", deadline.as_millis());
            }
            continue;
        }
        let mut byte = [0u8; 1];
        match from.read(&mut byte) {
            Ok(0) => bail!("the child ended before {what}: {:?}", String::from_utf8_lossy(&line)),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("read from a child's stdout"),
        }
    }
}

/// Reads what is left in `from` up to its end, within `deadline`.
pub fn read_rest(from: &mut File, deadline: Duration) -> Result<String> {
    let until = Instant::now() + deadline;
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if !readable(from, left)? {
            if left.is_zero() {
                bail!("a child's stdout did not end within {} ms", deadline.as_millis());
            }
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => return Ok(String::from_utf8_lossy(&all).into_owned()),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("read from a child's stdout"),
        }
    }
}
