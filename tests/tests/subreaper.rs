//! Nothing of a run survives it, not even a zombie, even where PID 1 never reaps (a container
//! with a lazy init). This test process makes itself a child subreaper that reaps nothing
//! but the rows it starts, so that anything a row leaves orphaned comes to us and stays
//! visible as a process or a zombie of the row's process group. (A test file of its own: the
//! subreaper attribute belongs to the whole test process.)

use std::time::Duration;

/// Interrupts a row started in its own process group once its handler is in place and `ready`
/// says so, waits for it, checks that the handler ended it (exit 128 + the signal: not the
/// signal's default action, not a run that had already ended), and 100 ms later that no
/// process or zombie of its group exists.
fn interrupt_and_check(row: &str, args: &[&str], signal: i32, mut ready: impl FnMut(u32) -> bool) {
    let mut child = tests::spawn_in_own_group(row, args, &[]);
    let pgid = child.id();
    assert!(tests::wait_until(20, || tests::catches_signal(pgid, signal)), "{row} {args:?}: no handler");
    assert!(tests::wait_until(20, || ready(pgid)), "{row} {args:?}: never reached the point to interrupt");
    let ended = child.try_wait().expect("checking on the row");
    assert!(ended.is_none(), "{row} {args:?}: ended ({ended:?}) before the interrupt: nothing was tested");
    // Safety: kill(2) on our own child.
    unsafe { libc::kill(pgid as i32, signal) };
    let status = child.wait().expect("waiting for the row");
    assert_eq!(status.code(), Some(128 + signal), "{row} {args:?}: {status}");
    std::thread::sleep(Duration::from_millis(100));
    let left = tests::group_members(pgid);
    assert!(left.is_empty(), "{row} {args:?}: left behind after the exit (pid, state): {left:?}");
    assert!(tests::segments_of(pgid).is_empty(), "{row} {args:?}: segments left");
}

#[test]
fn no_process_or_zombie_outlives_an_interrupted_row() {
    // Safety: prctl(2) on this test process; it only changes who adopts our orphans.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) }, 0);
    // While a sacrificial host holds many worker processes: the memory row's footprint, in a
    // full run (128 workers a host; a --quick host lives a few ms, and the poll missed it).
    let host_with_workers =
        |pgid: u32| tests::group_members(pgid).iter().any(|(p, _)| tests::children_of(*p).len() >= 8);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        interrupt_and_check("memory", &["--json", "--only", "footprint"], signal, host_with_workers);
    }
    // Every row, at several points of its run: counted from when its handler is in place, and
    // all well within the shortest row's --quick run (stability, about 0.23 s here).
    for row in tests::ROWS {
        for delay_ms in [0, 30, 60] {
            let mut since: Option<std::time::Instant> = None;
            interrupt_and_check(row, &["--quick", "--json"], libc::SIGINT, move |_| {
                since.get_or_insert_with(std::time::Instant::now).elapsed() >= Duration::from_millis(delay_ms)
            });
        }
    }
}
