//! Project tasks, run as `cargo xtask TASK` (the alias is in .cargo/config.toml):
//!
//! - `compare [--quick] [--json] [ROW...]`: every row, the summary table and the verdicts;
//! - `anchors ROW`: a row's figures beside the standard tool's, as ratios from one run.

mod anchors;
mod anchors_communication;
mod anchors_concurrency;
mod anchors_use_cases;
mod compare;
mod machine;
mod repeat;
mod run;

use std::process::ExitCode;

const USAGE: &str =
    "usage: cargo xtask compare [--quick] [--json] [--repeat N] [ROW...]\n       cargo xtask anchors ROW";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run::forward_interrupts() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match args.first().map(String::as_str) {
        Some("compare") => compare::main(&args[1..]),
        Some("anchors") => anchors::main(&args[1..]).map(|()| true),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
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
