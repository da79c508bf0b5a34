//! The stability row, driven as a user would drive it: its real binary as a subprocess.

use serde_json::Value;
use tests::experiment;

/// Facts that are observed counts, not measurements: they stay in the snapshot. (restart's
/// jobs follow its runs, whose number depends on how quick they were: its test checks them.)
const KEEP: &[&str] =
    &["others_delivered", "results_lost", "others_poisoned", "others", "crasher_held_lock", "crasher_panicked"];

#[test]
fn json_report_matches_the_snapshot() {
    let mut report = tests::report("stability", &["--quick"]);
    // poison's threads and restart's thread jobs run in processes of their own.
    tests::assert_no_thread_started_in_the_row(&report);
    tests::redact_numbers(&mut report, KEEP);
    insta::assert_json_snapshot!("stability_quick_json", report);
}

#[test]
fn fatal_signals_end_the_whole_threaded_process_but_one_worker_process() {
    let report = tests::report("stability", &["--quick", "--only", "segfault", "--only", "abort"]);
    for (id, signal) in [("segfault", "SIGSEGV"), ("abort", "SIGABRT")] {
        let e = experiment(&report, id);
        let (p, t) = (&e["process"]["facts"], &e["thread"]["facts"]);
        assert_eq!(p["faulty_worker"], format!("killed by {signal}"), "{id}");
        assert_eq!(p["others_delivered"], 3, "{id}: the other worker processes delivered");
        assert_eq!(t["whole_process"], format!("killed by {signal}"), "{id}");
        assert_eq!(t["results_lost"], 3, "{id}: the other threads' results died with the process");
        assert_eq!(e["verdict"], "holds", "{id}");
    }
}

#[test]
fn a_panic_is_contained_on_both_sides_and_the_verdict_says_so() {
    let report = tests::report("stability", &["--quick", "--only", "panic"]);
    let e = experiment(&report, "panic");
    assert_eq!(e["process"]["facts"]["faulty_worker"], "exited 101");
    assert_eq!(e["thread"]["facts"]["whole_process"], "exited 0");
    assert_eq!(e["thread"]["facts"]["faulty_worker"], "panicked; join returned Err");
    assert_eq!(e["verdict"], "contradicted");
    assert!(e["note"].as_str().unwrap().contains("panic = \"abort\""));
}

#[test]
fn restart_completes_every_job_correctly_on_both_sides() {
    let report = tests::report("stability", &["--quick", "--only", "restart"]);
    let e = experiment(&report, "restart");
    assert_eq!(e["kind"], "measure");
    for side in ["process", "thread"] {
        let f = &e[side]["facts"];
        // One crash per job, the supervisor replaced each one exactly once, and every job's
        // result came out right.
        assert_eq!(f["replacements"], f["jobs"], "{side}");
        assert_eq!(f["jobs_with_correct_result"], f["jobs"], "{side}");
        // A job per run: the warm-up run and each timed run (the thread side's in a process
        // of its own, which the other side's forks do not reach: no settle run).
        let runs = e[side]["runs"].as_u64().unwrap();
        assert_eq!(f["jobs"].as_u64().unwrap(), 1 + runs, "{side}: a job per run");
        // Both sides on one CPU, as the replacements said (sched_getcpu), not as we asked.
        assert_eq!(f["replacements_ran_on_pinned_cpu"], true, "{side}");
        let cpu = f["pinned_cpu"].as_u64().unwrap() as usize;
        assert_eq!(cpu, *tests::allowed_cpus().first().unwrap(), "{side}: the first CPU we may use");
    }
    tests::assert_measures_are_sound(&report);
}

#[test]
fn poison_holds_only_when_the_crasher_really_panicked_under_the_lock() {
    let report = tests::report("stability", &["--quick", "--only", "poison"]);
    let e = experiment(&report, "poison");
    for side in ["process", "thread"] {
        assert_eq!(e[side]["facts"]["crasher_held_lock"], true, "{side}");
        assert_eq!(e[side]["facts"]["crasher_panicked"], true, "{side}");
    }
    assert_eq!(e["verdict"], "holds");
    // A crasher that takes the lock but does not panic poisons nothing: the claim was not
    // shown, and the verdict must say so instead of holding by default.
    let out = std::process::Command::new(tests::binary("stability"))
        .args(["--quick", "--json", "--only", "poison"])
        .env("PVT_CRASHER_SPARED", "1")
        .output()
        .unwrap();
    let spared: Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = experiment(&spared, "poison");
    assert_eq!(e["verdict"], "contradicted", "{e}");
    assert_eq!(e["process"]["facts"]["crasher_panicked"], false);
    assert_eq!(e["thread"]["facts"]["others_poisoned"], 0);
}

#[test]
fn one_side_only_is_reported_as_skipped_not_judged() {
    let report = tests::report("stability", &["--quick", "--only", "poison", "--side", "process"]);
    let e = experiment(&report, "poison");
    assert!(e.get("thread").is_none());
    assert_eq!(e["verdict"], "skipped");
    assert_eq!(e["process"]["facts"]["others_poisoned"], 0);
}

#[test]
fn human_output_matches_the_snapshot() {
    // The observe experiments only: measured numbers would change the table's layout.
    let ids = ["segfault", "abort", "stack-overflow", "panic", "poison"];
    let mut args = vec!["--quick"];
    for id in &ids {
        args.extend(["--only", id]);
    }
    let out = tests::run("stability", &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    insta::with_settings!({filters => vec![(r" \(\d+\) ", " (TID) "), tests::IDLE_CPUS_FILTER]}, {
        insta::assert_snapshot!("stability_quick_human", stdout);
    });
}

#[test]
fn list_names_every_experiment() {
    let out = tests::run("stability", &["--list"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    for id in ["segfault", "abort", "stack-overflow", "panic", "poison", "restart"] {
        assert!(stdout.lines().any(|l| l.starts_with(id)), "{id} missing from --list:\n{stdout}");
    }
}

#[test]
fn bad_input_gives_a_clear_error_and_exit_code_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--only", "nosuch"], "invalid value 'nosuch'"),
        (&["--side", "both"], "invalid value 'both'"),
        (&["--frobnicate"], "unexpected argument '--frobnicate'"),
        (&["--list", "--json"], "cannot be used with"),
        (&["stray"], "unexpected argument 'stray'"),
    ];
    for (args, expected) in cases {
        tests::assert_bad_input("stability", args, expected);
    }
}
