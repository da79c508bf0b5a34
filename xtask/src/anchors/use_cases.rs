//! use-cases: our load generator beside wrk(1), against the same server in the same run, at 1,
//! 8 and 64 connections. The question is whether our generator is the bottleneck of the
//! web-server experiment: if it were, its requests/s would fall below wrk's. So the check is
//! one-sided: ours at least 0.8 of wrk's. Above 1, wrk ran out first, which answers the
//! question too (every response of ours is checked and counted by the server, so a higher
//! figure is not a miscount).
//!
//! Both models are loaded: `use-cases __child serve prefork|threads 64` serves on 127.0.0.1
//! until its stdin closes; `use-cases __child load ADDR C MS` is our generator, a blocking
//! thread per connection; wrk runs its event loops on as many threads as this run may use
//! CPUs (no more than the connections), for the same time. With one
//! thread (`-t1`) its loop was the bottleneck at 8 connections on a 2-CPU guest: ours pushed
//! 1.5-1.8 times its requests. The two take turns, round after round, so that a drift of the
//! machine falls on both.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use super::tools::{WRK, wrk_per_second};
use super::{Anchor, Ctx, Line};

pub const ANCHOR: Anchor = Anchor {
    row: "use-cases",
    title: "web-server: our load generator beside wrk (a thread per CPU) on the same servers, 1 s each",
    tools: &[&WRK],
    run,
};

const LEVELS: [usize; 3] = [1, 8, 64];
const SECONDS: u64 = 1;

fn run(ctx: &Ctx) -> Result<Vec<Line>> {
    let cpus = harness::cpu::allowed()?.len();
    let mut lines = Vec::new();
    for model in ["threads", "prefork"] {
        let server = Server::start(&ctx.binary, model)?;
        let url = format!("http://127.0.0.1:{}/n/0", server.port);
        for c in LEVELS {
            let threads = cpus.min(c);
            let connections = harness::report::counted(c, "connection", "connections");
            let mut line = Line::new(
                format!("{model} server, {connections}"),
                "req/s",
                &format!("req/s (wrk -t{threads})"),
            )
            .band(0.8, f64::INFINITY, "");
            for round in 1..=ctx.rounds {
                eprintln!("use-cases anchors, {model}, {connections}, round {round}/{}: ours, wrk", ctx.rounds);
                // Odd rounds start with ours, even rounds with wrk.
                let (o, w) = if round % 2 == 1 {
                    let o = ours_per_second(&ctx.binary, server.port, c)?;
                    (o, wrk_per_second(&url, threads, c, SECONDS)?)
                } else {
                    let w = wrk_per_second(&url, threads, c, SECONDS)?;
                    (ours_per_second(&ctx.binary, server.port, c)?, w)
                };
                line.push(o, w);
            }
            lines.push(line);
        }
        server.stop()?;
    }
    if let Some(first) = lines.first_mut() {
        first.why =
            "if our generator were the bottleneck, ours would fall below wrk's; above 1, wrk's loops ran out first"
                .to_string();
    }
    Ok(lines)
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
    let mut cmd = Command::new(binary);
    cmd.args([
        "__child",
        "load",
        &format!("127.0.0.1:{port}"),
        &connections.to_string(),
        &(SECONDS * 1000).to_string(),
    ]);
    let out = crate::run::output(cmd).context("running our load generator")?;
    ensure!(out.status.success(), "our load generator failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout.lines().find_map(|l| l.strip_prefix("load ")).context("no load message")?;
    let (ok, failed, per_second): (u64, u64, f64) = serde_json::from_str(json).context("parsing the load message")?;
    ensure!(failed == 0 && ok > 0, "our generator saw {failed} failed requests of {}", ok + failed);
    Ok(per_second)
}
