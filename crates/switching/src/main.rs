//! The switching row (being written; see issue 3).
use std::process::ExitCode;

static ROW: harness::Row = harness::Row {
    name: "switching",
    claim: "Switching between threads is faster than switching between processes: no address-space change.",
    experiments: &[],
    children: &[],
};

fn main() -> ExitCode {
    harness::row::main(&ROW)
}
