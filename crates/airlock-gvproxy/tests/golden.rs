//! Golden tests: everything rendered for gvproxy, in `tests/golden/`: the
//! command line per version (one argument per line), the DNS zones and
//! port forwards pushed over the API (JSON), and the YAML `-config` file.
//!
//! Run with `AIRLOCK_BLESS=1` to rewrite the files after an intended change,
//! then review the diff.

#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions.

use airlock_gvproxy::{
    command_line, dns_zones, expose_requests, render_yaml, Addressing, DomainPattern, Expose,
    GvproxySpec, GvproxyVersion, NetworkMode, NetworkPolicy,
};
use std::path::{Path, PathBuf};

const DIR: &str = "/run/airlock/vm-golden/net";
const OLD: GvproxyVersion = GvproxyVersion::new(0, 8, 1);
const NEW: GvproxyVersion = GvproxyVersion::new(0, 8, 8);

fn spec(mode: NetworkMode) -> GvproxySpec {
    let allow = match mode {
        NetworkMode::Allowlist => ["pypi.org", "files.pythonhosted.org", "*.example.com"]
            .iter()
            .map(|d| DomainPattern::parse(d).unwrap())
            .collect(),
        _ => vec![],
    };
    let policy = NetworkPolicy {
        vm_id: "vm-golden".into(),
        mode,
        allow,
        exposes: vec![
            Expose::parse("8080").unwrap(),
            Expose::parse("5432:15432").unwrap(),
        ],
    };
    let spec = GvproxySpec::new(policy, DIR);
    spec.validate().unwrap();
    spec
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap() + "\n"
}

/// Every golden case: file name and rendered text.
fn cases() -> Vec<(String, String)> {
    let mut cases = Vec::new();
    for (name, version) in [("0.8.1", OLD), ("0.8.8", NEW)] {
        let argv = command_line(&spec(NetworkMode::Allowlist), version);
        let lines: String = argv
            .iter()
            .map(|a| format!("{}\n", a.to_string_lossy()))
            .collect();
        cases.push((format!("cmdline-{name}.args"), lines));
    }
    for (name, mode) in [
        ("allowlist", NetworkMode::Allowlist),
        ("ports", NetworkMode::Ports),
    ] {
        let s = spec(mode);
        let legacy = Addressing::for_version(s.vm_id(), OLD);
        cases.push((
            format!("dns-zones-{name}-0.8.1.json"),
            json(&dns_zones(&s.policy, legacy)),
        ));
        let per_vm = Addressing::for_version(s.vm_id(), NEW);
        cases.push((format!("config-{name}-0.8.8.yaml"), render_yaml(&s, per_vm)));
    }
    let s = spec(NetworkMode::Ports);
    cases.push((
        "expose-requests-0.8.1.json".into(),
        json(&expose_requests(&s, Addressing::LEGACY)),
    ));
    cases
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn rendered_files_match_golden_files() {
    let bless = std::env::var_os("AIRLOCK_BLESS").is_some_and(|v| v == "1");
    let mut mismatches = Vec::new();
    for (name, actual) in cases() {
        let path = golden_dir().join(&name);
        if bless {
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != actual {
            mismatches.push(format!("--- {}\n+++ actual\n{actual}", path.display()));
        }
    }
    assert!(
        mismatches.is_empty(),
        "rendering differs from the golden files (rerun with AIRLOCK_BLESS=1 if intended):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn no_golden_file_is_stale() {
    let names: Vec<String> = cases().into_iter().map(|(n, _)| n).collect();
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(names.contains(&file), "{file} matches no case: delete it");
    }
}

#[test]
fn zone_bodies_are_what_gvproxy_reads() {
    // The API body is the compact form of the golden zone: gvproxy decodes
    // `name`, `records[].name|regexp|ip`, and treats a missing `defaultIP`
    // as none (NXDOMAIN).
    let s = spec(NetworkMode::Allowlist);
    let zones = dns_zones(&s.policy, Addressing::LEGACY);
    let body = serde_json::to_string(&zones[0]).unwrap();
    assert_eq!(
        body,
        r#"{"name":"","records":[{"name":"pypi.org","ip":"192.168.127.254"},{"name":"files.pythonhosted.org","ip":"192.168.127.254"},{"regexp":"(?i)^([a-z0-9-]+\\.)+example\\.com$","ip":"192.168.127.254"}]}"#
    );
}
