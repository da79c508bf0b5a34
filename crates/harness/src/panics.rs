//! Panics that an experiment causes on purpose are evidence, not noise: capture their
//! messages instead of letting the default hook print them over the report.

use std::sync::Mutex;

static CAPTURED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// "thread 'worker 2' panicked: the message", the same wherever the panic happened.
fn describe(info: &std::panic::PanicHookInfo<'_>) -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let msg = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "<non-string panic>".to_string());
    format!("thread '{name}' panicked: {msg}")
}

/// In a child that panics on purpose: print each panic as one line on stderr, without a
/// backtrace even when RUST_BACKTRACE is set, so that writing a backtrace does not add to
/// the time being measured.
pub fn one_line_messages() {
    std::panic::set_hook(Box::new(|info| eprintln!("{}", describe(info))));
}

/// Runs `f` with a panic hook that records each panic's message (and the thread it happened
/// in) instead of printing it, then puts the default hook back. Threads that `f` starts use
/// the same hook. Returns what `f` returned and the messages, in order.
pub fn captured<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    CAPTURED.lock().unwrap_or_else(|e| e.into_inner()).clear();
    std::panic::set_hook(Box::new(|info| {
        CAPTURED.lock().unwrap_or_else(|e| e.into_inner()).push(describe(info));
    }));
    let out = f();
    let _ = std::panic::take_hook();
    let messages = std::mem::take(&mut *CAPTURED.lock().unwrap_or_else(|e| e.into_inner()));
    (out, messages)
}

#[cfg(test)]
mod tests {
    #[test]
    fn panics_in_threads_are_captured_not_printed() {
        let (joined, messages) = super::captured(|| {
            std::thread::Builder::new().name("w".into()).spawn(|| panic!("on purpose")).unwrap().join()
        });
        assert!(joined.is_err());
        assert_eq!(messages, vec!["thread 'w' panicked: on purpose".to_string()]);
    }
}
