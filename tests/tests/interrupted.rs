//! Ctrl-C (SIGINT) or SIGTERM while a row holds a named shared-memory segment: the handler
//! unlinks it, says so in its one line, kills and reaps the children and exits 128 + the
//! signal. A test file of its own, as killed.rs: any row that starts elsewhere meanwhile
//! removes the segments of a dead owner, which would hide a handler that left one behind.

use tests::finish;

#[test]
fn an_interrupt_while_a_segment_is_held_unlinks_it() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // The memory row's shared-segment experiment holds its segment until the other
        // program has mapped it; PVT_HANG makes that program hang first, so the segment lives.
        let child = tests::memory_row_mid_experiment(20000, &[]);
        let row = child.id();
        assert!(tests::wait_until(10, || tests::catches_signal(row, signal)), "no handler for {signal}");
        // The row waits on its one child, the hanging program: both are there to be counted when
        // the signal comes. The row looks at the child every millisecond, and the kernel may fire
        // its timer and ours together (timer slack), so that every sample finds it runnable
        // ('R') and none asleep: seen on an Intel guest on one CPU, ten seconds in a row. So
        // what is required is the one child and a row that is running or asleep.
        let waiting = || {
            tests::children_of(row).len() == 1
                && tests::group_members(row).iter().any(|&(p, s)| p == row && (s == 'S' || s == 'R'))
        };
        assert!(tests::wait_until(10, waiting), "{:?}", tests::group_members(row));
        assert_eq!(tests::segments_of(row).len(), 1, "the held segment");
        // Safety: kill(2) on our own child.
        unsafe { libc::kill(row as i32, signal) };
        let (code, stdout, stderr) = finish(child);
        assert_eq!(code, Some(128 + signal), "{stderr}");
        assert!(stdout.is_empty(), "no report after an interrupt: {stdout}");
        // The handler's own count: nobody else can have unlinked the segment of a live owner.
        assert!(stderr.contains("killed and reaped 1 child, unlinked 1 shared-memory segment"), "{stderr}");
        assert!(tests::segments_of(row).is_empty(), "left: {:?}", tests::segments_of(row));
        assert!(tests::wait_until(2, || tests::gone(row)), "left: {:?}", tests::group_members(row));
    }
}
