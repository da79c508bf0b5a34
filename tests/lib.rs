//! Helpers for the tests that drive the row binaries as subprocesses. The tests never fork
//! inside the multi-threaded test harness; they run the real binaries and read what they
//! print, as a user would.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// Every row binary of the workspace.
pub const ROWS: &[&str] = &["memory", "switching", "communication", "stability", "concurrency", "use-cases"];

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

/// Builds a binary of the workspace once per test process (a no-op when `cargo test` has
/// built it already) and returns its path.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    let path = target.join("debug").join(name);
    if !built.iter().any(|b| b == name) {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--package", name, "--bin", name])
            .current_dir(root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build -p {name} failed");
        built.push(name.to_string());
    }
    path
}

/// The environment the tests give `cargo xtask`: build the rows in the dev profile (as
/// optimised as release here), so that the tests reuse what `cargo test` built instead of
/// building the whole workspace a second time.
pub const XTASK_ENV: (&str, &str) = ("PVT_BUILD_PROFILE", "dev");

/// `cargo xtask` as the tests run it.
pub fn xtask() -> Command {
    let mut cmd = Command::new(binary("xtask"));
    cmd.env(XTASK_ENV.0, XTASK_ENV.1);
    cmd
}

/// A filter for human-output snapshots: whether idle CPUs were kept awake is a condition of
/// the run (root or not, PVT_LET_CPUS_IDLE), not a claim.
pub const IDLE_CPUS_FILTER: (&str, &str) = (r"idle CPUs: .*", "idle CPUs: [a condition of this run]");

/// Runs a row binary with arguments and returns what it did.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(binary(name)).args(args).output().expect("running the row binary")
}

/// Checks a malformed invocation: exit code 2, `expected` in a short message on stderr with
/// clap's usage line, nothing on stdout, never a panic or a backtrace.
pub fn assert_bad_input(bin: &str, args: &[&str], expected: &str) {
    let out = run(bin, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{bin} {args:?}: {stderr}");
    assert!(stderr.contains(expected), "{bin} {args:?}: expected {expected:?} in: {stderr}");
    assert!(stderr.lines().count() <= 8, "{bin} {args:?}: short message: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{bin} {args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{bin} {args:?}: nothing on stdout");
}

/// Runs a row with `--json` and parses the one document it must print.
/// Every report is checked against the row's run log (`PVT_RUN_LOG`, harness::runlog): each
/// judged number came from runs taken in turns ([`assert_runs_taken_in_turns`]). The rows run
/// in the default order (`PVT_ORDER` removed): ABBA is for a person measuring the method.
pub fn report(name: &str, args: &[&str]) -> serde_json::Value {
    let log = RunLog::new();
    let out = Command::new(binary(name))
        .arg("--json")
        .args(args)
        .env("PVT_RUN_LOG", &log.0)
        .env_remove("PVT_ORDER")
        .output()
        .expect("running the row binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{name} --json did not print one JSON document ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_runs_taken_in_turns(&report, &log.read());
    report
}

/// A run log's file: new and empty (a file of that name left by a killed test is replaced),
/// removed when dropped, also when the test panics.
struct RunLog(PathBuf);

impl RunLog {
    fn new() -> RunLog {
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("pvt-test-runlog-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new().write(true).create_new(true).open(&path).expect("creating the run log");
        RunLog(path)
    }

    fn read(&self) -> String {
        std::fs::read_to_string(&self.0).expect("reading the run log")
    }
}

impl Drop for RunLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One call of `stats::interleave` in a run log: the order of its runs and each side's timed
/// values.
struct Call {
    order: String,
    values: [Vec<f64>; 2],
}

/// The experiments whose judged number is a second measure of their timed runs
/// (`stats::summarize_again`): communication's cpu-cost, the CPU time of its latency runs. The
/// log cannot show where such values were read, so no other experiment may have them.
pub const MEASURED_AGAIN: &[&str] = &["cpu-cost"];

/// Checks a report against its run's log (harness::runlog): for every measured experiment
/// that ran, the log names it once; every call of `stats::interleave` in it took its runs in
/// strict turns (warm-up pairs `pt`, then timed pairs `PT`; one letter throughout where one
/// side ran); and each side's reported samples are one call's timed values (or those runs
/// measured again, `stats::summarize_again`, in [`MEASURED_AGAIN`] only), both sides' from
/// the same call. A row that timed a side in a loop of its own, or a harness that took one
/// side's runs as a block, fails here.
pub fn assert_runs_taken_in_turns(report: &serde_json::Value, log: &str) {
    // Per experiment: its calls of interleave, and its runs measured again ([from, values]).
    type Again = [Vec<f64>; 2];
    let mut experiments: Vec<(String, Vec<Call>, Vec<Again>)> = Vec::new();
    for line in log.lines() {
        if let Some(id) = line.strip_prefix("experiment ") {
            assert!(experiments.iter().all(|(x, _, _)| x != id), "{id} twice in the run log");
            experiments.push((id.to_string(), Vec::new(), Vec::new()));
            continue;
        }
        let last = experiments.last_mut().unwrap_or_else(|| panic!("runs before any experiment: {line}"));
        let lists = |parts: &mut std::str::Split<'_, char>, prefixes: [&str; 2]| {
            prefixes.map(|prefix| {
                let list = parts.next().and_then(|p| p.strip_prefix(prefix));
                let list = list.unwrap_or_else(|| panic!("no {prefix} in the run log's line {line}"));
                let number =
                    |v: &str| v.parse::<f64>().unwrap_or_else(|_| panic!("{v:?} in the run log's line {line}"));
                list.split(',').filter(|v| !v.is_empty()).map(number).collect::<Vec<_>>()
            })
        };
        if let Some(call) = line.strip_prefix("interleave ") {
            let mut parts = call.split(' ');
            let order = parts.next().unwrap_or_default().to_string();
            last.1.push(Call { order, values: lists(&mut parts, ["P=", "T="]) });
        } else if let Some(again) = line.strip_prefix("again ") {
            let id = &last.0;
            assert!(
                MEASURED_AGAIN.contains(&id.as_str()),
                "{id}: measured again, which no experiment but {MEASURED_AGAIN:?} does"
            );
            last.2.push(lists(&mut again.split(' '), ["FROM=", "V="]));
        } else {
            panic!("not a line of the run log: {line}");
        }
    }
    for e in report["experiments"].as_array().unwrap() {
        if e["kind"] != "measure" || e["verdict"] == "skipped" || e["verdict"] == "error" {
            continue;
        }
        let id = e["id"].as_str().unwrap();
        let (_, calls, agains) =
            experiments.iter().find(|(x, _, _)| x == id).unwrap_or_else(|| panic!("{id}: not in the run log"));
        for call in calls {
            let order = &call.order;
            let warm = order.chars().take_while(char::is_ascii_lowercase).count();
            let (warmup, timed) = order.split_at(warm);
            for (part, pair) in [(warmup, "pt"), (timed, "PT")] {
                let (a, b) = (&pair[..1], &pair[1..]);
                let turns = part.is_empty()
                    || part == a.repeat(part.len())
                    || part == b.repeat(part.len())
                    || (part.len() % 2 == 0 && part == pair.repeat(part.len() / 2));
                assert!(turns, "{id}: runs not in turns: {order}");
            }
        }
        let samples = |side: &str| -> Vec<f64> {
            e.get(side)
                .and_then(|s| s["samples"].as_array())
                .map(|v| {
                    v.iter().map(|x| x.as_f64().unwrap_or_else(|| panic!("{id}: a sample {x} is no number"))).collect()
                })
                .unwrap_or_default()
        };
        let reported = [samples("process"), samples("thread")];
        // serde_json may read a float back one unit in the last place off.
        let same = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()))
        };
        // A side's samples are the call's values, or the same runs measured again.
        let from_call = |c: &Call, i: usize| {
            same(&c.values[i], &reported[i])
                || agains.iter().any(|[from, again]| same(again, &reported[i]) && same(from, &c.values[i]))
        };
        assert!(
            calls.iter().any(|c| from_call(c, 0) && from_call(c, 1)),
            "{id}: the samples reported are no call's of interleave: {:?} against {:?}",
            reported,
            calls.iter().map(|c| &c.order).collect::<Vec<_>>()
        );
    }
}

/// Replaces every measured number in a report with "[number]" so that a snapshot keeps the
/// facts that are claims (who saw the write, which signal killed whom) and drops the noise.
/// Numbers inside `facts` survive when their key is listed in `keep` (counts that are
/// observed, not measured). In `measure` experiments the digits of the sides' summary lines
/// become `N`, their measured verdicts `[verdict]` (skips stay), and the thread ids in runtime messages `TID`.
pub fn redact_numbers(v: &mut serde_json::Value, keep: &[&str]) {
    redact(v, keep, false, false);
}

fn redact(v: &mut serde_json::Value, keep: &[&str], in_facts: bool, measure: bool) {
    use serde_json::Value;
    match v {
        Value::Number(_) => *v = Value::String("[number]".into()),
        Value::Array(items) => items.iter_mut().for_each(|i| redact(i, keep, in_facts, measure)),
        Value::Object(map) => {
            let measure = measure || map.get("kind").and_then(Value::as_str) == Some("measure");
            // Whether other programs kept the machine busy, and whether idle CPUs were kept
            // awake, are conditions of this run, like the timings, not claims.
            map.shift_remove("busy");
            map.shift_remove("idle_cpus");
            // Every run's value is noise by nature; the count of runs stays in "runs".
            if let Some(samples) = map.get_mut("samples") {
                *samples = Value::String("[samples]".into());
            }
            // Which side was better in a control that expected none depends on the timings.
            if measure && let Some(Value::String(note)) = map.get_mut("note") {
                *note = without_which_was_better(note);
                if note.is_empty() {
                    map.shift_remove("note");
                }
            }
            for (k, item) in map.iter_mut() {
                if k == "samples" {
                    continue;
                }
                if in_facts && keep.contains(&k.as_str()) {
                    continue;
                }
                if k == "summary" && measure {
                    if let Value::String(s) = item {
                        *s = digits_to_n(s);
                    }
                    continue;
                }
                let judged = matches!(item.as_str(), Some("holds" | "marginal" | "tie" | "reversed"));
                if k == "verdict" && measure && judged {
                    // A measured verdict depends on the timings of this run; a skip does not.
                    *item = Value::String("[verdict]".into());
                    continue;
                }
                if k == "message" {
                    if let Value::String(s) = item {
                        *s = without_thread_ids(s);
                    }
                    continue;
                }
                redact(item, keep, in_facts || k == "facts", measure);
            }
        }
        _ => {}
    }
}

/// Drops the sentence the runner adds when an `expected: same` control found a difference.
fn without_which_was_better(note: &str) -> String {
    let Some(start) = note.find("No difference was expected, but the ") else { return note.to_string() };
    let end = note[start..].find("band.").map_or(note.len(), |i| start + i + "band.".len());
    let rest = note[end..].trim_start_matches(' ');
    format!("{}{rest}", &note[..start])
}

#[cfg(test)]
mod note_tests {
    use super::without_which_was_better;

    #[test]
    fn the_sentence_on_which_side_was_better_is_dropped_and_the_note_kept() {
        let said = "No difference was expected, but the process side was better beyond the 5 % band.";
        assert_eq!(without_which_was_better(said), "");
        assert_eq!(without_which_was_better(&format!("{said} A thread looks up.")), "A thread looks up.");
        assert_eq!(without_which_was_better("A thread looks up."), "A thread looks up.");
    }
}

/// "1081 ns (1050.2–1119.8, 7 runs)" becomes "N ns (N–N, N runs)".
pub fn digits_to_n(s: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for c in s.chars() {
        let digit = c.is_ascii_digit() || (in_number && c == '.');
        if digit && !in_number {
            out.push('N');
        } else if !digit {
            out.push(c);
        }
        in_number = digit;
    }
    out
}

/// "thread 'main' (6709) has overflowed its stack" becomes "thread 'main' (TID) has ...".
pub fn without_thread_ids(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('(') {
        let (before, after) = rest.split_at(open);
        out.push_str(before);
        let close = after.find(')').unwrap_or(0);
        if close > 1 && after[1..close].chars().all(|c| c.is_ascii_digit()) {
            out.push_str("(TID)");
            rest = &after[close + 1..];
        } else {
            out.push('(');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Starts a binary of the workspace in a process group of its own, so that everything it
/// starts can be found by group afterwards, even a child whose parent is gone.
pub fn spawn_in_own_group(name: &str, args: &[&str], envs: &[(&str, &str)]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    become_subreaper();
    let mut cmd = Command::new(binary(name));
    cmd.args(args).envs(envs.iter().copied()).process_group(0);
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd.spawn().expect("starting the binary")
}

/// Waits for a child started by [`spawn_in_own_group`] and returns its exit code (None when
/// a signal ended it), stdout and stderr.
pub fn finish(child: std::process::Child) -> (Option<i32>, String, String) {
    let out = child.wait_with_output().expect("waiting for the row");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Makes this test process a child subreaper, once: the children of a row killed outright
/// (SIGKILL runs no handler) die with it, and their zombies then come to us, not to a PID 1
/// that may be slow to reap, so that [`gone`] can see and collect them.
fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // Safety: prctl(2) on this process; it changes only who adopts our orphans.
    ONCE.call_once(|| unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
    });
}

/// True when nothing of a process group is left: the zombies of it that we adopted (see
/// [`become_subreaper`]) are reaped first, since a zombie proves its process ended; anything
/// still running stays and makes this false. Only members of `pgid` are touched, never another
/// test's children.
pub fn gone(pgid: u32) -> bool {
    let me = std::process::id();
    for (pid, state, parent, group) in processes() {
        if group == pgid && parent == me && state == 'Z' {
            // Safety: waitpid(2) on a zombie child of ours.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
    group_members(pgid).is_empty()
}

/// Every process on the machine as (pid, state letter, parent pid, process group), from
/// /proc/PID/stat (proc(5)).
pub fn processes() -> Vec<(u32, char, u32, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The fields after the command name, which is in parentheses and may hold spaces.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = fields[0].chars().next().unwrap_or('?');
        let (ppid, pgrp) = (fields[1].parse().unwrap_or(0), fields[2].parse().unwrap_or(0));
        found.push((pid, state, ppid, pgrp));
    }
    found
}

/// The CPUs this test (and the rows it starts) may use, in order: sched_getaffinity(2).
pub fn allowed_cpus() -> Vec<usize> {
    // Safety: cpu_set_t is plain data that sched_getaffinity fills in for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set), 0);
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}

/// The live processes of a process group (zombies included), with their state letter.
pub fn group_members(pgid: u32) -> Vec<(u32, char)> {
    processes().into_iter().filter(|p| p.3 == pgid).map(|p| (p.0, p.1)).collect()
}

/// The command name of a process (/proc/PID/comm), while it lives.
pub fn command_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim_end().to_string())
}

/// The children of a process (zombies included), with their state letter.
pub fn children_of(parent: u32) -> Vec<(u32, char)> {
    processes().into_iter().filter(|p| p.2 == parent).map(|p| (p.0, p.1)).collect()
}

/// True once a process has a handler installed for a signal (SigCgt in /proc/PID/status).
pub fn catches_signal(pid: u32, signal: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(str::trim).unwrap_or("0");
    u64::from_str_radix(mask, 16).map(|m| m & (1 << (signal - 1)) != 0).unwrap_or(false)
}

/// The memory row held in the middle of an experiment: the other program of shared-segment
/// hangs (`PVT_HANG`) until `deadline_ms`, so the row waits with its named segment created.
/// Returns once the segment is there; `more` adds arguments (other experiments to run).
pub fn memory_row_mid_experiment(deadline_ms: u64, more: &[&str]) -> std::process::Child {
    let mut args = vec!["--quick", "--json", "--only", "shared-segment"];
    args.extend_from_slice(more);
    let deadline = deadline_ms.to_string();
    let child = spawn_in_own_group("memory", &args, &[("PVT_HANG", "shared-segment"), ("PVT_DEADLINE_MS", &deadline)]);
    let pid = child.id();
    assert!(wait_until(10, || !segments_of(pid).is_empty()), "the segment never appeared");
    child
}

/// Segments of this project in /dev/shm owned by `pid`.
pub fn segments_of(pid: u32) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&format!("pvt-{pid}-")))
        .collect()
}

/// Polls `cond` every 5 ms for up to `secs` seconds.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

/// One experiment of a report, by id; a missing one fails the test.
pub fn experiment<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["experiments"].as_array().unwrap().iter().find(|e| e["id"] == id).unwrap_or_else(|| panic!("no {id}"))
}

/// The ids of a report's headline experiments, in order.
pub fn headlines(report: &serde_json::Value) -> Vec<&str> {
    let experiments = report["experiments"].as_array().unwrap();
    experiments.iter().filter(|e| e["headline"] == true).map(|e| e["id"].as_str().unwrap()).collect()
}

/// Every measured process side says glibc took the row's process for single-threaded
/// (`glibc_single_threaded`): the row hosts its thread sides' threads in processes of their
/// own, so that no thread ever starts in the process that drives the process side and forks
/// its children. One thread started there, and the fact reads false from that experiment on.
pub fn assert_no_thread_started_in_the_row(report: &serde_json::Value) {
    let mut checked = 0;
    for e in report["experiments"].as_array().unwrap() {
        let Some(p) = e.get("process") else { continue };
        if e["kind"] != "measure" {
            continue;
        }
        assert_eq!(p["facts"]["glibc_single_threaded"], true, "{}: a thread was started in the row's process", e["id"]);
        assert!(
            e["thread"]["facts"].get("glibc_single_threaded").is_none(),
            "{}: the fact is the process side's",
            e["id"]
        );
        checked += 1;
    }
    assert!(checked > 0, "no measured process side to check");
}

/// Checks every measured experiment of a report against its own samples: both sides took the
/// same number of runs (they take turns), at least 7; each median is the median of the
/// side's samples; the ratio is of the two medians and lies inside its interval. A row that
/// summarised the wrong runs fails here; the order the runs were taken in is checked against
/// the run's log by [`report`].
pub fn assert_measures_are_sound(report: &serde_json::Value) {
    for e in report["experiments"].as_array().unwrap() {
        let (Some(p), Some(t)) = (e.get("process"), e.get("thread")) else { continue };
        if e["kind"] != "measure" {
            continue;
        }
        let id = &e["id"];
        let runs = p["runs"].as_u64().unwrap();
        assert!(runs >= 7, "{id}: {runs} runs");
        assert_eq!(runs, t["runs"].as_u64().unwrap(), "{id}: interleaved runs come in pairs");
        for s in [p, t] {
            let mut samples: Vec<f64> = s["samples"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(samples.len() as u64, runs, "{id}");
            samples.sort_by(f64::total_cmp);
            let n = samples.len();
            let median = if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2.0 };
            assert!((median - s["median"].as_f64().unwrap()).abs() < 1e-6, "{id}: the median is of the samples");
        }
        let ratio = p["median"].as_f64().unwrap() / t["median"].as_f64().unwrap();
        assert!((ratio - e["ratio"].as_f64().unwrap()).abs() < 0.001, "{id}: ratio {ratio} vs {}", e["ratio"]);
        let (lo, hi) = (e["ratio_low"].as_f64().unwrap(), e["ratio_high"].as_f64().unwrap());
        assert!(lo <= ratio + 0.001 && ratio <= hi + 0.001 && lo < hi + 1e-9, "{id}: {lo}..{hi} around {ratio}");
    }
}

#[cfg(test)]
mod run_log_checks {
    use super::assert_runs_taken_in_turns;

    fn report(process: &[f64], thread: &[f64]) -> serde_json::Value {
        report_of("x", process, thread)
    }

    /// The report most checks read (three runs a side) and the call of interleave that took
    /// those runs, in turns.
    fn three_a_side() -> serde_json::Value {
        report(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0])
    }
    const CALL: &str = "interleave ptPTPTPT P=1.0,2.0,3.0 T=4.0,5.0,6.0";

    fn report_of(id: &str, process: &[f64], thread: &[f64]) -> serde_json::Value {
        serde_json::json!({ "experiments": [{
            "id": id, "kind": "measure", "verdict": "holds",
            "process": { "runs": process.len(), "samples": process },
            "thread": { "runs": thread.len(), "samples": thread },
        }]})
    }

    #[test]
    fn runs_in_turns_pass() {
        let r = three_a_side();
        assert_runs_taken_in_turns(&r, &format!("experiment x\n{CALL}\n"));
        // A sweep: another point's call beside the judged one.
        assert_runs_taken_in_turns(&r, &format!("experiment x\ninterleave ptPTPT P=9.0,9.0 T=8.0,8.0\n{CALL}\n"));
        // One side asked for (--side): one letter throughout, the other side's list empty.
        let one = serde_json::json!({ "experiments": [{
            "id": "x", "kind": "measure", "verdict": "holds", "process": { "runs": 2, "samples": [1.5, 2.5] } }]});
        assert_runs_taken_in_turns(&one, "experiment x\ninterleave pPP P=1.5,2.5 T=\n");
    }

    #[test]
    fn the_same_runs_measured_again_pass() {
        let r = report_of("cpu-cost", &[7.0, 8.0], &[4.0, 5.0]);
        let log = "experiment cpu-cost\ninterleave ptPTPT P=1.0,2.0 T=4.0,5.0\nagain FROM=1.0,2.0 V=7.0,8.0\n";
        assert_runs_taken_in_turns(&r, log);
    }

    #[test]
    #[should_panic(expected = "no call's of interleave")]
    fn values_measured_again_from_other_runs_fail() {
        let r = report_of("cpu-cost", &[7.0, 8.0], &[4.0, 5.0]);
        let log = "experiment cpu-cost\ninterleave ptPTPT P=1.0,2.0 T=4.0,5.0\nagain FROM=1.0,2.5 V=7.0,8.0\n";
        assert_runs_taken_in_turns(&r, log);
    }

    #[test]
    #[should_panic(expected = "measured again, which no experiment but")]
    fn values_measured_again_elsewhere_fail() {
        // A row's own loop passed off as the same runs measured again.
        let log = "experiment x\ninterleave ptPTPT P=1.0,2.0 T=4.0,5.0\nagain FROM=1.0,2.0 V=7.0,8.0\n";
        assert_runs_taken_in_turns(&report(&[7.0, 8.0], &[4.0, 5.0]), log);
    }

    #[test]
    #[should_panic(expected = "no call's of interleave")]
    fn each_side_from_a_call_of_its_own_fails() {
        // The block order, one side per call: each side's values are a call's, not the same one's.
        let log = "experiment x\ninterleave pPPP P=1.0,2.0,3.0 T=\ninterleave tTTT P= T=4.0,5.0,6.0\n";
        assert_runs_taken_in_turns(&three_a_side(), log);
    }

    #[test]
    #[should_panic(expected = "x twice in the run log")]
    fn an_experiment_run_twice_fails() {
        let log = format!("experiment x\n{CALL}\nexperiment x\n{CALL}\n");
        assert_runs_taken_in_turns(&three_a_side(), &log);
    }

    #[test]
    fn the_logs_numbers_read_back_as_the_reports() {
        // The row writes the log (harness::runlog) and the report (serde_json) from the same
        // floats; awkward ones must read back equal from both.
        let p = vec![1e-7, 1e21, 0.1 + 0.2, 123456.789012345];
        let t = vec![f64::MIN_POSITIVE, 2.5e-300, 7.0, 1.0 / 3.0];
        let r: serde_json::Value = serde_json::from_str(&report_of("cpu-cost", &p, &t).to_string()).unwrap();
        let call = harness::runlog::call_line("ptPTPTPTPT", &[p.clone(), t.clone()]);
        assert_runs_taken_in_turns(&r, &format!("experiment cpu-cost\n{call}\n"));
        let from = vec![1.0, 2.0, 3.0, 4.0];
        let again = harness::runlog::again_line(&from, &p);
        let call = harness::runlog::call_line("ptPTPTPTPT", &[from, t]);
        assert_runs_taken_in_turns(&r, &format!("experiment cpu-cost\n{call}\n{again}\n"));
    }

    #[test]
    #[should_panic(expected = "not a line of the run log")]
    fn a_line_of_another_format_fails() {
        assert_runs_taken_in_turns(&three_a_side(), &format!("experiment x\n{CALL}\nrepeat PT\n"));
    }

    #[test]
    #[should_panic(expected = "runs not in turns")]
    fn one_sides_block_fails() {
        let log = "experiment x\ninterleave ptPPPTTT P=1.0,2.0,3.0 T=4.0,5.0,6.0\n";
        assert_runs_taken_in_turns(&three_a_side(), log);
    }

    #[test]
    #[should_panic(expected = "not in the run log")]
    fn runs_outside_the_harness_fail() {
        assert_runs_taken_in_turns(&three_a_side(), &format!("experiment y\n{CALL}\n"));
    }

    #[test]
    #[should_panic(expected = "no call's of interleave")]
    fn numbers_from_a_loop_of_the_rows_own_fail() {
        // As many runs as a call took, but not its values.
        let log = "experiment x\ninterleave ptPTPTPT P=1.0,2.0,3.0 T=4.0,5.0,6.0\n";
        assert_runs_taken_in_turns(&report(&[1.0, 2.0, 3.5], &[4.0, 5.0, 6.0]), log);
    }
}
