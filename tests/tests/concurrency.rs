//! The concurrency row, driven as a user would drive it: its real binary as a subprocess.
//! These tests assert what was observed (the work was all done, once, whatever the worker
//! count; workers overlapped; fork faulted and the parent's page tables grew with its memory;
//! every page of a churn was faulted in), never timings. Worker counts are checked against the
//! CPUs this test may use, then replaced by their rule, so that the snapshot holds on any machine.

use std::sync::OnceLock;
use tests::experiment;

use serde_json::{Value, json};

/// Facts that are observed counts the same on every machine: they stay in the snapshot.
const KEEP: &[&str] = &["parent_huge_page_kib", "huge_page_kib_per_op"];

/// One `--quick` run shared by the tests that read the whole report: several runs at once would
/// compete for the CPUs the speed-up needs.
fn quick_report() -> &'static Value {
    static REPORT: OnceLock<Value> = OnceLock::new();
    REPORT.get_or_init(|| tests::report("concurrency", &["--quick"]))
}

/// How many CPUs this test (and the row it starts) may use.
fn allowed_cpus() -> u64 {
    tests::allowed_cpus().len() as u64
}

/// The worker counts a sweep up to `most` must try (the row's rule, restated).
fn counts_up_to(most: u64) -> Vec<u64> {
    if most <= 8 {
        (1..=most).collect()
    } else {
        let mut c: Vec<u64> = (0..).map(|i| 1u64 << i).take_while(|&w| w <= most).collect();
        c.extend([allowed_cpus(), most]);
        c.sort_unstable();
        c.dedup();
        c
    }
}

/// The size of a page here (sysconf(3) _SC_PAGESIZE).
fn page_size() -> u64 {
    // Safety: sysconf takes a plain integer name.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    assert!(size > 0, "sysconf(_SC_PAGESIZE)");
    size as u64
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_u64().unwrap()).collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn json_report_matches_the_snapshot() {
    let mut report = quick_report().clone();
    let cpus = allowed_cpus();
    // Worker counts depend on the machine: check them here, then keep their rule.
    for e in report["experiments"].as_array_mut().unwrap() {
        let id = e["id"].as_str().unwrap().to_string();
        for side in ["process", "thread"] {
            let f = &mut e[side]["facts"];
            if f.is_null() {
                continue;
            }
            let rule = match id.as_str() {
                "speedup" => Some((counts_up_to(2 * cpus), "1 ..= 2 × CPUs")),
                "contention" => Some((counts_up_to(cpus), "1 ..= CPUs")),
                _ => None,
            };
            if let Some((counts, rule)) = rule {
                assert_eq!(u64s(&f["workers"]), counts, "{id} {side}");
                // One value per worker count: as many values as counts, whatever the machine.
                for (name, value) in f.as_object_mut().unwrap().iter_mut() {
                    if name != "workers" && value.as_array().is_some_and(|a| a.len() == counts.len()) {
                        *value = json!("[one per worker count]");
                    }
                }
                f["workers"] = json!(rule);
                assert_eq!(f["cpus_allowed"], cpus, "{id} {side}");
                f["cpus_allowed"] = json!("CPUs");
            }
            if id == "granularity" {
                assert_eq!((&f["workers_in_flight"], &f["tasks"]), (&json!(cpus), &json!(8 * cpus)), "{side}");
                // A share, or null where the pool is one worker (one CPU allowed).
                let pool = &f["share_of_pool_runs_on_one_cpu"];
                assert!(if cpus == 1 { pool.is_null() } else { pool.is_number() }, "{side}: {pool}");
                f["share_of_pool_runs_on_one_cpu"] = json!("[share, or null for a pool of one worker]");
                f["workers_in_flight"] = json!("CPUs");
                f["tasks"] = json!("8 × CPUs");
                // Checked only when tasks of that size are short enough here: a number, or null
                // with the reason beside it (never a string under the number's name).
                let why = f.as_object_mut().unwrap().remove("overhead_share_not_checked");
                let checked = &f["overhead_share_at_that_size"];
                match why {
                    None => assert!(checked.is_number(), "{side}: {checked}"),
                    Some(why) => {
                        assert!(checked.is_null(), "{side}: {checked}");
                        let why = why.as_str().unwrap_or_default();
                        assert!(why.starts_with("tasks over") || why == "no overhead was measured", "{side}: {why}");
                    }
                }
                f["overhead_share_at_that_size"] = json!("[number, or null and why not checked]");
            }
        }
    }
    tests::redact_numbers(&mut report, KEEP);
    insta::assert_json_snapshot!("concurrency_quick_json", report);
}

#[test]
fn every_experiment_ran_and_none_failed() {
    let report = quick_report();
    let ids: Vec<&str> = report["experiments"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["spawn", "spawn-vs-size", "speedup", "granularity", "contention"]);
    for e in report["experiments"].as_array().unwrap() {
        assert!(e["verdict"] != "error" && e["verdict"] != "skipped", "{}: {}", e["id"], e["note"]);
        assert_eq!((&e["kind"], &e["expected"]), (&json!("measure"), &json!("thread")), "{}", e["id"]);
        for side in ["process", "thread"] {
            assert!(e[side]["runs"].as_u64().unwrap() >= 7, "{} {side}", e["id"]);
        }
    }
    let headlines = tests::headlines(report);
    assert_eq!(headlines, ["spawn", "spawn-vs-size", "contention"]);
    // Every thread-side run is served by a process of its own (a host per experiment).
    tests::assert_no_thread_started_in_the_row(report);
}

#[test]
fn every_start_was_timed_and_a_forked_child_faults_on_its_first_writes() {
    let e = experiment(quick_report(), "spawn");
    let (p, t) = (&e["process"]["facts"], &e["thread"]["facts"]);
    assert_eq!(p["starts"], t["starts"], "as many starts on each side");
    for (side, f) in [("process", p), ("thread", t)] {
        let (p50, p99) = (f["first_run_us_p50"].as_f64().unwrap(), f["first_run_us_p99"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p99, "{side}: the worker ran after the call: {f}");
    }
    // The child's first writes (its stack, the shared stamp's page-table entry) fault: copy-on-write.
    assert!(p["child_minor_faults_per_fork"].as_f64().unwrap() >= 1.0, "{p}");
    // The row's own mappings, which every fork copies: at least its program's segments, its
    // heap and stack, the vDSO and libc's, and not thousands (a count of bytes or pages).
    assert!((10..1000).contains(&p["parent_mappings"].as_u64().unwrap()), "{p}");
    assert!(t.get("parent_mappings").is_none(), "a thread copies no mapping: {t}");
    for contrast in ["fork_exec_us", "posix_spawn_us", "command_us"] {
        assert!(p[contrast].as_f64().unwrap() > 0.0, "{contrast}: {p}");
    }
}

#[test]
fn the_parents_page_tables_grow_with_its_memory_and_fork_copies_them() {
    let e = experiment(quick_report(), "spawn-vs-size");
    let (p, t) = (&e["process"]["facts"], &e["thread"]["facts"]);
    let mib = u64s(&p["parent_mib"]);
    // The --quick sizes are 0, 16 and 64 MiB, each capped at a quarter of the memory the row
    // saw left: whatever they came to, they start empty, grow, and respect the cap.
    let left = p["memory_left_mib"].as_u64().unwrap();
    assert_eq!(mib[0], 0, "the first size is the bare parent: {mib:?}");
    assert!(mib.len() >= 2 && mib.windows(2).all(|w| w[0] < w[1]), "sizes increase: {mib:?}");
    assert!(mib.iter().all(|&m| m <= left / 4), "{mib:?} MiB with {left} MiB left");
    assert!(mib.iter().all(|&m| m <= 64), "never above the --quick sizes: {mib:?}");
    assert_eq!(t["parent_mib"], p["parent_mib"], "both sides at the same sizes");
    let (rss, pte) = (u64s(&p["parent_rss_kib"]), u64s(&p["parent_vm_pte_kib"]));
    for i in 1..mib.len() {
        // Every page was written: resident, and one 8-byte entry per page (2 KiB per MiB of
        // 4 KiB pages).
        assert!(rss[i] - rss[0] >= mib[i] * 1024 * 9 / 10, "resident {rss:?} for {mib:?} MiB");
        let pte_kib = mib[i] * 8192 / page_size();
        assert!(pte[i] - pte[0] >= pte_kib * 9 / 10, "page tables {pte:?} KiB for {mib:?} MiB");
    }
    assert!(u64s(&p["parent_huge_page_kib"]).iter().all(|&k| k == 0), "huge pages were off: {p}");
    assert_eq!(f64s(&p["us_at_each_size"]).len(), mib.len());
    assert_eq!(f64s(&t["us_at_each_size"]).len(), mib.len());
    let (ps, ts) = (u64s(&p["starts_per_run"]), u64s(&t["starts_per_run"]));
    assert!(ps.len() == mib.len() && ps.iter().all(|&n| n >= 1), "process starts per run {ps:?}");
    assert!(ts.len() == mib.len() && ts.iter().all(|&n| n >= 1), "thread starts per run {ts:?}");
    // How many starts fill each side's budget is a timing, and no test asserts one.
}

#[test]
fn the_split_job_is_all_done_once_and_workers_overlap() {
    let e = experiment(quick_report(), "speedup");
    let cpus = allowed_cpus();
    for side in ["process", "thread"] {
        let f = &e[side]["facts"];
        assert_eq!(f["checksum_same_in_every_configuration"], true, "{side}");
        assert_eq!(f["every_number_hashed_once"], true, "{side}");
        let counts = u64s(&f["workers"]);
        let (at_once, cpus_seen) = (u64s(&f["most_at_once"]), u64s(&f["most_cpus_seen"]));
        let on_one_cpu = f["share_of_runs_on_one_cpu"].as_array().unwrap();
        assert_eq!(on_one_cpu.len(), counts.len(), "{side}");
        for (i, &w) in counts.iter().enumerate() {
            assert!((1..=w).contains(&at_once[i]), "{side}: {w} workers, {} at once", at_once[i]);
            assert!((1..=w.min(cpus)).contains(&cpus_seen[i]), "{side}: {w} workers seen on {} CPUs", cpus_seen[i]);
            // A lone worker is always on one CPU: no share. With more, every run on one CPU
            // (share 1) is exactly when no run saw a second CPU.
            match on_one_cpu[i].as_f64() {
                None => assert!(w == 1 && on_one_cpu[i].is_null(), "{side}: {w} workers, {}", on_one_cpu[i]),
                Some(share) => {
                    assert!(w > 1 && (0.0..=1.0).contains(&share), "{side}: {w} workers, share {share}");
                    assert_eq!(share == 1.0, cpus_seen[i] == 1, "{side}: {w} workers, share {share}, {cpus_seen:?}");
                }
            }
        }
        // Over seven runs or more of every count, some CPU-bound workers were at work at the
        // same time (workers started and joined one by one never are). Not asked of every
        // count, nor when other programs used over a quarter of the CPU time meanwhile
        // (others_cpu above the busy rule's limit; the rule itself judges by a lower bound of
        // it, and a verdict that was a tie anyway carries no `busy`): then a second worker may
        // find no CPU free until the first ends.
        let busy = e["others_cpu"].as_f64().unwrap_or(0.0) > 0.25;
        if cpus >= 2 && !busy {
            assert!(at_once.iter().any(|&n| n >= 2), "{side}: no two workers ever overlapped: {f}");
        }
        assert_eq!(f64s(&f["speedup"])[0], 1.0, "{side}: one worker is the reference");
    }
}

#[test]
fn every_task_runs_once_in_both_ways_of_running_tasks() {
    let e = experiment(quick_report(), "granularity");
    for side in ["process", "thread"] {
        let f = &e[side]["facts"];
        assert_eq!(f["checksum_same_in_every_run"], true, "{side}");
        assert_eq!(f["every_task_ran_once"], true, "{side}");
        let at_once = f["most_at_once"].as_u64().unwrap();
        assert!(at_once >= 1 && at_once <= f["workers_in_flight"].as_u64().unwrap(), "{side}: {f}");
        // How often every worker of a run was on one CPU: a share, null for a pool of one
        // worker; with one CPU allowed, every run of new workers was on it.
        let in_flight = f["workers_in_flight"].as_u64().unwrap();
        let new = f["share_of_new_worker_runs_on_one_cpu"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&new), "{side}: {f}");
        match f["share_of_pool_runs_on_one_cpu"].as_f64() {
            None => assert_eq!(in_flight, 1, "{side}: {f}"),
            Some(pool) => assert!(in_flight > 1 && (0.0..=1.0).contains(&pool), "{side}: {f}"),
        }
        if allowed_cpus() == 1 {
            assert_eq!(new, 1.0, "{side}: one CPU, so every run on it: {f}");
        }
    }
}

#[test]
fn every_page_of_every_churn_is_faulted_in() {
    let e = experiment(quick_report(), "contention");
    let cpus = allowed_cpus();
    for side in ["process", "thread"] {
        let f = &e[side]["facts"];
        // 4 MiB with --quick, in pages of the size this machine has (4, 16 or 64 KiB).
        let pages = (4 << 20) as f64 / page_size() as f64;
        // One fault per page written: huge pages are turned off, and none came.
        assert_eq!(f["huge_page_kib_per_op"], 0, "{side}: {f}");
        let faults = f["minor_faults_per_op"].as_f64().unwrap();
        assert!(faults >= pages && faults <= pages * 1.1, "{side}: {faults} faults per op of {pages} pages");
        assert!(f["ops_per_worker"].as_u64().unwrap() >= 1);
        assert_eq!(u64s(&f["workers"]), counts_up_to(cpus), "{side}");
        // Each worker pinned to a CPU of its own, and it stayed there: w workers ran on w CPUs
        // (as a 64-bit mask counts them: CPUs 64 apart share a bit).
        assert_eq!(f["stayed_on_pinned_cpus"], true, "{side}: {f}");
        let seen: Vec<u64> = counts_up_to(cpus).into_iter().map(|w| w.min(64)).collect();
        assert_eq!(u64s(&f["most_cpus_seen"]), seen, "{side}: {f}");
    }
}

#[test]
fn one_side_alone_runs_only_that_side() {
    let report = tests::report("concurrency", &["--quick", "--side", "thread", "--only", "spawn"]);
    let e = experiment(&report, "spawn");
    assert!(e.get("process").is_none() && e["thread"]["median"].as_f64().unwrap() > 0.0, "{e}");
    assert_eq!(e["verdict"], "skipped");
}

#[test]
fn bad_input_is_refused_with_exit_code_2() {
    tests::assert_bad_input("concurrency", &["--only", "fork-bomb"], "invalid value 'fork-bomb'");
    tests::assert_bad_input("concurrency", &["--side", "fiber"], "invalid value 'fiber'");
}

/// Holds an experiment with its first child hung, so that many children are alive, then
/// interrupts the row: it must exit 130 and leave no process and no zombie of its group.
fn interrupt_during(id: &str) {
    let child = tests::spawn_in_own_group(
        "concurrency",
        &["--quick", "--json", "--only", id],
        &[("PVT_HANG", id), ("PVT_DEADLINE_MS", "20000")],
    );
    let pid = child.id();
    assert!(tests::wait_until(10, || tests::catches_signal(pid, libc::SIGINT)), "the row never installed its handler");
    // The thread side's host is forked first, then the process side's workers, the first of
    // them hung: the signal waits for the host and that worker.
    assert!(tests::wait_until(10, || tests::children_of(pid).len() >= 2), "{id}: no worker appeared");
    // Safety: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{id}: {stderr}");
    assert!(stderr.contains("interrupted (SIGINT): killed and reaped"), "{id}: {stderr}");
    assert!(
        !stderr.contains("reaped 0 children") && !stderr.contains("reaped 1 child,"),
        "{id}: the host and the hung worker were alive: {stderr}"
    );
    assert!(
        tests::wait_until(2, || tests::group_members(pid).is_empty()),
        "{id} left: {:?}",
        tests::group_members(pid)
    );
}

#[test]
fn ctrl_c_during_speedup_leaves_no_process_or_zombie() {
    interrupt_during("speedup");
}

#[test]
fn ctrl_c_during_contention_leaves_no_process_or_zombie() {
    interrupt_during("contention");
}

#[test]
fn a_hung_worker_is_killed_at_its_deadline_and_reported() {
    let child = tests::spawn_in_own_group(
        "concurrency",
        &["--quick", "--json", "--only", "contention", "--only", "spawn"],
        &[("PVT_HANG", "contention"), ("PVT_DEADLINE_MS", "1500")],
    );
    let pgid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "a failed experiment makes the exit code non-zero");
    let report: Value = serde_json::from_slice(&out.stdout).expect("still one JSON report");
    let hung = experiment(&report, "contention");
    assert_eq!(hung["verdict"], "error");
    assert!(hung["note"].as_str().unwrap().contains("deadline of 1500 ms"), "{hung}");
    assert_ne!(experiment(&report, "spawn")["verdict"], "error", "the other experiment still ran");
    assert!(tests::group_members(pgid).is_empty(), "left: {:?}", tests::group_members(pgid));
}
