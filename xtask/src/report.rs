//! `cargo xtask report [--quick] [--out DIR]`: runs the suite once, the way `compare` does
//! (release build, each row with `--json`), and writes what people look at: `DIR/results.md`
//! (default `docs/results.md`) with the date, the environment, the summary table, every row's
//! details, and charts drawn with plotters in `DIR/results/`. The same run's JSON is kept
//! beside the charts (`results/report.json`), so every picture can be traced to its numbers.
//!
//! A saved run of `cargo xtask anchors` in `DIR/results/anchors.txt`, when there is one, is
//! quoted in its own section: the standard tools' figures beside ours.

mod charts;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use harness::report::{Kind, Report};

use crate::compare::{self, Document};

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask report",
    bin_name = "cargo xtask report",
    about = "Run every row once and write docs/results.md with charts"
)]
struct Args {
    /// Small sizes: each row in about a second (for tests; the committed page is a full run).
    #[arg(long)]
    quick: bool,
    /// Where results.md and its results/ folder go.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// The pictures' folder, relative to the Markdown.
const PICTURES: &str = "results";
/// The saved anchors run the report quotes when it is there.
const ANCHORS: &str = "anchors.txt";

pub fn main(argv: &[String]) -> Result<bool> {
    let args = Args::try_parse_from(std::iter::once("report".to_string()).chain(argv.iter().cloned()))
        .unwrap_or_else(|e| e.exit());
    let out = args.out.unwrap_or_else(|| crate::run::root().join("docs"));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let started = std::time::SystemTime::now();
    let rows = compare::chosen_rows(&[]);
    let doc = compare::run_suite(&rows, args.quick, 1)?.remove(0);

    let pictures = out.join(PICTURES);
    std::fs::create_dir_all(&pictures).with_context(|| format!("creating {}", pictures.display()))?;
    remove_old_pictures(&pictures)?;
    let mut charts = Vec::new();
    for report in &doc.reports {
        let row_charts = charts::for_row(report).with_context(|| format!("drawing the charts of {}", report.row))?;
        for c in &row_charts {
            let path = pictures.join(&c.file);
            std::fs::write(&path, &c.svg).with_context(|| format!("writing {}", path.display()))?;
        }
        charts.push((report.row.clone(), row_charts));
    }
    let json = serde_json::to_string_pretty(&doc).context("serializing the reports")?;
    std::fs::write(pictures.join("report.json"), json).context("writing report.json")?;
    let anchors = std::fs::read_to_string(pictures.join(ANCHORS)).ok();
    let md = markdown(&doc, &charts, &Run { started, load: load.trim(), quick: args.quick }, anchors.as_deref());
    let page = out.join("results.md");
    std::fs::write(&page, md).with_context(|| format!("writing {}", page.display()))?;
    let n: usize = charts.iter().map(|(_, c)| c.len()).sum();
    let written =
        harness::row::print_out(&format!("wrote {} and {n} charts in {}\n", page.display(), pictures.display()));
    Ok(written && doc.failures.is_empty() && !doc.reports.iter().any(Report::has_errors))
}

/// The charts of an earlier report go, so that the folder holds only what this page links
/// (the saved anchors run stays: the report quotes it, it does not write it).
fn remove_old_pictures(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "svg") {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// What the page says about the run itself.
struct Run<'a> {
    started: std::time::SystemTime,
    /// /proc/loadavg when the run started.
    load: &'a str,
    quick: bool,
}

fn markdown(doc: &Document, charts: &[(String, Vec<charts::Chart>)], run: &Run, anchors: Option<&str>) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Results on this machine\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask report{}` on {}; the load average when the run started was {} \
         (1, 5 and 15 minutes). Every figure below comes from that one run; the JSON it read is in \
         [{PICTURES}/report.json]({PICTURES}/report.json). How to read a verdict: docs/report.md.\n",
        if run.quick { " --quick" } else { "" },
        utc(run.started),
        run.load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    if run.quick {
        let _ = writeln!(md, "This is a `--quick` run: small sizes and few runs, for tests, not for conclusions.\n");
    }
    let _ = writeln!(md, "## The machine\n\n```text\n{}```\n", doc.machine.header());
    let _ = writeln!(md, "## Summary\n\n```text\n{}{}```\n", compare::summary(doc), compare::legend(&doc.reports));
    for report in &doc.reports {
        let row_charts = charts.iter().find(|(r, _)| *r == report.row).map(|(_, c)| c.as_slice()).unwrap_or(&[]);
        md.push_str(&row_section(report, row_charts));
    }
    let _ = writeln!(md, "## Beside the standard tools\n");
    match anchors {
        Some(text) => {
            let _ = writeln!(
                md,
                "A saved run of `cargo xtask anchors` (all rows with an anchor) on this machine; its \
                 first line says when and under what load. Each line is our figure beside the standard \
                 tool's, measured in turns in one run, as a ratio.\n\n```text\n{}\n```\n",
                text.trim_end()
            );
        }
        None => {
            let _ = writeln!(
                md,
                "No saved anchors run: `cargo xtask anchors > docs/results/{ANCHORS}` saves one, and the next \
                 report quotes it here.\n"
            );
        }
    }
    md
}

/// One row: its claim, a table of its experiments, its charts and the evidence.
fn row_section(report: &Report, charts: &[charts::Chart]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## {}\n\n{}\n", report.row, report.claim);
    let _ = writeln!(md, "Verdicts: {}. The row's page: docs/{}.md.\n", report.tally(), report.row);
    let _ = writeln!(md, "| Experiment | Claim expects | Process | Thread | P/T (95% CI) | Verdict |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for e in &report.experiments {
        let side = |s: &Option<harness::report::Side>| s.as_ref().map_or("-".to_string(), |s| cell(&s.summary));
        let expects = match e.expected {
            harness::report::Expected::Process => "process",
            harness::report::Expected::Thread => "thread",
            harness::report::Expected::Same => "same",
        };
        let _ = writeln!(
            md,
            "| `{}` | {expects} | {} | {} | {} | **{}** |",
            e.id,
            side(&e.process),
            side(&e.thread),
            harness::render::ratio(e),
            harness::render::verdict(e)
        );
    }
    md.push('\n');
    for c in charts {
        let alt = format!("{}: {}", report.row, c.experiments.join(", "));
        let _ = writeln!(md, "![{alt}]({PICTURES}/{})\n\n*{}*\n", c.file, c.caption);
    }
    if charts.is_empty() {
        let measured = report.experiments.iter().any(|e| e.kind == Kind::Measure);
        let why = if measured {
            "no measured experiment of this row ran both sides in this run (see the notes), so there is nothing to draw"
        } else {
            "this row only observes (who saw the write, which signal ended whom): its facts are below, not a chart"
        };
        let _ = writeln!(md, "No chart: {why}.\n");
    }
    let _ = writeln!(
        md,
        "<details><summary>Titles, facts and notes of every experiment</summary>\n\n```text\n{}```\n\n</details>\n",
        harness::render::details(&report.experiments).trim_start_matches('\n')
    );
    md
}

/// Text safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// "2026-11-29 13:40 UTC".
pub fn utc(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rest / 3600, rest % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        let at = |s: u64| utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(at(1_798_551_600), "2026-12-29 13:40 UTC");
    }
}
