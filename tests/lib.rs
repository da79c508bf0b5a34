//! Helpers for the tests that drive the row binaries as subprocesses. The tests never fork
//! inside the multi-threaded test harness; they run the real binaries and read what they
//! print, as a user would.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

/// Builds a binary of the workspace once per test process (a no-op when `cargo test` has
/// built it already) and returns its path.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    let path = target.join("debug").join(name);
    if !built.iter().any(|b| b == name) {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--package", name, "--bin", name])
            .current_dir(root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build -p {name} failed");
        built.push(name.to_string());
    }
    path
}

/// Runs a row binary with arguments and returns what it did.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(binary(name)).args(args).output().expect("running the row binary")
}
