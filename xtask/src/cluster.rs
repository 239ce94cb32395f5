//! `cargo xtask cluster-test`: the Kubernetes deployment checked and its
//! routing tried on three nodes, with no Kubernetes (docs/deploy.md).
//!
//! 1. The manifests under `deploy/kubernetes/` are validated against the
//!    Kubernetes schemas (`kubernetes-validate --strict`) and checked for
//!    privileges (`checkov`; each accepted finding is annotated with its
//!    reason), both from PyPI in `<cache>/venv-deploy`.
//! 2. `tests/clients/cluster_client.py` starts three `airlock serve`
//!    nodes in network namespaces of their own and Debian's nginx in front
//!    with the shipped routing, and shows sessions routed by node, a
//!    killed node's sessions lost, a drained node exiting 0, a restarted
//!    node rejoining.
//!
//! Needs root (namespaces, the jail). `cargo xtask test` runs it last.

use crate::host::{self, cargo, run_checked, workspace_root};
use anyhow::{bail, Result};
use std::process::Command;

/// What the cluster test needs on the host besides the tests' own.
fn requirements() -> Vec<host::Requirement> {
    vec![
        host::Requirement::new("ip", "iproute2"),
        host::Requirement::new("/usr/sbin/nginx", "nginx"),
    ]
}

/// Runs the whole cluster test, set-up included.
///
/// # Errors
/// When a step of the set-up, a check or the test fails.
pub fn run() -> Result<()> {
    host::ensure_all()?;
    host::ensure_gvproxy()?;
    crate::images::ensure()?;
    let python = crate::clients::ensure()?;
    run_prepared(&python)
}

/// The cluster test on a host whose tests are set up already (`cargo
/// xtask test` calls it last, with its clients' Python).
///
/// # Errors
/// As [`run`].
pub fn run_prepared(python: &std::path::Path) -> Result<()> {
    if !host::is_root() {
        bail!("cargo xtask cluster-test needs root: it makes network namespaces and jails QEMU");
    }
    host::ensure(&requirements())?;
    check_manifests()?;
    eprintln!("xtask: building the airlock binary");
    run_checked(cargo().args(["build", "-p", "airlock-cli", "--bin", "airlock"]))?;
    let airlock = host::target_dir().join("debug").join("airlock");
    // Each node gets a cache of its own over these images.
    let images = airlock_sys_util::AirlockDirs::from_env()?.images;
    let started = std::time::Instant::now();
    run_checked(
        Command::new(python)
            .arg(workspace_root().join("tests/clients/cluster_client.py"))
            .env("AIRLOCK_BIN", airlock)
            .env("AIRLOCK_IMAGES", images),
    )?;
    eprintln!(
        "xtask: cluster test passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Validates the manifests and checks their privileges.
fn check_manifests() -> Result<()> {
    let python = crate::clients::ensure_deploy()?;
    let bin = python
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let dir = workspace_root().join("deploy/kubernetes");
    let mut manifests: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    manifests.sort();
    eprintln!("xtask: kubernetes-validate --strict deploy/kubernetes/*.yaml");
    run_checked(
        Command::new(bin.join("kubernetes-validate"))
            .args(["--strict", "--quiet"])
            .args(&manifests),
    )?;
    eprintln!("xtask: checkov (kubernetes) on deploy/kubernetes");
    run_checked(
        Command::new(bin.join("checkov"))
            .arg("-d")
            .arg(&dir)
            .args([
                "--framework",
                "kubernetes",
                "--compact",
                "--quiet",
                "--skip-download",
            ])
            // No telemetry, no download of guidelines: offline and quiet.
            .env("BC_SKIP_MAPPING", "TRUE")
            .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false"),
    )
}
