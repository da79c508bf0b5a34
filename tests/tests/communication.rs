//! The communication row, driven as a user would drive it: its real binary as a subprocess.
//! These tests assert what was observed (every byte arrived, checksummed; each task ran where
//! it was pinned; the lines each mechanism takes; what a broken partner does to a run), never
//! timings.

use std::io::Read;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tests::experiment;

/// The mechanisms of each side, as the report names them.
const PROCESS: [&str; 5] = ["pipe", "socket pair", "POSIX message queue", "ipc-channel", "shared-memory ring"];
const THREAD: [&str; 5] = ["pipe", "socket pair", "std mpsc channel", "crossbeam channel", "in-place ring"];

/// One `--quick` run shared by the tests that read the whole report.
fn quick_report() -> &'static Value {
    static REPORT: OnceLock<Value> = OnceLock::new();
    REPORT.get_or_init(|| tests::report("communication", &["--quick"]))
}

/// The report with what depends on the run or the machine taken out: measured numbers (also
/// inside the matrix lines), the latency matrix (its shape depends on the CPUs allowed), and
/// the size of the harness (it changes with other rows' work). Mechanisms, checksum facts,
/// the threads of each side's driver process and the effort counts of this row stay.
fn redacted(report: &Value) -> Value {
    let mut report = report.clone();
    let keep: Vec<&str> = PROCESS.iter().chain(THREAD.iter()).copied().chain(["driver_process_threads"]).collect();
    tests::redact_numbers(&mut report, &keep);
    for e in report["experiments"].as_array_mut().unwrap() {
        let id = e["id"].as_str().unwrap().to_string();
        if let Some(Value::String(note)) = e.get_mut("note") {
            *note = note.replace("one CPU (only one is allowed here)", "two CPUs");
            // Whether /dev/mqueue is mounted depends on the machine.
            *note = note.replace(
                "Message queues are registered for the interrupt cleanup (/dev/mqueue is mounted here).",
                "[whether /dev/mqueue is mounted]",
            );
            if let Some(at) = note.find("/dev/mqueue is not mounted here") {
                note.truncate(at);
                note.push_str("[whether /dev/mqueue is mounted]");
            }
        }
        for side in ["process", "thread"] {
            let Some(facts) = e.get_mut(side).and_then(|s| s.get_mut("facts")).and_then(Value::as_object_mut) else {
                continue;
            };
            for (k, v) in facts.iter_mut() {
                if k == "harness_code_lines_processes_rely_on" {
                    *v = Value::String("[number]".into());
                } else if let Value::String(s) = v {
                    if id == "cpu-cost" && keep.contains(&k.as_str()) {
                        *v = Value::String("[latency and CPU, one CPU and two]".into());
                    } else {
                        *v = Value::String(tests::digits_to_n(s));
                    }
                }
            }
        }
    }
    report
}

#[test]
fn json_report_matches_the_snapshot() {
    // Every thread-side run is served by a host, and the ipc-channel accept's watch is a process.
    tests::assert_no_thread_started_in_the_row(quick_report());
    insta::assert_json_snapshot!("communication_quick_json", redacted(quick_report()));
}

#[test]
fn every_experiment_ran_and_none_failed() {
    let ids: Vec<&str> =
        quick_report()["experiments"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["latency-channel", "latency-shm", "latency-pipe", "throughput-shm", "throughput-pipe", "cpu-cost", "effort"]
    );
    for e in quick_report()["experiments"].as_array().unwrap() {
        assert!(e["verdict"] != "error" && e["verdict"] != "skipped", "{}: {}", e["id"], e["note"]);
    }
    let headlines = tests::headlines(quick_report());
    assert_eq!(headlines, ["latency-channel", "throughput-shm", "effort"]);
}

#[test]
fn every_byte_sent_arrived_and_its_checksum_matched() {
    for id in ["throughput-shm", "throughput-pipe"] {
        let e = experiment(quick_report(), id);
        for side in ["process", "thread"] {
            let f = &e[side]["facts"];
            assert_eq!(f["checksums_match"], true, "{id} {side}");
            let sent = f["bytes_sent"].as_u64().unwrap();
            let received = f["bytes_received_timed_runs"].as_u64().unwrap();
            assert!(received > 0 && received <= sent, "{id} {side}: {received} of {sent}");
            assert_eq!(received % f["message_bytes"].as_u64().unwrap(), 0, "{id} {side}: whole messages");
            // Every timed run moves its bytes, quick or not: 16 MiB through the ring, 32 through
            // the pipe.
            let runs = e[side]["runs"].as_u64().unwrap();
            let per_run = if id == "throughput-shm" { 16 << 20 } else { 32 << 20 };
            assert_eq!(received, runs * per_run, "{id} {side}: {per_run} bytes in each of {runs} runs");
            // The sender counted every run: the warm-up run and the timed ones, each after its
            // settle run.
            assert_eq!(sent, 2 * (1 + runs) * per_run, "{id} {side}: sent");
        }
    }
    let shm = experiment(quick_report(), "throughput-shm");
    assert_eq!(shm["process"]["facts"]["message_bytes"], 1 << 20);
    // The pipe control says what a pipe held: F_GETPIPE_SZ's answer, at least a page (0 when
    // it could not be read), and the note names a smaller pipe than the 1 MiB asked for.
    let pipe = experiment(quick_report(), "throughput-pipe");
    let held = pipe["process"]["facts"]["pipe_bytes"].as_u64().expect("pipe_bytes");
    assert!(held >= 4096, "a pipe held {held} bytes");
    assert_eq!(pipe["thread"]["facts"]["pipe_bytes"], held);
    assert_eq!(pipe["note"].as_str().unwrap().contains("held only"), held < 1 << 20);
}

#[test]
fn the_matrix_shows_every_mechanism_at_every_size_with_its_checksums() {
    let msgsize_max: usize =
        std::fs::read_to_string("/proc/sys/fs/mqueue/msgsize_max").unwrap().trim().parse().unwrap();
    let e = experiment(quick_report(), "throughput-shm");
    for (side, names) in [("process", PROCESS), ("thread", THREAD)] {
        let f = &e[side]["facts"];
        assert_eq!(f["matrix_checksums_match"], true, "{side}");
        for name in names {
            let line = f[name].as_str().unwrap_or_else(|| panic!("{side}: no matrix line for {name}"));
            assert!(line.contains("checksums match"), "{side} {name}: {line}");
            for size in ["4 KiB", "64 KiB", "1 MiB"] {
                assert!(line.contains(size), "{side} {name}: {size} missing in {line}");
            }
            // A message queue refuses messages over msgsize_max, and says so.
            let refused = line.matches("not possible (msgsize_max)").count();
            let expected = if name == "POSIX message queue" {
                [64 << 10, 1 << 20].iter().filter(|&&s| s > msgsize_max).count()
            } else {
                0
            };
            assert_eq!(refused, expected, "{side} {name}: {line}");
        }
    }
    let e = experiment(quick_report(), "cpu-cost");
    for (side, names) in [("process", PROCESS), ("thread", THREAD)] {
        for name in names {
            let line = e[side]["facts"][name].as_str().unwrap_or_else(|| panic!("{side}: no latency line for {name}"));
            assert!(line.starts_with("one CPU: p50 ") && line.contains("two CPUs: "), "{side} {name}: {line}");
        }
    }
}

#[test]
fn round_trips_happened_where_the_tasks_were_pinned() {
    for id in ["latency-channel", "latency-shm", "latency-pipe", "cpu-cost"] {
        let e = experiment(quick_report(), id);
        for side in ["process", "thread"] {
            let f = &e[side]["facts"];
            assert_eq!(f["ran_on_pinned_cpus"], true, "{id} {side}");
            assert_eq!(f["pinned_cpus"], f["ran_on_cpus"], "{id} {side}");
            assert_eq!(f["message_bytes"], 64, "{id} {side}");
            // At least 16 round trips in every timed run: a run of one measured the partner's
            // reports around it more than the mechanism.
            let runs = e[side]["runs"].as_u64().unwrap();
            assert!(runs >= 7, "{id} {side}: {runs} runs");
            assert!(f["round_trips"].as_u64().unwrap() >= 16 * runs, "{id} {side}: {f}");
            assert!(f["p50_us"].as_f64().unwrap() <= f["p99_us"].as_f64().unwrap(), "{id} {side}");
            assert!(f["cpu_us_per_round_trip"].as_f64().unwrap() > 0.0, "{id} {side}: CPU was used");
        }
        // Both sides of a pair make the same number of round trips.
        assert_eq!(e["process"]["facts"]["round_trips"], e["thread"]["facts"]["round_trips"], "{id}");
    }
    let e = experiment(quick_report(), "latency-channel");
    assert_eq!(e["process"]["facts"]["mechanism"], "ipc-channel");
    assert_eq!(e["thread"]["facts"]["mechanism"], "crossbeam channel");
    let same = |id: &str| {
        let p = &experiment(quick_report(), id)["process"]["facts"]["pinned_cpus"];
        p[0] == p[1]
    };
    assert!(same("latency-shm") && same("latency-pipe"), "the latency pairs run on one CPU");
}

#[test]
fn on_the_process_side_the_driver_is_alone_in_its_process() {
    // The thread side's partner lives only through a thread run: alive during the process
    // runs too, it made the driver one of two threads, and every call on a descriptor paid
    // for the shared descriptor table (5-7 % on latency-pipe, docs/communication.md).
    for id in ["latency-channel", "latency-shm", "latency-pipe", "throughput-shm", "throughput-pipe", "cpu-cost"] {
        let e = experiment(quick_report(), id);
        assert_eq!(e["process"]["facts"]["driver_process_threads"], 1, "{id}");
        assert_eq!(e["thread"]["facts"]["driver_process_threads"], 2, "{id}: the driver and its partner");
    }
}

#[test]
fn both_rings_are_the_same_kind_of_memory() {
    // Like with like: a thread ring on a private mapping (or with the _PRIVATE futex ops,
    // which links::RING_OPS rules out for both) would measure the kind of memory, not the
    // process. What smaps showed is the evidence.
    for id in ["latency-shm", "throughput-shm"] {
        let e = experiment(quick_report(), id);
        for side in ["process", "thread"] {
            let f = &e[side]["facts"];
            assert_eq!(f["ring_mapping"], "MAP_SHARED", "{id} {side}: {f}");
        }
        // Both asked for base pages; what they got, they got alike.
        assert_eq!(e["process"]["facts"]["huge_kib"], e["thread"]["facts"]["huge_kib"], "{id}");
        assert!(e["process"]["facts"]["huge_kib"].is_u64(), "{id}");
    }
}

#[test]
fn cpu_cost_alone_has_at_least_16_round_trips_a_run() {
    // First in its row, on a link nothing has used yet: the first round trips are the slowest
    // (they fault in code and wake a partner that has not run), and sized on those a run was
    // one round trip, whose CPU figure was the partner's reports more than the channel. The
    // row now warms the link before sizing and never takes fewer than 16 a run; this test
    // holds the floor: a run of fewer round trips fails it. The warm-up itself is method:
    // what it buys is a timing, which no test asserts.
    let report = tests::report("communication", &["--quick", "--only", "cpu-cost"]);
    let e = experiment(&report, "cpu-cost");
    for side in ["process", "thread"] {
        let runs = e[side]["runs"].as_u64().unwrap();
        let trips = e[side]["facts"]["round_trips"].as_u64().unwrap();
        assert!(trips >= 16 * runs, "{side}: {trips} round trips in {runs} runs");
    }
}

/// Code lines (not blank, not only a comment) inside every `// effort: NAME begin` ..
/// `// effort: end` region of a source, counted here, independently of the row's counter.
fn marked_lines(source: &str, name: &str) -> u64 {
    let mut count = 0;
    let mut region: Option<&str> = None;
    for line in source.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("// effort: ") {
            region = rest.strip_suffix(" begin");
            continue;
        }
        if region == Some(name) && !line.is_empty() && !line.starts_with("//") {
            count += 1;
        }
    }
    count
}

#[test]
fn effort_counts_are_the_marker_regions_of_the_sources() {
    // The sources as they are now, read from the files (the row counted them at build time).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/communication/src");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let (process, thread, links) = (read("process.rs"), read("thread.rs"), read("links.rs"));
    let count = |file: &str, setup: &[&str], link: &[&str]| -> u64 {
        setup.iter().map(|n| marked_lines(file, n)).sum::<u64>()
            + link.iter().map(|n| marked_lines(&links, n)).sum::<u64>()
    };
    // Which regions make each mechanism: its setup in process.rs or thread.rs, its link in links.rs.
    let expected_process = [
        ("pipe", count(&process, &["pipe"], &["stream"])),
        ("socket pair", count(&process, &["socket"], &["stream"])),
        ("POSIX message queue", count(&process, &["queue"], &["queue"])),
        ("ipc-channel", count(&process, &["ipc-channel"], &["ipc-channel"])),
        ("shared-memory ring", count(&process, &["ring"], &["ring"])),
    ];
    let expected_thread = [
        ("pipe", count(&thread, &["pipe"], &["stream"])),
        ("socket pair", count(&thread, &["socket"], &["stream"])),
        ("std mpsc channel", count(&thread, &["queue"], &["channel", "mpsc"])),
        ("crossbeam channel", count(&thread, &["channel"], &["channel", "crossbeam"])),
        ("in-place ring", count(&thread, &["ring"], &["ring"])),
    ];
    let e = experiment(quick_report(), "effort");
    for (side, expected) in [("process", expected_process), ("thread", expected_thread)] {
        for (name, lines) in expected {
            assert!(lines >= 5, "{side} {name}: only {lines} marked lines in the sources");
            assert_eq!(e[side]["facts"][name].as_u64(), Some(lines), "{side} {name}");
        }
    }
    let (p, t) = (expected_process, expected_thread);
    let claim = p[3].1 > t[3].1 && p[4].1 > t[4].1;
    assert_eq!(e["verdict"], if claim { "holds" } else { "contradicted" });
    assert!(e["note"].as_str().unwrap().contains("static properties of this row's sources, counted at build time"));
    assert!(e["process"]["facts"]["harness_code_lines_processes_rely_on"].as_u64().unwrap() > 100);
}

#[test]
fn a_truncated_message_is_an_error_that_says_so_never_a_hang() {
    for id in ["latency-pipe", "latency-shm", "latency-channel"] {
        // The row's own deadline bounds every wait (a hang would end in its error, which the
        // note would then name instead of the truncation).
        let report = run_with_fault(
            &["--quick", "--json", "--only", id, "--side", "process"],
            &[("PVT_COMM_FAULT", "truncate"), ("PVT_DEADLINE_MS", "5000")],
        );
        let e = experiment(&report, id);
        assert_eq!(e["verdict"], "error", "{id}");
        let note = e["note"].as_str().unwrap();
        assert!(note.contains("a truncated message") && note.contains("32 of 64 bytes"), "{id}: {note}");
        assert!(!note.contains("deadline"), "{id}: found by the truncation, not by the deadline: {note}");
    }
}

/// Runs the row with a fault injected (`PVT_COMM_FAULT`, with the other variables in `env`):
/// it must still print one report, exit 1 (an experiment failed) and leave no process of its
/// group.
fn run_with_fault(args: &[&str], env: &[(&str, &str)]) -> Value {
    let child = tests::spawn_in_own_group("communication", args, env);
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(tests::group_members(pid).is_empty(), "{args:?} left: {:?}", tests::group_members(pid));
    serde_json::from_slice(&out.stdout).expect("still one JSON report")
}

/// The receiver's checksum of the bytes moved is compared with the sender's, on both sides:
/// a partner that reports other bytes than were sent makes the experiment an error, never a
/// rate.
#[test]
fn bytes_that_arrive_other_than_sent_are_an_error_not_a_rate() {
    for id in ["throughput-pipe", "throughput-shm"] {
        for side in ["process", "thread"] {
            let args = ["--quick", "--json", "--only", id, "--side", side];
            let report = run_with_fault(&args, &[("PVT_COMM_FAULT", "corrupt")]);
            let e = experiment(&report, id);
            assert_eq!(e["verdict"], "error", "{id} {side}");
            let note = e["note"].as_str().unwrap();
            let said = format!("the {side} side's");
            assert!(note.contains(&said) && note.contains("the bytes received are not the bytes sent"), "{id}: {note}");
        }
    }
}

#[test]
fn a_partner_that_stops_answering_is_an_error_at_the_deadline() {
    let report = run_with_fault(
        &["--quick", "--json", "--only", "latency-shm", "--only", "effort"],
        &[("PVT_COMM_FAULT", "stall"), ("PVT_DEADLINE_MS", "1000")],
    );
    let e = experiment(&report, "latency-shm");
    assert_eq!(e["verdict"], "error");
    assert!(e["note"].as_str().unwrap().contains("stopped answering"), "{e}");
    assert_ne!(experiment(&report, "effort")["verdict"], "error", "the next experiment still ran");
}

#[test]
fn sigkill_in_the_middle_of_a_shared_memory_exchange_leaves_nothing_behind() {
    // The partner stalls after a few messages, so the row is held inside the exchange.
    let mut child = tests::spawn_in_own_group(
        "communication",
        &["--quick", "--json", "--only", "latency-shm", "--side", "process"],
        &[("PVT_COMM_FAULT", "stall"), ("PVT_DEADLINE_MS", "30000")],
    );
    let pid = child.id();
    // With `--side process` the row's one child is the partner, forked after the segment is
    // made, and the name goes once both have it mapped: a child and no name say the exchange
    // can begin.
    let started = || tests::group_members(pid).len() >= 2 && tests::segments_of(pid).is_empty();
    assert!(tests::wait_until(30, started), "the partner never started, or the segment's name never went");
    std::thread::sleep(Duration::from_millis(300));
    // Safety: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    if std::os::unix::process::ExitStatusExt::signal(&status) != Some(libc::SIGKILL) {
        let mut said = String::new();
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read>),
        ]
        .into_iter()
        .flatten()
        {
            let mut p = pipe;
            let _ = p.read_to_string(&mut said);
        }
        panic!("the row ended before the SIGKILL ({status}): {said}");
    }
    // The partner dies with the row (PR_SET_PDEATHSIG); the segment's name was removed as soon
    // as both had it mapped, so no file is left in /dev/shm.
    assert!(tests::wait_until(5, || tests::gone(pid)), "left: {:?}", tests::group_members(pid));
    assert!(tests::segments_of(pid).is_empty(), "left: {:?}", tests::segments_of(pid));
    // What a killed run could still leave, the next run removes: reliability.rs,
    // a_run_removes_stale_segments_of_dead_owners_and_keeps_live_ones.
}

#[test]
fn the_human_output_shows_the_matrix_one_line_per_side() {
    let out = tests::run("communication", &["--quick", "--only", "throughput-shm"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for (side, names) in [("process", PROCESS), ("thread", THREAD)] {
        let line = text.lines().find(|l| l.trim_start().starts_with(side)).unwrap_or_else(|| panic!("{text}"));
        for name in names {
            assert!(line.contains(&format!("{name}=4 KiB")), "{side}: {name} not on its line: {line}");
        }
    }
}

#[test]
fn one_side_only_is_reported_as_skipped_not_judged() {
    let report = tests::report("communication", &["--quick", "--only", "latency-pipe", "--side", "thread"]);
    let e = experiment(&report, "latency-pipe");
    assert!(e.get("process").is_none());
    assert_eq!(e["verdict"], "skipped");
    assert_eq!(e["thread"]["facts"]["mechanism"], "pipe");
}

#[test]
fn list_names_every_experiment_and_bad_input_is_refused() {
    let out = tests::run("communication", &["--list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let ids: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(ids.len(), 7, "{text}");
    let cases: &[(&[&str], &str)] = &[
        (&["--only", "nosuch"], "invalid value 'nosuch'"),
        (&["--side", "both"], "invalid value 'both'"),
        (&["--list", "--json"], "cannot be used with"),
        (&["stray"], "unexpected argument 'stray'"),
    ];
    for (args, expected) in cases {
        tests::assert_bad_input("communication", args, expected);
    }
}

/// A full `--quick` run leaves no process of its group, no segment of its pid and no message
/// queue (leftovers.rs makes the same check for every row but the queues, which only this row
/// makes).
#[test]
fn a_whole_run_leaves_no_process_or_segment() {
    let child = tests::spawn_in_own_group("communication", &["--quick", "--json"], &[]);
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(tests::group_members(pid).is_empty(), "left: {:?}", tests::group_members(pid));
    assert!(tests::segments_of(pid).is_empty(), "left: {:?}", tests::segments_of(pid));
    match queues_of(pid) {
        Some(queues) => assert!(queues.is_empty(), "left: {queues:?}"),
        None => eprintln!("/dev/mqueue is not mounted here: the message queues' names cannot be checked"),
    }
}

/// The message queues of this project's prefix that belong to `pid`, where the mqueue file
/// system shows them; `None` where it is not mounted.
fn queues_of(pid: u32) -> Option<Vec<String>> {
    use harness::cleanup::{MQUEUE_DIR, SEGMENT_PREFIX, mqueue_mounted};
    let dir = std::fs::read_dir(MQUEUE_DIR).ok().filter(|_| mqueue_mounted())?;
    let names = dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned());
    Some(names.filter(|n| n.starts_with(&format!("{SEGMENT_PREFIX}{pid}-"))).collect())
}

/// Where /dev/mqueue is mounted (`.ci/run` mounts it when it can), a run removes the queues of
/// owners that are gone, as it removes their segments, and keeps a live owner's.
#[test]
fn a_run_removes_stale_queues_of_dead_owners_and_keeps_live_ones() {
    if queues_of(0).is_none() {
        eprintln!("/dev/mqueue is not mounted here: nothing to check (mount -t mqueue none /dev/mqueue)");
        return;
    }
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = format!("/pvt-{dead_pid}-00000000deadbeef");
    let live = format!("/pvt-{}-00000000a11ce000", std::process::id());
    for name in [&stale, &live] {
        let c = std::ffi::CString::new(name.as_str()).unwrap();
        // Safety: mq_open(3) with a valid name, default attributes; the descriptor is closed at once.
        let q = unsafe {
            libc::mq_open(
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                0o600,
                std::ptr::null::<libc::mq_attr>(),
            )
        };
        assert!(q >= 0, "mq_open {name}: {}", std::io::Error::last_os_error());
        // Safety: the descriptor we just opened.
        unsafe { libc::mq_close(q) };
    }
    let out = tests::run("communication", &["--list"]);
    let left = |name: &str| std::path::Path::new(&format!("/dev/mqueue{name}")).exists();
    let (stale_left, live_left) = (left(&stale), left(&live));
    for name in [&stale, &live] {
        let c = std::ffi::CString::new(name.as_str()).unwrap();
        // Safety: mq_unlink(3) of a name we created.
        unsafe { libc::mq_unlink(c.as_ptr()) };
    }
    assert!(out.status.success());
    assert!(!stale_left, "the queue of dead pid {dead_pid} was not removed");
    assert!(live_left, "a live owner's queue stays");
}
