//! The cgroup v2 backend against a temporary directory laid out like
//! cgroupfs (this host has no v2 controllers to test for real), and the
//! probe's three outcomes on fake mount tables that point there.

// A test crate: a failed unwrap is a failed test, in helpers too.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use airlock_limits::{
    probe_with, Backend, BackendKind, Limiter, Limits, ProbeConfig, ProbeInputs, SweepOptions,
};

const ALL_CONTROLLERS: &str = "cpuset cpu io memory hugetlb pids rdma misc\n";

/// A fake v2 root: interface files of a root cgroup.
fn fake_v2_root(controllers: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("cgroup.controllers"), controllers).unwrap();
    fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
    fs::write(dir.path().join("cgroup.procs"), "").unwrap();
    dir
}

fn v2_mountinfo(root: &Path) -> String {
    format!(
        "41 31 0:38 / {} rw,relatime - cgroup2 cgroup2 rw\n",
        root.display()
    )
}

fn inputs(mountinfo: String, euid: u32) -> ProbeInputs {
    ProbeInputs {
        mountinfo,
        self_cgroup: "0::/\n".into(),
        euid,
    }
}

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

#[test]
fn probe_picks_v2_and_enables_controllers_for_children() {
    let root = fake_v2_root(ALL_CONTROLLERS);

    let r = probe_with(
        &inputs(v2_mountinfo(root.path()), 0),
        &ProbeConfig::default(),
    );

    assert_eq!(r.kind(), BackendKind::CgroupV2, "{}", r.reason);
    assert_eq!(
        r.backend,
        Backend::CgroupV2 {
            parent: root.path().to_owned()
        }
    );
    assert!(r.reason.starts_with("using cgroup v2 at"), "{}", r.reason);
    assert_eq!(
        read(root.path().join("cgroup.subtree_control")),
        "+memory +cpu +pids"
    );
}

#[test]
fn probe_falls_back_to_v1_when_v2_lacks_controllers() {
    // The development machine's layout: a controller-less v2 mount beside
    // v1 hierarchies.
    let v2 = fake_v2_root("");
    let v1 = tempfile::tempdir().unwrap();
    let mut mountinfo = v2_mountinfo(v2.path());
    for (i, c) in ["memory", "cpu,cpuacct", "pids", "freezer"]
        .iter()
        .enumerate()
    {
        let dir = v1.path().join(c);
        fs::create_dir(&dir).unwrap();
        mountinfo += &format!(
            "{} 31 0:{i} / {} rw - cgroup cgroup rw,{c}\n",
            50 + i,
            dir.display()
        );
    }

    let r = probe_with(&inputs(mountinfo, 0), &ProbeConfig::default());

    assert_eq!(r.kind(), BackendKind::CgroupV1, "{}", r.reason);
    assert!(
        r.reason
            .contains("controllers memory,cpu,pids missing from cgroup.controllers"),
        "{}",
        r.reason
    );
    assert!(
        r.reason.contains("using cgroup v1: memory at"),
        "{}",
        r.reason
    );
    let Backend::CgroupV1 { hierarchies } = &r.backend else {
        unreachable!()
    };
    assert_eq!(hierarchies.len(), 4);

    // The v1 backend writes its files there too.
    let group = Limiter::from_probe(r)
        .create(
            "t",
            "vm",
            &Limits {
                memory_mib: 100,
                cpu_millis: 500,
                pids_max: 9,
                ..Limits::default()
            },
        )
        .unwrap();
    assert_eq!(
        read(v1.path().join("memory/airlock/t/vm/memory.limit_in_bytes")),
        (100u64 << 20).to_string()
    );
    assert_eq!(
        read(v1.path().join("memory/airlock/t/vm/memory.swappiness")),
        "0",
        "no memsw file: swappiness 0"
    );
    assert_eq!(
        read(v1.path().join("cpu,cpuacct/airlock/t/vm/cpu.cfs_quota_us")),
        "50000"
    );
    assert_eq!(
        read(v1.path().join("cpu,cpuacct/airlock/t/vm/cpu.cfs_period_us")),
        "100000"
    );
    assert_eq!(read(v1.path().join("pids/airlock/t/vm/pids.max")), "9");
    assert_eq!(group.dirs().len(), 4);
}

#[test]
fn probe_falls_back_to_rlimits_when_no_cgroup_is_usable() {
    let v2 = fake_v2_root("cpu io");
    let r = probe_with(&inputs(v2_mountinfo(v2.path()), 0), &ProbeConfig::default());
    assert_eq!(r.kind(), BackendKind::Rlimit);
    assert!(
        r.reason.contains("controllers memory,pids missing"),
        "{}",
        r.reason
    );
    assert!(
        r.reason
            .contains("no cgroup v1 hierarchy mounted for memory,cpu,pids"),
        "{}",
        r.reason
    );
}

#[test]
fn non_root_uses_its_own_delegated_cgroup() {
    let root = fake_v2_root(ALL_CONTROLLERS);
    let own = root.path().join("user.slice/run-1.scope");
    fs::create_dir_all(&own).unwrap();
    fs::write(own.join("cgroup.controllers"), ALL_CONTROLLERS).unwrap();
    let probe_in = ProbeInputs {
        mountinfo: v2_mountinfo(root.path()),
        self_cgroup: "0::/user.slice/run-1.scope\n".into(),
        euid: 1000,
    };

    let r = probe_with(&probe_in, &ProbeConfig::default());

    assert_eq!(
        r.backend,
        Backend::CgroupV2 {
            parent: own.clone()
        },
        "{}",
        r.reason
    );
    assert_eq!(
        read(own.join("cgroup.subtree_control")),
        "+memory +cpu +pids"
    );
    assert_eq!(
        read(root.path().join("cgroup.subtree_control")),
        "",
        "nothing above our cgroup is touched"
    );
}

fn v2_limiter(root: &Path) -> Limiter {
    Limiter::from_probe(probe_with(
        &inputs(v2_mountinfo(root), 0),
        &ProbeConfig::default(),
    ))
}

#[test]
fn create_writes_every_v2_limit() {
    let root = fake_v2_root(ALL_CONTROLLERS);
    let limiter = v2_limiter(root.path());
    let limits = Limits {
        memory_mib: 300,
        cpu_millis: 1250,
        pids_max: 64,
        ..Limits::default()
    };

    let group = limiter.create("tenant-1", "vm-1", &limits).unwrap();

    let vm = root.path().join("airlock/tenant-1/vm-1");
    assert_eq!(group.dirs(), vec![vm.as_path()]);
    assert_eq!(read(vm.join("memory.max")), (300u64 << 20).to_string());
    assert_eq!(read(vm.join("cpu.max")), "125000 100000");
    assert_eq!(read(vm.join("pids.max")), "64");
    // Optional files absent from this "kernel" are not invented.
    assert!(!vm.join("memory.swap.max").exists());
    assert!(!vm.join("memory.oom.group").exists());
    for level in ["airlock", "airlock/tenant-1"] {
        assert_eq!(
            read(root.path().join(level).join("cgroup.subtree_control")),
            "+memory +cpu +pids",
            "{level}"
        );
    }
}

#[test]
fn stats_read_v2_files() {
    let root = fake_v2_root(ALL_CONTROLLERS);
    let group = v2_limiter(root.path())
        .create("t", "stats", &Limits::default())
        .unwrap();
    let vm = group.dirs()[0].to_owned();
    fs::write(vm.join("memory.current"), "1048576\n").unwrap();
    fs::write(vm.join("memory.peak"), "4194304\n").unwrap();
    fs::write(
        vm.join("cpu.stat"),
        "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
    )
    .unwrap();
    fs::write(
        vm.join("memory.events"),
        "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 1\n",
    )
    .unwrap();
    fs::write(vm.join("pids.current"), "7\n").unwrap();

    let s = group.stats().unwrap();

    assert_eq!(s.memory_current_bytes, Some(1 << 20));
    assert_eq!(s.memory_peak_bytes, Some(4 << 20));
    assert_eq!(s.cpu_usage, Some(Duration::from_micros(1_500_000)));
    assert_eq!(s.oom_kills, Some(1));
    assert_eq!(s.pids_current, Some(7));
}

#[test]
fn child_writes_itself_into_v2_cgroup_procs_before_exec() {
    let root = fake_v2_root(ALL_CONTROLLERS);
    let group = v2_limiter(root.path())
        .create("t", "attach", &Limits::default())
        .unwrap();
    let procs = group.dirs()[0].join("cgroup.procs");
    fs::write(&procs, "").unwrap(); // the kernel provides this file

    let mut cmd = Command::new("true");
    group.prepare_command(&mut cmd).unwrap();
    assert!(cmd.status().unwrap().success());

    assert_eq!(read(&procs), "0", "\"0\" means the writing process");
}

#[test]
fn removal_uses_cgroup_kill() {
    let root = fake_v2_root(ALL_CONTROLLERS);
    let group = v2_limiter(root.path())
        .create("t", "kill", &Limits::default())
        .unwrap();
    let vm = group.dirs()[0].to_owned();
    fs::write(vm.join("cgroup.kill"), "").unwrap();
    fs::write(vm.join("cgroup.procs"), "").unwrap();

    let report = group.remove(Duration::from_millis(200));

    assert!(report.used_cgroup_kill, "{report:?}");
    assert_eq!(read(vm.join("cgroup.kill")), "1");
    assert!(report.killed_pids.is_empty());
    // A real cgroup directory can be removed with its interface files in
    // it; a plain directory cannot, so the report names the rmdir failure.
    assert!(
        report.errors.iter().any(|e| e.starts_with("rmdir")),
        "{report:?}"
    );
}

#[test]
fn sweep_touches_only_valid_groups_under_airlock() {
    let root = fake_v2_root(ALL_CONTROLLERS);
    let limiter = v2_limiter(root.path());
    let airlock = root.path().join("airlock");
    for d in ["t1/stale", "t1/not.an.id", "t2/other", "t3"] {
        fs::create_dir_all(airlock.join(d)).unwrap();
    }
    fs::create_dir_all(root.path().join("system.slice/foo")).unwrap();

    let report = limiter.sweep_stale(&SweepOptions {
        min_age: Duration::ZERO,
        tenant: Some("t1".into()),
    });

    assert_eq!(
        report.removed,
        vec!["airlock/t1/stale".to_owned()],
        "{report:?}"
    );
    assert!(!airlock.join("t1/stale").exists());
    assert!(
        airlock.join("t1/not.an.id").exists(),
        "not a valid id: ignored"
    );
    assert!(airlock.join("t2/other").exists(), "other tenant untouched");
    assert!(airlock.join("t3").exists(), "other tenant untouched");
    assert!(
        root.path().join("system.slice/foo").exists(),
        "outside airlock/ untouched"
    );

    let all = limiter.sweep_stale(&SweepOptions {
        min_age: Duration::ZERO,
        tenant: None,
    });
    assert_eq!(all.removed, vec!["airlock/t2/other".to_owned()]);
    assert!(
        all.removed_tenants.contains(&"t2".to_owned())
            && all.removed_tenants.contains(&"t3".to_owned())
    );
}

#[test]
fn an_orphans_group_is_killed_and_removed_by_name_even_when_busy() {
    let root = fake_v2_root(ALL_CONTROLLERS);
    let limiter = v2_limiter(root.path());
    let vm = root.path().join("airlock/t/orphan");
    fs::create_dir_all(&vm).unwrap();
    fs::write(vm.join("cgroup.kill"), "").unwrap();
    // A pid that cannot exist: "busy" for the sweep, which spares it.
    fs::write(vm.join("cgroup.procs"), "999999999\n").unwrap();
    let spared = limiter.sweep_stale(&SweepOptions {
        min_age: Duration::ZERO,
        tenant: None,
    });
    assert_eq!(spared.busy, vec!["airlock/t/orphan".to_owned()]);

    let report = limiter
        .remove_orphan("t", "orphan", Duration::from_millis(200))
        .unwrap();

    assert!(report.used_cgroup_kill, "{report:?}");
    assert_eq!(read(vm.join("cgroup.kill")), "1");
    let gone = limiter
        .remove_orphan("t", "never-made", Duration::from_millis(200))
        .unwrap();
    assert!(gone.is_clean() && gone.removed_dirs.is_empty(), "{gone:?}");
    assert_eq!(
        gone.already_absent,
        vec![root.path().join("airlock/t/never-made")]
    );
    assert!(limiter
        .remove_orphan("t", "../x", Duration::from_millis(200))
        .is_err());
}

#[test]
fn a_regrouped_v2_vm_keeps_its_own_group_so_its_charged_memory_stays_under_its_limit() {
    let root = fake_v2_root(ALL_CONTROLLERS);
    let limiter = v2_limiter(root.path());
    let limits = Limits {
        memory_mib: 512,
        ..Limits::default()
    };
    let pooled = limiter.create("pool", "vm-7", &limits).unwrap();
    let dir = pooled.dirs()[0].to_owned();
    // The restored VM's RAM, charged to the group it was restored in.
    fs::write(dir.join("memory.current"), (400u64 << 20).to_string()).unwrap();

    let taken = limiter.regroup(&pooled, "alice").unwrap();

    assert_eq!(taken.dirs(), vec![dir.as_path()]);
    assert_eq!(read(dir.join("memory.max")), (512u64 << 20).to_string());
    assert_eq!(
        taken.stats().unwrap().memory_current_bytes,
        Some(400 << 20),
        "the memory the VM holds is still counted against its limit"
    );
    assert!(
        !root.path().join("airlock/alice/vm-7").exists(),
        "no second group whose limit would not count that memory"
    );
}
