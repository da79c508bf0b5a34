//! Fault injection for the reliability tests: make one child hang, so that the deadline,
//! the error report and the cleanup can be checked.
//!
//! `PVT_HANG=<experiment id>` makes the first child that experiment creates (a forked worker
//! or a sacrificial child) hang instead of working. Only the harness reads it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The experiment whose first child hangs.
pub const HANG_ENV: &str = "PVT_HANG";
/// Set on a sacrificial child that must hang.
pub const HANG_NOW_ENV: &str = "PVT_HANG_NOW";

static CURRENT: Mutex<Option<String>> = Mutex::new(None);
static HUNG: AtomicBool = AtomicBool::new(false);

/// Called by the row runner as each experiment starts.
pub(crate) fn enter_experiment(id: &str) {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_string());
    HUNG.store(false, Ordering::SeqCst);
}

/// True, once per experiment, when the next child must hang.
pub(crate) fn take_hang() -> bool {
    let Ok(wanted) = std::env::var(HANG_ENV) else { return false };
    let current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    current.as_deref() == Some(wanted.as_str()) && !HUNG.swap(true, Ordering::SeqCst)
}

/// True in a sacrificial child that was told to hang.
pub(crate) fn hang_requested_here() -> bool {
    std::env::var_os(HANG_NOW_ENV).is_some()
}

/// Sleeps until a signal ends the process.
pub(crate) fn hang_forever() -> ! {
    loop {
        // Safety: pause(2) only sleeps until a signal arrives.
        unsafe { libc::pause() };
    }
}
