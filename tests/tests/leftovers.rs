//! Nothing is left behind by a run: no child process, no zombie, no orphan, no segment.
//!
//! This test binary holds one test, because it makes the test process a child subreaper
//! (prctl(2) PR_SET_CHILD_SUBREAPER): any process the row leaves running, even a grandchild
//! whose parent died, is then re-parented to us instead of to init, where we can see it.

use std::fs;

/// The pids of the processes whose parent is `parent`, with their state letter.
fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default()
        };
        if field("PPid:") == parent.to_string() {
            found.push((pid, field("State:")));
        }
    }
    found
}

#[test]
fn a_whole_run_leaves_no_process_zombie_or_segment() {
    // Safety: prctl(2) with PR_SET_CHILD_SUBREAPER only changes who adopts orphans.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
    let me = std::process::id();
    // Build first, so that cargo's own processes are gone before we look.
    let bin = tests::binary("stability");
    let child = std::process::Command::new(&bin).arg("--quick").arg("--json").output().unwrap();
    assert!(child.status.success(), "{}", String::from_utf8_lossy(&child.stderr));
    let left = children_of(me);
    assert!(left.is_empty(), "processes left behind by the run (pid, state): {left:?}");
    let segments: Vec<String> = fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let ours: Vec<&String> = segments.iter().filter(|s| s.starts_with(&format!("pvt-{}-", me))).collect();
    assert!(ours.is_empty(), "segments left: {ours:?}");
}
