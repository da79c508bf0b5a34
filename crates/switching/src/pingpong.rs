//! The game both sides play, written once: two tasks pass a token back and forth, and each
//! pass makes the sender block and the receiver run, which is one context switch when both
//! tasks share a CPU. One round trip is two switches.
//!
//! `process.rs` and `thread.rs` decide only how the second task comes to exist and how the
//! token travels between the two; what is timed and what is counted is here, so both sides
//! measure exactly the same loop. The method is that of `perf bench sched pipe` and of
//! lmbench's `lat_ctx` (with `-s`, each task also touches its own working set).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use harness::Ctx;
use harness::cpu;
use harness::mem::{Mapping, PageBuf, Sharing};
use harness::stats;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// The token's meaning, one byte over a pipe or the value of the futex word.
pub const PING: u32 = 1;
/// Both tasks take a snapshot of their counters: sent just before and after the timed runs.
pub const MARK: u32 = 2;
/// The partner ends its loop; no reply.
pub const STOP: u32 = 3;
/// The partner is pinned and ready to answer: the start barrier.
pub const READY: u32 = 4;
/// Futex word only: nobody has said anything yet.
pub const NOT_READY: u32 = 5;
/// Futex word only: the command was handled, the driver may go on.
pub const DONE: u32 = 0;
/// Futex word only: the partner went away without stopping normally.
pub const GONE: u32 = 6;

/// Futex word only: set by a task about to sleep, so that the other knows to wake it.
const SLEEPING: u32 = 1 << 31;

/// The timing side of a link: sends a command and waits for the reply.
pub trait Driver {
    /// Waits at most `deadline` for the partner's READY. Nothing before it is timed.
    fn wait_ready(&mut self, deadline: Duration) -> Result<()>;
    /// One round trip: the command goes over, the reply comes back.
    fn round_trip(&mut self, command: u32) -> Result<()>;
    /// Tells the partner to stop; there is no reply.
    fn stop(&mut self) -> Result<()>;
}

/// The answering side of a link.
pub trait Partner {
    fn ready(&mut self) -> Result<()>;
    /// Blocks until the driver sends the next command.
    fn next(&mut self) -> Result<u32>;
    fn reply(&mut self) -> Result<()>;
}

/// Two pipes, one each way, one byte per message.
pub struct Pipes {
    rx: File,
    tx: File,
    /// The byte each message is written from and read into: at the start of a page of its
    /// own, not on the stack (see [`token_byte`]).
    byte: PageBuf,
}

/// A one-byte buffer at the start of a page, for the pipe loops' `write(2)` and `read(2)`.
/// A byte on the stack sits where the task's stack happens to put it: a forked child runs on
/// its parent's stack, whose place within its page ASLR draws anew at every exec, while a
/// new thread's stack is a fresh mapping, at the same place within its page every time. So
/// the process side's byte moved from one invocation of the row to the next and the thread
/// side's did not. With the byte on the stack, `baseline-pipe`'s process side lost its 6 %
/// lead in some invocations: ratios 0.93-0.99 in 20 invocations, 0.939-0.951 in 20 more
/// without ASLR (`setarch -R`); in 50 alternated invocations 0.930-0.991 on the stack (3
/// above 0.955) against 0.921-0.962 here (1 above): consistent with the byte's place as a
/// cause, not a proof, and still wider than without ASLR. pipe-same-cpu: 1.079-1.132 against
/// 1.100-1.146 in 25.
pub fn token_byte() -> PageBuf {
    PageBuf::zeroed(1)
}

impl Pipes {
    pub fn new(rx: File, tx: File) -> Pipes {
        Pipes { rx, tx, byte: token_byte() }
    }

    fn send(&mut self, token: u32) -> Result<()> {
        self.byte[0] = token as u8;
        self.tx.write_all(&self.byte).context("write(2) to the pipe")
    }

    fn receive(&mut self) -> Result<u32> {
        match self.rx.read(&mut self.byte).context("read(2) from the pipe")? {
            0 => bail!("the other task closed its pipe"),
            _ => Ok(u32::from(self.byte[0])),
        }
    }
}

impl Driver for Pipes {
    fn wait_ready(&mut self, deadline: Duration) -> Result<()> {
        let millis = deadline.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.rx.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)).context("poll(2)")?;
        ensure!(n > 0, "the partner was not ready within {deadline:?}");
        let token = self.receive()?;
        ensure!(token == READY, "expected READY from the partner, got {token}");
        Ok(())
    }

    fn round_trip(&mut self, command: u32) -> Result<()> {
        self.send(command)?;
        let reply = self.receive()?;
        ensure!(reply == DONE, "expected DONE from the partner, got {reply}");
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        self.send(STOP)
    }
}

impl Partner for Pipes {
    fn ready(&mut self) -> Result<()> {
        self.send(READY)
    }

    fn next(&mut self) -> Result<u32> {
        self.receive()
    }

    fn reply(&mut self) -> Result<()> {
        self.send(DONE)
    }
}

/// Which futex operations to use (futex(2)): the harness's one wrapper.
pub use harness::futex::{Ops as FutexOps, PRIVATE, SHARED};

/// One 32-bit word that says whose turn it is: a command means the partner's, DONE the
/// driver's. Each task sleeps in FUTEX_WAIT while the word says it is the other's turn.
pub struct Futex<'a> {
    word: &'a AtomicU32,
    ops: FutexOps,
    /// The longest the wait for READY may take: a partner that never started must not hang us.
    /// The waits of the timed loop have no timeout: on this VM one costs about 200 ns per
    /// wait (an hrtimer armed and cancelled), as much as the effect we measure. A partner that
    /// fails or panics still wakes us through `Drop` below; one killed outright, through
    /// [`Futex::abandon`], called by a watch on its process.
    timeout: Duration,
    /// What to leave in the word if this end goes away early, so the other end wakes up.
    on_drop: u32,
}

impl<'a> Futex<'a> {
    pub fn driver(word: &'a AtomicU32, ops: FutexOps, timeout: Duration) -> Futex<'a> {
        Futex { word, ops, timeout, on_drop: STOP }
    }

    pub fn partner(word: &'a AtomicU32, ops: FutexOps, timeout: Duration) -> Futex<'a> {
        Futex { word, ops, timeout, on_drop: GONE }
    }

    /// Says `value`, and wakes the other task only if it said it would sleep: a futex costs
    /// a system call only when somebody waits (the pattern of every futex-based lock).
    fn set(&self, value: u32) -> Result<()> {
        let old = self.word.swap(value, Ordering::AcqRel);
        if old & !SLEEPING == GONE {
            // GONE is final: put it back for whoever looks next.
            self.word.store(GONE, Ordering::Release);
            bail!("the other task is gone");
        }
        if old & SLEEPING != 0 {
            harness::futex::wake(self.word, 1, self.ops).context("futex FUTEX_WAKE")?;
        }
        Ok(())
    }

    /// Says GONE on behalf of a partner that died (a watch on its process calls this): the
    /// driver, asleep or about to be, wakes up and stops instead of waiting forever.
    pub fn abandon(word: &AtomicU32, ops: FutexOps) {
        word.store(GONE, Ordering::Release);
        let _ = harness::futex::wake(word, u32::MAX, ops);
    }

    /// Sleeps until the word no longer says `value`, and returns what it says then.
    fn wait_while(&self, value: u32, timeout: Option<Duration>) -> Result<u32> {
        loop {
            let now = self.word.load(Ordering::Acquire);
            if now & !SLEEPING != value {
                return Ok(now & !SLEEPING);
            }
            // Tell the other task to wake us; if the word changed meanwhile, look again.
            if now == value
                && self.word.compare_exchange(value, value | SLEEPING, Ordering::AcqRel, Ordering::Acquire).is_err()
            {
                continue;
            }
            // The kernel sleeps only if the word still says "value, and I sleep"; EAGAIN (it
            // changed first) and EINTR just mean: look again.
            match harness::futex::wait(self.word, value | SLEEPING, self.ops, timeout) {
                Ok(_) | Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::ETIMEDOUT) => bail!("no answer on the futex within {timeout:?}"),
                Err(e) => return Err(e).context("futex FUTEX_WAIT"),
            }
        }
    }
}

impl Driver for Futex<'_> {
    fn wait_ready(&mut self, _deadline: Duration) -> Result<()> {
        let now = self.wait_while(NOT_READY, Some(self.timeout))?;
        ensure!(now != GONE, "the partner is gone: it ended, or did not answer within the deadline");
        ensure!(now == READY, "expected READY from the partner, got {now}");
        Ok(())
    }

    fn round_trip(&mut self, command: u32) -> Result<()> {
        self.set(command)?;
        let reply = self.wait_while(command, None)?;
        ensure!(reply != GONE, "the partner is gone: it ended, or did not answer within the deadline");
        ensure!(reply == DONE, "expected DONE from the partner, got {reply}");
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        self.on_drop = STOP;
        self.set(STOP)
    }
}

impl Partner for Futex<'_> {
    fn ready(&mut self) -> Result<()> {
        self.set(READY)
    }

    fn next(&mut self) -> Result<u32> {
        // READY and DONE both mean "the driver's turn": wait for a command.
        loop {
            let now = self.word.load(Ordering::Acquire) & !SLEEPING;
            if now != READY && now != DONE {
                return Ok(now);
            }
            self.wait_while(now, None)?;
        }
    }

    fn reply(&mut self) -> Result<()> {
        self.set(DONE)
    }
}

impl Drop for Futex<'_> {
    fn drop(&mut self) {
        // After a normal STOP this changes nothing anybody waits for; after an error it wakes
        // the other task, which then sees STOP or GONE instead of sleeping forever.
        let _ = self.set(self.on_drop);
    }
}

/// A task's own buffer, touched one cache line at a time between switches (lmbench's
/// `lat_ctx -s`): after a switch it must come back into the caches and the TLB. A mapping of
/// its own, so that it starts on a page and shares no page with anything else, with base
/// pages only, as the other rows' buffers.
pub struct WorkingSet {
    mapping: Option<Mapping>,
    len: usize,
}

impl WorkingSet {
    /// Maps `size` bytes and writes every byte now, so that page faults stay out of the timed
    /// loop.
    pub fn new(size: usize) -> Result<WorkingSet> {
        if size == 0 {
            return Ok(WorkingSet::NONE);
        }
        let mapping = Mapping::anonymous(size, Sharing::Private)?;
        mapping.no_huge_pages()?;
        // Safety: the slice covers the start of our own mapping, which nothing else refers to.
        unsafe { std::slice::from_raw_parts_mut(mapping.as_ptr(), size) }.fill(1);
        Ok(WorkingSet { mapping: Some(mapping), len: size })
    }

    /// No buffer at all: the plain ping-pong.
    pub const NONE: WorkingSet = WorkingSet { mapping: None, len: 0 };

    /// Reads one byte of every cache line; never writes.
    pub fn touch(&self) {
        let Some(mapping) = &self.mapping else { return };
        let mut sum = 0u8;
        for i in (0..self.len).step_by(64) {
            // Safety: `i` is inside the mapping; a volatile read cannot be skipped or hoisted
            // out of the loop by the compiler (std::ptr::read_volatile).
            sum = sum.wrapping_add(unsafe { std::ptr::read_volatile(mapping.as_ptr().add(i)) });
        }
        std::hint::black_box(sum);
    }
}

/// The two tasks' working sets of an experiment, made once, before any run, and the same for
/// every run of both sides: a fresh child inherits the partner's through fork(2) and only
/// reads it, so no page is copied (`minor_faults` counts each task's faults once ready), and a fresh
/// thread shares it. Made afresh in every run, the thread side's came out 30.0-33.6 µs/switch
/// from one invocation to the next, each its own level, and the ratio 1.13-1.26; made once,
/// 28.8-29.3 and 1.26-1.30 (docs/switching.md).
pub struct WorkingSets {
    pub driver: WorkingSet,
    pub partner: WorkingSet,
}

impl WorkingSets {
    /// No buffers: the plain ping-pong.
    pub const NONE: WorkingSets = WorkingSets { driver: WorkingSet::NONE, partner: WorkingSet::NONE };

    pub fn new(size: usize) -> Result<WorkingSets> {
        Ok(WorkingSets { driver: WorkingSet::new(size)?, partner: WorkingSet::new(size)? })
    }
}

/// The calling thread's switch counters and CPU, right now.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub cpu: usize,
    pub voluntary: i64,
    pub involuntary: i64,
    pub minor_faults: i64,
}

impl Snapshot {
    pub fn now() -> Result<Snapshot> {
        let usage = harness::Usage::of_thread()?;
        Ok(Snapshot {
            cpu: cpu::current()?,
            voluntary: usage.voluntary_switches,
            involuntary: usage.involuntary_switches,
            minor_faults: usage.minor_faults,
        })
    }
}

/// What one task showed between the two marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskEvidence {
    pub pinned: usize,
    /// The CPU it ran on at each mark (sched_getcpu(3)).
    pub seen: [usize; 2],
    pub voluntary: i64,
    pub involuntary: i64,
    /// Page faults the task took from being ready to the closing mark, warm-up included
    /// (getrusage(2), RUSAGE_THREAD).
    pub minor_faults: i64,
}

impl TaskEvidence {
    /// The switches and CPUs between the marks `before` and `after`; the page faults since
    /// `ready`.
    pub fn between(pinned: usize, ready: Snapshot, before: Snapshot, after: Snapshot) -> TaskEvidence {
        TaskEvidence {
            pinned,
            seen: [before.cpu, after.cpu],
            voluntary: after.voluntary - before.voluntary,
            involuntary: after.involuntary - before.involuntary,
            minor_faults: after.minor_faults - ready.minor_faults,
        }
    }

    pub fn ran_where_pinned(&self) -> bool {
        self.seen.iter().all(|&c| c == self.pinned)
    }
}

/// The partner's whole life: get ready, then answer every command until STOP.
pub fn serve(link: &mut impl Partner, pinned: usize, own: &WorkingSet) -> Result<TaskEvidence> {
    let mut marks = Vec::with_capacity(2);
    let ready = Snapshot::now()?;
    link.ready()?;
    loop {
        match link.next()? {
            PING => own.touch(),
            MARK => marks.push(Snapshot::now()?),
            STOP => break,
            other => bail!("unexpected command {other}"),
        }
        link.reply()?;
    }
    let &[before, after] = marks.as_slice() else { bail!("expected two marks, got {}", marks.len()) };
    Ok(TaskEvidence::between(pinned, ready, before, after))
}

/// One timed run of a ping-pong, as the driver saw it.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Run {
    pub ns_per_switch: f64,
    /// Round trips between the two marks: the timed ones and the closing mark.
    pub round_trips: u64,
    /// Timed round trips: the loop size, the same for every run of both sides.
    pub n: u64,
    pub driver: TaskEvidence,
}

/// One run of a ping-pong on both of its tasks.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub run: Run,
    pub partner: TaskEvidence,
}

/// How many round trips a run times: sized once by a time budget, then the same count for
/// every run of both sides, so that both time exactly the same loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Find the count that fills this budget (the calibration run).
    Budget(Duration),
    Count(u64),
}

/// How long one timed run lasts: every run is sized by time, not by a count, because a
/// same-CPU switch costs about 1 µs here and a cross-CPU wake-up tens of µs.
pub fn run_budget(ctx: &Ctx) -> Duration {
    if ctx.quick { Duration::from_millis(2) } else { Duration::from_millis(10) }
}

/// The fewest untimed round trips before a run's timed loop (otherwise a tenth of the loop).
/// A `--quick` run of working-set-2m times about 22 round trips, and with 3 to warm up its
/// medians came out 10-45 % above a full run's (process side 42-56 µs/switch against 38-40);
/// with 16 they matched (38-39).
pub const WARM_UP_ROUND_TRIPS: u64 = 16;

/// The untimed round trips before a timed loop of `n`.
fn warm_up(n: u64) -> u64 {
    (n / 10 + 1).max(WARM_UP_ROUND_TRIPS)
}

/// The driver's part of one run, after the start barrier: a short untimed warm-up (the
/// partner is new and its caches cold), then the timed loop between two marks, then STOP.
pub fn drive(link: &mut impl Driver, size: Size, pinned: usize, own: &WorkingSet) -> Result<Run> {
    let ready = Snapshot::now()?;
    let n = match size {
        Size::Budget(budget) => stats::iterations_for(budget, |n| timed(link, own, n))?,
        Size::Count(n) => n,
    };
    timed(link, own, warm_up(n))?;
    link.round_trip(MARK)?;
    let before = Snapshot::now()?;
    let took = timed(link, own, n)?;
    link.round_trip(MARK)?;
    let after = Snapshot::now()?;
    link.stop()?;
    Ok(Run {
        ns_per_switch: took.as_nanos() as f64 / (2 * n) as f64,
        round_trips: n + 1,
        n,
        driver: TaskEvidence::between(pinned, ready, before, after),
    })
}

/// The timed loop: `n` round trips, the driver touching its own working set before each.
fn timed(link: &mut impl Driver, own: &WorkingSet, n: u64) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..n {
        own.touch();
        link.round_trip(PING)?;
    }
    Ok(start.elapsed())
}

/// ns to touch a working set of `bytes` once, caches warm, no switch in between.
pub fn touch_cost(own: &WorkingSet) -> f64 {
    if own.len == 0 {
        return 0.0;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_micros(500) {
        own.touch();
        n += 1;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// The baselines: what the loop costs without any switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// One task writes a byte into its own pipe and reads it back: the system calls of one
    /// switch of the pipe ping-pong, without the switch.
    Pipe,
    /// One trivial system call, getppid(2).
    Syscall,
}

/// One run of a baseline in one task.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Alone {
    /// ns per write+read pair (Pipe) or per call (Syscall).
    pub ns: f64,
    /// Loop size: the same for every run of both sides.
    pub n: u64,
    pub task: TaskEvidence,
}

/// One run of a baseline in the calling task, pinned to `pinned`: a short warm-up, then `n`
/// (or as many as fill the budget) timed iterations.
pub fn alone(size: Size, pinned: usize, what: Baseline) -> Result<Alone> {
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
    let (mut rx, mut tx) = (File::from(rx), File::from(tx));
    let mut timed = |n: u64| -> Result<Duration> {
        let mut byte = token_byte();
        let start = Instant::now();
        for _ in 0..n {
            match what {
                Baseline::Pipe => {
                    tx.write_all(&byte).context("write(2) to the pipe")?;
                    rx.read_exact(&mut byte).context("read(2) from the pipe")?;
                }
                Baseline::Syscall => {
                    std::hint::black_box(nix::unistd::getppid());
                }
            }
        }
        Ok(start.elapsed())
    };
    let n = match size {
        Size::Budget(budget) => stats::iterations_for(budget, &mut timed)?,
        Size::Count(n) => n,
    };
    timed(n / 10 + 1)?;
    let before = Snapshot::now()?;
    let took = timed(n)?;
    let after = Snapshot::now()?;
    Ok(Alone { ns: took.as_nanos() as f64 / n as f64, n, task: TaskEvidence::between(pinned, before, before, after) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_loop_still_warms_up_for_16_round_trips() {
        assert_eq!(warm_up(22), 16, "a --quick run of the 2 MiB working set");
        assert_eq!(warm_up(2000), 201, "a tenth of a long loop");
    }

    /// The futex protocol between two threads (never a fork: the test harness has threads).
    #[test]
    fn futex_ping_pong_between_threads_counts_two_switches_per_round_trip() {
        let cpu = cpu::allowed().unwrap()[0];
        let word = AtomicU32::new(NOT_READY);
        let (run, partner) = std::thread::scope(|s| {
            let partner = s.spawn(|| {
                let _pinned = cpu::Pinned::to(cpu).unwrap();
                serve(&mut Futex::partner(&word, PRIVATE, Duration::from_secs(5)), cpu, &WorkingSet::NONE).unwrap()
            });
            let _pinned = cpu::Pinned::to(cpu).unwrap();
            let mut link = Futex::driver(&word, PRIVATE, Duration::from_secs(5));
            link.wait_ready(Duration::from_secs(5)).unwrap();
            let run = drive(&mut link, Size::Count(2000), cpu, &WorkingSet::NONE).unwrap();
            (run, partner.join().unwrap())
        });
        assert_eq!((run.n, run.round_trips), (2000, 2001));
        let counted = run.driver.voluntary + run.driver.involuntary + partner.voluntary + partner.involuntary;
        let expected = 2 * run.round_trips as i64;
        assert!((counted - expected).abs() <= expected / 10 + 4, "{counted} switches, {expected} expected");
        assert!(run.driver.ran_where_pinned() && partner.ran_where_pinned());
    }
}
