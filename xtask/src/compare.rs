//! `cargo xtask compare [--quick] [--json] [ROW...]`: runs every row that exists (or the ones
//! named), each as its own release binary with `--json`, and prints the classic summary table
//! (Feature | Process | Thread) with what this machine measured and a verdict per claim,
//! then each row's details.

use std::process::Command;

use anyhow::{Context, Result};
use clap::Parser;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use harness::report::{Kind, Report, Verdict, fmt_num};
use serde::Serialize;

use crate::{machine, run};

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
        "isolation: a process per request, sandboxes, browsers",
        "closely related tasks sharing memory: editors, servers",
    ),
];

#[derive(Parser, Debug)]
#[command(name = "cargo xtask compare", about = "Run every row and print the summary table with verdicts")]
struct Args {
    /// Small sizes: each row in about a second.
    #[arg(long)]
    quick: bool,
    /// Print all reports as one JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// Rows to run (default: every row that exists).
    #[arg(value_name = "ROW", value_parser = clap::builder::PossibleValuesParser::new(ROWS.iter().map(|r| r.0)))]
    rows: Vec<String>,
}

/// Everything `compare --json` prints.
#[derive(Serialize)]
struct Document {
    machine: machine::Machine,
    reports: Vec<Report>,
    /// Rows that failed to produce a report, with the reason.
    failures: Vec<Failure>,
}

#[derive(Serialize)]
struct Failure {
    row: String,
    error: String,
}

pub fn main(argv: &[String]) -> Result<bool> {
    let args = Args::try_parse_from(std::iter::once("compare".to_string()).chain(argv.iter().cloned()))
        .unwrap_or_else(|e| e.exit());
    let existing = existing_rows();
    let rows: Vec<String> = if args.rows.is_empty() {
        existing.clone()
    } else {
        for r in &args.rows {
            if !existing.contains(r) {
                eprintln!("error: row '{r}' is not built yet; the rows that exist are: {}", existing.join(", "));
                std::process::exit(2);
            }
        }
        args.rows.clone()
    };
    let binaries = run::build_release(&rows)?;
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(std::time::Duration::from_millis(120));
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for (i, (row, bin)) in rows.iter().zip(&binaries).enumerate() {
        progress.set_message(format!("running {row} ({}/{})", i + 1, rows.len()));
        let mut cmd = Command::new(bin);
        cmd.arg("--json");
        if args.quick {
            cmd.arg("--quick");
        }
        match run::report_of(row, cmd) {
            Ok(r) => reports.push(r),
            Err(e) => failures.push(Failure { row: row.clone(), error: format!("{e:#}") }),
        }
    }
    progress.finish_and_clear();
    let doc = Document { machine: machine::Machine::here(), reports, failures };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc).context("serializing the reports")?);
    } else {
        print!("{}", human(&doc));
    }
    let ok = doc.failures.is_empty() && !doc.reports.iter().any(Report::has_errors);
    Ok(ok)
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
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_width(140);
    t.set_header(vec!["Feature", "Process", "Thread", "Measured here", "Verdict"]);
    for report in &doc.reports {
        let Some((_, feature, process, thread)) = ROWS.iter().find(|r| r.0 == report.row) else { continue };
        t.add_row(vec![
            feature.to_string(),
            process.to_string(),
            thread.to_string(),
            measured_here(report),
            report.tally(),
        ]);
    }
    for f in &doc.failures {
        let feature = ROWS.iter().find(|r| r.0 == f.row).map(|r| r.1).unwrap_or(&f.row);
        t.add_row(vec![feature.to_string(), "-".into(), "-".into(), format!("failed: {}", f.error), "error".into()]);
    }
    out.push_str(&format!("{t}\n"));
    out.push_str("✓ the claim holds here; ✗ this machine contradicts it; P/T = process ÷ thread (medians)\n");
    for report in &doc.reports {
        out.push('\n');
        out.push_str(&harness::render::row(report));
    }
    out
}

/// One cell: every experiment's outcome in a few words; measured numbers with their ratio.
fn measured_here(report: &Report) -> String {
    report
        .experiments
        .iter()
        .map(|e| match (e.kind, &e.process, &e.thread) {
            (Kind::Measure, Some(p), Some(t)) => format!(
                "{} {} vs {} {} ({}×) {}",
                e.id,
                p.median.map(fmt_num).unwrap_or_default(),
                t.median.map(fmt_num).unwrap_or_default(),
                e.unit.as_deref().unwrap_or(""),
                e.ratio.map(fmt_num).unwrap_or_default(),
                mark(e.verdict)
            ),
            _ => format!("{} {}", e.id, mark(e.verdict)),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// ✓ the claim holds, ✗ it does not, otherwise the verdict's own word.
fn mark(v: Verdict) -> String {
    match v {
        Verdict::Holds => "✓".to_string(),
        Verdict::Contradicted | Verdict::Reversed => "✗".to_string(),
        other => format!("({other})"),
    }
}
