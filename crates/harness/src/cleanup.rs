//! Nothing left behind: every child is known, every segment is known, and Ctrl-C or SIGTERM
//! kills and reaps the children and unlinks the segments before the program exits. The same
//! goes for the one temporary file the suite makes: ipc-channel's rendezvous socket, in a
//! directory of its own under $TMPDIR ([`register_temp_socket`]).
//!
//! A row is also a child subreaper (PR_SET_CHILD_SUBREAPER, prctl(2)): a grandchild orphaned
//! when its parent dies (the workers of a sacrificial host killed at its deadline or by an
//! interrupt) comes back to the row instead of to PID 1, which in a container may never reap
//! it. The row reaps such orphans between experiments, at its end and in the signal handler
//! ([`reap_orphans`]); they die with their parent (PR_SET_PDEATHSIG), so only their zombies
//! are left to collect.
//!
//! The registries are fixed arrays of atomics so that the signal handler can read them
//! without taking a lock or allocating: a handler may interrupt any code, including code that
//! holds a lock or is inside the allocator. Everything the handler calls is on the list of
//! async-signal-safe functions in signal-safety(7): kill, waitpid, unlink, rmdir, write, _exit.

use std::cell::UnsafeCell;
use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

use anyhow::{Result, bail};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, pthread_sigmask, signal};

/// The prefix of every shared-memory segment this project creates (in /dev/shm).
pub const SEGMENT_PREFIX: &str = "pvt-";

/// Where the kernel shows POSIX message queues as files, when the mqueue file system is
/// mounted there (mq_overview(7)).
pub const MQUEUE_DIR: &str = "/dev/mqueue";

/// Whether the mqueue file system is mounted on [`MQUEUE_DIR`] (/proc/self/mounts), so that
/// queues show there as files: a plain directory of that name shows none.
pub fn mqueue_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace().skip(1);
            f.next() == Some(MQUEUE_DIR) && f.next() == Some("mqueue")
        })
    })
}

const CHILD_SLOTS: usize = 1024;
const SEGMENT_SLOTS: usize = 64;
const DIR_SLOTS: usize = 8;
const NAME_LEN: usize = 128;

/// The process that installed the handlers; a forked child that still has the inherited
/// handler for a moment must not clean up its parent's children.
static OWNER: AtomicI32 = AtomicI32::new(0);
static CHILDREN: [AtomicI32; CHILD_SLOTS] = [const { AtomicI32::new(0) }; CHILD_SLOTS];

/// A path to remove (a segment's, a queue's, a temporary socket's or directory's), written
/// once before it is marked ready.
struct PathSlot {
    state: AtomicU8,
    path: UnsafeCell<[u8; NAME_LEN]>,
}
// Safety: `path` is written only by the thread that moved `state` from FREE to WRITING, and
// read only after `state` is READY (Release/Acquire), so no two parties touch it at once.
unsafe impl Sync for PathSlot {}

const FREE: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;
const fn empty() -> PathSlot {
    PathSlot { state: AtomicU8::new(FREE), path: UnsafeCell::new([0; NAME_LEN]) }
}
/// Shared-memory segments and message queues, to unlink.
static SEGMENTS: [PathSlot; SEGMENT_SLOTS] = [const { empty() }; SEGMENT_SLOTS];
/// Temporary files (sockets), each alone in a directory of [`DIRS`], to unlink before it.
static TEMP_FILES: [PathSlot; DIR_SLOTS] = [const { empty() }; DIR_SLOTS];
/// The temporary directories, to remove once their file is gone.
static DIRS: [PathSlot; DIR_SLOTS] = [const { empty() }; DIR_SLOTS];

/// Installs the SIGINT and SIGTERM handlers, once per process.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        OWNER.store(std::process::id() as i32, Ordering::SeqCst);
        // Safety: prctl(2) with plain integer arguments; it changes only this process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            // Safety: the handler only calls async-signal-safe functions (see the module doc).
            unsafe { signal(sig, SigHandler::Handler(on_signal)) }.expect("installing a signal handler");
        }
    });
}

/// Runs `f` with SIGINT and SIGTERM blocked, so that a child cannot be created without
/// being registered (the signal is delivered, and handled, right after).
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).expect("pthread_sigmask");
    let out = f();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).expect("pthread_sigmask");
    out
}

/// In a freshly forked child: the default dispositions of SIGINT and SIGTERM back (the
/// parent's handler would otherwise clean up the parent's children), and no signal blocked (we
/// fork with SIGINT and SIGTERM blocked). Async-signal-safe: it runs between fork and exec too.
pub(crate) fn reset_in_child() {
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // Safety: SIG_DFL installs no code of ours.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Remembers a child so that an interrupt kills and reaps it.
pub fn register_child(pid: i32) -> Result<()> {
    for slot in &CHILDREN {
        if slot.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return Ok(());
        }
    }
    bail!("more than {CHILD_SLOTS} live children: refusing to create another")
}

/// Forgets a child once it has been reaped.
pub fn forget_child(pid: i32) {
    for slot in &CHILDREN {
        if slot.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return;
        }
    }
}

/// How many children are registered now.
pub fn live_children() -> usize {
    CHILDREN.iter().filter(|s| s.load(Ordering::SeqCst) != 0).count()
}

/// Remembers a segment (its /dev/shm path) so that an interrupt unlinks it.
pub fn register_segment(path: &str) -> Result<()> {
    register_in(&SEGMENTS, path, "segment")
}

/// Forgets a segment once it has been unlinked.
pub fn forget_segment(path: &str) {
    forget_in(&SEGMENTS, path);
}

/// Remembers a socket alone in a temporary directory of its own (ipc-channel's one-shot
/// server makes `$TMPDIR/.tmpXXXXXX/socket` and removes both when it is dropped) so that an
/// interrupt unlinks the socket and removes the directory. Call it with SIGINT and SIGTERM
/// blocked from before the socket is made ([`with_signals_blocked`]), or an interrupt in
/// between would leave both; blocking them covers the calling thread only, which is enough
/// while no other thread of the process could take the signal (the process side of an
/// experiment is set up while the row is single-threaded).
pub fn register_temp_socket(socket: &str) -> Result<()> {
    let dir = std::path::Path::new(socket).parent().and_then(|d| d.to_str()).filter(|d| !d.is_empty());
    let Some(dir) = dir else { bail!("the socket {socket} is not in a directory of its own") };
    register_in(&TEMP_FILES, socket, "temporary socket")?;
    register_in(&DIRS, dir, "temporary directory").inspect_err(|_| forget_in(&TEMP_FILES, socket))
}

/// Forgets a socket and its directory once its owner has removed them.
pub fn forget_temp_socket(socket: &str) {
    forget_in(&TEMP_FILES, socket);
    if let Some(dir) = std::path::Path::new(socket).parent().and_then(|d| d.to_str()) {
        forget_in(&DIRS, dir);
    }
}

fn register_in(slots: &[PathSlot], path: &str, what: &str) -> Result<()> {
    let bytes = path.as_bytes();
    if bytes.len() >= NAME_LEN {
        bail!("{what} path {path} is too long");
    }
    for slot in slots {
        if slot.state.compare_exchange(FREE, WRITING, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            // Safety: this thread owns the slot while its state is WRITING.
            let buf = unsafe { &mut *slot.path.get() };
            buf.fill(0);
            buf[..bytes.len()].copy_from_slice(bytes);
            slot.state.store(READY, Ordering::Release);
            return Ok(());
        }
    }
    bail!("more than {} live {what}s: refusing to create another", slots.len())
}

fn forget_in(slots: &[PathSlot], path: &str) {
    for slot in slots {
        if slot.state.load(Ordering::Acquire) != READY {
            continue;
        }
        // Safety: a READY slot is only read until it is moved back to FREE below.
        let buf = unsafe { &*slot.path.get() };
        let len = buf.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        if &buf[..len] == path.as_bytes() {
            slot.state.store(FREE, Ordering::Release);
            return;
        }
    }
}

/// Reaps every child that has ended (registered or adopted), waiting up to `wait` for those
/// still running to end, and returns how many were reaped. Call it only when no registered
/// child is still to be waited for by its owner (between experiments, at the end, in the
/// handler): waitpid(-1) takes any child's status. Async-signal-safe: waitpid(2),
/// clock_gettime(2) and nanosleep(2) only.
pub fn reap_orphans(wait: std::time::Duration) -> u64 {
    let now_ns = || {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // Safety: clock_gettime writes the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
        t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128
    };
    let until = now_ns() + wait.as_nanos() as i128;
    let mut reaped = 0;
    loop {
        // Safety: waitpid(2) on any child of ours, without blocking.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid > 0 {
            reaped += 1;
            continue;
        }
        // -1: no child at all (ECHILD) or interrupted; 0: children that still run.
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return reaped;
        }
        if now_ns() >= until {
            return reaped;
        }
        let pause = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
        // Safety: nanosleep reads our timespec; a null remainder is allowed.
        unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Safety, for the whole handler: only async-signal-safe calls, on memory that was
    // fully written before it was published (see the registries above).
    unsafe {
        if libc::getpid() != OWNER.load(Ordering::SeqCst) {
            // A forked child before it reset its handlers: die as the signal says.
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
            return;
        }
        let mut killed = 0u64;
        for slot in &CHILDREN {
            let pid = slot.swap(0, Ordering::SeqCst);
            if pid > 0 {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
                killed += 1;
            }
        }
        // Their own children die with them (PR_SET_PDEATHSIG) and come back to us, the
        // subreaper: collect them too, so that not even a zombie is left to PID 1.
        killed += reap_orphans(std::time::Duration::from_secs(2));
        let mut removed = 0u64;
        for slot in &SEGMENTS {
            if slot.state.load(Ordering::Acquire) == READY {
                let path = slot.path.get() as *const libc::c_char;
                if libc::unlink(path) == 0 {
                    removed += 1;
                }
            }
        }
        // A registered directory holds only its registered file: that first, then the directory.
        for slot in &TEMP_FILES {
            if slot.state.load(Ordering::Acquire) == READY {
                libc::unlink(slot.path.get() as *const libc::c_char);
            }
        }
        let mut dirs = 0u64;
        for slot in &DIRS {
            if slot.state.load(Ordering::Acquire) == READY && libc::rmdir(slot.path.get() as *const libc::c_char) == 0 {
                dirs += 1;
            }
        }
        let mut line = LineBuf::new();
        line.push(if sig == libc::SIGINT { b"interrupted (SIGINT)" } else { b"terminated (SIGTERM)" });
        line.push(b": killed and reaped ");
        line.push_count(killed, b"child", b"children");
        line.push(b", unlinked ");
        line.push_count(removed, b"shared-memory segment", b"shared-memory segments");
        if dirs > 0 {
            line.push(b" and removed ");
            line.push_count(dirs, b"temporary directory", b"temporary directories");
        }
        line.push(b"\n");
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(128 + sig);
    }
}

/// A fixed buffer to format the handler's one line without allocating.
struct LineBuf {
    buf: [u8; 160],
    len: usize,
}

impl LineBuf {
    fn new() -> LineBuf {
        LineBuf { buf: [0; 160], len: 0 }
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_num(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let d = digits;
        self.push(&d[i..]);
    }

    /// A count and its noun, singular for one: "1 child", "2 children".
    fn push_count(&mut self, n: u64, one: &[u8], many: &[u8]) {
        self.push_num(n);
        self.push(b" ");
        self.push(if n == 1 { one } else { many });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handler_line_formats_numbers_without_allocating() {
        let mut l = LineBuf::new();
        l.push(b"n=");
        l.push_num(0);
        l.push(b",");
        l.push_num(1234567);
        assert_eq!(&l.buf[..l.len], b"n=0,1234567");
    }

    #[test]
    fn the_handler_line_counts_in_the_singular_for_one() {
        let mut l = LineBuf::new();
        for n in [0, 1, 2] {
            l.push_count(n, b"child", b"children");
            l.push(b";");
        }
        assert_eq!(&l.buf[..l.len], b"0 children;1 child;2 children;");
    }

    #[test]
    fn registries_take_and_release_slots() {
        register_child(999_999).unwrap();
        assert!(live_children() >= 1);
        forget_child(999_999);
        register_segment("/dev/shm/pvt-test-slot").unwrap();
        forget_segment("/dev/shm/pvt-test-slot");
        assert!(SEGMENTS.iter().all(|s| s.state.load(Ordering::SeqCst) != READY));
        register_temp_socket("/tmp/.tmpTEST/socket").unwrap();
        assert_eq!(DIRS.iter().filter(|s| s.state.load(Ordering::SeqCst) == READY).count(), 1);
        forget_temp_socket("/tmp/.tmpTEST/socket");
        assert!(TEMP_FILES.iter().chain(&DIRS).all(|s| s.state.load(Ordering::SeqCst) != READY));
        assert!(register_temp_socket("socket").is_err(), "no directory of its own");
    }
}
