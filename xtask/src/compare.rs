//! `cargo xtask compare [--quick] [--json] [--repeat N] [ROW...]`: runs every row that exists
//! (or the ones named), each as its own release binary with `--json`, and prints the classic
//! summary table (Feature | Process | Thread) with what this machine measured and a verdict
//! per claim, then each row's details. With `--repeat N` it runs the whole suite N times and
//! reports, per experiment, how stable its verdict and its medians were.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result};
use clap::Parser;
use comfy_table::presets::UTF8_FULL;
use comfy_table::{ColumnConstraint, ContentArrangement, Table, Width};
use harness::report::{Kind, Report, Verdict};
use serde::Serialize;

use crate::{machine, repeat, run};

/// The rows of the classic table, in its order: crate name, feature, and the textbook claim
/// for each side in our words.
pub const ROWS: &[(&str, &str, &str, &str)] = &[
    ("memory", "Memory", "own address space; nothing shared", "shares the memory of its process"),
    ("switching", "Context switching", "slower: the address space changes", "faster: only registers and stack change"),
    (
        "communication",
        "Communication",
        "needs IPC (pipes, sockets, shared memory): more work",
        "direct through shared memory, but needs locks",
    ),
    ("stability", "Stability", "a crash stays inside the process", "a crash can take the whole process down"),
    ("concurrency", "Concurrency", "concurrent, but costs more resources", "the lighter way to run concurrently"),
    (
        "use-cases",
        "Use case",
        "isolation: servers, sandboxes, browsers",
        "closely related tasks sharing memory: editors, servers",
    ),
];

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask compare",
    bin_name = "cargo xtask compare",
    about = "Run every row and print the summary table with verdicts"
)]
struct Args {
    /// Small sizes: each row in about a second.
    #[arg(long)]
    quick: bool,
    /// Print all reports as one JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// Run the whole suite N times (2 to 20) and report how stable each verdict, median and ratio was.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=20))]
    repeat: Option<u32>,
    /// Rows to run (default: every row that exists).
    #[arg(value_name = "ROW", value_parser = clap::builder::PossibleValuesParser::new(ROWS.iter().map(|r| r.0)))]
    rows: Vec<String>,
}

/// Everything `compare --json` prints.
#[derive(Serialize)]
pub struct Document {
    pub machine: machine::Machine,
    pub reports: Vec<Report>,
    /// Rows that failed to produce a report, with the reason.
    pub failures: Vec<Failure>,
}

#[derive(Serialize)]
pub struct Failure {
    pub row: String,
    pub error: String,
}

pub fn main(argv: &[String]) -> Result<bool> {
    let args = Args::try_parse_from(std::iter::once("compare".to_string()).chain(argv.iter().cloned()))
        .unwrap_or_else(|e| e.exit());
    let rows = chosen_rows(&args.rows);
    let rounds = args.repeat.unwrap_or(1) as usize;
    let mut docs = run_suite(&rows, args.quick, rounds)?;
    if rounds > 1 {
        return repeat::report(&docs, args.json);
    }
    let doc = docs.remove(0);
    let text = if args.json {
        serde_json::to_string_pretty(&doc).context("serializing the reports")? + "\n"
    } else {
        human(&doc)
    };
    let ok = harness::row::print_out(&text) && doc.failures.is_empty() && !doc.reports.iter().any(Report::has_errors);
    Ok(ok)
}

/// The rows named (each must exist; exit 2 otherwise), each once (as a row's repeated
/// `--only` is), in the order first named; or every row that exists.
pub fn chosen_rows(named: &[String]) -> Vec<String> {
    let existing = existing_rows();
    if named.is_empty() {
        return existing;
    }
    for r in named {
        if !existing.contains(r) {
            eprintln!("error: row '{r}' is not built yet; the rows that exist are: {}", existing.join(", "));
            std::process::exit(2);
        }
    }
    once_each(named)
}

/// `names` without repeats, each where it first appears.
fn once_each(names: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    names.iter().filter(|n| seen.insert(n.as_str())).cloned().collect()
}

/// Builds the rows once with `--release` and runs the whole suite `rounds` times, each row as
/// its own binary with `--json`: one [`Document`] per round. `compare` and `report` both run
/// the suite through here.
pub fn run_suite(rows: &[String], quick: bool, rounds: usize) -> Result<Vec<Document>> {
    // The environment is read while cargo checks the build, so that neither its reading
    // (rustc -V, systemd-detect-virt) runs beside a row nor the suite waits for it.
    let probe = std::thread::spawn(|| machine::Machine::here(false));
    let binaries = run::build_release(rows)?;
    let probed = probe.join().map_err(|_| anyhow::anyhow!("reading the machine's environment panicked"))?;
    let progress = Progress::new(rows.len() * rounds);
    let mut docs = Vec::new();
    for round in 0..rounds {
        let mut reports = Vec::new();
        let mut failures = Vec::new();
        for (row, bin) in rows.iter().zip(&binaries) {
            let pass = if rounds > 1 { format!("run {}/{rounds}: ", round + 1) } else { String::new() };
            let what = format!("{pass}{row}");
            progress.step(&what);
            let mut cmd = Command::new(bin);
            cmd.arg("--json");
            if quick {
                cmd.arg("--quick");
            }
            match run::report_of(row, cmd, progress.namer(what)) {
                Ok(r) => reports.push(r),
                Err(e) => failures.push(Failure { row: row.clone(), error: format!("{e:#}") }),
            }
        }
        let mut machine = probed.clone();
        machine.optimized = reports.iter().all(|r| r.optimized);
        machine.idle_cpus = machine::idle_while_measuring(&reports);
        docs.push(Document { machine, reports, failures });
    }
    progress.finish();
    Ok(docs)
}

/// A spinner on stderr naming what runs and how much is done; nothing when stderr is not a
/// terminal (a pipe or a CI log), and never anything on stdout.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(steps: usize) -> Progress {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(steps as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} rows done, running {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }

    fn step(&self, what: &str) {
        if let Some(bar) = &self.bar {
            if !bar.message().is_empty() {
                bar.inc(1);
            }
            bar.set_message(what.to_string());
        }
    }

    /// What the row's progress hook reports goes into the spinner's message: "ROW: EXPERIMENT".
    /// `None` when there is no spinner, so that the row gets no progress pipe at all.
    fn namer(&self, row: String) -> Option<run::OnExperiment> {
        let bar = self.bar.clone()?;
        Some(Box::new(move |experiment: &str| bar.set_message(format!("{row}: {experiment}"))))
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The rows whose crate exists in this workspace, in the table's order.
pub fn existing_rows() -> Vec<String> {
    let crates = run::root().join("crates");
    ROWS.iter().filter(|r| crates.join(r.0).join("Cargo.toml").exists()).map(|r| r.0.to_string()).collect()
}

fn human(doc: &Document) -> String {
    let mut out = String::new();
    out.push_str(&doc.machine.header());
    out.push('\n');
    out.push_str(&summary(doc));
    out.push_str(&legend(&doc.reports));
    for report in &doc.reports {
        out.push('\n');
        out.push_str(&harness::render::row(report));
    }
    out
}

/// What the marks in the summary mean.
pub const LEGEND: &str = "✓ holds here  ~ marginal  = tie  ✗ this machine contradicts the claim  - skipped  ! error\n";

/// The legend: the marks, a line for `=?` when a busy machine withheld some verdict, and the
/// ratio.
pub fn legend(reports: &[Report]) -> String {
    let busy = reports.iter().flat_map(|r| &r.experiments).any(|e| e.busy.is_some());
    let withheld = "=? a tie only because other programs used over a quarter of the CPU (busy: below)\n";
    format!(
        "{LEGEND}{}P/T = process median ÷ thread median, with its 95% confidence interval\n",
        if busy { withheld } else { "" }
    )
}

/// The width the summary table keeps to.
pub const SUMMARY_WIDTH: u16 = 100;

/// The classic table, one line per row of the textbook: the claim for each side, the row's
/// headline experiments with their ratio and interval, and the count of every verdict.
pub fn summary(doc: &Document) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL).set_content_arrangement(ContentArrangement::Dynamic).set_width(SUMMARY_WIDTH);
    t.set_header(vec!["Feature", "Process", "Thread", "Measured here: P/T (95% CI)"]);
    // Column widths that keep every cell to four lines: up to three headline experiments and
    // the tally in the last column, one line each.
    let fixed = |w| ColumnConstraint::Absolute(Width::Fixed(w));
    t.set_constraints(vec![fixed(15), fixed(19), fixed(19), fixed(40)]);
    for report in &doc.reports {
        let Some((_, feature, process, thread)) = ROWS.iter().find(|r| r.0 == report.row) else { continue };
        t.add_row(vec![feature.to_string(), process.to_string(), thread.to_string(), measured_here(report)]);
    }
    for f in &doc.failures {
        let feature = ROWS.iter().find(|r| r.0 == f.row).map(|r| r.1).unwrap_or(&f.row);
        t.add_row(vec![feature.to_string(), "-".into(), "-".into(), "failed: see below".into()]);
    }
    let mut out = format!("{t}\n");
    for f in &doc.failures {
        out.push_str(&format!("{} failed: {}\n", f.row, f.error));
    }
    out
}

/// One cell: the headline experiments, one line each, then the verdicts of all experiments.
fn measured_here(report: &Report) -> String {
    let mut lines: Vec<String> = report
        .experiments
        .iter()
        .filter(|e| e.headline)
        .take(3)
        .map(|e| match (e.kind, e.ratio) {
            (Kind::Measure, Some(_)) => format!("{} {} {}", e.id, harness::render::ratio(e), marks(e)),
            _ => format!("{} {}", e.id, marks(e)),
        })
        .collect();
    // Every experiment's verdict, counted: skipped ones are counted, not listed.
    let mut counts = BTreeMap::new();
    for e in &report.experiments {
        *counts.entry(e.verdict).or_insert(0) += 1;
    }
    // In words when that fits one line of the cell, else with the marks of the legend.
    let words = counts.iter().map(|(v, n)| format!("{v} {n}")).collect::<Vec<_>>().join(" · ");
    let in_marks = counts.iter().map(|(v, n)| format!("{} {n}", mark(*v))).collect::<Vec<_>>().join("  ");
    lines.push(if words.chars().count() <= 36 { words } else { in_marks });
    lines.join("\n")
}

/// An experiment's mark: its verdict's, and `=?` where a busy machine forced the tie (two
/// characters, so that a headline line still fits its cell).
fn marks(e: &harness::report::Experiment) -> String {
    if e.busy.is_some() { format!("{}?", mark(e.verdict)) } else { mark(e.verdict).to_string() }
}

/// One character per verdict (see [`LEGEND`]).
fn mark(v: Verdict) -> &'static str {
    match v {
        Verdict::Holds => "✓",
        Verdict::Marginal => "~",
        Verdict::Tie => "=",
        Verdict::Contradicted | Verdict::Reversed => "✗",
        Verdict::Skipped => "-",
        Verdict::Error => "!",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harness::report::{Expected, Experiment};

    #[test]
    fn a_row_named_twice_runs_once_in_the_order_first_named() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(once_each(&names(&["memory", "stability", "memory"])), names(&["memory", "stability"]));
        assert_eq!(once_each(&names(&["stability", "memory"])), names(&["stability", "memory"]));
        assert!(once_each(&[]).is_empty());
    }

    fn experiment(id: &str, headline: bool, verdict: Verdict, ratio: Option<(f64, f64, f64)>) -> Experiment {
        Experiment {
            id: id.into(),
            title: "t".into(),
            kind: if ratio.is_some() { Kind::Measure } else { Kind::Observe },
            unit: ratio.map(|_| "µs".into()),
            better: None,
            expected: Expected::Thread,
            headline,
            process: None,
            thread: None,
            ratio: ratio.map(|r| r.0),
            ratio_low: ratio.map(|r| r.1),
            ratio_high: ratio.map(|r| r.2),
            verdict,
            note: None,
            others_cpu: None,
            busy: None,
        }
    }

    fn report(experiments: Vec<Experiment>) -> Report {
        Report {
            row: "stability".into(),
            claim: "c".into(),
            optimized: true,
            idle_cpus: Default::default(),
            experiments,
        }
    }

    /// The cell names the headline experiments and counts every verdict of the row, the
    /// unfavourable ones too; a tie the busy machine forced is marked `=?`.
    #[test]
    fn the_summary_cell_counts_every_verdict_and_marks_a_busy_tie() {
        let busy = Experiment {
            busy: Some("other programs used 60%".into()),
            ..experiment("restart", true, Verdict::Tie, Some((0.9, 0.8, 1.0)))
        };
        let r = report(vec![
            experiment("segfault", true, Verdict::Holds, None),
            experiment("abort", false, Verdict::Holds, None),
            experiment("panic", false, Verdict::Contradicted, None),
            busy,
            experiment("gone", false, Verdict::Skipped, None),
            experiment("broke", false, Verdict::Error, None),
        ]);
        let cell = measured_here(&r);
        let lines: Vec<&str> = cell.lines().collect();
        assert_eq!(lines[..2], ["segfault ✓", "restart 0.90 (0.80–1.00) =?"], "{cell}");
        // Too long in words for one line of the cell: in the legend's marks.
        assert_eq!(lines[2], "✓ 2  = 1  ✗ 1  - 1  ! 1", "{cell}");
        assert_eq!(lines.len(), 3, "{cell}");
        let short = report(vec![
            experiment("segfault", true, Verdict::Holds, None),
            experiment("panic", false, Verdict::Contradicted, None),
        ]);
        assert_eq!(measured_here(&short), "segfault ✓\nholds 1 · contradicted 1");
        assert!(legend(std::slice::from_ref(&r)).contains("=? a tie only because"));
        let quiet = report(vec![experiment("segfault", true, Verdict::Holds, None)]);
        assert!(!legend(&[quiet]).contains("=?"));
    }
}
