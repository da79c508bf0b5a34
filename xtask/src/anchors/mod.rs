//! `cargo xtask anchors [ROW...] [--rounds N]`: each row's figures beside the standard tools',
//! measured in the same run, round after round, as ratios. Absolute times drift from run to
//! run on shared machines; a ratio taken minutes apart would mean little, so our row and the
//! tools take turns. No ROW: every row with an anchor.
//!
//! One shape serves every row: an [`Anchor`] names the tools it uses and a function that, given
//! the row's release binary, runs the rounds and returns [`Line`]s (our figure per round, the
//! tool's per round, and where they should agree). This module renders the lines, checks the
//! bands and says which tools are missing, with the command that installs each: a missing tool
//! skips what needs it and fails nothing (exit 0 with the note). A band that is missed, or a
//! row that fails, exits 1 after the other rows have run.
//!
//! | row | our experiment | standard tool |
//! |---|---|---|
//! | memory | cow-copy ns/page | `perf bench mem memcpy` (a bare 4 KiB copy) |
//! | switching | pipe-same-cpu | `perf bench sched pipe` (and `-T`), `stress-ng --switch`, `hackbench` (`-T`) |
//! | communication | latency-pipe, cpu-cost, throughput-shm | `perf bench sched pipe`, `sched messaging`, `mem memcpy` |
//! | stability | restart | `stress-ng --fork`, `stress-ng --pthread` |
//! | concurrency | spawn | `stress-ng --fork`, `stress-ng --pthread` |
//! | use-cases | web-server's load generator | `wrk`, a thread per CPU |

mod communication;
mod concurrency;
mod memory;
mod stability;
mod switching;
mod tools;
mod use_cases;

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use harness::Report;
use harness::report::Side;
use harness::row::print_out;

pub use tools::Tool;

/// A row's anchor: the tools it may use and how it measures.
pub struct Anchor {
    pub row: &'static str,
    /// What the lines compare, printed above them.
    pub title: &'static str,
    pub tools: &'static [&'static Tool],
    pub run: fn(&Ctx) -> Result<Vec<Line>>,
}

/// Every anchor, in the summary table's order.
pub const ANCHORS: &[Anchor] = &[
    memory::ANCHOR,
    switching::ANCHOR,
    communication::ANCHOR,
    stability::ANCHOR,
    concurrency::ANCHOR,
    use_cases::ANCHOR,
];

/// One comparison: our figure and the tool's, round by round.
pub struct Line {
    pub figure: String,
    /// Our value per round, and how it is written ("{:.2} µs").
    pub ours: Vec<f64>,
    pub ours_unit: String,
    pub tool: Vec<f64>,
    pub tool_unit: String,
    /// Where the ratio ours/tool should lie; `None` for a scale (different shapes of work).
    pub band: Option<(f64, f64)>,
    /// Why the ratio should lie there, or what it means.
    pub why: String,
}

impl Line {
    pub fn new(figure: impl Into<String>, ours_unit: &str, tool_unit: &str) -> Line {
        Line {
            figure: figure.into(),
            ours: Vec::new(),
            ours_unit: ours_unit.to_string(),
            tool: Vec::new(),
            tool_unit: tool_unit.to_string(),
            band: None,
            why: String::new(),
        }
    }

    pub fn band(mut self, low: f64, high: f64, why: &str) -> Line {
        self.band = Some((low, high));
        self.why = why.to_string();
        self
    }

    pub fn scale(mut self, why: &str) -> Line {
        self.why = why.to_string();
        self
    }

    /// One round: ours and the tool's.
    pub fn push(&mut self, ours: f64, tool: f64) {
        self.ours.push(ours);
        self.tool.push(tool);
    }

    /// The ratio ours/tool of each round.
    pub fn ratios(&self) -> Vec<f64> {
        self.ours.iter().zip(&self.tool).map(|(o, t)| o / t).collect()
    }

    pub fn ratio(&self) -> f64 {
        median(&self.ratios())
    }

    /// False when the line has a band and its median ratio lies outside.
    pub fn within(&self) -> bool {
        self.band.is_none_or(|(lo, hi)| (lo..=hi).contains(&self.ratio()))
    }
}

/// What an anchor gets: the rounds, the row's release binary, and the tools found.
pub struct Ctx {
    pub rounds: usize,
    pub binary: PathBuf,
    /// Tools looked for and whether they work, each probed once.
    probed: RefCell<Vec<(&'static Tool, bool)>>,
}

impl Ctx {
    /// True when the tool is here and works; otherwise it is noted with its install command.
    pub fn has(&self, tool: &'static Tool) -> bool {
        if let Some((_, ok)) = self.probed.borrow().iter().find(|(t, _)| t.name == tool.name) {
            return *ok;
        }
        let ok = tool.works();
        self.probed.borrow_mut().push((tool, ok));
        ok
    }

    /// The tools that were looked for and are missing.
    fn missing(&self) -> Vec<&'static Tool> {
        self.probed.borrow().iter().filter(|(_, ok)| !ok).map(|(t, _)| *t).collect()
    }

    /// Runs our row with `--json` and these arguments and reads its report.
    pub fn ours(&self, row: &str, args: &[&str]) -> Result<Report> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--json").args(args);
        crate::run::report_of(row, cmd, None)
    }
}

/// Both sides of one experiment of a report; an error saying why when a side did not run.
pub fn sides<'a>(report: &'a Report, id: &str) -> Result<(&'a Side, &'a Side)> {
    let e =
        report.experiments.iter().find(|e| e.id == id).with_context(|| format!("{} reported no {id}", report.row))?;
    match (&e.process, &e.thread) {
        (Some(p), Some(t)) => Ok((p, t)),
        _ => bail!("{id} did not run both sides: {}", e.note.as_deref().unwrap_or("no note")),
    }
}

/// A side's median.
pub fn median_of(side: &Side) -> Result<f64> {
    side.median.context("a side without a median")
}

/// A number among a side's facts.
pub fn fact(side: &Side, name: &str) -> Result<f64> {
    side.facts.get(name).and_then(|v| v.as_f64()).with_context(|| format!("no fact {name}"))
}

/// The CPU a side's tasks were pinned to (its `pinned_cpus` fact), where the tools run too.
pub fn pinned_cpu(side: &Side) -> Result<usize> {
    let cpu = side.facts.get("pinned_cpus").and_then(|v| v.get(0)).and_then(|v| v.as_u64());
    Ok(cpu.context("no pinned_cpus fact")? as usize)
}

/// The median; what the rounds of a figure are summed up by.
pub fn median(values: &[f64]) -> f64 {
    harness::stats::median(values)
}

pub fn main(args: &[String]) -> Result<bool> {
    let usage = "usage: cargo xtask anchors [ROW...] [--rounds N]";
    let mut rounds = 5;
    let mut rows: Vec<&Anchor> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => {
                let n = it.next().map(String::as_str).unwrap_or("");
                let Some(r) = n.parse().ok().filter(|&r| r >= 1) else {
                    eprintln!("error: --rounds {n:?}: not a count of 1 or more\n\n{usage}");
                    std::process::exit(2);
                };
                rounds = r;
            }
            "-h" | "--help" => {
                return Ok(print_out(&format!("{usage}\nrows with anchors: {}\n", names())));
            }
            row => match ANCHORS.iter().find(|x| x.row == row) {
                Some(anchor) => rows.push(anchor),
                None => {
                    // Bad input: a short message and exit 2, like every command of the project.
                    eprintln!("error: no anchors for row {row:?}; rows with anchors: {}\n\n{usage}", names());
                    std::process::exit(2);
                }
            },
        }
    }
    if rows.is_empty() {
        rows = ANCHORS.iter().collect();
    }
    // The standard tools run under the condition the rows measure in: idle CPUs kept awake
    // for the whole run when the rows would keep them so (harness::awake), free to sleep when not.
    let awake = harness::awake::keep_awake();
    // When and under what load: a saved run is read beside the report of another run.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // print_out: a reader that stops reading (`| head`) ends the output, not in a panic; a
    // write that failed otherwise makes the run fail, as a missed band does.
    let mut all_within = print_out(&format!(
        "cargo xtask anchors --rounds {rounds}, {}, load average {} (1, 5, 15 min) at the start; idle CPUs {}\n",
        crate::report::utc(std::time::SystemTime::now()),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        awake.status.how,
    ));
    for anchor in rows {
        // One row's failure (its binary, or a tool that broke mid-run) does not hide the others.
        match run_one(anchor, rounds) {
            Ok(within) => all_within &= within,
            Err(e) => {
                let _ = print_out(&format!("\n{}: failed: {e:#}\n", anchor.row));
                all_within = false;
            }
        }
    }
    Ok(all_within)
}

fn names() -> String {
    ANCHORS.iter().map(|a| a.row).collect::<Vec<_>>().join(", ")
}

/// Runs one anchor and prints its table; false when a band was missed or the table could not
/// be written.
fn run_one(anchor: &Anchor, rounds: usize) -> Result<bool> {
    let ctx = Ctx { rounds, binary: PathBuf::new(), probed: RefCell::new(Vec::new()) };
    // Build the row only when at least one of its tools is here.
    let any = anchor.tools.iter().filter(|t| ctx.has(t)).count() > 0;
    let (lines, written) = if any {
        let binary = crate::run::build_release(&[anchor.row.to_string()])?.remove(0);
        let ctx = Ctx { binary, ..ctx };
        let lines = (anchor.run)(&ctx).with_context(|| format!("anchors {}", anchor.row))?;
        let written = print_out(&render(anchor, rounds, &lines, &ctx.missing()));
        (lines, written)
    } else {
        (Vec::new(), print_out(&render(anchor, rounds, &[], &ctx.missing())))
    };
    Ok(written && lines.iter().all(Line::within))
}

/// The anchor's table, the notes on missed bands and missing tools.
fn render(anchor: &Anchor, rounds: usize, lines: &[Line], missing: &[&Tool]) -> String {
    let mut out = if lines.is_empty() {
        format!("\n{}: {}: nothing run\n", anchor.row, anchor.title)
    } else {
        let rounds = harness::report::counted(rounds, "round", "rounds");
        format!("\n{}: {} (medians of {rounds}, in turns)\n", anchor.row, anchor.title)
    };
    if !lines.is_empty() {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(vec!["figure", "ours", "standard tool", "ratio ours/tool (rounds)", "expected"]);
        for l in lines {
            let rounds: Vec<String> = l.ratios().iter().map(|r| format!("{r:.3}")).collect();
            let expected = match l.band {
                Some((lo, hi)) if hi.is_infinite() => format!("≥ {lo}: {}", if l.within() { "yes" } else { "NO" }),
                Some((lo, hi)) => format!("{lo}–{hi}: {}", if l.within() { "yes" } else { "NO" }),
                None => "a scale".to_string(),
            };
            t.add_row(vec![
                l.figure.clone(),
                format!("{} {}", harness::report::fmt_num(median(&l.ours)), l.ours_unit),
                format!("{} {}", harness::report::fmt_num(median(&l.tool)), l.tool_unit),
                format!("{:.3} ({})", l.ratio(), rounds.join(", ")),
                expected,
            ]);
        }
        out.push_str(&format!("{t}\n"));
        for l in lines.iter().filter(|l| !l.why.is_empty()) {
            out.push_str(&format!("  {}: {}\n", l.figure, l.why));
        }
    }
    for tool in missing {
        out.push_str(&format!(
            "  {} is missing or does not work here, so its lines are left out; install it with `{}`\n",
            tool.name, tool.install
        ));
    }
    out
}
