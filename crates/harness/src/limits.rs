//! How much room the machine leaves, so that an experiment can size itself to it or refuse
//! with a clear message instead of exhausting the machine (or the user's share of it).
//!
//! Tasks (processes and threads alike: each is one task to the kernel) are bounded by the
//! smallest of three limits: `ulimit -u` (RLIMIT_NPROC, counted over every task of our real
//! user), the cgroup's `pids.max` (v2, or the v1 pids controller) and the kernel's
//! `threads-max`. Memory is bounded by MemAvailable, the cgroup's memory limit and
//! `ulimit -v` (RLIMIT_AS). We honour RLIMIT_NPROC even as root, whom the kernel exempts: the
//! user set it to say how much this run may use.
//!
//! See also: getrlimit(2), proc_pid_status(5), proc_meminfo(5), cgroups(7).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::sys::resource::{Resource, getrlimit};
use procfs::Current;

/// What an experiment uses at most at one moment, beyond the row process itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// Tasks alive at once: forked workers, sacrificial children and threads together.
    pub tasks: u64,
    /// Bytes of memory mapped and touched at once (besides the tasks' own stacks).
    pub memory: u64,
}

/// Address space a new thread's stack takes: Rust's default of 2 MiB, rounded up for the
/// guard page and glibc's bookkeeping.
pub const STACK_PER_TASK: u64 = 4 << 20;

impl Needs {
    pub const fn tasks(tasks: u64) -> Needs {
        Needs { tasks, memory: 0 }
    }

    pub const fn and_memory(self, memory: u64) -> Needs {
        Needs { memory, ..self }
    }
}

/// One limit and what is left under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    pub amount: u64,
    /// The limit in words a user can act on: "ulimit -u (RLIMIT_NPROC) is 40 and user 1000
    /// already runs 38 tasks".
    pub why: String,
}

/// The room this machine leaves now.
#[derive(Debug, Clone)]
pub struct Room {
    pub cpus: usize,
    /// The tightest task limit; `None` when nothing limits tasks.
    pub tasks: Option<Left>,
    /// The tightest memory limit (MemAvailable at least).
    pub memory: Left,
    /// Address space left under `ulimit -v`, when it is set.
    pub address_space: Option<Left>,
}

/// Tasks kept aside for the harness's own helpers: a host and a watcher.
const HELPER_TASKS: u64 = 2;

/// Never plan to use more than this share of the memory that is left: the machine must stay
/// usable while the experiment runs.
const MEMORY_SHARE: u64 = 2;

impl Room {
    /// Reads the limits now.
    pub fn probe() -> Result<Room> {
        let cpus = crate::cpu::allowed()?.len();
        let tasks = tasks_left([nproc_left()?, cgroup_pids_left(), kernel_tasks_left()]);
        let mut memory = mem_available()?;
        if let Some(c) = cgroup_memory_left().filter(|c| c.amount < memory.amount) {
            memory = c;
        }
        Ok(Room { cpus, tasks, memory, address_space: address_space_left()? })
    }

    /// `None` when `needs` fits, else the reason to refuse, in one line.
    pub fn refuse(&self, needs: Needs) -> Option<String> {
        if let Some(t) = self.tasks.as_ref().filter(|t| needs.tasks > t.amount) {
            return Some(format!(
                "refused: needs {} more tasks (processes or threads) but only {} are left: {}",
                needs.tasks, t.amount, t.why
            ));
        }
        let usable = self.memory.amount / MEMORY_SHARE;
        if needs.memory > usable {
            return Some(format!(
                "refused: needs {} of memory but plans never take more than half of what is left, {}: {}",
                mib(needs.memory),
                mib(usable),
                self.memory.why
            ));
        }
        let address_space = needs.memory + needs.tasks * STACK_PER_TASK;
        if let Some(a) = self.address_space.as_ref().filter(|a| address_space > a.amount) {
            return Some(format!(
                "refused: needs {} of address space (memory and a stack per task) but only {} are left: {}",
                mib(address_space),
                mib(a.amount),
                a.why
            ));
        }
        None
    }

    /// How many of `wanted` workers fit, each a task using `memory_each` bytes; at least 0.
    pub fn fit(&self, wanted: u64, memory_each: u64) -> u64 {
        let mut n = wanted;
        if let Some(t) = &self.tasks {
            n = n.min(t.amount);
        }
        if let Some(by_memory) = (self.memory.amount / MEMORY_SHARE).checked_div(memory_each) {
            n = n.min(by_memory);
        }
        if let Some(a) = &self.address_space {
            n = n.min(a.amount / (memory_each + STACK_PER_TASK));
        }
        n
    }
}

/// The tightest of the task limits, less the tasks the harness's own helpers take: a thread
/// side's host and a watcher (Ctx::thread_host, Child::watch) are processes beside the
/// experiment's.
fn tasks_left(limits: impl IntoIterator<Item = Option<Left>>) -> Option<Left> {
    limits.into_iter().flatten().min_by_key(|l| l.amount).map(|l| Left {
        amount: l.amount.saturating_sub(HELPER_TASKS),
        why: format!("{}, less {HELPER_TASKS} for the harness's host and watcher", l.why),
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// RLIMIT_NPROC minus every task of our real user (the kernel counts threads too).
fn nproc_left() -> Result<Option<Left>> {
    let (soft, _) = getrlimit(Resource::RLIMIT_NPROC).context("getrlimit(RLIMIT_NPROC)")?;
    if soft == libc::RLIM_INFINITY {
        return Ok(None);
    }
    let uid = real_uid();
    let running = tasks_of_user(uid);
    Ok(Some(Left {
        amount: soft.saturating_sub(running),
        why: format!("ulimit -u (RLIMIT_NPROC) is {soft} and user {uid} already runs {running} tasks"),
    }))
}

/// Our real user id (getuid(2)).
fn real_uid() -> u32 {
    // Safety: getuid(2) has no arguments and always succeeds.
    unsafe { libc::getuid() }
}

/// Tasks (threads included) of every process whose real uid is `uid`.
fn tasks_of_user(uid: u32) -> u64 {
    let Ok(all) = procfs::process::all_processes() else { return 0 };
    all.flatten().filter_map(|p| p.status().ok()).filter(|s| s.ruid == uid).map(|s| s.threads).sum()
}

/// The kernel's threads-max minus every task on the machine (/proc/loadavg's fourth field).
fn kernel_tasks_left() -> Option<Left> {
    let max: u64 = std::fs::read_to_string("/proc/sys/kernel/threads-max").ok()?.trim().parse().ok()?;
    let total: u64 = procfs::LoadAverage::current().ok()?.max as u64;
    Some(Left {
        amount: max.saturating_sub(total),
        why: format!("the kernel allows {max} tasks (threads-max) and {total} exist"),
    })
}

/// The tightest `pids.max - pids.current` of our cgroup and its ancestors (v2 or v1).
fn cgroup_pids_left() -> Option<Left> {
    cgroup_dirs("pids")
        .into_iter()
        .filter_map(|dir| {
            let max = read_limit(&dir.join("pids.max"))?;
            let current = read_number(&dir.join("pids.current"))?;
            Some(Left {
                amount: max.saturating_sub(current),
                why: format!("cgroup {} allows {max} tasks (pids.max) and has {current}", dir.display()),
            })
        })
        .min_by_key(|l| l.amount)
}

/// The tightest memory limit of our cgroup and its ancestors: v2 `memory.max`, v1
/// `memory.limit_in_bytes`, minus what the group uses.
fn cgroup_memory_left() -> Option<Left> {
    cgroup_dirs("memory")
        .into_iter()
        .filter_map(|dir| {
            let (max, current) = match read_limit(&dir.join("memory.max")) {
                Some(max) => (max, read_number(&dir.join("memory.current"))?),
                None => {
                    (read_limit(&dir.join("memory.limit_in_bytes"))?, read_number(&dir.join("memory.usage_in_bytes"))?)
                }
            };
            // cgroup v1 writes "no limit" as a huge page-aligned number.
            (max < 1 << 60).then(|| Left {
                amount: max.saturating_sub(current),
                why: format!("cgroup {} allows {} and uses {}", dir.display(), mib(max), mib(current)),
            })
        })
        .min_by_key(|l| l.amount)
}

/// The directories of our cgroup and all its ancestors that may hold `controller`'s files:
/// the v2 unified hierarchy and, on a v1 or hybrid system, the controller's own hierarchy.
pub fn cgroup_dirs(controller: &str) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else { return Vec::new() };
    let mut dirs = Vec::new();
    for line in text.lines() {
        // hierarchy-ID:controller-list:path (cgroups(7))
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let roots: Vec<PathBuf> = if controllers.is_empty() {
            vec![PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/sys/fs/cgroup/unified")]
        } else if controllers.split(',').any(|c| c == controller) {
            vec![Path::new("/sys/fs/cgroup").join(controller)]
        } else {
            continue;
        };
        for root in roots {
            let mut dir = root.join(path.trim_start_matches('/'));
            while dir.starts_with(&root) {
                dirs.push(dir.clone());
                if !dir.pop() {
                    break;
                }
            }
        }
    }
    dirs
}

/// The tightest limit that our cgroup and its ancestors set on `controller`: in each directory
/// the first of `files` present, a number (or "max" for none; cgroup v1 writes "no limit" as a
/// huge number, 2^60 or more, which counts as none too). `None` when no directory sets one.
pub fn cgroup_limit(controller: &str, files: &[&str]) -> Option<u64> {
    cgroup_dirs(controller)
        .iter()
        .filter_map(|dir| files.iter().find(|f| dir.join(f).exists()).and_then(|f| read_limit(&dir.join(f))))
        .filter(|&limit| limit < 1 << 60)
        .min()
}

/// A limit file: a number, or "max" for none.
fn read_limit(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    if text == "max" { None } else { text.parse().ok() }
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn mem_available() -> Result<Left> {
    let m = procfs::Meminfo::current().context("reading /proc/meminfo")?;
    let available = m.mem_available.unwrap_or(m.mem_free);
    Ok(Left { amount: available, why: format!("MemAvailable is {}", mib(available)) })
}

/// RLIMIT_AS minus the address space this process already has (VmSize).
fn address_space_left() -> Result<Option<Left>> {
    let (soft, _) = getrlimit(Resource::RLIMIT_AS).context("getrlimit(RLIMIT_AS)")?;
    if soft == libc::RLIM_INFINITY {
        return Ok(None);
    }
    let used = procfs::process::Process::myself()
        .and_then(|p| p.status())
        .ok()
        .and_then(|s| s.vmsize)
        .map(|kib| kib * 1024)
        .unwrap_or(0);
    Ok(Some(Left {
        amount: soft.saturating_sub(used),
        why: format!("ulimit -v (RLIMIT_AS) is {} and this process already maps {}", mib(soft), mib(used)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(tasks: Option<u64>, memory: u64, address_space: Option<u64>) -> Room {
        let left = |amount| Left { amount, why: "a test limit".into() };
        Room { cpus: 2, tasks: tasks.map(left), memory: left(memory), address_space: address_space.map(left) }
    }

    #[test]
    fn needs_within_the_room_are_not_refused() {
        assert_eq!(room(Some(10), 1 << 30, None).refuse(Needs::tasks(10).and_memory(1 << 29)), None);
        assert_eq!(room(None, 1 << 30, None).refuse(Needs::tasks(100_000)), None);
    }

    #[test]
    fn each_limit_refuses_with_its_reason() {
        let r = room(Some(3), 1 << 30, None).refuse(Needs::tasks(4)).unwrap();
        assert!(r.contains("needs 4 more tasks") && r.contains("only 3") && r.contains("a test limit"), "{r}");
        let r = room(None, 100 << 20, None).refuse(Needs::tasks(1).and_memory(60 << 20)).unwrap();
        assert!(r.contains("60.0 MiB of memory") && r.contains("50.0 MiB"), "{r}");
        let r = room(None, 1 << 30, Some(10 << 20)).refuse(Needs::tasks(2).and_memory(4 << 20)).unwrap();
        assert!(r.contains("12.0 MiB of address space"), "{r}");
    }

    #[test]
    fn fit_takes_the_tightest_limit() {
        assert_eq!(room(None, 1 << 30, None).fit(64, 0), 64);
        let left = |amount: u64| Some(Left { amount, why: format!("{amount} left") });
        let tasks = tasks_left([left(10), None, left(5)]).unwrap();
        assert_eq!(tasks.amount, 3, "the tightest limit, less the harness's host and watcher");
        assert_eq!(tasks.why, "5 left, less 2 for the harness's host and watcher");
        assert_eq!(tasks_left([left(1)]).unwrap().amount, 0);
        assert!(tasks_left([None, None]).is_none(), "nothing limits tasks");
        assert_eq!(room(Some(5), 1 << 30, None).fit(64, 0), 5);
        assert_eq!(room(None, 100 << 20, None).fit(64, 10 << 20), 5);
        assert_eq!(room(None, 1 << 30, Some(40 << 20)).fit(64, 0), 10);
    }

    #[test]
    fn this_machine_can_be_probed() {
        let r = Room::probe().unwrap();
        assert!(r.cpus >= 1 && r.memory.amount > 0, "{r:?}");
        assert!(tasks_of_user(real_uid()) >= 1);
    }
}
