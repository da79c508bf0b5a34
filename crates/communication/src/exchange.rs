//! The exchange every mechanism carries, written once: a driver sends commands, a partner
//! answers. `process.rs` and `thread.rs` decide only how the partner comes to exist and which
//! mechanism carries the messages (links.rs); what is timed, counted and checked is here, so
//! every mechanism is measured by exactly the same loop.
//!
//! - latency: a 64-byte PING and its 64-byte answer, each round trip timed on its own;
//! - bulk: BULK announces `count` messages of `size` bytes, the partner checksums each one
//!   where it lies and answers with the checksum and the bytes it got;
//! - REPORT: the partner answers with its own CPU time (CLOCK_THREAD_CPUTIME_ID) and CPU, so
//!   that the CPU per message counts both tasks.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use harness::stats::{self, Latencies};

use crate::plumbing::Peer;

/// One control message: 64 bytes as eight words. Word 0 is the command.
pub type Control = [u64; 8];

/// The size of a control message in bytes: the "64-byte message" of the latency experiments.
pub const CONTROL_BYTES: usize = size_of::<Control>();

pub const PING: u64 = 1;
pub const BULK: u64 = 2;
pub const REPORT: u64 = 3;
pub const STOP: u64 = 4;
pub const READY: u64 = 5;
pub const ANSWER: u64 = 6;

/// How long one wait lasts before the waiter asks whether its partner is still alive.
pub const SLICE: Duration = Duration::from_millis(100);

/// One end of a mechanism that carries messages both ways. Every receive has a deadline.
pub trait Link: Send {
    fn send_control(&mut self, message: &Control) -> Result<()>;
    fn recv_control(&mut self, deadline: Instant) -> Result<Control>;
    /// Sends one message of `len` bytes that `fill` writes, in place where the mechanism
    /// allows it (a slot of shared memory, a buffer whose ownership moves).
    fn send_bulk(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<()>;
    /// Receives one message of exactly `len` bytes and hands it to `read` where it lies.
    fn recv_bulk(&mut self, len: usize, deadline: Instant, read: &mut dyn FnMut(&[u8])) -> Result<()>;
    /// Fault injection only: sends the first half of a control message and no more.
    fn send_truncated(&mut self) -> Result<()>;
}

/// A message of `got` bytes where `wanted` were due: named, never ignored.
pub fn truncated(what: &str, got: usize, wanted: usize) -> anyhow::Error {
    anyhow::anyhow!("a truncated message on the {what}: {got} of {wanted} bytes arrived")
}

/// Waits in slices until `attempt` gets something: between slices it asks whether the
/// peer is still alive, so a partner that died is an error at once, and a partner that hangs
/// is one at the deadline (harness::poll::poll_until keeps the deadline).
pub fn wait_for<T>(
    what: &str,
    peer: &Peer,
    deadline: Instant,
    mut attempt: impl FnMut(Duration) -> Result<Option<T>>,
) -> Result<T> {
    let left = deadline.saturating_duration_since(Instant::now());
    let awaited = format!("a message on the {what} (the partner stopped answering)");
    // Each check waits itself (up to a slice), so there is no pause between checks.
    harness::poll::poll_until(left, &awaited, Duration::ZERO, || {
        let slice = deadline.saturating_duration_since(Instant::now()).min(SLICE);
        if let Some(got) = attempt(slice)? {
            return Ok(Some(got));
        }
        ensure!(peer.alive(), "the partner ended while we waited for a message on the {what}");
        Ok(None)
    })
}

/// What the partner was told to do wrong (`PVT_COMM_FAULT`, for the reliability tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer the first PING with half a message, then end: a peer that dies mid-message.
    Truncate,
    /// Stop answering after the first few PINGs: a peer that hangs. It still takes what
    /// arrives, so that it ends (and a partner thread can be joined) once the link closes.
    Stall,
    /// Report every bulk run's checksum one off: a peer that received other bytes than were
    /// sent.
    Corrupt,
}

pub const FAULT_ENV: &str = "PVT_COMM_FAULT";

impl Fault {
    pub fn from_env() -> Option<Fault> {
        match std::env::var(FAULT_ENV).ok()?.as_str() {
            "truncate" => Some(Fault::Truncate),
            "stall" => Some(Fault::Stall),
            "corrupt" => Some(Fault::Corrupt),
            _ => None,
        }
    }
}

/// The partner's whole life: say READY, then answer every command until STOP.
pub fn serve(link: &mut dyn Link, deadline: Duration) -> Result<()> {
    let fault = Fault::from_env();
    link.send_control(&[READY, 0, 0, 0, 0, 0, 0, 0])?;
    let mut pings = 0u64;
    loop {
        let command = link.recv_control(Instant::now() + deadline)?;
        match command[0] {
            PING => {
                pings += 1;
                match fault {
                    Some(Fault::Truncate) => {
                        link.send_truncated()?;
                        bail!("fault injected ({FAULT_ENV}=truncate): ended after half a message");
                    }
                    Some(Fault::Stall) if pings > 10 => loop {
                        link.recv_control(Instant::now() + deadline)?;
                    },
                    _ => {}
                }
                let mut answer = command;
                answer[0] = ANSWER;
                link.send_control(&answer)?;
            }
            BULK => {
                let (size, count) = (command[1] as usize, command[2]);
                let (mut sum, mut bytes) = (0u64, 0u64);
                for _ in 0..count {
                    link.recv_bulk(size, Instant::now() + deadline, &mut |m| {
                        sum = sum.wrapping_add(checksum(m));
                        bytes += m.len() as u64;
                    })?;
                }
                if fault == Some(Fault::Corrupt) {
                    sum = sum.wrapping_add(1);
                }
                link.send_control(&[ANSWER, sum, bytes, 0, 0, 0, 0, 0])?;
            }
            REPORT => {
                let cpu = harness::cpu::current()? as u64;
                link.send_control(&[ANSWER, thread_cpu_ns(), cpu, 0, 0, 0, 0, 0])?;
            }
            STOP => return Ok(()),
            other => bail!("unexpected command {other}"),
        }
    }
}

/// Waits for the partner's READY: nothing before it is timed.
pub fn wait_ready(link: &mut dyn Link, deadline: Duration) -> Result<()> {
    let m = link.recv_control(Instant::now() + deadline).context("waiting for the partner to be ready")?;
    ensure!(m[0] == READY, "expected READY from the partner, got {}", m[0]);
    Ok(())
}

/// Asks the partner for its CPU time so far (ns) and the CPU it runs on.
fn report(link: &mut dyn Link, deadline: Duration) -> Result<(u64, usize)> {
    link.send_control(&[REPORT, 0, 0, 0, 0, 0, 0, 0])?;
    let m = link.recv_control(Instant::now() + deadline)?;
    ensure!(m[0] == ANSWER, "expected the partner's report, got {}", m[0]);
    Ok((m[1], m[2] as usize))
}

/// The calling thread's CPU time in ns (clock_gettime(2) CLOCK_THREAD_CPUTIME_ID). Unlike
/// getrusage, it includes the slice the thread is running right now, so a task that spins
/// without ever being switched out is counted to the nanosecond, not to the last tick.
pub fn thread_cpu_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID is always available on Linux");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Tells the partner to end.
pub fn stop(link: &mut dyn Link) -> Result<()> {
    link.send_control(&[STOP, 0, 0, 0, 0, 0, 0, 0])
}

/// What one timed run of round trips showed.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Trips {
    pub p50_ns: f64,
    /// CPU time of both tasks per round trip, in ns.
    pub cpu_ns: f64,
    pub round_trips: u64,
    /// The CPUs the driver and the partner were on at the end of the run.
    pub ran_on: [usize; 2],
}

/// Round trips made on a new link before it is sized. The first ones fault in code and stacks
/// and wake a partner that has not run yet: on an AMD EPYC guest, with nothing run before in the
/// row (`--only cpu-cost`), they took over a millisecond each, the link was sized at one round
/// trip a run, and the CPU figure was then mostly the two reports around each run (`reversed`
/// at 0.32-0.73 where the whole row gave `holds` at 4-7: docs/communication.md).
const WARM_TRIPS: u64 = 64;

/// The fewest round trips in a run, so that the partner's two reports around it (about one
/// round trip's work) weigh about 6 % at most in the run's CPU time.
const MIN_TRIPS: u64 = 16;

/// How many round trips fill one run's time budget on this link, at least [`MIN_TRIPS`],
/// sized after [`WARM_TRIPS`] untimed ones.
pub fn size_trips(link: &mut dyn Link, budget: Duration, deadline: Duration) -> Result<u64> {
    warm(link, WARM_TRIPS, deadline)?;
    let n = stats::iterations_for(budget, |n| {
        let start = Instant::now();
        for _ in 0..n {
            round_trip(link, deadline)?;
        }
        Ok(start.elapsed())
    })?;
    Ok(n.max(MIN_TRIPS))
}

/// The untimed round trips every run makes on its link first, on both sides. A thread run's
/// link is new (its partner is started for the run), and its first trips fault in the
/// partner's stack; a latency run's figure is the median of its trips, so those few weigh
/// little anyway, and a bulk run is settled by a whole untimed run. With 64, as for the
/// sizing, `--quick` took 0.4 s longer and the medians did not move beyond their noise.
pub const RUN_WARM_TRIPS: u64 = 8;

/// `n` untimed round trips.
pub fn warm(link: &mut dyn Link, n: u64, deadline: Duration) -> Result<()> {
    for _ in 0..n {
        round_trip(link, deadline)?;
    }
    Ok(())
}

fn round_trip(link: &mut dyn Link, deadline: Duration) -> Result<()> {
    let ping: Control = [PING, 0x5eed, 2, 3, 4, 5, 6, 7];
    link.send_control(&ping)?;
    let answer = link.recv_control(Instant::now() + deadline)?;
    ensure!(answer[0] == ANSWER && answer[1..] == ping[1..], "the answer to a PING was not its echo: {answer:?}");
    Ok(())
}

/// One timed run: `n` round trips, each timed into `all` and into the run's own histogram,
/// with the CPU time both tasks used meanwhile.
/// `all` is None for a warm-up run, whose round trips go into no percentile.
pub fn trips(link: &mut dyn Link, n: u64, mut all: Option<&mut Latencies>, deadline: Duration) -> Result<Trips> {
    let (partner_before, _) = report(link, deadline)?;
    let driver_before = thread_cpu_ns();
    let mut this_run = Latencies::new();
    for _ in 0..n {
        let start = Instant::now();
        round_trip(link, deadline)?;
        let took = start.elapsed();
        this_run.record(took);
        if let Some(all) = all.as_deref_mut() {
            all.record(took);
        }
    }
    let driver = thread_cpu_ns() - driver_before;
    let (partner_after, partner_cpu) = report(link, deadline)?;
    let cpu_ns = driver + partner_after.saturating_sub(partner_before);
    Ok(Trips {
        p50_ns: this_run.percentile_ns(50.0) as f64,
        cpu_ns: cpu_ns as f64 / n as f64,
        round_trips: n,
        ran_on: [harness::cpu::current()?, partner_cpu],
    })
}

/// What one bulk run moved.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Moved {
    pub gb_per_s: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub checksum_sent: u64,
    pub checksum_received: u64,
}

impl Moved {
    pub fn checksums_match(&self) -> bool {
        self.checksum_sent == self.checksum_received && self.bytes_sent == self.bytes_received
    }
}

/// One timed bulk run: `count` messages of `size` bytes, from the BULK command until the
/// partner's answer that all of it arrived. `seed` makes each run's contents different, so
/// that a message left over from an earlier run cannot pass the check.
///
/// The sender's data exists before the clock starts, as data to send usually does: each
/// message is copied from it into the mechanism, with its first word made unique, so that a
/// lost or repeated message changes the checksum.
pub fn bulk(link: &mut dyn Link, size: usize, count: u64, seed: u64, deadline: Duration) -> Result<Moved> {
    let mut source = harness::mem::PageBuf::zeroed(size);
    let source_sum = fill(&mut source, seed);
    let first = source.get(..8).map_or(0, |w| u64::from_ne_bytes(w.try_into().expect("8 bytes")));
    let start = Instant::now();
    link.send_control(&[BULK, size as u64, count, 0, 0, 0, 0, 0])?;
    let (mut sent, mut bytes_sent) = (0u64, 0u64);
    for i in 0..count {
        link.send_bulk(size, &mut |m| {
            bytes_sent += m.len() as u64;
            m.copy_from_slice(&source);
            let mut sum = source_sum;
            if size >= 8 {
                let unique = first ^ (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                m[..8].copy_from_slice(&unique.to_ne_bytes());
                sum = sum.wrapping_sub(first).wrapping_add(unique);
            }
            sent = sent.wrapping_add(sum);
        })?;
    }
    let answer = link.recv_control(Instant::now() + deadline)?;
    let took = start.elapsed();
    ensure!(answer[0] == ANSWER, "expected the partner's bulk answer, got {}", answer[0]);
    Ok(Moved {
        gb_per_s: bytes_sent as f64 / took.as_secs_f64() / 1e9,
        bytes_sent,
        bytes_received: answer[2],
        checksum_sent: sent,
        checksum_received: answer[1],
    })
}

/// Writes a pattern that depends on `seed` and on each word's place, and returns its
/// checksum (the one [`checksum`] computes on the receiving side).
pub fn fill(message: &mut [u8], seed: u64) -> u64 {
    // Each word is a step of a Weyl sequence, mixed by a shift: cheap enough to vectorize,
    // so that making the data costs less than moving it.
    const STEP: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut sum = 0u64;
    let mut chunks = message.chunks_exact_mut(8);
    let mut v = seed.wrapping_mul(STEP);
    for word in &mut chunks {
        v = v.wrapping_add(STEP);
        let value = v ^ (v >> 29);
        word.copy_from_slice(&value.to_ne_bytes());
        sum = sum.wrapping_add(value);
    }
    for b in chunks.into_remainder() {
        *b = 0xa5;
        sum = sum.wrapping_add(0xa5);
    }
    sum
}

/// The wrapping sum of a message's 64-bit words (and of its trailing bytes).
pub fn checksum(message: &[u8]) -> u64 {
    let chunks = message.chunks_exact(8);
    let tail: u64 = chunks.remainder().iter().map(|&b| u64::from(b)).sum();
    chunks.map(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes"))).fold(tail, u64::wrapping_add)
}

/// The other task of an exchange, and how it ends.
pub enum Partner {
    Process(harness::Child),
    /// A thread, and the flag it sets as it ends (see [`crate::plumbing::EndsFlag`]).
    Thread(std::thread::JoinHandle<Result<()>>, std::sync::Arc<std::sync::atomic::AtomicBool>),
}

/// What a message needs room for: `bulk` is the largest bulk message (0: control only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub bulk: usize,
}

impl Shape {
    pub const CONTROL: Shape = Shape { bulk: 0 };

    /// How many messages may be in flight: about 4 MiB of them, at least 4, at most 256.
    /// Every mechanism that can be bounded gets the same bound: the same back-pressure.
    pub fn slots(&self) -> usize {
        (4usize << 20).checked_div(self.bulk).map_or(4, |n| n.clamp(4, 256))
    }

    /// The largest message either way.
    pub fn message_bytes(&self) -> usize {
        self.bulk.max(CONTROL_BYTES)
    }

    pub fn ring(&self) -> crate::links::RingLayout {
        crate::links::RingLayout { forth: (self.slots(), self.message_bytes()), back: (4, CONTROL_BYTES) }
    }
}

/// A driver's end of a mechanism with a partner answering on the other end.
pub struct Session {
    pub link: Box<dyn Link>,
    pub partner: Partner,
    /// What must outlive the partner: a segment, queues. Dropped last (field order).
    pub keep: Vec<Box<dyn std::any::Any>>,
    /// Where the messages are written, for a mechanism that writes them into memory (the
    /// rings): the run reads the huge pages behind it and its kind (harness::mem::seen_at).
    pub memory: Option<usize>,
}

impl Session {
    /// Stops the partner and waits for it (with the deadline); its own error, if it had one,
    /// comes first.
    pub fn finish(mut self, deadline: Duration) -> Result<()> {
        let stopped = stop(&mut *self.link);
        let ended = self.close(deadline);
        ended.and(stopped)
    }

    /// After a failed run: the error, with what became of the partner.
    pub fn fail(self, error: anyhow::Error) -> anyhow::Error {
        match self.close(Duration::from_secs(2)) {
            Ok(()) => error,
            Err(e) => error.context(format!("{e:#}")),
        }
    }

    /// Closes our end, so that the partner's next receive fails and it returns, and waits
    /// for it up to `deadline`.
    pub fn close(self, deadline: Duration) -> Result<()> {
        let Session { link, partner, keep, memory: _ } = self;
        drop(link);
        let ended = Session::end(partner, deadline);
        drop(keep);
        ended
    }

    fn end(partner: Partner, deadline: Duration) -> Result<()> {
        match partner {
            Partner::Process(child) => child.wait(deadline)?.check("the partner process"),
            Partner::Thread(handle, ended) => {
                // A thread cannot be killed: our end is closed, so it returns; wait for that up
                // to the deadline. One that does not is left running, and a fork from now on
                // would copy a process with a second thread in it: the row forks no more.
                // Looked at every 50 µs: a thread side ends its partner after every run, and it
                // ends at once (at 200 µs the waits added 0.06 s to a `--quick` row).
                let seen = harness::poll::poll_until(
                    deadline,
                    "the partner thread to end after its link closed",
                    Duration::from_micros(50),
                    || Ok(ended.load(std::sync::atomic::Ordering::Acquire).then_some(())),
                );
                if let Err(e) = seen {
                    crate::plumbing::refuse_forks(format!("a partner thread did not end ({e})"));
                    return Err(e.context("a partner thread outlives its session: this row forks no more"));
                }
                handle.join().map_err(|_| anyhow::anyhow!("the partner thread panicked"))?.context("the partner thread")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_checksum_matches_the_sender_fill_and_catches_damage() {
        let mut m = vec![0u8; 4099];
        let sent = fill(&mut m, 42);
        assert_eq!(checksum(&m), sent);
        m[100] ^= 1;
        assert_ne!(checksum(&m), sent, "one flipped bit changes the sum");
        let mut other = vec![0u8; 4099];
        assert_ne!(fill(&mut other, 43), sent, "another run's contents do not pass");
    }
}
