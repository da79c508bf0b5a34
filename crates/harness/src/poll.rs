//! Waiting, with a deadline, for something that cannot be waited on directly (a word in
//! shared memory, a count in /proc): every such wait goes through [`poll_until`], so that
//! each has a deadline and says what it was waiting for when it gives up.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

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
