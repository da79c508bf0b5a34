//! Idle CPUs kept awake while a row measures.
//!
//! A CPU with nothing to run goes idle, and the deeper it sleeps, the longer a wake-up from
//! another CPU takes: tens of µs out of a deep C-state, or, on a virtual machine whose idle
//! vCPUs halt, a trip through the host. On the development VM a pipe switch across CPUs took
//! 20.5 µs with the vCPUs halting and 2.0 µs with them kept awake (docs/switching.md): the
//! same for processes and threads, and ten times the difference between them in every
//! experiment that wakes another CPU. So, as cyclictest does, a row asks the kernel for a
//! wake-up latency of 0 µs while it runs (a PM QoS request on /dev/cpu_dma_latency): the
//! cpuidle governor then keeps idle CPUs in their shallowest state (on x86, POLL: they spin).
//! The request lasts while the file is open, so it ends with the row however the row ends,
//! SIGKILL included: nothing is left behind. Forked children share the open file until they
//! exit; the bare children of the concurrency row keep it (closing it would add a system call
//! to every process start that a thread start does not make), which holds the same request a
//! moment longer, never past the row's end (they die with it).
//!
//! Writing the request needs root, and it only works through a cpuidle driver: without one
//! the kernel's default idle halts the CPU whatever is asked. Without either, or with
//! `PVT_LET_CPUS_IDLE` set (to anything), the row measures with idle CPUs free to sleep, and
//! its report says so (`idle_cpus`).

use std::fs::File;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// The variable that leaves idle CPUs free to sleep.
pub const LET_IDLE_ENV: &str = "PVT_LET_CPUS_IDLE";

const QOS: &str = "/dev/cpu_dma_latency";
const CPUIDLE: &str = "/sys/devices/system/cpu/cpuidle/current_driver";
const SHALLOWEST: &str = "/sys/devices/system/cpu/cpu0/cpuidle/state0/name";
/// What the file reads when no request constrains the CPUs (PM_QOS_DEFAULT_VALUE, 2000 s).
const NO_CONSTRAINT_US: i32 = 2_000_000_000;

/// Whether idle CPUs were kept awake while the row measured, and how or why not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleCpus {
    pub kept_awake: bool,
    pub how: String,
}

/// A held request: idle CPUs stay awake until this is dropped (or the process ends).
pub struct KeptAwake {
    _request: Option<File>,
    pub status: IdleCpus,
}

/// Asks for a 0 µs wake-up latency, unless `PVT_LET_CPUS_IDLE` is set or there is no cpuidle
/// driver to honour it, and reads back the latency the kernel now grants all CPUs: the
/// request is in force only if that is 0.
pub fn keep_awake() -> KeptAwake {
    if std::env::var_os(LET_IDLE_ENV).is_some() {
        return not_kept(format!("free to sleep: {LET_IDLE_ENV} is set{}", held_by_others()));
    }
    let driver = std::fs::read_to_string(CPUIDLE).map(|d| d.trim().to_string()).unwrap_or_default();
    if driver.is_empty() || driver == "none" {
        return not_kept(
            "free to sleep: no cpuidle driver, so the kernel's default idle halts a CPU whatever latency is asked"
                .to_string(),
        );
    }
    let mut file = match File::options().read(true).write(true).open(QOS) {
        Ok(f) => f,
        Err(e) => return not_kept(format!("free to sleep: {QOS}: {e}")),
    };
    if let Err(e) = file.write_all(&0i32.to_ne_bytes()) {
        return not_kept(format!("free to sleep: writing {QOS}: {e}"));
    }
    match granted(&mut file) {
        Ok(0) => {
            let state = std::fs::read_to_string(SHALLOWEST).map(|s| s.trim().to_string()).unwrap_or_default();
            let how =
                format!("kept awake: {QOS} held at 0 µs while measuring, so idle CPUs stay in {state} ({driver})");
            KeptAwake { _request: Some(file), status: IdleCpus { kept_awake: true, how } }
        }
        Ok(us) => not_kept(format!("free to sleep: {QOS} read back {us} µs after asking for 0")),
        Err(e) => not_kept(format!("free to sleep: reading back {QOS}: {e}")),
    }
}

/// The latency all CPUs are held to now, from an open request file.
fn granted(file: &mut File) -> std::io::Result<i32> {
    let mut value = [0u8; 4];
    file.read_exact(&mut value)?;
    Ok(i32::from_ne_bytes(value))
}

/// When this row asks for nothing, whether another program holds idle CPUs awake anyway (a
/// parallel row, a tuning daemon): opening the file only to read adds no constraint.
fn held_by_others() -> String {
    match File::open(QOS).and_then(|mut f| granted(&mut f)) {
        Ok(us) if us < NO_CONSTRAINT_US => {
            format!(", but another program held a request of {us} µs when the row started")
        }
        _ => String::new(),
    }
}

fn not_kept(how: String) -> KeptAwake {
    KeptAwake { _request: None, status: IdleCpus { kept_awake: false, how } }
}
