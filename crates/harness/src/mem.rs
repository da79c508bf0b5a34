//! Memory for the rows, written once: mappings made by hand (mmap(2)), a private buffer whose
//! pages a fork shares copy-on-write or a shared one that parent and child both see after a
//! fork, with the advice and readings the rows take on them (huge pages, populating); and
//! [`PageBuf`], a page-aligned byte buffer from the allocator. One place for every row, so
//! that the `unsafe` of it is written and reviewed once.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use anyhow::{Context, Result, ensure};
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap_anonymous, munmap};

/// Who sees the writes to a mapping after a fork(2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Sharing {
    /// MAP_PRIVATE: after a fork each process gets its own copy of a page on its first write.
    Private,
    /// MAP_SHARED: parent and child see one set of physical pages.
    Shared,
}

impl Sharing {
    /// The mmap(2) flag's name, as a fact says it.
    pub fn flag(self) -> &'static str {
        match self {
            Sharing::Private => "MAP_PRIVATE",
            Sharing::Shared => "MAP_SHARED",
        }
    }
}

/// An anonymous mapping of whole pages, read and write, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    start: NonNull<libc::c_void>,
    len: usize,
}

// Safety: a Mapping is plain memory; who may touch it when is up to its users, who reach it
// only through raw pointers and atomics.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

/// Asks for base pages only on `len` bytes at `start` (MADV_NOHUGEPAGE, madvise(2)), for
/// [`Mapping`] and for a shared-memory segment (`shm::Segment`). Advice is not proof: whether
/// a huge page backs it is read from smaps ([`huge_kib_at`]).
///
/// # Safety
/// `start..start + len` must be whole pages of a mapping of this process, from its start.
pub unsafe fn no_huge_pages_at(start: *mut u8, len: usize) -> Result<()> {
    let start = NonNull::new(start.cast()).context("a null mapping")?;
    // Safety: the caller's promise; the advice changes no contents.
    unsafe { madvise(start, len, MmapAdvise::MADV_NOHUGEPAGE) }.context("madvise MADV_NOHUGEPAGE")
}

/// KiB of the mapping that holds `address` backed by transparent huge pages now, private or
/// shared memory alike: AnonHugePages + ShmemPmdMapped + FilePmdMapped of its area in
/// /proc/self/smaps (proc(5)). The same reading for both sides of an experiment.
pub fn huge_kib_at(address: *const u8) -> Result<u64> {
    Ok(seen_at(address)?.huge_kib)
}

/// What /proc/self/smaps shows of the mapping that holds `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    /// KiB backed by transparent huge pages ([`huge_kib_at`]).
    pub huge_kib: u64,
    /// MAP_SHARED or MAP_PRIVATE: the `s` or `p` of its permissions.
    pub sharing: Sharing,
}

/// The mapping that holds `address`, as /proc/self/smaps shows it now.
pub fn seen_at(address: *const u8) -> Result<Seen> {
    let at = address as u64;
    let maps = procfs::process::Process::myself().and_then(|p| p.smaps()).context("reading /proc/self/smaps")?;
    let map = maps.iter().find(|m| m.address.0 <= at && at < m.address.1).context("the mapping is not in smaps")?;
    let field = |name: &str| map.extension.map.get(name).copied().unwrap_or(0);
    let shared = map.perms.contains(procfs::process::MMPermissions::SHARED);
    Ok(Seen {
        huge_kib: (field("AnonHugePages") + field("ShmemPmdMapped") + field("FilePmdMapped")) / 1024,
        sharing: if shared { Sharing::Shared } else { Sharing::Private },
    })
}

/// Maps every page of `bytes` in, writable, with one madvise(2) call (MADV_POPULATE_WRITE,
/// Linux 5.14) instead of a page fault per page when each is first written. An older kernel
/// refuses the advice with EINVAL: there a byte of every page is written instead (zero, or
/// what it held: the contents do not change), which maps the same pages in, a fault each.
pub fn populate(bytes: &mut [u8]) -> Result<()> {
    let Some(start) = NonNull::new(bytes.as_mut_ptr().cast()) else { return Ok(()) };
    // Safety: advice on memory we hold mutably; populating changes no contents.
    match unsafe { madvise(start, bytes.len(), MmapAdvise::MADV_POPULATE_WRITE) } {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            for at in (0..bytes.len()).step_by(page_size()) {
                // Volatile, so that the compiler keeps a write it could see as useless.
                // Safety: `at` lies inside `bytes`, which we hold mutably.
                unsafe { bytes.as_mut_ptr().add(at).write_volatile(bytes[at]) };
            }
            Ok(())
        }
        Err(e) => Err(e).context("madvise MADV_POPULATE_WRITE"),
    }
}

/// Maps the pages of all `buffers` in ([`populate`]), a page of each in turn, so that the
/// buffers draw their pages from the same stretches of free memory: the same mix of physical
/// memory for each, and no long physically contiguous run for any (why it matters on a VM:
/// docs/use-cases.md, "Placement"). Every buffer must start on a page.
pub fn populate_in_turns(buffers: &mut [&mut [u8]]) -> Result<()> {
    let page = page_size();
    ensure!(
        buffers.iter().all(|b| b.as_ptr() as usize % page == 0),
        "populate_in_turns: every buffer must start on a page"
    );
    let lens: Vec<usize> = buffers.iter().map(|b| b.len()).collect();
    for (i, range) in turns(lens, page) {
        populate(&mut buffers[i][range])?;
    }
    Ok(())
}

/// The order of [`populate_in_turns`]: (buffer, bytes) a page at a time, the first page of
/// every buffer, then the second of every buffer that has one, and so on.
fn turns(lens: Vec<usize>, page: usize) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
    let longest = lens.iter().copied().max().unwrap_or(0);
    (0..longest).step_by(page.max(1)).flat_map(move |at| {
        let turn: Vec<_> = lens
            .iter()
            .enumerate()
            .filter(|&(_, &len)| at < len)
            .map(|(i, &len)| (i, at..len.min(at + page)))
            .collect();
        turn.into_iter()
    })
}

/// The size of a page (sysconf(_SC_PAGESIZE)).
pub fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |p| p as usize)
}

/// The start of a range of `len` bytes of this address space that is free now (an mmap(2) of
/// it with no access and no memory reserved, unmapped at once): where the kernel puts a
/// mapping that large, for [`Mapping::anonymous_at`] hints. Nothing holds it afterwards.
pub fn free_range(len: usize) -> Result<usize> {
    let length = NonZeroUsize::new(len).context("an empty range")?;
    let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE;
    // Safety: a fresh mapping at an address the kernel picks, unmapped right away; no
    // existing memory is affected.
    let start = unsafe { mmap_anonymous(None, length, ProtFlags::PROT_NONE, flags) }
        .with_context(|| format!("mmap PROT_NONE of {len} bytes"))?;
    // Safety: exactly the range mapped just above.
    unsafe { munmap(start, len) }.context("munmap")?;
    Ok(start.as_ptr() as usize)
}

impl Mapping {
    /// Maps at least `bytes`, rounded up to whole pages (at least one), zero-filled.
    pub fn anonymous(bytes: usize, sharing: Sharing) -> Result<Mapping> {
        Mapping::anonymous_at(None, bytes, sharing)
    }

    /// [`Mapping::anonymous`] at `hint` if that range is free (mmap(2)'s hint, not
    /// MAP_FIXED: elsewhere if it is not; [`Mapping::as_ptr`] says where it went).
    pub fn anonymous_at(hint: Option<usize>, bytes: usize, sharing: Sharing) -> Result<Mapping> {
        let page = page_size();
        let len = bytes.div_ceil(page).max(1) * page;
        let flags = match sharing {
            Sharing::Private => MapFlags::MAP_PRIVATE,
            Sharing::Shared => MapFlags::MAP_SHARED,
        };
        let length = NonZeroUsize::new(len).context("an empty mapping")?;
        // Safety: a fresh anonymous mapping at an address the kernel picks (mmap(2)); no
        // existing memory is affected.
        let at = hint.and_then(NonZeroUsize::new);
        let start = unsafe { mmap_anonymous(at, length, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, flags) }
            .with_context(|| format!("mmap {flags:?}|MAP_ANONYMOUS of {len} bytes"))?;
        Ok(Mapping { start, len })
    }

    /// Asks for base pages only (MADV_NOHUGEPAGE, madvise(2)). Advice is not proof: whether a
    /// huge page backs it is read from smaps ([`Mapping::huge_kib`]).
    pub fn no_huge_pages(&self) -> Result<()> {
        // Safety: our own mapping, whole pages from its start.
        unsafe { no_huge_pages_at(self.as_ptr(), self.len) }
    }

    /// Keeps the mapping out of every later fork(2) of this process (MADV_DONTFORK,
    /// madvise(2)): a fork write-protects every private page the child inherits, even in the
    /// parent, whose next write to each then faults; and it copies their page-table entries.
    /// A mapping no child inherits is left alone. For the thread side of an experiment whose
    /// process side forks in turns with it.
    pub fn dont_fork(&self) -> Result<()> {
        // Safety: advice on our own mapping, whole pages; it changes no contents, only what a
        // child gets (nothing of this range).
        unsafe { madvise(self.start, self.len, MmapAdvise::MADV_DONTFORK) }.context("madvise MADV_DONTFORK")
    }

    /// KiB of this mapping backed by transparent huge pages now ([`huge_kib_at`]).
    pub fn huge_kib(&self) -> Result<u64> {
        huge_kib_at(self.as_ptr())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.start.as_ptr().cast()
    }

    /// The 32-bit word at `offset` bytes, for futexes and flags that several tasks share.
    pub fn word(&self, offset: usize) -> Result<&AtomicU32> {
        ensure!(offset % 4 == 0 && offset + 4 <= self.len, "word offset {offset} outside a mapping of {}", self.len);
        // Safety: in bounds and 4-aligned (the mapping is page-aligned); the memory lives as
        // long as `self`, and every access to the word goes through atomics.
        Ok(unsafe { AtomicU32::from_ptr(self.as_ptr().add(offset).cast()) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Safety: we mapped exactly this range and no reference into it outlives `self`.
        let _ = unsafe { munmap(self.start, self.len) };
    }
}

/// One 4 KiB block, aligned to 4 KiB, of a [`PageBuf`]: a page on x86-64 and most of arm64's
/// kernels (a larger page only makes the alignment less than a page, still the same in every
/// process and run).
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; 4096]);

/// A zeroed byte buffer that starts on a page boundary, whatever the allocator would have
/// given: a copy between two such buffers, or into or out of the kernel's page-aligned pipe
/// buffers, runs at the same alignment in every process and every run. (A `Vec<u8>` of 1 MiB
/// starts 16 bytes into a fresh mapping or anywhere in the heap, by the allocator's history,
/// and the kernel's copies ran up to 13 % slower at some of those places.)
#[derive(Clone, Default)]
pub struct PageBuf {
    blocks: Vec<Block>,
    /// Bytes in use; never more than the blocks hold (`resize` keeps it so).
    len: usize,
}

impl PageBuf {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> PageBuf {
        let mut buf = PageBuf::default();
        buf.resize(len);
        buf
    }

    /// Makes it `len` bytes long; bytes added are zero.
    pub fn resize(&mut self, len: usize) {
        if len > self.len {
            // Bytes past the old length in its last block may be stale: clear them.
            let (start, end) = (self.len, len.min(self.blocks.len() * 4096));
            self.bytes_mut(end)[start..].fill(0);
        }
        self.blocks.resize(len.div_ceil(4096), Block([0; 4096]));
        self.len = len;
    }

    fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.blocks.len() * 4096);
        // Safety: the blocks are `len` or more initialised bytes in one allocation we hold
        // mutably, and bytes have no alignment or validity rules.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast(), len) }
    }
}

impl std::ops::Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        debug_assert!(self.len <= self.blocks.len() * 4096);
        // Safety: as in bytes_mut, shared; `len` never exceeds the blocks (see the field).
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast(), self.len) }
    }
}

impl std::ops::DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.bytes_mut(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// How many pages of `m` are resident (mincore(2)): of this mapping alone, where smaps
    /// would count the whole area a neighbouring mapping may have been merged into.
    fn resident_pages(m: &Mapping) -> usize {
        let mut vec = vec![0u8; m.len().div_ceil(page_size())];
        // Safety: our own mapping; `vec` has a byte per page of it.
        assert_eq!(unsafe { libc::mincore(m.as_ptr().cast(), m.len(), vec.as_mut_ptr()) }, 0);
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn a_mapping_asked_for_at_a_free_range_lands_there() {
        // The middle of a large free range: other tests' mappings, made meanwhile on other
        // threads, go to the top of the highest free range that fits them.
        let at = free_range(1 << 30).unwrap() + (512 << 20);
        let m = Mapping::anonymous_at(Some(at), 4 << 20, Sharing::Private).unwrap();
        assert_eq!(m.as_ptr() as usize, at);
        // A hint where something already is: the kernel puts the mapping elsewhere.
        let elsewhere = Mapping::anonymous_at(Some(at), 4096, Sharing::Private).unwrap();
        assert_ne!(elsewhere.as_ptr() as usize, at);
    }

    #[test]
    fn a_page_buf_starts_on_a_page_and_reads_zero_where_it_grew() {
        let mut buf = PageBuf::zeroed(5000);
        assert_eq!(buf.as_ptr() as usize % 4096, 0, "page-aligned");
        assert_eq!(buf.len(), 5000);
        assert!(buf.iter().all(|&b| b == 0));
        buf.fill(9);
        buf.resize(10);
        assert_eq!(&buf[..], &[9; 10]);
        // Grown again inside its old blocks and past them: the new bytes are zero, not stale.
        buf.resize(3 << 20);
        assert_eq!(buf.as_ptr() as usize % 4096, 0, "still page-aligned after growing");
        assert_eq!(&buf[..10], &[9; 10]);
        assert!(buf[10..].iter().all(|&b| b == 0), "stale bytes showed through");
    }

    #[test]
    fn populate_maps_every_page_in_and_keeps_the_contents() {
        let m = Mapping::anonymous(1 << 20, Sharing::Private).unwrap();
        m.no_huge_pages().unwrap();
        // Safety: our own mapping, not otherwise referred to while the slice lives.
        let bytes = unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), m.len()) };
        bytes[4096] = 7;
        let pages = m.len() / page_size();
        assert!(resident_pages(&m) < pages, "not all present before");
        populate(bytes).unwrap();
        assert_eq!(resident_pages(&m), pages, "every page present after");
        assert_eq!(bytes[4096], 7);
        assert_eq!(huge_kib_at(m.as_ptr()).unwrap(), 0, "base pages were asked for");
    }

    #[test]
    fn seen_at_tells_a_shared_mapping_from_a_private_one() {
        for sharing in [Sharing::Private, Sharing::Shared] {
            let m = Mapping::anonymous(4 * page_size(), sharing).unwrap();
            // Anywhere inside the mapping, not only at its start.
            // Safety: inside the mapping.
            let seen = seen_at(unsafe { m.as_ptr().add(page_size()) }).unwrap();
            assert_eq!(seen.sharing, sharing, "{}", sharing.flag());
        }
    }

    #[test]
    fn populate_in_turns_maps_every_page_of_buffers_of_any_length() {
        let (a, b) = (
            Mapping::anonymous(5 * page_size(), Sharing::Private).unwrap(),
            Mapping::anonymous(2 * page_size(), Sharing::Shared).unwrap(),
        );
        // Safety: our own mappings, not otherwise referred to while the slices live.
        let (sa, sb) = unsafe {
            (std::slice::from_raw_parts_mut(a.as_ptr(), a.len()), std::slice::from_raw_parts_mut(b.as_ptr(), b.len()))
        };
        sa[2 * page_size() + 5] = 3;
        // The shorter buffer ends inside a page: that page is mapped in too.
        populate_in_turns(&mut [sa, &mut sb[..page_size() + 1]]).unwrap();
        assert_eq!((resident_pages(&a), resident_pages(&b)), (5, 2));
        // Safety: inside the mapping.
        assert_eq!(unsafe { a.as_ptr().add(2 * page_size() + 5).read() }, 3, "contents kept");
        // A buffer that does not start on a page is refused.
        // Safety: as above.
        let off = unsafe { std::slice::from_raw_parts_mut(a.as_ptr().add(1), 10) };
        assert!(populate_in_turns(&mut [off]).is_err());
    }

    #[test]
    fn populate_in_turns_takes_a_page_of_each_buffer_in_turn() {
        let order: Vec<_> = turns(vec![3 * 10, 10 + 1, 0], 10).collect();
        assert_eq!(order, vec![(0, 0..10), (1, 0..10), (0, 10..20), (1, 10..11), (0, 20..30)]);
    }

    #[test]
    fn a_mapping_is_whole_pages_and_its_words_are_bounded() {
        let m = Mapping::anonymous(10, Sharing::Shared).unwrap();
        assert_eq!(m.len(), page_size());
        m.word(0).unwrap().store(7, Ordering::Relaxed);
        assert_eq!(m.word(0).unwrap().load(Ordering::Relaxed), 7);
        assert!(m.word(m.len()).is_err() && m.word(2).is_err());
    }

    #[test]
    fn no_huge_pages_is_observed_in_smaps() {
        let m = Mapping::anonymous(8 << 20, Sharing::Private).unwrap();
        m.no_huge_pages().unwrap();
        for i in (0..m.len()).step_by(page_size()) {
            // Safety: inside the mapping.
            unsafe { m.as_ptr().add(i).write_volatile(1) };
        }
        assert_eq!(m.huge_kib().unwrap(), 0);
    }
}
