//! CPU placement: pin the calling task to a CPU and find out where it really ran.

use anyhow::{Context, Result};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The CPUs this process may run on (sched_getaffinity(2)), in ascending order.
pub fn allowed() -> Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    Ok((0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect())
}

/// Pins the calling thread (or process, before any thread exists) to one CPU
/// (sched_setaffinity(2) with pid 0 means "the calling thread").
pub fn pin(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu} is out of range"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("sched_setaffinity to CPU {cpu}"))
}

/// Restores the calling thread's affinity to a set of CPUs.
pub fn pin_to_all(cpus: &[usize]) -> Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).with_context(|| format!("CPU {c} is out of range"))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).context("sched_setaffinity")
}

/// Pins the calling thread to one CPU until the guard is dropped, then lets it run anywhere
/// it could before.
pub struct Pinned {
    before: Vec<usize>,
}

impl Pinned {
    pub fn to(cpu: usize) -> Result<Pinned> {
        let before = allowed()?;
        pin(cpu)?;
        Ok(Pinned { before })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = pin_to_all(&self.before);
    }
}

/// The CPU the calling thread is running on right now (sched_getcpu(3)). A failure is an
/// error, never a CPU number: "ran on CPU 0" must be something the kernel said.
pub fn current() -> Result<usize> {
    // Safety: sched_getcpu takes no arguments and only reads the kernel's answer.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getcpu");
    }
    Ok(cpu as usize)
}

/// Where two tasks run: the one that drives an experiment and its partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub driver: usize,
    pub partner: usize,
}

impl Placement {
    /// Both tasks on the first CPU this run may use, once pinning there is known to work;
    /// `Ok(Err(why))` when it cannot be arranged here (an experiment is then skipped).
    pub fn same_cpu() -> Result<std::result::Result<Placement, String>> {
        let Some(&first) = allowed()?.first() else {
            return Ok(Err("sched_getaffinity reports no CPU we may run on".to_string()));
        };
        Ok(match Pinned::to(first) {
            Ok(_undo) => Ok(Placement { driver: first, partner: first }),
            Err(e) => Err(format!("pinning was refused: {e:#}")),
        })
    }

    /// The tasks on two different CPUs this run may use, once pinning to each is known to
    /// work; `Ok(Err(why))` with one allowed CPU.
    pub fn cross_cpu() -> Result<std::result::Result<Placement, String>> {
        let Some((a, b)) = two_distinct()? else {
            return Ok(Err("only one CPU is allowed here: a wake-up cannot cross CPUs".to_string()));
        };
        // Each probe is undone before the next: the calling thread ends with the mask it had.
        let probe = Pinned::to(a).map(drop).and_then(|()| Pinned::to(b).map(drop));
        Ok(match probe {
            Ok(()) => Ok(Placement { driver: a, partner: b }),
            Err(e) => Err(format!("pinning was refused: {e:#}")),
        })
    }
}

/// Two distinct CPUs this process may use, if it may use two.
pub fn two_distinct() -> Result<Option<(usize, usize)>> {
    let cpus = allowed()?;
    Ok(match cpus.as_slice() {
        [a, b, ..] => Some((*a, *b)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_a_thread_keeps_it_there() {
        let cpus = allowed().unwrap();
        assert!(!cpus.is_empty());
        let target = *cpus.last().unwrap();
        std::thread::spawn(move || {
            pin(target).unwrap();
            for _ in 0..100 {
                std::thread::yield_now();
                assert_eq!(current().unwrap(), target);
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn probing_placements_leaves_the_mask_as_it_was() {
        let before = allowed().unwrap();
        let same = Placement::same_cpu().unwrap().unwrap();
        assert_eq!(same.driver, before[0]);
        match Placement::cross_cpu().unwrap() {
            Ok(p) => assert_ne!(p.driver, p.partner),
            Err(why) => assert_eq!(before.len(), 1, "{why}"),
        }
        assert_eq!(allowed().unwrap(), before, "the probes changed the calling thread's mask");
    }
}
