//! The job every worker does and the faults one worker commits on purpose.
//!
//! Both process.rs and thread.rs run exactly these functions, so that the only difference
//! between the two versions of an experiment is the mechanism: a process or a thread.

use std::time::{Duration, Instant};

/// Workers in every experiment.
pub const WORKERS: usize = 4;
/// The worker that commits the fault.
pub const FAULTY: usize = 2;

/// What goes wrong in the faulty worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A write through an invalid pointer: the kernel sends SIGSEGV.
    Segfault,
    /// `std::process::abort()`: SIGABRT.
    Abort,
    /// Unbounded recursion until the stack's guard page is hit.
    StackOverflow,
    /// A Rust panic: unwinding, not a signal.
    Panic,
}

impl Fault {
    pub const ALL: [Fault; 4] = [Fault::Segfault, Fault::Abort, Fault::StackOverflow, Fault::Panic];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Segfault => "segfault",
            Fault::Abort => "abort",
            Fault::StackOverflow => "stack-overflow",
            Fault::Panic => "panic",
        }
    }

    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Commits the fault in the calling thread. Returns only for `Panic`, by unwinding.
    pub fn commit(self) -> ! {
        // The crash is the demonstration: it must not leave a core file behind.
        harness::no_core_dump();
        match self {
            Fault::Segfault => {
                // An aligned, non-null address far below any mapping (mmap_min_addr is at
                // least 4096): the write faults and the kernel sends SIGSEGV.
                let invalid = 0x10 as *mut u64;
                // Safety: none. This write is the fault being demonstrated.
                unsafe { invalid.write_volatile(0xdead) };
                unreachable!("the write through an invalid pointer did not fault")
            }
            Fault::Abort => std::process::abort(),
            Fault::StackOverflow => {
                recurse(0);
                unreachable!("unbounded recursion returned")
            }
            Fault::Panic => panic!("worker {FAULTY} panicked on purpose"),
        }
    }
}

/// Recursion with a 4 KiB frame that the optimiser cannot remove or turn into a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth as u8; 4096]);
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + frame[0] as u64
}

/// The result of one worker's job: a checksum of its chunk, the same wherever it runs.
/// The crasher of the poison experiment panics while it holds the lock, unless the tests ask
/// it not to (`PVT_CRASHER_SPARED`): then the experiment must see no poison and say the claim
/// was contradicted, which shows that its verdict rests on what happened.
pub fn crasher_panics() -> bool {
    std::env::var_os("PVT_CRASHER_SPARED").is_none()
}

pub fn job(id: usize) -> u64 {
    (0..100_000u64).fold(id as u64 + 1, |acc, i| acc.wrapping_mul(6364136223846793005).wrapping_add(i))
}

/// The job's full, correct result, computed by the observer for checking.
pub fn expected_total() -> u64 {
    (0..WORKERS).map(job).fold(0, u64::wrapping_add)
}

/// A worker: the faulty one commits its fault at once; the others do their job, which takes
/// at least `job_time` (so they are still working when the fault happens), then deliver
/// their result to the observer.
pub fn worker(id: usize, fault: Option<Fault>, job_time: Duration) -> u64 {
    let start = Instant::now();
    if let Some(f) = fault {
        f.commit();
    }
    let result = job(id);
    std::thread::sleep(job_time.saturating_sub(start.elapsed()));
    result
}

/// The fault of worker `id` in an experiment with `fault`.
pub fn fault_of(id: usize, fault: Fault) -> Option<Fault> {
    (id == FAULTY).then_some(fault)
}
