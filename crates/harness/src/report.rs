//! The report model: what a row prints with `--json`, and the one verdict rule.
//!
//! The names here are a contract (see DESIGN.md and docs/report.md): the tests, the xtask
//! and outside checks read them. Add fields if you must; never rename one.

use serde::{Deserialize, Serialize};

use crate::stats::Interval;
use serde_json::{Map, Value};

/// A ratio whose interval reaches inside 1 ± this is a `tie`: no difference that matters.
pub const TIE_BAND: f64 = 0.05;

/// A ratio whose interval lies wholly beyond 1 ± this, on the expected side, `holds`; between
/// [`TIE_BAND`] and this it is `marginal`.
pub const HOLDS_BEYOND: f64 = 0.10;

/// One row's report: its claim and every experiment it ran.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub row: String,
    pub claim: String,
    /// False when the binary was built without optimisations: its timings mean little.
    pub optimized: bool,
    /// Whether idle CPUs were kept awake while the row measured (crate::awake).
    #[serde(default)]
    pub idle_cpus: crate::awake::IdleCpus,
    pub experiments: Vec<Experiment>,
}

/// `measure` experiments carry numbers; `observe` experiments carry facts only.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Measure,
    Observe,
}

/// Which way a measured number is better.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
}

/// The side the textbook claim says wins.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Expected {
    Process,
    Thread,
    Same,
}

/// The verdict on the textbook claim, computed by [`judge`] or [`judge_observation`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Holds,
    Marginal,
    Tie,
    Reversed,
    Contradicted,
    Skipped,
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Holds => "holds",
            Verdict::Marginal => "marginal",
            Verdict::Tie => "tie",
            Verdict::Reversed => "reversed",
            Verdict::Contradicted => "contradicted",
            Verdict::Skipped => "skipped",
            Verdict::Error => "error",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One experiment: the same question asked of a process side and a thread side.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Experiment {
    pub id: String,
    pub title: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub better: Option<Better>,
    pub expected: Expected,
    /// A headline experiment of its row: named in the summary table.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headline: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Side>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<Side>,
    /// Process median divided by thread median (`measure` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The 95 % confidence interval of `ratio`, by a seeded bootstrap over the runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_low: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_high: Option<f64>,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `measure` only: the share (0 to 1) of all CPU time that other programs used while the
    /// experiment ran; the evidence that the machine was ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub others_cpu: Option<f64>,
    /// Set when `others_cpu` was too high for a verdict: why the verdict is `tie`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<String>,
}

/// What one side measured or observed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Side {
    /// One line for people: what happened on this side.
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<usize>,
    /// Every timed run's value, in the order taken: what the median, the spread and the
    /// interval of the ratio were computed from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<f64>,
    /// The evidence: what was observed, and the preconditions of the numbers.
    pub facts: Map<String, Value>,
}

impl Side {
    /// An `observe` side: a summary line and its facts.
    pub fn observed(summary: impl Into<String>) -> Side {
        Side { summary: summary.into(), ..Side::default() }
    }

    /// A `measure` side from repeated runs; the summary line is written from the numbers.
    pub fn measured(stats: &crate::stats::Summary, unit: &str) -> Side {
        Side {
            summary: format!(
                "{} {unit} ({}–{}, {} runs)",
                fmt_num(stats.median),
                fmt_num(stats.low),
                fmt_num(stats.high),
                stats.runs
            ),
            median: Some(stats.median),
            low: Some(stats.low),
            high: Some(stats.high),
            runs: Some(stats.runs),
            samples: stats.samples.clone(),
            facts: Map::new(),
        }
    }

    /// Adds one fact (builder style).
    pub fn fact(mut self, name: &str, value: impl Serialize) -> Side {
        self.set(name, value);
        self
    }

    /// Adds one fact.
    pub fn set(&mut self, name: &str, value: impl Serialize) {
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.facts.insert(name.to_string(), value);
    }
}

/// A number with three significant digits at most, for people.
pub fn fmt_num(x: f64) -> String {
    let decimals = |a: f64| {
        if a >= 100.0 {
            0
        } else if a >= 10.0 {
            1
        } else {
            2
        }
    };
    // The decimals follow the rounded value: 9.999 rounds up to 10.00 with two, so it takes one
    // ("10.0"), and 99.96 none ("100").
    let rounded: f64 = format!("{x:.0$}", decimals(x.abs())).parse().unwrap_or(x);
    format!("{x:.0$}", decimals(rounded.abs()))
}

/// A count and its noun, singular for one: "1 round", "5 rounds".
pub fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The verdict rule for `measure` experiments (DESIGN.md, "Verdicts"; docs/report.md has a
/// worked example).
///
/// The ratio process/thread of the medians gets a 95 % interval from the runs of both sides
/// ([`crate::stats::ratio_interval`]), and the verdict comes from where that interval lies:
/// reaching inside 1 ± [`TIE_BAND`] is a `tie`; wholly on the expected side and beyond
/// 1 ± [`HOLDS_BEYOND`], `holds`; wholly on the expected side but not wholly beyond that,
/// `marginal`; wholly on the other side, `reversed`. For `expected: same`, an interval wholly
/// inside the band `holds`, one wholly outside is `reversed` (see [`faster`] for which side),
/// and anything between is a `tie`. `None` when the ratio means nothing (a side without runs,
/// a median that is not positive).
pub fn judge(process: &Side, thread: &Side, better: Better, expected: Expected) -> Option<(Verdict, Interval)> {
    let interval = crate::stats::ratio_interval(&samples(process), &samples(thread))?;
    Some(judge_published(interval, better, expected))
}

/// The interval as a report publishes it (`ratio`, `ratio_low`, `ratio_high` to three
/// decimals) and the verdict judged on exactly those figures: anyone who applies the rule to
/// the published interval gets the published verdict, also when an end lies on a band line
/// (a low end of 1.1004 is published as 1.100, which is not beyond 10 %: `marginal`).
pub fn judge_published(interval: Interval, better: Better, expected: Expected) -> (Verdict, Interval) {
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let published = Interval { ratio: round(interval.ratio), low: round(interval.low), high: round(interval.high) };
    (judge_interval(published, better, expected), published)
}

/// The runs of a side; a side with a median but no runs counts as that one run.
fn samples(side: &Side) -> Vec<f64> {
    if side.samples.is_empty() { side.median.into_iter().collect() } else { side.samples.clone() }
}

/// [`judge`] on an interval already computed.
pub fn judge_interval(i: Interval, better: Better, expected: Expected) -> Verdict {
    let winner = faster(i, better);
    if expected == Expected::Same {
        return match winner {
            Some(_) => Verdict::Reversed,
            None if i.low >= 1.0 - TIE_BAND && i.high <= 1.0 + TIE_BAND => Verdict::Holds,
            None => Verdict::Tie,
        };
    }
    match winner {
        None => Verdict::Tie,
        Some(w) if w != expected => Verdict::Reversed,
        Some(_) if i.low > 1.0 + HOLDS_BEYOND || i.high < 1.0 - HOLDS_BEYOND => Verdict::Holds,
        Some(_) => Verdict::Marginal,
    }
}

/// The side whose number is better beyond the tie band, by the whole interval; `None` when
/// the interval reaches inside 1 ± [`TIE_BAND`].
pub fn faster(i: Interval, better: Better) -> Option<Expected> {
    let process_higher = if i.low > 1.0 + TIE_BAND {
        true
    } else if i.high < 1.0 - TIE_BAND {
        false
    } else {
        return None;
    };
    Some(if process_higher == (better == Better::Higher) { Expected::Process } else { Expected::Thread })
}

/// The verdict rule for `observe` experiments: what was seen matches the claim, or not.
pub fn judge_observation(matches_claim: bool) -> Verdict {
    if matches_claim { Verdict::Holds } else { Verdict::Contradicted }
}

impl Report {
    /// How many experiments ended in each verdict, most favourable first: "holds in 2, tie in 1".
    pub fn tally(&self) -> String {
        tally(self.experiments.iter().map(|e| e.verdict))
    }

    /// True when any experiment failed to run.
    pub fn has_errors(&self) -> bool {
        self.experiments.iter().any(|e| e.verdict == Verdict::Error)
    }
}

/// Counts verdicts: "holds in 2, marginal in 1, tie in 3".
pub fn tally(verdicts: impl Iterator<Item = Verdict>) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for v in verdicts {
        *counts.entry(v).or_insert(0usize) += 1;
    }
    if counts.is_empty() {
        return "no experiments".to_string();
    }
    counts.iter().map(|(v, n)| format!("{v} in {n}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(low: f64, high: f64) -> Interval {
        Interval { ratio: (low + high) / 2.0, low, high }
    }

    fn runs(values: &[f64]) -> Side {
        let s = crate::stats::summarize(values);
        Side::measured(&s, "ns")
    }

    /// Runs scattered ±`noise` (a fraction) around `centre`, the same pattern on every call,
    /// for the process side.
    fn noisy(centre: f64, noise: f64, n: usize) -> Side {
        scattered(centre, noise, n, 0)
    }

    /// The same scatter for the thread side, in another order: the bootstrap resamples the
    /// two sides' runs as pairs, and with one pattern on both every pair would hold the same
    /// ratio and the interval would be a point. Runs that share nothing leave it its width.
    fn noisy_other(centre: f64, noise: f64, n: usize) -> Side {
        scattered(centre, noise, n, n / 2)
    }

    fn scattered(centre: f64, noise: f64, n: usize, shift: usize) -> Side {
        let v: Vec<f64> = (0..n)
            .map(|i| centre * (1.0 + noise * (((i * 5 + shift) % n) as f64 / (n - 1) as f64 * 2.0 - 1.0)))
            .collect();
        runs(&v)
    }

    /// An interval with a width, so that the test judges a spread and not a point.
    fn wide(i: Interval) -> Interval {
        assert!(i.high - i.low > 0.001, "the interval has no width: {i:?}");
        i
    }

    #[test]
    fn equal_medians_are_a_tie() {
        let (v, i) =
            judge(&noisy(100.0, 0.02, 11), &noisy_other(100.0, 0.02, 11), Better::Lower, Expected::Thread).unwrap();
        assert_eq!(v, Verdict::Tie);
        let i = wide(i);
        assert!(i.low <= 1.0 && i.high >= 1.0, "{i:?}");
    }

    #[test]
    fn a_two_percent_difference_with_tight_spreads_is_a_tie() {
        // Spreads of ±0.5 % that do not overlap: the old rule said `marginal`; 2 % is no
        // difference a reader should act on.
        let (v, i) =
            judge(&noisy(102.0, 0.005, 11), &noisy_other(100.0, 0.005, 11), Better::Lower, Expected::Thread).unwrap();
        assert_eq!(v, Verdict::Tie, "{i:?}");
        let i = wide(i);
        assert!(i.low > 1.0 && i.high < 1.05, "the interval alone is clear of 1, and inside the band: {i:?}");
    }

    #[test]
    fn a_thirty_percent_difference_holds_or_is_reversed() {
        let (p, t) = (noisy(130.0, 0.03, 11), noisy_other(100.0, 0.03, 11));
        wide(judge(&p, &t, Better::Lower, Expected::Thread).unwrap().1);
        assert_eq!(judge(&p, &t, Better::Lower, Expected::Thread).unwrap().0, Verdict::Holds);
        assert_eq!(judge(&p, &t, Better::Lower, Expected::Process).unwrap().0, Verdict::Reversed);
        assert_eq!(judge(&p, &t, Better::Higher, Expected::Process).unwrap().0, Verdict::Holds);
        assert_eq!(judge(&p, &t, Better::Higher, Expected::Thread).unwrap().0, Verdict::Reversed);
    }

    #[test]
    fn overlapping_noisy_samples_are_a_tie_even_with_a_gap_between_medians() {
        let (v, i) =
            judge(&noisy(130.0, 0.6, 7), &noisy_other(100.0, 0.6, 7), Better::Lower, Expected::Thread).unwrap();
        assert_eq!(v, Verdict::Tie, "{i:?}");
        wide(i);
    }

    #[test]
    fn the_same_samples_always_give_the_same_verdict() {
        // An 8 % difference with ±4 % spreads: an interval that reaches from inside the band
        // to beyond it, so that a bootstrap with another seed could judge it otherwise.
        let (p, t) = (noisy(108.0, 0.04, 9), noisy_other(100.0, 0.04, 9));
        let first = judge(&p, &t, Better::Lower, Expected::Thread);
        let (_, i) = first.unwrap();
        wide(i);
        for _ in 0..5 {
            assert_eq!(judge(&p, &t, Better::Lower, Expected::Thread), first);
        }
    }

    #[test]
    fn the_band_decides_between_marginal_and_holds() {
        let rule = |lo, hi| judge_interval(interval(lo, hi), Better::Lower, Expected::Thread);
        assert_eq!(rule(1.11, 1.30), Verdict::Holds);
        assert_eq!(rule(1.06, 1.30), Verdict::Marginal, "wholly beyond 5 %, not wholly beyond 10 %");
        assert_eq!(rule(1.04, 1.30), Verdict::Tie, "reaches inside the band");
        assert_eq!(rule(0.80, 0.94), Verdict::Reversed);
        assert_eq!(rule(0.80, 0.96), Verdict::Tie);
        // Higher is better: a ratio below 1 means the thread side won.
        let higher = |lo, hi| judge_interval(interval(lo, hi), Better::Higher, Expected::Thread);
        assert_eq!(higher(0.70, 0.89), Verdict::Holds);
        assert_eq!(higher(0.70, 0.92), Verdict::Marginal);
        assert_eq!(higher(1.06, 1.20), Verdict::Reversed);
    }

    #[test]
    fn the_verdict_is_judged_on_the_published_interval() {
        // Unrounded, 1.1004 is beyond 10 % (`holds`); published as 1.100 it is not.
        let raw = Interval { ratio: 1.15, low: 1.1004, high: 1.2 };
        assert_eq!(judge_interval(raw, Better::Lower, Expected::Thread), Verdict::Holds);
        let (v, published) = judge_published(raw, Better::Lower, Expected::Thread);
        assert_eq!((v, published.low, published.high), (Verdict::Marginal, 1.1, 1.2));
        // The same at the 5 % line of a control: 1.0496 is published as 1.050, inside the band.
        let (v, _) = judge_published(Interval { ratio: 1.02, low: 0.99, high: 1.0496 }, Better::Lower, Expected::Same);
        assert_eq!(v, Verdict::Holds);
    }

    #[test]
    fn same_holds_inside_the_band_and_names_the_faster_side_outside() {
        let rule = |lo, hi| judge_interval(interval(lo, hi), Better::Lower, Expected::Same);
        assert_eq!(rule(0.97, 1.04), Verdict::Holds);
        assert_eq!(rule(0.97, 1.08), Verdict::Tie, "neither inside nor clearly outside");
        assert_eq!(rule(1.08, 1.20), Verdict::Reversed);
        assert_eq!(faster(interval(1.08, 1.20), Better::Lower), Some(Expected::Thread));
        assert_eq!(faster(interval(0.80, 0.90), Better::Lower), Some(Expected::Process));
        assert_eq!(faster(interval(0.98, 1.20), Better::Lower), None);
    }

    #[test]
    fn a_ratio_of_non_positive_medians_is_not_judged() {
        // Opposite signs and zeros used to give `marginal` or `tie`; they give no ratio at all.
        assert_eq!(judge(&runs(&[-5.0; 7]), &runs(&[5.0; 7]), Better::Lower, Expected::Thread), None);
        assert_eq!(judge(&runs(&[0.0; 7]), &runs(&[5.0; 7]), Better::Lower, Expected::Thread), None);
    }

    #[test]
    fn observations_hold_or_contradict() {
        assert_eq!(judge_observation(true), Verdict::Holds);
        assert_eq!(judge_observation(false), Verdict::Contradicted);
    }

    #[test]
    fn tally_counts_every_verdict_most_favourable_first() {
        let t = tally([Verdict::Tie, Verdict::Holds, Verdict::Tie, Verdict::Marginal].into_iter());
        assert_eq!(t, "holds in 1, marginal in 1, tie in 2");
    }

    #[test]
    fn numbers_keep_three_significant_digits_also_where_rounding_carries() {
        let cases = [
            (0.0, "0.00"),
            (1.234, "1.23"),
            (9.994, "9.99"),
            (9.999, "10.0"),
            (12.34, "12.3"),
            (99.94, "99.9"),
            (99.96, "100"),
            (-9.999, "-10.0"),
            (1234.5, "1234"),
        ];
        for (x, shown) in cases {
            assert_eq!(fmt_num(x), shown, "{x}");
        }
    }

    #[test]
    fn a_count_of_one_takes_the_singular() {
        assert_eq!(counted(0, "frame", "frames"), "0 frames");
        assert_eq!(counted(1, "frame", "frames"), "1 frame");
        assert_eq!(counted(64, "connection", "connections"), "64 connections");
    }

    #[test]
    fn json_uses_the_contract_names() {
        let e = Experiment {
            id: "x".into(),
            title: "t".into(),
            kind: Kind::Measure,
            unit: Some("ns/switch".into()),
            better: Some(Better::Lower),
            expected: Expected::Thread,
            headline: true,
            process: Some(runs(&[1.0, 2.0, 3.0])),
            thread: None,
            ratio: Some(1.5),
            ratio_low: Some(1.2),
            ratio_high: Some(1.8),
            verdict: Verdict::Skipped,
            note: None,
            others_cpu: None,
            busy: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "measure");
        assert_eq!(v["better"], "lower");
        assert_eq!(v["expected"], "thread");
        assert_eq!(v["verdict"], "skipped");
        assert_eq!(v["headline"], true);
        assert_eq!(v["process"]["median"], 2.0);
        assert_eq!(v["process"]["samples"], serde_json::json!([1.0, 2.0, 3.0]));
        assert_eq!((v["ratio_low"].as_f64(), v["ratio_high"].as_f64()), (Some(1.2), Some(1.8)));
        assert!(v.get("thread").is_none());
    }
}
