//! The mechanisms, each as a [`Link`]: how one message gets from one task to the other.
//!
//! - [`Stream`]: a byte stream through the kernel (a pair of pipes, or a Unix socket pair);
//!   the same code serves processes and threads, which is what makes it the control.
//! - [`Ring`]: a ring of message slots in memory both tasks see, with a futex to sleep on;
//!   between processes the memory is a named segment, between threads a shared mapping of
//!   the process; both use the shared futex ops, so that only the address space differs.
//! - [`MessageQueue`]: a POSIX message queue (processes only: it is a kernel object).
//! - [`IpcChannel`]: ipc-channel's typed channel over a Unix socket (processes).
//! - [`Channel`]: a bounded crossbeam channel, or std's `mpsc::sync_channel` (threads): a
//!   message is a value whose ownership moves; nothing is copied.
//!
//! The regions between `effort:` markers are what each mechanism takes to carry a message;
//! the effort experiment counts their lines (main.rs).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::poll::PollFlags;

use crate::exchange::{CONTROL_BYTES, Control, Link, truncated, wait_for};
use crate::plumbing::Peer;
use harness::futex::{self, Ops};
use harness::mem::PageBuf;

fn control_bytes(message: &Control) -> [u8; CONTROL_BYTES] {
    let mut bytes = [0u8; CONTROL_BYTES];
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(message) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    bytes
}

fn control_from(bytes: &[u8]) -> Control {
    let mut message = [0u64; 8];
    for (word, chunk) in message.iter_mut().zip(bytes.chunks_exact(8)) {
        *word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
    }
    message
}

fn poll_for(fd: RawFd, events: PollFlags, slice: Duration) -> Result<bool> {
    // Safety: the descriptor is open for the duration of the call (our caller owns it).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    harness::poll::ready(fd, events, slice.max(Duration::from_millis(1)))
}

/// What each pipe is asked to hold (F_SETPIPE_SZ; the default is 64 KiB): one bulk message,
/// so that a writer on the same CPU as its reader switches once per message of 1 MiB.
pub const PIPE_BYTES: usize = 1 << 20;

/// Asks each pipe to hold [`PIPE_BYTES`] and returns what the smallest of them holds now
/// (`harness::pipe::ask_to_hold`: best effort); the bulk control reports what a pipe held
/// (`pipe_bytes`).
pub fn hold_a_message(pipes: &[&OwnedFd]) -> usize {
    let fds: Vec<_> = pipes.iter().map(|p| p.as_fd()).collect();
    harness::pipe::ask_to_hold(&fds, PIPE_BYTES)
}

// effort: stream begin
/// A byte stream each way: two pipes, or one Unix socket (then `rx` and `tx` are the same
/// socket). Descriptors are non-blocking, so that every wait is a poll(2) with a deadline.
pub struct Stream {
    pub what: &'static str,
    pub rx: File,
    pub tx: File,
    pub peer: Peer,
    buf: PageBuf,
}

impl Stream {
    pub fn new(what: &'static str, rx: OwnedFd, tx: OwnedFd, peer: Peer) -> Result<Stream> {
        for fd in [rx.as_fd(), tx.as_fd()] {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
                .context("fcntl O_NONBLOCK")?;
        }
        Ok(Stream { what, rx: File::from(rx), tx: File::from(tx), peer, buf: PageBuf::default() })
    }

    fn write_all(&mut self, mut bytes: &[u8], deadline: Instant) -> Result<()> {
        while !bytes.is_empty() {
            match self.tx.write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let fd = self.tx.as_raw_fd();
                    wait_for(self.what, &self.peer, deadline, |s| {
                        Ok(poll_for(fd, PollFlags::POLLOUT, s)?.then_some(()))
                    })?
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("write(2) to the {}", self.what)),
            }
        }
        Ok(())
    }

    fn read_exact(rx: &mut File, what: &'static str, peer: &Peer, into: &mut [u8], deadline: Instant) -> Result<()> {
        let mut got = 0;
        while got < into.len() {
            match rx.read(&mut into[got..]) {
                Ok(0) if got == 0 => bail!("the partner closed the {what}"),
                Ok(0) => return Err(truncated(what, got, into.len()).context("the partner ended mid-message")),
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let fd = rx.as_raw_fd();
                    wait_for(what, peer, deadline, |s| Ok(poll_for(fd, PollFlags::POLLIN, s)?.then_some(())))?
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("read(2) from the {what}")),
            }
        }
        Ok(())
    }
}

impl Link for Stream {
    fn send_control(&mut self, message: &Control) -> Result<()> {
        self.write_all(&control_bytes(message), Instant::now() + crate::exchange::SLICE * 600)
    }

    fn recv_control(&mut self, deadline: Instant) -> Result<Control> {
        let mut bytes = [0u8; CONTROL_BYTES];
        Stream::read_exact(&mut self.rx, self.what, &self.peer, &mut bytes, deadline)?;
        Ok(control_from(&bytes))
    }

    fn send_bulk(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        // The message is written into our own buffer, then copied into the kernel's.
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len);
        fill(&mut buf);
        let sent = self.write_all(&buf, Instant::now() + crate::exchange::SLICE * 600);
        self.buf = buf;
        sent
    }

    fn recv_bulk(&mut self, len: usize, deadline: Instant, read: &mut dyn FnMut(&[u8])) -> Result<()> {
        // And copied out of the kernel's buffer into ours on the other side.
        self.buf.resize(len);
        Stream::read_exact(&mut self.rx, self.what, &self.peer, &mut self.buf, deadline)?;
        read(&self.buf);
        Ok(())
    }

    fn send_truncated(&mut self) -> Result<()> {
        self.write_all(&[0u8; CONTROL_BYTES / 2], Instant::now() + crate::exchange::SLICE * 10)
    }
}
// effort: end

/// The most slots a ring has; their lengths live in the ring's header page.
const MAX_SLOTS: usize = 1000;

/// One direction of a [`Ring`]: the producer owns `head`, the consumer `tail`.
#[repr(C)]
struct RingHeader {
    head: AtomicU32,
    tail: AtomicU32,
    consumer_waits: AtomicU32,
    producer_waits: AtomicU32,
    gone: AtomicU32,
    lens: [AtomicU32; MAX_SLOTS],
}

const HEADER_BYTES: usize = 4096;
const _: () = assert!(size_of::<RingHeader>() <= HEADER_BYTES);

/// Where the two rings of a [`Ring`] lie in one region of memory.
#[derive(Debug, Clone, Copy)]
pub struct RingLayout {
    /// Slots and slot size, driver to partner and back.
    pub forth: (usize, usize),
    pub back: (usize, usize),
}

impl RingLayout {
    pub fn bytes(&self) -> usize {
        2 * HEADER_BYTES + self.forth.0 * self.forth.1 + self.back.0 * self.back.1
    }
}

#[derive(Clone, Copy)]
struct RingRef {
    header: *const RingHeader,
    slots: *mut u8,
    count: u32,
    slot_bytes: usize,
}

impl RingRef {
    fn header(&self) -> &RingHeader {
        // Safety: `header` points into a mapping that outlives every Ring made on it (see
        // Ring::new), is page-aligned, zero-filled at creation (a valid RingHeader: all
        // atomics), and is only accessed through atomics.
        unsafe { &*self.header }
    }

    fn slot(&self, index: u32) -> *mut u8 {
        // Safety: index < count, so the slot lies inside the mapping (RingLayout::bytes).
        unsafe { self.slots.add((index % self.count) as usize * self.slot_bytes) }
    }
}

/// The futex ops of both sides' rings: the shared ones, the only ones that wake another
/// process. Threads could use the `_PRIVATE` ops, which skip the lookup of the word's page;
/// switching's futex-private measures what that saves. Here both sides use the same ops, so
/// that the ring's verdict measures being a process, not the futex flavour.
const RING_OPS: Ops = futex::SHARED;

// effort: ring begin
/// Two rings of slots in memory both tasks see, one each way: the shared-memory mechanism.
/// A message is written into a slot in place and read from it in place (zero-copy); the
/// futex word is the ring's head (or tail) itself, so a task sleeps only when it must.
pub struct Ring {
    out: RingRef,
    inn: RingRef,
    peer: Peer,
    _keep: Option<Arc<harness::mem::Mapping>>,
}

// Safety: the rings are in memory that lives as long as the Ring (`_keep`, or a segment the
// session holds until the partner has ended); every shared word is an atomic, and each slot
// belongs to one side at a time, handed over by the release/acquire of head and tail.
unsafe impl Send for Ring {}

impl Ring {
    /// The driver's end (`driver`) or the partner's, on `layout` at `base`.
    ///
    /// # Safety
    /// `base` must point to a zero-filled mapping of at least `layout.bytes()` bytes, aligned
    /// to a page, that stays mapped as long as the Ring: `keep` holds it, or the caller does.
    pub unsafe fn new(
        base: *mut u8,
        layout: RingLayout,
        driver: bool,
        peer: Peer,
        keep: Option<Arc<harness::mem::Mapping>>,
    ) -> Ring {
        let forth = RingRef {
            header: base.cast(),
            // Safety: inside the mapping (layout.bytes()).
            slots: unsafe { base.add(HEADER_BYTES) },
            count: layout.forth.0 as u32,
            slot_bytes: layout.forth.1,
        };
        // Safety: as above.
        let back_base = unsafe { base.add(HEADER_BYTES + layout.forth.0 * layout.forth.1) };
        let back = RingRef {
            header: back_base.cast(),
            // Safety: as above.
            slots: unsafe { back_base.add(HEADER_BYTES) },
            count: layout.back.0 as u32,
            slot_bytes: layout.back.1,
        };
        let (out, inn) = if driver { (forth, back) } else { (back, forth) };
        Ring { out, inn, peer, _keep: keep }
    }

    fn send(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        let ring = self.out;
        let h = ring.header();
        ensure!(len <= ring.slot_bytes, "a message of {len} bytes does not fit a slot of {}", ring.slot_bytes);
        let head = h.head.load(Ordering::Relaxed);
        // Wait for a free slot: back-pressure when the consumer is behind.
        let deadline = Instant::now() + crate::exchange::SLICE * 600;
        wait_for("shared-memory ring", &self.peer, deadline, |slice| {
            let ready = || head.wrapping_sub(h.tail.load(Ordering::SeqCst)) < ring.count;
            sleep_until(&h.tail, &h.producer_waits, &h.gone, ready, slice)
        })?;
        // Safety: the slot at `head` is ours until we publish it: the consumer reads only
        // slots below head, and it freed this one (tail moved past it) before we got here.
        let slot = unsafe { std::slice::from_raw_parts_mut(ring.slot(head), len) };
        fill(slot);
        h.lens[(head % ring.count) as usize].store(len as u32, Ordering::Relaxed);
        h.head.store(head.wrapping_add(1), Ordering::SeqCst);
        if h.consumer_waits.load(Ordering::SeqCst) != 0 {
            let _ = futex::wake(&h.head, u32::MAX, RING_OPS);
        }
        Ok(())
    }

    fn recv(&mut self, len: usize, deadline: Instant, read: &mut dyn FnMut(&[u8])) -> Result<()> {
        let ring = self.inn;
        let h = ring.header();
        let tail = h.tail.load(Ordering::Relaxed);
        wait_for("shared-memory ring", &self.peer, deadline, |slice| {
            let ready = || h.head.load(Ordering::SeqCst) != tail;
            sleep_until(&h.head, &h.consumer_waits, &h.gone, ready, slice)
        })?;
        let got = h.lens[(tail % ring.count) as usize].load(Ordering::Relaxed) as usize;
        if got != len {
            return Err(truncated("shared-memory ring", got, len));
        }
        // Safety: the producer published this slot (head moved past it, acquire above) and
        // will not touch it again until we move tail past it.
        read(unsafe { std::slice::from_raw_parts(ring.slot(tail), len) });
        h.tail.store(tail.wrapping_add(1), Ordering::SeqCst);
        if h.producer_waits.load(Ordering::SeqCst) != 0 {
            let _ = futex::wake(&h.tail, u32::MAX, RING_OPS);
        }
        Ok(())
    }
}

/// Sleeps on `word` for up to `slice` unless `ready()`; Some(()) once ready. The waiter
/// raises its flag, then looks again, and the other side looks at the flag after moving the
/// word (both sequentially consistent), so a wake-up is never lost.
fn sleep_until(
    word: &AtomicU32,
    waits: &AtomicU32,
    gone: &AtomicU32,
    ready: impl Fn() -> bool,
    slice: Duration,
) -> Result<Option<()>> {
    if ready() {
        return Ok(Some(()));
    }
    let seen = word.load(Ordering::SeqCst);
    waits.store(1, Ordering::SeqCst);
    if !ready() && gone.load(Ordering::SeqCst) == 0 {
        match futex::wait(word, seen, RING_OPS, Some(slice)) {
            Ok(()) | Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR | nix::errno::Errno::ETIMEDOUT) => {}
            Err(e) => return Err(e).context("futex FUTEX_WAIT"),
        }
    }
    waits.store(0, Ordering::SeqCst);
    if ready() {
        return Ok(Some(()));
    }
    ensure!(gone.load(Ordering::SeqCst) == 0, "the partner left the shared-memory ring");
    Ok(None)
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Leaving: whoever waits on either ring wakes up and finds us gone.
        for ring in [self.out, self.inn] {
            let h = ring.header();
            h.gone.store(1, Ordering::SeqCst);
            let _ = futex::wake(&h.head, u32::MAX, RING_OPS);
            let _ = futex::wake(&h.tail, u32::MAX, RING_OPS);
        }
    }
}

impl Link for Ring {
    fn send_control(&mut self, message: &Control) -> Result<()> {
        let bytes = control_bytes(message);
        self.send(CONTROL_BYTES, &mut |slot| slot.copy_from_slice(&bytes))
    }

    fn recv_control(&mut self, deadline: Instant) -> Result<Control> {
        let mut message = [0u64; 8];
        self.recv(CONTROL_BYTES, deadline, &mut |slot| message = control_from(slot))?;
        Ok(message)
    }

    fn send_bulk(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        self.send(len, fill)
    }

    fn recv_bulk(&mut self, len: usize, deadline: Instant, read: &mut dyn FnMut(&[u8])) -> Result<()> {
        self.recv(len, deadline, read)
    }

    fn send_truncated(&mut self) -> Result<()> {
        self.send(CONTROL_BYTES / 2, &mut |slot| slot.fill(0))
    }
}
// effort: end

// effort: queue begin
/// Two POSIX message queues, one each way (mq_overview(7)): every message is copied into the
/// kernel and out again, and keeps its boundaries.
pub struct MessageQueue {
    pub tx: RawFd,
    pub rx: RawFd,
    pub peer: Peer,
    buf: Vec<u8>,
}

/// An absolute CLOCK_REALTIME time `slice` from now: what mq_timed*(3) want.
fn realtime_in(slice: Duration) -> libc::timespec {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).expect("CLOCK_REALTIME");
    let at = Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32) + slice;
    libc::timespec { tv_sec: at.as_secs() as libc::time_t, tv_nsec: at.subsec_nanos() as _ }
}

impl MessageQueue {
    pub fn new(tx: RawFd, rx: RawFd, peer: Peer, message_bytes: usize) -> MessageQueue {
        MessageQueue { tx, rx, peer, buf: vec![0; message_bytes] }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let deadline = Instant::now() + crate::exchange::SLICE * 600;
        let tx = self.tx;
        wait_for("message queue", &self.peer, deadline, |slice| {
            let at = realtime_in(slice);
            // Safety: mq_timedsend(3) reads `bytes` and `at`, both valid for the call.
            let r = unsafe { libc::mq_timedsend(tx, bytes.as_ptr().cast(), bytes.len(), 0, &at) };
            match nix::errno::Errno::result(r) {
                Ok(_) => Ok(Some(())),
                Err(nix::errno::Errno::ETIMEDOUT | nix::errno::Errno::EINTR) => Ok(None),
                Err(e) => Err(e).context("mq_timedsend"),
            }
        })
    }

    fn recv(&mut self, len: usize, deadline: Instant) -> Result<&[u8]> {
        let (rx, buf) = (self.rx, &mut self.buf);
        let got = wait_for("message queue", &self.peer, deadline, |slice| {
            let at = realtime_in(slice);
            // Safety: mq_timedreceive(3) writes at most buf.len() bytes (the queue's message
            // size) into `buf`, valid for the call.
            let r = unsafe { libc::mq_timedreceive(rx, buf.as_mut_ptr().cast(), buf.len(), std::ptr::null_mut(), &at) };
            match nix::errno::Errno::result(r) {
                Ok(n) => Ok(Some(n as usize)),
                Err(nix::errno::Errno::ETIMEDOUT | nix::errno::Errno::EINTR) => Ok(None),
                Err(e) => Err(e).context("mq_timedreceive"),
            }
        })?;
        if got != len {
            return Err(truncated("message queue", got, len));
        }
        Ok(&self.buf[..len])
    }
}

impl Link for MessageQueue {
    fn send_control(&mut self, message: &Control) -> Result<()> {
        self.send(&control_bytes(message))
    }

    fn recv_control(&mut self, deadline: Instant) -> Result<Control> {
        self.recv(CONTROL_BYTES, deadline).map(control_from)
    }

    fn send_bulk(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        fill(&mut buf[..len]);
        let sent = self.send(&buf[..len]);
        self.buf = buf;
        sent
    }

    fn recv_bulk(&mut self, len: usize, deadline: Instant, read: &mut dyn FnMut(&[u8])) -> Result<()> {
        read(self.recv(len, deadline)?);
        Ok(())
    }

    fn send_truncated(&mut self) -> Result<()> {
        self.send(&[0u8; CONTROL_BYTES / 2])
    }
}
// effort: end

// effort: ipc-channel begin
/// What travels over ipc-channel: typed values, serialized with bincode by the sender and
/// deserialized by the receiver.
#[derive(serde::Serialize, serde::Deserialize)]
pub enum IpcMessage {
    /// The partner's first message: where to send it commands.
    Hello(ipc_channel::ipc::IpcSender<IpcMessage>),
    Control(Control),
    Bytes(Bytes),
}

/// A byte buffer serialized as one byte string (one copy), not as a sequence of numbers.
pub struct Bytes(pub Vec<u8>);

impl serde::Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

/// ipc-channel's typed channels, one each way (a Unix SOCK_SEQPACKET socket underneath).
pub struct IpcChannel {
    pub tx: ipc_channel::ipc::IpcSender<IpcMessage>,
    pub rx: ipc_channel::ipc::IpcReceiver<IpcMessage>,
    pub peer: Peer,
}

impl IpcChannel {
    fn recv(&mut self, deadline: Instant) -> Result<IpcMessage> {
        use ipc_channel::TryRecvError;
        wait_for("ipc-channel", &self.peer, deadline, |slice| match self.rx.try_recv_timeout(slice) {
            Ok(m) => Ok(Some(m)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::IpcError(ipc_channel::IpcError::Disconnected)) => {
                bail!("the partner closed the ipc-channel")
            }
            Err(TryRecvError::IpcError(e)) => Err(anyhow!("{e}")).context("receiving on the ipc-channel"),
        })
    }

    fn send(&mut self, message: IpcMessage) -> Result<()> {
        self.tx.send(message).map_err(|e| anyhow!("{e}")).context("sending on the ipc-channel")
    }
}

impl Link for IpcChannel {
    fn send_control(&mut self, message: &Control) -> Result<()> {
        self.send(IpcMessage::Control(*message))
    }

    fn recv_control(&mut self, deadline: Instant) -> Result<Control> {
        match self.recv(deadline)? {
            IpcMessage::Control(c) => Ok(c),
            IpcMessage::Bytes(b) => Err(truncated("ipc-channel", b.0.len(), CONTROL_BYTES)),
            IpcMessage::Hello(_) => bail!("a second hello on the ipc-channel"),
        }
    }

    fn send_bulk(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        // The sender gives up its buffer: it is serialized (copied) into the socket.
        let mut buf = vec![0u8; len];
        fill(&mut buf);
        self.send(IpcMessage::Bytes(Bytes(buf)))
    }

    fn recv_bulk(&mut self, len: usize, deadline: Instant, read: &mut dyn FnMut(&[u8])) -> Result<()> {
        match self.recv(deadline)? {
            IpcMessage::Bytes(b) if b.0.len() == len => {
                read(&b.0);
                Ok(())
            }
            IpcMessage::Bytes(b) => Err(truncated("ipc-channel", b.0.len(), len)),
            _ => bail!("expected a bulk message on the ipc-channel"),
        }
    }

    fn send_truncated(&mut self) -> Result<()> {
        self.send(IpcMessage::Bytes(Bytes(vec![0; CONTROL_BYTES / 2])))
    }
}
// effort: end

// effort: channel begin
/// What travels over a thread channel: the value itself, moved, never copied.
pub enum Message {
    Control(Control),
    Bytes(Vec<u8>),
}

/// A bounded channel each way between threads, and a way back for spent buffers so that
/// bulk messages reuse their memory. `Tx`/`Rx` are crossbeam's or std's.
pub struct Channel<Tx, Rx> {
    pub what: &'static str,
    pub tx: Tx,
    pub rx: Rx,
    /// Buffers the other side is done with, and where ours go when we are done.
    pub spare_rx: Rx,
    pub spare_tx: Tx,
    pub peer: Peer,
}

/// The little that differs between crossbeam's channels and std's.
pub trait Bounded: Send {
    /// Sends `m`, waiting up to `slice` for room; gives it back if there was none.
    fn put(&self, m: Message, slice: Duration) -> Result<Option<Message>, ()>;
    fn put_now(&self, m: Message);
}
pub trait Take: Send {
    fn take(&self, slice: Duration) -> Result<Option<Message>, ()>;
    fn take_now(&self) -> Option<Message>;
}

// effort: end

// effort: crossbeam begin
impl Bounded for crossbeam::channel::Sender<Message> {
    fn put(&self, m: Message, slice: Duration) -> Result<Option<Message>, ()> {
        match self.send_timeout(m, slice) {
            Ok(()) => Ok(None),
            Err(crossbeam::channel::SendTimeoutError::Timeout(m)) => Ok(Some(m)),
            Err(crossbeam::channel::SendTimeoutError::Disconnected(_)) => Err(()),
        }
    }
    fn put_now(&self, m: Message) {
        let _ = self.try_send(m);
    }
}
impl Take for crossbeam::channel::Receiver<Message> {
    fn take(&self, slice: Duration) -> Result<Option<Message>, ()> {
        match self.recv_timeout(slice) {
            Ok(m) => Ok(Some(m)),
            Err(crossbeam::channel::RecvTimeoutError::Timeout) => Ok(None),
            Err(crossbeam::channel::RecvTimeoutError::Disconnected) => Err(()),
        }
    }
    fn take_now(&self) -> Option<Message> {
        self.try_recv().ok()
    }
}
// effort: end

// effort: mpsc begin
impl Bounded for std::sync::mpsc::SyncSender<Message> {
    fn put(&self, mut m: Message, slice: Duration) -> Result<Option<Message>, ()> {
        // std's SyncSender has no send with a timeout: try, and give the CPU to the receiver
        // while the channel is full.
        let until = Instant::now() + slice;
        loop {
            match self.try_send(m) {
                Ok(()) => return Ok(None),
                Err(std::sync::mpsc::TrySendError::Full(back)) if Instant::now() < until => m = back,
                Err(std::sync::mpsc::TrySendError::Full(back)) => return Ok(Some(back)),
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(()),
            }
            std::thread::yield_now();
        }
    }
    fn put_now(&self, m: Message) {
        let _ = self.try_send(m);
    }
}
impl Take for std::sync::mpsc::Receiver<Message> {
    fn take(&self, slice: Duration) -> Result<Option<Message>, ()> {
        match self.recv_timeout(slice) {
            Ok(m) => Ok(Some(m)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(()),
        }
    }
    fn take_now(&self) -> Option<Message> {
        self.try_recv().ok()
    }
}

// effort: end

// effort: channel begin
impl<Tx: Bounded, Rx: Take> Channel<Tx, Rx> {
    fn send(&mut self, m: Message) -> Result<()> {
        // A bounded channel holds the sender back while it is full: back-pressure.
        let (tx, what, mut pending) = (&self.tx, self.what, Some(m));
        wait_for(what, &self.peer, Instant::now() + crate::exchange::SLICE * 600, |slice| {
            let m = pending.take().expect("a message is pending until sent");
            pending = tx.put(m, slice).map_err(|()| anyhow!("the partner closed the {what}"))?;
            Ok(pending.is_none().then_some(()))
        })
    }

    fn recv(&mut self, deadline: Instant) -> Result<Message> {
        let (rx, what) = (&self.rx, self.what);
        wait_for(what, &self.peer, deadline, |slice| {
            rx.take(slice).map_err(|()| anyhow!("the partner closed the {what}"))
        })
    }
}

impl<Tx: Bounded, Rx: Take> Link for Channel<Tx, Rx> {
    fn send_control(&mut self, message: &Control) -> Result<()> {
        self.send(Message::Control(*message))
    }

    fn recv_control(&mut self, deadline: Instant) -> Result<Control> {
        match self.recv(deadline)? {
            Message::Control(c) => Ok(c),
            Message::Bytes(b) => Err(truncated(self.what, b.len(), CONTROL_BYTES)),
        }
    }

    fn send_bulk(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        let mut buf = match self.spare_rx.take_now() {
            Some(Message::Bytes(b)) => b,
            _ => Vec::new(),
        };
        buf.resize(len, 0);
        fill(&mut buf);
        self.send(Message::Bytes(buf))
    }

    fn recv_bulk(&mut self, len: usize, deadline: Instant, read: &mut dyn FnMut(&[u8])) -> Result<()> {
        match self.recv(deadline)? {
            Message::Bytes(b) if b.len() == len => {
                read(&b);
                // The spent buffer goes back to the sender, or is dropped if it has enough.
                self.spare_tx.put_now(Message::Bytes(b));
                Ok(())
            }
            Message::Bytes(b) => Err(truncated(self.what, b.len(), len)),
            Message::Control(_) => bail!("expected a bulk message on the {}", self.what),
        }
    }

    fn send_truncated(&mut self) -> Result<()> {
        self.send(Message::Bytes(vec![0; CONTROL_BYTES / 2]))
    }
}
// effort: end
