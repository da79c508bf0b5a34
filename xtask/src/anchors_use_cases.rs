//! `cargo xtask anchors use-cases`: our load generator beside wrk(1), against the same
//! server in the same run, at 1, 8 and 64 connections. The question is whether our generator
//! is the bottleneck of the web-server experiment: if it were, its requests/s would fall
//! below wrk's. Agreement means a ratio ours/wrk within 0.8–1.25.
//!
//! Both models are loaded: `use-cases __child serve prefork|threads 64` serves on 127.0.0.1
//! until its stdin closes; `use-cases __child load ADDR C MS` is our generator; wrk runs with
//! one thread (`-t1`), as an event loop, for the same time. The two take turns, round after
//! round, so that a drift of the machine falls on both.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

const AGREE: (f64, f64) = (0.8, 1.25);
const LEVELS: [usize; 3] = [1, 8, 64];
const SECONDS: u64 = 1;

pub fn run(rounds: usize) -> Result<()> {
    check_wrk()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask/ sits in the workspace")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "use-cases"])
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "cargo build --release -p use-cases failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(Into::into).unwrap_or_else(|| root.join("target"));
    let binary = target.join("release").join("use-cases");

    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "server",
        "connections",
        "ours (req/s)",
        "wrk -t1 (req/s)",
        "ratio ours/wrk",
        "within 0.8–1.25",
    ]);
    let mut outside = Vec::new();
    for model in ["threads", "prefork"] {
        let server = Server::start(&binary, model)?;
        for c in LEVELS {
            let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for round in 1..=rounds {
                eprintln!("{model}, {c} connection(s), round {round}/{rounds}: ours, wrk");
                let (o, w) = if round % 2 == 1 {
                    let o = ours_per_second(&binary, server.port, c)?;
                    (o, wrk_per_second(server.port, c)?)
                } else {
                    let w = wrk_per_second(server.port, c)?;
                    (ours_per_second(&binary, server.port, c)?, w)
                };
                ours.push(o);
                theirs.push(w);
                ratios.push(o / w);
            }
            let ratio = median(&ratios);
            let within = (AGREE.0..=AGREE.1).contains(&ratio);
            if !within {
                outside.push(format!("{model} at {c}"));
            }
            table.add_row(vec![
                model.to_string(),
                c.to_string(),
                format!("{:.0}", median(&ours)),
                format!("{:.0}", median(&theirs)),
                format!(
                    "{ratio:.3}  (rounds: {})",
                    ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(", ")
                ),
                if within { "yes" } else { "no" }.to_string(),
            ]);
        }
        server.stop()?;
    }
    println!(
        "use-cases web-server: our load generator against wrk -t1, {SECONDS} s each, medians of {rounds} round(s)"
    );
    println!("{table}");
    ensure!(outside.is_empty(), "outside {:.2}–{:.2}: {}", AGREE.0, AGREE.1, outside.join(", "));
    Ok(())
}

/// A server started by the row binary, stopped by closing its stdin.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(binary: &Path, model: &str) -> Result<Server> {
        let mut child = Command::new(binary)
            .args(["__child", "serve", model, "64"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).context("reading the server's port")?;
        let port = line.strip_prefix("listening ").and_then(|p| p.trim().parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the server did not say its port: {line:?}");
        };
        Ok(Server { child, port })
    }

    fn stop(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait().context("waiting for the server")?;
        ensure!(status.success(), "the server ended with {status}");
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Our generator's requests/s, every response checked.
fn ours_per_second(binary: &Path, port: u16, connections: usize) -> Result<f64> {
    let out = Command::new(binary)
        .args([
            "__child",
            "load",
            &format!("127.0.0.1:{port}"),
            &connections.to_string(),
            &(SECONDS * 1000).to_string(),
        ])
        .output()
        .context("running our load generator")?;
    ensure!(out.status.success(), "our load generator failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout.lines().find_map(|l| l.strip_prefix("load ")).context("no load message")?;
    let (ok, failed, per_second): (u64, u64, f64) = serde_json::from_str(json).context("parsing the load message")?;
    ensure!(failed == 0 && ok > 0, "our generator saw {failed} failed requests of {}", ok + failed);
    Ok(per_second)
}

/// wrk's requests/s with one thread and `connections` connections.
fn wrk_per_second(port: u16, connections: usize) -> Result<f64> {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{SECONDS}s"), &format!("http://127.0.0.1:{port}/n/0")])
        .output()
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    ensure!(!stdout.contains("Non-2xx"), "wrk saw answers other than 200:\n{stdout}");
    parse_requests_per_second(&stdout).with_context(|| format!("no \"Requests/sec\" in wrk's output:\n{stdout}"))
}

/// The number after "Requests/sec:" in wrk's output.
fn parse_requests_per_second(text: &str) -> Option<f64> {
    text.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:").and_then(|n| n.trim().parse().ok()))
}

fn check_wrk() -> Result<()> {
    let works = Command::new("wrk").arg("--version").output().is_ok();
    ensure!(works, "wrk is missing; install it with `apt-get install wrk` (Debian and Ubuntu)");
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    harness::stats::median(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_parsed() {
        let out = "Running 1s test @ http://127.0.0.1:1/n/0\n  1 threads and 8 connections\nRequests/sec:  51234.56\nTransfer/sec:      5.08MB\n";
        assert_eq!(parse_requests_per_second(out), Some(51234.56));
        assert_eq!(parse_requests_per_second("nothing"), None);
    }
}
