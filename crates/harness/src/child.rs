//! Child control: fork a child that runs a closure, re-execute this program as a sacrificial
//! child, and wait for children with a deadline that always reaps them.
//!
//! Every child's stdout and stderr are pipes to the parent, read while it waits, so a worker
//! can deliver results (see [`deliver`]) and a crash message never spills onto the terminal.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Pid, fork, pipe2};

use crate::cleanup;
use crate::faults;

/// The hidden first argument that makes a row binary run a sacrificial child.
pub const CHILD_SUBCOMMAND: &str = "__child";

/// The exit code of a child whose closure panicked (the same as an uncaught Rust panic).
pub const PANIC_EXIT_CODE: i32 = 101;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Exited(i32),
    Killed(Signal),
    /// Still running at its deadline: it was killed with SIGKILL and reaped.
    TimedOut,
}

impl Status {
    pub fn signal(self) -> Option<Signal> {
        match self {
            Status::Killed(s) => Some(s),
            _ => None,
        }
    }

    pub fn success(self) -> bool {
        self == Status::Exited(0)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Exited(code) => write!(f, "exited {code}"),
            Status::Killed(sig) => write!(f, "killed by {}", sig.as_str()),
            Status::TimedOut => f.write_str("timed out and was killed"),
        }
    }
}

/// A task's resource usage: a reaped child's from wait4(2), or the calling thread's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub voluntary_switches: i64,
    pub involuntary_switches: i64,
    pub minor_faults: i64,
    pub major_faults: i64,
    /// User plus system CPU time, in µs.
    #[serde(default)]
    pub cpu_us: i64,
}

impl Usage {
    /// The calling thread's usage so far: RUSAGE_THREAD counts this task only, whether it is
    /// a process's only thread or one of many (getrusage(2)).
    pub fn of_thread() -> Result<Usage> {
        let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD)
            .context("getrusage(RUSAGE_THREAD)")?;
        Ok(Usage::from_rusage(u.as_ref()))
    }

    /// The whole calling process's usage so far, every thread included (RUSAGE_SELF).
    pub fn of_process() -> Result<Usage> {
        let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .context("getrusage(RUSAGE_SELF)")?;
        Ok(Usage::from_rusage(u.as_ref()))
    }

    fn from_rusage(ru: &libc::rusage) -> Usage {
        let us = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
        Usage {
            voluntary_switches: ru.ru_nvcsw,
            involuntary_switches: ru.ru_nivcsw,
            minor_faults: ru.ru_minflt,
            major_faults: ru.ru_majflt,
            cpu_us: us(ru.ru_utime) + us(ru.ru_stime),
        }
    }

    /// What was used between `before` and `self`.
    pub fn since(self, before: Usage) -> Usage {
        Usage {
            voluntary_switches: self.voluntary_switches - before.voluntary_switches,
            involuntary_switches: self.involuntary_switches - before.involuntary_switches,
            minor_faults: self.minor_faults - before.minor_faults,
            major_faults: self.major_faults - before.major_faults,
            cpu_us: self.cpu_us - before.cpu_us,
        }
    }
}

/// What a child left: how it ended, what it printed, what it used.
#[derive(Debug, Clone)]
pub struct Exit {
    pub pid: i32,
    pub status: Status,
    pub stdout: String,
    pub stderr: String,
    pub usage: Usage,
    /// When the parent saw it end.
    pub ended: Instant,
}

impl Exit {
    /// The first line of what the child printed on stderr: a panic or runtime message.
    pub fn message(&self) -> Option<&str> {
        self.stderr.lines().map(str::trim).find(|l| !l.is_empty())
    }

    /// Fails with the child's own words unless it exited 0.
    pub fn check(&self, what: &str) -> Result<()> {
        if self.status.success() {
            return Ok(());
        }
        match self.message() {
            Some(m) => bail!("{what} {}: {m}", self.status),
            None => bail!("{what} {}", self.status),
        }
    }
}

/// A running child of ours, registered for cleanup until it is reaped.
#[derive(Debug)]
pub struct Child {
    pid: Pid,
    pidfd: OwnedFd,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    out: Vec<u8>,
    err: Vec<u8>,
    /// Set once wait4 has collected it: its pid may then belong to another process.
    reaped: bool,
}

impl Child {
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Waits for the child to end, or kills it at the deadline; always reaps it.
    pub fn wait(self, deadline: Duration) -> Result<Exit> {
        let mut exits = wait_all(vec![self], deadline)?;
        Ok(exits.remove(0))
    }
}

/// Why a [`Watch`] raised its alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// The child ended before the watch was dropped.
    Ended,
    /// The deadline passed with the child still running.
    Deadline,
}

/// A process that watches a child while the caller talks to it through something with no
/// end-of-file (a futex word in shared memory): if the child ends, or the deadline passes,
/// first, it runs the alarm, which must wake the caller. Dropping the watch stops the
/// watcher and reaps it.
///
/// A process and not a thread, so that the caller stays single-threaded, in the kernel's
/// eyes while it runs and in glibc's for good ([`glibc_single_threaded`]); the alarm runs in
/// the watcher, so it reaches the caller only through memory both map shared or through
/// the kernel (a futex wake).
pub struct Watch {
    watcher: Option<Child>,
}

impl Child {
    /// Waits up to `timeout` for the child to end, without reaping it: true once it has.
    /// For a caller that watches something of its own meanwhile (a word in shared memory).
    pub fn ended_within(&self, timeout: Duration) -> Result<bool> {
        crate::poll::ready(self.pidfd.as_fd(), PollFlags::POLLIN, timeout).context("waiting on a pidfd")
    }

    /// Starts a [`Watch`] on this child: a forked watcher process that polls the child's
    /// pidfd (any process may poll a pidfd it holds), its stdin, until the child ends or the
    /// deadline passes, and then runs `alarm`. It holds descriptors 0, 1 and 2 only.
    pub fn watch(&self, deadline: Duration, alarm: impl FnOnce(Alarm)) -> Result<Watch> {
        let pidfd = self.pidfd.try_clone().context("dup of a pidfd")?;
        let until = Instant::now() + deadline;
        let watcher = fork_helper(Some(pidfd.as_raw_fd()), &[], move || {
            // Safety: descriptor 0 is the watcher's stdin, the pidfd (run_in_child).
            let pidfd = unsafe { BorrowedFd::borrow_raw(0) };
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    alarm(Alarm::Deadline);
                    return Ok(());
                }
                // A poll cut short by a signal says false: the loop looks again.
                if crate::poll::ready(pidfd, PollFlags::POLLIN, left)? {
                    alarm(Alarm::Ended);
                    return Ok(());
                }
            }
        })?;
        drop(pidfd);
        Ok(Watch { watcher: Some(watcher) })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The caller is done: the watcher is killed (if its alarm has not ended it) and reaped.
        if let Some(watcher) = self.watcher.take() {
            let _ = wait_all(vec![watcher], Duration::ZERO);
        }
    }
}

/// Threads in this process now (/proc/self/stat, proc(5)): 1 when it is single-threaded,
/// as a fork needs it, and as a process of its own is when it calls the kernel.
pub fn threads_in_this_process() -> Result<u64> {
    let stat = procfs::process::Process::myself().and_then(|p| p.stat()).context("reading /proc/self/stat")?;
    Ok(u64::try_from(stat.num_threads).unwrap_or(0))
}

/// Whether glibc takes this process for single-threaded (`__libc_single_threaded`, glibc
/// 2.32 and later). It starts true and turns false for good at the first thread a process
/// starts, and a child forked later inherits the false: glibc then switches asynchronous
/// cancellation on and off around every cancellation point (read, write, poll, send, ...)
/// and takes its locks in malloc and stdio, in that process and in every child forked from
/// it, however many threads they have left. See [`hosted`].
pub fn glibc_single_threaded() -> bool {
    unsafe extern "C" {
        static __libc_single_threaded: std::ffi::c_char;
    }
    // Safety: a plain read of a variable glibc documents for reading (sys/single_threaded.h).
    unsafe { std::ptr::read_volatile(&raw const __libc_single_threaded) != 0 }
}

/// The tag of a hosted run's result on its host's stdout.
const HOSTED: &str = "hosted";

/// Runs `work` in a forked child of this process (its host) and returns what it returned,
/// sent back as JSON on the host's stdout (as [`deliver`] does, but of any length); an error
/// or a crash in the host is
/// an error here, a host that outlives `deadline` is killed.
///
/// For a thread side's timed run, or any work with threads of its own (use-cases'
/// poison-request load): the threads it starts live and end in the host, and the row's own
/// process never starts one, so it stays single-threaded in glibc's eyes
/// ([`glibc_single_threaded`]). Had they started here, every later run of the process side,
/// in this process and in the children it forks, would pay glibc's multi-threaded paths
/// that no single-threaded program pays: on the Intel guest of 2026-12-07 a pipe write and
/// read in a process cost 333 ns alone and 378 ns forked from a row that had run threads
/// (docs/report.md, "Processes that glibc took for threads").
pub fn hosted<T: serde::Serialize + serde::de::DeserializeOwned>(
    deadline: Duration,
    work: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let host = fork_helper(None, &[], || {
        // Not `deliver`: a result may be longer than PIPE_BUF, and the host is its stdout's only
        // writer, so it need not be written at once.
        let line =
            format!("{HOSTED} {}\n", serde_json::to_string(&work()?).context("a result that does not serialize")?);
        // Safety: descriptor 1 is the host's stdout (run_in_child); ManuallyDrop leaves it open.
        let mut stdout = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
        stdout.write_all(line.as_bytes()).context("writing the result")
    })?;
    let exit = host.wait(deadline)?;
    exit.check("the process hosting a run")?;
    exit.received_one(HOSTED)
}

/// A process of its own that serves runs on request, so that threads never start in the
/// row's process: a thread side whose runs should share one process, as a threaded program's
/// would (its stacks cached, its pages its own), or a driver with threads of its own, such as
/// use-cases' load generator ([`hosted`] forks one per run instead). Forked once, it reads
/// requests, one JSON line each, runs `serve` on each and writes back its result, until the
/// request pipe closes. The closure `serve` is dropped unrun in this process before `start`
/// returns. Dropping the host ends it and reaps it.
pub struct Host<Req, Resp> {
    requests: Option<std::fs::File>,
    replies: std::io::BufReader<std::fs::File>,
    host: Option<Child>,
    deadline: Duration,
    /// When the request that has no reply yet was sent ([`Host::send`]).
    pending: Option<Instant>,
    types: std::marker::PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Host<Req, Resp>
where
    Req: serde::Serialize + serde::de::DeserializeOwned,
    Resp: serde::Serialize + serde::de::DeserializeOwned,
{
    /// Forks the host; a request it does not answer within `deadline` is an error, and the
    /// host is then killed.
    pub fn start(deadline: Duration, mut serve: impl FnMut(Req) -> Result<Resp>) -> Result<Self> {
        use std::io::BufRead;
        // The requests reach the host on its stdin and the replies leave on its stdout, so that
        // it holds descriptors 0, 1 and 2 only, like every child of ours.
        let (requests_r, requests_w) = pipe2(OFlag::O_CLOEXEC).context("pipe2 for a host's requests")?;
        let mut host = fork_helper(Some(requests_r.as_raw_fd()), &[], move || {
            // Safety: descriptors 0 and 1 are the host's own (run_in_child set them up); the
            // host ends with _exit, which closes them.
            let mut requests = std::io::BufReader::new(unsafe { std::fs::File::from_raw_fd(0) });
            let mut replies = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
            let mut line = String::new();
            loop {
                line.clear();
                if requests.read_line(&mut line).context("reading a request")? == 0 {
                    return Ok(());
                }
                let request: Req = serde_json::from_str(&line).context("a request that does not parse")?;
                let reply: std::result::Result<Resp, String> = serve(request).map_err(|e| format!("{e:#}"));
                let mut out = serde_json::to_string(&reply).context("a reply that does not serialize")?;
                out.push('\n');
                replies.write_all(out.as_bytes()).context("writing a reply")?;
            }
        })?;
        drop(requests_r);
        let replies = host.stdout.take().context("the host's stdout")?;
        Ok(Host {
            requests: Some(std::fs::File::from(requests_w)),
            replies: std::io::BufReader::new(std::fs::File::from(replies)),
            host: Some(host),
            deadline,
            pending: None,
            types: std::marker::PhantomData,
        })
    }

    /// Sends one request and waits for its reply: what `serve` returned, or its error.
    pub fn call(&mut self, request: &Req) -> Result<Resp> {
        self.send(request)?;
        self.reply()
    }

    /// Sends one request without waiting for its reply, so that this process can work while
    /// the host does; [`Host::reply`] then waits for it, within the deadline from now. A
    /// request sent must be replied to before the next is sent.
    pub fn send(&mut self, request: &Req) -> Result<()> {
        ensure!(self.pending.is_none(), "a request to the host was sent before the last one's reply was read");
        let mut line = serde_json::to_string(request).context("a request that does not serialize")?;
        line.push('\n');
        let requests = self.requests.as_mut().context("the host was ended")?;
        if let Err(e) = requests.write_all(line.as_bytes()) {
            return Err(self.gone(anyhow::Error::new(e).context("sending a request to the host")));
        }
        self.pending = Some(Instant::now());
        Ok(())
    }

    /// Waits for the reply to the request sent last: what `serve` returned, or its error.
    pub fn reply(&mut self) -> Result<Resp> {
        use std::io::BufRead;
        let sent = self.pending.take().context("a reply was waited for, but no request to the host is unanswered")?;
        // The host's stdout is non-blocking (adopt): a long reply comes in pieces, each waited
        // for, all within the deadline from the request.
        let until = sent + self.deadline;
        let mut reply = Vec::new();
        loop {
            match self.replies.read_until(b'\n', &mut reply) {
                Ok(0) => return Err(self.gone(anyhow::anyhow!("the host ended before it answered"))),
                Ok(_) if reply.ends_with(b"\n") => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => {
                    let left = until.saturating_duration_since(Instant::now());
                    // A poll cut short by a signal says false too: the loop looks again until the
                    // deadline has passed.
                    if left.is_zero() {
                        return Err(self.hung());
                    }
                    crate::poll::ready(self.replies.get_ref().as_fd(), PollFlags::POLLIN, left)?;
                }
                Err(e) => return Err(self.gone(anyhow::Error::new(e).context("reading the host's reply"))),
            }
        }
        let reply = String::from_utf8(reply).context("a reply from the host that is not UTF-8")?;
        let reply: std::result::Result<Resp, String> =
            serde_json::from_str(&reply).context("a reply from the host that does not parse")?;
        reply.map_err(|e| anyhow::anyhow!(e))
    }

    /// Ends the host (its request pipe closes) and checks that it ended well.
    pub fn finish(mut self) -> Result<()> {
        drop(self.requests.take());
        let host = self.host.take().context("the host was ended")?;
        host.wait(self.deadline)?.check("the host of a side's runs")
    }

    /// The host did not answer within its deadline: it is killed and reaped.
    fn hung(&mut self) -> anyhow::Error {
        drop(self.requests.take());
        let Some(host) = self.host.take() else { return anyhow::anyhow!("the host was ended") };
        let pid = host.pid();
        let _ = wait_all(vec![host], Duration::ZERO);
        anyhow::anyhow!(
            "child {pid} (the host of a side's runs) did not answer within its deadline of {} ms: killed with \
             SIGKILL and reaped",
            self.deadline.as_millis()
        )
    }

    /// `error`, with how the host ended: it is killed if it has not, and reaped.
    fn gone(&mut self, error: anyhow::Error) -> anyhow::Error {
        drop(self.requests.take());
        match self.host.take().map(|h| wait_all(vec![h], Duration::from_secs(1))) {
            Some(Ok(exits)) => match exits[0].check("the host of a side's runs") {
                Err(why) => error.context(format!("{why:#}")),
                Ok(()) => error,
            },
            Some(Err(why)) => error.context(format!("{why:#}")),
            None => error,
        }
    }
}

/// The host of the thread side's runs of an experiment, if that side was asked for
/// (`Ctx::thread_host`): a call when it was not is an error, and so is a host that ended badly.
pub struct ThreadHost<Req, Resp>(Option<Host<Req, Resp>>);

impl<Req, Resp> ThreadHost<Req, Resp>
where
    Req: serde::Serialize + serde::de::DeserializeOwned,
    Resp: serde::Serialize + serde::de::DeserializeOwned,
{
    pub(crate) fn new(host: Option<Host<Req, Resp>>) -> Self {
        ThreadHost(host)
    }

    /// One request to the host ([`Host::call`]).
    pub fn call(&mut self, request: &Req) -> Result<Resp> {
        self.host()?.call(request)
    }

    /// A request the host works on while this process does ([`Host::send`]).
    pub fn send(&mut self, request: &Req) -> Result<()> {
        self.host()?.send(request)
    }

    /// The reply to the request sent last ([`Host::reply`]).
    pub fn reply(&mut self) -> Result<Resp> {
        self.host()?.reply()
    }

    fn host(&mut self) -> Result<&mut Host<Req, Resp>> {
        self.0.as_mut().context("the thread side was not asked for")
    }

    /// Ends the host, if there is one ([`Host::finish`]).
    pub fn finish(self) -> Result<()> {
        self.0.map_or(Ok(()), Host::finish)
    }
}

impl<Req, Resp> Drop for Host<Req, Resp> {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(host) = self.host.take() {
            let _ = host.wait(self.deadline);
        }
    }
}

/// Forks a child that runs `work` and ends with `_exit`: 0 when it returns `Ok`, 1 with the
/// error on stderr when it returns `Err`, [`PANIC_EXIT_CODE`] when it panics.
///
/// Call this only while the process is single-threaded: after fork(2) the child has one
/// thread, and a lock another thread held at that moment would stay locked forever.
/// The child keeps stdin and gets pipes as stdout and stderr; every other descriptor is
/// closed, so it holds nothing it does not need. It never returns into the caller and never
/// runs the destructors it inherited.
pub fn fork_child(work: impl FnOnce() -> Result<()>) -> Result<Child> {
    fork_child_keeping(&[], work)
}

/// [`fork_child`], but the child also keeps the descriptors in `keep` (its ends of pipes the
/// parent made for it). The parent's copies of anything `work` owns are dropped when this
/// returns, so a pipe end moved into `work` lives on in the child only.
pub fn fork_child_keeping(keep: &[RawFd], work: impl FnOnce() -> Result<()>) -> Result<Child> {
    fork_child_hanging(faults::take_hang(), None, keep, work)
}

/// [`fork_child_keeping`] for a process of the harness's own (a host, a watcher), which reads
/// `stdin` as its descriptor 0 if given and never takes the injected hang (`PVT_HANG`): that
/// stays for the experiment's own children, whose hang the reliability tests are about.
fn fork_helper(stdin: Option<RawFd>, keep: &[RawFd], work: impl FnOnce() -> Result<()>) -> Result<Child> {
    fork_child_hanging(false, stdin, keep, work)
}

fn fork_child_hanging(
    hang: bool,
    stdin: Option<RawFd>,
    keep: &[RawFd],
    work: impl FnOnce() -> Result<()>,
) -> Result<Child> {
    flush_before_fork();
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).context("pipe2 for the child's stdout")?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).context("pipe2 for the child's stderr")?;
    let parent = std::process::id() as libc::pid_t;
    let forked = cleanup::with_signals_blocked(|| -> Result<Pid> {
        // Safety: the caller guarantees the process is single-threaded (see above), so the
        // child may allocate and run any code.
        match unsafe { fork() }.map_err(fork_error)? {
            ForkResult::Child => {
                cleanup::reset_in_child();
                die_with(parent);
                let code = run_in_child(stdin, out_w.as_raw_fd(), err_w.as_raw_fd(), keep, hang, work);
                // Safety: _exit ends the child at once, without running inherited destructors.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                // Every path after the fork ends with the child reaped: if it cannot be
                // registered, it is killed and reaped here.
                if let Err(e) = cleanup::register_child(child.as_raw()) {
                    kill_and_reap(child);
                    return Err(e);
                }
                Ok(child)
            }
        }
    })?;
    drop((out_w, err_w));
    adopt(forked, Some(out_r), Some(err_r))
}

/// Flushes stdout and stderr before a fork: unflushed output would otherwise be written twice,
/// once by each process.
pub(crate) fn flush_before_fork() {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

/// Makes the calling child die with its parent: a row killed outright (SIGKILL, which no
/// handler sees) must not leave its children running (prctl(2) PR_SET_PDEATHSIG, which
/// survives execve). If the parent died before this call, the child ends here.
/// Async-signal-safe: it runs between fork and exec too.
pub(crate) fn die_with(parent: libc::pid_t) {
    // Safety: prctl(2) and getppid(2) with plain integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if libc::getppid() != parent {
            libc::_exit(PANIC_EXIT_CODE);
        }
    }
}

/// fork(2) fails with EAGAIN when a task limit is reached: say which limits those are.
pub(crate) fn fork_error(e: nix::errno::Errno) -> anyhow::Error {
    let hint = match e {
        nix::errno::Errno::EAGAIN => ": a limit on tasks was reached (ulimit -u, the cgroup's pids.max or threads-max)",
        nix::errno::Errno::ENOMEM => ": out of memory",
        _ => "",
    };
    anyhow::anyhow!("fork: {e}{hint}")
}

fn run_in_child(
    stdin: Option<RawFd>,
    out: RawFd,
    err: RawFd,
    keep: &[RawFd],
    hang: bool,
    work: impl FnOnce() -> Result<()>,
) -> i32 {
    // Safety: dup2(2) onto 0, 1 and 2 replaces the inherited stdin (if asked), stdout and
    // stderr with our pipes.
    let redirected =
        unsafe { stdin.is_none_or(|fd| libc::dup2(fd, 0) >= 0) && libc::dup2(out, 1) >= 0 && libc::dup2(err, 2) >= 0 };
    if !redirected {
        return 1;
    }
    close_other_descriptors(keep);
    crate::panics::one_line_messages();
    let code = work_exit_code(hang, work);
    let _ = std::io::stdout().flush();
    code
}

/// In a child: hangs when told to (the fault injection), else runs `work` and says how it
/// ended as an exit code: 0 when it returned Ok, 1 (the error on stderr) when it failed,
/// [`PANIC_EXIT_CODE`] when it panicked. Forked children of both kinds (`fork_child`,
/// `bare::fork_bare`) end with it.
pub(crate) fn work_exit_code(hang: bool, work: impl FnOnce() -> Result<()>) -> i32 {
    if hang {
        faults::hang_forever();
    }
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            1
        }
        Err(_) => PANIC_EXIT_CODE,
    }
}

/// Closes every descriptor above stderr but those in `keep` (close_range(2) on the gaps).
fn close_other_descriptors(keep: &[RawFd]) {
    let mut kept: Vec<u32> = keep.iter().filter(|&&fd| fd > 2).map(|&fd| fd as u32).collect();
    kept.sort_unstable();
    let mut from = 3u32;
    for fd in kept {
        if fd > from {
            // Safety: plain syscall on descriptor numbers the child does not use.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32) };
        }
        from = fd + 1;
    }
    // Safety: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
}

/// Starts this program again as a sacrificial child: `<row> __child NAME ARGS...`.
///
/// The new process has only the threads it creates itself, so it can host threads that may
/// bring it down while the caller survives to report. Its stdout and stderr are pipes to us.
pub fn spawn_sacrificial(name: &str, args: &[String]) -> Result<Child> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut cmd = Command::new(exe);
    cmd.arg(CHILD_SUBCOMMAND).arg(name).args(args);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if faults::take_hang() {
        cmd.env(faults::HANG_NOW_ENV, "1");
    }
    spawn_command(cmd)
}

/// Spawns any command as a registered child whose stdout and stderr we read.
/// The child inherits only 0, 1 and 2: Rust opens its own descriptors close-on-exec, and a
/// descriptor this process inherited without that flag (a make jobserver pipe, say) gets it
/// in the child just before exec.
pub fn spawn_command(mut cmd: Command) -> Result<Child> {
    let program: OsString = cmd.get_program().to_owned();
    let parent = std::process::id() as libc::pid_t;
    // Safety: the closure runs in the child between fork and exec and makes only
    // async-signal-safe syscalls: close_range(2) with CLOSE_RANGE_CLOEXEC only sets the
    // close-on-exec flag, so std's own pipe for reporting exec errors keeps working; then
    // sigprocmask(2), prctl(2) and getppid(2). PR_SET_PDEATHSIG fires when the spawning *thread* ends, so
    // children are spawned from the row's main thread, which lives as long as the row.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            // We spawn with SIGINT and SIGTERM blocked (so that the handler never misses a
            // child); the new program must start with none blocked (sigprocmask(2)).
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            die_with(parent);
            Ok(())
        });
    }
    let spawned = cleanup::with_signals_blocked(|| -> Result<std::process::Child> {
        let child = cmd.spawn().with_context(|| format!("spawning {}", program.to_string_lossy()))?;
        if let Err(e) = cleanup::register_child(child.id() as i32) {
            kill_and_reap(Pid::from_raw(child.id() as i32));
            return Err(e);
        }
        Ok(child)
    })?;
    let pid = Pid::from_raw(spawned.id() as i32);
    let mut spawned = spawned;
    let out = spawned.stdout.take().map(OwnedFd::from);
    let err = spawned.stderr.take().map(OwnedFd::from);
    // We reap the child ourselves with wait4; dropping std's handle neither waits nor kills.
    drop(spawned);
    adopt(pid, out, err)
}

fn adopt(pid: Pid, stdout: Option<OwnedFd>, stderr: Option<OwnedFd>) -> Result<Child> {
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            kill_and_reap(pid);
            return Err(e);
        }
    };
    // From here on the Child owns the process: an early return drops it, which kills and
    // reaps it.
    let child = Child { pid, pidfd, stdout, stderr, out: Vec::new(), err: Vec::new(), reaped: false };
    for fd in child.stdout.iter().chain(child.stderr.iter()) {
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).context("fcntl O_NONBLOCK")?;
    }
    Ok(child)
}

/// A descriptor that becomes readable when process `pid` ends (pidfd_open(2)), for a caller
/// that must wake for a child's end beside other descriptors (poll(2)).
pub fn pidfd(pid: i32) -> Result<OwnedFd> {
    pidfd_open(Pid::from_raw(pid))
}

/// A descriptor that becomes readable when the process ends (pidfd_open(2)).
fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // Safety: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open");
    }
    // Safety: the kernel just gave us this descriptor and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub(crate) fn kill_and_reap(pid: Pid) {
    // Safety: plain syscalls on our own child's pid.
    unsafe {
        libc::kill(pid.as_raw(), libc::SIGKILL);
        libc::waitpid(pid.as_raw(), std::ptr::null_mut(), 0);
    }
    cleanup::forget_child(pid.as_raw());
}

/// Waits for every child, reading their output meanwhile. A child still running at the
/// deadline is killed with SIGKILL and reaped, and then the whole wait fails: a hung child
/// is an error of the experiment, never a result. The exits come back in the order of
/// `children`.
pub fn wait_all(children: Vec<Child>, deadline: Duration) -> Result<Vec<Exit>> {
    let mut pending: Vec<(usize, Child)> = children.into_iter().enumerate().collect();
    let mut done: Vec<(usize, Exit)> = Vec::with_capacity(pending.len());
    let until = Instant::now() + deadline;
    while !pending.is_empty() {
        let (i, exit) = wait_next(&mut pending, until)?;
        done.push((i, exit));
    }
    if let Some((_, hung)) = done.iter().find(|(_, e)| e.status == Status::TimedOut) {
        return Err(deadline_error(hung, deadline));
    }
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, e)| e).collect())
}

/// Waits for whichever child ends first and removes it from `children`.
/// Returns its index in `children` (before removal) and how it ended. Fails if no child
/// ended by the deadline (the first one is then killed and reaped; the rest stay in
/// `children`, and are killed and reaped when dropped).
pub fn wait_any(children: &mut Vec<Child>, deadline: Duration) -> Result<(usize, Exit)> {
    let mut pending: Vec<(usize, Child)> = std::mem::take(children).into_iter().enumerate().collect();
    let result = wait_next(&mut pending, Instant::now() + deadline);
    *children = pending.into_iter().map(|(_, c)| c).collect();
    match result {
        Ok((_, exit)) if exit.status == Status::TimedOut => Err(deadline_error(&exit, deadline)),
        other => other,
    }
}

fn deadline_error(hung: &Exit, deadline: Duration) -> anyhow::Error {
    anyhow::anyhow!(
        "child {} did not finish within its deadline of {} ms: killed with SIGKILL and reaped",
        hung.pid,
        deadline.as_millis()
    )
}

fn wait_next(pending: &mut Vec<(usize, Child)>, until: Instant) -> Result<(usize, Exit)> {
    loop {
        for k in 0..pending.len() {
            if let Some(exit) = try_reap(&mut pending[k].1)? {
                let (i, _) = pending.remove(k);
                return Ok((i, exit));
            }
        }
        let now = Instant::now();
        if now >= until {
            // Past the deadline: the first child still running is killed.
            let (i, mut child) = pending.remove(0);
            // Safety: plain syscall on our own child's pid.
            unsafe { libc::kill(child.pid.as_raw(), libc::SIGKILL) };
            let mut exit = reap_blocking(&mut child)?;
            exit.status = Status::TimedOut;
            return Ok((i, exit));
        }
        let mut fds: Vec<PollFd> = Vec::new();
        for (_, c) in pending.iter() {
            fds.push(PollFd::new(c.pidfd.as_fd(), PollFlags::POLLIN));
            for fd in c.stdout.iter().chain(c.stderr.iter()) {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
        }
        let left = (until - now).as_millis().clamp(1, i32::MAX as u128) as i32;
        match poll(&mut fds, PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        drop(fds);
        for (_, c) in pending.iter_mut() {
            drain(c)?;
        }
    }
}

/// Reads whatever the child's pipes hold now; closes a pipe at end of file.
fn drain(c: &mut Child) -> Result<()> {
    drain_one(&mut c.stdout, &mut c.out)?;
    drain_one(&mut c.stderr, &mut c.err)
}

fn drain_one(fd: &mut Option<OwnedFd>, into: &mut Vec<u8>) -> Result<()> {
    let Some(f) = fd.as_ref() else { return Ok(()) };
    let mut buf = [0u8; 8192];
    loop {
        match nix::unistd::read(f, &mut buf) {
            Ok(0) => {
                *fd = None;
                return Ok(());
            }
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EAGAIN) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("read from a child's pipe"),
        }
    }
}

/// Reaps the child if it has ended (wait4 with WNOHANG).
fn try_reap(c: &mut Child) -> Result<Option<Exit>> {
    wait4(c, libc::WNOHANG)
}

fn reap_blocking(c: &mut Child) -> Result<Exit> {
    loop {
        if let Some(exit) = wait4(c, 0)? {
            return Ok(exit);
        }
    }
}

fn wait4(c: &mut Child, flags: libc::c_int) -> Result<Option<Exit>> {
    let mut status: libc::c_int = 0;
    // Safety: rusage is plain data that wait4 fills in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // Safety: wait4 on our own child with valid pointers (wait4(2)).
    let r = unsafe { libc::wait4(c.pid.as_raw(), &mut status, flags, &mut ru) };
    if r == 0 {
        return Ok(None);
    }
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(None);
        }
        return Err(e).context("wait4");
    }
    let ended = Instant::now();
    c.reaped = true;
    cleanup::forget_child(c.pid.as_raw());
    // The child is gone, so its pipes hold all it wrote; a grandchild that kept a write end
    // (none of ours do) would only delay the end of file, so read what is there now.
    drain(c)?;
    let status = if libc::WIFSIGNALED(status) {
        Status::Killed(Signal::try_from(libc::WTERMSIG(status)).context("unknown signal number")?)
    } else {
        Status::Exited(libc::WEXITSTATUS(status))
    };
    Ok(Some(Exit {
        pid: c.pid.as_raw(),
        status,
        stdout: String::from_utf8_lossy(&c.out).into_owned(),
        stderr: String::from_utf8_lossy(&c.err).into_owned(),
        usage: Usage::from_rusage(&ru),
        ended,
    }))
}

impl Drop for Child {
    /// A child dropped without being waited for is killed and reaped: nothing is left behind,
    /// even when an experiment returns early with an error.
    fn drop(&mut self) {
        if !self.reaped {
            kill_and_reap(self.pid);
        }
    }
}

/// Delivers one typed message to the parent: `tag` and the value as one line of JSON on
/// stdout, in a single write(2) so that messages from several threads or processes never
/// interleave (writes of up to PIPE_BUF bytes to a pipe are atomic, pipe(7)). Unbuffered:
/// once this returns, the message is in the pipe and survives a crash of the sender. The
/// parent reads it back with [`Exit::received`] (or [`received`]).
pub fn deliver<T: serde::Serialize + ?Sized>(tag: &str, value: &T) {
    let json = serde_json::to_string(value).unwrap_or_else(|e| format!("\"unserializable: {e}\""));
    let line = format!("{tag} {json}\n");
    debug_assert!(line.len() <= libc::PIPE_BUF, "a message over PIPE_BUF is not written atomically");
    // Safety: writes our own buffer to descriptor 1.
    let n = unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
    debug_assert_eq!(n, line.len() as isize);
}

/// The messages with one tag in what a child printed, in the order they were written. A
/// message that does not parse as a `T` is an error that quotes it.
pub fn received<T: serde::de::DeserializeOwned>(stdout: &str, tag: &str) -> Result<Vec<T>> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(tag).and_then(|rest| rest.strip_prefix(' ')))
        .map(|json| serde_json::from_str(json).with_context(|| format!("a malformed {tag:?} message: {json}")))
        .collect()
}

impl Exit {
    /// The messages with one tag that the child delivered (see [`deliver`]).
    pub fn received<T: serde::de::DeserializeOwned>(&self, tag: &str) -> Result<Vec<T>> {
        received(&self.stdout, tag)
    }

    /// The one message with this tag, or an error naming what came instead.
    pub fn received_one<T: serde::de::DeserializeOwned>(&self, tag: &str) -> Result<T> {
        let mut all = self.received(tag)?;
        anyhow::ensure!(all.len() == 1, "expected one {tag:?} message from child {}, got {}", self.pid, all.len());
        Ok(all.remove(0))
    }
}

/// Makes sure a crash of this process writes no core file: a demonstration crash must leave
/// nothing behind. RLIMIT_CORE 0 (setrlimit(2)) stops a core file in the working directory;
/// PR_SET_DUMPABLE 0 (prctl(2)) also stops a core_pattern pipe helper from being fed one.
pub fn no_core_dump() {
    let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // Safety: plain syscalls on this process with valid arguments.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_parsed_by_tag() {
        let out = "result [1,10]\nnoise\nresult [2,20]\nstart 5\nresults [9]\n";
        assert_eq!(received::<Vec<u64>>(out, "result").unwrap(), vec![vec![1, 10], vec![2, 20]]);
        assert_eq!(received::<u64>(out, "start").unwrap(), vec![5]);
        let bad = received::<u64>("start five\n", "start").unwrap_err();
        assert!(format!("{bad:#}").contains("malformed \"start\" message: five"), "{bad:#}");
    }

    #[test]
    fn statuses_read_like_sentences() {
        assert_eq!(Status::Exited(0).to_string(), "exited 0");
        assert_eq!(Status::Killed(Signal::SIGSEGV).to_string(), "killed by SIGSEGV");
        assert_eq!(Status::TimedOut.to_string(), "timed out and was killed");
    }
}
