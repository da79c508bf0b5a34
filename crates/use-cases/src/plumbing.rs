//! Plumbing this row needs that the harness does not offer yet (see the report of issue 13):
//! a supervisor that must wake for either of two things, a worker's death or the order to
//! stop, needs a descriptor for each child to poll beside its own.
//!
//! `harness::Child` keeps its pidfd private and `wait_any` can wake only for its children, so
//! this opens a second pidfd for a child (pidfd_open(2)). It belongs in the harness as
//! `Child::as_fd()` or as a `wait_any` that also wakes when another descriptor is readable.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use anyhow::{Context, Result};

/// A descriptor that becomes readable when process `pid` ends (pidfd_open(2)).
pub fn pidfd(pid: i32) -> Result<OwnedFd> {
    // Safety: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open");
    }
    // Safety: the kernel just gave us this descriptor and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
