//! Idle CPUs kept awake while a row measures.
//!
//! A CPU with nothing to run goes idle, and the deeper it sleeps, the longer a wake-up from
//! another CPU takes: tens of µs out of a deep C-state, or, on a virtual machine whose idle
//! vCPUs halt, a trip through the host. On the development VM a pipe switch across CPUs took
//! 20.5 µs with the vCPUs halting and 2.0 µs with them kept awake (docs/switching.md): the
//! same for processes and threads, and ten times the difference between them in every
//! experiment that wakes another CPU. So, as cyclictest does, a row asks the kernel for a
//! wake-up latency of 0 µs while it runs (a PM QoS request on /dev/cpu_dma_latency): idle CPUs
//! then stay in their shallowest state. The request lasts while the file is open, so it ends
//! with the row however the row ends, SIGKILL included: nothing is left behind.
//!
//! Writing the request needs root. Without it, or with `PVT_LET_CPUS_IDLE` set, the row
//! measures with idle CPUs free to sleep, and its report says so (`idle_cpus`).

use std::fs::File;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// The variable that leaves idle CPUs free to sleep.
pub const LET_IDLE_ENV: &str = "PVT_LET_CPUS_IDLE";

const QOS: &str = "/dev/cpu_dma_latency";

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

/// Asks for a 0 µs wake-up latency, unless `PVT_LET_CPUS_IDLE` is set, and reads back the
/// latency the kernel now grants all CPUs: the request is in force only if that is 0.
pub fn keep_awake() -> KeptAwake {
    if std::env::var_os(LET_IDLE_ENV).is_some() {
        return not_kept(format!("free to sleep: {LET_IDLE_ENV} is set"));
    }
    let mut file = match File::options().read(true).write(true).open(QOS) {
        Ok(f) => f,
        Err(e) => return not_kept(format!("free to sleep: {QOS}: {e}")),
    };
    if let Err(e) = file.write_all(&0i32.to_ne_bytes()) {
        return not_kept(format!("free to sleep: writing {QOS}: {e}"));
    }
    let mut granted = [0u8; 4];
    match file.read_exact(&mut granted).map(|()| i32::from_ne_bytes(granted)) {
        Ok(0) => KeptAwake {
            _request: Some(file),
            status: IdleCpus { kept_awake: true, how: format!("kept awake: {QOS} held at 0 µs while measuring") },
        },
        Ok(us) => not_kept(format!("free to sleep: {QOS} read back {us} µs after asking for 0")),
        Err(e) => not_kept(format!("free to sleep: reading back {QOS}: {e}")),
    }
}

fn not_kept(how: String) -> KeptAwake {
    KeptAwake { _request: None, status: IdleCpus { kept_awake: false, how } }
}
