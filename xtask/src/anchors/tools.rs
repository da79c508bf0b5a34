//! The standard tools: where they are, how to install them, how to run each the way the
//! anchors do, and how to read its figure out of what it prints.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// A standard tool: its program, the command that installs it (Debian's package names) and a
/// quick run that shows it works here (perf may be there but refused by perf_event_paranoid).
pub struct Tool {
    pub name: &'static str,
    pub install: &'static str,
    /// Arguments of a quick run that must succeed; empty: being found is enough.
    probe: &'static [&'static str],
}

pub static PERF: Tool =
    Tool { name: "perf", install: "apt-get install linux-perf", probe: &["bench", "sched", "pipe", "-l", "10"] };
pub static STRESS_NG: Tool = Tool { name: "stress-ng", install: "apt-get install stress-ng", probe: &["--version"] };
pub static HACKBENCH: Tool = Tool { name: "hackbench", install: "apt-get install rt-tests", probe: &[] };
pub static WRK: Tool = Tool { name: "wrk", install: "apt-get install wrk", probe: &[] };
/// Pins a tool to the CPU our row used.
pub static TASKSET: Tool = Tool { name: "taskset", install: "apt-get install util-linux", probe: &["-p", "1"] };

impl Tool {
    /// The program's path, looked up in `PATH` the way a shell does.
    fn path(&self) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|d| d.join(self.name)).find(|p| p.is_file())
    }

    /// True when the tool is found and its probe succeeds.
    pub fn works(&self) -> bool {
        let Some(path) = self.path() else { return false };
        self.probe.is_empty() || Command::new(path).args(self.probe).output().is_ok_and(|o| o.status.success())
    }
}

/// Runs a tool to its end and returns what it printed, stdout then stderr (stress-ng writes
/// its metrics to either, depending on the version).
fn output(cmd: Command) -> Result<String> {
    let what = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    let out = crate::run::output(cmd).with_context(|| format!("running {what}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "{what} failed ({}):\n{}", out.status, text.trim());
    Ok(text)
}

/// `taskset -c CPU PROGRAM ARGS...`: the tool on the CPU our row was pinned to.
fn pinned(cpu: usize, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu.to_string(), program]).args(args);
    cmd
}

/// `perf bench sched pipe -l 200000 [-T]` on one CPU: µs per round trip (one perf op).
pub fn perf_pipe(cpu: usize, threads: bool) -> Result<f64> {
    let mut args = vec!["bench", "sched", "pipe", "-l", "200000"];
    if threads {
        args.push("-T");
    }
    let text = output(pinned(cpu, "perf", &args))?;
    parse_usecs_per_op(&text).with_context(|| format!("no \"usecs/op\" in perf's output:\n{text}"))
}

/// Groups, loops and tasks of `perf bench sched messaging` as we run it: one group of 20
/// senders and 20 receivers, each sender sending 100 messages to each receiver.
const MESSAGING_LOOPS: u64 = 100;
const MESSAGING_MESSAGES: u64 = 20 * 20 * MESSAGING_LOOPS;

/// `perf bench sched messaging -g 1 -l 100 [-t]` on one CPU: µs per message.
pub fn perf_messaging(cpu: usize, threads: bool) -> Result<f64> {
    let loops = MESSAGING_LOOPS.to_string();
    let mut args = vec!["bench", "sched", "messaging", "-g", "1", "-l", &loops];
    if threads {
        args.push("-t");
    }
    let text = output(pinned(cpu, "perf", &args))?;
    let secs = parse_total_time(&text).with_context(|| format!("no \"Total time\" in perf's output:\n{text}"))?;
    Ok(secs * 1e6 / MESSAGING_MESSAGES as f64)
}

/// `perf bench mem memcpy -s SIZE -l LOOPS -f default`, on one CPU when one is given: GB/s.
pub fn perf_memcpy(cpu: Option<usize>, size: &str, loops: u32) -> Result<f64> {
    let loops = loops.to_string();
    let args = ["bench", "mem", "memcpy", "-s", size, "-l", &loops, "-f", "default"];
    let cmd = match cpu {
        Some(cpu) => pinned(cpu, "perf", &args),
        None => {
            let mut cmd = Command::new("perf");
            cmd.args(args);
            cmd
        }
    };
    let text = output(cmd)?;
    parse_rate_gbs(&text).with_context(|| format!("no GB/sec in perf's output:\n{text}"))
}

/// How long each stress-ng stressor runs.
const STRESS_SECONDS: &str = "3";

/// `stress-ng ARGS`, on one CPU when one is given.
fn stress_ng(cpu: Option<usize>, args: &[&str]) -> Command {
    match cpu {
        Some(cpu) => pinned(cpu, "stress-ng", args),
        None => {
            let mut cmd = Command::new("stress-ng");
            cmd.args(args);
            cmd
        }
    }
}

/// `stress-ng --fork 1`, on one CPU when one is given: µs per bogo op (one fork, the child's
/// exit and the wait), from its bogo ops/s in real time.
pub fn stress_ng_fork_us(cpu: Option<usize>) -> Result<f64> {
    let text = output(stress_ng(cpu, &["--fork", "1", "-t", STRESS_SECONDS, "--metrics-brief"]))?;
    let per_s = parse_bogo_ops_per_s(&text, "fork").with_context(|| format!("no fork metrics in:\n{text}"))?;
    Ok(1e6 / per_s)
}

/// `stress-ng --pthread 1`, on one CPU when one is given: µs to start a pthread, as stress-ng
/// measures it (a clock read before pthread_create against one read by the new thread).
pub fn stress_ng_pthread_us(cpu: Option<usize>) -> Result<f64> {
    let text = output(stress_ng(cpu, &["--pthread", "1", "-t", STRESS_SECONDS, "--metrics-brief"]))?;
    let ns = metric_before(&text, "nanosecs to start a pthread")
        .with_context(|| format!("no pthread start time in:\n{text}"))?;
    Ok(ns / 1e3)
}

/// `stress-ng --switch 1 --switch-method pipe` on one CPU: ns per context switch between its
/// pair of processes.
pub fn stress_ng_switch_ns(cpu: usize) -> Result<f64> {
    let cmd = pinned(
        cpu,
        "stress-ng",
        &["--switch", "1", "--switch-method", "pipe", "-t", STRESS_SECONDS, "--metrics-brief"],
    );
    let text = output(cmd)?;
    metric_before(&text, "nanosecs per context switch").with_context(|| format!("no switch time in:\n{text}"))
}

/// `hackbench -p -g 1 -l 2000 [-T]` on one CPU (pipes, 20 senders and 20 receivers): seconds.
pub fn hackbench_s(cpu: usize, threads: bool) -> Result<f64> {
    let mut args = vec!["-p", "-g", "1", "-l", "2000"];
    if threads {
        args.push("-T");
    }
    let text = output(pinned(cpu, "hackbench", &args))?;
    parse_prefixed(&text, "Time:").with_context(|| format!("no \"Time:\" in hackbench's output:\n{text}"))
}

/// `wrk -tT -cC -dSs URL`: requests/s, every answer a 200.
pub fn wrk_per_second(url: &str, threads: usize, connections: usize, seconds: u64) -> Result<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args([&format!("-t{threads}"), &format!("-c{connections}"), &format!("-d{seconds}s"), url]);
    let text = output(cmd)?;
    ensure!(!text.contains("Non-2xx"), "wrk saw answers other than 200:\n{text}");
    parse_prefixed(&text, "Requests/sec:").with_context(|| format!("no \"Requests/sec\" in wrk's output:\n{text}"))
}

/// The number before "usecs/op" in perf bench's output ("      3.869265 usecs/op").
fn parse_usecs_per_op(text: &str) -> Option<f64> {
    text.lines().find_map(|l| l.trim().strip_suffix("usecs/op").and_then(|n| n.trim().parse().ok()))
}

/// The number after a label at the start of a line: "Time: 0.035", "Requests/sec:  51234.56".
fn parse_prefixed(text: &str, label: &str) -> Option<f64> {
    text.lines().find_map(|l| l.trim().strip_prefix(label).and_then(|n| n.trim().parse().ok()))
}

/// "     Total time: 0.087 [sec]".
fn parse_total_time(text: &str) -> Option<f64> {
    text.lines().find_map(|l| l.trim().strip_prefix("Total time:")?.trim().strip_suffix("[sec]")?.trim().parse().ok())
}

/// "       8.964223 GB/sec" (or MB/sec on a slow machine), in GB/s.
fn parse_rate_gbs(text: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let l = l.trim();
        if let Some(n) = l.strip_suffix("GB/sec") {
            n.trim().parse().ok()
        } else {
            l.strip_suffix("MB/sec").and_then(|n| n.trim().parse::<f64>().ok()).map(|m| m / 1000.0)
        }
    })
}

/// The bogo ops/s (real time) of `stressor` in a --metrics-brief table: the line whose first
/// field after the "stress-ng: metrc: [pid]" prefix is the stressor, then five numbers: bogo
/// ops, real time, usr time, sys time, bogo ops/s (real time).
fn parse_bogo_ops_per_s(text: &str, stressor: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        let at = fields.iter().position(|f| *f == stressor)?;
        let numbers: Vec<f64> = fields[at + 1..].iter().map_while(|f| f.parse().ok()).collect();
        (numbers.len() >= 5).then(|| numbers[4])
    })
}

/// The number just before a phrase: "16922.53 nanosecs to start a pthread".
fn metric_before(text: &str, phrase: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (before, _) = l.split_once(phrase)?;
        before.split_whitespace().last()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_outputs_are_parsed() {
        let pipe = "# Running 'sched/pipe' benchmark:\n# Executed 200000 pipe operations between two processes\n\n     Total time: 0.752 [sec]\n\n       3.761310 usecs/op\n         265864 ops/sec\n";
        assert_eq!(parse_usecs_per_op(pipe), Some(3.76131));
        assert_eq!(parse_usecs_per_op("nothing here"), None);
        assert_eq!(parse_total_time(pipe), Some(0.752));
        let memcpy = "# function 'default' (Default memcpy() provided by glibc)\n# Copying 1MB bytes ...\n\n       8.964223 GB/sec\n";
        assert_eq!(parse_rate_gbs(memcpy), Some(8.964223));
        assert_eq!(parse_rate_gbs("  950.5 MB/sec\n"), Some(0.9505));
        assert_eq!(parse_total_time("nothing"), None);
    }

    #[test]
    fn stress_ng_metrics_are_parsed() {
        let fork = "stress-ng: metrc: [4143] stressor       bogo ops real time  usr time  sys time   bogo ops/s     bogo ops/s\n\
                    stress-ng: metrc: [4143]                           (secs)    (secs)    (secs)   (real time) (usr+sys time)\n\
                    stress-ng: metrc: [4143] fork               7263      3.00      1.47      1.49      2420.97        2449.79\n";
        assert_eq!(parse_bogo_ops_per_s(fork, "fork"), Some(2420.97));
        assert_eq!(parse_bogo_ops_per_s(fork, "pthread"), None);
        let pthread = "stress-ng: metrc: [11412] pthread            16922.53 nanosecs to start a pthread (geometic mean of 1 instances)\n";
        assert_eq!(metric_before(pthread, "nanosecs to start a pthread"), Some(16922.53));
        assert_eq!(metric_before(fork, "nanosecs to start a pthread"), None);
        let switch = "stress-ng: metrc: [7220] switch              3095.74 nanosecs per context switch (pipe method) (geometic mean of 1 instances)\n";
        assert_eq!(metric_before(switch, "nanosecs per context switch"), Some(3095.74));
    }

    #[test]
    fn hackbench_and_wrk_outputs_are_parsed() {
        let hackbench = "Running in process mode with 1 groups using 40 file descriptors each (== 40 tasks)\nEach sender will pass 200 messages of 100 bytes\nTime: 0.035\n";
        assert_eq!(parse_prefixed(hackbench, "Time:"), Some(0.035));
        let wrk = "Running 1s test @ http://127.0.0.1:1/n/0\n  1 threads and 8 connections\nRequests/sec:  51234.56\nTransfer/sec:      5.08MB\n";
        assert_eq!(parse_prefixed(wrk, "Requests/sec:"), Some(51234.56));
        assert_eq!(parse_prefixed("nothing", "Time:"), None);
    }

    #[test]
    fn a_tool_not_in_path_is_missing() {
        let nowhere = Tool { name: "no-such-tool-of-this-project", install: "-", probe: &[] };
        assert!(!nowhere.works());
    }
}
