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
pub const MEMORY_ROOM: u64 = 32 << 20;

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

/// How far the host's own job counts.
const HOST_JOB_N: u64 = 10_000;

/// The host's own work, done once the untrusted code has been dealt with: the sum of the
/// squares below [`HOST_JOB_N`], added up one by one.
pub fn host_job() -> u64 {
    (0..std::hint::black_box(HOST_JOB_N)).map(|i| i * i).sum()
}

/// What [`host_job`] must come to, from the closed form (n - 1) n (2n - 1) / 6: a result
/// that matches shows the host really did its work to the end.
pub fn host_job_expected() -> u64 {
    let n = HOST_JOB_N;
    (n - 1) * n * (2 * n - 1) / 6
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

/// The untrusted code itself, the same on both sides: it tries to read the host's secret at
/// `address` (where the host keeps it), hands over what it found, and runs away.
pub fn untrusted_code(runaway: Runaway, address: usize) -> Result<()> {
    harness::deliver("peeked", &peek(address));
    runaway.run()
}

/// A secret as an argument: 32 hex digits.
pub fn secret_to_arg(secret: &[u8; 16]) -> String {
    secret.iter().map(|b| format!("{b:02x}")).collect()
}

/// The secret back from [`secret_to_arg`].
pub fn secret_from_arg(arg: &str) -> Result<[u8; 16]> {
    anyhow::ensure!(arg.len() == 32, "a secret is 32 hex digits: {arg:?}");
    let mut s = [0u8; 16];
    for (i, b) in s.iter_mut().enumerate() {
        *b = u8::from_str_radix(&arg[2 * i..2 * i + 2], 16).context("SECRET")?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_job_adds_up_and_a_secret_survives_its_argument() {
        assert_eq!(host_job(), host_job_expected());
        let s: [u8; 16] = std::array::from_fn(|i| (i * 17) as u8);
        assert_eq!(secret_from_arg(&secret_to_arg(&s)).unwrap(), s);
    }
}
