//! The common row CLI and runner: every row's `main` is a call to [`main`] with its
//! experiments, so that `--json`, `--quick`, `--only`, `--side` and `--list` behave the same
//! in every row, and bad input always ends with clap's error and exit code 2.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum, builder::PossibleValuesParser};

use crate::limits::{Needs, Room};
use crate::report::{self, Better, Expected, Experiment, Kind, Report, Side, Verdict};
use crate::stats::{Plan, Summary, TimedRun};
use crate::{child, cleanup, faults, render};

/// A row: one difference between processes and threads.
pub struct Row {
    /// The crate and binary name: "stability".
    pub name: &'static str,
    /// Its line of the textbook table, in our words.
    pub claim: &'static str,
    pub experiments: &'static [Spec],
    /// Hidden entry points for sacrificial children: `<row> __child NAME ARGS...`.
    pub children: &'static [(&'static str, ChildMain)],
}

/// The entry point of a sacrificial child: it gets the arguments after its name.
pub type ChildMain = fn(&[String]) -> Result<()>;

/// One experiment of a row.
pub struct Spec {
    pub id: &'static str,
    pub title: &'static str,
    pub kind: Kind,
    /// For `measure`: the unit of the numbers and which way is better.
    pub unit: Option<(&'static str, Better)>,
    pub expected: Expected,
    /// The most it uses at once, checked against the machine's limits before it runs.
    pub needs: Needs,
    /// One of the row's one to three headline experiments: the summary table shows these
    /// by name; the others are counted in its verdict tally.
    pub headline: bool,
    pub run: fn(&Ctx) -> Result<Findings>,
}

impl Spec {
    /// A `measure` experiment: numbers in `unit`, `better` lower or higher.
    pub const fn measure(
        id: &'static str,
        title: &'static str,
        unit: &'static str,
        better: Better,
        expected: Expected,
        needs: Needs,
        run: fn(&Ctx) -> Result<Findings>,
    ) -> Spec {
        Spec { id, title, kind: Kind::Measure, unit: Some((unit, better)), expected, needs, headline: false, run }
    }

    /// An `observe` experiment: facts, and whether they match the claim.
    pub const fn observe(
        id: &'static str,
        title: &'static str,
        expected: Expected,
        needs: Needs,
        run: fn(&Ctx) -> Result<Findings>,
    ) -> Spec {
        Spec { id, title, kind: Kind::Observe, unit: None, expected, needs, headline: false, run }
    }

    /// Marks a headline experiment (builder style, usable in a `static`).
    pub const fn headline(mut self) -> Spec {
        self.headline = true;
        self
    }
}

/// Which side(s) to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    Process,
    Thread,
}

/// What an experiment gets to know about this run.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub quick: bool,
    pub side: Option<Which>,
}

impl Ctx {
    /// True when the process side is to run.
    pub fn process(&self) -> bool {
        self.side != Some(Which::Thread)
    }

    /// True when the thread side is to run.
    pub fn thread(&self) -> bool {
        self.side != Some(Which::Process)
    }

    /// Timed runs per number: never fewer than [`crate::stats::MIN_RUNS`].
    pub fn runs(&self) -> usize {
        if self.quick { crate::stats::MIN_RUNS } else { 11 }
    }

    /// How an experiment's timed runs are planned: at least [`Ctx::runs`] rounded up to an even
    /// count (8 with `--quick`, 12 in a full run), then more while the runs so far took under
    /// a quarter of a second, up to 42 (with `--quick` under 40 ms, up to 24: there, 8 runs of
    /// a quick experiment left intervals wider than its effect's distance from a band edge).
    pub fn plan(&self) -> Plan {
        Plan {
            warmup: self.warmup(),
            min_runs: self.runs().next_multiple_of(2),
            max_runs: if self.quick { 24 } else { 42 },
            budget: Duration::from_millis(if self.quick { 40 } else { 250 }),
        }
    }

    /// [`Ctx::plan`] with at least `runs` timed runs a side in a full run; `--quick` keeps its
    /// own plan, because the quick suite has no time to spare (under 5 s in all). For an
    /// experiment whose runs take too long for the plan's budget to add any, and whose full
    /// interval was still too wide for a steady verdict (each use says why).
    pub fn plan_in_full_at_least(&self, runs: usize) -> Plan {
        if self.quick { self.plan() } else { self.plan().at_least(runs) }
    }

    /// The timed runs of both sides, in turns (see [`crate::stats::interleave`]); each closure
    /// times one run of its side and returns its value. Only the sides asked for run.
    pub fn interleave(
        &self,
        process: impl FnMut() -> Result<f64>,
        thread: impl FnMut() -> Result<f64>,
    ) -> Result<(Option<Summary>, Option<Summary>)> {
        self.interleave_by(self.plan(), process, thread)
    }

    /// [`Ctx::interleave`] by a plan of the experiment's own (a longer warm-up, say).
    pub fn interleave_by(
        &self,
        plan: Plan,
        mut process: impl FnMut() -> Result<f64>,
        mut thread: impl FnMut() -> Result<f64>,
    ) -> Result<(Option<Summary>, Option<Summary>)> {
        let p: Option<TimedRun<'_>> = if self.process() { Some(&mut process) } else { None };
        let t: Option<TimedRun<'_>> = if self.thread() { Some(&mut thread) } else { None };
        crate::stats::interleave(plan, p, t)
    }

    /// Untimed warm-up runs before them.
    pub fn warmup(&self) -> usize {
        if self.quick { 1 } else { 2 }
    }

    /// How long any child may take before it is killed and the experiment fails.
    /// `PVT_DEADLINE_MS` shortens it for the reliability tests.
    pub fn deadline(&self) -> Duration {
        std::env::var(DEADLINE_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(if self.quick { 20 } else { 60 }))
    }

    /// Runs `run` in a process of its own and returns its result ([`crate::child::hosted`]):
    /// for a thread-side run, or any work that starts threads, so that this row's process
    /// never starts one and its process side is never charged for glibc's multi-threaded paths.
    pub fn hosted<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        run: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        crate::child::hosted(self.deadline(), run)
    }

    /// A [`crate::child::Host`] that serves the thread side's runs of an experiment, with this
    /// run's deadline, if the thread side was asked for: its threads start there and never in
    /// this process, as with [`Ctx::hosted`].
    pub fn thread_host<Req, Resp>(
        &self,
        serve: impl FnMut(Req) -> Result<Resp>,
    ) -> Result<crate::child::ThreadHost<Req, Resp>>
    where
        Req: serde::Serialize + serde::de::DeserializeOwned,
        Resp: serde::Serialize + serde::de::DeserializeOwned,
    {
        self.thread_side(|| crate::child::Host::start(self.deadline(), serve)).map(crate::child::ThreadHost::new)
    }

    /// Runs the process side if it was asked for.
    pub fn process_side<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
        if self.process() { f().map(Some) } else { Ok(None) }
    }

    /// Runs the thread side if it was asked for.
    pub fn thread_side<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
        if self.thread() { f().map(Some) } else { Ok(None) }
    }
}

/// What an experiment found: each side that ran, and for `observe`, whether what was seen
/// matches the claim (`None` when a side is missing).
#[derive(Debug, Default)]
pub struct Findings {
    pub process: Option<Side>,
    pub thread: Option<Side>,
    pub matches_claim: Option<bool>,
    pub note: Option<String>,
    pub skipped: Option<String>,
}

impl Findings {
    /// An experiment that cannot run on this machine, and why.
    pub fn skipped(reason: impl Into<String>) -> Findings {
        Findings { skipped: Some(reason.into()), ..Findings::default() }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Findings {
        self.note = Some(note.into());
        self
    }
}

#[derive(Parser, Debug)]
#[command(disable_version_flag = true)]
struct Args {
    /// Print exactly one JSON report on stdout, nothing else.
    #[arg(long)]
    json: bool,
    /// Small sizes for tests and CI: under about a second or two.
    #[arg(long)]
    quick: bool,
    /// Run only this experiment (repeatable); see --list.
    #[arg(long = "only", value_name = "ID")]
    only: Vec<String>,
    /// Run only one side of every experiment.
    #[arg(long, value_enum)]
    side: Option<Which>,
    /// List the experiments with a one-line description.
    #[arg(long, conflicts_with_all = ["json", "only", "side", "quick"])]
    list: bool,
}

/// True when this binary was built with optimisations (opt-level 2, 3, "s" or "z"; the
/// workspace's dev profile is optimised too): timings of an unoptimised build mean little.
pub fn optimized() -> bool {
    is_optimising(env!("PVT_OPT_LEVEL"))
}

/// Whether cargo's OPT_LEVEL optimises enough for timings: 2, 3, "s" and "z" do; 0 (the
/// default dev profile) and 1 do not.
fn is_optimising(opt_level: &str) -> bool {
    !matches!(opt_level, "0" | "1")
}

/// The variables that change how a row measures (docs/report.md), checked before anything
/// runs: a value the row would not understand is refused, exit 2, instead of being ignored
/// while the run goes on with the default. `PVT_DEADLINE_MS` is a whole number of ms above 0;
/// `PVT_ORDER` is `abba`, the one order besides the default.
fn check_variables() -> std::result::Result<(), String> {
    let var = |name: &str| std::env::var_os(name).map(|v| (name.to_string(), v.to_string_lossy().into_owned()));
    if let Some((name, v)) = var(DEADLINE_ENV)
        && !v.parse::<u64>().is_ok_and(|ms| ms > 0)
    {
        return Err(format!("{name}={v:?}: expected a whole number of milliseconds above 0"));
    }
    if let Some((name, v)) = var(crate::stats::ORDER_ENV)
        && v != "abba"
    {
        return Err(format!("{name}={v:?}: the only order besides the default is abba"));
    }
    Ok(())
}

/// The variable that shortens every child's deadline, for the reliability tests.
const DEADLINE_ENV: &str = "PVT_DEADLINE_MS";

/// The whole of a row binary: parses the CLI, runs the experiments, prints the report.
/// Exit codes: 0, 1 when an experiment failed to run, 2 for bad input.
pub fn main(row: &Row) -> ExitCode {
    // args_os: std::env::args panics on an argument that is not UTF-8; clap reports those.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == child::CHILD_SUBCOMMAND) {
        let Some(rest) = argv[2..].iter().map(|a| a.to_str().map(str::to_string)).collect::<Option<Vec<_>>>() else {
            eprintln!("error: an argument of {} is not UTF-8", child::CHILD_SUBCOMMAND);
            return ExitCode::from(2);
        };
        return run_child(row, &rest);
    }
    if let Err(why) = check_variables() {
        eprintln!("error: {why}");
        return ExitCode::from(2);
    }
    cleanup::install();
    if let Err(e) = crate::shm::remove_stale() {
        eprintln!("warning: could not remove stale segments: {e:#}");
    }
    let ids: Vec<&'static str> = row.experiments.iter().map(|s| s.id).collect();
    let cmd = Args::command()
        .name(row.name)
        .bin_name(row.name)
        .about(row.claim)
        .mut_arg("only", |a| a.value_parser(PossibleValuesParser::new(ids)));
    let args = match cmd.try_get_matches().and_then(|m| Args::from_arg_matches(&m)) {
        Ok(a) => a,
        // clap's usual message and usage lines, exit 2 for errors (0 for --help).
        Err(e) => e.exit(),
    };
    if args.list {
        let list: String = row.experiments.iter().map(|s| format!("{:<18} {}\n", s.id, s.title)).collect();
        return if print_out(&list) { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    if !optimized() && args.json {
        // The human output says it in a line of its own (render::row); JSON has "optimized".
        eprintln!("note: {} was built without optimisations; its timings mean little", row.name);
    }
    let ctx = Ctx { quick: args.quick, side: args.side };
    let progress = !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Held until the report is printed; the kernel drops it when we exit, however we exit.
    let awake = crate::awake::keep_awake();
    let mut report = run(row, &ctx, &args.only, progress);
    report.idle_cpus = awake.status.clone();
    // Orphans still dying (their parent was killed just now) are collected before we exit:
    // nothing of this run is left, not even a zombie.
    cleanup::reap_orphans(Duration::from_millis(500));
    let text = if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("error: serializing the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        render::row(&report)
    };
    if !print_out(&text) {
        return ExitCode::FAILURE;
    }
    if report.has_errors() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Writes `text` to stdout; false, with the error on stderr, when it could not. A reader that
/// stopped reading (`switching --json | head -1`) is no error: what it did not read is
/// dropped. Rust ignores SIGPIPE, so `print!` would panic there instead of ending quietly.
#[must_use = "a failed write must reach the exit status"]
pub fn print_out(text: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => true,
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            false
        }
    }
}

/// Runs the selected experiments in the row's order and builds the report.
pub fn run(row: &Row, ctx: &Ctx, only: &[String], progress: bool) -> Report {
    let mut experiments = Vec::new();
    // Was the machine ours? Read how busy others kept it, from the start of the run on.
    let mut machine = crate::busy::Monitor::default();
    machine.mark();
    // Each measured experiment's readings at its start and end, judged once all have run.
    let mut spans = Vec::new();
    for spec in row.experiments {
        if !only.is_empty() && !only.iter().any(|o| o == spec.id) {
            continue;
        }
        if progress {
            eprint!("running {} ...\r", spec.id);
        }
        announce(spec.id);
        faults::enter_experiment(spec.id);
        let start = machine.mark();
        // Refuse, with the limit named, rather than run into it half-way.
        let outcome = match Room::probe() {
            Ok(room) => match room.refuse(spec.needs) {
                Some(reason) => Ok(Findings::skipped(reason)),
                None => (spec.run)(ctx),
            },
            Err(e) => Err(e.context("reading the machine's limits")),
        };
        if progress {
            eprint!("{:<40}\r", "");
        }
        // Every child of the experiment has been reaped by now; orphans it left (the workers of
        // a host killed at its deadline) came back to us, the subreaper: collect them too.
        cleanup::reap_orphans(Duration::ZERO);
        let end = machine.mark();
        let e = conclude(spec, ctx, outcome);
        if e.kind == Kind::Measure && e.process.is_some() && e.thread.is_some() {
            spans.push((experiments.len(), start.zip(end)));
        }
        experiments.push(e);
    }
    if !spans.is_empty() {
        machine.settle();
    }
    for (i, span) in spans {
        let used = span.and_then(|(start, end)| machine.others_share(start, end));
        let e = &mut experiments[i];
        e.others_cpu = used.map(|u| u.share);
        withhold_if_busy(e, used.map(|u| u.low));
    }
    Report {
        row: row.name.to_string(),
        claim: row.claim.to_string(),
        optimized: optimized(),
        idle_cpus: Default::default(),
        experiments,
    }
}

/// The progress hook: when `PVT_PROGRESS_FD` names a descriptor (`cargo xtask compare` and
/// `report` pass the write end of a pipe), one line with the experiment's id is written to it
/// as the experiment starts, so that the parent's spinner can name it. stdout is never used.
/// The run log (crate::runlog), when there is one, gets the id too.
fn announce(id: &str) {
    crate::runlog::append(&format!("experiment {id}"));
    let Some(fd) = std::env::var("PVT_PROGRESS_FD").ok().and_then(|v| v.parse::<i32>().ok()) else { return };
    let line = format!("{id}\n");
    // Safety: fcntl(2) and write(2) on the descriptor the parent handed us, with our own
    // buffer. Close-on-exec keeps it out of re-executed children; a failed or short write
    // (the parent went away) only loses a progress line, so it is ignored.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::write(fd, line.as_ptr().cast(), line.len());
    }
}

/// Turns what an experiment found into its report entry, with the verdict computed here and
/// nowhere else.
pub fn conclude(spec: &Spec, ctx: &Ctx, outcome: Result<Findings>) -> Experiment {
    let mut e = Experiment {
        id: spec.id.to_string(),
        title: spec.title.to_string(),
        kind: spec.kind,
        unit: spec.unit.map(|(u, _)| u.to_string()),
        better: spec.unit.map(|(_, b)| b),
        expected: spec.expected,
        headline: spec.headline,
        process: None,
        thread: None,
        ratio: None,
        ratio_low: None,
        ratio_high: None,
        verdict: Verdict::Error,
        note: None,
        others_cpu: None,
        busy: None,
    };
    let f = match outcome {
        Ok(f) => f,
        Err(err) => {
            e.note = Some(format!("error: {err:#}"));
            return e;
        }
    };
    e.process = f.process;
    e.thread = f.thread;
    e.note = f.note;
    // Every measured process side says whether glibc took this process (the driver, and the
    // parent of every child it forked) for single-threaded: false for good once a thread has
    // started in it, and then its read, write, poll and fork took glibc's multi-threaded paths
    // (child::glibc_single_threaded, Ctx::hosted).
    if spec.kind == Kind::Measure {
        e.process = e.process.map(|s| s.fact("glibc_single_threaded", crate::child::glibc_single_threaded()));
    }
    if let Some(reason) = f.skipped {
        e.verdict = Verdict::Skipped;
        e.note = Some(reason);
        return e;
    }
    let (Some(p), Some(t)) = (&e.process, &e.thread) else {
        e.verdict = Verdict::Skipped;
        let ran = if ctx.side == Some(Which::Process) { "process" } else { "thread" };
        e.note = Some(format!("only the {ran} side was run (--side {ran}): no comparison"));
        return e;
    };
    match (spec.kind, spec.unit) {
        (Kind::Measure, Some((_, better))) => match report::judge(p, t, better, spec.expected) {
            Some((verdict, interval)) => {
                // Already to three decimals: the verdict was judged on these figures.
                e.verdict = verdict;
                (e.ratio, e.ratio_low, e.ratio_high) = (Some(interval.ratio), Some(interval.low), Some(interval.high));
                if spec.expected == Expected::Same
                    && let Some(side) = report::faster(interval, better)
                {
                    let side = if side == Expected::Process { "process" } else { "thread" };
                    let said =
                        format!("No difference was expected, but the {side} side was better beyond the 5 % band.");
                    e.note = Some(match e.note.take() {
                        Some(n) => format!("{said} {n}"),
                        None => said,
                    });
                }
            }
            None => {
                e.note =
                    Some("error: no ratio: a side has no runs, or a median that is not a positive number".to_string())
            }
        },
        (Kind::Measure, None) => {
            e.note = Some("error: a measure experiment without a unit".to_string());
        }
        (Kind::Observe, _) => match f.matches_claim {
            Some(m) => e.verdict = report::judge_observation(m),
            None => e.note = Some("error: the experiment did not judge what it observed".to_string()),
        },
    }
    e
}

/// A timing taken while other programs used much of the machine measures them, not us: its
/// verdict becomes `tie`, and `busy` says why and what the timings alone said.
/// `low` is the lower bound of `others_cpu` that /proc/stat's counting allows
/// ([`crate::busy::Share`]): the machine counts as busy only when that bound is over the limit.
fn withhold_if_busy(e: &mut Experiment, low: Option<f64>) {
    if !e.unit.as_deref().is_some_and(is_timing) {
        // A count (memory per worker, say) does not depend on who else ran meanwhile.
        return;
    }
    if !low.is_some_and(|l| l > crate::busy::BUSY_LIMIT) {
        return;
    }
    let Some(share) = e.others_cpu else { return };
    if !matches!(e.verdict, Verdict::Holds | Verdict::Marginal | Verdict::Reversed) {
        return;
    }
    e.busy = Some(format!(
        "other programs used {:.0}% of the CPU time while this ran (the limit is {:.0}%): the timings alone said {}, \
         but on a busy machine they measure the scheduler's queue; run it on a quiet machine",
        share * 100.0,
        crate::busy::BUSY_LIMIT * 100.0,
        e.verdict
    ));
    e.verdict = Verdict::Tie;
}

/// True for a unit of time, alone or per something ("µs", "ns/switch"), or a rate per unit
/// of time ("GB/s", "requests/s"): both measure who else had the CPU.
fn is_timing(unit: &str) -> bool {
    let mut parts = unit.split('/');
    let (first, last) = (parts.next(), unit.rsplit('/').next());
    let time = |u: Option<&str>| matches!(u, Some("s" | "ms" | "µs" | "us" | "ns"));
    time(first) || (unit.contains('/') && time(last))
}

fn run_child(row: &Row, args: &[String]) -> ExitCode {
    let Some((name, rest)) = args.split_first() else {
        eprintln!("error: {} needs the name of a child", child::CHILD_SUBCOMMAND);
        return ExitCode::from(2);
    };
    let Some((_, entry)) = row.children.iter().find(|(n, _)| n == name) else {
        eprintln!("error: no child named {name:?} in row {}", row.name);
        return ExitCode::from(2);
    };
    if faults::hang_requested_here() {
        faults::hang_forever();
    }
    crate::panics::one_line_messages();
    match entry(rest) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_opt_levels_2_and_up_count_as_optimised() {
        for (level, optimising) in [("0", false), ("1", false), ("2", true), ("3", true), ("s", true), ("z", true)] {
            assert_eq!(is_optimising(level), optimising, "opt-level {level}");
        }
        // This build (the tests' dev profile is opt-level 3) says so.
        assert!(optimized());
    }

    fn measured(verdict: Verdict, others_cpu: f64) -> Experiment {
        Experiment {
            id: "x".into(),
            title: "t".into(),
            kind: Kind::Measure,
            unit: Some("µs".into()),
            better: Some(Better::Lower),
            expected: Expected::Thread,
            headline: false,
            process: Some(Side::default()),
            thread: Some(Side::default()),
            ratio: Some(0.4),
            ratio_low: Some(0.3),
            ratio_high: Some(0.5),
            verdict,
            note: None,
            others_cpu: Some(others_cpu),
            busy: None,
        }
    }

    #[test]
    fn a_verdict_taken_on_a_busy_machine_becomes_a_tie_that_says_why() {
        let mut e = measured(Verdict::Reversed, 0.8);
        let low = e.others_cpu;
        withhold_if_busy(&mut e, low);
        assert_eq!(e.verdict, Verdict::Tie);
        let why = e.busy.unwrap();
        assert!(why.starts_with("other programs used 80% of the CPU time") && why.contains("said reversed"), "{why}");
    }

    #[test]
    fn a_quiet_machine_keeps_its_verdict_and_other_verdicts_are_untouched() {
        let mut quiet = measured(Verdict::Holds, 0.05);
        let low = quiet.others_cpu;
        withhold_if_busy(&mut quiet, low);
        assert_eq!((quiet.verdict, quiet.busy), (Verdict::Holds, None));
        let mut count = measured(Verdict::Holds, 0.9);
        count.unit = Some("KiB/worker".into());
        let low = count.others_cpu;
        withhold_if_busy(&mut count, low);
        assert_eq!((count.verdict, count.busy), (Verdict::Holds, None), "a count is not a timing");
        // Over the limit, but not beyond what /proc/stat's tick counting can explain: kept.
        let mut unsure = measured(Verdict::Holds, 0.4);
        withhold_if_busy(&mut unsure, Some(0.1));
        assert_eq!((unsure.verdict, unsure.busy), (Verdict::Holds, None));
        let mut rate = measured(Verdict::Holds, 0.9);
        rate.unit = Some("GB/s".into());
        let low = rate.others_cpu;
        withhold_if_busy(&mut rate, low);
        assert_eq!(rate.verdict, Verdict::Tie, "a rate per second is a timing");
        let mut skipped = measured(Verdict::Skipped, 0.9);
        let low = skipped.others_cpu;
        withhold_if_busy(&mut skipped, low);
        assert_eq!((skipped.verdict, skipped.busy), (Verdict::Skipped, None));
    }
}
