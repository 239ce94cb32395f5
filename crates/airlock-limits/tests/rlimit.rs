//! The rlimit backend, for real: limits set in the child between fork and
//! exec, enforced by the kernel. Needs no privilege.

// A test crate: a failed unwrap is a failed test, in helpers too.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use airlock_limits::{Backend, BackendKind, Limiter, Limits, ProbeResult, DEFAULT_REMOVE_TIMEOUT};
use support::{python, wait_with_deadline};

fn rlimit_limiter() -> Limiter {
    Limiter::from_probe(ProbeResult {
        backend: Backend::Rlimit,
        reason: "forced by the test".into(),
    })
}

const ALLOC: &str = "\
import sys
try:
    b = b'\\x01' * (int(sys.argv[1]) << 20)
except MemoryError:
    sys.exit(3)
";

#[test]
fn allocation_beyond_the_address_space_cap_fails() {
    let Some(py) = python("allocation_beyond_the_address_space_cap_fails") else {
        return;
    };
    let limits = Limits {
        memory_mib: 50,
        address_space_mib: 100,
        ..Limits::default()
    };
    let group = rlimit_limiter().create("t", "as-cap", &limits).unwrap();
    let run = |mib: &str| {
        let mut cmd = Command::new(&py);
        cmd.args(["-c", ALLOC, mib]);
        group.prepare_command(&mut cmd).unwrap();
        let mut child = cmd.spawn().unwrap();
        wait_with_deadline(&mut child, Duration::from_secs(30))
    };

    // A small allocation fits: the interpreter itself runs fine.
    assert_eq!(run("10").code(), Some(0));
    // 200 MiB exceeds the 100 MiB address space: MemoryError.
    assert_eq!(run("200").code(), Some(3));
}

#[test]
fn busy_loop_past_the_cpu_time_cap_is_killed() {
    let limits = Limits {
        cpu_time_max: Some(Duration::from_secs(1)),
        ..Limits::default()
    };
    let group = rlimit_limiter().create("t", "cpu-cap", &limits).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "while :; do :; done"]);
    group.prepare_command(&mut cmd).unwrap();

    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(20));

    eprintln!("RLIMIT_CPU 1 s: {status:?} after {:?}", start.elapsed());
    assert!(
        matches!(status.signal(), Some(libc::SIGXCPU | libc::SIGKILL)),
        "{status:?}"
    );
}

#[test]
fn core_dumps_are_off_and_open_files_capped() {
    let limits = Limits {
        open_files_max: 123,
        ..Limits::default()
    };
    let group = rlimit_limiter().create("t", "nofile", &limits).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -c; ulimit -n"]);
    group.prepare_command(&mut cmd).unwrap();
    let out = cmd.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n123\n");
}

#[test]
fn attach_pid_sets_limits_of_a_running_process() {
    let limits = Limits {
        open_files_max: 321,
        ..Limits::default()
    };
    let group = rlimit_limiter().create("t", "prlimit", &limits).unwrap();
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();

    group.attach_pid(child.id()).unwrap();

    let text = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(line.split_whitespace().nth(3), Some("321"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn rlimit_group_has_no_directories_stats_or_removal_work() {
    let group = rlimit_limiter()
        .create("t", "nothing", &Limits::default())
        .unwrap();
    assert_eq!(group.kind(), BackendKind::Rlimit);
    assert!(group.dirs().is_empty());
    assert_eq!(group.stats().unwrap(), airlock_limits::Stats::default());
    let report = group.remove(DEFAULT_REMOVE_TIMEOUT);
    assert!(report.is_clean() && report.removed_dirs.is_empty());
}
