//! How much a pipe holds: the one thing the rows ask of a pipe beyond pipe2(2).
//!
//! See also: pipe(7), "Pipe capacity"; fcntl(2), F_SETPIPE_SZ and F_GETPIPE_SZ.

use std::os::fd::BorrowedFd;

use nix::fcntl::{FcntlArg, fcntl};

/// Asks each pipe to hold `bytes` (F_SETPIPE_SZ; a new pipe holds 64 KiB) and returns what the
/// smallest of them holds now (F_GETPIPE_SZ), 0 where that could not be read. A refusal is
/// not an error: past /proc/sys/fs/pipe-max-size, or the pages the user's pipes may have
/// (pipe-user-pages-soft), the kernel refuses and the pipe keeps its size, so a row whose
/// figure depends on the size reports what it got. The kernel rounds a size up to whole pages.
pub fn ask_to_hold(pipes: &[BorrowedFd<'_>], bytes: usize) -> usize {
    let ask = bytes.min(i32::MAX as usize) as i32;
    let held = |fd: &BorrowedFd<'_>| {
        let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(ask));
        fcntl(fd, FcntlArg::F_GETPIPE_SZ).map_or(0, |n| n as usize)
    };
    pipes.iter().map(held).min().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_pipe_holds_what_it_was_asked_for_in_whole_pages() {
        let (a_rx, a_tx) = nix::unistd::pipe().unwrap();
        let (b_rx, _b_tx) = nix::unistd::pipe().unwrap();
        // 128 KiB is within the default pipe-max-size (1 MiB): granted, twice the default.
        assert_eq!(ask_to_hold(&[a_rx.as_fd(), b_rx.as_fd()], 128 << 10), 128 << 10);
        // A byte is rounded up to a page, and either end of a pipe answers for it.
        assert_eq!(ask_to_hold(&[a_tx.as_fd()], 1), crate::mem::page_size());
        assert_eq!(ask_to_hold(&[], 1 << 20), 0, "no pipe holds nothing");
    }
}
