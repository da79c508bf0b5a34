//! Project tasks, run as `cargo xtask TASK` (the alias is in .cargo/config.toml):
//!
//! - `compare [--quick] [--json] [ROW...]`: every row, the summary table and the verdicts;
//! - `report [--quick] [--out DIR]`: one run of every row written as docs/results.md with charts;
//! - `anchors [ROW...] [--rounds N]`: rows' figures beside the standard tools', as ratios from one run;
//! - `snapshots [--review] [ROW...]`: the rows' snapshot tests and the snapshots that changed.

mod anchors;
mod compare;
mod machine;
mod repeat;
mod report;
mod run;
mod snapshots;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask compare [--quick] [--json] [--repeat N] [ROW...]
       cargo xtask report [--quick] [--out DIR]
       cargo xtask anchors [ROW...] [--rounds N]
       cargo xtask snapshots [--review] [ROW...]";

fn main() -> ExitCode {
    // args_os: std::env::args panics on an argument that is not UTF-8.
    let Some(args) = std::env::args_os().skip(1).map(|a| a.into_string().ok()).collect::<Option<Vec<String>>>() else {
        eprintln!("error: an argument is not UTF-8\n\n{USAGE}");
        return ExitCode::from(2);
    };
    if let Err(e) = run::forward_interrupts() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match args.first().map(String::as_str) {
        Some("compare") => compare::main(&args[1..]),
        Some("report") => report::main(&args[1..]),
        Some("anchors") => anchors::main(&args[1..]),
        Some("snapshots") => snapshots::main(&args[1..]),
        Some("-h" | "--help" | "help") => {
            return if harness::row::print_out(&format!("{USAGE}\n")) { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
        Some(other) => {
            eprintln!("error: unknown task '{other}'\n\n{USAGE}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("error: no task given\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
