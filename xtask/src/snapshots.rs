//! `cargo xtask snapshots [--review] [ROW...]`: runs the rows' snapshot tests, the same tests
//! `cargo test --workspace` runs (`cargo test -p tests --test <row>`), and says which
//! snapshots changed: the pending `.snap.new` files insta wrote beside the accepted ones.
//! With `--review` it hands them to `cargo insta review`, to accept or reject one by one.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use clap::Parser;
use harness::row::print_out;

use crate::{compare, run};

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask snapshots",
    bin_name = "cargo xtask snapshots",
    about = "Run the rows' snapshot tests and list the snapshots that changed"
)]
struct Args {
    /// Hand the changed snapshots to `cargo insta review`.
    #[arg(long)]
    review: bool,
    /// Rows whose tests to run (default: every row that exists).
    #[arg(value_name = "ROW", value_parser = clap::builder::PossibleValuesParser::new(compare::ROWS.iter().map(|r| r.0)))]
    rows: Vec<String>,
}

pub fn main(argv: &[String]) -> Result<bool> {
    let args = Args::try_parse_from(std::iter::once("snapshots".to_string()).chain(argv.iter().cloned()))
        .unwrap_or_else(|e| e.exit());
    let rows = compare::chosen_rows(&args.rows);
    let mut failed = Vec::new();
    for row in &rows {
        let test = test_file(row);
        eprintln!("cargo test -p tests --test {test}");
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        // `new`: insta writes a .snap.new for every changed snapshot, even where CI is set
        // (where it would otherwise only fail); the accepted .snap files are never touched.
        cmd.current_dir(run::root())
            .env("INSTA_UPDATE", "new")
            .args(["test", "--quiet", "-p", "tests", "--test", &test]);
        // cargo's and the tests' output goes to our stderr; stdout keeps the list below.
        cmd.stdout(std::io::stderr());
        if !run::status(cmd)?.success() {
            failed.push(row.clone());
        }
    }
    let pending = pending(&rows)?;
    let mut text = String::new();
    if pending.is_empty() {
        text.push_str("no snapshot changed\n");
    } else {
        text.push_str("changed snapshots (pending review):\n");
        for p in &pending {
            text.push_str(&format!("  {}\n", p.strip_prefix(run::root()).unwrap_or(p).display()));
        }
    }
    if !failed.is_empty() {
        text.push_str(&format!("tests failed in: {}\n", failed.join(", ")));
    }
    if !pending.is_empty() && !args.review {
        text.push_str("review them with `cargo xtask snapshots --review` (or `cargo insta review`)\n");
    }
    let written = print_out(&text);
    if args.review && !pending.is_empty() {
        return review();
    }
    Ok(written && failed.is_empty() && pending.is_empty())
}

/// The test file of a row: `use-cases` is tests/tests/use_cases.rs.
fn test_file(row: &str) -> String {
    row.replace('-', "_")
}

/// The pending `.snap.new` files of these rows' tests.
fn pending(rows: &[String]) -> Result<Vec<PathBuf>> {
    let dir = run::root().join("tests").join("tests").join("snapshots");
    let prefixes: Vec<String> = rows.iter().map(|r| format!("{}__", test_file(r))).collect();
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.ends_with(".snap.new") && prefixes.iter().any(|pre| name.starts_with(pre))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// `cargo insta review`, on this terminal; names the install command when cargo-insta is missing.
fn review() -> Result<bool> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let has_insta = Command::new(&cargo).args(["insta", "--version"]).output().is_ok_and(|o| o.status.success());
    if !has_insta {
        eprintln!("cargo-insta is missing; install it with `cargo install cargo-insta`, then run `cargo insta review`");
        return Ok(false);
    }
    // Interactive: it needs our stdin, so it runs outside the captured runner.
    let status = Command::new(&cargo)
        .current_dir(run::root())
        .args(["insta", "review", "--workspace"])
        .status()
        .context("running cargo insta review")?;
    Ok(status.success())
}
