//! Warm pools (`docs/templates.md`, "Warm pool"): per VM shape, a few VMs
//! restored from the shape's memory template ahead of time that wait
//! *paused* (QMP `stop`: their vCPUs take no host CPU) until a request
//! takes one.
//!
//! - Fill (a background task per pool, owned by the [`WarmPool`]): restore
//!   from the template (which reseeds it), warm the interpreter inside the
//!   clone (its TCG translation cache starts empty: the first run of any
//!   guest code pays the translation, so the fill pays it instead of the
//!   request), then `stop`. One VM at a time, with a back-off after a
//!   failure. VMs older than [`PoolConfig::max_idle`] are replaced.
//! - Take ([`WarmPool::take`]): `cont`, reseed again (fresh entropy, and
//!   the host's clock: the guest clock stood still while paused), hand the
//!   VM over; the caller destroys it after use; the fill makes a new one.
//!   An empty pool restores on demand (never waiting for the fill).
//! - Pool VMs are ordinary VMs of the manager: each holds a VM slot and a
//!   limits group (tenant [`POOL_TENANT`]) from its restore to its
//!   teardown.
//! - [`WarmPool::shutdown`] ends the fill and destroys every waiting VM;
//!   dropping the pool hands them to the manager's reaper instead.
//!
//! The one-shot CLI keeps no pool (it would be filled and thrown away).

use crate::error::{BootError, Result};
use crate::machine::VmOptions;
use crate::ms;
use crate::spec::MachineShape;
pub use crate::spec::PoolConfig;
use crate::task::BoxFuture;
use crate::template::{reseed, Templates};
use crate::vm::Vm;
use airlock_protocol::{ExecMode, ExecRequest, Language};
use airlock_qemu::QmpClient;
use airlock_sys_util::Backoff;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The limits-group tenant of pooled VMs (they are made before the
/// request that takes them is known).
pub const POOL_TENANT: &str = "warm-pool";
/// Longest wait for a QMP `stop` or `cont`.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits after failed fills: 1 s doubling to a minute.
const FILL_BACKOFF: Backoff = Backoff {
    first: Duration::from_secs(1),
    max: Duration::from_secs(60),
    jitter: 0.25,
};

/// What a pool counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// VMs waiting now.
    pub idle: usize,
    /// Takes served by a waiting VM.
    pub taken_warm: u64,
    /// Takes that found the pool empty and restored on demand.
    pub taken_on_demand: u64,
    /// VMs the fill made.
    pub filled: u64,
    /// VMs replaced because they waited longer than `max_idle`.
    pub expired: u64,
    /// Fills or resumes that failed.
    pub failures: u64,
}

/// A VM waiting in a pool, with the QMP connection that paused it.
pub(crate) struct Parked {
    vm: Vm,
    qmp: Option<QmpClient>,
    since: Instant,
}

/// How a pool makes, pauses and resumes its VMs: the memory template
/// ([`TemplateSource`]), or a fake in the unit tests.
pub(crate) trait PoolSource: Send + Sync {
    /// A running VM of the pool's shape, ready for code (restored and
    /// reseeded).
    fn start(&self) -> BoxFuture<'_, Result<Vm, BootError>>;
    /// Makes a new VM ready to wait: warms it, then pauses it. Returns the
    /// connection to resume it with.
    fn park<'a>(&'a self, vm: &'a Vm) -> BoxFuture<'a, Result<Option<QmpClient>, BootError>>;
    /// Resumes a waiting VM and makes it fit for a request (fresh entropy
    /// and clock).
    fn resume<'a>(
        &'a self,
        vm: &'a Vm,
        qmp: Option<QmpClient>,
    ) -> BoxFuture<'a, Result<(), BootError>>;
}

/// VMs restored from the memory template of one shape (built first when
/// missing; a cold boot when the restore fails).
pub(crate) struct TemplateSource {
    templates: Templates,
    options: VmOptions,
}

impl TemplateSource {
    /// VMs of `shape` from `templates`.
    pub(crate) fn new(templates: Templates, shape: MachineShape) -> Self {
        Self {
            templates,
            options: VmOptions::of_shape(shape, POOL_TENANT),
        }
    }

    async fn restore(&self) -> Result<Vm, BootError> {
        let template = self.templates.ensure(self.options.shape()).await?;
        self.templates.boot_or_cold(&self.options, &template).await
    }

    async fn warm_and_pause(&self, vm: &Vm) -> Result<Option<QmpClient>, BootError> {
        warm(vm).await?;
        let deadline = Instant::now() + QMP_TIMEOUT;
        let mut qmp = QmpClient::connect(&vm.workdir().qmp_socket(), deadline)
            .await
            .map_err(BootError::qemu(Some(vm.id()), "connect to QMP to pause it"))?;
        qmp.stop(deadline)
            .await
            .map_err(BootError::qemu(Some(vm.id()), "pause it for the pool"))?;
        Ok(Some(qmp))
    }

    async fn cont_and_reseed(&self, vm: &Vm, qmp: Option<QmpClient>) -> Result<(), BootError> {
        let deadline = Instant::now() + QMP_TIMEOUT;
        let mut qmp = match qmp {
            Some(qmp) => qmp,
            None => QmpClient::connect(&vm.workdir().qmp_socket(), deadline)
                .await
                .map_err(BootError::qemu(
                    Some(vm.id()),
                    "connect to QMP to resume it",
                ))?,
        };
        qmp.cont(deadline)
            .await
            .map_err(BootError::qemu(Some(vm.id()), "resume it from the pool"))?;
        reseed(vm.client()?, vm.id(), false).await
    }
}

/// Runs the interpreter once inside a new pool VM: `warm_repl` (with
/// persistent interpreters, it starts the interpreter after the restore's
/// reseed, so that its own random state is the clone's), then a no-op
/// cell, which translates the interpreter's code into this QEMU's empty
/// TCG cache before a request pays for it.
async fn warm(vm: &Vm) -> Result<(), BootError> {
    let protocol = |source| BootError::Protocol {
        vm_id: vm.id().to_owned(),
        source,
    };
    let client = vm.client()?;
    let warmed = client
        .warm_repl(vm.language(), airlock_protocol::abi::HOST_WARM_TIMEOUT)
        .await
        .map_err(protocol)?;
    if warmed.exit_code != 0 {
        tracing::warn!(
            vm_id = vm.id(),
            exit_code = warmed.exit_code,
            "warm-up of a pool VM failed"
        );
    }
    let noop = ExecRequest {
        mode: ExecMode::Cell,
        language: vm.language(),
        code: noop_code(vm.language()).into(),
        timeout_ms: u64::try_from(airlock_protocol::abi::HOST_WARM_TIMEOUT.as_millis())
            .unwrap_or(u64::MAX),
        env: Default::default(),
        cwd: None,
    };
    client
        .exec_collect(noop, Duration::from_secs(10))
        .await
        .map_err(protocol)?;
    Ok(())
}

/// Code that does nothing, in `language`.
fn noop_code(language: Language) -> &'static str {
    match language {
        Language::Python => "pass",
        Language::Javascript => "undefined",
        Language::Raw => ":",
    }
}

impl PoolSource for TemplateSource {
    fn start(&self) -> BoxFuture<'_, Result<Vm, BootError>> {
        Box::pin(self.restore())
    }

    fn park<'a>(&'a self, vm: &'a Vm) -> BoxFuture<'a, Result<Option<QmpClient>, BootError>> {
        Box::pin(self.warm_and_pause(vm))
    }

    fn resume<'a>(
        &'a self,
        vm: &'a Vm,
        qmp: Option<QmpClient>,
    ) -> BoxFuture<'a, Result<(), BootError>> {
        Box::pin(self.cont_and_reseed(vm, qmp))
    }
}

/// What the fill task and the takers share.
struct Shared {
    config: PoolConfig,
    source: Box<dyn PoolSource>,
    idle: Mutex<VecDeque<Parked>>,
    /// The number of waiting VMs, for [`WarmPool::wait_full`].
    idle_count: watch::Sender<usize>,
    /// Wakes the fill (a VM was taken, or the pool closed).
    wake: Notify,
    closed: AtomicBool,
    taken_warm: AtomicU64,
    taken_on_demand: AtomicU64,
    filled: AtomicU64,
    expired: AtomicU64,
    failures: AtomicU64,
}

impl Shared {
    fn idle(&self) -> MutexGuard<'_, VecDeque<Parked>> {
        // A panic while the lock was held leaves a consistent deque.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count(&self, idle: &VecDeque<Parked>) {
        self.idle_count.send_replace(idle.len());
    }

    /// The oldest waiting VM, if any.
    fn pop(&self) -> Option<Parked> {
        let mut idle = self.idle();
        let parked = idle.pop_front();
        self.count(&idle);
        parked
    }

    /// Adds a VM, unless the pool closed meanwhile (then it is returned).
    fn push(&self, parked: Parked) -> Option<Parked> {
        let mut idle = self.idle();
        if self.closed.load(Ordering::SeqCst) {
            return Some(parked);
        }
        idle.push_back(parked);
        self.count(&idle);
        None
    }

    /// Removes the VMs that waited longer than `max_idle` at `now`.
    fn expire(&self, now: Instant) -> Vec<Parked> {
        let mut idle = self.idle();
        let max_idle = self.config.max_idle;
        let (old, young): (VecDeque<_>, VecDeque<_>) = idle
            .drain(..)
            .partition(|p| now.saturating_duration_since(p.since) >= max_idle);
        *idle = young;
        self.count(&idle);
        self.expired.fetch_add(old.len() as u64, Ordering::Relaxed);
        old.into_iter().collect()
    }

    /// When the oldest waiting VM expires.
    fn next_expiry(&self) -> Option<Instant> {
        self.idle().front().map(|p| p.since + self.config.max_idle)
    }

    fn drain(&self) -> Vec<Parked> {
        let mut idle = self.idle();
        let all = idle.drain(..).collect();
        self.count(&idle);
        all
    }
}

/// A warm pool of one shape; see the module docs.
pub struct WarmPool {
    shared: Arc<Shared>,
    fill: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl WarmPool {
    /// Starts a pool of `config` over `source`; its fill task starts at
    /// once (call inside a tokio runtime).
    pub(crate) fn start(config: PoolConfig, source: Box<dyn PoolSource>) -> Self {
        let shared = Arc::new(Shared {
            config,
            source,
            idle: Mutex::default(),
            idle_count: watch::Sender::new(0),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            taken_warm: AtomicU64::new(0),
            taken_on_demand: AtomicU64::new(0),
            filled: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        let fill = tokio::spawn(fill(Arc::clone(&shared)));
        Self {
            shared,
            fill: Mutex::new(Some(fill)),
        }
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// What the pool counted so far.
    pub fn stats(&self) -> PoolStats {
        let s = &self.shared;
        PoolStats {
            idle: *s.idle_count.borrow(),
            taken_warm: s.taken_warm.load(Ordering::Relaxed),
            taken_on_demand: s.taken_on_demand.load(Ordering::Relaxed),
            filled: s.filled.load(Ordering::Relaxed),
            expired: s.expired.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
        }
    }

    /// The QEMU pids of the VMs waiting now (for tests and measurements).
    pub fn idle_qemu_pids(&self) -> Vec<u32> {
        self.shared
            .idle()
            .iter()
            .filter_map(|p| p.vm.qemu_pid())
            .collect()
    }

    /// Waits until the pool holds its full size, at most `timeout`.
    /// Returns whether it does.
    pub async fn wait_full(&self, timeout: Duration) -> bool {
        let size = self.shared.config.size;
        let mut count = self.shared.idle_count.subscribe();
        tokio::time::timeout(timeout, count.wait_for(|n| *n >= size))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A VM of the pool's shape, running and reseeded: a waiting one
    /// resumed, or, when none waits, one restored now (the caller does not
    /// wait for the fill). The VM is the caller's: destroy it after use.
    /// Its boot timings are those of the take (`from_warm_pool`, the
    /// resume and the reseed) or of the on-demand restore.
    ///
    /// # Errors
    /// [`BootError::PoolDrained`] after [`WarmPool::shutdown`]; else as the
    /// restore.
    pub async fn take(&self) -> Result<Vm, BootError> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(self.drained());
        }
        while let Some(parked) = shared.pop() {
            shared.wake.notify_one();
            if parked.since.elapsed() >= shared.config.max_idle {
                // Too old: the fill replaces it; dropping it hands it to
                // the reaper.
                shared.expired.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Parked { mut vm, qmp, .. } = parked;
            let start = Instant::now();
            match shared.source.resume(&vm, qmp).await {
                Ok(()) => {
                    shared.taken_warm.fetch_add(1, Ordering::Relaxed);
                    vm.mark_taken_from_pool(ms(start.elapsed()));
                    return Ok(vm);
                }
                Err(e) => {
                    shared.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(vm_id = vm.id(), error = %e, "resuming a pool VM failed: trying another");
                    let report = vm.destroy().await;
                    tracing::debug!(?report, "failed pool VM destroyed");
                }
            }
        }
        shared.wake.notify_one();
        shared.taken_on_demand.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(shape = %shared.config.shape, "warm pool empty: restoring on demand");
        shared.source.start().await
    }

    fn drained(&self) -> BootError {
        BootError::PoolDrained {
            shape: self.shared.config.shape.to_string(),
        }
    }

    /// Ends the fill (a VM being made is torn down) and destroys every
    /// waiting VM; later takes fail with [`BootError::PoolDrained`]. Safe to
    /// call twice.
    pub async fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let fill = self
            .fill
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(fill) = fill {
            fill.abort();
            // Cancelled (or already ended): either way it holds nothing now.
            let _ = fill.await;
        }
        for mut parked in self.shared.drain() {
            let report = parked.vm.destroy().await;
            for problem in &report.problems {
                tracing::warn!(vm_id = report.vm_id, problem, "teardown of a pool VM");
            }
        }
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(fill) = self
            .fill
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            fill.abort();
        }
        // Each dropped VM goes to its manager's reaper.
        drop(self.shared.drain());
    }
}

/// The fill task: replaces expired VMs and keeps the pool full, one VM at
/// a time, until aborted.
async fn fill(shared: Arc<Shared>) {
    let mut failures = 0u32;
    loop {
        for parked in shared.expire(Instant::now()) {
            let mut vm = parked.vm;
            tracing::debug!(vm_id = vm.id(), "pool VM waited too long: replacing it");
            vm.destroy().await;
        }
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        if shared.idle().len() < shared.config.size {
            match make_one(&shared).await {
                Ok(parked) => {
                    failures = 0;
                    shared.filled.fetch_add(1, Ordering::Relaxed);
                    if let Some(mut late) = shared.push(parked) {
                        late.vm.destroy().await;
                        return;
                    }
                }
                Err(e) => {
                    shared.failures.fetch_add(1, Ordering::Relaxed);
                    let wait = FILL_BACKOFF.delay(failures);
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        shape = %shared.config.shape,
                        error = %e,
                        retry_in_ms = ms(wait),
                        "filling the warm pool failed"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
            continue;
        }
        let wake = shared.wake.notified();
        match shared.next_expiry() {
            Some(at) => {
                tokio::select! {
                    () = wake => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => wake.await,
        }
    }
}

/// Makes one waiting VM: started, warmed, paused.
async fn make_one(shared: &Shared) -> Result<Parked, BootError> {
    let mut vm = shared.source.start().await?;
    match shared.source.park(&vm).await {
        Ok(qmp) => Ok(Parked {
            vm,
            qmp,
            since: Instant::now(),
        }),
        Err(e) => {
            vm.destroy().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests;
