//! The pool's logic on the factory's fake launcher: its "VMs" are real,
//! harmless processes with real work dirs and slots, so what the pool
//! leaves behind is checked for real.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use super::*;
use crate::factory::tests::{alive, options, Setup};
use std::sync::atomic::AtomicUsize;

/// What the fake source was asked to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Start,
    Park(String),
    Resume(String),
}

/// A pool source over the fake factory: `start` boots a fake VM,
/// `park`/`resume` record the call (or fail when told to, or wait at a
/// gate).
#[derive(Default)]
struct Script {
    calls: Mutex<Vec<Call>>,
    /// Parks that fail before one succeeds.
    park_failures: AtomicUsize,
    /// Resumes that fail before one succeeds.
    resume_failures: AtomicUsize,
    /// While set, `park` waits for `gate_open`.
    gate: AtomicBool,
    gate_open: Notify,
}

struct FakeSource {
    setup: Arc<Setup>,
    script: Arc<Script>,
}

impl Script {
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn take_failure(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn fake_error(what: &str) -> BootError {
        BootError::TaskFailed {
            task: "fake",
            message: what.into(),
        }
    }
}

impl PoolSource for FakeSource {
    fn start(&self) -> BoxFuture<'_, Result<Vm, BootError>> {
        Box::pin(async move {
            self.script.record(Call::Start);
            self.setup.factory.boot(&options(Language::Raw)).await
        })
    }

    fn park<'a>(&'a self, vm: &'a Vm) -> BoxFuture<'a, Result<Option<QmpClient>, BootError>> {
        Box::pin(async move {
            if self.script.gate.load(Ordering::SeqCst) {
                self.script.gate_open.notified().await;
            }
            self.script.record(Call::Park(vm.id().to_owned()));
            if Script::take_failure(&self.script.park_failures) {
                return Err(Script::fake_error("park failed"));
            }
            Ok(None)
        })
    }

    fn resume<'a>(
        &'a self,
        vm: &'a Vm,
        qmp: Option<QmpClient>,
    ) -> BoxFuture<'a, Result<(), BootError>> {
        Box::pin(async move {
            assert!(qmp.is_none(), "the fake parks without QMP");
            self.script.record(Call::Resume(vm.id().to_owned()));
            if Script::take_failure(&self.script.resume_failures) {
                return Err(Script::fake_error("resume failed"));
            }
            Ok(())
        })
    }
}

struct Fixture {
    setup: Arc<Setup>,
    script: Arc<Script>,
    pool: WarmPool,
}

const FULL: Duration = Duration::from_secs(10);

fn shape() -> MachineShape {
    MachineShape {
        language: Language::Raw,
        image: None,
        memory_mib: 256,
        vcpus: 1,
        disk_mib: 0,
    }
}

fn fixture(size: usize, max_idle: Duration, slots: usize, script: Script) -> Fixture {
    let setup = Arc::new(Setup::with(
        &[],
        |config| config.max_concurrent_vms = slots,
        false,
    ));
    let script = Arc::new(script);
    let source = FakeSource {
        setup: Arc::clone(&setup),
        script: Arc::clone(&script),
    };
    let config = PoolConfig {
        shape: shape(),
        size,
        max_idle,
    };
    Fixture {
        pool: WarmPool::start(config, Box::new(source)),
        setup,
        script,
    }
}

fn parked_ids(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Park(id) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

const LONG: Duration = Duration::from_secs(600);

#[tokio::test]
async fn a_new_pool_fills_to_its_size_with_paused_vms_that_hold_slots() {
    let f = fixture(2, LONG, 3, Script::default());

    assert!(f.pool.wait_full(FULL).await);

    let stats = f.pool.stats();
    assert_eq!((stats.idle, stats.filled, stats.failures), (2, 2, 0));
    assert_eq!(parked_ids(&f.script.calls()).len(), 2, "each VM was parked");
    assert_eq!(f.pool.idle_qemu_pids().len(), 2);
    assert!(f.pool.idle_qemu_pids().into_iter().all(alive));
    assert_eq!(f.setup.factory.slots_available(), 1, "pool VMs hold slots");
    f.pool.shutdown().await;
}

#[tokio::test]
async fn a_take_resumes_the_oldest_waiting_vm_and_the_pool_refills() {
    let f = fixture(2, LONG, 4, Script::default());
    assert!(f.pool.wait_full(FULL).await);
    let oldest = parked_ids(&f.script.calls())[0].clone();

    let mut vm = f.pool.take().await.unwrap();

    assert_eq!(vm.id(), oldest);
    assert!(f.script.calls().contains(&Call::Resume(oldest)));
    assert!(vm.boot_timings().from_warm_pool);
    assert_eq!(vm.boot_timings().attempts, 0);
    assert!(
        f.pool.wait_full(FULL).await,
        "the fill replaces the taken VM"
    );
    let stats = f.pool.stats();
    assert_eq!((stats.taken_warm, stats.taken_on_demand), (1, 0));
    assert_eq!(stats.filled, 3);
    vm.destroy().await;
    f.pool.shutdown().await;
    f.setup.flush().await;
    assert!(f.setup.nothing_left());
}

#[tokio::test]
async fn an_empty_pool_restores_on_demand_without_waiting_for_the_fill() {
    // Arrange: the fill is stuck parking its first VM.
    let script = Script::default();
    script.gate.store(true, Ordering::SeqCst);
    let f = fixture(1, LONG, 3, script);

    // Act
    let vm = tokio::time::timeout(Duration::from_secs(5), f.pool.take())
        .await
        .expect("the take must not wait for the fill")
        .unwrap();

    // Assert
    assert!(!vm.boot_timings().from_warm_pool);
    let stats = f.pool.stats();
    assert_eq!((stats.taken_warm, stats.taken_on_demand), (0, 1));
    assert!(
        !f.script
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Resume(_))),
        "an on-demand VM is not resumed"
    );
    drop(vm);
    f.script.gate_open.notify_waiters();
    f.pool.shutdown().await;
    f.setup.flush().await;
    assert!(f.setup.nothing_left());
}

#[tokio::test]
async fn vms_waiting_longer_than_max_idle_are_destroyed_and_replaced() {
    let f = fixture(1, Duration::from_millis(300), 3, Script::default());
    assert!(f.pool.wait_full(FULL).await);
    let first = f.pool.idle_qemu_pids();

    tokio::time::sleep(Duration::from_millis(900)).await;

    assert!(f.pool.wait_full(FULL).await);
    let stats = f.pool.stats();
    assert!(stats.expired >= 1, "{stats:?}");
    assert!(stats.filled >= 2, "{stats:?}");
    assert!(first.into_iter().all(|pid| !alive(pid)), "expired VM ended");
    f.pool.shutdown().await;
}

#[tokio::test]
async fn a_vm_that_fails_to_resume_is_destroyed_and_the_next_one_taken() {
    let script = Script::default();
    script.resume_failures.store(1, Ordering::SeqCst);
    let f = fixture(2, LONG, 4, script);
    assert!(f.pool.wait_full(FULL).await);
    let parked = parked_ids(&f.script.calls());
    let failed_pid = f.pool.idle_qemu_pids()[0];

    let vm = f.pool.take().await.unwrap();

    assert_eq!(vm.id(), parked[1], "the second waiting VM");
    assert!(!alive(failed_pid), "the failed VM was destroyed");
    let stats = f.pool.stats();
    assert_eq!((stats.taken_warm, stats.failures), (1, 1));
    drop(vm);
    f.pool.shutdown().await;
}

#[tokio::test]
async fn a_vm_whose_park_fails_is_destroyed_and_the_fill_tries_again() {
    let script = Script::default();
    script.park_failures.store(1, Ordering::SeqCst);
    let f = fixture(1, LONG, 3, script);

    assert!(f.pool.wait_full(FULL).await, "filled after the back-off");

    let stats = f.pool.stats();
    assert_eq!((stats.failures, stats.filled), (1, 1));
    let started = f
        .script
        .calls()
        .iter()
        .filter(|c| **c == Call::Start)
        .count();
    assert_eq!(started, 2);
    let pids = f.setup.launcher.pids();
    assert!(!alive(pids[0]), "the VM that failed to park is gone");
    f.pool.shutdown().await;
}

#[tokio::test]
async fn shutdown_destroys_the_waiting_vms_leaves_nothing_and_refuses_takes() {
    let f = fixture(2, LONG, 3, Script::default());
    assert!(f.pool.wait_full(FULL).await);

    f.pool.shutdown().await;

    assert_eq!(f.pool.stats().idle, 0);
    assert!(f.setup.nothing_left(), "no process, no work dir");
    assert_eq!(f.setup.factory.slots_available(), 3, "slots freed");
    assert!(matches!(
        f.pool.take().await,
        Err(BootError::PoolDrained { .. })
    ));
    f.pool.shutdown().await; // twice is fine
}

#[tokio::test]
async fn shutdown_during_a_fill_tears_the_half_made_vm_down() {
    let script = Script::default();
    script.gate.store(true, Ordering::SeqCst);
    let f = fixture(1, LONG, 3, script);
    while f.setup.launcher.pids().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    f.pool.shutdown().await;
    f.setup.flush().await;

    assert!(f.setup.nothing_left());
    assert_eq!(f.setup.factory.slots_available(), 3);
}

#[tokio::test]
async fn dropping_the_pool_hands_its_vms_to_the_reaper() {
    let f = fixture(2, LONG, 3, Script::default());
    assert!(f.pool.wait_full(FULL).await);
    let Fixture { setup, pool, .. } = f;

    drop(pool);
    // The aborted fill task lets go of its share of the pool on the
    // runtime; give it a turn before flushing the reaper.
    tokio::time::sleep(Duration::from_millis(50)).await;
    setup.flush().await;

    assert!(setup.nothing_left());
}

#[test]
fn the_noop_cell_of_each_language_is_its_own_no_op() {
    assert_eq!(noop_code(Language::Python), "pass");
    assert_eq!(noop_code(Language::Javascript), "undefined");
    assert_eq!(noop_code(Language::Raw), ":");
}

#[test]
fn pools_and_the_scheduler_can_be_shared_between_tasks() {
    fn shared<T: Send + Sync>() {}
    shared::<WarmPool>();
    shared::<crate::Scheduler>();
}
