//! Warm pools end to end, on real VMs: the pool fills with paused clones
//! of the python template that use no host CPU; a run takes one (resumed,
//! reseeded: its own entropy, the host's clock although it waited paused
//! and its template was saved earlier), the pool refills; an empty pool
//! restores on demand; a javascript pool serves its own shape; the
//! scheduler's shutdown, or its drop, leaves no process, work dir or
//! limits group.
//!
//! One scheduler and its templates (in temp dirs) serve every assertion
//! of the first test; the drop has its own.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock::pool::POOL_TENANT;
use airlock::template::TemplateShape;
use airlock::{
    Config, OutputStream, PoolConfig, RunObserver, RunRequest, RunResult, Scheduler, VmOptions,
};
use airlock_protocol::Language;
use airlock_sys_util::proc_scan::cpu_ticks;
use airlock_tests::{
    default_shape, group_dirs, images_or_skip, qemu_processes_mentioning, text, wait_until_gone,
};
use std::time::{Duration, SystemTime};

/// Building the template, then two restores and warm-ups, under TCG on a
/// busy host.
const FILL_DEADLINE: Duration = Duration::from_secs(600);

struct Discard;

impl RunObserver for Discard {
    fn output(&mut self, _: OutputStream, _: &[u8]) {}
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn shape() -> TemplateShape {
    default_shape(Language::Python)
}

/// The random draw and the clock a run printed.
fn entropy_and_clock(result: &RunResult) -> (String, f64) {
    let out = text(&result.stdout);
    let mut words = out.split_whitespace();
    let random = words.next().unwrap().to_owned();
    let clock = words.next().unwrap().parse().unwrap();
    (random, clock)
}

const PROBE: &str =
    "import os, random, time\nprint(os.urandom(16).hex() + str(random.random()), time.time())";

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_pool_serves_paused_clones_refills_restores_on_demand_and_leaves_nothing() {
    let Some(_) = images_or_skip("warm_pool") else {
        return;
    };
    let templates = tempfile::tempdir().unwrap();
    let run_dir = tempfile::Builder::new()
        .prefix("alp")
        .tempdir_in("/tmp")
        .unwrap();
    let scheduler = Scheduler::start(Config {
        templates_dir: templates.path().to_path_buf(),
        run_dir: run_dir.path().to_path_buf(),
        overlay_pool_target: 0,
        max_concurrent_vms: 8,
        warm_pools: vec![
            PoolConfig {
                size: 2,
                ..PoolConfig::new(shape())
            },
            PoolConfig {
                size: 1,
                ..PoolConfig::new(default_shape(Language::Javascript))
            },
        ],
        ..Config::default()
    })
    .await
    .unwrap();
    let pool = &scheduler.pools()[0];
    let js_pool = &scheduler.pools()[1];

    // Fill: the template is built, two clones restored, warmed, paused.
    assert!(pool.wait_full(FILL_DEADLINE).await, "{:?}", pool.stats());
    let template_saved = unix_now();

    // Paused pool VMs use no CPU.
    let pids = pool.idle_qemu_pids();
    assert_eq!(pids.len(), 2);
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap()).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap()).collect();
    assert_eq!(before, after, "paused QEMUs {pids:?} used CPU over 2 s");

    // Let the clones' guest clocks (stopped while paused) fall behind.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Take, use: two runs at once get the two waiting VMs, each with its
    // own entropy and the host's clock.
    let start = unix_now();
    let (a, b) = tokio::join!(
        scheduler.run(RunRequest::new(Language::Python, PROBE)),
        scheduler.run(RunRequest::new(Language::Python, PROBE))
    );
    let end = unix_now();
    let (a, b) = (a.unwrap(), b.unwrap());
    for r in [&a, &b] {
        assert_eq!(r.exit_code, 0, "{}", text(&r.stderr));
        assert!(r.timings.from_warm_pool, "{:?}", r.timings);
    }
    let ((random_a, clock_a), (random_b, clock_b)) = (entropy_and_clock(&a), entropy_and_clock(&b));
    assert_ne!(
        random_a, random_b,
        "two pool VMs drew the same random bytes"
    );
    assert!(start - template_saved >= 3.0, "the clones waited paused");
    for clock in [clock_a, clock_b] {
        assert!(
            clock >= start - 1.0 && clock <= end + 1.0,
            "guest clock {clock} is not the host's ({start}..{end}) within 1 s"
        );
    }
    assert!(
        pids.iter().all(|p| cpu_ticks(*p).is_none()),
        "a used pool VM is destroyed after its run"
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.taken_warm, stats.taken_on_demand),
        (2, 0),
        "{stats:?}"
    );

    // Refill.
    assert!(pool.wait_full(FILL_DEADLINE).await, "{:?}", pool.stats());
    assert!(pool.stats().filled >= 4, "{:?}", pool.stats());

    // Empty pool: hold the waiting VMs; the next take restores one on
    // demand at once (the fill is still restoring its replacements).
    let options = VmOptions {
        packages: None,
        secrets: None,
        tenant: "someone".into(),
        language: Language::Python,
        image: None,
        memory_mib: shape().memory_mib,
        vcpus: shape().vcpus,
        network: Default::default(),
        disk_mib: shape().disk_mib,
        mounts: Vec::new(),
    };
    let mut held = Vec::new();
    while pool.stats().taken_on_demand == 0 && held.len() < 4 {
        held.push(scheduler.start_vm(&options, &mut Discard).await.unwrap());
    }
    let stats = pool.stats();
    assert!(stats.taken_warm >= 4, "{stats:?}");
    assert_eq!(stats.taken_on_demand, 1, "{stats:?}");
    // A VM from the pool serves its taker's tenant: its QEMU is in the
    // taker's limits group, and the pool's group for it is gone.
    for vm in held.iter().filter(|vm| vm.boot_timings().from_warm_pool) {
        let ours = group_dirs("someone", vm.id());
        assert!(
            !ours.is_empty() && ours.iter().all(|d| d.exists()),
            "{ours:?}"
        );
        assert!(group_dirs(POOL_TENANT, vm.id()).iter().all(|d| !d.exists()));
        let pid = vm.qemu_pid().unwrap();
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cgroups.contains(&format!("/airlock/someone/{}", vm.id())),
            "{cgroups}"
        );
    }
    let on_demand = held.last().unwrap();
    assert!(!on_demand.boot_timings().from_warm_pool);
    assert!(
        on_demand.boot_timings().restore.is_some(),
        "restored, not booted"
    );
    let ids: Vec<String> = held.iter().map(|vm| vm.id().to_owned()).collect();
    for mut vm in held {
        vm.destroy().await;
    }

    // A pool of another language serves its own shape only.
    assert!(
        js_pool.wait_full(FILL_DEADLINE).await,
        "{:?}",
        js_pool.stats()
    );
    let js = scheduler
        .run(RunRequest::new(
            Language::Javascript,
            "console.log(Math.random() < 1, typeof require('crypto').randomBytes)",
        ))
        .await
        .unwrap();
    assert_eq!(text(&js.stdout), "true function\n", "{}", text(&js.stderr));
    assert!(js.timings.from_warm_pool);
    assert_eq!(js_pool.stats().taken_warm, 1);

    // Shutdown: the pools drain; nothing is left.
    assert!(pool.wait_full(FILL_DEADLINE).await, "{:?}", pool.stats());
    assert!(js_pool.wait_full(FILL_DEADLINE).await);
    let mut waiting = pool.idle_qemu_pids();
    waiting.extend(js_pool.idle_qemu_pids());
    assert_eq!(waiting.len(), 3);
    scheduler.shutdown().await;
    assert_eq!(pool.stats().idle + js_pool.stats().idle, 0);
    assert!(waiting.iter().all(|p| cpu_ticks(*p).is_none()));
    for needle in [run_dir.path(), templates.path()] {
        let needle = needle.to_string_lossy();
        assert!(qemu_processes_mentioning(&needle).is_empty(), "QEMU left");
    }
    let vms = std::fs::read_dir(run_dir.path().join("vms"))
        .unwrap()
        .count();
    assert_eq!(vms, 0, "work dirs left in {}", run_dir.path().display());
    for id in &ids {
        for tenant in [POOL_TENANT, "someone"] {
            assert!(
                group_dirs(tenant, id).iter().all(|d| !d.exists()),
                "limits group of {id} left"
            );
        }
    }
    assert!(matches!(
        pool.take().await,
        Err(airlock::BootError::PoolDrained { .. })
    ));
}

/// Dropping a scheduler with a full pool (no shutdown) hands the paused
/// VMs to the reaper: their QEMUs, work dirs and limits groups go.
#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_scheduler_with_a_full_pool_leaves_nothing() {
    let Some(_) = images_or_skip("warm_pool_drop") else {
        return;
    };
    let templates = tempfile::tempdir().unwrap();
    let run_dir = tempfile::Builder::new()
        .prefix("ald")
        .tempdir_in("/tmp")
        .unwrap();
    let scheduler = Scheduler::start(Config {
        templates_dir: templates.path().to_path_buf(),
        run_dir: run_dir.path().to_path_buf(),
        overlay_pool_target: 0,
        max_concurrent_vms: 2,
        warm_pools: vec![PoolConfig {
            size: 1,
            ..PoolConfig::new(default_shape(Language::Raw))
        }],
        ..Config::default()
    })
    .await
    .unwrap();
    let pool = &scheduler.pools()[0];
    assert!(pool.wait_full(FILL_DEADLINE).await, "{:?}", pool.stats());
    let pids = pool.idle_qemu_pids();
    let vm_dirs: Vec<String> = std::fs::read_dir(run_dir.path().join("vms"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!((pids.len(), vm_dirs.len()), (1, 1));

    drop(scheduler);

    let needle = run_dir.path().to_string_lossy().into_owned();
    wait_until_gone(&needle, Duration::from_secs(30)).expect("QEMU of the pool left");
    let vms = run_dir.path().join("vms");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&vms).unwrap().count() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read_dir(&vms).unwrap().count(), 0, "work dir left");
    for id in &vm_dirs {
        assert!(
            group_dirs(POOL_TENANT, id).iter().all(|d| !d.exists()),
            "limits group of {id} left"
        );
    }
}
