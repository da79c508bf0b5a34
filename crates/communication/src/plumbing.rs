//! Plumbing only this row needs: a cheap "is the partner still alive?" check, POSIX message
//! queues with the naming, cleanup and stale-removal rules of `harness::shm::Segment`, and
//! ipc-channel's rendezvous registered for the interrupt cleanup.

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use harness::cleanup::MQUEUE_DIR;
use ipc_channel::ipc::IpcOneShotServer;
use nix::mqueue::{MQ_OFlag, MqAttr, MqdT, mq_open, mq_unlink};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::Mode;

/// Is the task on the other end still there? Asked only when a wait has gone on for a while,
/// so that a partner that died shows as an error at once instead of at the deadline.
#[derive(Clone)]
pub enum Peer {
    /// A child process, watched through a pidfd (pidfd_open(2)): readable once it ended.
    Process(Arc<OwnedFd>),
    /// A thread, which sets the flag as it ends (even by a panic: see [`EndsFlag`]).
    Thread(Arc<AtomicBool>),
    /// Nobody to ask: the other end's own end (end of file, a closed channel) will tell.
    Unknown,
}

impl Peer {
    /// A peer that is the child process `pid`, not yet reaped.
    pub fn process(pid: i32) -> Result<Peer> {
        Ok(Peer::Process(Arc::new(harness::child::pidfd(pid)?)))
    }

    pub fn alive(&self) -> bool {
        match self {
            Peer::Process(fd) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
            }
            Peer::Thread(ended) => !ended.load(Ordering::Acquire),
            Peer::Unknown => true,
        }
    }
}

/// Why this row must fork no more, once a partner thread could not be joined: a fork copies
/// only the forking thread, and a lock the other one held would stay locked in the child.
static FORKS_REFUSED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// From now on, every process side of this row is refused, saying `why`.
pub fn refuse_forks(why: String) {
    let mut refused = FORKS_REFUSED.lock().unwrap_or_else(|e| e.into_inner());
    refused.get_or_insert(why);
}

/// Fails when a thread of an earlier session may still be running: checked before every fork.
pub fn ensure_forks_allowed() -> Result<()> {
    let refused = FORKS_REFUSED.lock().unwrap_or_else(|e| e.into_inner());
    match &*refused {
        Some(why) => anyhow::bail!("this row forks no more: {why}"),
        None => Ok(()),
    }
}

/// Sets its flag when dropped: a thread holds one, so that its end, by return or by panic,
/// is seen by [`Peer::Thread`].
pub struct EndsFlag(pub Arc<AtomicBool>);

impl Drop for EndsFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A POSIX message queue of this project: named like a segment (`/pvt-<pid>-<random>`),
/// created exclusively with mode 0600, and unlinked by its creator as soon as every side has
/// it open (a forked child inherits the descriptor, so right after the fork). Where the
/// mqueue file system is mounted (/dev/mqueue), the name is also registered with the harness's
/// interrupt cleanup, which unlinks it like a segment, and stale queues of dead owners are
/// removed at start.
pub struct Queue {
    pub mqd: MqdT,
    name: String,
    unlinked: bool,
}

impl Queue {
    /// Creates a queue for `capacity` messages of up to `message_bytes` each.
    pub fn create(capacity: usize, message_bytes: usize) -> Result<Queue> {
        let name = format!("/{}{}-{:016x}", harness::cleanup::SEGMENT_PREFIX, std::process::id(), random_u64());
        let mounted = harness::cleanup::mqueue_mounted();
        if mounted {
            harness::cleanup::register_segment(&format!("{MQUEUE_DIR}{name}"))?;
        }
        let attr = MqAttr::new(0, capacity as _, message_bytes as _, 0);
        let flags = MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDWR | MQ_OFlag::O_CLOEXEC;
        let mqd = mq_open(name.as_str(), flags, Mode::S_IRUSR | Mode::S_IWUSR, Some(&attr)).with_context(|| {
            harness::cleanup::forget_segment(&format!("{MQUEUE_DIR}{name}"));
            format!(
                "mq_open {name} for {capacity} messages of {message_bytes} bytes (the limits are \
                 /proc/sys/fs/mqueue/msg_max and msgsize_max)"
            )
        })?;
        Ok(Queue { mqd, name, unlinked: false })
    }

    pub fn raw_fd(&self) -> RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.mqd)
    }

    /// Removes the name (mq_unlink(3)); the open descriptors keep the queue alive.
    pub fn unlink(&mut self) -> Result<()> {
        if self.unlinked {
            return Ok(());
        }
        self.unlinked = true;
        harness::cleanup::forget_segment(&format!("{MQUEUE_DIR}{}", self.name));
        mq_unlink(self.name.as_str()).with_context(|| format!("mq_unlink {}", self.name))
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let _ = self.unlink();
    }
}

/// The largest message a queue may hold here, as the kernel says (mq_overview(7)).
pub fn queue_message_limit() -> Result<usize> {
    let text = std::fs::read_to_string("/proc/sys/fs/mqueue/msgsize_max").context("reading msgsize_max")?;
    text.trim().parse().context("parsing msgsize_max")
}

/// The most messages a queue may hold here.
pub fn queue_capacity_limit() -> Result<usize> {
    let text = std::fs::read_to_string("/proc/sys/fs/mqueue/msg_max").context("reading msg_max")?;
    text.trim().parse().context("parsing msg_max")
}

/// Removes queues of our prefix whose owner is gone, where /dev/mqueue shows them.
pub fn remove_stale_queues() -> Result<usize> {
    let Ok(dir) = std::fs::read_dir(MQUEUE_DIR) else { return Ok(0) };
    let mut removed = 0;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(harness::cleanup::SEGMENT_PREFIX) else { continue };
        let Some(pid) = rest.split_once('-').and_then(|(p, _)| p.parse::<i32>().ok()) else { continue };
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH);
        if gone {
            // Another run starting now may remove it first: then it is gone, as wanted.
            match mq_unlink(format!("/{name}").as_str()) {
                Ok(()) => removed += 1,
                Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(e).with_context(|| format!("removing stale queue {name}")),
            }
        }
    }
    Ok(removed)
}

fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // Safety: getrandom(2) fills our buffer of the given length.
    unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    u64::from_ne_bytes(buf)
}

/// ipc-channel's one-shot server. Its rendezvous, a socket alone in a new directory under
/// $TMPDIR, is registered with the harness's interrupt cleanup from before it exists until the
/// server is gone: the server removes both when it is dropped, but an interrupt ends the row
/// without running destructors, and the directory would stay behind.
pub struct Rendezvous<T> {
    server: Option<IpcOneShotServer<T>>,
    name: String,
}

impl<T> Rendezvous<T>
where
    T: for<'de> serde::Deserialize<'de> + serde::Serialize,
{
    pub fn new() -> Result<Rendezvous<T>> {
        harness::cleanup::with_signals_blocked(|| {
            let (server, name) = IpcOneShotServer::<T>::new().context("IpcOneShotServer::new")?;
            // On an error the server goes here, and its socket and directory with it.
            harness::cleanup::register_temp_socket(&name)?;
            Ok(Rendezvous { server: Some(server), name })
        })
    }

    /// The name the other program connects to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server, to accept one connection; dropped, it removes the socket and directory.
    pub fn take(&mut self) -> Result<IpcOneShotServer<T>> {
        self.server.take().context("the rendezvous was already used")
    }
}

impl<T> Drop for Rendezvous<T> {
    fn drop(&mut self) {
        // The server first, which removes the socket and its directory; then the registration.
        drop(self.server.take());
        harness::cleanup::forget_temp_socket(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_is_ours_private_and_its_name_goes_at_unlink() {
        let mut q = Queue::create(2, 64).unwrap();
        assert!(q.name.starts_with(&format!("/pvt-{}-", std::process::id())), "{}", q.name);
        nix::mqueue::mq_send(&q.mqd, b"hello", 0).unwrap();
        q.unlink().unwrap();
        // The name is gone, the queue is not: our descriptor still reads the message.
        let mut buf = [0u8; 64];
        let n = nix::mqueue::mq_receive(&q.mqd, &mut buf, &mut 0).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let again = mq_open(q.name.as_str(), MQ_OFlag::O_RDWR, Mode::empty(), None);
        assert_eq!(again.err(), Some(nix::errno::Errno::ENOENT));
    }

    #[test]
    fn a_thread_peer_is_seen_to_end_even_by_panic() {
        let flag = Arc::new(AtomicBool::new(false));
        let peer = Peer::Thread(flag.clone());
        assert!(peer.alive());
        let ends = EndsFlag(flag);
        let _ = std::thread::spawn(move || {
            let _ends = ends;
            panic!("on purpose");
        })
        .join();
        assert!(!peer.alive());
    }
}
