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
        t.add_row(vec![e.id.clone(), side(&e.process), side(&e.thread), ratio, verdict(e)]);
    }
    format!("{t}\n")
}

/// The verdict as the tables show it: a `tie` that a busy machine forced says so, since the
/// timings alone said otherwise (the details give the share and what they said).
pub fn verdict(e: &Experiment) -> String {
    if e.busy.is_some() { format!("{} (busy)", e.verdict) } else { e.verdict.to_string() }
}

/// The ratio with its interval, "1.21 (1.15–1.27)", or "-" where there is none.
pub fn ratio(e: &Experiment) -> String {
    match (e.ratio, e.ratio_low, e.ratio_high) {
        (Some(r), Some(lo), Some(hi)) => format!("{} ({}–{})", fmt_ratio(r), fmt_ratio(lo), fmt_ratio(hi)),
        (Some(r), _, _) => fmt_ratio(r),
        _ => "-".to_string(),
    }
}

/// A ratio with two decimals near 1 (where the 5 % band is), three significant digits beyond
/// (also where two decimals would round up to 10.00).
fn fmt_ratio(r: f64) -> String {
    let two = format!("{r:.2}");
    if two.parse::<f64>().is_ok_and(|v| v < 10.0) { two } else { fmt_num(r) }
}

/// The evidence: every side's facts and the note, experiment by experiment.
pub fn details(experiments: &[Experiment]) -> String {
    let mut out = String::new();
    for e in experiments {
        out.push_str(&format!("\n{} ({}): {}\n", e.id, verdict(e), e.title));
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
        // Integers as they are; a float (whole or not) as a person reads a measured figure, so
        // that 1024.0 beside 1024.6 reads "1024" beside "1025", not "1024.0" beside "1025".
        Value::Number(n) if n.is_f64() => n.as_f64().map(fmt_num).unwrap_or_else(|| n.to_string()),
        Value::Number(n) => n.to_string(),
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

    #[test]
    fn a_tie_the_busy_machine_forced_says_so_in_the_table() {
        let e = Experiment {
            id: "x".into(),
            title: "t".into(),
            kind: crate::report::Kind::Measure,
            unit: Some("µs".into()),
            better: Some(crate::report::Better::Lower),
            expected: crate::report::Expected::Thread,
            headline: false,
            process: None,
            thread: None,
            ratio: None,
            ratio_low: None,
            ratio_high: None,
            verdict: crate::report::Verdict::Tie,
            note: None,
            others_cpu: Some(0.6),
            busy: None,
        };
        assert_eq!(verdict(&e), "tie");
        let busy = Experiment { busy: Some("other programs used 60%".into()), ..e };
        assert_eq!(verdict(&busy), "tie (busy)");
        assert!(experiments_table(std::slice::from_ref(&busy)).contains("tie (busy)"));
    }

    #[test]
    fn ratios_keep_two_decimals_below_ten_and_three_digits_from_ten() {
        for (r, shown) in [(0.954, "0.95"), (1.0, "1.00"), (9.994, "9.99"), (9.996, "10.0"), (123.4, "123")] {
            assert_eq!(fmt_ratio(r), shown, "{r}");
        }
    }

    #[test]
    fn facts_show_integers_as_they_are_and_every_float_as_a_measured_figure() {
        let shown = |v: serde_json::Value| show(&v);
        assert_eq!(shown(serde_json::json!(1024)), "1024");
        assert_eq!(shown(serde_json::json!(1024.0)), "1024");
        assert_eq!(shown(serde_json::json!(1024.6)), "1025");
        assert_eq!(shown(serde_json::json!(0.5)), "0.50");
        assert_eq!(shown(serde_json::json!(-3)), "-3");
        assert_eq!(shown(serde_json::json!(true)), "true");
        assert_eq!(shown(serde_json::json!("SIGSEGV")), "SIGSEGV");
    }
}
