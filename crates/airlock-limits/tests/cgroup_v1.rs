//! The cgroup v1 backend, for real, on a host that mounts memory, cpu and
//! pids as v1 hierarchies (run as root). Elsewhere each test prints
//! `SKIP: reason` and returns.

// A test crate: a failed unwrap is a failed test, in helpers too.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_limits::{Limits, LimitsError, SweepOptions, DEFAULT_REMOVE_TIMEOUT};
use support::{is_dead, python, v1_fixture, wait_with_deadline};

fn small_limits() -> Limits {
    Limits {
        memory_mib: 64,
        cpu_millis: 1000,
        pids_max: 64,
        ..Limits::default()
    }
}

#[test]
fn child_runs_inside_its_group_from_exec() {
    let Some(fx) = v1_fixture("child_runs_inside_its_group_from_exec") else {
        return;
    };
    let group = fx
        .limiter
        .create(&fx.tenant, "attach-exec", &small_limits())
        .unwrap();

    let mut cmd = Command::new("cat");
    cmd.arg("/proc/self/cgroup");
    group.prepare_command(&mut cmd).unwrap();
    let out = cmd.output().unwrap();

    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("/airlock/{}/attach-exec", fx.tenant);
    for controller in ["memory", "cpu", "pids"] {
        assert!(
            text.lines().any(|l| l
                .split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == controller))
                && l.ends_with(&want)),
            "{controller} not joined:\n{text}"
        );
    }
    assert!(group.remove(DEFAULT_REMOVE_TIMEOUT).is_clean());
}

#[tokio::test]
async fn tokio_child_runs_inside_its_group() {
    let Some(fx) = v1_fixture("tokio_child_runs_inside_its_group") else {
        return;
    };
    let group = fx
        .limiter
        .create(&fx.tenant, "attach-tokio", &small_limits())
        .unwrap();

    let mut cmd = tokio::process::Command::new("cat");
    cmd.arg("/proc/self/cgroup");
    group.prepare_tokio_command(&mut cmd).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .unwrap()
        .unwrap();

    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("memory:/airlock/{}/attach-tokio", fx.tenant)),
        "{text}"
    );
    assert!(group.remove_async(DEFAULT_REMOVE_TIMEOUT).await.is_clean());
}

#[test]
fn limits_are_written_to_each_hierarchy() {
    let Some(fx) = v1_fixture("limits_are_written_to_each_hierarchy") else {
        return;
    };
    let limits = Limits {
        memory_mib: 80,
        cpu_millis: 1500,
        pids_max: 33,
        ..Limits::default()
    };
    let group = fx.limiter.create(&fx.tenant, "written", &limits).unwrap();

    let read = |file: &str| {
        group
            .dirs()
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .unwrap_or_else(|| panic!("{file} missing"))
            .trim()
            .to_owned()
    };
    assert_eq!(read("memory.limit_in_bytes"), (80u64 << 20).to_string());
    assert_eq!(read("cpu.cfs_period_us"), "100000");
    assert_eq!(read("cpu.cfs_quota_us"), "150000");
    assert_eq!(read("pids.max"), "33");
    let memsw = group
        .dirs()
        .iter()
        .any(|d| d.join("memory.memsw.limit_in_bytes").exists());
    if memsw {
        assert_eq!(
            read("memory.memsw.limit_in_bytes"),
            (80u64 << 20).to_string(),
            "no swap"
        );
    } else {
        assert_eq!(read("memory.swappiness"), "0");
    }
    assert!(group.remove(DEFAULT_REMOVE_TIMEOUT).is_clean());
}

#[test]
fn process_over_memory_limit_is_oom_killed_and_counted() {
    let Some(fx) = v1_fixture("process_over_memory_limit_is_oom_killed_and_counted") else {
        return;
    };
    let Some(py) = python("process_over_memory_limit_is_oom_killed_and_counted") else {
        return;
    };
    let limits = Limits {
        memory_mib: 50,
        ..small_limits()
    };
    let group = fx.limiter.create(&fx.tenant, "oom", &limits).unwrap();

    // Arrange: a child that fills 200 MiB (bytes repetition touches every page).
    let mut cmd = Command::new(py);
    cmd.args(["-c", "b = b'\\x01' * (200 << 20); print('survived')"])
        .stdout(Stdio::piped());
    group.prepare_command(&mut cmd).unwrap();

    // Act
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(30));
    let took = start.elapsed();

    // Assert
    assert_eq!(status.signal(), Some(libc::SIGKILL), "status {status:?}");
    let stats = group.stats().unwrap();
    eprintln!("oom: killed after {took:?}, stats {stats:?}");
    assert!(stats.oom_kills.unwrap() >= 1, "{stats:?}");
    assert!(stats.memory_peak_bytes.unwrap() <= 50 << 20, "{stats:?}");
    assert!(stats.memory_peak_bytes.unwrap() >= 40 << 20, "{stats:?}");
    assert!(group.remove(DEFAULT_REMOVE_TIMEOUT).is_clean());
}

#[test]
fn fork_loop_stops_at_the_pids_cap() {
    let Some(fx) = v1_fixture("fork_loop_stops_at_the_pids_cap") else {
        return;
    };
    let Some(py) = python("fork_loop_stops_at_the_pids_cap") else {
        return;
    };
    let limits = Limits {
        pids_max: 16,
        ..small_limits()
    };
    let group = fx.limiter.create(&fx.tenant, "forkloop", &limits).unwrap();

    // A parent that forks sleeping children until fork fails, prints how
    // many it got, then waits to be killed.
    let script = "\
import os, sys, time
n = 0
while n < 1000:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
print(n, flush=True)
time.sleep(60)
";
    let mut cmd = Command::new(py);
    cmd.args(["-c", script]).stdout(Stdio::piped());
    group.prepare_command(&mut cmd).unwrap();
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let forked: u32 = line.trim().parse().unwrap();

    let stats = group.stats().unwrap();
    eprintln!(
        "fork loop: {forked} children under pids.max=16, pids.current={:?}",
        stats.pids_current
    );
    assert!((12..=15).contains(&forked), "forked {forked}");
    assert!(stats.pids_current.unwrap() <= 16);

    let report = group.remove(DEFAULT_REMOVE_TIMEOUT);
    assert!(report.is_clean(), "{report:?}");
    assert!(
        report.killed_pids.len() as u32 > forked,
        "parent and children killed: {report:?}"
    );
    let status = wait_with_deadline(&mut child, Duration::from_secs(5));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

#[test]
fn busy_loop_under_a_fifth_of_a_cpu_uses_about_a_fifth() {
    let Some(fx) = v1_fixture("busy_loop_under_a_fifth_of_a_cpu_uses_about_a_fifth") else {
        return;
    };
    let limits = Limits {
        cpu_millis: 200,
        ..small_limits()
    };
    let group = fx.limiter.create(&fx.tenant, "cpuquota", &limits).unwrap();

    let mut cmd = Command::new("sh");
    cmd.args(["-c", "while :; do :; done"]);
    group.prepare_command(&mut cmd).unwrap();
    let mut child = cmd.spawn().unwrap();
    let before = group.stats().unwrap().cpu_usage;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let after = group.stats().unwrap().cpu_usage;
    let wall = start.elapsed();

    let (Some(before), Some(after)) = (before, after) else {
        eprintln!("SKIP: busy_loop_under_a_fifth_of_a_cpu_uses_about_a_fifth: no cpuacct hierarchy for CPU time");
        let _ = child.kill();
        let _ = child.wait();
        let _ = group.remove(DEFAULT_REMOVE_TIMEOUT);
        return;
    };
    let share = (after - before).as_secs_f64() / wall.as_secs_f64();
    eprintln!("cpu quota 0.2: used {:.3} of a CPU over {wall:?}", share);
    assert!((0.10..=0.35).contains(&share), "share {share}");

    assert!(group.remove(DEFAULT_REMOVE_TIMEOUT).is_clean());
    let status = wait_with_deadline(&mut child, Duration::from_secs(5));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

#[test]
fn removal_with_live_processes_leaves_nothing_behind() {
    let Some(fx) = v1_fixture("removal_with_live_processes_leaves_nothing_behind") else {
        return;
    };
    let group = fx
        .limiter
        .create(&fx.tenant, "remove-live", &small_limits())
        .unwrap();

    // Arrange: a shell with two background children, plus a process
    // attached after start by pid.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 60 & sleep 60 & wait"]);
    group.prepare_command(&mut cmd).unwrap();
    let mut shell = cmd.spawn().unwrap();
    let mut late = Command::new("sleep").arg("60").spawn().unwrap();
    group.attach_pid(late.id()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while group.pids().len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids = group.pids();
    assert_eq!(pids.len(), 4, "{pids:?}");

    // Act
    let report = group.remove(DEFAULT_REMOVE_TIMEOUT);

    // Assert
    eprintln!("remove: {report:?}");
    assert!(report.is_clean(), "{report:?}");
    assert!(report.froze, "the freezer hierarchy is used when mounted");
    assert_eq!(report.killed_pids, pids);
    for dir in group.dirs() {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert_eq!(
        wait_with_deadline(&mut shell, Duration::from_secs(5)).signal(),
        Some(libc::SIGKILL)
    );
    assert_eq!(
        wait_with_deadline(&mut late, Duration::from_secs(5)).signal(),
        Some(libc::SIGKILL)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|p| is_dead(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(pids.iter().all(|p| is_dead(*p)), "a process survived");

    // A second removal is a no-op.
    let again = group.remove(DEFAULT_REMOVE_TIMEOUT);
    assert!(
        again.is_clean() && again.removed_dirs.is_empty(),
        "{again:?}"
    );
    assert_eq!(again.already_absent.len(), group.dirs().len());
}

#[test]
fn sweep_removes_stale_groups_and_leaves_busy_ones() {
    let Some(fx) = v1_fixture("sweep_removes_stale_groups_and_leaves_busy_ones") else {
        return;
    };
    let tenant = fx.tenant.clone();
    // A group whose VM "crashed": created, never removed.
    let stale = fx
        .limiter
        .create(&tenant, "stale", &small_limits())
        .unwrap();
    // A group with a live process.
    let busy = fx.limiter.create(&tenant, "busy", &small_limits()).unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    busy.prepare_command(&mut cmd).unwrap();
    let mut sleeper = cmd.spawn().unwrap();
    let only_ours = |min_age| SweepOptions {
        min_age,
        tenant: Some(tenant.clone()),
    };

    // Young groups are left alone.
    let young = fx
        .limiter
        .sweep_stale(&only_ours(Duration::from_secs(3600)));
    assert!(young.removed.is_empty(), "{young:?}");
    assert!(stale.dirs().iter().all(|d| d.exists()));

    let report = fx.limiter.sweep_stale(&only_ours(Duration::ZERO));
    eprintln!("sweep: {report:?}");
    assert_eq!(report.removed, vec![format!("airlock/{tenant}/stale")]);
    assert_eq!(report.busy, vec![format!("airlock/{tenant}/busy")]);
    assert!(stale.dirs().iter().all(|d| !d.exists()));
    assert!(busy.dirs().iter().all(|d| d.exists()));

    assert!(busy.remove(DEFAULT_REMOVE_TIMEOUT).is_clean());
    wait_with_deadline(&mut sleeper, Duration::from_secs(5));
    // Now the tenant is empty: the next sweep removes its directories.
    let last = fx.limiter.sweep_stale(&only_ours(Duration::ZERO));
    assert_eq!(last.removed_tenants, vec![tenant.clone()], "{last:?}");
}

#[test]
fn duplicate_group_is_refused() {
    let Some(fx) = v1_fixture("duplicate_group_is_refused") else {
        return;
    };
    let group = fx
        .limiter
        .create(&fx.tenant, "dup", &small_limits())
        .unwrap();
    let err = fx
        .limiter
        .create(&fx.tenant, "dup", &small_limits())
        .unwrap_err();
    assert!(
        matches!(&err, LimitsError::Create { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{err}"
    );
    assert!(
        group.dirs().iter().all(|d| d.exists()),
        "the first group is intact"
    );
    assert!(group.remove(DEFAULT_REMOVE_TIMEOUT).is_clean());
}

#[test]
fn bad_input_is_refused_before_touching_anything() {
    let Some(fx) = v1_fixture("bad_input_is_refused_before_touching_anything") else {
        return;
    };
    assert!(matches!(
        fx.limiter.create(&fx.tenant, "../x", &small_limits()),
        Err(LimitsError::InvalidId { .. })
    ));
    let bad = Limits {
        memory_mib: 1,
        ..small_limits()
    };
    assert!(matches!(
        fx.limiter.create(&fx.tenant, "bad-limits", &bad),
        Err(LimitsError::InvalidLimits { .. })
    ));
    for dir in fx.limiter.backend().airlock_dirs() {
        assert!(!dir.join(&fx.tenant).join("bad-limits").exists());
    }
}

#[test]
fn a_regrouped_v1_process_moves_with_its_memory_charges_and_the_old_group_goes() {
    let Some(fx) = v1_fixture("a_regrouped_v1_process_moves_with_its_memory_charges") else {
        return;
    };
    let pooled = fx
        .limiter
        .create(&fx.tenant, "regroup-v1", &small_limits())
        .unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    pooled.prepare_command(&mut cmd).unwrap();
    let mut child = cmd.spawn().unwrap();
    let other_tenant = format!("{}-taken", fx.tenant);

    let taken = fx.limiter.regroup(&pooled, &other_tenant).unwrap();

    assert_eq!(taken.pids(), vec![child.id()]);
    assert!(pooled.pids().is_empty());
    assert!(
        pooled.dirs().iter().all(|d| !d.exists()),
        "the old group is removed"
    );
    let memory = taken
        .dirs()
        .into_iter()
        .find(|d| d.join("memory.limit_in_bytes").exists())
        .unwrap();
    let immigrate = memory.join("memory.move_charge_at_immigrate");
    if immigrate.exists() {
        let value = std::fs::read_to_string(&immigrate).unwrap();
        // Kernels that dropped charge moving (6.x) keep the file but refuse
        // any value: then nothing could be done.
        let refused = std::fs::write(&immigrate, "3").is_err();
        assert!(value.trim() == "3" || refused, "{value:?}");
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(taken.remove(DEFAULT_REMOVE_TIMEOUT).is_clean());
    let _ = fx
        .limiter
        .remove_orphan(&other_tenant, "regroup-v1", DEFAULT_REMOVE_TIMEOUT);
}
