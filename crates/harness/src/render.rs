//! The human rendering of reports: a table per row, then the evidence behind each verdict.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

use crate::report::{Experiment, Report, Side, fmt_num};

/// A row's report as people read it.
pub fn row(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!("{}: {}\n", report.row, report.claim));
    out.push_str(&experiments_table(&report.experiments));
    out.push('\n');
    out.push_str(&format!("verdicts: {}\n", report.tally()));
    if !report.optimized {
        out.push_str("build: without optimisations, so its timings mean little (cargo run --release)\n");
    }
    if !report.idle_cpus.how.is_empty() {
        out.push_str(&format!("idle CPUs: {}\n", report.idle_cpus.how));
    }
    out.push_str(&details(&report.experiments));
    out
}

/// One line per experiment: what each side showed, the ratio and the verdict.
pub fn experiments_table(experiments: &[Experiment]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_width(120);
    t.set_header(vec!["Experiment", "Process", "Thread", "Ratio P/T (95% CI)", "Verdict"]);
    for e in experiments {
        let side = |s: &Option<Side>| s.as_ref().map(|s| s.summary.clone()).unwrap_or_else(|| "-".to_string());
        let ratio = ratio(e);
        t.add_row(vec![e.id.clone(), side(&e.process), side(&e.thread), ratio, e.verdict.to_string()]);
    }
    format!("{t}\n")
}

/// The ratio with its interval, "1.21 (1.15–1.27)", or "-" where there is none.
pub fn ratio(e: &Experiment) -> String {
    match (e.ratio, e.ratio_low, e.ratio_high) {
        (Some(r), Some(lo), Some(hi)) => format!("{} ({}–{})", fmt_ratio(r), fmt_ratio(lo), fmt_ratio(hi)),
        (Some(r), _, _) => fmt_ratio(r),
        _ => "-".to_string(),
    }
}

/// A ratio with two decimals near 1 (where the 5 % band is), three significant digits beyond.
fn fmt_ratio(r: f64) -> String {
    if r < 10.0 { format!("{r:.2}") } else { fmt_num(r) }
}

/// The evidence: every side's facts and the note, experiment by experiment.
pub fn details(experiments: &[Experiment]) -> String {
    let mut out = String::new();
    for e in experiments {
        out.push_str(&format!("\n{} ({}): {}\n", e.id, e.verdict, e.title));
        for (name, side) in [("process", &e.process), ("thread", &e.thread)] {
            if let Some(s) = side
                && !s.facts.is_empty()
            {
                let facts: Vec<String> = s.facts.iter().map(|(k, v)| format!("{k}={}", show(v))).collect();
                out.push_str(&format!("  {name:<7} {}\n", facts.join(", ")));
            }
        }
        if let Some(n) = &e.note {
            out.push_str(&format!("  note: {n}\n"));
        }
        if let Some(b) = &e.busy {
            out.push_str(&format!("  busy: {b}\n"));
        }
    }
    out
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_f64().filter(|f| f.fract() != 0.0).map(fmt_num).unwrap_or_else(|| n.to_string()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unoptimised_build_says_so_in_one_line_and_an_optimised_one_does_not() {
        let mut report = Report {
            row: "row".into(),
            claim: "claim".into(),
            optimized: true,
            idle_cpus: Default::default(),
            experiments: Vec::new(),
        };
        assert!(!row(&report).contains("without optimisations"));
        report.optimized = false;
        let text = row(&report);
        let said: Vec<&str> = text.lines().filter(|l| l.contains("without optimisations")).collect();
        assert_eq!(said.len(), 1, "{said:?}");
    }
}
