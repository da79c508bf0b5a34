//! Memory, the process version: a process has its own address space, and shares nothing it
//! did not map on purpose.
//!
//! fork(2) gives the child a copy of the parent's address space: the same virtual addresses,
//! the same contents, but its own memory. The kernel does not copy the pages at fork; it marks
//! them read-only in both processes and copies a page when one of them first writes it
//! (copy-on-write). So a child's write is invisible to its parent, it costs a page fault and
//! a copy, and every child costs its own page tables. To share memory, processes must ask:
//! here a named POSIX shared-memory segment that a separately started program opens by name.
//! Compare with thread.rs: the same functions in the same order, and only the lines marked
//! "process:" differ in mechanism.
//!
//! See also: fork(2), mmap(2), shm_open(3), shm_overview(7), proc_pid_smaps(5); TLPI 24.2
//! (copy-on-write), 49 (memory mappings) and 54 (POSIX shared memory).

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use harness::mem::page_size;
use harness::shm::Segment;
use harness::{Child, deliver, fork_child, fork_child_keeping, spawn_sacrificial, wait_all};
use shared_memory::{ShmemConf, ShmemError};

use crate::pages::{self, Added, BEFORE, Buffer, Gate, Kernel, OwnPage, Pass, Usage, Writes};
use crate::{PrivateWrite, SEGMENT_VALUE, SegmentFacts, SharedSegment};
use harness::poll::poll_until;

/// A child process writes a global and a heap value; the parent looks at both afterwards.
pub fn private_write(deadline: Duration) -> Result<PrivateWrite> {
    // The observer sets both values; its writes also make both pages present and writable.
    pages::GLOBAL.value.store(BEFORE, Ordering::Relaxed);
    let heap = Box::new(OwnPage::new(BEFORE));
    // process: the writer is a copy of this process. Both pages are now shared read-only, and
    // the child's first write to each makes the kernel copy it for the child alone.
    let writer = fork_child(|| {
        let writes = pages::write_both(&heap)?;
        deliver("wrote", &writes);
        Ok(())
    })?;
    let exit = writer.wait(deadline)?;
    exit.check("the writing process")?;
    let writer: Writes = exit.received_one("wrote")?;
    Ok(PrivateWrite {
        writer,
        observer_addresses: [pages::GLOBAL.address(), heap.address()],
        observer_saw: [pages::GLOBAL.value.load(Ordering::Relaxed), heap.value.load(Ordering::Relaxed)],
    })
}

/// The first page of the segment: a handshake word and the shared value.
#[repr(C)]
struct Handshake {
    state: AtomicU32,
    value: AtomicU64,
}

/// Handshake states, in order after 0 (as created: ftruncate(2) fills with zeros).
const MAPPED: u32 = 1;
const UNLINKED: u32 = 2;

impl Handshake {
    /// # Safety
    /// `start` must point to a mapping of at least `size_of::<Handshake>()` bytes, aligned
    /// for it, that stays mapped while the reference is used; its bytes are zero or a valid
    /// Handshake, and every access goes through the atomics.
    unsafe fn at<'a>(start: *mut u8) -> &'a Handshake {
        // Safety: guaranteed by the caller (see above); all-zero bytes are a valid Handshake.
        unsafe { &*start.cast::<Handshake>() }
    }
}

/// A separately started program opens a named segment by its name and writes a value into it.
pub fn shared_segment(deadline: Duration) -> Result<SharedSegment> {
    // process: nothing is shared unless it is mapped on purpose. Create a named segment,
    // mode 0600, exclusively: shm_open(3), ftruncate(2), mmap(2).
    let mut segment = Segment::create(page_size())?;
    let path = format!("/dev/shm/{}", segment.name());
    let mode = std::fs::metadata(&path).with_context(|| format!("stat {path}"))?.permissions().mode() & 0o777;
    // Safety: the segment is one page, page-aligned, zero-filled by ftruncate(2), and stays
    // mapped until `segment` is dropped at the end of this function, after the last use.
    let shared = unsafe { Handshake::at(segment.as_ptr()) };
    let args = [segment.name().to_string(), deadline.as_millis().to_string()];
    // process: the other program is started with exec(2): it shares nothing with us but the
    // name we pass it.
    let child = spawn_sacrificial("open-segment", &args)?;
    if !wait_until_mapped(&child, shared, deadline)? {
        child.wait(deadline)?.check("the program that opened the segment")?;
        bail!("the program that opened the segment ended before it mapped it");
    }
    // Both sides have it mapped, so the name can go: from now on nobody can open it, and the
    // memory lives exactly as long as the two mappings.
    segment.unlink()?;
    let unlinked = !std::path::Path::new(&path).exists();
    shared.state.store(UNLINKED, Ordering::Release);
    let exit = child.wait(deadline)?;
    exit.check("the program that opened the segment")?;
    let child_address: u64 = exit.received_one("mapped").context("the program that opened the segment")?;
    let name_gone: bool = exit.received_one("name_gone").context("the program that opened the segment")?;
    Ok(SharedSegment {
        // process: the parent reads the segment once the other program has ended.
        seen: shared.value.load(Ordering::Acquire),
        seen_before_join: None,
        segment: Some(SegmentFacts {
            mode,
            unlinked_while_both_mapped: unlinked,
            other_found_name_gone: name_gone,
            owner_address: segment.as_ptr() as usize,
            other_address: child_address as usize,
        }),
    })
}

/// Waits until the child has mapped the segment (true) or has ended without mapping it
/// (false). Fails if it is still running at the deadline: the caller's return then kills and
/// reaps it, and only then unlinks the segment (dropping it), so that a hung child keeps the
/// segment until its deadline, and an interrupt meanwhile leaves it to the harness's cleanup.
fn wait_until_mapped(child: &Child, shared: &Handshake, deadline: Duration) -> Result<bool> {
    let mapped = || shared.state.load(Ordering::Acquire) >= MAPPED;
    // The handshake word cannot be polled: look at it every millisecond, and meanwhile wait
    // for the child's end (it may still have mapped the segment just before).
    poll_until(deadline, "the child to map the segment", Duration::ZERO, || {
        if mapped() {
            return Ok(Some(true));
        }
        Ok(child.ended_within(Duration::from_millis(1))?.then(mapped))
    })
    .with_context(|| format!("child {} did not map the segment: killed with SIGKILL and reaped", child.pid()))
}

/// Runs in the separately started program: open the segment by name, map it, say so, wait
/// until the owner has unlinked the name, then write the value.
pub fn open_segment(args: &[String]) -> Result<()> {
    let [name, deadline_ms] = args else { bail!("usage: open-segment NAME DEADLINE_MS") };
    let deadline = Duration::from_millis(deadline_ms.parse().context("DEADLINE_MS")?);
    // process: find the memory by its name and map it: shm_open(3), fstat(2), mmap(2).
    let shmem =
        ShmemConf::new().os_id(name).open().map_err(|e| anyhow!("{e}")).with_context(|| format!("shm_open {name}"))?;
    anyhow::ensure!(shmem.len() >= size_of::<Handshake>(), "the segment {name} is too small");
    // Safety: the mapping is page-aligned, at least a Handshake long (checked above), and
    // lives until `shmem` is dropped at the end of this function.
    let shared = unsafe { Handshake::at(shmem.as_ptr()) };
    deliver("mapped", &(shmem.as_ptr() as u64));
    shared.state.store(MAPPED, Ordering::Release);
    poll_until(deadline, "the owner to unlink the segment", Duration::from_micros(100), || {
        Ok((shared.state.load(Ordering::Acquire) == UNLINKED).then_some(()))
    })?;
    // The name is gone, the mapping is not: a second open by name must fail with ENOENT.
    let name_gone =
        matches!(ShmemConf::new().os_id(name).open(), Err(ShmemError::MapOpenFailed(e)) if e == libc::ENOENT as u32);
    shared.value.store(SEGMENT_VALUE, Ordering::Release);
    deliver("name_gone", &name_gone);
    Ok(())
}

/// The buffer the process side's children write: filled by its owner, so that every page is
/// present and private.
pub fn cow_copy_buffer(bytes: usize) -> Result<Buffer> {
    // process: each child gets this buffer's pages, shared copy-on-write.
    Buffer::filled(bytes)
}

/// One run: a forked child writes one byte to every page of a buffer its parent filled;
/// each first write makes the kernel copy the page.
pub fn cow_copy_pass(buffer: &Buffer, deadline: Duration) -> Result<Pass> {
    // process: the child gets the parent's pages write-protected and shared; the fork is
    // setup, outside the timed loop (the child times only its own loop).
    let writer = fork_child(|| {
        // process: one pass, because only a child's first write to a page copies it.
        let pass = buffer.write_every_page()?;
        deliver("pass", &pass);
        Ok(())
    })?;
    let exit = writer.wait(deadline)?;
    exit.check("the writing process")?;
    exit.received_one("pass")
}

/// One run of N idle worker processes, in a fresh host: what they add, per worker.
pub fn footprint(workers: u64, deadline: Duration) -> Result<Added> {
    crate::footprint_host("footprint-processes", workers, deadline)
}

/// Runs in a fresh copy of this program: fork N workers, let each touch a little memory and
/// go idle, then add up what the whole family uses.
pub fn footprint_child(args: &[String]) -> Result<()> {
    let [workers, deadline_ms] = args else { bail!("usage: footprint-processes WORKERS DEADLINE_MS") };
    let workers: usize = workers.parse().context("WORKERS")?;
    let deadline = Duration::from_millis(deadline_ms.parse().context("DEADLINE_MS")?);
    Usage::of_self()?; // the first read allocates what later reads reuse
    let before = Usage::of_self()?;
    let gate = Gate::new()?;
    let (kernel_before, kernel_steady) = Kernel::steady()?;
    let mut children = Vec::with_capacity(workers);
    for _ in 0..workers {
        // process: each worker is a copy of this process; it shares our pages until it writes
        // one, and gets page tables of its own.
        children.push(fork_child_keeping(&gate.worker_ends(), || gate.work_then_idle().map(drop))?);
    }
    let processes: Vec<procfs::process::Process> = children
        .iter()
        .map(|c| procfs::process::Process::new(c.pid()).with_context(|| format!("opening /proc/{}", c.pid())))
        .collect::<Result<_>>()?;
    let idle = || -> Result<u64> {
        let states = processes.iter().map(|p| p.stat().map(|s| s.state).context("reading a worker's stat"));
        Ok(pages::sleeping(states.collect::<Result<Vec<char>>>()?.into_iter()))
    };
    let measured = gate.wait_ready(workers, deadline).and_then(|()| {
        pages::wait_until_idle(workers as u64, deadline, idle)?;
        // process: the family's memory is ours plus every worker's. Pss divides each shared
        // page among the processes that map it, so the sum counts every page once.
        let mut after = Usage::of_self()?;
        for p in &processes {
            after = after + Usage::of(p)?;
        }
        let kernel = Kernel::now()? - kernel_before;
        Ok(Added { workers: workers as u64, idle_when_measured: idle()?, usage: after - before, kernel, kernel_steady })
    });
    gate.release();
    for exit in wait_all(children, deadline)? {
        exit.check("a worker process")?;
    }
    deliver("added", &measured?);
    Ok(())
}
