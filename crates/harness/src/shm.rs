//! Named shared-memory segments that are never left behind.
//!
//! A segment's name is `pvt-<owner pid>-<64 random bits>`: the prefix marks it as ours, the
//! pid tells a later run whether its owner still lives, and the random part makes the name
//! unpredictable. It is created exclusively with mode 0600 (shared_memory's `create` does
//! `shm_open(O_CREAT | O_EXCL, 0600)`), registered for the interrupt handler, and unlinked as
//! soon as every side has mapped it: the mapping lives on, the name does not.

use anyhow::{Context, Result};
use shared_memory::{Shmem, ShmemConf};

use crate::cleanup::{self, SEGMENT_PREFIX};

/// A shared-memory segment mapped into this process (and into children forked after it).
pub struct Segment {
    shmem: Shmem,
    path: String,
    unlinked: bool,
}

impl Segment {
    /// Creates and maps a segment of `size` bytes, filled with zeros.
    pub fn create(size: usize) -> Result<Segment> {
        let name = format!("{SEGMENT_PREFIX}{}-{:016x}", std::process::id(), random_u64()?);
        let path = format!("/dev/shm/{name}");
        cleanup::register_segment(&path)?;
        let shmem = match ShmemConf::new().size(size).os_id(&name).create() {
            Ok(s) => s,
            Err(e) => {
                cleanup::forget_segment(&path);
                return Err(anyhow::anyhow!("{e}")).with_context(|| format!("shm_open {name}"));
            }
        };
        Ok(Segment { shmem, path, unlinked: false })
    }

    /// The name other processes would open it by, until it is unlinked.
    pub fn name(&self) -> &str {
        self.shmem.get_os_id()
    }

    pub fn len(&self) -> usize {
        self.shmem.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shmem.len() == 0
    }

    /// The start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.shmem.as_ptr()
    }

    /// Asks for base pages only, as `mem::Mapping::no_huge_pages` does for private memory.
    pub fn no_huge_pages(&self) -> Result<()> {
        // Safety: our own mapping of the segment, whole pages from its start.
        unsafe { crate::mem::no_huge_pages_at(self.as_ptr(), self.len()) }
    }

    /// KiB of the segment backed by huge pages now (`mem::huge_kib_at`).
    pub fn huge_kib(&self) -> Result<u64> {
        crate::mem::huge_kib_at(self.as_ptr())
    }

    /// Removes the name (shm_unlink(3)); the mappings stay valid until they are unmapped.
    /// Call it as soon as every side has the segment mapped.
    pub fn unlink(&mut self) -> Result<()> {
        if self.unlinked {
            return Ok(());
        }
        self.unlinked = true;
        // We unlink, so the crate must not try again when the mapping is dropped.
        self.shmem.set_owner(false);
        cleanup::forget_segment(&self.path);
        std::fs::remove_file(&self.path).with_context(|| format!("shm_unlink {}", self.path))
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let _ = self.unlink();
    }
}

/// Removes segments of our prefix whose owner process is gone (killed with SIGKILL, say).
/// Returns how many it removed.
pub fn remove_stale() -> Result<usize> {
    let mut removed = 0;
    let dir = match std::fs::read_dir("/dev/shm") {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).context("reading /dev/shm"),
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = owner_pid(&name) else { continue };
        if !process_exists(owner) {
            // Another run starting now may remove it first: then it is gone, as wanted.
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing stale segment {name}")),
            }
        }
    }
    Ok(removed)
}

/// The owner pid in a segment name of ours: `pvt-<pid>-<random>`.
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(SEGMENT_PREFIX)?;
    let (pid, random) = rest.split_once('-')?;
    (!random.is_empty()).then_some(())?;
    pid.parse().ok()
}

fn process_exists(pid: i32) -> bool {
    // Signal 0 checks existence without sending anything (kill(2)); EPERM means it exists.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e != nix::errno::Errno::ESRCH,
    }
}

fn random_u64() -> Result<u64> {
    let mut buf = [0u8; 8];
    // Safety: getrandom(2) fills our buffer of the given length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    anyhow::ensure!(n == 8, "getrandom: {}", std::io::Error::last_os_error());
    Ok(u64::from_ne_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn segment_is_private_named_ours_and_gone_after_unlink() {
        let mut s = Segment::create(4096).unwrap();
        let path = format!("/dev/shm/{}", s.name());
        assert_eq!(owner_pid(s.name()), Some(std::process::id() as i32));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Safety: the mapping is 4096 bytes long and ours.
        unsafe { s.as_ptr().write(7) };
        s.unlink().unwrap();
        assert!(!std::path::Path::new(&path).exists());
        // Safety: unlinking the name keeps the mapping.
        assert_eq!(unsafe { s.as_ptr().read() }, 7);
    }

    #[test]
    fn stale_segments_of_dead_owners_are_removed() {
        // A pid far above pid_max's default is never alive.
        let path = "/dev/shm/pvt-2147483000-0123456789abcdef";
        std::fs::write(path, b"").unwrap();
        assert!(remove_stale().unwrap() >= 1);
        assert!(!std::path::Path::new(path).exists());
    }

    #[test]
    fn names_that_are_not_ours_are_left_alone() {
        assert_eq!(owner_pid("pulse-shm-1234"), None);
        assert_eq!(owner_pid("pvt-12"), None);
        assert_eq!(owner_pid("pvt-12-ab"), Some(12));
    }
}
