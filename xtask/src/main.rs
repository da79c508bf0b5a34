//! Project tasks, run as `cargo xtask TASK` (the alias is in .cargo/config.toml).

mod anchors;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("anchors") => anchors::main(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask anchors ROW");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
