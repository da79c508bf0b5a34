//! `cargo xtask anchors communication`: the communication row's figures beside the standard
//! tools', measured in the same run, round after round, as ratios.
//!
//! - pipe: `latency-pipe`'s round trip (processes, threads) against `perf bench sched pipe`
//!   (and `-T`), both pinned to the same CPU; one perf op is one round trip. Our receive waits
//!   in poll(2) with a deadline, so ours should be somewhat slower.
//! - socket pair: half the socket pair's one-CPU round trip from the matrix (µs per message)
//!   against `perf bench sched messaging` (processes, and `-t` threads: 20 senders and 20
//!   receivers per group over Unix socket pairs, 100-byte messages), µs per message, pinned to
//!   the same CPU. Different shapes (one pair ping-ponging against 40 tasks streaming), so the
//!   ratio is a scale, not a band.
//! - shared-memory bulk at 1 MiB messages (`throughput-shm`): the segment ring's GB/s against
//!   the in-place thread ring's (target: at least 0.8) and against `perf bench mem memcpy -s
//!   1MB` on the same CPU (target: at least 0.5).

use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use harness::Report;
use serde_json::Value;

use crate::anchors::{cargo, check_perf, median, perf_pipe, root, target_dir};

/// What one round of our row showed.
struct Ours {
    pipe_us: [f64; 2],
    socket_us_per_message: [f64; 2],
    ring_gbs: [f64; 2],
    cpu: usize,
    others_cpu: f64,
}

pub fn run(rounds: usize) -> Result<()> {
    check_perf()?;
    let status = Command::new(cargo())
        .args(["build", "--release", "--quiet", "-p", "communication"])
        .current_dir(root())
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "cargo build --release -p communication failed");
    let binary = target_dir().join("release").join("communication");

    // Per round: ours and the tools', in turns.
    let (mut pipe, mut perf_pipes) = ([vec![], vec![]], [vec![], vec![]]);
    let (mut socket, mut messaging) = ([vec![], vec![]], [vec![], vec![]]);
    let (mut ring, mut memcpy, mut busy) = ([vec![], vec![]], vec![], vec![]);
    for round in 1..=rounds {
        eprintln!(
            "round {round}/{rounds}: communication, perf bench sched pipe (-T), sched messaging (-t), mem memcpy"
        );
        let ours = our_figures(&binary)?;
        for i in 0..2 {
            pipe[i].push(ours.pipe_us[i]);
            socket[i].push(ours.socket_us_per_message[i]);
            ring[i].push(ours.ring_gbs[i]);
        }
        busy.push(ours.others_cpu);
        perf_pipes[0].push(perf_pipe(ours.cpu, false)?);
        perf_pipes[1].push(perf_pipe(ours.cpu, true)?);
        messaging[0].push(perf_messaging(ours.cpu, false)?);
        messaging[1].push(perf_messaging(ours.cpu, true)?);
        memcpy.push(perf_memcpy(ours.cpu)?);
    }
    let ratio = |a: &[f64], b: &[f64]| median(&a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>());

    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["figure", "ours", "standard tool", "ratio ours/tool", "target"]);
    for (i, side) in ["processes", "threads (-T)"].into_iter().enumerate() {
        t.add_row(vec![
            format!("pipe round trip, {side}"),
            format!("{:.2} µs", median(&pipe[i])),
            format!("{:.2} µs/op (sched pipe)", median(&perf_pipes[i])),
            format!("{:.3}", ratio(&pipe[i], &perf_pipes[i])),
            "-".to_string(),
        ]);
    }
    for (i, side) in ["processes", "threads (-t)"].into_iter().enumerate() {
        t.add_row(vec![
            format!("socket pair, µs per message, {side}"),
            format!("{:.2} µs", median(&socket[i])),
            format!("{:.2} µs/msg (sched messaging)", median(&messaging[i])),
            format!("{:.3}", ratio(&socket[i], &messaging[i])),
            "-".to_string(),
        ]);
    }
    let vs_thread = ratio(&ring[0], &ring[1]);
    let vs_memcpy = ratio(&ring[0], &memcpy);
    t.add_row(vec![
        "shared-memory ring, 1 MiB messages, GB/s".to_string(),
        format!("{:.2} (in-place thread ring {:.2})", median(&ring[0]), median(&ring[1])),
        format!("{:.2} GB/s (mem memcpy -s 1MB)", median(&memcpy)),
        format!("{vs_thread:.3} of the thread ring, {vs_memcpy:.3} of memcpy"),
        "≥ 0.8 of the thread ring, ≥ 0.5 of memcpy".to_string(),
    ]);
    println!(
        "communication against perf bench, medians of {rounds} round(s); others_cpu during our runs: {}",
        busy.iter().map(|b| format!("{:.0}%", b * 100.0)).collect::<Vec<_>>().join(", ")
    );
    println!("{t}");
    let mut missed = Vec::new();
    if vs_thread < 0.8 {
        missed.push(format!("ring/thread ring {vs_thread:.3} < 0.8"));
    }
    if vs_memcpy < 0.5 {
        missed.push(format!("ring/memcpy {vs_memcpy:.3} < 0.5"));
    }
    ensure!(missed.is_empty(), "targets missed: {}", missed.join(", "));
    Ok(())
}

/// One run of our row with the three experiments the anchors compare.
fn our_figures(binary: &std::path::Path) -> Result<Ours> {
    let out = Command::new(binary)
        .args(["--json", "--only", "latency-pipe", "--only", "throughput-shm", "--only", "cpu-cost"])
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let report: Report = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing communication --json: {}", String::from_utf8_lossy(&out.stderr).trim()))?;
    let find = |id: &str| report.experiments.iter().find(|e| e.id == id).with_context(|| format!("no {id}"));
    let both = |id: &str| -> Result<[serde_json::Map<String, Value>; 2]> {
        let e = find(id)?;
        let (Some(p), Some(t)) = (&e.process, &e.thread) else {
            bail!("{id} did not run both sides: {}", e.note.as_deref().unwrap_or("no note"))
        };
        Ok([p.facts.clone(), t.facts.clone()])
    };
    let pipe = find("latency-pipe")?;
    let (Some(pp), Some(pt)) = (&pipe.process, &pipe.thread) else { bail!("latency-pipe did not run both sides") };
    let cpu = pp.facts["pinned_cpus"][0].as_u64().context("no pinned_cpus")? as usize;
    let ring = both("throughput-shm")?;
    let gbs = |f: &serde_json::Map<String, Value>| f["gb_per_s"].as_f64().context("no gb_per_s");
    let matrix = both("cpu-cost")?;
    // "one CPU: p50 10.3 µs, ..." in the matrix line of the socket pair: half a round trip
    // is one message.
    let socket = |f: &serde_json::Map<String, Value>| -> Result<f64> {
        let line = f["socket pair"].as_str().context("no socket pair line")?;
        let p50: f64 = line
            .strip_prefix("one CPU: p50 ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no one-CPU p50 in {line:?}"))?;
        Ok(p50 / 2.0)
    };
    Ok(Ours {
        pipe_us: [pp.median.context("no median")?, pt.median.context("no median")?],
        socket_us_per_message: [socket(&matrix[0])?, socket(&matrix[1])?],
        ring_gbs: [gbs(&ring[0])?, gbs(&ring[1])?],
        cpu,
        others_cpu: find("throughput-shm")?.others_cpu.unwrap_or(0.0),
    })
}

/// Groups, loops and tasks of `perf bench sched messaging` as we run it: one group of 20
/// senders and 20 receivers, each sender sending 100 messages to each receiver.
const MESSAGING_LOOPS: u64 = 100;
const MESSAGING_MESSAGES: u64 = 20 * 20 * MESSAGING_LOOPS;

/// `taskset -c CPU perf bench sched messaging -g 1 -l 100 [-t]`: µs per message.
fn perf_messaging(cpu: usize, threads: bool) -> Result<f64> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu.to_string(), "perf", "bench", "sched", "messaging", "-g", "1", "-l"]);
    cmd.arg(MESSAGING_LOOPS.to_string());
    if threads {
        cmd.arg("-t");
    }
    let out = cmd.output().context("running perf bench sched messaging")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "perf bench sched messaging failed: {}", String::from_utf8_lossy(&out.stderr));
    let secs = parse_total_time(&text).with_context(|| format!("no \"Total time\" in perf's output:\n{text}"))?;
    Ok(secs * 1e6 / MESSAGING_MESSAGES as f64)
}

/// `taskset -c CPU perf bench mem memcpy -s 1MB -l 200`: GB/s.
fn perf_memcpy(cpu: usize) -> Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string(), "perf", "bench", "mem", "memcpy", "-s", "1MB", "-l", "200", "-f", "default"])
        .output()
        .context("running perf bench mem memcpy")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "perf bench mem memcpy failed: {}", String::from_utf8_lossy(&out.stderr));
    parse_rate_gbs(&text).with_context(|| format!("no GB/sec in perf's output:\n{text}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_outputs_are_parsed() {
        let messaging = "# 20 sender and receiver processes per group\n# 1 groups == 40 processes run\n\n     Total time: 0.087 [sec]\n";
        assert_eq!(parse_total_time(messaging), Some(0.087));
        let memcpy = "# function 'default' (Default memcpy() provided by glibc)\n# Copying 1MB bytes ...\n\n       8.964223 GB/sec\n";
        assert_eq!(parse_rate_gbs(memcpy), Some(8.964223));
        assert_eq!(parse_rate_gbs("  950.5 MB/sec\n"), Some(0.9505));
        assert_eq!(parse_total_time("nothing"), None);
    }
}
