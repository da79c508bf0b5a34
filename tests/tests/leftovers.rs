//! Nothing is left behind by a run: no child process, no zombie, no orphan, no segment, no
//! temporary file or directory.
//!
//! This test binary holds one test, because it makes the test process a child subreaper
//! (prctl(2) PR_SET_CHILD_SUBREAPER): any process the row leaves running, even a grandchild
//! whose parent died, is then re-parented to us instead of to init, where we can see it.

use std::process::{Command, Stdio};

#[test]
fn a_whole_run_of_every_row_leaves_no_process_zombie_or_segment() {
    // Safety: prctl(2) with PR_SET_CHILD_SUBREAPER only changes who adopts orphans.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
    let me = std::process::id();
    // A TMPDIR of the run's own (short: ipc-channel makes a Unix socket in it), checked empty
    // after every row and removed when the test ends, a failed assertion included.
    struct OwnTmp(std::path::PathBuf);
    impl Drop for OwnTmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let own = OwnTmp(std::env::temp_dir().join(format!("pvt-l{me}")));
    let tmp = &own.0;
    std::fs::create_dir_all(tmp).unwrap();
    for &row in tests::ROWS {
        // Build first, so that cargo's own processes are gone before we look.
        let bin = tests::binary(row);
        let child =
            Command::new(&bin).args(["--quick", "--json"]).env("TMPDIR", tmp).stdout(Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{row} failed");
        let left = tests::children_of(me);
        assert!(left.is_empty(), "{row} left processes behind (pid, state): {left:?}");
        let segments = tests::segments_of(pid);
        assert!(segments.is_empty(), "{row} left segments: {segments:?}");
        let in_tmp: Vec<_> = std::fs::read_dir(tmp).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(in_tmp.is_empty(), "{row} left in TMPDIR: {in_tmp:?}");
    }
}
