//! Plumbing this row's process.rs and thread.rs share, which the harness does not have:
//!
//! - `SharedStamp` and `Slots`: memory mapped shared (MAP_SHARED) before the fork, through
//!   which a bare child (`harness::bare`, the cheapest children there are) reports back: it has
//!   no pipe to say it on. Slots are written with atomics.
//! - `wait_for_go`: the start gate (a pipe whose write end is closed) both sides' churn
//!   workers wait at.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, ensure};
use harness::mem::{Mapping, Sharing};

/// A 64-bit slot in memory shared with children forked after it was made (MAP_SHARED), for the
/// one timestamp a bare child writes: it has no pipe to say it on.
pub struct SharedStamp {
    page: Mapping,
}

impl SharedStamp {
    pub fn new() -> Result<SharedStamp> {
        Ok(SharedStamp { page: Mapping::anonymous(8, Sharing::Shared)? })
    }

    pub fn slot(&self) -> &AtomicU64 {
        // Safety: the mapping is page-aligned and at least 8 bytes long, lives as long as
        // `self`, and is only ever accessed through this atomic.
        unsafe { AtomicU64::from_ptr(self.page.as_ptr().cast()) }
    }
}

/// One result slot of `N` 64-bit words per worker, in memory mapped shared (MAP_SHARED) before
/// the workers are forked: the way a bare child reports back. Each slot has a flag word the
/// worker sets (Release) after its words, so that the parent never reads a half-written slot.
pub struct Slots<const N: usize> {
    page: Mapping,
    count: usize,
}

impl<const N: usize> Slots<N> {
    pub fn new(count: usize) -> Result<Slots<N>> {
        Ok(Slots { page: Mapping::anonymous(count * (N + 1) * 8, Sharing::Shared)?, count })
    }

    fn word(&self, slot: usize, k: usize) -> &AtomicU64 {
        // Safety: slot < count and k <= N (the callers' bounds), so the word lies inside the
        // mapping, 8-aligned (the mapping is page-aligned); it lives as long as `self` and is
        // only ever accessed through atomics, by us and by the children that share it.
        unsafe { AtomicU64::from_ptr(self.page.as_ptr().cast::<u64>().add(slot * (N + 1) + k)) }
    }

    /// In a worker: writes its words into slot `i`, then the flag.
    pub fn put(&self, i: usize, words: [u64; N]) -> Result<()> {
        ensure!(i < self.count, "slot {i} of {}", self.count);
        for (k, w) in words.into_iter().enumerate() {
            self.word(i, k).store(w, Ordering::Relaxed);
        }
        self.word(i, N).store(1, Ordering::Release);
        Ok(())
    }

    /// In the parent, after the workers ended: every slot's words, in slot order; a slot whose
    /// worker wrote nothing is an error.
    pub fn all(&self) -> Result<Vec<[u64; N]>> {
        (0..self.count)
            .map(|i| {
                ensure!(self.word(i, N).load(Ordering::Acquire) == 1, "worker {i} wrote no result");
                Ok(std::array::from_fn(|k| self.word(i, k).load(Ordering::Relaxed)))
            })
            .collect()
    }
}

/// The start gate of workers that must begin together: each blocks reading `go` until the
/// write end is closed (end of file for every reader at once). A signal restarts the read.
pub fn wait_for_go(go: &OwnedFd) -> Result<()> {
    let mut byte = [0u8];
    loop {
        match nix::unistd::read(go, &mut byte) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("read(2) of the start pipe"),
        }
    }
}
