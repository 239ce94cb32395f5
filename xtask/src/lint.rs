//! `cargo xtask lint`: formatting check and clippy with warnings denied.

use crate::host::{cargo, run_checked};
use anyhow::Result;

/// Runs `cargo fmt --check` and `cargo clippy -D warnings` on the workspace.
pub fn run() -> Result<()> {
    eprintln!("xtask: cargo fmt --check");
    run_checked(cargo().args(["fmt", "--all", "--", "--check"]))?;
    eprintln!("xtask: cargo clippy -D warnings");
    run_checked(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}
