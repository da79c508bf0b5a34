//! `cargo xtask compare`, driven as a user would: the summary fits a screen, and
//! `--repeat` accounts for every experiment of every row.

use std::collections::BTreeSet;

use serde_json::Value;

fn xtask(args: &[&str]) -> (String, String, Option<i32>) {
    let out = tests::xtask().args(args).output().expect("running the xtask");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

/// Every experiment id a row lists, as "row/id".
fn listed() -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for row in tests::ROWS {
        let out = tests::run(row, &["--list"]);
        for id in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()) {
            all.insert(format!("{row}/{id}"));
        }
    }
    all
}

#[test]
fn the_summary_fits_in_100_columns_with_no_cell_taller_than_4_lines() {
    let (stdout, stderr, code) = xtask(&["compare", "--quick"]);
    assert_eq!(code, Some(0), "{stderr}");
    // The summary is the first table: from its top border to its bottom border.
    let lines: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with('┌')).collect();
    let end = lines.iter().position(|l| l.starts_with('└')).expect("the summary table ends");
    let table = &lines[..=end];
    for l in table {
        assert!(l.chars().count() <= 100, "wider than 100 columns: {l}");
    }
    // Rows are separated by ├ lines (the header by ╞): count the lines of each.
    let mut heights = Vec::new();
    let mut height = 0;
    for l in &table[1..] {
        if l.starts_with('├') || l.starts_with('╞') || l.starts_with('└') {
            heights.push(height);
            height = 0;
        } else {
            height += 1;
        }
    }
    assert!(heights.iter().all(|&h| (1..=4).contains(&h)), "cell heights {heights:?}:\n{}", table.join("\n"));
    // One line per row that exists, besides the header.
    assert_eq!(heights.len(), 1 + tests::ROWS.len(), "{}", table.join("\n"));
    // Skipped experiments are counted, not listed by name.
    assert!(!table.iter().any(|l| l.contains("working-set-16k")), "{}", table.join("\n"));
}

#[test]
fn repeat_accounts_for_every_experiment_and_its_stability() {
    let (stdout, stderr, code) = xtask(&["compare", "--quick", "--repeat", "2", "--json"]);
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert_eq!(doc["runs"], 2);
    let experiments = doc["experiments"].as_array().unwrap();
    let seen: BTreeSet<String> =
        experiments.iter().map(|e| format!("{}/{}", e["row"].as_str().unwrap(), e["id"].as_str().unwrap())).collect();
    assert_eq!(seen, listed(), "every listed experiment, once");
    let (mut flipped, mut measured, mut changed, mut sides, mut within) = (0, 0u64, 0u64, 0u64, 0u64);
    let (mut near_line, mut ratios_seen, mut ratios_within) = (0u64, 0u64, 0u64);
    let (mut observed, mut observed_changed) = (0u64, 0u64);
    for e in experiments {
        let id = format!("{}/{}", e["row"], e["id"]);
        let verdicts = e["verdicts"].as_object().unwrap();
        assert_eq!(verdicts.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), 2, "{id}: one verdict per run");
        assert_eq!(e["changed"], verdicts.len() > 1, "{id}");
        let f = verdicts.contains_key("holds") && verdicts.contains_key("reversed");
        assert_eq!(e["flipped"], f, "{id}");
        flipped += f as usize;
        // A changed measured verdict names the band line that the median of its runs' ratios
        // sits within 2 % of, and only then; an unchanged one names none. The lines are those
        // that separate two verdicts: 0.95 and 1.05, and the 10 % line on the side the claim
        // expects to win (a ratio above 1 means the process side's number is higher).
        let line = e.get("near_line").and_then(Value::as_f64);
        if e["kind"] == "measure" && verdicts.len() > 1 {
            let mut r: Vec<f64> = e["ratios"].as_array().unwrap().iter().filter_map(|r| r[0].as_f64()).collect();
            r.sort_by(f64::total_cmp);
            let median = if r.len() % 2 == 1 { r[r.len() / 2] } else { (r[r.len() / 2 - 1] + r[r.len() / 2]) / 2.0 };
            let higher_better = e["better"] == "higher";
            let lines: &[f64] = match e["expected"].as_str().unwrap() {
                "same" => &[0.95, 1.05],
                "process" if higher_better => &[0.95, 1.05, 1.10],
                "thread" if !higher_better => &[0.95, 1.05, 1.10],
                _ => &[0.90, 0.95, 1.05],
            };
            let at = lines.iter().copied().find(|l| (median / l - 1.0).abs() <= 0.02);
            assert_eq!(line.is_some(), at.is_some(), "{id}: median ratio {median}, line {line:?}");
            if let (Some(line), Some(at)) = (line, at) {
                assert!((line - at).abs() < 1e-9, "{id}: line {line}, but the median {median} is at {at}");
            }
        } else {
            assert_eq!(line, None, "{id}: a line for a verdict that did not change");
        }
        near_line += line.is_some() as u64;
        if e["kind"] == "observe" {
            observed += 1;
            observed_changed += (verdicts.len() > 1) as u64;
        }
        if e["kind"] == "measure" {
            measured += 1;
            changed += (verdicts.len() > 1) as u64;
            for side in ["process_stray", "thread_stray"] {
                if let Some(stray) = e[side].as_f64() {
                    sides += 1;
                    within += (stray <= 0.10) as u64;
                }
            }
        }
        let ran_both = !verdicts.contains_key("skipped") && !verdicts.contains_key("error");
        if e["kind"] == "measure" && ran_both {
            for side in ["process_stray", "thread_stray"] {
                let stray = e[side].as_f64().unwrap_or_else(|| panic!("{id}: no {side}"));
                assert!((0.0..10.0).contains(&stray), "{id}: {side} {stray}");
            }
            for side in ["process_medians", "thread_medians"] {
                let medians = e[side].as_array().unwrap_or_else(|| panic!("{id}: no {side}"));
                assert_eq!(medians.len(), 2, "{id}: one {side} per run");
            }
            // Each run's ratio inside its own interval, one per run.
            let ratios = e["ratios"].as_array().unwrap_or_else(|| panic!("{id}: no ratios"));
            assert_eq!(ratios.len(), 2, "{id}: one ratio per run");
            for r in ratios {
                let [r, low, high] = [0, 1, 2].map(|i| r[i].as_f64().unwrap());
                assert!(low <= r && r <= high && low > 0.0, "{id}: {r} outside ({low}, {high})");
            }
            // The ratio's stray, from the ratios themselves: with two runs their median is
            // their mean, so each lies |r1 - r2| / (r1 + r2) from it.
            let [r1, r2] = [0, 1].map(|i| ratios[i][0].as_f64().unwrap());
            let expected = (r1 - r2).abs() / (r1 + r2);
            let stray = e["ratio_stray"].as_f64().unwrap_or_else(|| panic!("{id}: no ratio_stray"));
            assert!((stray - expected).abs() < 1e-9, "{id}: ratio_stray {stray}, ratios {r1} and {r2}");
            ratios_seen += 1;
            ratios_within += (stray <= 0.10) as u64;
        } else {
            assert!(e.get("process_stray").is_none(), "{id}: a stray of what?");
            assert!(e.get("ratio_stray").is_none(), "{id}: a ratio stray of what?");
            if e["kind"] == "observe" {
                assert!(e.get("ratios").is_none(), "{id}: a ratio of what?");
            }
        }
    }
    assert_eq!(doc["flipped"], flipped);
    // The summary's counts are the per-experiment entries counted again.
    assert_eq!((doc["measured"].as_u64(), doc["measured_changed"].as_u64()), (Some(measured), Some(changed)));
    assert_eq!(doc["measured_changed_near_line"].as_u64(), Some(near_line));
    assert_eq!((doc["observed"].as_u64(), doc["observed_changed"].as_u64()), (Some(observed), Some(observed_changed)));
    assert_eq!((doc["sides"].as_u64(), doc["sides_within_10_percent"].as_u64()), (Some(sides), Some(within)));
    assert_eq!(
        (doc["ratios_counted"].as_u64(), doc["ratios_within_10_percent"].as_u64()),
        (Some(ratios_seen), Some(ratios_within))
    );
    // A pace for every row that ran, once each, one per run. With two runs a side's median of
    // medians is their mean, so its two distances are d and -d, and the median over a row's
    // sides is too: a pace with the wrong sign or centre breaks the sum.
    let mut rows: Vec<&str> = experiments.iter().map(|e| e["row"].as_str().unwrap()).collect();
    rows.dedup();
    let pace = doc["pace"].as_array().unwrap();
    assert_eq!(pace.iter().map(|p| p["row"].as_str().unwrap()).collect::<Vec<_>>(), rows, "in the order they ran");
    for p in pace {
        let runs: Vec<f64> = p["runs"].as_array().unwrap().iter().map(|r| r.as_f64().expect("a pace")).collect();
        assert_eq!(runs.len(), 2, "{p}");
        assert!((runs[0] + runs[1]).abs() < 1e-9, "{p}: not d and -d");
    }
    // The exit code says whether any verdict flipped between holds and reversed, or anything
    // failed.
    let failed = experiments.iter().any(|e| e["verdicts"].get("error").is_some())
        || !doc["failures"].as_array().unwrap().is_empty();
    assert_eq!(code, Some(if flipped == 0 && !failed { 0 } else { 1 }), "{stderr}");
    assert!(doc["machine"]["rustc"].as_str().unwrap().starts_with("rustc"));
    assert_eq!(doc["machine"]["optimized"], true);
    assert!(doc["machine"]["cpu_idle"].as_str().is_some_and(|s| !s.is_empty()), "{}", doc["machine"]);
    assert!(doc["machine"]["free_page_reporting"].is_boolean(), "{}", doc["machine"]);
}

#[test]
fn repeat_takes_2_to_20_runs() {
    for bad in ["1", "21", "x"] {
        tests::assert_bad_input("xtask", &["compare", "--repeat", bad], bad);
    }
}

/// Whether a row may keep idle CPUs awake here: root (the request file opens for writing) and
/// a cpuidle driver to honour the request.
fn may_keep_cpus_awake() -> bool {
    let driver = std::fs::read_to_string("/sys/devices/system/cpu/cpuidle/current_driver").unwrap_or_default();
    !matches!(driver.trim(), "" | "none") && std::fs::File::options().write(true).open("/dev/cpu_dma_latency").is_ok()
}

#[test]
fn rows_say_whether_they_kept_idle_cpus_awake() {
    // A row holds a 0 µs wake-up latency request while it measures when it may; the report
    // says so, and says why not otherwise.
    let may = may_keep_cpus_awake();
    let args = ["--json", "--quick", "--only", "private-write"];
    let idle = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["idle_cpus"].clone()
    };
    let row = || {
        let mut cmd = std::process::Command::new(tests::binary("memory"));
        cmd.args(args).env_remove("PVT_LET_CPUS_IDLE");
        cmd
    };
    let held = idle(row().output().unwrap());
    assert_eq!(held["kept_awake"], may, "{held}");
    let want = if may { "held at 0 µs" } else { "free to sleep" };
    assert!(held["how"].as_str().unwrap().contains(want), "{held}");
    let free = idle(row().env("PVT_LET_CPUS_IDLE", "1").output().unwrap());
    assert_eq!(free["kept_awake"], false, "{free}");
    assert!(free["how"].as_str().unwrap().contains("PVT_LET_CPUS_IDLE"), "{free}");
}

#[test]
fn a_row_holds_the_request_while_it_measures() {
    let may = may_keep_cpus_awake() && std::env::var_os("PVT_LET_CPUS_IDLE").is_none();
    let child = tests::memory_row_mid_experiment(1500, &[]);
    let pid = child.id();
    let request = std::path::Path::new("/dev/cpu_dma_latency");
    let holds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|to| to == request));
    assert_eq!(holds, may, "the row holds the request file open while it measures exactly when it may");
    let out = child.wait_with_output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(doc["idle_cpus"]["kept_awake"], may, "{}", doc["idle_cpus"]);
}
