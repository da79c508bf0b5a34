//! The report model: what a row prints with `--json`, and the one verdict rule.
//!
//! The names here are a contract (see DESIGN.md and docs/report.md): the tests, the xtask
//! and outside checks read them. Add fields if you must; never rename one.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The differences between the sides below this fraction count as `marginal`.
pub const MARGINAL_BELOW: f64 = 0.10;

/// One row's report: its claim and every experiment it ran.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub row: String,
    pub claim: String,
    /// False when the binary was built without optimisations: its timings mean little.
    pub optimized: bool,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Side>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<Side>,
    /// Process median divided by thread median (`measure` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
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
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The verdict rule for `measure` experiments (DESIGN.md, "Verdicts").
///
/// The spreads are each side's [low, high] over its runs. Overlapping spreads are a `tie`:
/// we never guess through noise. Otherwise the expected side must be better by
/// [`MARGINAL_BELOW`] or more to `hold`. Returns the verdict and the ratio process/thread.
pub fn judge(process: &Side, thread: &Side, better: Better, expected: Expected) -> (Verdict, f64) {
    let (Some(pm), Some(tm)) = (process.median, thread.median) else {
        return (Verdict::Error, f64::NAN);
    };
    let ratio = pm / tm;
    let p = (process.low.unwrap_or(pm), process.high.unwrap_or(pm));
    let t = (thread.low.unwrap_or(tm), thread.high.unwrap_or(tm));
    let overlap = p.0 <= t.1 && t.0 <= p.1;
    if overlap || !ratio.is_finite() {
        return (Verdict::Tie, ratio);
    }
    // Which side is better, and by how much relative to the worse one.
    let process_better = match better {
        Better::Lower => pm < tm,
        Better::Higher => pm > tm,
    };
    // How many times better the better side is: 1.25 means 25 % better.
    let advantage = if process_better == (better == Better::Lower) { tm / pm } else { pm / tm };
    let verdict = match expected {
        // The claim "the same" is contradicted by any clear difference.
        Expected::Same => Verdict::Reversed,
        Expected::Process if !process_better => Verdict::Reversed,
        Expected::Thread if process_better => Verdict::Reversed,
        _ if advantage >= 1.0 + MARGINAL_BELOW => Verdict::Holds,
        _ => Verdict::Marginal,
    };
    (verdict, ratio)
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

    fn side(median: f64, low: f64, high: f64) -> Side {
        Side { median: Some(median), low: Some(low), high: Some(high), runs: Some(5), ..Side::default() }
    }

    #[test]
    fn clear_win_of_the_expected_side_holds() {
        let (v, r) = judge(&side(200.0, 190.0, 210.0), &side(100.0, 95.0, 105.0), Better::Lower, Expected::Thread);
        assert_eq!(v, Verdict::Holds);
        assert!((r - 2.0).abs() < 1e-9);
    }

    #[test]
    fn small_separated_win_is_marginal() {
        // 5 % better, spreads apart.
        let (v, _) = judge(&side(105.0, 104.0, 106.0), &side(100.0, 99.0, 101.0), Better::Lower, Expected::Thread);
        assert_eq!(v, Verdict::Marginal);
    }

    #[test]
    fn win_of_the_other_side_is_reversed() {
        let (v, _) = judge(&side(80.0, 78.0, 82.0), &side(100.0, 99.0, 101.0), Better::Lower, Expected::Thread);
        assert_eq!(v, Verdict::Reversed);
    }

    #[test]
    fn overlapping_spreads_are_a_tie_even_with_a_large_median_gap() {
        let (v, _) = judge(&side(200.0, 90.0, 300.0), &side(100.0, 95.0, 105.0), Better::Lower, Expected::Thread);
        assert_eq!(v, Verdict::Tie);
    }

    #[test]
    fn higher_is_better_is_respected() {
        let (v, _) = judge(&side(300.0, 290.0, 310.0), &side(100.0, 95.0, 105.0), Better::Higher, Expected::Process);
        assert_eq!(v, Verdict::Holds);
        let (v, _) = judge(&side(300.0, 290.0, 310.0), &side(100.0, 95.0, 105.0), Better::Higher, Expected::Thread);
        assert_eq!(v, Verdict::Reversed);
    }

    #[test]
    fn a_clear_difference_contradicts_same() {
        let (v, _) = judge(&side(300.0, 290.0, 310.0), &side(100.0, 95.0, 105.0), Better::Lower, Expected::Same);
        assert_eq!(v, Verdict::Reversed);
        let (v, _) = judge(&side(100.0, 90.0, 110.0), &side(100.0, 95.0, 105.0), Better::Lower, Expected::Same);
        assert_eq!(v, Verdict::Tie);
    }

    #[test]
    fn exactly_ten_percent_holds() {
        let (v, _) = judge(&side(110.0, 110.0, 110.0), &side(100.0, 100.0, 100.0), Better::Lower, Expected::Thread);
        assert_eq!(v, Verdict::Holds);
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
    fn json_uses_the_contract_names() {
        let e = Experiment {
            id: "x".into(),
            title: "t".into(),
            kind: Kind::Measure,
            unit: Some("ns/switch".into()),
            better: Some(Better::Lower),
            expected: Expected::Thread,
            process: Some(side(2.0, 1.0, 3.0)),
            thread: None,
            ratio: Some(1.5),
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
        assert_eq!(v["process"]["median"], 2.0);
        assert!(v.get("thread").is_none());
    }
}
