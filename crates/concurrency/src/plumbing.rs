//! Plumbing this row needs and the harness does not have yet: the cheapest children there are,
//! for timing what starting a process costs. `harness::fork_child` gives every child two pipes,
//! a pidfd and a close_range(2), which is right for a worker that reports back but would add
//! tens of µs to the very cost `spawn` measures. These children run no Rust code of ours after
//! fork(2) beyond one store and `_exit(2)` (or an execve(2)), so they need none of that.
//!
//! They keep the harness's promises: fork and posix_spawn happen with SIGINT and SIGTERM
//! blocked and the child is registered for cleanup at once, every wait has a deadline after
//! which the child is killed and reaped, and a child dropped unwaited is killed and reaped.
//! This module should move to `harness::child` as `Bare` (see docs/concurrency.md).
//!
//! See also: fork(2), execve(2), posix_spawn(3), pidfd_open(2), wait4(2).

use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use harness::cleanup;
use harness::mem::{Mapping, Sharing};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// A child that was started bare: no pipes, nothing of ours running in it.
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

/// fork(2): the child runs `first` and `_exit(0)`s. `first` must be async-signal-safe in spirit
/// (a store, a clock read): it runs in a copy of this process and never returns into it.
/// Call only while the process is single-threaded.
pub fn fork_exit(first: impl FnOnce()) -> Result<Bare> {
    flush();
    let pid = cleanup::with_signals_blocked(|| -> Result<libc::pid_t> {
        // Safety: the caller guarantees a single-threaded process; the child only runs `first`
        // and `_exit`, never the parent's destructors or the rest of the program.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            first();
            // Safety: ends the child at once, with no destructor or atexit handler run.
            unsafe { libc::_exit(0) }
        }
        registered(pid, "fork")
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
    flush();
    let pid = cleanup::with_signals_blocked(|| -> Result<libc::pid_t> {
        // Safety: single-threaded (the caller's promise); the child makes only the
        // async-signal-safe calls sigprocmask(2), execve(2) and _exit(2) on memory prepared
        // before the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                // The new program must not start with our blocked signals.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                libc::execve(program.path.as_ptr(), argv.as_ptr().cast(), envp.as_ptr().cast());
                libc::_exit(127)
            }
        }
        registered(pid, "fork")
    })?;
    Ok(Bare { pid, reaped: false })
}

/// posix_spawn(3) of `program` with an empty environment and no signal blocked. glibc starts
/// the child with clone(CLONE_VM | CLONE_VFORK): it borrows our address space until it execs,
/// so no page table is copied.
pub fn posix_spawn(program: &Program) -> Result<Bare> {
    let argv = program.argv();
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    flush();
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
        registered(pid, "posix_spawn")
    })?;
    Ok(Bare { pid, reaped: false })
}

fn flush() {
    // Unflushed output would otherwise be written twice: once by each process.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

fn registered(pid: libc::pid_t, call: &str) -> Result<libc::pid_t> {
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context(call.to_string());
    }
    if let Err(e) = cleanup::register_child(pid) {
        kill_and_reap(pid);
        return Err(e);
    }
    Ok(pid)
}

fn kill_and_reap(pid: libc::pid_t) {
    // Safety: plain syscalls on our own child's pid.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    cleanup::forget_child(pid);
}

impl Bare {
    /// Waits for the child to end, or kills and reaps it at the deadline and fails. The wait
    /// is a poll(2) on a pidfd (the deadline) and then wait4(2), which also says what the
    /// child cost: its page faults.
    pub fn wait(mut self, deadline: Duration) -> Result<BareExit> {
        // Safety: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd >= 0 {
            // Safety: the kernel just gave us this descriptor and nobody else owns it.
            let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let ms = deadline.as_millis().clamp(1, i32::MAX as u128) as i32;
            loop {
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
                    Ok(0) => {
                        kill_and_reap(self.pid);
                        self.reaped = true;
                        bail!("child {} did not finish within {} ms: killed and reaped", self.pid, ms);
                    }
                    Ok(_) => break,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e).context("poll(2) on a pidfd"),
                }
            }
        }
        // Without a pidfd (a descriptor limit reached) the wait blocks: these children run no
        // code of ours that could hang.
        let mut status: libc::c_int = 0;
        // Safety: rusage is plain data that wait4 fills in.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // Safety: wait4(2) on our own child with valid pointers.
            let r = unsafe { libc::wait4(self.pid, &mut status, 0, &mut ru) };
            if r == self.pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e).context("wait4");
            }
        }
        self.reaped = true;
        cleanup::forget_child(self.pid);
        Ok(BareExit {
            code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
            minor_faults: ru.ru_minflt,
        })
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        if !self.reaped {
            kill_and_reap(self.pid);
        }
    }
}

/// A 64-bit slot in memory shared with children forked after it was made (MAP_SHARED), for the
/// one timestamp a bare child writes: it has no pipe to say it on.
pub struct SharedStamp {
    page: Mapping,
}

impl SharedStamp {
    pub fn new() -> Result<SharedStamp> {
        Ok(SharedStamp { page: Mapping::anonymous(8, Sharing::Shared)? })
    }

    pub fn slot(&self) -> &AtomicU64 {
        // Safety: the mapping is page-aligned and at least 8 bytes long, lives as long as
        // `self`, and is only ever accessed through this atomic.
        unsafe { AtomicU64::from_ptr(self.page.as_ptr().cast()) }
    }
}
