//! `cargo xtask anchors ROW`: a row's figures beside the standard tool's, measured in the
//! same run, as ratios.

use anyhow::{Result, bail};

pub fn main(args: &[String]) -> Result<()> {
    bail!("no anchors for {args:?} yet")
}
