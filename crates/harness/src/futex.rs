//! futex(2), the kernel's wait-on-a-word: the one wrapper every row uses. A futex between
//! processes needs the shared ops (the kernel finds the waiters by the word's physical page);
//! between threads the _PRIVATE ops will do (keyed by address space and address, no page
//! lookup). Which ops a comparison uses is part of what it measures, so the caller names them.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Which futex operations to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ops {
    pub wait: libc::c_int,
    pub wake: libc::c_int,
    pub name: &'static str,
    /// True for the _PRIVATE ops, which work only inside one address space.
    pub private: bool,
}

/// Works across address spaces.
pub const SHARED: Ops =
    Ops { wait: libc::FUTEX_WAIT, wake: libc::FUTEX_WAKE, name: "FUTEX_WAIT/FUTEX_WAKE", private: false };

/// Works only inside one address space.
pub const PRIVATE: Ops = Ops {
    wait: libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
    wake: libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
    name: "FUTEX_WAIT_PRIVATE/FUTEX_WAKE_PRIVATE",
    private: true,
};

/// Sleeps while `word` holds `expected`, at most `timeout` (None: no limit). EAGAIN (the word
/// changed first), EINTR and ETIMEDOUT come back as errors for the caller to read.
pub fn wait(word: &AtomicU32, expected: u32, ops: Ops, timeout: Option<Duration>) -> nix::Result<()> {
    let ts = timeout.map(|t| libc::timespec { tv_sec: t.as_secs() as libc::time_t, tv_nsec: t.subsec_nanos() as _ });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // Safety: futex(2) reads the aligned 32-bit word behind `word`, which stays valid for the
    // call; `ts_ptr` is null or points at a timespec on our stack; uaddr2 and val3 are unused
    // by FUTEX_WAIT.
    let r = unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), ops.wait, expected, ts_ptr, std::ptr::null::<u32>(), 0u32)
    };
    nix::errno::Errno::result(r).map(drop)
}

/// Wakes up to `n` tasks sleeping on `word`; returns how many were woken.
pub fn wake(word: &AtomicU32, n: u32, ops: Ops) -> nix::Result<usize> {
    let n = n.min(i32::MAX as u32);
    // Safety: as above; FUTEX_WAKE reads no timeout, uaddr2 or val3.
    let r = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), ops.wake, n, std::ptr::null::<u8>(), 0usize, 0u32) };
    nix::errno::Errno::result(r).map(|woken| woken as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_wait_on_a_changed_word_returns_at_once_and_a_wake_reaches_a_sleeper() {
        let word = AtomicU32::new(1);
        assert_eq!(wait(&word, 0, PRIVATE, None), Err(nix::errno::Errno::EAGAIN));
        assert_eq!(wait(&word, 1, SHARED, Some(Duration::from_millis(5))), Err(nix::errno::Errno::ETIMEDOUT));
        std::thread::scope(|s| {
            let sleeper = s.spawn(|| {
                while word.load(Ordering::Acquire) == 1 {
                    let _ = wait(&word, 1, PRIVATE, Some(Duration::from_secs(5)));
                }
            });
            std::thread::sleep(Duration::from_millis(20));
            word.store(2, Ordering::Release);
            wake(&word, 1, PRIVATE).unwrap();
            sleeper.join().unwrap();
        });
    }
}
