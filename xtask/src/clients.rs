//! The Python clients of the server tests: a venv under the Airlock cache
//! (`<cache>/venv-clients`) with the pinned packages of
//! `tests/clients/requirements.txt` (httpx, the official `mcp`, schemathesis,
//! E2B's `e2b` and `e2b-code-interpreter`) and their dependencies at the
//! versions of `tests/clients/constraints.txt`, made with
//! Debian's `python3 -m venv` and filled from PyPI once; remade when the
//! requirements change. And the JavaScript clients: E2B's
//! `@e2b/code-interpreter` under Debian's Node, installed with `npm ci`
//! from `tests/clients/node/package-lock.json` into `<cache>/node-clients`
//! once; remade when the lock changes.

use crate::host::{run_checked, workspace_root};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The variable that tells the server tests which Python to use.
pub const PYTHON_ENV: &str = "AIRLOCK_TEST_PYTHON";

/// The variable that tells the server tests where the JavaScript clients'
/// `node_modules` is (they run `node` with it as `NODE_PATH`).
pub const NODE_PATH_ENV: &str = "AIRLOCK_TEST_NODE_PATH";

/// Makes (or reuses) the venv; returns its `python`.
///
/// # Errors
/// When the venv cannot be made or pip fails.
pub fn ensure() -> Result<PathBuf> {
    ensure_venv(
        "venv-clients",
        "tests/clients/requirements.txt",
        "tests/clients/constraints.txt",
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
        "deploy/constraints.txt",
        "deployment checks'",
    )
}

/// Makes (or reuses) `<cache>/<name>` with the pinned packages of
/// `requirements`, every dependency pinned by `constraints` (both relative
/// to the workspace: a fresh machine gets what the tests were green with,
/// not what PyPI resolves that day), remade when either changes; returns
/// its `python`.
fn ensure_venv(name: &str, requirements: &str, constraints: &str, what: &str) -> Result<PathBuf> {
    let dirs = airlock_sys_util::AirlockDirs::from_env().context("find the Airlock cache dir")?;
    let venv = dirs.cache.join(name);
    let python = venv.join("bin").join("python");
    let (requirements, constraints) = (
        workspace_root().join(requirements),
        workspace_root().join(constraints),
    );
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
    };
    let wanted = format!(
        "{}\n# constraints\n{}",
        read(&requirements)?,
        read(&constraints)?
    );
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
                "-c",
            ])
            .arg(&constraints)
            .arg("-r")
            .arg(&requirements),
    )?;
    std::fs::write(&stamp, wanted).with_context(|| format!("write {}", stamp.display()))?;
    Ok(python)
}

/// Makes (or reuses) `<cache>/node-clients` with `npm ci` from the pinned
/// lock; returns its `node_modules`.
///
/// # Errors
/// When the files cannot be copied or npm fails.
pub fn ensure_node() -> Result<PathBuf> {
    let dirs = airlock_sys_util::AirlockDirs::from_env().context("find the Airlock cache dir")?;
    let dir = dirs.cache.join("node-clients");
    let modules = dir.join("node_modules");
    let source = workspace_root().join("tests/clients/node");
    let read = |name: &str| {
        let path = source.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
    };
    let (manifest, lock) = (read("package.json")?, read("package-lock.json")?);
    let stamp = dir.join("lock.installed");
    if modules.is_dir() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == lock) {
        return Ok(modules);
    }
    eprintln!(
        "xtask: installing the JavaScript test clients into {}",
        dir.display()
    );
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("make {}", dir.display()))?;
    for (name, text) in [("package.json", &manifest), ("package-lock.json", &lock)] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    // `ci` installs exactly the lock's versions and checks their hashes.
    // npm is not a host requirement: Debian's `npm` package conflicts with
    // NodeSource's `nodejs`, which bundles npm.
    if airlock_sys_util::which("npm").is_none() {
        anyhow::bail!(
            "no npm for the JavaScript test clients: install Debian's `npm` package (apt-get install npm) or a nodejs that bundles it"
        );
    }
    run_checked(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
            .current_dir(&dir),
    )?;
    std::fs::write(&stamp, lock).with_context(|| format!("write {}", stamp.display()))?;
    Ok(modules)
}
