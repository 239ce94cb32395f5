//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use airlock_limits::{BackendKind, Limiter, ProbeConfig, SweepOptions};

/// A limiter and a tenant of its own for one test. The tenant id holds the
/// test's pid and name, so neither parallel tests nor concurrent runs
/// share it; on drop (also after a failed assertion) every empty group of
/// the tenant and the tenant itself are removed.
pub struct Fixture {
    /// The limiter under test.
    pub limiter: Limiter,
    /// This test's tenant id.
    pub tenant: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.limiter.sweep_stale(&SweepOptions {
            min_age: Duration::ZERO,
            tenant: Some(self.tenant.clone()),
        });
    }
}

/// A fixture over `limiter` for the test `test`.
pub fn fixture(limiter: Limiter, test: &str) -> Fixture {
    let tenant = format!("test-{}-{test}", std::process::id());
    Fixture { limiter, tenant }
}

/// A fixture over this host's cgroup v1, or `None` after printing why the
/// calling test is skipped.
pub fn v1_fixture(test: &str) -> Option<Fixture> {
    // Effective uid from /proc/self/status (no unsafe needed in tests).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("");
    if euid != "0" {
        eprintln!("SKIP: {test}: needs root to create cgroup v1 groups");
        return None;
    }
    let limiter = Limiter::probe(&ProbeConfig {
        try_cgroup_v2: false,
        ..ProbeConfig::default()
    });
    if limiter.kind() != BackendKind::CgroupV1 {
        eprintln!(
            "SKIP: {test}: no usable cgroup v1 here: {}",
            limiter.reason()
        );
        return None;
    }
    Some(fixture(limiter, test))
}

/// A Python 3 interpreter that is a real binary (not a shell shim that
/// would fork helpers inside the group), or `None` after printing SKIP.
pub fn python(test: &str) -> Option<PathBuf> {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        let p = PathBuf::from(p);
        if p.exists() {
            return Some(p);
        }
    }
    eprintln!("SKIP: {test}: no /usr/bin/python3");
    None
}

/// Waits for a child with a deadline, killing it when the deadline passes.
pub fn wait_with_deadline(child: &mut Child, deadline: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            panic!("child still running after {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a pid is gone or a zombie.
pub fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}
