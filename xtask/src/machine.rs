//! The environment above the summary and in the JSON: timings only mean something beside the
//! machine that took them, and these are the things that move switch and fork costs.

use procfs::Current;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub logical_cpus: usize,
    /// The CPUs this run may use (sched_getaffinity), e.g. "0-1".
    pub allowed_cpus: String,
    /// The cgroup's effective cpuset, where there is one.
    pub cpuset: Option<String>,
    pub kernel: String,
    pub virtualization: String,
    /// CPU flags that decide whether a process switch flushes the TLB.
    pub pcid: bool,
    pub invpcid: bool,
    /// Active mitigations (/sys/devices/system/cpu/vulnerabilities, "Mitigation: ..." lines).
    pub mitigations: Vec<String>,
    /// Each active mitigation's line as the kernel wrote it: the method (for spectre_v2, say,
    /// retpolines or IBRS, and whether IBPB runs on a switch between processes) decides what
    /// a switch costs, not only the name.
    pub mitigation_details: std::collections::BTreeMap<String, String>,
    /// Transparent huge pages: the selected mode of `enabled` and of `defrag`.
    pub transparent_hugepages: String,
    /// Whether a virtio balloon reports free pages to the host (VIRTIO_BALLOON_F_REPORTING):
    /// the host then takes back memory the guest freed, and the guest's next use of such a
    /// page faults in the host too. On an AMD EPYC guest, writing 1 GiB of fresh pages took
    /// 1.11 s eight seconds after 8 GiB had been freed (2.1 GiB of it reported), against
    /// 0.39-0.49 s with reporting held off (docs/report.md): the rows that take large amounts
    /// (spawn-vs-size, shared-frame) pay it in their set-up; whether it reaches their timed runs
    /// was not measured (cow-copy's runs did not move with it).
    #[serde(default)]
    pub free_page_reporting: bool,
    /// The smallest free block reported, as an order (2^order pages; 9 is 2 MiB), where the
    /// kernel says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_page_reporting_order: Option<u32>,
    /// What an idle CPU does (the cpuidle driver and governor; for a guest's haltpoll, how
    /// long it polls before it halts): it decides what a wake-up from another CPU costs.
    pub cpu_idle: String,
    /// Whether the rows kept idle CPUs awake while they measured (harness::awake): the first
    /// row that did not, or else the first row's.
    #[serde(default)]
    pub idle_cpus: harness::awake::IdleCpus,
    /// The tightest cgroup limits on this run over our cgroup and its ancestors (v2 or v1);
    /// absent where none is set. CPU as "quota period" in µs (cpu.max's form), pids as a
    /// count, memory in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_cpu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_pids: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_memory: Option<String>,
    pub rustc: String,
    /// Whether the row binaries were built with optimisations (compare always builds --release).
    pub optimized: bool,
}

impl Machine {
    pub fn here(optimized: bool) -> Machine {
        let cpuinfo = procfs::CpuInfo::current().ok();
        let cpu_model =
            cpuinfo.as_ref().and_then(|c| c.model_name(0).map(str::to_string)).unwrap_or_else(|| "unknown".to_string());
        let flags: Vec<String> = cpuinfo
            .as_ref()
            .and_then(|c| c.flags(0))
            .map(|f| f.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default();
        let has = |flag: &str| flags.iter().any(|f| f == flag);
        let mitigations = mitigations();
        Machine {
            cpu_model,
            logical_cpus: cpuinfo.as_ref().map_or(0, |c| c.num_cores()),
            allowed_cpus: harness::cpu::allowed().map(|c| ranges(&c)).unwrap_or_else(|e| format!("unknown ({e:#})")),
            cpuset: cgroup_value("cpuset", &["cpuset.cpus.effective", "cpuset.effective_cpus"]),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".to_string()),
            virtualization: virtualization(has("hypervisor")),
            pcid: has("pcid"),
            invpcid: has("invpcid"),
            mitigations: mitigations.keys().cloned().collect(),
            mitigation_details: mitigations,
            transparent_hugepages: transparent_hugepages(),
            free_page_reporting: free_page_reporting(),
            free_page_reporting_order: free_page_reporting_order(),
            cpu_idle: cpu_idle(),
            idle_cpus: Default::default(),
            cgroup_cpu: cgroup_cpu(),
            cgroup_pids: harness::limits::cgroup_limit("pids", &["pids.max"]).map(|n| n.to_string()),
            cgroup_memory: harness::limits::cgroup_limit("memory", &["memory.max", "memory.limit_in_bytes"])
                .map(|n| n.to_string()),
            rustc: rustc_version(),
            optimized,
        }
    }

    pub fn header(&self) -> String {
        let memory = self.cgroup_memory.as_ref().map(|b| match b.parse::<u64>() {
            Ok(bytes) => format!("{} MiB", bytes >> 20),
            Err(_) => b.clone(),
        });
        let limits: Vec<String> = [("cpu", &self.cgroup_cpu), ("pids", &self.cgroup_pids), ("memory", &memory)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
            .collect();
        let yes = |b: bool| if b { "yes" } else { "no" };
        format!(
            "machine: {}, {} logical CPUs (this run may use {}{}), Linux {}, {}\n\
             switch costs: pcid {}, invpcid {}; idle CPUs: {}{}; mitigations: {}; THP {}; free page reporting {}\n\
             cgroup limits: {}; {}, {}\n",
            self.cpu_model,
            self.logical_cpus,
            self.allowed_cpus,
            self.cpuset.as_ref().map(|c| format!(", cpuset {c}")).unwrap_or_default(),
            self.kernel,
            self.virtualization,
            yes(self.pcid),
            yes(self.invpcid),
            self.cpu_idle,
            if self.idle_cpus.how.is_empty() { String::new() } else { format!(", {}", self.idle_cpus.how) },
            if self.mitigations.is_empty() { "none active".to_string() } else { self.mitigations.join(", ") },
            self.transparent_hugepages,
            match (self.free_page_reporting, self.free_page_reporting_order) {
                (true, Some(order)) =>
                    format!("on (free blocks of order {order} and up: the host takes back freed memory)"),
                (true, None) => "on (the host takes back freed memory)".to_string(),
                (false, _) => "off".to_string(),
            },
            if limits.is_empty() { "none".to_string() } else { limits.join(", ") },
            self.rustc,
            if self.optimized { "optimised build" } else { "UNOPTIMISED build" },
        )
    }
}

/// "0-3,6" for [0, 1, 2, 3, 6].
fn ranges(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        out.push(if cpus[i] == start { start.to_string() } else { format!("{start}-{}", cpus[i]) });
        i += 1;
    }
    out.join(",")
}

/// The first of `files` found in our cgroup or its nearest ancestor that has it.
fn cgroup_value(controller: &str, files: &[&str]) -> Option<String> {
    harness::limits::cgroup_dirs(controller).iter().find_map(|dir| {
        files.iter().find_map(|f| std::fs::read_to_string(dir.join(f)).ok().map(|v| v.trim().to_string()))
    })
}

/// The tightest CPU quota over our cgroup and its ancestors, as "quota period" in µs: v2's
/// cpu.max ("max period" is none), v1's cpu.cfs_quota_us (-1 is none) and cpu.cfs_period_us.
/// Tightest is the fewest CPUs' worth, quota over period.
fn cgroup_cpu() -> Option<String> {
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).ok().map(|v| v.trim().to_string());
    harness::limits::cgroup_dirs("cpu")
        .into_iter()
        .filter_map(|dir| {
            let (quota, period) = match read(dir.join("cpu.max")) {
                Some(max) => {
                    let mut parts = max.split_whitespace();
                    (parts.next()?.parse::<u64>().ok()?, parts.next()?.parse::<u64>().ok()?)
                }
                None => (
                    read(dir.join("cpu.cfs_quota_us"))?.parse().ok()?,
                    read(dir.join("cpu.cfs_period_us"))?.parse().ok()?,
                ),
            };
            (period > 0).then_some((quota, period))
        })
        .min_by(|a, b| (a.0 as f64 / a.1 as f64).total_cmp(&(b.0 as f64 / b.1 as f64)))
        .map(|(quota, period)| format!("{quota} {period}"))
}

/// The vulnerabilities the kernel mitigates, by name, each with its line ("Mitigation: ...").
fn mitigations() -> std::collections::BTreeMap<String, String> {
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu/vulnerabilities") else { return Default::default() };
    dir.flatten()
        .filter_map(|e| {
            let line = std::fs::read_to_string(e.path()).ok()?.trim().to_string();
            line.starts_with("Mitigation").then(|| (e.file_name().to_string_lossy().into_owned(), line))
        })
        .collect()
}

/// Whether some virtio balloon on this machine negotiated free page reporting.
fn free_page_reporting() -> bool {
    let Ok(devices) = std::fs::read_dir("/sys/bus/virtio/devices") else { return false };
    devices.flatten().any(|d| {
        let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default();
        reports_free_pages(&read("device"), &read("features"))
    })
}

/// A virtio device's `device` and `features` files: a balloon (device id 5) with feature bit
/// 5 (VIRTIO_BALLOON_F_REPORTING) set. `features` is one character per bit, bit 0 first.
fn reports_free_pages(device: &str, features: &str) -> bool {
    device.trim() == "0x0005" && features.trim().as_bytes().get(5) == Some(&b'1')
}

/// The smallest block of free pages the kernel reports, as an order (2^order pages), where
/// the page_reporting module says (`page_reporting_order`): a larger order reports less.
fn free_page_reporting_order() -> Option<u32> {
    std::fs::read_to_string("/sys/module/page_reporting/parameters/page_reporting_order").ok()?.trim().parse().ok()
}

/// "madvise (defrag madvise)": the bracketed choice of each file.
fn transparent_hugepages() -> String {
    let selected = |file: &str| {
        let text = std::fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{file}")).ok()?;
        let start = text.find('[')? + 1;
        let end = text[start..].find(']')? + start;
        Some(text[start..end].to_string())
    };
    match (selected("enabled"), selected("defrag")) {
        (Some(e), Some(d)) => format!("{e} (defrag {d})"),
        (Some(e), None) => e,
        _ => "unknown".to_string(),
    }
}

/// What the rows of one run of the suite said about idle CPUs: the first that did not keep
/// them awake, or else the first row's.
pub fn idle_while_measuring(reports: &[harness::Report]) -> harness::awake::IdleCpus {
    let first_not = reports.iter().find(|r| !r.idle_cpus.kept_awake);
    first_not.or(reports.first()).map(|r| r.idle_cpus.clone()).unwrap_or_default()
}

/// What an idle CPU does, from /sys/devices/system/cpu/cpuidle and, for haltpoll, its poll.
fn cpu_idle() -> String {
    let read = |path: &str| std::fs::read_to_string(path).ok().map(|v| v.trim().to_string());
    let cpuidle = "/sys/devices/system/cpu/cpuidle";
    idle_of(
        read(&format!("{cpuidle}/current_driver")).as_deref(),
        read(&format!("{cpuidle}/current_governor"))
            .or_else(|| read(&format!("{cpuidle}/current_governor_ro")))
            .as_deref(),
        read("/sys/module/haltpoll/parameters/guest_halt_poll_ns").as_deref(),
    )
}

/// "haltpoll (governor haltpoll, polls up to 0 ns before it halts)", "intel_idle (governor
/// menu)", or, with no cpuidle driver, the kernel's default idle.
fn idle_of(driver: Option<&str>, governor: Option<&str>, halt_poll_ns: Option<&str>) -> String {
    let Some(driver) = driver.filter(|d| !d.is_empty() && *d != "none") else {
        return "no cpuidle driver (the default idle: halt)".to_string();
    };
    let mut out = driver.to_string();
    let mut more = Vec::new();
    if let Some(g) = governor.filter(|g| !g.is_empty()) {
        more.push(format!("governor {g}"));
    }
    if driver == "haltpoll" {
        if let Some(ns) = halt_poll_ns {
            more.push(format!("polls up to {ns} ns before it halts"));
        }
    }
    if !more.is_empty() {
        out.push_str(&format!(" ({})", more.join(", ")));
    }
    out
}

/// The compiler that built the rows (`rustc -V`, the one cargo runs).
fn rustc_version() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    std::process::Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "rustc unknown".to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_balloon_with_bit_5_reports_free_pages_and_nothing_else_does() {
        // As this AMD EPYC guest's virtio0 had them: a balloon, bits 1, 2, 5, 7 and 32.
        let balloon = "0110010100000000000000000000000010000000\n";
        assert!(reports_free_pages("0x0005\n", balloon));
        assert!(!reports_free_pages("0x0005", "0110000100000000"), "a balloon without bit 5");
        assert!(!reports_free_pages("0x0002", balloon), "a block device with the same bits");
        assert!(!reports_free_pages("0x0005", "0110"), "too few bits");
    }

    #[test]
    fn cpu_lists_are_written_as_ranges() {
        assert_eq!(ranges(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(ranges(&[1]), "1");
        assert_eq!(ranges(&[]), "");
    }

    #[test]
    fn idle_names_the_driver_and_a_guests_halt_poll() {
        assert_eq!(
            idle_of(Some("haltpoll"), Some("haltpoll"), Some("0")),
            "haltpoll (governor haltpoll, polls up to 0 ns before it halts)"
        );
        assert_eq!(idle_of(Some("intel_idle"), Some("menu"), Some("200000")), "intel_idle (governor menu)");
        assert_eq!(idle_of(Some("acpi_idle"), None, None), "acpi_idle");
        assert_eq!(idle_of(Some("none"), Some("menu"), None), "no cpuidle driver (the default idle: halt)");
        assert_eq!(idle_of(None, None, None), "no cpuidle driver (the default idle: halt)");
    }

    #[test]
    fn the_header_names_what_moves_switch_costs() {
        let m = Machine::here(true);
        let h = m.header();
        assert!(
            h.contains("pcid") && h.contains("THP") && h.contains("idle CPUs") && h.contains("optimised build"),
            "{h}"
        );
        assert!(m.logical_cpus >= 1 && !m.allowed_cpus.is_empty());
    }

    /// Each field against the same thing read here another way: the kernel's own text files.
    #[test]
    fn the_machine_is_what_the_kernel_says() {
        let m = Machine::here(true);
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        let cpuinfo = read("/proc/cpuinfo");
        let field = |line: &str| line.split_once(':').map(|(_, v)| v.trim().to_string());
        let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(field);
        assert_eq!(Some(m.cpu_model.clone()), model.or(Some("unknown".into())));
        assert_eq!(m.logical_cpus, cpuinfo.lines().filter(|l| l.starts_with("processor")).count());
        let status = read("/proc/self/status");
        let allowed = status.lines().find(|l| l.starts_with("Cpus_allowed_list")).and_then(field);
        assert_eq!(Some(m.allowed_cpus.clone()), allowed);
        assert_eq!(m.kernel, read("/proc/sys/kernel/osrelease").trim());
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).and_then(field).unwrap_or_default();
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        assert_eq!((m.pcid, m.invpcid), (has("pcid"), has("invpcid")));
        // Every vulnerability file that names a mitigation, and no other.
        let mut mitigated: Vec<String> = std::fs::read_dir("/sys/devices/system/cpu/vulnerabilities")
            .map(|d| d.flatten().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.starts_with("Mitigation")))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        mitigated.sort();
        assert_eq!(m.mitigations, mitigated);
        // THP's selected mode is the bracketed word.
        if let Ok(enabled) = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") {
            let mode = enabled.split_whitespace().find(|w| w.starts_with('[')).unwrap().trim_matches(['[', ']']);
            assert!(m.transparent_hugepages.starts_with(mode), "{} against {enabled}", m.transparent_hugepages);
        }
        let h = m.header();
        for part in [&m.cpu_model, &m.kernel, &m.allowed_cpus, &m.rustc] {
            assert!(h.contains(part.as_str()), "{part:?} not in {h}");
        }
        for name in &m.mitigations {
            assert!(h.contains(name.as_str()), "{name} not in {h}");
        }
    }
}
