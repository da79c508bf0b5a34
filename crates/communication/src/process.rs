//! Communication between two processes: they share no memory, so every message goes through
//! something both asked the kernel for: a pipe, a socket pair, a message queue, a channel
//! built on a socket (ipc-channel), or a segment of memory mapped on purpose. The textbook
//! says this is more work to set up and slower than what threads do; this file shows the work
//! (the lines between the `effort:` markers, counted by the effort experiment) and the numbers
//! it produces show the speed.
//!
//! Every function starts the partner process, hands it its end of one mechanism, and returns
//! the driver's end. The partner runs `exchange::serve`: the same loop for every mechanism.
//! Compare with thread.rs: the same functions in the same order (this file adds
//! `ipc_partner`, the program `channel` starts with exec), and only the lines marked
//! "process:" differ in mechanism.
//!
//! See also: links.rs (each mechanism's send and receive), pipe(7), unix(7), mq_overview(7),
//! shm_overview(7), futex(2); TLPI 44 (pipes), 57 (Unix sockets), 52 (message queues), 54
//! (shared memory).

use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use harness::cpu::{Pinned, Placement};
use harness::shm::Segment;
use harness::{Ctx, fork_child, fork_child_keeping, spawn_sacrificial};
use ipc_channel::ipc::{IpcOneShotServer, IpcSender};
use nix::fcntl::OFlag;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::pipe2;

use crate::exchange::{self, Partner, Session, Shape};
use crate::links::{self, IpcChannel, IpcMessage, MessageQueue, Ring, Stream};
use crate::plumbing::{self, Peer, Queue};

/// Two pipes, one each way, to a forked child.
pub fn pipe(ctx: &Ctx, place: Placement, _shape: Shape) -> Result<Session> {
    let deadline = ctx.deadline();
    // effort: pipe begin
    let (forth_rx, forth_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let (back_rx, back_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    links::hold_a_message(&[&forth_tx, &back_tx]);
    // process: the child inherits its two ends through fork(2); ours close when fork returns.
    let ends = [forth_rx.as_raw_fd(), back_tx.as_raw_fd()];
    let child = fork_child_keeping(&ends, move || {
        let _pinned = Pinned::to(place.partner)?;
        exchange::serve(&mut Stream::new("pipe", forth_rx, back_tx, Peer::Unknown)?, deadline)
    })?;
    let link = Stream::new("pipe", back_rx, forth_tx, Peer::process(child.pid())?)?;
    // effort: end
    Ok(Session { link: Box::new(link), partner: Partner::Process(child), keep: Vec::new(), memory: None })
}

/// A Unix stream socket pair to a forked child.
pub fn socket(ctx: &Ctx, place: Placement, _shape: Shape) -> Result<Session> {
    let deadline = ctx.deadline();
    // effort: socket begin
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .context("socketpair AF_UNIX SOCK_STREAM")?;
    // process: the child inherits its end through fork(2).
    let child = fork_child_keeping(&[theirs.as_raw_fd()], move || {
        let _pinned = Pinned::to(place.partner)?;
        let rx = theirs.try_clone().context("dup")?;
        exchange::serve(&mut Stream::new("socket pair", rx, theirs, Peer::Unknown)?, deadline)
    })?;
    let rx = ours.try_clone().context("dup")?;
    let link = Stream::new("socket pair", rx, ours, Peer::process(child.pid())?)?;
    // effort: end
    Ok(Session { link: Box::new(link), partner: Partner::Process(child), keep: Vec::new(), memory: None })
}

/// Two POSIX message queues to a forked child.
pub fn queue(ctx: &Ctx, place: Placement, shape: Shape) -> Result<Session> {
    let deadline = ctx.deadline();
    let (size, limit) = (shape.message_bytes(), plumbing::queue_message_limit()?);
    if size > limit {
        bail!("a message queue holds messages of at most {limit} bytes here (msgsize_max), not {size}");
    }
    // effort: queue begin
    // process: a queue is a kernel object with a name, made exclusively, mode 0600.
    let slots = shape.slots().min(plumbing::queue_capacity_limit()?);
    let mut forth = Queue::create(slots, size)?;
    let mut back = Queue::create(slots, size)?;
    let (forth_fd, back_fd) = (forth.raw_fd(), back.raw_fd());
    let child = fork_child_keeping(&[forth_fd, back_fd], move || {
        let _pinned = Pinned::to(place.partner)?;
        exchange::serve(&mut MessageQueue::new(back_fd, forth_fd, Peer::Unknown, size), deadline)
    })?;
    // process: both have the queues open now, so the names can go.
    forth.unlink()?;
    back.unlink()?;
    let link = MessageQueue::new(forth_fd, back_fd, Peer::process(child.pid())?, size);
    // effort: end
    Ok(Session {
        link: Box::new(link),
        partner: Partner::Process(child),
        keep: vec![Box::new(forth), Box::new(back)],
        memory: None,
    })
}

/// ipc-channel's typed channels to a partner started with exec: ipc-channel's descriptors
/// must reach it through a one-shot server, and no router thread must cross a fork.
pub fn channel(ctx: &Ctx, place: Placement, _shape: Shape) -> Result<Session> {
    let deadline = ctx.deadline();
    // effort: ipc-channel begin
    // process: a named rendezvous (a Unix socket in a temporary directory) that the other
    // program connects to; it then sends us the sender for its commands.
    let mut rendezvous = plumbing::Rendezvous::<IpcMessage>::new()?;
    let args = [rendezvous.name().to_string(), place.partner.to_string(), deadline.as_millis().to_string()];
    let child = spawn_sacrificial("ipc-partner", &args)?;
    let peer = Peer::process(child.pid())?;
    let (rx, hello) = accept(rendezvous.take()?, rendezvous.name(), &child, deadline)?;
    let IpcMessage::Hello(tx) = hello else { bail!("the ipc-channel partner did not say hello first") };
    let link = IpcChannel { tx, rx, peer };
    // effort: end
    Ok(Session { link: Box::new(link), partner: Partner::Process(child), keep: Vec::new(), memory: None })
}

/// The program started by [`channel`]: `<row> __child ipc-partner NAME CPU DEADLINE_MS`.
pub fn ipc_partner(args: &[String]) -> Result<()> {
    let [name, cpu, deadline_ms] = args else { bail!("usage: ipc-partner NAME CPU DEADLINE_MS") };
    let _pinned = Pinned::to(cpu.parse().context("CPU")?)?;
    let deadline = Duration::from_millis(deadline_ms.parse().context("DEADLINE_MS")?);
    // effort: ipc-channel begin
    let (tx, rx) = ipc_channel::ipc::channel::<IpcMessage>().context("ipc::channel")?;
    let to_driver = IpcSender::<IpcMessage>::connect(name.clone()).context("IpcSender::connect")?;
    to_driver.send(IpcMessage::Hello(tx)).map_err(|e| anyhow!("{e}")).context("sending hello")?;
    // effort: end
    exchange::serve(&mut IpcChannel { tx: to_driver, rx, peer: Peer::Unknown }, deadline)
}

// effort: ipc-channel begin
/// IpcOneShotServer::accept blocks with no deadline: should the partner die or hang, a watch
/// on it (a process of its own: no thread starts in this one) connects to the server itself
/// to release it.
fn accept(
    server: IpcOneShotServer<IpcMessage>,
    name: &str,
    partner: &harness::Child,
    deadline: Duration,
) -> Result<(ipc_channel::ipc::IpcReceiver<IpcMessage>, IpcMessage)> {
    let name = name.to_string();
    let _watch = partner.watch(deadline, move |_| {
        if let Ok(tx) = IpcSender::<IpcMessage>::connect(name) {
            let _ = tx.send(IpcMessage::Control([0; 8]));
        }
    })?;
    let (rx, first) = server.accept().map_err(|e| anyhow!("{e}")).context("IpcOneShotServer::accept")?;
    ensure!(
        !matches!(first, IpcMessage::Control(_)),
        "the ipc-channel partner ended, or did not connect within {} ms",
        deadline.as_millis()
    );
    Ok((rx, first))
}
// effort: end

/// Two rings in a named shared-memory segment, mapped before the fork.
pub fn ring(ctx: &Ctx, place: Placement, shape: Shape) -> Result<Session> {
    let deadline = ctx.deadline();
    // effort: ring begin
    // process: nothing is shared unless mapped on purpose: a named segment, mode 0600,
    // created exclusively and mapped here; the child inherits the mapping through fork(2).
    let layout = shape.ring();
    let mut segment = Segment::create(layout.bytes())?;
    // Base pages only, as on the thread side: a huge page would make the two rings unlike.
    segment.no_huge_pages()?;
    let base = segment.as_ptr();
    let child = fork_child(move || {
        let _pinned = Pinned::to(place.partner)?;
        // Safety: the child has the segment mapped (inherited) and never unmaps it: it ends
        // with _exit without running the destructors of the parent's objects.
        exchange::serve(&mut unsafe { Ring::new(base, layout, false, Peer::Unknown, None) }, deadline)
    })?;
    // process: both have it mapped, so the name can go; the memory lives while mapped.
    segment.unlink()?;
    // Safety: the segment is page-aligned, zero-filled, layout.bytes() long, and outlives
    // the link: the session drops it last, after the partner has ended.
    let link = unsafe { Ring::new(base, layout, true, Peer::process(child.pid())?, None) };
    // effort: end
    let memory = Some(base as usize);
    Ok(Session { link: Box::new(link), partner: Partner::Process(child), keep: vec![Box::new(segment)], memory })
}
