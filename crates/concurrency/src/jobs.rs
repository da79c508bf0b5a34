//! The work both sides run, and what a worker reports about running it. process.rs and
//! thread.rs only differ in how a worker is started and how its report comes back.
//!
//! The job is deterministic and CPU-bound: hash every number of a range (splitmix64) and add
//! the hashes up. Every number costs the same, so a range cut into equal pieces gives equal
//! pieces of work, and the sum of the pieces' checksums is the same however the range is cut:
//! the evidence that every configuration did all of the work, once.

use std::time::{Duration, Instant};

use anyhow::Result;
use harness::cpu::{self, Seat};
use harness::mem::{Mapping, Sharing};
use harness::stats::{self, monotonic_ns};
use serde::{Deserialize, Serialize};

/// splitmix64 (Steele, Lea and Flood): a few multiplications and shifts per number.
pub fn hash(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The checksum of a range: the wrapping sum of its hashes.
pub fn checksum(range: std::ops::Range<u64>) -> u64 {
    range.fold(0u64, |sum, i| sum.wrapping_add(hash(i)))
}

/// Numbers hashed between two looks at the CPU a worker runs on.
const SLICE: u64 = 1 << 16;

/// What one worker did: its share of the checksum, when it ran and where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub checksum: u64,
    pub numbers: u64,
    /// Tasks it ran (one for a worker per task, many for a pool worker).
    pub tasks: u64,
    /// The monotonic clock when it started and ended its work (comparable across processes).
    pub start_ns: u64,
    pub end_ns: u64,
    /// Bit c is set when the worker was seen on CPU c (sched_getcpu(3)), looked at between slices.
    pub cpus: u64,
}

impl Report {
    /// Runs `range` as one worker's share.
    pub fn run(range: std::ops::Range<u64>) -> Result<Report> {
        let mut r = Report::begin()?;
        r.add(range)?;
        r.finish();
        Ok(r)
    }

    pub fn begin() -> Result<Report> {
        Ok(Report { start_ns: monotonic_ns(), cpus: cpu_bit(cpu::current()?), ..Report::default() })
    }

    /// Adds one task's range.
    pub fn add(&mut self, range: std::ops::Range<u64>) -> Result<()> {
        let mut at = range.start;
        while at < range.end {
            let to = (at + SLICE).min(range.end);
            self.checksum = self.checksum.wrapping_add(checksum(at..to));
            self.cpus |= cpu_bit(cpu::current()?);
            at = to;
        }
        self.numbers += range.end - range.start;
        self.tasks += 1;
        Ok(())
    }

    pub fn finish(&mut self) {
        self.end_ns = monotonic_ns();
    }

    /// The report as plain words, for a result slot in shared memory (`plumbing::Slots`).
    pub fn to_words(self) -> [u64; 6] {
        [self.checksum, self.numbers, self.tasks, self.start_ns, self.end_ns, self.cpus]
    }

    pub fn from_words([checksum, numbers, tasks, start_ns, end_ns, cpus]: [u64; 6]) -> Report {
        Report { checksum, numbers, tasks, start_ns, end_ns, cpus }
    }
}

fn cpu_bit(cpu: usize) -> u64 {
    1u64 << (cpu % 64)
}

/// What a group of workers did together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Together {
    pub checksum: u64,
    pub numbers: u64,
    pub tasks: u64,
    pub workers: usize,
    /// The most workers that were working at one instant: how many really ran at once.
    pub at_once: usize,
    /// Distinct CPUs the workers were seen on.
    pub cpus_seen: u32,
}

impl Together {
    pub fn of(reports: &[Report]) -> Together {
        let mut edges: Vec<(u64, i32)> = reports.iter().flat_map(|r| [(r.start_ns, 1), (r.end_ns, -1)]).collect();
        // An end at the same instant as a start counts first: touching is not overlapping.
        edges.sort_unstable();
        let (mut now, mut most) = (0i32, 0i32);
        for (_, step) in edges {
            now += step;
            most = most.max(now);
        }
        Together {
            checksum: reports.iter().fold(0u64, |s, r| s.wrapping_add(r.checksum)),
            numbers: reports.iter().map(|r| r.numbers).sum(),
            tasks: reports.iter().map(|r| r.tasks).sum(),
            workers: reports.len(),
            at_once: most.max(0) as usize,
            cpus_seen: reports.iter().fold(0u64, |m, r| m | r.cpus).count_ones(),
        }
    }
}

/// The `k`th of `parts` equal pieces of `0..numbers` (the last takes the remainder).
pub fn piece(numbers: u64, parts: u64, k: u64) -> std::ops::Range<u64> {
    let each = numbers / parts;
    let start = k * each;
    let end = if k + 1 == parts { numbers } else { start + each };
    start..end
}

/// The same job cut into `count` tasks of `numbers_each` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tasks {
    pub count: u64,
    pub numbers_each: u64,
}

impl Tasks {
    pub fn range(&self, i: u64) -> std::ops::Range<u64> {
        i * self.numbers_each..(i + 1) * self.numbers_each
    }

    pub fn numbers(&self) -> u64 {
        self.count * self.numbers_each
    }
}

/// A pool worker's life, the same on both sides: take the next task from the shared counter
/// until none is left, and report what was done.
pub fn take_tasks(counter: &std::sync::atomic::AtomicU32, tasks: &Tasks) -> Result<Report> {
    let mut r = Report::begin()?;
    loop {
        let i = u64::from(counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        if i >= tasks.count {
            break;
        }
        r.add(tasks.range(i))?;
    }
    r.finish();
    Ok(r)
}

/// Numbers this machine hashes per µs on one CPU, measured once per run: sizes jobs by time.
pub fn numbers_per_us() -> Result<f64> {
    static MEASURED: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    if let Some(&n) = MEASURED.get() {
        return Ok(n);
    }
    let mut per_us = 0.0;
    let n = stats::iterations_for(Duration::from_millis(5), |n| {
        let start = Instant::now();
        std::hint::black_box(checksum(0..n));
        let took = start.elapsed();
        per_us = n as f64 / took.as_secs_f64() / 1e6;
        Ok(took)
    })?;
    // One more look at the size the budget asked for, with warm caches.
    let start = Instant::now();
    std::hint::black_box(checksum(0..n));
    per_us = (n as f64 / start.elapsed().as_secs_f64() / 1e6).max(per_us * 0.5);
    Ok(*MEASURED.get_or_init(|| per_us))
}

/// One contention worker's pass: map `bytes`, write one byte per page, unmap, `ops` times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Churn {
    pub ops: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub minor_faults: i64,
    pub cpus: u64,
    /// Ops whose mapping the kernel put at the address asked for ([`Places`]).
    pub where_asked: u64,
    /// The CPU the worker pinned itself to, and whether a look (one before the first op and
    /// one after each) found it elsewhere.
    pub seat: Seat,
}

/// Where the contention workers map: worker i's `bytes` right after worker i-1's, side by
/// side, as mmap(2) places mappings made one after another when nothing lies between them.
/// Left to the kernel, where they went depended on what the process had mapped before: 74 MiB
/// of something (not checked) sometimes lay between the two workers' mappings, and in those
/// invocations the thread side was about 9 % faster (docs/concurrency.md). The same places
/// serve both sides; in a process each worker's mapping is alone in its address space.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Places {
    first: Option<usize>,
    bytes: usize,
}

impl Places {
    /// Room for `workers` mappings of `bytes`, side by side from the bottom (2 MiB-aligned) of a
    /// range that was free when asked, with room above them for what the workers map of their
    /// own (a thread's first malloc reserves an arena of up to 128 MiB). With the usual
    /// top-down layout the kernel puts a new mapping at the top of the highest free range it
    /// fits in, which is this one (the probe was put there), so it lands far above the places.
    /// The probe counts against `ulimit -v`: where it is refused, half as much is tried, down to
    /// the places alone; where even that is refused, the kernel chooses ([`Places::of`] is
    /// `None`), as it does for anything that takes a place first (`mapped_where_asked`).
    pub fn side_by_side(workers: usize, bytes: usize) -> Places {
        const ALIGN: usize = 2 << 20;
        const ROOM_PER_WORKER: usize = 128 << 20;
        let needed = workers * bytes + ALIGN;
        let mut len = needed + workers * ROOM_PER_WORKER + (1 << 30);
        while len >= needed {
            if let Ok(free) = harness::mem::free_range(len) {
                return Places { first: Some(free.next_multiple_of(ALIGN)), bytes };
            }
            len /= 2;
        }
        Places { first: None, bytes }
    }

    /// The address worker `i` asks for, if any.
    pub fn of(&self, i: usize) -> Option<usize> {
        self.first.map(|f| f + i * self.bytes)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Churn {
    /// Operations per second of this worker.
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / ((self.end_ns - self.start_ns).max(1) as f64 / 1e9)
    }

    /// The same measure of overlap as [`Together`], for churn workers.
    pub fn at_once(all: &[Churn]) -> usize {
        let as_reports: Vec<Report> =
            all.iter().map(|c| Report { start_ns: c.start_ns, end_ns: c.end_ns, ..Report::default() }).collect();
        Together::of(&as_reports).at_once
    }

    pub fn cpus_seen(all: &[Churn]) -> u32 {
        all.iter().fold(0u64, |m, c| m | c.cpus).count_ones()
    }
}

/// The will-it-scale page_fault1 pattern: each op maps `bytes` of anonymous private memory,
/// writes one byte to every page (one page fault each) and unmaps it. Every mmap, fault and
/// munmap takes the address space's locks; munmap also flushes the TLB of every CPU that runs
/// a task of this address space.
/// `at` is where this worker asks for its mapping, if anywhere ([`Places::of`]).
/// `seat` is the CPU of its own the worker took before the start ([`Seat::take`]): unpinned,
/// the scheduler placed the two sides' workers differently (threads woken together often
/// shared one CPU for the first milliseconds of a run, a process worker often started
/// milliseconds after the other: docs/concurrency.md), and the verdict measured placement,
/// not the address space. Where sched_setaffinity(2) fails the worker runs where the
/// scheduler puts it, and the note says so.
pub fn churn(at: Option<usize>, bytes: usize, seat: Seat, ops: u64) -> Result<Churn> {
    let before = harness::Usage::of_thread()?;
    let mut c = Churn { start_ns: monotonic_ns(), seat, ..Churn::default() };
    let look = |c: &mut Churn| -> Result<()> {
        c.cpus |= cpu_bit(cpu::current()?);
        c.seat.look();
        Ok(())
    };
    look(&mut c)?;
    for _ in 0..ops {
        let m = touched(at, bytes)?;
        c.where_asked += u64::from(Some(m.as_ptr() as usize) == at);
        drop(m);
        look(&mut c)?;
        c.ops += 1;
    }
    c.end_ns = monotonic_ns();
    c.minor_faults = harness::Usage::of_thread()?.since(before).minor_faults;
    Ok(c)
}

/// One churn op but the munmap: `bytes` mapped, with base pages only, and one byte written per
/// page. Transparent huge pages are turned off (MADV_NOHUGEPAGE) before the first write, or a
/// 2 MiB-aligned stretch could come as one huge page in one fault and "a fault per page" would
/// not hold; [`huge_kib_of_one_op`] checks that none came.
fn touched(at: Option<usize>, bytes: usize) -> Result<Mapping> {
    let page = harness::mem::page_size();
    let m = Mapping::anonymous_at(at, bytes, Sharing::Private)?;
    m.no_huge_pages()?;
    for at in (0..m.len()).step_by(page) {
        // Safety: `at` is inside the mapping, which the caller unmaps when it drops it.
        unsafe { m.as_ptr().add(at).write_volatile(1) };
    }
    Ok(m)
}

/// KiB of one churn op's mapping that huge pages backed (AnonHugePages in smaps), observed on
/// one op outside every timed run: reading smaps takes the mmap lock the churn contends on.
pub fn huge_kib_of_one_op(at: Option<usize>, bytes: usize) -> Result<u64> {
    touched(at, bytes)?.huge_kib()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_does_not_depend_on_how_the_range_is_cut() {
        let whole = checksum(0..100_003);
        for parts in [1, 2, 3, 7, 64] {
            let sum = (0..parts).fold(0u64, |s, k| s.wrapping_add(checksum(piece(100_003, parts, k))));
            assert_eq!(sum, whole, "{parts} parts");
        }
    }

    #[test]
    fn overlap_counts_workers_running_at_one_instant() {
        let r = |start_ns, end_ns| Report { start_ns, end_ns, ..Report::default() };
        assert_eq!(Together::of(&[r(0, 10), r(5, 15), r(12, 20)]).at_once, 2);
        assert_eq!(Together::of(&[r(0, 10), r(10, 20)]).at_once, 1, "touching is not overlapping");
        assert_eq!(Together::of(&[r(0, 10), r(1, 9), r(2, 8)]).at_once, 3);
    }

    #[test]
    fn a_report_covers_its_range() {
        let r = Report::run(10..200_000).unwrap();
        assert_eq!((r.checksum, r.numbers, r.tasks), (checksum(10..200_000), 199_990, 1));
        assert!(r.cpus != 0 && r.end_ns >= r.start_ns);
    }

    #[test]
    fn churn_faults_once_per_page_where_asked() {
        let places = Places::side_by_side(2, 1 << 20);
        let (first, second) = (places.of(0).unwrap(), places.of(1).unwrap());
        assert_eq!(second - first, 1 << 20, "side by side");
        assert_eq!(first % (2 << 20), 0, "2 MiB-aligned");
        let c = churn(Some(second), 1 << 20, Seat::default(), 3).unwrap();
        assert_eq!(c.where_asked, 3, "every op's mapping at its place");
        let pages = 3 * (1 << 20) / harness::mem::page_size() as i64;
        assert_eq!(c.ops, 3);
        assert!(c.minor_faults >= pages, "{} faults for {pages} pages", c.minor_faults);
        // Huge pages are off: no op is served by a few 2 MiB faults.
        assert!(c.minor_faults <= pages + pages / 10, "{} faults for {pages} pages", c.minor_faults);
        assert_eq!(huge_kib_of_one_op(None, 4 << 20).unwrap(), 0);
    }

    /// Each thread's first malloc reserves an arena; placed in the middle of a free range,
    /// the places were taken by those arenas from about 12 threads on.
    #[test]
    fn sixteen_threads_each_map_where_asked() {
        let places = Places::side_by_side(16, 16 << 20);
        let all = crate::thread::churn(16, places, 2, Duration::from_secs(30)).unwrap();
        for (i, c) in all.iter().enumerate() {
            assert_eq!((c.ops, c.where_asked), (2, 2), "worker {i}");
        }
    }

    #[test]
    fn a_report_survives_its_words() {
        let r = Report { checksum: 1, numbers: 2, tasks: 3, start_ns: 4, end_ns: 5, cpus: 6 };
        assert_eq!(Report::from_words(r.to_words()), r);
    }
}
