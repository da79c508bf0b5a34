//! Timing and statistics: warm-up, repeated runs, median with spread, percentiles.
//!
//! Every number a row reports is the median of at least [`MIN_RUNS`] runs after a warm-up,
//! with the spread of the runs as `low`/`high`: the 10th and 90th percentiles by nearest rank,
//! which are the minimum and maximum when there are fewer than ten runs.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

/// The fewest timed runs behind any reported number.
pub const MIN_RUNS: usize = 5;

/// The median of repeated runs with their spread.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub low: f64,
    pub high: f64,
    pub runs: usize,
    /// Every run's value in the order they were taken.
    pub samples: Vec<f64>,
}

/// Summarises the values of repeated runs. Panics on an empty slice: a caller bug.
pub fn summarize(samples: &[f64]) -> Summary {
    assert!(!samples.is_empty(), "summarize needs at least one sample");
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Summary {
        median: median_of_sorted(&sorted),
        low: percentile_of_sorted(&sorted, 10.0),
        high: percentile_of_sorted(&sorted, 90.0),
        runs: samples.len(),
        samples: samples.to_vec(),
    }
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100).
pub fn percentile_of_sorted(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Runs `run` `warmup` times untimed, then `runs` times, and summarises what it returned.
///
/// `run` returns the value of one run (for example ns per switch over a timed loop); it times
/// itself, so that setup can stay outside the timed region.
pub fn repeat(warmup: usize, runs: usize, mut run: impl FnMut() -> Result<f64>) -> Result<Summary> {
    ensure!(runs >= 1, "repeat needs at least one run");
    for _ in 0..warmup {
        run()?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        samples.push(run()?);
    }
    Ok(summarize(&samples))
}

/// How many iterations of a loop fill a time budget.
///
/// `trial(n)` runs the loop `n` times and returns how long that took. Starting from one
/// iteration, `n` grows until a trial takes a tenth of the budget, then it is scaled up to
/// the whole budget. A loop whose iterations cost 1 µs and one whose cost 40 µs both end up
/// taking about `budget`.
pub fn iterations_for(budget: Duration, mut trial: impl FnMut(u64) -> Result<Duration>) -> Result<u64> {
    let mut n = 1u64;
    loop {
        let took = trial(n)?;
        if took >= budget / 10 || n >= 1 << 40 {
            let per = took.as_secs_f64() / n as f64;
            let scaled = (budget.as_secs_f64() / per.max(1e-12)) as u64;
            return Ok(scaled.max(1));
        }
        n *= 4;
    }
}

/// Times one closure with the monotonic clock.
pub fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// A latency distribution in nanoseconds, for p50/p99 figures.
pub struct Latencies {
    histogram: hdrhistogram::Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// Records from 1 ns to one hour with three significant digits.
    pub fn new() -> Latencies {
        let histogram = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
            .expect("static histogram bounds are valid");
        Latencies { histogram }
    }

    pub fn record(&mut self, d: Duration) {
        let ns = (d.as_nanos() as u64).clamp(1, self.histogram.high());
        self.histogram.saturating_record(ns);
    }

    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    /// The value at a percentile (0..=100), in nanoseconds.
    pub fn percentile_ns(&self, p: f64) -> u64 {
        self.histogram.value_at_quantile(p / 100.0)
    }
}

/// Nanoseconds on the monotonic clock, comparable between processes on one machine
/// (`clock_gettime(CLOCK_MONOTONIC)`, see clock_gettime(2)).
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_runs_spread_is_min_and_max() {
        let s = summarize(&[5.0, 1.0, 3.0, 4.0, 2.0]);
        assert_eq!((s.median, s.low, s.high, s.runs), (3.0, 1.0, 5.0, 5));
    }

    #[test]
    fn many_runs_spread_drops_the_extremes() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let s = summarize(&v);
        assert_eq!((s.median, s.low, s.high), (10.5, 2.0, 18.0));
    }

    #[test]
    fn repeat_warms_up_then_counts_runs() {
        let mut calls = 0;
        let s = repeat(2, 5, || {
            calls += 1;
            Ok(calls as f64)
        })
        .unwrap();
        assert_eq!(calls, 7);
        assert_eq!(s.samples, vec![3.0, 4.0, 5.0, 6.0, 7.0]);
    }

    #[test]
    fn iterations_fill_the_budget() {
        // A fake loop costing 1 µs per iteration.
        let n = iterations_for(Duration::from_millis(10), |n| Ok(Duration::from_micros(n))).unwrap();
        assert!((9_000..=11_000).contains(&n), "{n}");
    }

    #[test]
    fn latencies_give_percentiles() {
        let mut l = Latencies::new();
        for us in 1..=100 {
            l.record(Duration::from_micros(us));
        }
        let p50 = l.percentile_ns(50.0);
        assert!((49_000..=51_000).contains(&p50), "{p50}");
        assert!(l.percentile_ns(99.0) >= 98_000);
    }
}
