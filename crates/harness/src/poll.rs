//! Waiting, with a deadline, for something that cannot be waited on directly (a word in
//! shared memory, a count in /proc): every such wait goes through [`poll_until`], so that
//! each has a deadline and says what it was waiting for when it gives up. And one wait on a
//! descriptor, [`ready`], for the waits that can.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// poll(2) on one descriptor for `events`, up to `timeout` (rounded up to whole milliseconds,
/// so that a wait never ends a fraction early; zero only looks): true when it is ready (or at
/// its end, or in error: a read or write then says which), false when the time passed or a
/// signal interrupted the wait. A caller with a deadline calls again with what is left.
pub fn ready(fd: BorrowedFd<'_>, events: PollFlags, timeout: Duration) -> Result<bool> {
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(fd, events)];
    match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e).context("poll(2)"),
    }
}

/// Calls `check` until it returns `Some(value)`, at most until `deadline` has passed (the
/// last call may start just before it), pausing `every` between calls; a zero `every` yields
/// the CPU instead, for a partner that may need it (with one CPU it runs only when we stop).
/// `check` may wait itself (a poll(2) with a timeout), and its error ends the wait. On the
/// deadline the error names `what` was awaited and the deadline.
pub fn poll_until<T>(
    deadline: Duration,
    what: &str,
    every: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() >= until {
            bail!("gave up waiting for {what}: the deadline of {} ms passed", deadline.as_millis());
        }
        if every.is_zero() {
            std::thread::yield_now();
        } else {
            std::thread::sleep(every);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn ready_waits_at_least_its_timeout_then_sees_data() {
        let (rx, tx) = nix::unistd::pipe().unwrap();
        // Nothing to read: false, and not before the timeout, however short (no rounding down).
        let start = Instant::now();
        assert!(!ready(rx.as_fd(), PollFlags::POLLIN, Duration::from_micros(300)).unwrap());
        assert!(start.elapsed() >= Duration::from_micros(300), "{:?}", start.elapsed());
        nix::unistd::write(&tx, b"x").unwrap();
        assert!(ready(rx.as_fd(), PollFlags::POLLIN, Duration::ZERO).unwrap());
    }

    #[test]
    fn returns_the_first_value_found_and_checks_no_more() {
        let mut calls = 0;
        let found = poll_until(Duration::from_secs(5), "the third call", Duration::ZERO, || {
            calls += 1;
            Ok((calls == 3).then_some(calls * 10))
        });
        assert_eq!(found.unwrap(), 30);
        assert_eq!(calls, 3);
    }

    #[test]
    fn gives_up_at_the_deadline_and_says_on_what() {
        let start = Instant::now();
        let mut calls = 0;
        let err = poll_until(Duration::from_millis(30), "a value that never comes", Duration::from_millis(1), || {
            calls += 1;
            Ok(None::<()>)
        })
        .unwrap_err();
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(30) && took < Duration::from_secs(5), "{took:?}");
        assert!(calls > 1, "it checked again while waiting: {calls}");
        assert_eq!(format!("{err}"), "gave up waiting for a value that never comes: the deadline of 30 ms passed");
    }

    #[test]
    fn an_error_of_the_check_ends_the_wait_at_once() {
        let start = Instant::now();
        let err = poll_until(Duration::from_secs(5), "nothing", Duration::from_millis(1), || -> Result<Option<()>> {
            bail!("the check failed")
        })
        .unwrap_err();
        assert_eq!(format!("{err}"), "the check failed");
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_check_is_made_even_with_no_time_left() {
        assert_eq!(poll_until(Duration::ZERO, "one look", Duration::ZERO, || Ok(Some(7))).unwrap(), 7);
    }
}
