//! The Python clients of the server tests: a venv under the Airlock cache
//! (`<cache>/venv-clients`) with the pinned packages of
//! `tests/clients/requirements.txt` (httpx, the official `mcp`, schemathesis,
//! E2B's `e2b` and `e2b-code-interpreter`), made with
//! Debian's `python3 -m venv` and filled from PyPI once; remade when the
//! requirements change.

use crate::host::{run_checked, workspace_root};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The variable that tells the server tests which Python to use.
pub const PYTHON_ENV: &str = "AIRLOCK_TEST_PYTHON";

/// Makes (or reuses) the venv; returns its `python`.
///
/// # Errors
/// When the venv cannot be made or pip fails.
pub fn ensure() -> Result<PathBuf> {
    ensure_venv(
        "venv-clients",
        "tests/clients/requirements.txt",
        "test clients'",
    )
}

/// The deployment checks' venv (`<cache>/venv-deploy`: `kubernetes-validate`
/// and `checkov`, pinned in `deploy/requirements.txt`), apart from the
/// clients' so that checkov's many pins cannot clash with theirs.
///
/// # Errors
/// As [`ensure`].
pub fn ensure_deploy() -> Result<PathBuf> {
    ensure_venv(
        "venv-deploy",
        "deploy/requirements.txt",
        "deployment checks'",
    )
}

/// Makes (or reuses) `<cache>/<name>` with the pinned packages of
/// `requirements` (relative to the workspace), remade when they change;
/// returns its `python`.
fn ensure_venv(name: &str, requirements: &str, what: &str) -> Result<PathBuf> {
    let dirs = airlock_sys_util::AirlockDirs::from_env().context("find the Airlock cache dir")?;
    let venv = dirs.cache.join(name);
    let python = venv.join("bin").join("python");
    let requirements = workspace_root().join(requirements);
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("read {}", requirements.display()))?;
    let stamp = venv.join("requirements.installed");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    eprintln!("xtask: making the {what} venv at {}", venv.display());
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("remove {}", venv.display()))?;
    }
    // Debian's interpreter: python3-venv is a host requirement of the tests.
    run_checked(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv),
    )?;
    run_checked(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements),
    )?;
    std::fs::write(&stamp, wanted).with_context(|| format!("write {}", stamp.display()))?;
    Ok(python)
}
