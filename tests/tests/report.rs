//! `cargo xtask report` and `cargo xtask anchors`, driven as a user would: the report's page
//! links only the files it wrote, every row gets a chart, and each chart is an SVG that draws
//! a mark for every experiment it claims to show; anchors without the standard tools still
//! end well and say how to install them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| tests::root().join("target"))
}

/// Every relative link target of a Markdown page: `[text](path)` and `![alt](path)`.
fn links(md: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = md;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            let target = &rest[..end];
            if !target.contains("://") && !target.starts_with('#') {
                found.push(target.to_string());
            }
            rest = &rest[end..];
        }
    }
    found
}

/// Every file under a folder, as paths relative to it.
fn files_under(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, base, out);
        } else {
            out.insert(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}

#[test]
fn the_report_links_only_what_it_wrote_and_charts_every_row_with_a_mark_per_experiment() {
    let out = target_dir().join("report-test");
    let _ = std::fs::remove_dir_all(&out);
    let run = tests::xtask().args(["report", "--quick", "--out"]).arg(&out).output().expect("running the xtask");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");

    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md was written");
    assert!(md.contains("## The machine") && md.contains("## Summary") && md.contains("UTC"), "{md}");
    // Links: each names a file that is there, and every file there is linked, so the page
    // neither points at anything it did not write nor leaves anything it wrote unexplained.
    let linked: BTreeSet<String> = links(&md).into_iter().collect();
    let mut written = BTreeSet::new();
    files_under(&out, &out, &mut written);
    written.remove("results.md");
    assert_eq!(linked, written, "links in results.md against the files written");

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results/report.json")).unwrap()).unwrap();
    let reports = doc["reports"].as_array().unwrap();
    let rows: BTreeSet<&str> = reports.iter().map(|r| r["row"].as_str().unwrap()).collect();
    assert_eq!(rows, tests::ROWS.iter().copied().collect(), "every row ran");

    let mut charted: BTreeSet<String> = BTreeSet::new();
    let mut rows_charted: BTreeSet<String> = BTreeSet::new();
    for svg in written.iter().filter(|f| f.ends_with(".svg")) {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        let xml = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{svg} is not XML: {e}"));
        let desc = xml.descendants().find(|n| n.has_tag_name("desc")).and_then(|n| n.text()).unwrap_or_default();
        let (row, ids) = desc
            .strip_prefix("row: ")
            .and_then(|d| d.split_once("; experiments: "))
            .unwrap_or_else(|| panic!("{svg}: no row and experiments in <desc>: {desc:?}"));
        let report = reports.iter().find(|r| r["row"] == row).unwrap_or_else(|| panic!("{svg}: unknown row {row}"));
        let ids: Vec<&str> = ids.split(", ").collect();
        for id in &ids {
            let e = report["experiments"].as_array().unwrap().iter().find(|e| e["id"] == *id);
            let e = e.unwrap_or_else(|| panic!("{svg}: {row} has no experiment {id}"));
            assert_eq!(e["kind"], "measure", "{svg}: {id} is charted but measures nothing");
            charted.insert(format!("{row}/{id}"));
        }
        // A data mark is a circle at a median or a step's value; legends draw rectangles.
        let marks = xml.descendants().filter(|n| n.has_tag_name("circle")).count();
        assert!(marks >= ids.len(), "{svg}: {marks} data marks for {} experiments", ids.len());
        // Units on the axes, and the side the claim expects to win in the picture.
        assert!(text.contains("better") && text.contains("claim"), "{svg}: no caption with the claim");
        rows_charted.insert(row.to_string());
    }
    assert_eq!(rows_charted, rows.iter().map(|r| r.to_string()).collect(), "every row has a chart");
    // Every measured experiment that ran both sides is drawn somewhere.
    for r in reports {
        for e in r["experiments"].as_array().unwrap() {
            let both = e["process"]["median"].is_number() && e["thread"]["median"].is_number();
            if both {
                let id = format!("{}/{}", r["row"].as_str().unwrap(), e["id"].as_str().unwrap());
                assert!(charted.contains(&id), "{id} ran both sides but is in no chart");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn anchors_without_the_tools_end_well_and_name_the_install_commands() {
    // An empty PATH: no standard tool can be found (nor anything else, so nothing is built).
    let empty = target_dir().join("anchors-test-empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let out =
        tests::xtask().args(["anchors", "--rounds", "1"]).env("PATH", &empty).output().expect("running the xtask");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for install in
        ["apt-get install linux-perf", "apt-get install stress-ng", "apt-get install rt-tests", "apt-get install wrk"]
    {
        assert!(stdout.contains(install), "{install:?} not named:\n{stdout}");
    }
    for row in tests::ROWS {
        assert!(stdout.contains(&format!("\n{row}: ")), "no anchors for {row}:\n{stdout}");
    }
    // No figure was made up for a tool that is not there.
    assert!(!stdout.contains("ratio ours/tool"), "{stdout}");
}

#[test]
fn anchors_refuse_an_unknown_row_or_a_bad_count() {
    tests::assert_bad_input("xtask", &["anchors", "nosuchrow"], "nosuchrow");
    tests::assert_bad_input("xtask", &["anchors", "switching", "--rounds", "0"], "--rounds");
}
