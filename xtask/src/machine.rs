//! The short machine header above the summary: timings only mean something beside it.

use procfs::Current;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub logical_cpus: usize,
    pub kernel: String,
    pub virtualization: String,
}

impl Machine {
    pub fn here() -> Machine {
        let cpuinfo = procfs::CpuInfo::current().ok();
        let cpu_model =
            cpuinfo.as_ref().and_then(|c| c.model_name(0).map(str::to_string)).unwrap_or_else(|| "unknown".to_string());
        let hypervisor_flag = cpuinfo.as_ref().and_then(|c| c.flags(0)).is_some_and(|f| f.contains(&"hypervisor"));
        Machine {
            cpu_model,
            logical_cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".to_string()),
            virtualization: virtualization(hypervisor_flag),
        }
    }

    pub fn header(&self) -> String {
        format!(
            "machine: {}, {} logical CPUs, Linux {}, {}\n",
            self.cpu_model, self.logical_cpus, self.kernel, self.virtualization
        )
    }
}

/// What systemd-detect-virt says (a virtual machine and/or a container), or else what the
/// CPU flags and DMI say.
fn virtualization(hypervisor_flag: bool) -> String {
    let detect = |flag: &str| {
        let out = std::process::Command::new("systemd-detect-virt").arg(flag).output().ok()?;
        let what = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!what.is_empty() && what != "none").then_some(what)
    };
    let product = std::fs::read_to_string("/sys/class/dmi/id/product_name").unwrap_or_default();
    let vm = match (detect("--vm"), hypervisor_flag, product.trim()) {
        (Some(kind), _, _) => format!("virtual machine ({kind})"),
        (None, true, "") => "virtual machine (hypervisor CPU flag)".to_string(),
        (None, true, p) => format!("virtual machine ({p})"),
        (None, false, _) => "no hypervisor flag".to_string(),
    };
    match detect("--container") {
        Some(c) => format!("{vm}, in a container ({c})"),
        None => vm,
    }
}
