//! The run log, for the tests: with `PVT_RUN_LOG` naming a file, a row appends one line as
//! each experiment starts (`experiment ID`) and one line per call of
//! [`crate::stats::interleave`], its runs in the order taken: `p` or `t` for a warm-up run of
//! the process or thread side, `P` or `T` for a timed one (`interleave pptPTPTPT`). A test
//! reads it beside the report to see that every judged number came from runs taken in turns
//! through the harness, which a row's own loop would not show. Unset, nothing is written; set,
//! each call writes its line once, after its last run, so the timed runs are never slowed.

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
