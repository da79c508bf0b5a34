//! Bare children: the cheapest children there are, for process workers whose start is what
//! an experiment times (concurrency's `spawn`, `spawn-vs-size`, `speedup`, `granularity`).
//! [`crate::fork_child`] gives every child two pipes, a close_range(2), a pidfd and a JSON
//! report (`deliver`), which is right for a worker that reports back in words but adds tens of
//! µs to each start, a cost a thread, which returns through `join`, does not pay. A bare child
//! gets none of that: it resets its signals, asks to die with its parent, runs its closure and
//! `_exit(2)`s (or execve(2)s); what it has to say goes into memory mapped shared before the
//! fork. So both sides pay for fork against clone, and no more.
//!
//! Bare children keep the harness's promises: fork and posix_spawn happen with SIGINT and
//! SIGTERM blocked and the child is registered for cleanup at once (Ctrl-C kills it); a forked
//! child resets SIGINT and SIGTERM to their defaults, unblocks every signal and sets
//! PR_SET_PDEATHSIG (a row killed outright leaves no child); every wait has one absolute
//! deadline after which the child is killed and reaped; a child dropped unwaited is killed and
//! reaped. `PVT_HANG=<id>` makes the first child of that experiment hang, bare or not
//! ([`crate::faults`]).
//!
//! See also: fork(2), execve(2), posix_spawn(3), pidfd_open(2), poll(2), wait4(2), prctl(2).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::{cleanup, faults};
use anyhow::{Context, Result, bail, ensure};
use nix::poll::PollFlags;

/// A child that was started bare: no pipes, nothing of ours running in it but its closure.
#[derive(Debug)]
pub struct Bare {
    pid: libc::pid_t,
    reaped: bool,
}

/// How a bare child ended and what it cost the kernel.
#[derive(Debug, Clone, Copy)]
pub struct BareExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub minor_faults: i64,
}

impl BareExit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for BareExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited {code}"),
            (None, Some(sig)) => write!(f, "was killed by signal {sig}"),
            (None, None) => f.write_str("ended in an unknown way"),
        }
    }
}

/// fork(2): the child resets its signals, asks to die with us, runs `work` and `_exit`s: 0 when
/// it returned Ok, 1 (with the error on stderr) when it failed, 101 when it panicked. It never
/// returns into the caller and never runs the destructors it inherited. Call only while the
/// process is single-threaded.
pub fn fork_bare(work: impl FnOnce() -> Result<()>) -> Result<Bare> {
    let hang = faults::take_hang();
    // The child runs only `work` and `_exit`, never the parent's destructors or the rest of
    // the program.
    fork_into(|| {
        let code = crate::child::work_exit_code(hang, work);
        // Safety: ends the child at once, with no destructor or atexit handler run.
        unsafe { libc::_exit(code) }
    })
}

/// fork(2) with SIGINT and SIGTERM blocked, the child registered for the cleanup; the child
/// first resets its signals and asks to die with us, as every forked child of the harness does
/// (async-signal-safe calls only: it may go on to execve), then runs `in_child`, which ends it
/// (`_exit`, `execve`: it cannot return, its type says so). The caller guarantees a
/// single-threaded process.
fn fork_into(in_child: impl FnOnce() -> std::convert::Infallible) -> Result<Bare> {
    let parent = std::process::id() as libc::pid_t;
    crate::child::flush_before_fork();
    let pid = cleanup::with_signals_blocked(|| -> Result<libc::pid_t> {
        // Safety: single-threaded (the caller's promise); the child never returns from here.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            cleanup::reset_in_child();
            crate::child::die_with(parent);
            match in_child() {}
        }
        if pid < 0 {
            return Err(crate::child::fork_error(nix::errno::Errno::last()));
        }
        registered(pid)
    })?;
    Ok(Bare { pid, reaped: false })
}

/// What a bare child is to execute: the path and its argv, made before the fork so that the
/// child allocates nothing.
pub struct Program {
    path: CString,
    argv: Vec<CString>,
}

impl Program {
    pub fn new(path: &str) -> Result<Program> {
        let path = CString::new(path).context("a program path with a NUL byte")?;
        Ok(Program { argv: vec![path.clone()], path })
    }

    pub fn path(&self) -> &CStr {
        &self.path
    }

    fn argv(&self) -> Vec<*mut libc::c_char> {
        self.argv.iter().map(|a| a.as_ptr().cast_mut()).chain(std::iter::once(std::ptr::null_mut())).collect()
    }
}

/// fork(2) then execve(2) of `program` with an empty environment; the child ends with 127 if
/// the exec fails. Call only while the process is single-threaded.
pub fn fork_exec(program: &Program) -> Result<Bare> {
    let argv = program.argv();
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    // Safety: the child makes only async-signal-safe calls (those of `fork_into`, execve(2)
    // and _exit(2)) on memory prepared before the fork.
    fork_into(|| unsafe {
        libc::execve(program.path.as_ptr(), argv.as_ptr().cast(), envp.as_ptr().cast());
        libc::_exit(127)
    })
}

/// posix_spawn(3) of `program` with an empty environment and no signal blocked. glibc starts
/// the child with clone(CLONE_VM | CLONE_VFORK): it borrows our address space until it execs,
/// so no page table is copied. The exec resets our handlers to their defaults by itself; the
/// child cannot set PR_SET_PDEATHSIG (posix_spawn runs no code of ours), which matters little
/// for /bin/true, and it is registered, so Ctrl-C and the deadline still end it.
pub fn posix_spawn(program: &Program) -> Result<Bare> {
    let argv = program.argv();
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    crate::child::flush_before_fork();
    let pid = cleanup::with_signals_blocked(|| -> Result<libc::pid_t> {
        let mut pid: libc::pid_t = 0;
        // Safety: posix_spawnattr_init/setsigmask/setflags/destroy on an attribute object on our
        // stack; posix_spawn reads the path, argv and envp, which live through the call.
        let rc = unsafe {
            let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
            libc::posix_spawnattr_init(&mut attr);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::posix_spawnattr_setsigmask(&mut attr, &none);
            libc::posix_spawnattr_setflags(&mut attr, libc::POSIX_SPAWN_SETSIGMASK as libc::c_short);
            let rc = libc::posix_spawn(
                &mut pid,
                program.path.as_ptr(),
                std::ptr::null(),
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            );
            libc::posix_spawnattr_destroy(&mut attr);
            rc
        };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc)).context("posix_spawn");
        }
        registered(pid)
    })?;
    Ok(Bare { pid, reaped: false })
}

/// Registers a child for the interrupt cleanup; one that cannot be registered is killed and
/// reaped at once.
fn registered(pid: libc::pid_t) -> Result<libc::pid_t> {
    if let Err(e) = cleanup::register_child(pid) {
        kill_and_reap(pid);
        return Err(e);
    }
    Ok(pid)
}

fn kill_and_reap(pid: libc::pid_t) {
    crate::child::kill_and_reap(nix::unistd::Pid::from_raw(pid));
}

impl Bare {
    /// Waits for the child to end, or kills and reaps it at the deadline and fails.
    pub fn wait(self, deadline: Duration) -> Result<BareExit> {
        self.wait_until(Instant::now() + deadline).with_context(|| format!("deadline of {} ms", deadline.as_millis()))
    }

    /// Waits for the child to end until the instant `until`, or kills and reaps it then and
    /// fails. The wait is a poll(2) on a pidfd (`harness::child::pidfd`), restarted after a
    /// signal with the time that is left, then wait4(2), which also says what the child cost:
    /// its page faults. Without a pidfd (a descriptor limit reached, a kernel before 5.3) it
    /// looks with wait4(WNOHANG) every 100 µs (`harness::poll::poll_until`), to the same end.
    pub fn wait_until(mut self, until: Instant) -> Result<BareExit> {
        let pid = self.pid;
        let exit = match crate::child::pidfd(pid) {
            Ok(pidfd) => {
                if wait_readable(&pidfd, until)? {
                    // It has ended: this wait4 returns at once.
                    self.reap(0)?
                } else {
                    None
                }
            }
            Err(_) => self.look_until(until)?,
        };
        match exit {
            Some(exit) => Ok(exit),
            None => {
                kill_and_reap(pid);
                self.reaped = true;
                bail!("child {pid} did not end by its deadline: killed and reaped")
            }
        }
    }

    /// Without a pidfd: wait4(WNOHANG) every 100 µs until the child has ended (its exit) or
    /// `until` has passed (None).
    fn look_until(&mut self, until: Instant) -> Result<Option<BareExit>> {
        let left = until.saturating_duration_since(Instant::now());
        let what = format!("child {} to end", self.pid);
        // The check hands back wait4's own error as a value, so that an Err of poll_until can
        // only mean that the deadline passed.
        let looked = crate::poll::poll_until(left, &what, Duration::from_micros(100), || {
            Ok(self.reap(libc::WNOHANG).transpose())
        });
        match looked {
            Ok(reaped) => Ok(Some(reaped?)),
            Err(_) => Ok(None),
        }
    }

    /// wait4(2) with `flags`: the exit once the child has ended (and is reaped), None while
    /// it runs (WNOHANG only).
    fn reap(&mut self, flags: libc::c_int) -> Result<Option<BareExit>> {
        let mut status: libc::c_int = 0;
        // Safety: rusage is plain data that wait4 fills in.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // Safety: wait4(2) on our own child with valid pointers.
            let r = unsafe { libc::wait4(self.pid, &mut status, flags, &mut ru) };
            if r == self.pid {
                break;
            }
            if r == 0 {
                return Ok(None);
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e).context("wait4");
            }
        }
        self.reaped = true;
        cleanup::forget_child(self.pid);
        Ok(Some(BareExit {
            code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
            minor_faults: ru.ru_minflt,
        }))
    }
}

/// poll(2) on `fd` until it is readable (true) or `until` has passed (false). A signal that
/// interrupts the poll restarts it with the time that is left, never with the whole deadline.
fn wait_readable(fd: &OwnedFd, until: Instant) -> Result<bool> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if crate::poll::ready(fd.as_fd(), PollFlags::POLLIN, left).context("waiting on a pidfd")? {
            return Ok(true);
        }
        if Instant::now() >= until {
            return Ok(false);
        }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        if !self.reaped {
            kill_and_reap(self.pid);
        }
    }
}

/// Waits for every bare worker against one deadline for all of them, and fails unless each
/// exited 0. On a failure the workers not yet waited for are dropped: killed and reaped.
pub fn wait_all(children: Vec<Bare>, deadline: Duration, what: &str) -> Result<()> {
    let until = Instant::now() + deadline;
    for child in children {
        let exit =
            child.wait_until(until).with_context(|| format!("{what} (deadline of {} ms)", deadline.as_millis()))?;
        ensure!(exit.success(), "{what} {exit}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wait without a pidfd (a descriptor limit reached): it sees the end of a child that
    /// ends, and kills and reaps one that does not, at the deadline. The children are
    /// sleep(1) started by Command (posix_spawn, then exec): nothing forks inside the
    /// multi-threaded test harness.
    #[test]
    fn the_wait_without_a_pidfd_keeps_its_deadline() {
        let sleep = |seconds: &str| {
            // The Bare owns the pid from here: it waits for it, or kills and reaps it.
            #[allow(clippy::zombie_processes)]
            let child = std::process::Command::new("sleep").arg(seconds).spawn().expect("sleep(1)");
            Bare { pid: child.id() as libc::pid_t, reaped: false }
        };
        let mut ends = sleep("0.02");
        let exit = ends.look_until(Instant::now() + Duration::from_secs(20)).unwrap().expect("it ended");
        assert!(exit.success() && ends.reaped, "{exit}");
        let mut hangs = sleep("60");
        let start = Instant::now();
        assert!(hangs.look_until(start + Duration::from_millis(50)).unwrap().is_none());
        assert!(start.elapsed() < Duration::from_secs(5));
        let pid = hangs.pid;
        drop(hangs);
        // Safety: kill(2) with signal 0 only asks whether the pid exists.
        assert_eq!(unsafe { libc::kill(pid, 0) }, -1, "the hung child was killed and reaped");
    }
}
