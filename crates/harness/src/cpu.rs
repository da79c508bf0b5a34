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

/// Where one of a group of workers ran: the CPU it pinned itself to and whether it was ever
/// seen elsewhere. A worker takes its seat ([`Seat::take`]) as its first act and looks again
/// ([`Seat::look`]) as often as it likes; the group's seats tell whether every worker had a
/// CPU of its own ([`Seat::each_own`]). For experiments about something else than where the
/// scheduler puts short-lived workers: left to it, two of them often shared one CPU, taking
/// turns, in some runs and not in others (docs/concurrency.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seat {
    /// The CPU pinned to, or None where sched_setaffinity(2) failed.
    pub cpu: Option<u64>,
    /// Looks that found the worker on another CPU (a count, so that no CPU number aliases).
    pub elsewhere: u64,
}

impl Seat {
    /// Pins the calling thread, worker `i` of a group, to the `i`th CPU this process may use
    /// (round robin over them), as will-it-scale pins each of its tasks.
    pub fn take(i: usize) -> Seat {
        let pinned = || -> Option<u64> {
            let cpus = allowed().ok()?;
            let cpu = *cpus.get(i % cpus.len().max(1))?;
            pin(cpu).ok()?;
            Some(cpu as u64)
        };
        let mut seat = Seat { cpu: pinned(), elsewhere: 0 };
        seat.look();
        seat
    }

    /// Looks at the CPU the worker runs on now.
    pub fn look(&mut self) {
        let here = current().ok().map(|c| c as u64);
        self.elsewhere += u64::from(self.cpu.is_some() && here != self.cpu);
    }

    /// Whether every worker of one group was pinned, each to a CPU of its own while there
    /// were CPUs enough (`cpus` of them), and was never seen elsewhere.
    pub fn each_own(seats: &[Seat], cpus: usize) -> bool {
        let distinct: std::collections::BTreeSet<u64> = seats.iter().filter_map(|s| s.cpu).collect();
        seats.iter().all(|s| s.cpu.is_some() && s.elsewhere == 0) && distinct.len() == seats.len().min(cpus)
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
    fn seats_are_one_cpu_each_round_robin() {
        let cpus = allowed().unwrap();
        let n = cpus.len().min(4);
        let seats: Vec<Seat> = (0..n).map(|i| std::thread::spawn(move || Seat::take(i)).join().unwrap()).collect();
        for (i, seat) in seats.iter().enumerate() {
            assert_eq!(seat.cpu, Some(cpus[i] as u64), "worker {i}");
        }
        assert!(Seat::each_own(&seats, cpus.len()));
        // Two on one CPU, one seen elsewhere, one not pinned: none of those is a CPU each.
        let one = Seat { cpu: Some(cpus[0] as u64), elsewhere: 0 };
        assert!(!Seat::each_own(&[one, one], 2));
        assert!(Seat::each_own(&[one, one], 1), "with one CPU, sharing it is all there is");
        assert!(!Seat::each_own(&[Seat { elsewhere: 1, ..one }], 1));
        assert!(!Seat::each_own(&[Seat::default()], 1));
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
