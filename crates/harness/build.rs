//! Tells the harness which optimisation level it was built with (cargo gives build scripts
//! OPT_LEVEL), so that a row can say honestly whether its timings mean anything: debug
//! assertions alone do not tell, since the dev profile is optimised too.

fn main() {
    let level = std::env::var("OPT_LEVEL").unwrap_or_else(|_| "0".to_string());
    println!("cargo:rustc-env=PVT_OPT_LEVEL={level}");
    println!("cargo:rerun-if-env-changed=OPT_LEVEL");
}
