//! `cargo xtask test`: host set-up, lint, then every test of the workspace.

use crate::host::{self, cargo, run_checked};
use anyhow::Result;

/// Options of `cargo xtask test`.
#[derive(clap::Args, Debug, Default)]
pub struct TestArgs {
    /// Skip fmt and clippy (for quick local iterations; CI never sets it).
    #[arg(long)]
    pub no_lint: bool,
}

/// Runs the whole test set-up and suite.
pub fn run(args: &TestArgs) -> Result<()> {
    host::ensure_all()?;
    host::ensure_gvproxy()?;
    crate::images::ensure()?;
    let python = crate::clients::ensure()?;
    if !args.no_lint {
        crate::lint::run()?;
    }
    eprintln!("xtask: cargo test --workspace");
    // The images are built: VM tests must run, never skip.
    run_checked(
        cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            .env("AIRLOCK_REQUIRE_VM_TESTS", "1")
            .env(crate::clients::PYTHON_ENV, python),
    )
}
