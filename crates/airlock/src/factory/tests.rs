//! The boot pipeline on a fake launcher: no VM boots here. The fake's
//! "machines" are real, harmless processes (`sleep`, `sh`), so teardown is
//! checked for real: processes gone, work dirs removed, slots freed.
//! The fakes are shared with the warm pool's tests (`pool/tests.rs`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use super::*;
use crate::disk::DiskAcquired;
use crate::error::BootError;
use crate::guest::{race_death, Agent, GuestPaths};
use crate::launcher::MachinePlan;
use crate::process::QemuProcess;
use crate::task::BoxFuture;
use airlock_limits::VmGroup;
use airlock_protocol::client::{AgentInfo, Client};
use airlock_protocol::{ExecRequest, Language, ProtocolError};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How one fake boot attempt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Boot {
    /// The agent answers at once.
    Ready,
    /// The machine exits during boot (transient).
    Dies,
    /// The agent never answers (transient, at the deadline).
    Hangs,
    /// The machine's program cannot be started (permanent).
    SpawnFails,
    /// The agent speaks another protocol version (permanent).
    Refused,
    /// The agent is awaited until the boot is cancelled.
    Blocks,
    /// Starting the machine never finishes (a step that ignores the
    /// attempt's deadline).
    SpawnHangs,
    /// The agent answers after [`LATE`] (a launcher that first waits for
    /// its machine, as a fork's child waits for its parent's save).
    Late,
}

/// How long a [`Boot::Late`] agent takes: past a 300 ms attempt and
/// the slack of its cut ([`crate::retry::CUT_SLACK`]).
const LATE: Duration = Duration::from_millis(1500);

/// A launcher that plays a script of boots (then `Ready` for ever).
#[derive(Default)]
pub(crate) struct FakeLauncher {
    script: Mutex<VecDeque<Boot>>,
    running: Mutex<HashMap<String, Boot>>,
    plans: Mutex<Vec<MachinePlan>>,
    pids: Mutex<Vec<u32>>,
    /// The agent ends of every channel, kept open.
    pub(crate) peers: Mutex<Vec<tokio::io::DuplexStream>>,
    /// Signalled when a `Blocks` boot waits for its agent.
    blocked: Notify,
}

impl FakeLauncher {
    fn new(script: &[Boot]) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.iter().copied().collect()),
            ..Self::default()
        })
    }

    fn spawned(&self) -> usize {
        self.plans.lock().unwrap().len()
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.pids.lock().unwrap().clone()
    }

    fn agent(&self) -> Agent {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        self.peers.lock().unwrap().push(theirs);
        let (reader, writer) = tokio::io::split(ours);
        Agent {
            client: Client::new(reader, writer),
            info: AgentInfo {
                version: "fake".into(),
                protocol: airlock_protocol::PROTOCOL_VERSION,
            },
            restore: None,
        }
    }
}

impl Launcher for FakeLauncher {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn spawn<'a>(
        &'a self,
        plan: &'a MachinePlan,
        _group: &'a VmGroup,
    ) -> BoxFuture<'a, Result<QemuProcess, BootError>> {
        Box::pin(async move {
            let boot = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Boot::Ready);
            self.plans.lock().unwrap().push(plan.clone());
            if boot == Boot::SpawnHangs {
                return std::future::pending().await;
            }
            self.running
                .lock()
                .unwrap()
                .insert(plan.vm_id.clone(), boot);
            let mut cmd = match boot {
                Boot::SpawnFails => tokio::process::Command::new("/nonexistent/fake-vmm"),
                Boot::Dies => {
                    let mut cmd = tokio::process::Command::new("sh");
                    cmd.args(["-c", "echo fake-vmm-died >&2; exit 3"]);
                    cmd
                }
                _ => tokio::process::Command::new("sleep"),
            };
            if boot != Boot::Dies && boot != Boot::SpawnFails {
                cmd.arg("30");
            }
            let process = QemuProcess::spawn(cmd, &plan.vm_id, &plan.workdir.qemu_log()).await?;
            self.pids.lock().unwrap().push(process.pid());
            Ok(process)
        })
    }

    fn reach_agent<'a>(
        &'a self,
        plan: &'a MachinePlan,
        process: &'a mut QemuProcess,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Agent, BootError>> {
        Box::pin(async move {
            let boot = self.running.lock().unwrap()[&plan.vm_id];
            let (cmd, event, console) = (
                plan.workdir.cmd_socket(),
                plan.workdir.event_socket(),
                plan.workdir.console_log(),
            );
            let paths = GuestPaths {
                vm_id: &plan.vm_id,
                cmd_socket: &cmd,
                event_socket: &event,
                console_log: &console,
            };
            let waited = deadline.saturating_duration_since(Instant::now());
            match boot {
                Boot::Refused => Err(BootError::Protocol {
                    vm_id: plan.vm_id.clone(),
                    source: ProtocolError::VersionMismatch {
                        host: 1,
                        guest: 2,
                        agent_version: "9".into(),
                    },
                }),
                Boot::Ready => {
                    let agent = self.agent();
                    race_death(&paths, process, waited, async { Ok(Some(agent)) }).await
                }
                Boot::Late => {
                    let agent = self.agent();
                    let late = async {
                        tokio::time::sleep(LATE).await;
                        Ok(Some(agent))
                    };
                    race_death(&paths, process, waited, late).await
                }
                Boot::Blocks => {
                    self.blocked.notify_one();
                    race_death(&paths, process, waited, std::future::pending()).await
                }
                Boot::Dies | Boot::Hangs | Boot::SpawnFails | Boot::SpawnHangs => {
                    let agent = async {
                        tokio::time::sleep_until(deadline).await;
                        Ok(None)
                    };
                    race_death(&paths, process, waited, agent).await
                }
            }
        })
    }
}

/// Overlays that are empty files (or a failure).
struct FakeDisks {
    fail: bool,
}

impl DiskSource for FakeDisks {
    fn acquire<'a>(
        &'a self,
        _base: &'a Path,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<DiskAcquired, BootError>> {
        Box::pin(async move {
            if self.fail {
                return Err(BootError::io(
                    "create overlay",
                    dest,
                    std::io::Error::other("disk full"),
                ));
            }
            tokio::fs::write(dest, b"").await.unwrap();
            Ok(DiskAcquired {
                elapsed: Duration::from_millis(1),
                pool_hit: true,
            })
        })
    }
}

pub(crate) struct Setup {
    pub(crate) run: tempfile::TempDir,
    pub(crate) launcher: Arc<FakeLauncher>,
    pub(crate) factory: VmFactory,
}

impl Setup {
    pub(crate) fn new(script: &[Boot]) -> Self {
        Self::with(script, |_| {}, false)
    }

    pub(crate) fn with(script: &[Boot], tweak: impl FnOnce(&mut Config), disks_fail: bool) -> Self {
        let run = tempfile::tempdir().unwrap();
        let mut config = Config {
            run_dir: run.path().to_path_buf(),
            images_dir: run.path().join("images"),
            max_concurrent_vms: 2,
            boot_attempts: 2,
            boot_timeout: Duration::from_secs(5),
            kill_grace: Duration::from_secs(1),
            overlay_pool_target: 0,
            ..Config::default()
        };
        tweak(&mut config);
        config.validate().unwrap();
        let mut rootfs = BTreeMap::new();
        rootfs.insert(Language::Raw, run.path().join("rootfs-raw.qcow2"));
        rootfs.insert(Language::Python, run.path().join("rootfs-python.qcow2"));
        let images = Images {
            dir: run.path().join("images"),
            kernel: run.path().join("bzImage"),
            initramfs: run.path().join("initramfs"),
            rootfs_hash: BTreeMap::new(),
            kernel_hash: String::new(),
            initramfs_hash: String::new(),
            image_disks: rootfs
                .iter()
                .map(|(language, path)| {
                    let disk = crate::images::ImageDisk {
                        path: path.clone(),
                        hash: String::new(),
                    };
                    (crate::Image::of_language(*language), disk)
                })
                .collect(),
            rootfs,
        };
        let launcher = FakeLauncher::new(script);
        let factory = VmFactory::new(FactoryParts {
            config,
            images,
            launcher: launcher.clone(),
            disks: Arc::new(FakeDisks { fail: disks_fail }),
            limiter: Limiter::from_probe(airlock_limits::ProbeResult {
                backend: airlock_limits::Backend::Rlimit,
                reason: "test".into(),
            }),
            accel: airlock_limits::Accel::Tcg,
        });
        Self {
            run,
            launcher,
            factory,
        }
    }

    /// Work dirs present now.
    fn work_dirs(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.run.path().join("vms")) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Whether every process the launcher started is gone, and no work dir
    /// is left.
    pub(crate) fn nothing_left(&self) -> bool {
        self.launcher.pids().into_iter().all(|pid| !alive(pid)) && self.work_dirs().is_empty()
    }

    pub(crate) async fn flush(&self) {
        assert!(self.factory.reaper.flush(Duration::from_secs(10)).await);
    }
}

pub(crate) fn options(language: Language) -> VmOptions {
    VmOptions {
        packages: None,
        secrets: None,
        tenant: "test".into(),
        language,
        image: None,
        memory_mib: 256,
        vcpus: 1,
        network: Default::default(),
        disk_mib: 0,
        mounts: Vec::new(),
    }
}

pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

async fn boot(setup: &Setup) -> Result<Vm, BootError> {
    setup.factory.boot(&options(Language::Raw)).await
}

fn exec(code: &str) -> ExecRequest {
    ExecRequest {
        mode: Default::default(),
        language: Language::Raw,
        code: code.into(),
        timeout_ms: 5000,
        env: BTreeMap::new(),
        cwd: None,
    }
}

// --- the happy path and the timing breakdown ---

#[tokio::test]
async fn a_boot_hands_out_a_vm_whose_agent_answered() {
    let setup = Setup::new(&[Boot::Ready]);
    let vm = boot(&setup).await.unwrap();
    assert_eq!(vm.agent().version, "fake");
    assert_eq!(vm.language(), Language::Raw);
    assert!(vm.workdir().path().is_dir());
    assert!(alive(vm.qemu_pid().unwrap()));
    assert_eq!(vm.gvproxy_pid(), None);
    assert!(vm.exposed().is_empty());
    vm.client().unwrap();
}

#[tokio::test]
async fn a_first_time_boot_reports_one_attempt_no_queue_and_the_overlay() {
    let setup = Setup::new(&[Boot::Ready]);
    let vm = boot(&setup).await.unwrap();
    let t = vm.boot_timings();
    assert_eq!(t.attempts, 1);
    assert_eq!(t.queue_ms, 0);
    assert_eq!(t.overlay_ms, 1);
    assert!(t.overlay_pool_hit);
}

#[tokio::test]
async fn the_machine_plan_carries_the_vm_shape_its_work_dir_and_root_disk() {
    let setup = Setup::new(&[Boot::Ready]);
    let mut request = options(Language::Python);
    request.memory_mib = 384;
    request.vcpus = 2;
    let vm = setup.factory.boot(&request).await.unwrap();
    let plan = setup.launcher.plans.lock().unwrap()[0].clone();
    assert_eq!((plan.memory_mib, plan.vcpus), (384, 2));
    assert_eq!(plan.vm_id, vm.id());
    assert_eq!(&plan.workdir, vm.workdir());
    assert_eq!(plan.root_base, setup.run.path().join("rootfs-python.qcow2"));
    assert_eq!(plan.network_socket, None);
    assert!(plan.workdir.overlay().is_file(), "the overlay is in place");
}

// --- transient and permanent failures, retries ---

#[tokio::test]
async fn a_machine_dying_during_boot_is_retried_and_the_attempts_counted() {
    let setup = Setup::new(&[Boot::Dies, Boot::Ready]);
    let vm = boot(&setup).await.unwrap();
    assert_eq!(vm.boot_timings().attempts, 2);
    assert_eq!(setup.launcher.spawned(), 2);
    let first = setup.launcher.pids()[0];
    assert!(!alive(first));
    assert_eq!(setup.work_dirs(), vec![vm.workdir().path().to_path_buf()]);
}

#[tokio::test]
async fn an_agent_that_never_answers_times_out_and_the_boot_is_retried() {
    let setup = Setup::with(
        &[Boot::Hangs, Boot::Ready],
        |c| c.boot_timeout = Duration::from_millis(300),
        false,
    );
    let vm = boot(&setup).await.unwrap();
    assert_eq!(vm.boot_timings().attempts, 2);
    assert!(
        !alive(setup.launcher.pids()[0]),
        "the hung machine was stopped"
    );
}

#[tokio::test]
async fn a_hanging_step_is_cut_at_the_attempt_deadline_and_the_boot_retried() {
    let setup = Setup::with(
        &[Boot::SpawnHangs, Boot::Ready],
        |c| c.boot_timeout = Duration::from_millis(300),
        false,
    );
    let start = Instant::now();
    let vm = tokio::time::timeout(Duration::from_secs(10), boot(&setup))
        .await
        .expect("the hung attempt is cut, not waited on")
        .unwrap();
    let cut_after = Duration::from_millis(300) + crate::retry::CUT_SLACK;
    assert!(start.elapsed() >= cut_after, "{:?}", start.elapsed());
    assert_eq!(vm.boot_timings().attempts, 2);
    assert_eq!(setup.launcher.spawned(), 2);
    setup.flush().await;
    assert_eq!(
        setup.work_dirs(),
        vec![vm.workdir().path().to_path_buf()],
        "the cut attempt's work dir is torn down"
    );
}

#[tokio::test]
async fn a_step_that_hangs_in_every_attempt_fails_as_a_transient_attempt_timeout() {
    let setup = Setup::with(
        &[Boot::SpawnHangs, Boot::SpawnHangs],
        |c| c.boot_timeout = Duration::from_millis(300),
        false,
    );
    let err = tokio::time::timeout(Duration::from_secs(10), boot(&setup))
        .await
        .expect("every hung attempt is cut")
        .unwrap_err();
    assert!(
        matches!(err, BootError::AttemptTimeout { attempt: 2, .. }),
        "{err}"
    );
    assert!(err.is_transient());
    assert_eq!(setup.launcher.spawned(), 2);
    setup.flush().await;
    assert!(setup.nothing_left());
}

#[tokio::test]
async fn a_boot_that_waits_for_its_machine_gets_that_wait_on_top_of_the_boot_timeout() {
    // Within the boot timeout alone, the late agent fails every attempt.
    let tight = |c: &mut Config| {
        c.boot_timeout = Duration::from_millis(300);
        c.boot_attempts = 1;
    };
    let setup = Setup::with(&[Boot::Late], tight, false);
    assert!(boot(&setup).await.unwrap_err().is_transient());
    setup.flush().await;
    // Given the wait, the same boot succeeds in one attempt.
    let setup = Setup::with(&[Boot::Late], tight, false);
    let mut vm = setup
        .factory
        .boot_waiting(
            &options(Language::Raw),
            setup.launcher.as_ref(),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(vm.boot_timings().attempts, 1);
    vm.destroy().await;
}

#[tokio::test]
async fn the_last_transient_error_is_returned_when_attempts_run_out() {
    let setup = Setup::new(&[Boot::Dies, Boot::Dies, Boot::Ready]);
    let err = boot(&setup).await.unwrap_err();
    match &err {
        BootError::VmDied {
            status,
            stderr_tail,
            ..
        } => {
            assert_eq!(*status, Some(airlock_sys_util::ChildExit::Code(3)));
            assert_eq!(stderr_tail, "fake-vmm-died\n");
        }
        other => panic!("expected VmDied, got {other}"),
    }
    assert_eq!(setup.launcher.spawned(), 2);
    assert!(setup.nothing_left());
}

#[tokio::test]
async fn a_permanent_failure_is_not_retried_and_its_machine_is_stopped() {
    let setup = Setup::new(&[Boot::Refused, Boot::Ready]);
    let err = boot(&setup).await.unwrap_err();
    assert!(matches!(err, BootError::Protocol { .. }), "{err}");
    assert_eq!(setup.launcher.spawned(), 1);
    assert!(setup.nothing_left());
}

#[tokio::test]
async fn a_machine_that_cannot_start_fails_at_once_naming_the_program() {
    let setup = Setup::new(&[Boot::SpawnFails]);
    let err = boot(&setup).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/fake-vmm"), "{err}");
    assert_eq!(setup.launcher.spawned(), 1);
    assert!(setup.nothing_left());
}

#[tokio::test]
async fn an_overlay_failure_removes_the_half_built_vm_before_any_machine_starts() {
    let setup = Setup::with(&[], |_| {}, true);
    let err = boot(&setup).await.unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(setup.launcher.spawned(), 0);
    assert!(setup.nothing_left());
}

#[tokio::test]
async fn a_language_without_a_root_disk_fails_before_anything_is_made() {
    let setup = Setup::new(&[]);
    let err = setup
        .factory
        .boot(&options(Language::Javascript))
        .await
        .unwrap_err();
    assert!(matches!(err, BootError::ImagesMissing { .. }), "{err}");
    assert!(setup.work_dirs().is_empty());
}

// --- slots: backpressure ---

#[tokio::test]
async fn boots_beyond_the_slots_wait_until_a_vm_is_destroyed_and_report_the_wait() {
    let setup = Setup::with(&[], |c| c.max_concurrent_vms = 1, false);
    let mut first = boot(&setup).await.unwrap();
    let second = boot(&setup);
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut second)
            .await
            .is_err(),
        "the second boot waits for the only slot"
    );
    first.destroy().await;
    let second = second.await.unwrap();
    assert!(
        second.boot_timings().queue_ms >= 150,
        "{:?}",
        second.boot_timings()
    );
    assert_eq!(setup.launcher.spawned(), 2);
}

#[tokio::test]
async fn a_boot_cancelled_while_queued_takes_no_slot_and_starts_nothing() {
    let setup = Setup::with(&[], |c| c.max_concurrent_vms = 1, false);
    let mut first = boot(&setup).await.unwrap();
    let queued = tokio::time::timeout(Duration::from_millis(100), boot(&setup)).await;
    assert!(queued.is_err(), "cancelled in line");
    first.destroy().await;
    let third = tokio::time::timeout(Duration::from_secs(5), boot(&setup)).await;
    third.unwrap().unwrap();
    assert_eq!(
        setup.launcher.spawned(),
        2,
        "the cancelled boot started nothing"
    );
}

#[tokio::test]
async fn a_failed_boot_frees_its_slot() {
    let setup = Setup::with(&[Boot::Refused], |c| c.max_concurrent_vms = 1, false);
    boot(&setup).await.unwrap_err();
    let next = tokio::time::timeout(Duration::from_secs(5), boot(&setup)).await;
    next.unwrap().unwrap();
}

#[tokio::test]
async fn a_dropped_vm_frees_its_slot_once_torn_down() {
    let setup = Setup::with(&[], |c| c.max_concurrent_vms = 1, false);
    drop(boot(&setup).await.unwrap());
    let next = tokio::time::timeout(Duration::from_secs(5), boot(&setup)).await;
    next.unwrap().unwrap();
    assert!(!alive(setup.launcher.pids()[0]));
}

#[tokio::test]
async fn a_shut_down_factory_refuses_boots() {
    let setup = Setup::new(&[]);
    assert!(setup.factory.shutdown(Duration::from_secs(5)).await);
    assert!(matches!(boot(&setup).await, Err(BootError::ShutDown)));
    assert_eq!(setup.launcher.spawned(), 0);
}

// --- teardown: destroy, drop, cancellation ---

#[tokio::test]
async fn destroy_stops_the_machine_removes_the_work_dir_and_reports_it() {
    let setup = Setup::new(&[]);
    let mut vm = boot(&setup).await.unwrap();
    let pid = vm.qemu_pid().unwrap();
    let report = vm.destroy().await;
    assert_eq!(report.vm_id, vm.id());
    assert_eq!(
        report.termination,
        Some(crate::process::Termination::Terminated)
    );
    assert!(report.workdir_removed);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(!alive(pid));
    assert_eq!(vm.qemu_pid(), None);
    assert!(setup.nothing_left());
}

#[tokio::test]
async fn destroying_twice_does_nothing_the_second_time() {
    let setup = Setup::new(&[]);
    let mut vm = boot(&setup).await.unwrap();
    vm.destroy().await;
    let again = vm.destroy().await;
    assert_eq!(again.termination, None);
    assert!(!again.workdir_removed);
    assert!(again.problems.is_empty(), "{:?}", again.problems);
}

#[tokio::test]
async fn a_dropped_vm_is_torn_down_by_the_reaper() {
    let setup = Setup::new(&[]);
    let vm = boot(&setup).await.unwrap();
    let pid = vm.qemu_pid().unwrap();
    drop(vm);
    setup.flush().await;
    assert!(!alive(pid));
    assert!(setup.nothing_left());
}

#[tokio::test]
async fn a_boot_cancelled_while_awaiting_the_agent_is_torn_down() {
    let setup = Setup::new(&[Boot::Blocks]);
    let mut boot = Box::pin(boot(&setup));
    tokio::select! {
        _ = &mut boot => panic!("a blocked boot cannot finish"),
        () = setup.launcher.blocked.notified() => {}
    }
    assert_eq!(setup.work_dirs().len(), 1, "half-built");
    drop(boot); // the boot is cancelled
    setup.flush().await;
    assert!(setup.nothing_left());
}

#[tokio::test]
async fn a_destroy_whose_caller_gives_up_still_completes() {
    let setup = Setup::new(&[]);
    let mut vm = boot(&setup).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(1), vm.destroy()).await;
    setup.flush().await;
    assert!(setup.nothing_left());
}

#[tokio::test]
async fn the_shutdown_waits_for_the_teardown_of_dropped_vms() {
    let setup = Setup::new(&[]);
    let (a, b) = (boot(&setup).await.unwrap(), boot(&setup).await.unwrap());
    drop((a, b));
    assert!(setup.factory.shutdown(Duration::from_secs(10)).await);
    assert!(setup.nothing_left());
}

// --- exec on a VM whose machine dies ---

#[tokio::test]
async fn a_machine_killed_during_exec_is_reported_as_died_during_exec() {
    let setup = Setup::new(&[]);
    let mut vm = boot(&setup).await.unwrap();
    let pid = i32::try_from(vm.qemu_pid().unwrap()).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let err = vm.exec(exec("sleep 60"), |_, _| {}).await.unwrap_err();
    assert!(
        matches!(err, crate::error::ExecError::VmDied { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("killed by signal 9"), "{err}");
    let report = vm.destroy().await;
    assert_eq!(
        report.termination,
        Some(crate::process::Termination::AlreadyExited)
    );
}

#[tokio::test]
async fn exec_after_destroy_is_a_closed_channel() {
    let setup = Setup::new(&[]);
    let mut vm = boot(&setup).await.unwrap();
    vm.destroy().await;
    let err = vm.exec(exec("true"), |_, _| {}).await.unwrap_err();
    assert!(
        matches!(
            err,
            crate::error::ExecError::Protocol {
                source: ProtocolError::Closed,
                ..
            }
        ),
        "{err}"
    );
    assert!(vm.client().is_err());
}
