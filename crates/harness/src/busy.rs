//! Was the machine ours while an experiment ran? Other programs that keep the CPUs busy turn
//! a timing into a measure of the scheduler's queue, and such a number can point either way
//! and consistently so. The runner measures how much of the machine's CPU time went to
//! anything but this run (including a hypervisor's steal time), and a measured verdict taken
//! while that share was high becomes `tie`, with the reason beside it.
//!
//! See also: proc_stat(5) (the "cpu" line), getrusage(2).

use std::time::{Duration, Instant};

use procfs::{CurrentSI, KernelStats};

/// Above this share of all CPU time used by other programs, a timing is not a verdict.
pub const BUSY_LIMIT: f64 = 0.25;

/// /proc/stat counts in clock ticks of 10 ms, so a share needs a window of this much at least.
const MIN_WINDOW: Duration = Duration::from_millis(150);

/// Readings taken as a run goes on, so that a short experiment can be judged over a window
/// long enough for /proc/stat's resolution: its own time plus what came just before it.
#[derive(Default)]
pub struct Monitor {
    readings: Vec<Reading>,
}

impl Monitor {
    /// Takes a reading now (as an experiment starts).
    pub fn mark(&mut self) {
        self.readings.extend(Reading::now());
    }

    /// The share of all CPU time other programs used over the last `MIN_WINDOW` or more,
    /// ending now, and a lower bound of it (see [`Share`]): from the latest reading old
    /// enough, waiting a little when there is none.
    pub fn others_share(&self) -> Option<Share> {
        let oldest = self.readings.first()?;
        std::thread::sleep(MIN_WINDOW.saturating_sub(oldest.at.elapsed()));
        let from = self.readings.iter().rev().find(|r| r.at.elapsed() >= MIN_WINDOW).unwrap_or(oldest);
        from.others_share()
    }
}

/// How much of the machine other programs used over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// The share (0 to 1) of all CPU time: the machine's busy time from /proc/stat minus ours.
    pub share: f64,
    /// The same, less the counting error of /proc/stat: it samples who runs at each clock tick,
    /// and a task that wakes often (as every ping-pong does) is caught running at more ticks
    /// than its time deserves. On an idle machine a 150 ms window of such work was seen at 0.03
    /// to 0.20. The busy rule judges by this bound: a machine counts as busy only when other
    /// programs used more than the limit beyond what the counting can explain.
    pub low: f64,
}

/// The lower bound of `others_us` over a window: two standard deviations of a count of
/// `busy_ticks` ticks (sqrt(n) ticks, as for any count of random events) taken off.
pub fn lower_bound(others_us: f64, busy_ticks: f64, tick_us: f64, window_us: f64) -> f64 {
    let low = others_us - 2.0 * busy_ticks.max(1.0).sqrt() * tick_us;
    (low / window_us).clamp(0.0, 1.0)
}

/// A reading taken as an experiment starts.
pub struct Reading {
    busy_us: f64,
    own_us: f64,
    at: Instant,
    cpus: usize,
}

impl Reading {
    /// `None` when /proc/stat cannot be read: then nothing is judged busy.
    pub fn now() -> Option<Reading> {
        let (busy_us, cpus) = machine_busy_us()?;
        Some(Reading { busy_us, own_us: own_cpu_us(), at: Instant::now(), cpus })
    }

    /// The share (0 to 1) of all CPUs' time since the reading that went to other programs.
    pub fn others_share(&self) -> Option<Share> {
        let (busy_us, _) = machine_busy_us()?;
        let elapsed_us = self.at.elapsed().as_secs_f64() * 1e6;
        let busy = busy_us - self.busy_us;
        let others = busy - (own_cpu_us() - self.own_us);
        let window_us = elapsed_us * self.cpus as f64;
        let share = others / window_us;
        // /proc/stat counts in clock ticks (10 ms): a short experiment gets a coarse answer.
        let tick_us = 1e6 / procfs::ticks_per_second() as f64;
        let low = lower_bound(others, busy / tick_us, tick_us, window_us);
        let round = |x: f64| (x.clamp(0.0, 1.0) * 100.0).round() / 100.0;
        Some(Share { share: round(share), low: round(low) })
    }
}

/// Every CPU's busy time so far, in µs: all but idle and iowait (steal included: the host ran
/// somebody else on our virtual CPU), and how many CPUs there are.
fn machine_busy_us() -> Option<(f64, usize)> {
    let stat = KernelStats::current().ok()?;
    let t = &stat.total;
    let ticks = t.user + t.nice + t.system + t.irq.unwrap_or(0) + t.softirq.unwrap_or(0) + t.steal.unwrap_or(0);
    let per_second = procfs::ticks_per_second() as f64;
    Some((ticks as f64 * 1e6 / per_second, stat.cpu_time.len().max(1)))
}

/// CPU time of this process and of its children that were reaped, in µs (getrusage(2)).
fn own_cpu_us() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let us = |who| {
        getrusage(who).map_or(0.0, |u| {
            let (a, b) = (u.user_time(), u.system_time());
            (a.tv_sec() + b.tv_sec()) as f64 * 1e6 + (a.tv_usec() + b.tv_usec()) as f64
        })
    };
    us(UsageWho::RUSAGE_SELF) + us(UsageWho::RUSAGE_CHILDREN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_gives_a_share_between_0_and_1() {
        let r = Reading::now().expect("/proc/stat");
        std::thread::sleep(std::time::Duration::from_millis(30));
        let s = r.others_share().unwrap();
        assert!((0.0..=1.0).contains(&s.share) && s.low <= s.share, "{s:?}");
    }

    #[test]
    fn the_bound_takes_off_what_tick_counting_can_explain() {
        // Seen on an idle machine: 11 busy ticks in a 150 ms window of 2 CPUs, 5 of them ours.
        assert_eq!(lower_bound(60_000.0, 11.0, 10_000.0, 300_000.0), 0.0);
        // Every CPU busy with others: 30 ticks, 25 of them others'.
        let low = lower_bound(250_000.0, 30.0, 10_000.0, 300_000.0);
        assert!(low > 0.25 && low < 250.0 / 300.0, "{low}");
        // A long window hardly moves: 1 s of 2 CPUs, half of it others'.
        assert!((lower_bound(1_000_000.0, 120.0, 10_000.0, 2_000_000.0) - 0.39).abs() < 0.01);
    }
}
