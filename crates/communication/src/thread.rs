//! Communication between two threads of one process: they share every byte of memory and
//! every descriptor, so a message can be a value whose ownership moves (a channel), or bytes
//! written where the other thread reads them (a ring in any memory of the process). The
//! textbook says this is simpler and faster than IPC, but needs synchronisation; here the
//! synchronisation is the channel's own, or a futex on the ring's counters.
//!
//! The same pipe and the same socket pair as between processes are here too: they are the
//! controls. If a pipe between threads costs what a pipe between processes costs, the
//! difference lies in the mechanism, not in being a process.
//!
//! Every function starts the partner thread, hands it its end of one mechanism, and returns
//! the driver's end. Compare with process.rs: the same functions in the same order, and only
//! the lines marked "thread:" differ in mechanism.
//!
//! See also: links.rs, crossbeam-channel's `bounded`, std::sync::mpsc::sync_channel,
//! pthreads(7), futex(2).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result};
use harness::Ctx;
use harness::cpu::{Pinned, Placement};
use harness::mem::{Mapping, Sharing};
use nix::fcntl::OFlag;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::pipe2;

use crate::exchange::{self, Link, Partner, Session, Shape};
use crate::links::{self, Channel, Ring, Stream};
use crate::plumbing::{EndsFlag, Peer};

/// Two pipes, one each way, to a second thread.
pub fn pipe(ctx: &Ctx, place: Placement, _shape: Shape) -> Result<Session> {
    let (peer, ended) = thread_peer();
    // effort: pipe begin
    let (forth_rx, forth_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let (back_rx, back_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    links::hold_a_message(&[&forth_tx, &back_tx]);
    // thread: descriptors belong to the process, so the thread just takes its ends.
    let theirs = Stream::new("pipe", forth_rx, back_tx, Peer::Unknown)?;
    let link = Stream::new("pipe", back_rx, forth_tx, peer)?;
    let partner = spawn(ctx, place, theirs, ended)?;
    // effort: end
    Ok(Session { link: Box::new(link), partner, keep: Vec::new(), memory: None })
}

/// A Unix stream socket pair to a second thread.
pub fn socket(ctx: &Ctx, place: Placement, _shape: Shape) -> Result<Session> {
    let (peer, ended) = thread_peer();
    // effort: socket begin
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .context("socketpair AF_UNIX SOCK_STREAM")?;
    // thread: the thread takes its end, as it would any value.
    let theirs = Stream::new("socket pair", dup(&theirs)?, theirs, Peer::Unknown)?;
    let link = Stream::new("socket pair", dup(&ours)?, ours, peer)?;
    let partner = spawn(ctx, place, theirs, ended)?;
    // effort: end
    Ok(Session { link: Box::new(link), partner, keep: Vec::new(), memory: None })
}

/// std's bounded `mpsc::sync_channel`, one each way, to a second thread.
pub fn queue(ctx: &Ctx, place: Placement, shape: Shape) -> Result<Session> {
    let (peer, ended) = thread_peer();
    // effort: queue begin
    // thread: a queue is a value in our memory; nothing to name, open or remove.
    let (forth_tx, forth_rx) = std::sync::mpsc::sync_channel(shape.slots());
    let (back_tx, back_rx) = std::sync::mpsc::sync_channel(shape.slots());
    let (spare_forth_tx, spare_forth_rx) = std::sync::mpsc::sync_channel(shape.slots());
    let (spare_back_tx, spare_back_rx) = std::sync::mpsc::sync_channel(shape.slots());
    let what = "std mpsc channel";
    let theirs = Channel {
        what,
        tx: back_tx,
        rx: forth_rx,
        spare_rx: spare_back_rx,
        spare_tx: spare_forth_tx,
        peer: Peer::Unknown,
    };
    let partner = spawn(ctx, place, theirs, ended)?;
    let link = Channel { what, tx: forth_tx, rx: back_rx, spare_rx: spare_forth_rx, spare_tx: spare_back_tx, peer };
    // effort: end
    Ok(Session { link: Box::new(link), partner, keep: Vec::new(), memory: None })
}

/// crossbeam's bounded channels, one each way, to a second thread.
pub fn channel(ctx: &Ctx, place: Placement, shape: Shape) -> Result<Session> {
    let (peer, ended) = thread_peer();
    // effort: channel begin
    // thread: a channel is a value in our memory; a message is a value whose ownership moves.
    let (forth_tx, forth_rx) = crossbeam::channel::bounded(shape.slots());
    let (back_tx, back_rx) = crossbeam::channel::bounded(shape.slots());
    let (spare_forth_tx, spare_forth_rx) = crossbeam::channel::bounded(shape.slots());
    let (spare_back_tx, spare_back_rx) = crossbeam::channel::bounded(shape.slots());
    let what = "crossbeam channel";
    let theirs = Channel {
        what,
        tx: back_tx,
        rx: forth_rx,
        spare_rx: spare_back_rx,
        spare_tx: spare_forth_tx,
        peer: Peer::Unknown,
    };
    let partner = spawn(ctx, place, theirs, ended)?;
    let link = Channel { what, tx: forth_tx, rx: back_rx, spare_rx: spare_forth_rx, spare_tx: spare_back_tx, peer };
    // effort: end
    Ok(Session { link: Box::new(link), partner, keep: Vec::new(), memory: None })
}

/// Two rings in memory of this process, shared in place with a second thread.
pub fn ring(ctx: &Ctx, place: Placement, shape: Shape) -> Result<Session> {
    let (peer, ended) = thread_peer();
    // effort: ring begin
    // thread: any memory of the process is shared; nothing is named, nothing to unlink. The
    // mapping is MAP_SHARED, the kind of memory the segment is, so that the futex ops
    // (the shared ones, as between processes: links::RING_OPS) find the same kind of page.
    let layout = shape.ring();
    let memory = Arc::new(Mapping::anonymous(layout.bytes(), Sharing::Shared)?);
    // Base pages only, as on the process side: a huge page would make the two rings unlike.
    memory.no_huge_pages()?;
    // Safety: the mapping is page-aligned, zero-filled and layout.bytes() long, and each Ring
    // holds it (the Arc) for as long as it lives.
    let theirs = unsafe { Ring::new(memory.as_ptr(), layout, false, Peer::Unknown, Some(memory.clone())) };
    let partner = spawn(ctx, place, theirs, ended)?;
    // Safety: as above.
    let link = unsafe { Ring::new(memory.as_ptr(), layout, true, peer, Some(memory.clone())) };
    // effort: end
    Ok(Session { link: Box::new(link), partner, keep: Vec::new(), memory: Some(memory.as_ptr() as usize) })
}

/// Starts the partner thread on its link.
fn spawn(ctx: &Ctx, place: Placement, link: impl Link + 'static, ended: EndsFlag) -> Result<Partner> {
    let deadline: Duration = ctx.deadline();
    let flag = ended.0.clone();
    // thread: a new task in this address space; it gets its end of the link by a move.
    let handle = std::thread::Builder::new()
        .name("partner".into())
        .spawn(move || {
            let _ended = ended;
            let _pinned = Pinned::to(place.partner)?;
            let mut link = link;
            exchange::serve(&mut link, deadline)
        })
        .context("spawning the partner thread")?;
    Ok(Partner::Thread(handle, flag))
}

/// The driver's view of a partner thread, and the flag the thread will set as it ends.
fn thread_peer() -> (Peer, EndsFlag) {
    let ended = Arc::new(AtomicBool::new(false));
    (Peer::Thread(ended.clone()), EndsFlag(ended))
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone().context("dup")
}
