//! The memory row, driven as a user would drive it: its real binary as a subprocess.
//! These tests assert what was observed (who saw the write, which pages the kernel copied,
//! what became of the segment), never timings.

use std::sync::OnceLock;

use serde_json::Value;
use tests::experiment;

/// Facts that are observed values or counts, not measurements: they stay in the snapshot.
const KEEP: &[&str] = &[
    "writer_read_back",
    "observer_saw_global",
    "observer_saw_heap",
    "pages_written",
    "writer_minor_faults",
    "value_seen",
    "page_bytes",
    // Not "checksum": the thread side's depends on how many passes fit its budget this run;
    // checksums_ok says whether each side's matched what it should.
    "huge_pages_kib",
];

/// One `--quick` run shared by the tests that read the whole report.
fn quick_report() -> &'static Value {
    static REPORT: OnceLock<Value> = OnceLock::new();
    REPORT.get_or_init(|| tests::report("memory", &["--quick"]))
}

/// Addresses change from run to run (address-space layout randomisation): every fact whose
/// name ends in `_address` becomes "[address]".
fn redact_addresses(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                if k.ends_with("_address") && item.is_string() {
                    *item = Value::String("[address]".into());
                } else {
                    redact_addresses(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_addresses),
        _ => {}
    }
}

#[test]
fn json_report_matches_the_snapshot() {
    let mut report = quick_report().clone();
    // private-write's and shared-segment's threads, and cow-copy's writer, start in processes
    // of their own.
    tests::assert_no_thread_started_in_the_row(&report);
    tests::redact_numbers(&mut report, KEEP);
    redact_addresses(&mut report);
    // Whether PageTables had stopped falling is a condition of the machine (another program's
    // exits keep it falling), like the timings, not a claim.
    for e in report["experiments"].as_array_mut().unwrap() {
        for side in ["process", "thread"] {
            if let Some(f) = e[side]["facts"].get_mut("page_tables_steady_before_every_run") {
                *f = Value::String("[whether the machine was steady]".into());
            }
        }
    }
    insta::assert_json_snapshot!("memory_quick_json", report);
}

#[test]
fn every_experiment_ran_and_none_failed() {
    let ids: Vec<&str> =
        quick_report()["experiments"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["private-write", "shared-segment", "cow-copy", "footprint"]);
    for e in quick_report()["experiments"].as_array().unwrap() {
        assert!(e["verdict"] != "error" && e["verdict"] != "skipped", "{}: {}", e["id"], e["note"]);
    }
}

#[test]
fn a_childs_write_stays_in_the_child_and_a_threads_write_is_seen() {
    let e = experiment(quick_report(), "private-write");
    let (p, t) = (&e["process"]["facts"], &e["thread"]["facts"]);
    for (side, f) in [("process", p), ("thread", t)] {
        assert_eq!(f["writer_read_back"], serde_json::json!([2, 2]), "{side}: the writer really wrote");
        assert_eq!(f["same_addresses"], true, "{side}: writer and observer used the same addresses");
    }
    assert_eq!((&p["observer_saw_global"], &p["observer_saw_heap"]), (&Value::from(1), &Value::from(1)));
    assert_eq!(p["write_seen"], false);
    assert_eq!((&t["observer_saw_global"], &t["observer_saw_heap"]), (&Value::from(2), &Value::from(2)));
    assert_eq!(t["write_seen"], true);
    assert_eq!(p["global_address"], t["global_address"], "the global is at one address in every copy");
    // Copy-on-write: the child's first write to each of the two pages faults; the thread's
    // pages are writable already.
    assert!(p["writer_minor_faults"].as_u64().unwrap() >= 2, "{p}");
    assert_eq!(t["writer_minor_faults"], 0, "{t}");
    assert_eq!(e["verdict"], "holds");
}

#[test]
fn the_segment_is_private_shared_by_name_and_unlinked_while_mapped() {
    let e = experiment(quick_report(), "shared-segment");
    let (p, t) = (&e["process"]["facts"], &e["thread"]["facts"]);
    assert_eq!(p["segment_mode"], "0600");
    assert_eq!(p["name_unlinked_while_both_mapped"], true);
    assert_eq!(p["other_could_not_open_it_by_name_after_unlink"], true);
    assert_eq!(p["write_seen"], true);
    assert_eq!(t["write_seen"], true);
    assert_eq!(t["value_seen"], p["value_seen"], "both observers read what their writer stored");
    // The reference side: the observer read the writer's store while the writer still ran.
    assert_eq!(t["seen_before_join"], true, "{t}");
    assert_eq!(e["verdict"], "holds");
}

#[test]
fn the_child_copies_every_page_it_writes_and_the_thread_none() {
    let e = experiment(quick_report(), "cow-copy");
    let (p, t) = (&e["process"]["facts"], &e["thread"]["facts"]);
    let pages = p["pages_written"].as_u64().unwrap();
    assert!(p["minor_faults_per_run"].as_u64().unwrap() >= pages, "at least one fault per page: {p}");
    // The thread's pages are its owner's and writable, even with the process side's forks
    // taking turns with it: far fewer faults than pages.
    assert!(t["minor_faults_per_run"].as_u64().unwrap() <= pages / 100, "far fewer than one per page: {t}");
    for (side, f) in [("process", p), ("thread", t)] {
        assert_eq!(f["checksums_ok"], true, "{side}");
        // What smaps showed after the passes: base pages only, so a write is one page's worth.
        assert_eq!(f["huge_pages_kib"], 0, "{side}: {f}");
    }
    assert_eq!(p["owner_sees_writes"], false, "the parent's buffer kept its contents");
    assert_eq!(t["owner_sees_writes"], true);
    // Only a child's first write to a page is the copy: one pass per process run, as many as
    // fill the budget per thread run (a pass over 8 MiB takes tens of µs, the budget 2 ms).
    assert_eq!(p["passes_per_run"], 1, "{p}");
    assert!(t["passes_per_run"].as_u64().unwrap() > 1, "{t}");
    // A process run is its first pass and nothing else: its first pass is its number.
    let first = p["first_pass_ns_per_page"].as_f64().unwrap();
    let median = e["process"]["median"].as_f64().unwrap();
    assert!((first - median).abs() <= 0.01 * median + 0.01, "first pass {first} against the median {median}");
    assert!(t["first_pass_ns_per_page"].as_f64().unwrap() > 0.0, "{t}");
}

#[test]
fn every_footprint_worker_was_alive_and_idle_when_measured() {
    let e = experiment(quick_report(), "footprint");
    for side in ["process", "thread"] {
        let f = &e[side]["facts"];
        let workers = f["workers"].as_u64().unwrap();
        assert!(workers >= 4, "{side}: {workers} workers");
        assert_eq!(f["workers_idle_when_measured"], workers, "{side}");
        assert!(e[side]["median"].as_f64().unwrap() > 0.0, "{side}: each worker added memory");
        // Every task, process or thread, has a kernel stack of its own (/proc/meminfo).
        assert!(f["kernel_stack_kib_per_worker"].as_f64().unwrap() > 0.0, "{side}: {f}");
    }
    let (p, t) = (&e["process"]["facts"], &e["thread"]["facts"]);
    assert_eq!(p["workers"], t["workers"], "as many workers on each side");
    // A worker process has page tables of its own; a thread needs entries only for its stack.
    let tables = |f: &Value| f["page_tables_kib_per_worker"].as_f64().unwrap();
    assert!(tables(p) > 2.0 * tables(t), "process {} KiB against thread {} KiB", tables(p), tables(t));
}

#[test]
fn every_number_is_the_median_of_interleaved_runs_and_the_ratio_is_of_the_medians() {
    // The helper reads `runs` and `samples` of every experiment with two sides, so it gets
    // the measured ones: both of them (an observe experiment has no runs to check).
    let mut measured = quick_report().clone();
    measured["experiments"].as_array_mut().unwrap().retain(|e| e["kind"] == "measure");
    let ids: Vec<&str> =
        measured["experiments"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["cow-copy", "footprint"]);
    tests::assert_measures_are_sound(&measured);
}

#[test]
fn human_output_matches_the_snapshot() {
    // The observe experiments only: measured numbers would change the table's layout.
    let out = tests::run("memory", &["--quick", "--only", "private-write", "--only", "shared-segment"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    insta::with_settings!({filters => vec![(r"0x[0-9a-f]+", "[address]"), tests::IDLE_CPUS_FILTER]}, {
        insta::assert_snapshot!("memory_quick_human", stdout);
    });
}

#[test]
fn a_hung_child_keeps_the_segment_until_its_deadline_then_nothing_is_left() {
    // While the child hangs before mapping it, the segment must still be there.
    let child = tests::memory_row_mid_experiment(1500, &["--only", "private-write"]);
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("still one JSON report");
    let hung = experiment(&report, "shared-segment");
    assert_eq!(hung["verdict"], "error");
    assert!(hung["note"].as_str().unwrap().contains("deadline of 1500 ms"), "{hung}");
    assert_eq!(experiment(&report, "private-write")["verdict"], "holds", "the other experiment still ran");
    assert!(tests::segments_of(pid).is_empty(), "left: {:?}", tests::segments_of(pid));
    assert!(tests::group_members(pid).is_empty(), "left: {:?}", tests::group_members(pid));
}

#[test]
fn one_side_only_is_reported_as_skipped_not_judged() {
    let report = tests::report("memory", &["--quick", "--only", "private-write", "--side", "thread"]);
    let e = experiment(&report, "private-write");
    assert!(e.get("process").is_none());
    assert_eq!(e["verdict"], "skipped");
    assert_eq!(e["thread"]["facts"]["write_seen"], true);
}

#[test]
fn list_names_every_experiment() {
    let out = tests::run("memory", &["--list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let ids: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(ids, ["private-write", "shared-segment", "cow-copy", "footprint"], "{text}");
}

#[test]
fn bad_input_gives_a_clear_error_and_exit_code_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--only", "nosuch"], "invalid value 'nosuch'"),
        (&["--only"], "a value is required"),
        (&["--side", "both"], "invalid value 'both'"),
        (&["--quick=1"], "unexpected value '1'"),
        (&["--list", "--json"], "cannot be used with"),
        (&["stray"], "unexpected argument 'stray'"),
    ];
    for (args, expected) in cases {
        tests::assert_bad_input("memory", args, expected);
    }
}
