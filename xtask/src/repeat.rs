//! `cargo xtask compare --repeat N`: the same suite N times in a row, and how stable each
//! experiment was. A verdict a user can trust comes out the same run after run; a median that
//! strays far from the median of medians says the machine or the method drifts.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use harness::report::{Better, Expected, Kind, Verdict, judge_interval};
use harness::stats::Interval;
use serde::Serialize;

use crate::compare::Document;

/// How one experiment fared over the runs.
#[derive(Debug, Serialize, PartialEq)]
pub struct Stability {
    pub row: String,
    pub id: String,
    pub kind: Kind,
    /// The side the claim expects to win, and for `measure` which way is better: together
    /// they say which lines of the band separate two verdicts (`near_line`).
    pub expected: Expected,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub better: Option<Better>,
    /// How many runs gave each verdict.
    pub verdicts: BTreeMap<Verdict, usize>,
    /// More than one verdict was seen.
    pub changed: bool,
    /// Both `holds` and `reversed` were seen: the claim's answer itself flipped.
    pub flipped: bool,
    /// The largest distance of any run's median from the median of the runs' medians, as a
    /// fraction of it, per side (`measure` only, and only sides that ran every time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_stray: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_stray: Option<f64>,
    /// The same for the ratio: the largest distance of any run's ratio from the median of the
    /// runs' ratios (`measure` only, and only when every run had one). The two sides of a
    /// pair run in turns, so a machine that is slower for a while moves both medians and not
    /// their ratio: side strays well above the ratio's were the machine's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_stray: Option<f64>,
    /// Each run's ratio with its 95 % interval, `[ratio, low, high]` (`measure` only), so that
    /// a verdict that changed shows whether its ratio sat at an edge of the band or moved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ratios: Vec<Option<[f64; 3]>>,
    /// Each run's median per side, one per run in run order, `null` where a run had none
    /// (`measure` only): a stray that every experiment shares in the same run is the
    /// machine, not the method.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub process_medians: Vec<Option<f64>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub thread_medians: Vec<Option<f64>>,
    /// For a measured experiment whose verdict changed: the line of the band (0.90, 0.95,
    /// 1.05 or 1.10) that the median of its runs' ratios sat within [`NEAR_LINE`] of, if any.
    /// Such a change comes from where the effect sits: an interval around a ratio that near a
    /// line reaches across it in some runs and not in others, however steady the ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub near_line: Option<f64>,
}

/// How near a band line the median of a changed experiment's ratios must be for the change to
/// be put down to the line: 2 %, about three times the half-width of a full run's interval in
/// the steadiest experiments (±0.6 % for switching's ping-pongs), so that an interval around
/// such a ratio can reach across the line while the ratio itself does not move.
pub const NEAR_LINE: f64 = 0.02;

/// The band line within [`NEAR_LINE`] of the median of the runs' ratios, if any, among the
/// lines that separate two verdicts for this experiment: the rule itself says which (a 10 %
/// line only on the side the claim expects to win; 0.95 and 1.05 always).
fn near_line(ratios: &[Option<[f64; 3]>], better: Better, expected: Expected) -> Option<f64> {
    let seen: Vec<f64> = ratios.iter().flatten().map(|r| r[0]).collect();
    if seen.is_empty() {
        return None;
    }
    let centre = harness::stats::median(&seen);
    let (tie, holds) = (harness::report::TIE_BAND, harness::report::HOLDS_BEYOND);
    let verdict_at = |x: f64| judge_interval(Interval { ratio: x, low: x, high: x }, better, expected);
    let separates = |line: f64| verdict_at(line * (1.0 - 1e-6)) != verdict_at(line * (1.0 + 1e-6));
    [1.0 - holds, 1.0 - tie, 1.0 + tie, 1.0 + holds]
        .into_iter()
        .filter(|&line| separates(line))
        .find(|line| (centre / line - 1.0).abs() <= NEAR_LINE)
}

/// All of `--repeat --json`.
#[derive(Serialize)]
struct Summary<'a> {
    runs: usize,
    machine: &'a crate::machine::Machine,
    experiments: Vec<Stability>,
    /// Measured experiments whose verdict changed, and how many measured experiments there are.
    measured_changed: usize,
    /// Of those that changed, how many had their ratios' median near a band line (`near_line`).
    measured_changed_near_line: usize,
    measured: usize,
    /// The same for the observed experiments (a crash that once took the process down and
    /// once did not, say, or one that ended in `error`): `observed_changed` of `observed`.
    observed_changed: usize,
    observed: usize,
    /// Experiments that went between `holds` and `reversed`.
    flipped: usize,
    /// Measured sides whose every median stayed within ±10 % of their median of medians.
    sides_within_10_percent: usize,
    sides: usize,
    /// Measured experiments whose every ratio stayed within ±10 % of the median of their
    /// ratios, of those with a ratio in every run.
    ratios_within_10_percent: usize,
    ratios_counted: usize,
    /// Each row's pace in each run (see [`pace`]), rows in the order they ran.
    pace: Vec<RowPace>,
    /// Rows that failed in some run.
    failures: Vec<String>,
}

/// How far one row's medians as a whole sat from their medians of medians, run by run.
#[derive(Debug, Serialize, PartialEq)]
pub struct RowPace {
    pub row: String,
    /// One entry per run: the median, over the row's measured sides, of (that run's median /
    /// the side's median of medians) - 1; `None` where no side of the row was measured.
    pub runs: Vec<Option<f64>>,
}

/// Each row's pace in each run. Stray says how far a side went; pace says whether a whole row
/// went with it. A run in which every side of a row is 20 % slower at once (pace +0.20) was
/// a slower machine while that row ran, which is not something either side did: on a shared
/// VM the host takes the CPUs or the memory bandwidth for a few seconds now and then. A side
/// that strays while its row's pace stays near 0 moved on its own.
pub fn pace(experiments: &[Stability], runs: usize) -> Vec<RowPace> {
    let mut rows: Vec<RowPace> = Vec::new();
    for e in experiments {
        if rows.last().is_none_or(|r| r.row != e.row) {
            rows.push(RowPace { row: e.row.clone(), runs: vec![None; runs] });
        }
    }
    for row in &mut rows {
        let mut per_run: Vec<Vec<f64>> = vec![Vec::new(); runs];
        for e in experiments.iter().filter(|e| e.row == row.row && e.kind == Kind::Measure) {
            for medians in [&e.process_medians, &e.thread_medians] {
                // Only sides measured in every run, as for the stray.
                let Some(distances) = distances(medians).filter(|d| d.len() == runs) else { continue };
                for (run, d) in distances.into_iter().enumerate() {
                    per_run[run].push(d);
                }
            }
        }
        for (slot, values) in row.runs.iter_mut().zip(per_run) {
            *slot = (!values.is_empty()).then(|| harness::stats::median(&values));
        }
    }
    rows
}

/// One experiment over the runs: its kind, each run's verdict, each side's median per run,
/// each run's ratio with its interval (one slot per run, `None` where that run had none), and
/// which way is better and which side the claim expects to win.
type Seen = (Kind, Vec<Verdict>, [Vec<Option<f64>>; 2], Vec<Option<[f64; 3]>>, (Option<Better>, Expected));

/// Gathers the runs per experiment, in the order of the first run.
pub fn stability(docs: &[Document]) -> Vec<Stability> {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut seen: BTreeMap<(String, String), Seen> = BTreeMap::new();
    let runs = docs.len();
    for (run, doc) in docs.iter().enumerate() {
        for report in &doc.reports {
            for e in &report.experiments {
                let key = (report.row.clone(), e.id.clone());
                let entry = seen.entry(key.clone()).or_insert_with(|| {
                    order.push(key);
                    (e.kind, Vec::new(), [vec![None; runs], vec![None; runs]], vec![None; runs], (e.better, e.expected))
                });
                entry.1.push(e.verdict);
                if let (Some(r), Some(low), Some(high)) = (e.ratio, e.ratio_low, e.ratio_high) {
                    entry.3[run] = Some([r, low, high]);
                }
                for (i, side) in [&e.process, &e.thread].into_iter().enumerate() {
                    entry.2[i][run] = side.as_ref().and_then(|s| s.median);
                }
            }
        }
    }
    order
        .into_iter()
        .map(|key| {
            let (kind, verdicts, medians, ratios, claim) = &seen[&key];
            let mut counts = BTreeMap::new();
            for v in verdicts {
                *counts.entry(*v).or_insert(0) += 1;
            }
            // A stray only for a side measured in every run.
            let stray_of = |m: &Vec<Option<f64>>| distances(m).filter(|_| *kind == Kind::Measure).map(|d| stray(&d));
            let measured = *kind == Kind::Measure;
            let changed = counts.len() > 1;
            Stability {
                row: key.0.clone(),
                id: key.1.clone(),
                kind: *kind,
                expected: claim.1,
                better: claim.0,
                changed,
                flipped: counts.contains_key(&Verdict::Holds) && counts.contains_key(&Verdict::Reversed),
                verdicts: counts,
                process_stray: stray_of(&medians[0]),
                thread_stray: stray_of(&medians[1]),
                ratio_stray: stray_of(&ratios.iter().map(|r| r.map(|r| r[0])).collect()),
                ratios: if measured { ratios.clone() } else { Vec::new() },
                process_medians: if measured { medians[0].clone() } else { Vec::new() },
                thread_medians: if measured { medians[1].clone() } else { Vec::new() },
                near_line: match claim {
                    (Some(better), expected) if measured && changed => near_line(ratios, *better, *expected),
                    _ => None,
                },
            }
        })
        .collect()
}

/// The smallest and largest ratio over the runs, as "0.93-0.97", or "-" for none.
fn ratio_range(ratios: &[Option<[f64; 3]>]) -> String {
    let seen: Vec<f64> = ratios.iter().flatten().map(|r| r[0]).collect();
    let (low, high) = seen.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &r| (l.min(r), h.max(r)));
    if seen.is_empty() { "-".to_string() } else { format!("{low:.2}-{high:.2}") }
}

/// Each run's median as a distance from the median of medians, m / median(m) - 1; `None`
/// when a run has no median, there are none, or their median is not positive.
fn distances(medians: &[Option<f64>]) -> Option<Vec<f64>> {
    let all: Vec<f64> = medians.iter().copied().collect::<Option<_>>()?;
    if all.is_empty() {
        return None;
    }
    let centre = harness::stats::median(&all);
    (centre > 0.0).then(|| all.iter().map(|m| m / centre - 1.0).collect())
}

/// The stray of a side: the largest |distance| of a run's median (see [`distances`]).
fn stray(distances: &[f64]) -> f64 {
    distances.iter().map(|d| d.abs()).fold(0.0, f64::max)
}

/// Prints the stability of every experiment; false when some verdict flipped between holds
/// and reversed, a row failed, or an experiment ended in `error` in some run (as a single
/// `compare` exits 1 for those).
pub fn report(docs: &[Document], json: bool) -> Result<bool> {
    let experiments = stability(docs);
    let measured: Vec<&Stability> = experiments.iter().filter(|s| s.kind == Kind::Measure).collect();
    let strays: Vec<f64> = measured.iter().flat_map(|s| [s.process_stray, s.thread_stray]).flatten().collect();
    let ratio_strays: Vec<f64> = measured.iter().filter_map(|s| s.ratio_stray).collect();
    // Each failed row once, in the order of its first failure.
    let mut failures: Vec<String> = Vec::new();
    for row in docs.iter().flat_map(|d| d.failures.iter().map(|f| &f.row)) {
        if !failures.contains(row) {
            failures.push(row.clone());
        }
    }
    let summary = Summary {
        runs: docs.len(),
        machine: &docs[0].machine,
        measured_changed: measured.iter().filter(|s| s.changed).count(),
        measured_changed_near_line: measured.iter().filter(|s| s.near_line.is_some()).count(),
        measured: measured.len(),
        observed_changed: experiments.iter().filter(|s| s.kind == Kind::Observe && s.changed).count(),
        observed: experiments.iter().filter(|s| s.kind == Kind::Observe).count(),
        flipped: experiments.iter().filter(|s| s.flipped).count(),
        sides_within_10_percent: strays.iter().filter(|&&s| s <= 0.10).count(),
        sides: strays.len(),
        ratios_within_10_percent: ratio_strays.iter().filter(|&&s| s <= 0.10).count(),
        ratios_counted: ratio_strays.len(),
        failures,
        pace: pace(&experiments, docs.len()),
        experiments,
    };
    let text =
        if json { serde_json::to_string_pretty(&summary).context("serializing")? + "\n" } else { human(&summary) };
    let written = harness::row::print_out(&text);
    let errors = docs.iter().any(|d| d.reports.iter().any(harness::report::Report::has_errors));
    Ok(written && summary.flipped == 0 && summary.failures.is_empty() && !errors)
}

fn human(s: &Summary) -> String {
    let mut out = s.machine.header();
    out.push('\n');
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_width(100);
    t.set_header(vec!["Experiment", "Verdicts seen", "Ratios seen", "Process stray", "Thread stray", "Ratio stray"]);
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("±{:.1}%", x * 100.0));
    for e in &s.experiments {
        let seen: Vec<String> = e.verdicts.iter().map(|(v, n)| format!("{v}×{n}")).collect();
        let flag = if e.flipped { "  FLIPPED" } else { "" };
        let line = e.near_line.map(|l| format!(" (at {l:.2})")).unwrap_or_default();
        t.add_row(vec![
            format!("{}/{}", e.row, e.id),
            format!("{}{line}{flag}", seen.join(" ")),
            ratio_range(&e.ratios),
            pct(e.process_stray),
            pct(e.thread_stray),
            pct(e.ratio_stray),
        ]);
    }
    out.push_str(&format!("{t}\n"));
    out.push_str(&format!(
        "{} runs. Stray: the largest distance of one run's median from the median of the {} medians.\n",
        s.runs, s.runs
    ));
    out.push_str(&format!(
        "{} of {} measured sides stayed within ±10%, and {} of {} ratios: the sides of a pair run in turns,\n\
         so a stray both sides share was the machine's. {} experiments went between holds and reversed.\n",
        s.sides_within_10_percent, s.sides, s.ratios_within_10_percent, s.ratios_counted, s.flipped
    ));
    out.push_str("Pace: each row's median side, as a distance from its median of medians, run by run\n");
    out.push_str("(a whole row off at once was the machine while it ran, not a side):\n");
    for p in &s.pace {
        let runs: Vec<String> =
            p.runs.iter().map(|r| r.map_or("-".to_string(), |r| format!("{:+.0}%", r * 100.0))).collect();
        // Ten runs to a line, seven columns each: 86 columns at most.
        for (i, chunk) in runs.chunks(10).enumerate() {
            let name = if i == 0 { p.row.as_str() } else { "" };
            out.push_str(&format!("  {name:<14}{}\n", chunk.iter().map(|r| format!("{r:>7}")).collect::<String>()));
        }
    }
    for f in &s.failures {
        out.push_str(&format!("row {f} failed in at least one run\n"));
    }
    out.push_str(&format!(
        "{} of {} measured experiments changed verdict; {} of them had the median of their ratios within {:.0}% \
         of a line of the band (\"at ...\"): an effect that sits on the rule's edge. {} of {} observed experiments \
         changed verdict.\n",
        s.measured_changed,
        s.measured,
        s.measured_changed_near_line,
        NEAR_LINE * 100.0,
        s.observed_changed,
        s.observed
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(row: &str, process: &[f64], thread: &[f64]) -> Stability {
        Stability {
            row: row.to_string(),
            id: "x".to_string(),
            kind: Kind::Measure,
            expected: Expected::Thread,
            better: Some(Better::Lower),
            verdicts: BTreeMap::new(),
            changed: false,
            flipped: false,
            process_stray: None,
            thread_stray: None,
            ratio_stray: None,
            ratios: Vec::new(),
            process_medians: process.iter().map(|&m| Some(m)).collect(),
            thread_medians: thread.iter().map(|&m| Some(m)).collect(),
            near_line: None,
        }
    }

    #[test]
    fn near_line_names_the_band_line_next_to_the_median_ratio() {
        let runs = |rs: &[f64]| rs.iter().map(|&r| Some([r, r * 0.99, r * 1.01])).collect::<Vec<_>>();
        let (lower, higher) = (Better::Lower, Better::Higher);
        let thread = |rs: &[f64]| near_line(&runs(rs), lower, Expected::Thread);
        assert_eq!(thread(&[1.127, 1.117, 1.117, 1.117, 1.119]), Some(1.10), "switching at 1.10");
        let control = near_line(&runs(&[0.915, 0.947, 0.943, 0.94, 0.943]), lower, Expected::Same);
        assert_eq!(control, Some(0.95), "a control at 0.95");
        assert_eq!(thread(&[0.85, 0.86, 0.805, 0.761, 0.891]), None, "a ratio that wandered");
        assert_eq!(thread(&[1.25, 1.3]), None, "far beyond every line");
        assert_eq!(near_line(&[None, None], lower, Expected::Thread), None, "no ratio");
        // 0.90 separates no verdicts when the claim expects the thread to win (lower is
        // better): below 0.95 it is `reversed` either way. It does when the process is expected
        // to win, or when higher is better and the thread is expected.
        assert_eq!(thread(&[0.909, 0.901, 0.912]), None, "pipe-cross-cpu at 0.91");
        assert_eq!(near_line(&runs(&[0.909, 0.901, 0.912]), lower, Expected::Process), Some(0.90));
        assert_eq!(near_line(&runs(&[0.909, 0.901, 0.912]), higher, Expected::Thread), Some(0.90));
        assert_eq!(near_line(&runs(&[1.09, 1.1]), lower, Expected::Same), None, "no 10 % line for a control");
    }

    #[test]
    fn pace_shows_a_whole_row_slow_in_one_run_and_not_one_side() {
        let experiments = vec![
            // Row a: every side 20 % slower in run 2.
            measured("a", &[10.0, 12.0, 10.0], &[5.0, 6.0, 5.0]),
            measured("a", &[100.0, 120.0, 100.0], &[1.0, 1.2, 1.0]),
            // Row b: one side of three strays by 50 % in run 3; the row's pace stays 0.
            measured("b", &[10.0, 10.0, 15.0], &[4.0, 4.0, 4.0]),
            measured("b", &[7.0, 7.0, 7.0], &[]),
        ];
        let p = pace(&experiments, 3);
        assert_eq!(p.iter().map(|r| r.row.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let near = |x: Option<f64>, y: f64| (x.unwrap() - y).abs() < 1e-9;
        assert!(near(p[0].runs[0], 0.0) && near(p[0].runs[1], 0.2) && near(p[0].runs[2], 0.0), "{p:?}");
        assert!(p[1].runs.iter().all(|&r| near(r, 0.0)), "{p:?}");
    }

    #[test]
    fn stray_is_the_largest_relative_distance_from_the_median_of_medians() {
        let d = distances(&[Some(100.0), Some(110.0), Some(95.0)]).unwrap();
        assert!((stray(&d) - 0.10).abs() < 1e-12, "{d:?}");
        assert_eq!(distances(&[Some(0.0), Some(0.0)]), None, "no positive centre");
        assert_eq!(distances(&[Some(1.0), None]), None, "a run without a median");
        assert_eq!(distances(&[]), None);
    }
}
