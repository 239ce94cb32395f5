//! `cargo xtask demo`: set the host up, build the images, then run one
//! Python, one JavaScript and one shell snippet through `airlock run`.

use crate::host::{self, workspace_root};
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::Instant;

/// The snippets: (language, code).
const SNIPPETS: &[(&str, &str)] = &[
    ("python", "import platform; print(f'hello from Python {platform.python_version()} on', platform.machine())"),
    ("javascript", "console.log(`hello from Node ${process.version}`, 6 * 7)"),
    ("raw", "echo \"hello from $(uname -sr) as uid $(id -u)\""),
];

/// Runs the demo.
pub fn run() -> Result<()> {
    host::ensure_all()?;
    host::ensure_gvproxy()?;
    crate::images::ensure()?;
    let airlock = host::release_airlock()?;
    for (language, code) in SNIPPETS {
        eprintln!("\n$ airlock run -l {language} '{code}'");
        let start = Instant::now();
        let status = Command::new(&airlock)
            .args(["run", "-l", language, code])
            .current_dir(workspace_root())
            .status()
            .with_context(|| format!("cannot start {}", airlock.display()))?;
        eprintln!(
            "  -> exit {} in {:.2} s",
            status.code().unwrap_or(-1),
            start.elapsed().as_secs_f64()
        );
        if !status.success() {
            bail!("the {language} snippet failed ({status})");
        }
    }
    Ok(())
}
