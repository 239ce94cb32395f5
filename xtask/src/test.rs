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
    let node_path = crate::clients::ensure_node()?;
    if !args.no_lint {
        crate::lint::run()?;
    }
    eprintln!("xtask: cargo test --workspace");
    let mut test = cargo();
    // The images are built: VM tests must run, never skip.
    test.args(["test", "--workspace", "--no-fail-fast"])
        .env("AIRLOCK_REQUIRE_VM_TESTS", "1")
        .env(crate::clients::PYTHON_ENV, &python)
        .env(crate::clients::NODE_PATH_ENV, node_path);
    if let Some(answer) = registry_answered_with_documentation_address() {
        // The egress proxy refuses documentation addresses; the tests
        // that install packages must reach the registries all the same.
        eprintln!(
            "xtask: this host's DNS answers {answer} (a documentation address): tests run with {DOC_RANGES_ENV}=1"
        );
        test.env(DOC_RANGES_ENV, "1");
    }
    run_checked(&mut test)?;
    // Last: the deployment checks and three nodes behind a proxy.
    crate::cluster::run_prepared(&python)
}

/// The library's variable that lets the egress proxy reach documentation
/// addresses (`airlock::ALLOW_DOC_RANGES_ENV`).
const DOC_RANGES_ENV: &str = "AIRLOCK_EGRESS_ALLOW_DOC_RANGES";

/// `name -> address` when this host resolves a package registry the
/// tests reach to a documentation address (192.0.2/24, 198.51.100/24,
/// 203.0.113/24, 2001:db8::/32), as a sandboxed development gateway does.
fn registry_answered_with_documentation_address() -> Option<String> {
    use std::net::{IpAddr, ToSocketAddrs};
    let is_documentation = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => matches!(
            v4.octets(),
            [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]
        ),
        IpAddr::V6(v6) => v6.segments()[..2] == [0x2001, 0x0db8],
    };
    ["pypi.org", "files.pythonhosted.org", "registry.npmjs.org"]
        .into_iter()
        .find_map(|name| {
            let addrs = (name, 443).to_socket_addrs().ok()?;
            addrs
                .map(|a| a.ip())
                .find(|ip| is_documentation(*ip))
                .map(|ip| format!("{name} -> {ip}"))
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_variable_is_the_librarys() {
        // xtask does not depend on the library; the name is checked here.
        let config = include_str!("../../crates/airlock/src/config.rs");
        assert!(config.contains(&format!("\"{}\"", super::DOC_RANGES_ENV)));
    }
}
