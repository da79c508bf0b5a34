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

/// Readings taken as a run goes on, at the start and the end of each experiment, so that a
/// short experiment can be judged over a window long enough for /proc/stat's resolution: its
/// own time plus what came just before it, or, near the start of the run where nothing came
/// before, just after it. The windows are chosen once the experiments have run
/// ([`Monitor::others_share`]), so that no experiment waits for its window to fill: a row
/// whose first experiment took 50 ms used to sleep 100 ms before the next one could start.
#[derive(Default)]
pub struct Monitor {
    readings: Vec<Reading>,
}

/// Where a reading sits among a [`Monitor`]'s readings.
pub type Mark = usize;

impl Monitor {
    /// Takes a reading now (as an experiment starts or ends, once its children are reaped: a
    /// child's CPU time counts as ours only then), and says where it sits. Workers that a host
    /// killed at its deadline left behind may still be running at an end reading; their time
    /// then counts as other programs', which can only turn a verdict into a tie.
    pub fn mark(&mut self) -> Option<Mark> {
        let r = Reading::now()?;
        self.readings.push(r);
        Some(self.readings.len() - 1)
    }

    /// The window of an experiment that ran from reading `start` to reading `end`: the latest
    /// reading at or before `start` that lies `MIN_WINDOW` or more before `end`, up to `end`;
    /// where there is none (near the start of the run), from the first reading up to the
    /// first one at or after `end` that lies `MIN_WINDOW` or more after it. `None` when no
    /// reading is late enough yet (see [`Monitor::settle`]).
    pub fn window(&self, start: Mark, end: Mark) -> Option<(Mark, Mark)> {
        let long_enough =
            |from: Mark, to: Mark| self.readings[to].at.duration_since(self.readings[from].at) >= MIN_WINDOW;
        if let Some(from) = (0..=start).rev().find(|&from| long_enough(from, end)) {
            return Some((from, end));
        }
        (end..self.readings.len()).find(|&to| long_enough(0, to)).map(|to| (0, to))
    }

    /// Makes sure every window can be chosen: when the last reading lies less than
    /// `MIN_WINDOW` after the first (a run shorter than that), waits out the rest and takes
    /// one more.
    pub fn settle(&mut self) {
        let Some(first) = self.readings.first() else { return };
        let last = self.readings.last().map_or(first.at, |r| r.at);
        if last.duration_since(first.at) < MIN_WINDOW {
            std::thread::sleep(MIN_WINDOW.saturating_sub(first.at.elapsed()));
            self.mark();
        }
    }

    /// The share of all CPU time other programs used while the experiment between readings
    /// `start` and `end` ran (over its [`Monitor::window`]), and a lower bound of it (see
    /// [`Share`]). Call [`Monitor::settle`] first.
    pub fn others_share(&self, start: Mark, end: Mark) -> Option<Share> {
        let (from, to) = self.window(start, end)?;
        Some(self.readings[from].others_share_until(&self.readings[to]))
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

/// A reading taken as an experiment starts or ends.
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

    /// The share (0 to 1) of all CPUs' time from this reading to a `later` one that went to
    /// other programs.
    pub fn others_share_until(&self, later: &Reading) -> Share {
        let elapsed_us = later.at.duration_since(self.at).as_secs_f64() * 1e6;
        let busy = later.busy_us - self.busy_us;
        let others = busy - (later.own_us - self.own_us);
        let window_us = (elapsed_us * self.cpus as f64).max(1.0);
        let share = others / window_us;
        // /proc/stat counts in clock ticks (10 ms): a short experiment gets a coarse answer.
        let tick_us = 1e6 / procfs::ticks_per_second() as f64;
        let low = lower_bound(others, busy / tick_us, tick_us, window_us);
        let round = |x: f64| (x.clamp(0.0, 1.0) * 100.0).round() / 100.0;
        Share { share: round(share), low: round(low) }
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
        let s = r.others_share_until(&Reading::now().unwrap());
        assert!((0.0..=1.0).contains(&s.share) && s.low <= s.share, "{s:?}");
    }

    /// A monitor with readings at these milliseconds after the first.
    fn readings_at(ms: &[u64]) -> Monitor {
        let first = Reading::now().expect("/proc/stat");
        let readings = ms
            .iter()
            .map(|&m| Reading { at: first.at + Duration::from_millis(m), busy_us: 0.0, own_us: 0.0, cpus: 1 })
            .collect();
        Monitor { readings }
    }

    #[test]
    fn a_window_reaches_back_or_near_the_start_forward_to_150_ms() {
        // Readings at the run's start, then at each experiment's start and end.
        let m = readings_at(&[0, 0, 40, 40, 90, 90, 400, 400, 420]);
        // A long experiment is its own window.
        assert_eq!(m.window(5, 6), Some((5, 6)));
        // A short one after it reaches back to the latest reading 150 ms or more before its end.
        assert_eq!(m.window(7, 8), Some((5, 8)));
        // The first experiments have nothing 150 ms before their end: from the run's start to
        // the first reading 150 ms after it, whatever ran there, without waiting for it.
        assert_eq!(m.window(1, 2), Some((0, 6)));
        assert_eq!(m.window(3, 4), Some((0, 6)));
        // A run that ended before 150 ms has no window until `settle` adds a reading.
        let mut short = readings_at(&[0, 0, 40]);
        assert_eq!(short.window(1, 2), None);
        short.settle();
        assert_eq!(short.window(1, 2), Some((0, 3)));
        assert!(short.readings[3].at.duration_since(short.readings[0].at) >= MIN_WINDOW);
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
