//! The probe on this host: whatever it picks, it says why.

// A test crate: a failed unwrap is a failed test, in helpers too.
#![allow(clippy::unwrap_used)]

use airlock_limits::{probe, BackendKind, ProbeConfig};

#[test]
fn host_probe_explains_its_choice() {
    let r = probe(&ProbeConfig::default());
    eprintln!("host probe: {} -- {}", r.kind(), r.reason);
    let expected = match r.kind() {
        BackendKind::CgroupV2 => "using cgroup v2",
        BackendKind::CgroupV1 => "using cgroup v1",
        BackendKind::Rlimit => "using rlimits",
    };
    assert!(r.reason.contains(expected), "{}", r.reason);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v1_memory = mountinfo
        .lines()
        .any(|l| l.contains(" - cgroup ") && l.ends_with(",memory"));
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if root && v1_memory {
        assert_ne!(
            r.kind(),
            BackendKind::Rlimit,
            "root with v1 memory mounted must use cgroups: {}",
            r.reason
        );
    }
}
