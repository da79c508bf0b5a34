//! The memory both sides write, and how we read what the kernel did with it.
//!
//! process.rs and thread.rs run exactly these functions, so that the only difference between
//! the two versions of an experiment is the mechanism: a forked process or a thread. What a
//! task writes and how it counts its page faults is here, once; so are the ways we read the
//! kernel's accounts: getrusage(2) for page faults, /proc/PID/smaps_rollup for proportional
//! set sizes, /proc/PID/status for the size of the page tables and /proc/meminfo for the
//! kernel's own memory.
//!
//! See also: getrusage(2), proc_pid_smaps(5), proc_pid_status(5), proc_meminfo(5),
//! madvise(2); TLPI 24.2 (fork and copy-on-write).

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use harness::mem::{Mapping, Sharing, page_size};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::pipe2;
use procfs::Current;

use harness::poll::poll_until;

/// The value every private-write experiment starts from.
pub const BEFORE: u64 = 1;
/// The value the writer stores.
pub const WRITTEN: u64 = 2;

/// A value alone on its page. 64 KiB of alignment covers every page size Linux uses (4 KiB
/// to 64 KiB), so no other variable shares the page and a fault on it is a fault for it.
#[repr(C, align(65536))]
pub struct OwnPage {
    pub value: AtomicU64,
}

impl OwnPage {
    pub const fn new(value: u64) -> OwnPage {
        OwnPage { value: AtomicU64::new(value) }
    }

    /// Its virtual address in the calling task's address space.
    pub fn address(&self) -> usize {
        self as *const OwnPage as usize
    }
}

/// A global variable: in the program's data segment, at the same address in every copy of it.
pub static GLOBAL: OwnPage = OwnPage::new(0);

/// What a writer did: where it wrote, what it read back, and the page faults the writes cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Writes {
    pub global_address: usize,
    pub heap_address: usize,
    pub read_back: [u64; 2],
    pub minor_faults: u64,
}

impl Writes {}

/// Writes [`WRITTEN`] into the global and into the heap value, counting the minor page faults
/// of the two stores alone.
pub fn write_both(heap: &OwnPage) -> Result<Writes> {
    // A rehearsal on a page of our own runs the measured code once, so that the faults it
    // causes besides the two stores are out of the way: in a forked child the first write to
    // each stack page faults (it is copy-on-write like the rest), and so does the first run of
    // each page of code (fork copies no page-table entries for file-backed pages).
    let rehearsal = Box::new(OwnPage::new(0));
    store_both(&rehearsal, &rehearsal)?;
    let faults = store_both(&GLOBAL, heap)?;
    Ok(Writes {
        global_address: GLOBAL.address(),
        heap_address: heap.address(),
        read_back: [GLOBAL.value.load(Ordering::Relaxed), heap.value.load(Ordering::Relaxed)],
        minor_faults: faults,
    })
}

/// Stores [`WRITTEN`] into both values; returns the minor faults the two stores caused.
#[inline(never)]
fn store_both(global: &OwnPage, heap: &OwnPage) -> Result<u64> {
    let before = minor_faults()?;
    global.value.store(WRITTEN, Ordering::Relaxed);
    heap.value.store(WRITTEN, Ordering::Relaxed);
    Ok(minor_faults()? - before)
}

/// The minor page faults of the calling thread so far (getrusage(2), RUSAGE_THREAD): faults
/// the kernel resolved without I/O, such as a copy-on-write copy or a fresh zero page.
pub fn minor_faults() -> Result<u64> {
    Ok(harness::Usage::of_thread()?.minor_faults as u64)
}

/// An anonymous private buffer whose every page is present: written once by its owner.
/// Every access goes through volatile reads and writes of single bytes, and the experiments
/// let one task at a time write it (the others wait in join or waitpid).
pub struct Buffer {
    mapping: Mapping,
    page: usize,
}

/// The first byte of page `i` after the owner's fill.
fn fill(i: usize) -> u8 {
    (i % 251) as u8
}

/// The checksum of a buffer of `pages` pages after `passes` passes of [`Buffer::write_every_page`].
pub fn expected_checksum(pages: usize, passes: u64) -> u64 {
    (0..pages).map(|i| (fill(i) as u64 + passes) % 256).sum()
}

/// One timed run of passes over every page of a buffer, by one writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pass {
    /// How many times the writer went over every page, back to back.
    pub passes: u64,
    /// How long the write loops took, and nothing else.
    pub took_ns: u64,
    /// How long the first of them took: the one a new writer makes with its caches cold.
    pub first_pass_ns: u64,
    pub minor_faults: u64,
    /// The sum of the first byte of every page, after the last pass.
    pub checksum: u64,
    /// KiB of the buffer backed by transparent huge pages after the pass, as the writer's
    /// /proc/self/smaps shows it (AnonHugePages): 0 when the kernel kept to base pages.
    pub huge_kib: u64,
}

impl Buffer {
    /// Maps `bytes` (rounded up to whole pages) and writes every page once, so that each is
    /// present and private to this process.
    pub fn filled(bytes: usize) -> Result<Buffer> {
        let mapping = Mapping::anonymous(bytes, Sharing::Private)?;
        // Base pages only: with transparent huge pages one write could stand for 512 pages,
        // and whether the kernel then copies 2 MiB or splits the huge page depends on its
        // version. Advice is not proof: every pass reads back what backs the buffer.
        mapping.no_huge_pages()?;
        let buffer = Buffer { mapping, page: page_size() };
        for i in 0..buffer.pages() {
            // Safety: i * page < len, inside our mapping.
            unsafe { buffer.byte(i).write_volatile(fill(i)) };
        }
        Ok(buffer)
    }

    /// Keeps the buffer out of every later fork(2) of this process (MADV_DONTFORK,
    /// madvise(2)): a fork write-protects every private page that the child inherits, even in
    /// the parent, and the parent's next write to each then faults to make it writable again.
    /// A buffer no child inherits is left alone.
    pub fn kept_from_forks(self) -> Result<Buffer> {
        self.mapping.dont_fork()?;
        Ok(self)
    }

    pub fn pages(&self) -> usize {
        self.mapping.len() / self.page
    }

    pub fn page(&self) -> usize {
        self.page
    }

    fn byte(&self, page: usize) -> *mut u8 {
        debug_assert!(page < self.pages());
        // Safety (of the arithmetic): page * self.page < len, so the result stays inside
        // the mapping.
        unsafe { self.mapping.as_ptr().add(page * self.page) }
    }

    /// Adds one to the first byte of every page, timing the loop and counting the minor faults
    /// it caused. One write per page, so that the cost per page is the cost of whatever the
    /// kernel must do on the first write to it: nothing, or a copy.
    pub fn write_every_page(&self) -> Result<Pass> {
        self.write_every_page_times(1)
    }

    /// [`Buffer::write_every_page`] `passes` times over, back to back, timed as one loop.
    pub fn write_every_page_times(&self, passes: u64) -> Result<Pass> {
        ensure!(passes >= 1, "a run makes at least one pass");
        // A rehearsal on a page of our own, for the reasons given in `write_both`.
        Buffer::filled(self.page)?.write_every_page_counted(1)?;
        self.write_every_page_counted(passes)
    }

    #[inline(never)]
    fn write_every_page_counted(&self, passes: u64) -> Result<Pass> {
        let pages = self.pages();
        let faults_before = minor_faults()?;
        let start = Instant::now();
        let mut first = None;
        for _ in 0..passes {
            for i in 0..pages {
                let p = self.byte(i);
                // Safety: `p` is inside our mapping (see `byte`), and only this task writes now.
                unsafe { p.write_volatile(p.read_volatile().wrapping_add(1)) };
            }
            first.get_or_insert_with(|| start.elapsed());
        }
        let took = start.elapsed();
        let faults = minor_faults()? - faults_before;
        Ok(Pass {
            passes,
            took_ns: took.as_nanos() as u64,
            first_pass_ns: first.unwrap_or(took).as_nanos() as u64,
            minor_faults: faults,
            checksum: self.checksum(),
            huge_kib: self.mapping.huge_kib()?,
        })
    }

    /// The sum of the first byte of every page, as this task sees them.
    pub fn checksum(&self) -> u64 {
        // Safety: every byte read is inside our mapping (see `byte`).
        (0..self.pages()).map(|i| unsafe { self.byte(i).read_volatile() } as u64).sum()
    }
}

/// Memory as the kernel accounts it, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Proportional set size of anonymous memory (Pss_Anon): each page divided by the
    /// number of processes that map it, so that summing over processes counts it once.
    pub anon: i64,
    /// Proportional set size of file-backed pages (Pss_File): the program and its libraries,
    /// which are in the page cache once, however many processes map them.
    pub file: i64,
    /// The page tables (VmPTE).
    pub page_tables: i64,
}

impl Usage {
    /// The usage of one process, from /proc/PID/smaps_rollup and /proc/PID/status.
    pub fn of(process: &procfs::process::Process) -> Result<Usage> {
        let pid = process.pid;
        let rollup = process.smaps_rollup().with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
        let map = rollup.memory_map_rollup.0.first().with_context(|| format!("/proc/{pid}/smaps_rollup is empty"))?;
        let field = |name: &str| {
            map.extension
                .map
                .get(name)
                .map(|&b| b as i64)
                .with_context(|| format!("/proc/{pid}/smaps_rollup has no {name} (Linux 5.9 or later)"))
        };
        let status = process.status().with_context(|| format!("reading /proc/{pid}/status"))?;
        let page_tables = status.vmpte.with_context(|| format!("/proc/{pid}/status has no VmPTE"))? as i64 * 1024;
        Ok(Usage { anon: field("Pss_Anon")?, file: field("Pss_File")?, page_tables })
    }

    /// The usage of the calling process.
    pub fn of_self() -> Result<Usage> {
        Usage::of(&procfs::process::Process::myself().context("opening /proc/self")?)
    }

    /// What a worker costs: its anonymous memory and its page tables.
    pub fn counted(self) -> i64 {
        self.anon + self.page_tables
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage { anon: self.anon + o.anon, file: self.file + o.file, page_tables: self.page_tables + o.page_tables }
    }
}

impl std::ops::Sub for Usage {
    type Output = Usage;
    fn sub(self, o: Usage) -> Usage {
        Usage { anon: self.anon - o.anon, file: self.file - o.file, page_tables: self.page_tables - o.page_tables }
    }
}

/// The kernel's own memory for tasks, machine-wide, in bytes (/proc/meminfo): it counts
/// every program's tasks, so a difference of two readings carries other programs' noise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kernel {
    /// Every task's kernel stack (KernelStack).
    pub stacks: i64,
    /// Slab memory the kernel cannot reclaim (SUnreclaim): task, mm and VMA structures and
    /// the like.
    pub slab_unreclaimable: i64,
    /// Every process's page tables (PageTables).
    pub page_tables: i64,
}

impl Kernel {
    /// Reads /proc/meminfo now.
    pub fn now() -> Result<Kernel> {
        let m = procfs::Meminfo::current().context("reading /proc/meminfo")?;
        let field =
            |v: Option<u64>, name: &str| v.map(|b| b as i64).with_context(|| format!("/proc/meminfo has no {name}"));
        Ok(Kernel {
            stacks: field(m.kernel_stack, "KernelStack")?,
            slab_unreclaimable: field(m.s_unreclaim, "SUnreclaim")?,
            page_tables: field(m.page_tables, "PageTables")?,
        })
    }
}

/// How long [`Kernel::steady`] waits between two readings.
const STEADY_STEP: Duration = Duration::from_millis(2);
/// The fall of PageTables between two readings that counts as still falling: four
/// page-table pages.
const STEADY_FALL: i64 = 16 << 10;
/// How many steps in a row without such a fall make the machine steady: 8 ms.
const STEADY_STEPS: u32 = 4;
/// The longest [`Kernel::steady`] waits.
const STEADY_AT_MOST: Duration = Duration::from_secs(1);

/// Watches PageTables reading after reading, for [`Kernel::steady`].
#[derive(Debug)]
struct Steadiness {
    last: i64,
    quiet: u32,
}

impl Steadiness {
    fn new(first: i64) -> Steadiness {
        Steadiness { last: first, quiet: 0 }
    }

    /// Takes the next reading; true once PageTables has fallen by less than [`STEADY_FALL`]
    /// at each of the last [`STEADY_STEPS`] readings (a rise counts as no fall).
    fn next(&mut self, page_tables: i64) -> bool {
        self.quiet = if self.last - page_tables < STEADY_FALL { self.quiet + 1 } else { 0 };
        self.last = page_tables;
        self.quiet >= STEADY_STEPS
    }
}

impl Kernel {
    /// Reads /proc/meminfo once PageTables has stopped falling. The previous run's tasks free
    /// their page tables (and, in the same RCU grace periods, their task structures) after
    /// they were reaped: a host that read its "before" at once, right after the previous
    /// run's 128 worker processes were reaped, saw PageTables fall by 5 MiB while its own
    /// workers started (-42 KiB of page tables per thread, on an AMD EPYC guest). Steady means
    /// no fall of four pages or more over 8 ms, in steps of 2 ms (slab is not watched); the
    /// second value says whether that came within a second.
    pub fn steady() -> Result<(Kernel, bool)> {
        let start = Instant::now();
        let mut last = Kernel::now()?;
        let mut watch = Steadiness::new(last.page_tables);
        loop {
            if start.elapsed() >= STEADY_AT_MOST {
                return Ok((last, false));
            }
            std::thread::sleep(STEADY_STEP);
            last = Kernel::now()?;
            if watch.next(last.page_tables) {
                return Ok((last, true));
            }
        }
    }
}

impl std::ops::Sub for Kernel {
    type Output = Kernel;
    fn sub(self, o: Kernel) -> Kernel {
        Kernel {
            stacks: self.stacks - o.stacks,
            slab_unreclaimable: self.slab_unreclaimable - o.slab_unreclaimable,
            page_tables: self.page_tables - o.page_tables,
        }
    }
}

/// What N idle workers added, as a footprint host measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Added {
    /// Workers the host started.
    pub workers: u64,
    /// Workers asleep in their idle wait when the memory was read: all of them, or the
    /// measurement did not happen.
    pub idle_when_measured: u64,
    /// What the host (and, for processes, every worker) grew by.
    pub usage: Usage,
    /// What the machine's kernel memory grew by, from right before the first worker started
    /// to when all were idle.
    pub kernel: Kernel,
    /// Whether PageTables had stopped falling ([`Kernel::steady`]) when the "before" was read.
    pub kernel_steady: bool,
}

impl Added {
    /// KiB per worker of `bytes`.
    pub fn per_worker_kib(self, bytes: i64) -> f64 {
        bytes as f64 / 1024.0 / self.workers.max(1) as f64
    }

    /// KiB of anonymous memory and page tables per worker: the measured figure.
    pub fn kib_per_worker(self) -> f64 {
        self.per_worker_kib(self.usage.counted())
    }

    /// The measured figure plus each worker's share of the kernel stacks and of the
    /// unreclaimable slab. Not the machine's page tables: VmPTE already counts ours.
    pub fn with_kernel_kib_per_worker(self) -> f64 {
        self.per_worker_kib(self.usage.counted() + self.kernel.stacks + self.kernel.slab_unreclaimable)
    }
}

/// Heap and stack every idle worker touches: a small, typical working memory.
pub const HEAP_TOUCHED: usize = 16 << 10;
pub const STACK_TOUCHED: usize = 16 << 10;

/// How a footprint host starts its workers and lets them go: two pipes. Every worker writes
/// one byte to `ready` once it has touched its memory, then sleeps in read(2) on `release`
/// until the host closes the write end. Processes and threads use the very same gate, so
/// that only the way the workers come to exist differs.
pub struct Gate {
    ready_rx: OwnedFd,
    ready_tx: OwnedFd,
    release_rx: OwnedFd,
    release_tx: Mutex<Option<OwnedFd>>,
}

impl Gate {
    pub fn new() -> Result<Gate> {
        let (ready_rx, ready_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2 for the ready pipe")?;
        let (release_rx, release_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2 for the release pipe")?;
        Ok(Gate { ready_rx, ready_tx, release_rx, release_tx: Mutex::new(Some(release_tx)) })
    }

    /// The descriptors a worker uses: a forked worker must keep them.
    pub fn worker_ends(&self) -> [RawFd; 2] {
        [self.ready_tx.as_raw_fd(), self.release_rx.as_raw_fd()]
    }

    /// A worker's life: touch its heap and stack, say it is ready, sleep until released.
    /// Returns a sum of what it touched, so that nothing is optimised away.
    #[inline(never)]
    pub fn work_then_idle(&self) -> Result<u64> {
        let heap = std::hint::black_box(vec![1u8; HEAP_TOUCHED]);
        let mut stack = [1u8; STACK_TOUCHED];
        std::hint::black_box(&mut stack);
        nix::unistd::write(&self.ready_tx, &[1]).context("write(2) to the ready pipe")?;
        let mut byte = [0u8];
        loop {
            match nix::unistd::read(&self.release_rx, &mut byte) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("read(2) from the release pipe"),
            }
        }
        let page = page_size();
        Ok(heap.iter().step_by(page).chain(stack.iter().step_by(page)).map(|&b| b as u64).sum())
    }

    /// Waits until `workers` workers said they are ready, at most until `deadline` has passed.
    pub fn wait_ready(&self, workers: usize, deadline: Duration) -> Result<()> {
        let mut seen = 0;
        let mut buf = [0u8; 256];
        poll_until(deadline, "the workers to be ready", Duration::ZERO, || {
            // The ready pipe can be waited on: up to a millisecond per look.
            let mut fds = [PollFd::new(self.ready_rx.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(1u8)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(e).context("poll(2) on the ready pipe"),
            }
            match nix::unistd::read(&self.ready_rx, &mut buf) {
                Ok(0) => bail!("the ready pipe closed after {seen} of {workers} workers"),
                Ok(n) => seen += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("read(2) from the ready pipe"),
            }
            Ok((seen >= workers).then_some(()))
        })
        .with_context(|| format!("only {seen} of {workers} workers were ready"))
    }

    /// Lets every worker go: their read(2) on the release pipe returns end of file.
    pub fn release(&self) {
        drop(self.release_tx.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// How many of these tasks sleep (state S in /proc/.../stat): an idle worker waits in read(2).
pub fn sleeping(states: impl Iterator<Item = char>) -> u64 {
    states.filter(|&s| s == 'S').count() as u64
}

/// Waits until `idle()` counts `workers` sleeping workers: a worker that said it is ready may
/// still be on its way into read(2), and its memory is settled only once it sleeps there.
pub fn wait_until_idle(workers: u64, deadline: Duration, mut idle: impl FnMut() -> Result<u64>) -> Result<()> {
    let mut now = 0;
    poll_until(deadline, "the workers to be idle", Duration::from_millis(1), || {
        now = idle()?;
        Ok((now == workers).then_some(()))
    })
    .with_context(|| format!("only {now} of {workers} workers were idle"))
}

/// A hexadecimal address, as people read them.
pub fn hex(address: usize) -> String {
    format!("{address:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pass_adds_one_to_every_page_and_a_writable_buffer_does_not_fault() {
        let b = Buffer::filled(64 * page_size()).unwrap();
        assert_eq!(b.pages(), 64);
        assert_eq!(b.checksum(), expected_checksum(64, 0));
        let first = b.write_every_page().unwrap();
        assert_eq!(first.checksum, expected_checksum(64, 1));
        // The owner filled every page: they are present and writable, nothing to copy.
        assert_eq!(first.minor_faults, 0);
        assert_eq!(first.huge_kib, 0, "MADV_NOHUGEPAGE kept the buffer on base pages");
        // Keeping it out of forks changes nothing for its owner.
        let kept = b.kept_from_forks().unwrap();
        assert_eq!(kept.write_every_page().unwrap().checksum, expected_checksum(64, 2));
        // Three passes in one run: each page three more, counted as three.
        let three = kept.write_every_page_times(3).unwrap();
        assert_eq!((three.passes, three.checksum, three.minor_faults), (3, expected_checksum(64, 5), 0));
    }

    #[test]
    fn steady_means_no_fall_of_four_pages_over_four_readings() {
        let kib = |k: i64| k << 10;
        // Still falling by 5 MiB in steps: never steady.
        let mut w = Steadiness::new(kib(8000));
        assert!(!(1..=20).any(|i| w.next(kib(8000 - 250 * i))));
        // A fall, then flat: steady at the fourth flat reading, not before.
        let mut w = Steadiness::new(kib(8000));
        assert!(!w.next(kib(3000)));
        assert_eq!([kib(3000); 4].map(|r| w.next(r)), [false, false, false, true]);
        // A fall of three pages is no fall; a rise is none either; a fall of four starts over.
        let mut w = Steadiness::new(kib(100));
        assert_eq!(
            [kib(88), kib(400), kib(400), kib(384), kib(384)].map(|r| w.next(r)),
            [false, false, false, false, false]
        );
        assert!([kib(384); 3].map(|r| w.next(r))[2]);
    }

    #[test]
    fn a_steady_reading_comes_within_its_limit() {
        let start = Instant::now();
        let (k, _) = Kernel::steady().unwrap();
        assert!(start.elapsed() >= STEADY_STEP * STEADY_STEPS, "it read before four steps");
        assert!(start.elapsed() < STEADY_AT_MOST + Duration::from_millis(500), "it waited past its limit");
        assert!(k.page_tables > 0, "{k:?}");
    }

    #[test]
    fn the_machine_has_kernel_stacks_and_unreclaimable_slab() {
        let k = Kernel::now().unwrap();
        assert!(k.stacks > 0 && k.slab_unreclaimable > 0 && k.page_tables > 0, "{k:?}");
    }

    #[test]
    fn writing_pages_this_process_already_wrote_costs_no_fault() {
        // The thread side in miniature: the observer's writes make both pages present and
        // writable, so the writer's stores need nothing from the kernel.
        GLOBAL.value.store(BEFORE, Ordering::Relaxed);
        let heap = Box::new(OwnPage::new(BEFORE));
        let w = write_both(&heap).unwrap();
        assert_eq!(w.read_back, [WRITTEN, WRITTEN]);
        assert_eq!(w.global_address, GLOBAL.address());
        assert_eq!(w.minor_faults, 0, "{w:?}");
    }

    #[test]
    fn this_process_has_anonymous_memory_and_page_tables() {
        let u = Usage::of_self().unwrap();
        assert!(u.anon > 0 && u.page_tables > 0, "{u:?}");
    }

    #[test]
    fn released_workers_end() {
        let gate = Gate::new().unwrap();
        std::thread::scope(|s| {
            let w = s.spawn(|| gate.work_then_idle());
            gate.wait_ready(1, Duration::from_secs(5)).unwrap();
            gate.release();
            assert!(w.join().unwrap().unwrap() > 0);
        });
    }
}
