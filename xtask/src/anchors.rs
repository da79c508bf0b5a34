//! `cargo xtask anchors ROW`: a row's figures beside the standard tool's, measured in the
//! same run, as ratios. Absolute times drift from run to run on shared machines; a ratio
//! taken minutes apart would mean little, so the tools take turns, round after round.
//!
//! switching: our `pipe-same-cpu` round trip (2 × ns/switch) against
//! `taskset -c CPU perf bench sched pipe -l 200000` (processes) and the same with `-T`
//! (threads). One perf "op" is one round trip. Both pin the two tasks to one CPU and pass a
//! few bytes each way over two pipes, so the ratio should be close to 1 (0.85–1.15).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use harness::Report;

/// The band inside which our figure and the standard tool's agree.
const AGREE: (f64, f64) = (0.85, 1.15);
const PERF_LOOPS: &str = "200000";

pub fn main(args: &[String]) -> Result<()> {
    let usage = "usage: cargo xtask anchors switching [--rounds N]";
    let (row, rest) = args.split_first().context(usage)?;
    let rounds = match rest {
        [] => 5,
        [flag, n] if flag == "--rounds" => n.parse().with_context(|| format!("--rounds {n}: not a number"))?,
        _ => bail!("{usage}"),
    };
    ensure!(rounds >= 1, "--rounds must be at least 1");
    match row.as_str() {
        "switching" => switching(rounds),
        "concurrency" => crate::anchors_concurrency::run(rounds),
        "use-cases" => crate::anchors_use_cases::run(rounds),
        "communication" => crate::anchors_communication::run(rounds),
        other => bail!("no anchors for row {other:?}; rows with anchors: switching"),
    }
}

fn switching(rounds: usize) -> Result<()> {
    check_perf()?;
    let status = Command::new(cargo())
        .args(["build", "--release", "--quiet", "-p", "switching"])
        .current_dir(root())
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "cargo build --release -p switching failed");
    let binary = target_dir().join("release").join("switching");

    // Per side: our round trips, perf's, and the ratio of each round, in µs.
    let mut ours = [Vec::new(), Vec::new()];
    let mut perf = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        eprintln!(
            "round {round}/{rounds}: switching --only pipe-same-cpu, perf bench sched pipe, perf bench sched pipe -T"
        );
        let (process_ns, thread_ns, cpu) = our_pipe_same_cpu(&binary)?;
        ours[0].push(2.0 * process_ns / 1000.0);
        ours[1].push(2.0 * thread_ns / 1000.0);
        perf[0].push(perf_pipe(cpu, false)?);
        perf[1].push(perf_pipe(cpu, true)?);
    }

    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "side",
        "ours: round trip (µs)",
        "perf bench sched pipe (µs/op)",
        "ratio ours/perf",
        "within 0.85–1.15",
    ]);
    let mut outside = Vec::new();
    for (i, side) in ["process", "thread (-T)"].into_iter().enumerate() {
        let ratios: Vec<f64> = ours[i].iter().zip(&perf[i]).map(|(o, p)| o / p).collect();
        let ratio = median(&ratios);
        let within = (AGREE.0..=AGREE.1).contains(&ratio);
        if !within {
            outside.push(side);
        }
        table.add_row(vec![
            side.to_string(),
            format!("{:.2}", median(&ours[i])),
            format!("{:.2}", median(&perf[i])),
            format!(
                "{ratio:.3}  (rounds: {})",
                ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(", ")
            ),
            if within { "yes" } else { "no" }.to_string(),
        ]);
    }
    println!("switching pipe-same-cpu against perf bench sched pipe -l {PERF_LOOPS}, medians of {rounds} round(s)");
    println!("{table}");
    ensure!(outside.is_empty(), "outside {:.2}–{:.2}: {}", AGREE.0, AGREE.1, outside.join(", "));
    Ok(())
}

/// Process and thread medians in ns/switch, and the CPU the tasks were pinned to.
fn our_pipe_same_cpu(binary: &PathBuf) -> Result<(f64, f64, usize)> {
    let out = Command::new(binary)
        .args(["--json", "--only", "pipe-same-cpu"])
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    ensure!(out.status.success(), "switching failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    let report: Report = serde_json::from_slice(&out.stdout).context("parsing switching --json")?;
    let e = report.experiments.first().context("switching reported no experiment")?;
    let (Some(p), Some(t)) = (&e.process, &e.thread) else {
        bail!("pipe-same-cpu did not run both sides: {}", e.note.as_deref().unwrap_or("no note"))
    };
    let cpu =
        p.facts.get("pinned_cpus").and_then(|v| v.get(0)).and_then(|v| v.as_u64()).context("no pinned_cpus fact")?;
    Ok((p.median.context("no process median")?, t.median.context("no thread median")?, cpu as usize))
}

/// `taskset -c CPU perf bench sched pipe -l LOOPS [-T]`: µs per round trip.
pub(crate) fn perf_pipe(cpu: usize, threads: bool) -> Result<f64> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu.to_string(), "perf", "bench", "sched", "pipe", "-l", PERF_LOOPS]);
    if threads {
        cmd.arg("-T");
    }
    let out = cmd.output().context("running taskset perf bench sched pipe (is util-linux installed?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "perf bench sched pipe failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    parse_usecs_per_op(&stdout).with_context(|| format!("no \"usecs/op\" in perf's output:\n{stdout}"))
}

/// The number before "usecs/op" in perf bench's output ("      3.869265 usecs/op").
pub(crate) fn parse_usecs_per_op(text: &str) -> Option<f64> {
    text.lines().find_map(|l| l.trim().strip_suffix("usecs/op").and_then(|n| n.trim().parse().ok()))
}

/// Fails with the way to install perf when it is missing or does not work here.
pub(crate) fn check_perf() -> Result<()> {
    let works = Command::new("perf")
        .args(["bench", "sched", "pipe", "-l", "10"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ensure!(
        works,
        "perf is missing or does not work here; install it with `apt-get install linux-perf` \
         (Debian; `linux-tools-$(uname -r)` on Ubuntu) and check that `perf bench sched pipe -l 1000` runs"
    );
    Ok(())
}

pub(crate) fn median(values: &[f64]) -> f64 {
    harness::stats::summarize(values).median
}

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ sits in the workspace").to_path_buf()
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

pub(crate) fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_output_is_parsed() {
        let out = "# Running 'sched/pipe' benchmark:\n# Executed 200000 pipe operations between two processes\n\n     Total time: 0.752 [sec]\n\n       3.761310 usecs/op\n         265864 ops/sec\n";
        assert_eq!(parse_usecs_per_op(out), Some(3.76131));
        assert_eq!(parse_usecs_per_op("nothing here"), None);
    }
}
