//! Untrusted code for the sandbox: two runaways and a peek at someone else's memory.
//!
//! Both sides run exactly these functions; only where they run differs (a child process with
//! limits of its own, or a thread of a host that has to be limited as a whole).

use anyhow::{Context, Result, bail};
use nix::sys::resource::{Resource, setrlimit};

/// What the untrusted code does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runaway {
    /// Allocates and touches memory without bound.
    Memory,
    /// Loops forever.
    Cpu,
}

impl Runaway {
    pub const ALL: [Runaway; 2] = [Runaway::Memory, Runaway::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            Runaway::Memory => "memory",
            Runaway::Cpu => "cpu",
        }
    }

    pub fn parse(name: &str) -> Option<Runaway> {
        Runaway::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Runs away; returns only if something stopped it with an error instead of a signal.
    pub fn run(self) -> Result<()> {
        match self {
            Runaway::Memory => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touched, so that the pages are really taken, not only reserved.
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            Runaway::Cpu => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
        }
    }
}

/// Address space the untrusted code may take beyond what its process has mapped already.
pub const MEMORY_ROOM: u64 = 128 << 20;

/// Seconds of CPU time before SIGXCPU (RLIMIT_CPU counts whole seconds).
pub const CPU_SECONDS: u64 = 1;

/// Limits the calling process, every thread in it included: address space (RLIMIT_AS) to what
/// it has mapped now plus [`MEMORY_ROOM`], CPU time (RLIMIT_CPU) to [`CPU_SECONDS`] (the hard
/// limit a second later, when the kernel sends SIGKILL). See setrlimit(2).
pub fn limit_this_process() -> Result<()> {
    let status = procfs::process::Process::myself().and_then(|p| p.status()).context("reading /proc/self/status")?;
    let mapped = status.vmsize.context("no VmSize in /proc/self/status")? * 1024;
    let cap = mapped + MEMORY_ROOM;
    setrlimit(Resource::RLIMIT_AS, cap, cap).context("setrlimit(RLIMIT_AS)")?;
    setrlimit(Resource::RLIMIT_CPU, CPU_SECONDS, CPU_SECONDS + 1).context("setrlimit(RLIMIT_CPU)")?;
    // A runaway that is stopped must leave no core file behind.
    harness::no_core_dump();
    Ok(())
}

/// The host's own work, done once the untrusted code has been dealt with.
pub fn host_job() -> u64 {
    (0..10_000u64).fold(1, |acc, i| acc.wrapping_mul(6364136223846793005).wrapping_add(i))
}

/// A secret the host keeps in its memory.
pub fn secret() -> Result<[u8; 16]> {
    let mut s = [0u8; 16];
    // Safety: getrandom(2) fills our buffer of the given length.
    let n = unsafe { libc::getrandom(s.as_mut_ptr().cast(), s.len(), 0) };
    if n != 16 {
        bail!("getrandom: {}", std::io::Error::last_os_error());
    }
    Ok(s)
}

/// The untrusted code's attempt: read 16 bytes at `address` of the address space it runs in.
/// process_vm_readv(2) on its own pid reports an address that is not mapped as EFAULT instead
/// of crashing. `Err` with the reason when nothing could be read.
pub fn peek(address: usize) -> std::result::Result<[u8; 16], String> {
    let mut out = [0u8; 16];
    let local = libc::iovec { iov_base: out.as_mut_ptr().cast(), iov_len: out.len() };
    let remote = libc::iovec { iov_base: address as *mut libc::c_void, iov_len: out.len() };
    // Safety: the kernel checks the remote range and writes only into our 16-byte buffer.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == 16 { Ok(out) } else { Err(std::io::Error::last_os_error().to_string()) }
}

/// A separately started process's entry: peek at an address given as an argument and deliver
/// what was there (or why nothing was).
pub fn peek_child(args: &[String]) -> Result<()> {
    let [address] = args else { bail!("usage: peek ADDRESS") };
    let address = usize::from_str_radix(address.trim_start_matches("0x"), 16).context("ADDRESS")?;
    harness::deliver("peeked", &peek(address));
    Ok(())
}
