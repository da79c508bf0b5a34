//! The run log, for the tests: with `PVT_RUN_LOG` naming a file, a row appends one line as
//! each experiment starts (`experiment ID`) and one line per call of
//! [`crate::stats::interleave`]: its runs in the order taken, `p` or `t` for a warm-up run of
//! the process or thread side, `P` or `T` for a timed one, then each side's timed values
//! (`interleave ptPTPT P=1.5,1.6 T=1.2,1.1`); and, for a number judged by another measure of
//! the same runs ([`crate::stats::summarize_again`]), a line with the values it came from and
//! the new ones (`again FROM=1.5,1.6 V=20.1,19.8`). A test reads it beside the report to see
//! that every judged number came from runs taken in turns through the harness (the report's
//! samples are one call's values, or the values of its runs again), which a row's own loop
//! would not show. Unset, nothing is written; set, each call writes its line once, after its
//! last run, so the timed runs are never slowed.

use std::io::Write;

/// The variable that names the log file.
pub const RUN_LOG_ENV: &str = "PVT_RUN_LOG";

/// Appends one line to the log, if there is one. A failed write loses the line, which the
/// test reading the log then reports; the run itself goes on.
pub fn append(line: &str) {
    let Some(path) = std::env::var_os(RUN_LOG_ENV) else { return };
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        // One write of the whole line, so that lines never interleave.
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// Whether there is a log: the only case in which [`crate::stats::interleave`] keeps its order.
pub fn wanted() -> bool {
    std::env::var_os(RUN_LOG_ENV).is_some()
}

/// Appends one call of [`crate::stats::interleave`]: the order its runs were taken in, and
/// each side's timed values (Debug formatting: enough digits to read back the same number).
pub fn append_call(order: &str, samples: &[Vec<f64>; 2]) {
    append(&call_line(order, samples));
}

/// The line [`append_call`] writes (without its newline), for the tests that read it back.
pub fn call_line(order: &str, samples: &[Vec<f64>; 2]) -> String {
    format!("interleave {order} P={} T={}", listed(&samples[0]), listed(&samples[1]))
}

/// Appends a second figure of the same runs: the values a call of interleave returned for
/// them, and the new values, run by run.
pub fn append_again(from: &[f64], values: &[f64]) {
    append(&again_line(from, values));
}

/// The line [`append_again`] writes (without its newline).
pub fn again_line(from: &[f64], values: &[f64]) -> String {
    format!("again FROM={} V={}", listed(from), listed(values))
}

fn listed(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(",")
}
