//! Nothing left behind and nothing crashes on bad input: interrupts, hung children, the
//! descriptors children inherit, and malformed invocations. Every test drives the real
//! binaries as subprocesses.

use tests::finish;

fn experiment(report: &serde_json::Value, id: &str) -> serde_json::Value {
    report["experiments"].as_array().unwrap().iter().find(|e| e["id"] == id).cloned().unwrap_or_default()
}

#[test]
fn a_hung_worker_process_is_killed_at_its_deadline_and_the_run_goes_on() {
    let child = tests::spawn_in_own_group(
        "stability",
        &["--quick", "--json", "--only", "segfault", "--only", "abort"],
        &[("PVT_HANG", "segfault"), ("PVT_DEADLINE_MS", "1500")],
    );
    let pgid = child.id();
    let (code, stdout, stderr) = finish(child);
    assert_eq!(code, Some(1), "a failed experiment makes the exit code non-zero: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("still one JSON report");
    let hung = experiment(&report, "segfault");
    assert_eq!(hung["verdict"], "error");
    assert!(hung["note"].as_str().unwrap().contains("deadline of 1500 ms"), "{hung}");
    assert_eq!(experiment(&report, "abort")["verdict"], "holds", "the next experiment still ran");
    assert!(tests::group_members(pgid).is_empty(), "left: {:?}", tests::group_members(pgid));
}

#[test]
fn a_hung_sacrificial_child_hosting_threads_is_killed_at_its_deadline() {
    let child = tests::spawn_in_own_group(
        "stability",
        &["--quick", "--json", "--side", "thread", "--only", "segfault", "--only", "abort"],
        &[("PVT_HANG", "segfault"), ("PVT_DEADLINE_MS", "1500")],
    );
    let pgid = child.id();
    let (code, stdout, _) = finish(child);
    assert_eq!(code, Some(1));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(experiment(&report, "segfault")["verdict"], "error");
    assert_eq!(experiment(&report, "abort")["thread"]["facts"]["whole_process"], "killed by SIGABRT");
    assert!(tests::group_members(pgid).is_empty());
}

/// Interrupts a stability run at a point (see [`interrupt_row`]).
fn interrupt(signal: i32, args: &[&str], hang: Option<&str>) -> String {
    interrupt_row("stability", signal, args, hang, |_, _| true)
}

/// Interrupts a run of `row` at a point, then checks the one line, the exit code, and that
/// nothing of the run is left: no process, no segment, nothing in its temporary directory
/// (a TMPDIR of its own, hidden files included). `hang` holds the run at a known point with
/// live children; the signal waits, besides, until `ready` holds of the row's pid and that
/// TMPDIR.
fn interrupt_row(
    row: &str,
    signal: i32,
    args: &[&str],
    hang: Option<&str>,
    ready: impl Fn(u32, &std::path::Path) -> bool,
) -> String {
    let tmp = TempDir::new();
    let mut envs = vec![("PVT_DEADLINE_MS", "20000"), ("TMPDIR", tmp.path.to_str().unwrap())];
    if let Some(id) = hang {
        envs.push(("PVT_HANG", id));
    }
    let child = tests::spawn_in_own_group(row, args, &envs);
    let pid = child.id();
    assert!(tests::wait_until(10, || tests::catches_signal(pid, signal)), "the row never installed its handler");
    assert!(tests::wait_until(10, || ready(pid, &tmp.path)), "the run never reached the point to interrupt");
    if hang.is_some() {
        // Hold on until the run has children: the hung one and its siblings.
        assert!(tests::wait_until(10, || tests::group_members(pid).len() >= 2), "no child appeared");
        for (member, _) in tests::group_members(pid).into_iter().filter(|(m, _)| *m != pid) {
            let fds = || {
                let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{member}/fd"))
                    .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                fds.sort();
                fds
            };
            // A child caught between fork(2) and its close_range(2) still holds the parent's
            // descriptors for a moment; once set up (or gone), it must hold 0, 1 and 2 only.
            // What is checked is what the wait saw: a program just exec'd opens a file or two
            // of its own as it starts (/proc/self/maps), which are not inherited.
            let mut seen = Vec::new();
            let settled = tests::wait_until(2, || {
                seen = fds();
                matches!(seen.as_slice(), [] | [_, _, _])
            });
            assert!(settled && (seen.is_empty() || seen == ["0", "1", "2"]), "child {member} inherited: {seen:?}");
        }
    }
    // Safety: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, signal) };
    let (code, _, stderr) = finish(child);
    assert_eq!(code, Some(128 + signal), "exit code after signal {signal}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {stderr}");
    assert!(tests::wait_until(2, || tests::group_members(pid).is_empty()), "left: {:?}", tests::group_members(pid));
    assert!(tests::segments_of(pid).is_empty(), "segments left: {:?}", tests::segments_of(pid));
    let left: Vec<_> = std::fs::read_dir(&tmp.path).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    lines[0].to_string()
}

/// A TMPDIR of one run's own, removed when dropped (a failed assertion included). Its name is
/// short: a Unix socket's path (ipc-channel's rendezvous is made in it) holds at most 107 bytes.
struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    fn new() -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("pvt-t{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[test]
fn ctrl_c_early_in_a_run_exits_130_with_one_line() {
    let line = interrupt(libc::SIGINT, &["--quick", "--json"], None);
    assert!(line.starts_with("interrupted (SIGINT)"), "{line}");
}

#[test]
fn sigterm_mid_experiment_kills_and_reaps_every_child() {
    // The thread side's host is forked before the process side's first worker, the hung one:
    // the signal waits for both.
    let args = ["--quick", "--json", "--only", "restart"];
    let line =
        interrupt_row("stability", libc::SIGTERM, &args, Some("restart"), |pid, _| tests::children_of(pid).len() >= 2);
    assert!(line.starts_with("terminated (SIGTERM): killed and reaped"), "{line}");
    assert!(
        !line.contains("reaped 0 children") && !line.contains("reaped 1 child,"),
        "the host and the hung worker were alive: {line}"
    );
}

#[test]
fn ctrl_c_during_a_crash_experiment_kills_and_reaps_every_child() {
    let line = interrupt(libc::SIGINT, &["--json", "--only", "segfault"], Some("segfault"));
    assert!(line.starts_with("interrupted (SIGINT): killed and reaped"), "{line}");
    assert!(!line.contains("reaped 0 children"), "{line}");
}

#[test]
fn ctrl_c_while_a_sacrificial_child_hosts_threads() {
    let line = interrupt(libc::SIGINT, &["--json", "--side", "thread", "--only", "abort"], Some("abort"));
    assert!(line.contains("killed and reaped 1 child,"), "{line}");
}

/// ipc-channel's rendezvous is a socket in a directory of its own under $TMPDIR: an
/// interrupt while the partner is to connect removes both.
#[test]
fn ctrl_c_while_the_ipc_channel_partner_is_to_connect_leaves_no_temporary_directory() {
    let args = ["--quick", "--json", "--only", "latency-channel"];
    // The thread side's host is forked first, so a child alone does not say the rendezvous
    // is there yet: the signal waits for its directory.
    let made = |_, tmp: &std::path::Path| std::fs::read_dir(tmp).is_ok_and(|mut d| d.next().is_some());
    let line = interrupt_row("communication", libc::SIGINT, &args, Some("latency-channel"), made);
    // The thread side's host, and, by the moment the signal comes, the partner and the watch
    // that would release the accept: one to three children.
    assert!(
        ["1 child,", "2 children,", "3 children,"].iter().any(|n| line.contains(&format!("killed and reaped {n}"))),
        "{line}"
    );
    assert!(line.ends_with("and removed 1 temporary directory"), "{line}");
}

/// Malformed invocations across the rows and the xtask: exit code 2, a short clear message
/// on stderr, nothing on stdout, never a panic or a backtrace.
#[test]
fn bad_input_is_refused_with_exit_code_2_everywhere() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("stability", &["--only", "nosuch"], "invalid value 'nosuch'"),
        ("stability", &["--only", ""], "a value is required"),
        ("stability", &["--only", "0"], "invalid value '0'"),
        ("stability", &["--only", "-1"], "unexpected argument '-1'"),
        ("stability", &["--only", "99999999999999999999999"], "invalid value"),
        ("stability", &["--only"], "a value is required"),
        ("stability", &["--side", "both"], "invalid value 'both'"),
        ("stability", &["--side", "0"], "invalid value '0'"),
        ("stability", &["--side"], "a value is required"),
        ("stability", &["--quick=5"], "unexpected value '5'"),
        ("stability", &["--json=1"], "unexpected value '1'"),
        ("stability", &["--list", "--json"], "cannot be used with"),
        ("stability", &["--list", "--only", "abort"], "cannot be used with"),
        ("stability", &["--json", "--json"], "cannot be used multiple times"),
        ("stability", &["--side", "thread", "--side", "process"], "cannot be used multiple times"),
        ("stability", &["stray"], "unexpected argument 'stray'"),
        ("stability", &["-x"], "unexpected argument '-x'"),
        ("switching", &["--only", "nosuch"], "invalid value 'nosuch'"),
        ("switching", &["--side", "-5"], "unexpected argument '-5'"),
        ("switching", &["--bogus"], "unexpected argument '--bogus'"),
        ("xtask", &[], "no task given"),
        ("xtask", &["nosuchtask"], "unknown task 'nosuchtask'"),
        ("xtask", &["compare", "nosuchrow"], "invalid value 'nosuchrow'"),
        ("xtask", &["compare", "--quick=3"], "unexpected value '3'"),
        ("xtask", &["compare", "--frobnicate"], "unexpected argument '--frobnicate'"),
        // The usage line is one a person can run, not the bare task name.
        ("xtask", &["compare", "--frobnicate"], "Usage: cargo xtask compare [OPTIONS]"),
        ("xtask", &["report", "--frobnicate"], "Usage: cargo xtask report [OPTIONS]"),
        ("xtask", &["snapshots", "--frobnicate"], "Usage: cargo xtask snapshots [OPTIONS]"),
    ];
    for (bin, args, expected) in cases {
        tests::assert_bad_input(bin, args, expected);
    }
}

/// An argument that is not UTF-8 is bad input like any other: exit 2 and a short message
/// (std::env::args would panic on it).
#[test]
fn an_argument_that_is_not_utf8_is_refused_with_exit_code_2() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"\xff");
    for (bin, before) in [("stability", "--only"), ("stability", "--side"), ("xtask", "compare"), ("xtask", "anchors")]
    {
        let out = std::process::Command::new(tests::binary(bin)).arg(before).arg(bad).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin} {before}: {stderr}");
        assert!(stderr.contains("UTF-8") || stderr.contains("invalid value"), "{bin} {before}: {stderr}");
        assert!(!stderr.contains("panicked"), "{bin} {before}: {stderr}");
        assert!(out.stdout.is_empty(), "{bin} {before}: nothing on stdout");
    }
}

/// A reader that stopped reading (`stability --json | head -1`) ends the output quietly: no
/// panic, the run's own exit code. The pipe's read end is closed before the row starts, so
/// every write meets EPIPE.
#[test]
fn a_closed_stdout_ends_the_output_without_a_panic() {
    for (bin, args) in [
        ("stability", &["--list"][..]),
        ("stability", &["--quick", "--json", "--only", "segfault"][..]),
        ("stability", &["--quick", "--only", "segfault"][..]),
        ("xtask", &["--help"][..]),
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(tests::binary(bin)).args(args).stdout(writer).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{bin} {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{bin} {args:?}: {stderr}");
    }
}

/// A variable the rows read, set to a value they would not understand: refused with exit 2
/// before anything runs, not ignored.
#[test]
fn a_bad_value_of_a_row_variable_is_refused_with_exit_code_2() {
    let cases = [
        ("PVT_DEADLINE_MS", "abc", "PVT_DEADLINE_MS=\"abc\": expected a whole number of milliseconds"),
        ("PVT_DEADLINE_MS", "0", "PVT_DEADLINE_MS=\"0\""),
        ("PVT_DEADLINE_MS", "-1", "PVT_DEADLINE_MS=\"-1\""),
        ("PVT_ORDER", "ABBA", "PVT_ORDER=\"ABBA\": the only order besides the default is abba"),
    ];
    for (name, value, expected) in cases {
        let out =
            std::process::Command::new(tests::binary("stability")).arg("--list").env(name, value).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}={value}: {stderr}");
        assert!(stderr.contains(expected), "{name}={value}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}={value}: nothing runs, not even --list");
    }
    // The values the tests and docs use are accepted.
    let out = std::process::Command::new(tests::binary("stability"))
        .args(["--quick", "--json", "--only", "panic"])
        .env("PVT_DEADLINE_MS", "20000")
        .env("PVT_ORDER", "abba")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs a row with `--quick --json` under a shell limit (`ulimit -u 1`, say) and returns
/// its exit code and report.
fn under_limit(row: &str, limit: &str) -> (Option<i32>, serde_json::Value) {
    let out = std::process::Command::new("bash")
        .args(["-c", &format!(r#"{limit} && exec "$0" "$@""#)])
        .arg(tests::binary(row))
        .args(["--quick", "--json"])
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{row} under `{limit}`: {e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), report)
}

#[test]
fn a_low_process_limit_is_refused_with_the_limit_named() {
    // RLIMIT_NPROC counts every task of the user, so 1 leaves no room for a single worker.
    // The kernel exempts root from it; the rows honour it anyway.
    for &row in tests::ROWS {
        let (code, report) = under_limit(row, "ulimit -u 1");
        assert_eq!(code, Some(0), "{row}: a refusal is not a failure");
        for e in report["experiments"].as_array().unwrap() {
            // Counting lines of source starts no task: it runs under any limit.
            if (row, e["id"].as_str().unwrap()) == ("communication", "effort") {
                assert_eq!(e["verdict"], "holds", "{row} {}", e["id"]);
                continue;
            }
            assert_eq!(e["verdict"], "skipped", "{row} {}", e["id"]);
            let note = e["note"].as_str().unwrap();
            assert!(note.starts_with("refused: needs "), "{row}: {note}");
            assert!(note.contains("ulimit -u (RLIMIT_NPROC) is 1 and user"), "{row}: {note}");
        }
    }
}

#[test]
fn a_small_address_space_is_refused_with_the_limit_named() {
    // 20 MB of address space: enough to start the row, not for 5 tasks' stacks.
    let (code, report) = under_limit("stability", "ulimit -v 20000");
    assert_eq!(code, Some(0));
    for e in report["experiments"].as_array().unwrap() {
        let note = e["note"].as_str().unwrap();
        assert_eq!(e["verdict"], "skipped", "{note}");
        assert!(note.contains("of address space") && note.contains("ulimit -v (RLIMIT_AS) is 19.5 MiB"), "{note}");
    }
}

#[test]
fn a_run_removes_stale_segments_of_dead_owners_and_keeps_live_ones() {
    // A pid that was alive and is now certainly dead: a child we started and reaped.
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let mut dead = dead;
    dead.wait().unwrap();
    let stale = format!("/dev/shm/pvt-{dead_pid}-00000000deadbeef");
    // Ours, alive: the test process.
    let live = format!("/dev/shm/pvt-{}-00000000a11ce000", std::process::id());
    // Not of our prefix at all.
    let foreign = format!("/dev/shm/other-{dead_pid}-0");
    for p in [&stale, &live, &foreign] {
        std::fs::write(p, b"").unwrap();
    }
    let out = tests::run("stability", &["--quick", "--json", "--only", "panic"]);
    let gone = !std::path::Path::new(&stale).exists();
    let kept = [&live, &foreign].map(|p| std::path::Path::new(p).exists());
    for p in [&stale, &live, &foreign] {
        let _ = std::fs::remove_file(p);
    }
    assert!(out.status.success());
    assert!(gone, "the segment of dead pid {dead_pid} was not removed");
    assert_eq!(kept, [true, true], "a live owner's segment and a foreign file stay");
}

/// Interrupts `cargo xtask compare` while the row it runs holds a hung worker, then checks
/// the exit code, the one line, and that neither the row nor any of its children is left.
fn interrupt_compare(signal: i32, whole_group: bool) -> String {
    let child = tests::spawn_in_own_group(
        "xtask",
        &["compare", "--quick", "stability"],
        &[("PVT_HANG", "restart"), ("PVT_DEADLINE_MS", "60000"), tests::XTASK_ENV],
    );
    let pgid = child.id();
    // The build comes first (a no-op when cargo test has built the rows).
    let mut row = 0;
    let holding = || {
        let members = tests::group_members(pgid);
        let found = members.into_iter().find(|(m, _)| tests::command_of(*m).as_deref() == Some("stability"));
        row = found.map_or(0, |(r, _)| r);
        row != 0 && tests::children_of(row).len() >= 2
    };
    assert!(tests::wait_until(600, holding), "the stability row never reached its hung worker");
    let target = if whole_group { -(pgid as i32) } else { pgid as i32 };
    // Safety: kill(2) on our own child, or on its process group as Ctrl-C in a terminal does.
    unsafe { libc::kill(target, signal) };
    let (code, _, stderr) = finish(child);
    assert_eq!(code, Some(128 + signal), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {stderr}");
    assert!(tests::wait_until(2, || tests::group_members(pgid).is_empty()), "left: {:?}", tests::group_members(pgid));
    assert!(tests::segments_of(row).is_empty(), "segments left: {:?}", tests::segments_of(row));
    lines[0].to_string()
}

#[test]
fn sigterm_to_cargo_xtask_compare_reaches_the_running_row() {
    // Only the xtask gets the signal: it must pass it on to the row, which cleans up.
    let line = interrupt_compare(libc::SIGTERM, false);
    assert_eq!(line, "terminated (SIGTERM): stopped the running row");
}

#[test]
fn ctrl_c_on_cargo_xtask_compare_stops_everything() {
    // Ctrl-C in a terminal signals the whole foreground process group.
    let line = interrupt_compare(libc::SIGINT, true);
    assert_eq!(line, "interrupted (SIGINT): stopped the running row");
}

#[test]
fn a_futex_partner_killed_outright_ends_the_experiment_with_an_error() {
    // A futex word has no end-of-file: without a watch on the partner process, the driver
    // would sleep on the word forever (here: until the 60 s deadline).
    // The partner hangs before it starts serving, so that it is surely the one killed.
    let child = tests::spawn_in_own_group(
        "switching",
        &["--json", "--only", "futex-same-cpu", "--side", "process"],
        &[("PVT_HANG", "futex-same-cpu"), ("PVT_DEADLINE_MS", "60000")],
    );
    let row = child.id();
    let mut partner = 0;
    let found = tests::wait_until(10, || {
        partner = tests::children_of(row).first().map_or(0, |c| c.0);
        partner != 0
    });
    assert!(found, "the partner process never appeared");
    // Safety: kill(2) on a child of our child.
    unsafe { libc::kill(partner as i32, libc::SIGKILL) };
    let (code, stdout, stderr) = finish(child);
    assert_eq!(code, Some(1), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let e = experiment(&report, "futex-same-cpu");
    assert_eq!(e["verdict"], "error");
    let note = e["note"].as_str().unwrap();
    assert!(note.contains("the partner process killed by SIGKILL"), "{note}");
    assert!(tests::group_members(row).is_empty());
}
