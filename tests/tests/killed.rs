//! A row killed outright (SIGKILL, as `kill -9` does) runs no handler and cleans up nothing:
//! its children die with it, its segment stays, and the next run of any row removes it. A test
//! file of its own, so that no other row starts meanwhile (the test binaries run one after the
//! other): any row that starts removes a dead owner's segments, which would race with the
//! check that the segment was left.

use tests::finish;

#[test]
fn a_row_killed_outright_leaves_its_segment_and_the_next_run_removes_it() {
    // The memory row's shared-segment experiment holds a named segment until the other
    // program has mapped it; PVT_HANG makes that program hang first, so the segment lives.
    let child = tests::memory_row_mid_experiment(60000, &[]);
    let row = child.id();
    let held = tests::segments_of(row);
    // SIGKILL, as `kill -9` does: no handler runs, nothing is cleaned up.
    // Safety: kill(2) on our own child.
    unsafe { libc::kill(row as i32, libc::SIGKILL) };
    let (code, _, _) = finish(child);
    assert_eq!(code, None, "killed by a signal");
    // Its children die with it (PR_SET_PDEATHSIG): none is left, once we reap their zombies.
    assert!(tests::wait_until(2, || tests::gone(row)), "left: {:?}", tests::group_members(row));
    assert_eq!(tests::segments_of(row), held, "SIGKILL leaves the segment behind");
    // Any next run removes segments whose owner is dead.
    let out = tests::run("stability", &["--quick", "--json", "--only", "panic"]);
    let said = || format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{}", said());
    assert!(tests::segments_of(row).is_empty(), "stale segments: {:?}", tests::segments_of(row));
}
