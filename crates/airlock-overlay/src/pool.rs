//! [`OverlayPool`]: the handle an orchestrator keeps. The state it shares
//! with its refill task is [`crate::pool_state::Shared`].

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_sys_util::{output_with_deadline, IoError, SysError};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::error::{OverlayError, Result};
use crate::naming::{temp_name, BaseId};
use crate::pool_dir::PoolDir;
use crate::pool_state::{HitOutcome, MoveError, Shared};
use crate::qemu_img::{create_seeded, remove_quietly};
use crate::refill;

/// How long `new` waits for `qemu-img --version`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `stop` waits for the refill task to wind down.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// An overlay handed to a caller: it now lives at `path` and is the caller's
/// to use and delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// Where the overlay is now (the `dest` given to `acquire`).
    pub path: PathBuf,
    /// The absolute base image path written into the overlay.
    pub backing: PathBuf,
    /// Identity of the base version the overlay was made on.
    pub base_id: BaseId,
    /// `true` when it came from the pool (a rename); `false` when the pool
    /// was empty and it was created on demand (the slow path).
    pub pool_hit: bool,
    /// Time spent in `acquire`.
    pub elapsed: Duration,
}

/// What a pool holds and has done for one base image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseStats {
    /// The base as the caller named it.
    pub base: PathBuf,
    /// The absolute path written into its overlays.
    pub backing: PathBuf,
    /// Identity of the base version the pool currently serves.
    pub base_id: BaseId,
    /// Overlays ready to hand out.
    pub ready: usize,
    /// Background creations in flight.
    pub creating: usize,
    /// Acquires served from the pool.
    pub hits: u64,
    /// Acquires that had to create their overlay.
    pub misses: u64,
    /// Overlays created in the background.
    pub created: u64,
    /// Overlays deleted because their base changed.
    pub retired: u64,
    /// Creations that failed (background and on demand).
    pub create_failures: u64,
    /// The last creation error, cleared by the next success.
    pub last_error: Option<String>,
}

/// A snapshot of a pool, one entry per registered base (sorted by path).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Per base image.
    pub bases: Vec<BaseStats>,
}

impl PoolStats {
    /// The entry of `base` (as the caller named it), if registered.
    pub fn base(&self, base: impl AsRef<Path>) -> Option<&BaseStats> {
        self.bases.iter().find(|b| b.base == base.as_ref())
    }

    /// Overlays ready over all bases.
    pub fn ready_total(&self) -> usize {
        self.bases.iter().map(|b| b.ready).sum()
    }
}

/// What `stop` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StopReport {
    /// Pooled and half-made overlays deleted.
    pub removed_files: usize,
    /// Whether the refill task ended within its grace period.
    pub refill_stopped_cleanly: bool,
}

/// What `acquire` does after the hot path.
enum Served {
    /// Done: an overlay of base version `id` is at the destination.
    Hit { id: BaseId, backing: PathBuf },
    /// Create one on demand for base version `id`.
    Empty { id: BaseId },
}

/// Owns the refill task: cancels it when the last pool handle goes away.
struct RefillTask {
    shared: Arc<Shared>,
    handle: Mutex<Option<JoinHandle<usize>>>,
}

impl Drop for RefillTask {
    fn drop(&mut self) {
        // The task sees the signal, kills its qemu-img children and deletes
        // the pooled overlays on its own (while the runtime lives; a later
        // pool sweeps whatever is left).
        self.shared.shutdown.send_replace(true);
    }
}

/// A pool of ready qcow2 overlays per base image.
///
/// Cheap to clone (all clones share one pool) and usable from many tasks at
/// once. Its background refill task lives until [`stop`](Self::stop) is
/// called or the last clone is dropped.
#[derive(Clone)]
pub struct OverlayPool {
    shared: Arc<Shared>,
    task: Arc<RefillTask>,
}

impl fmt::Debug for OverlayPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OverlayPool")
            .field("pool_dir", &self.shared.dir.path)
            .field("stopped", &self.shared.is_stopped())
            .finish_non_exhaustive()
    }
}

impl OverlayPool {
    /// Validates `config`, creates and locks the pool directory, checks that
    /// `work_root` (if given) is on its filesystem and that qemu-img runs,
    /// sweeps leftovers of an earlier process and starts the refill task.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`OverlayError::InvalidConfig`], [`OverlayError::PoolDir`],
    /// [`OverlayError::PoolDirLocked`], [`OverlayError::CrossFilesystem`],
    /// [`OverlayError::QemuImgMissing`].
    pub async fn new(config: PoolConfig) -> Result<Self> {
        config.validate()?;
        let dir = PoolDir::open(&config.pool_dir).await?;
        if let Some(root) = &config.work_root {
            dir.check_same_filesystem(root).await?;
        }
        probe_qemu_img(&config.qemu_img).await?;
        let swept = dir.sweep(|_| false).await?;
        tracing::info!(
            pool_dir = %dir.path.display(), swept,
            target_per_base = config.target_per_base, "overlay pool started"
        );
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            dir,
            bases: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            wake: Notify::new(),
            filled: Notify::new(),
            shutdown,
        });
        let handle = tokio::spawn(refill::run(Arc::clone(&shared)));
        Ok(Self {
            task: Arc::new(RefillTask {
                shared: Arc::clone(&shared),
                handle: Mutex::new(Some(handle)),
            }),
            shared,
        })
    }

    /// The pool directory (canonical).
    pub fn pool_dir(&self) -> &Path {
        &self.shared.dir.path
    }

    /// The configuration in use.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// Registers `base` so its pool starts filling now rather than at the
    /// first `acquire`. Registering again is harmless; a base that changed
    /// since is re-identified and its old overlays retired.
    ///
    /// # Errors
    /// [`OverlayError::BaseUnreadable`] when the file cannot be read;
    /// [`OverlayError::Stopped`] after `stop`.
    pub async fn register_base(&self, base: impl AsRef<Path>) -> Result<BaseId> {
        self.ensure_running()?;
        self.shared.observe_base(base.as_ref()).await
    }

    /// Moves a ready overlay of `base` to `dest` (a rename, no copy) and
    /// returns at once. When the pool is empty, creates one on demand (the
    /// slow path, `pool_hit: false`). Registers `base` on first use; if the
    /// base changed since its overlays were made, they are deleted, never
    /// handed out. `dest` must not exist and must be on the pool directory's
    /// filesystem; its parent must exist.
    ///
    /// Always pass the same spelling of a base path: the pool is keyed by
    /// the path as given.
    ///
    /// # Errors
    /// [`OverlayError::BaseUnreadable`], [`OverlayError::QemuImgFailed`]
    /// (naming the base and qemu-img's stderr), [`OverlayError::CreateTimeout`],
    /// [`OverlayError::DestinationExists`], [`OverlayError::CrossFilesystem`],
    /// [`OverlayError::Io`], [`OverlayError::Stopped`].
    pub async fn acquire(
        &self,
        base: impl AsRef<Path>,
        dest: impl AsRef<Path>,
    ) -> Result<Acquired> {
        let (base, dest) = (base.as_ref(), dest.as_ref());
        let start = std::time::Instant::now();
        self.ensure_running()?;
        let id = match self.try_hit(base, dest).await? {
            Served::Hit { id, backing } => {
                self.shared.wake.notify_one();
                let elapsed = start.elapsed();
                tracing::debug!(
                    base = %base.display(), dest = %dest.display(),
                    elapsed_us = elapsed.as_micros() as u64, "overlay acquired from pool"
                );
                return Ok(Acquired {
                    path: dest.to_path_buf(),
                    backing,
                    base_id: id,
                    pool_hit: true,
                    elapsed,
                });
            }
            Served::Empty { id } => id,
        };
        self.create_on_demand(base, id, dest, start).await
    }

    /// Runs the hot path; on a new or changed base, (re)registers it (which
    /// retires old overlays) and runs it once more.
    async fn try_hit(&self, base: &Path, dest: &Path) -> Result<Served> {
        let mut registered = None;
        for _ in 0..2 {
            let shared = Arc::clone(&self.shared);
            let (base_owned, dest_owned) = (base.to_path_buf(), dest.to_path_buf());
            let outcome = tokio::task::spawn_blocking(move || {
                shared.try_hit_blocking(&base_owned, &dest_owned)
            })
            .await
            .map_err(|join| {
                OverlayError::from(IoError::new(
                    "move an overlay to",
                    dest.to_path_buf(),
                    io::Error::other(join),
                ))
            })?;
            match outcome {
                HitOutcome::Hit { id, backing } => return Ok(Served::Hit { id, backing }),
                HitOutcome::Empty { id } => return Ok(Served::Empty { id }),
                HitOutcome::Failed(error) => return Err(error),
                HitOutcome::Unknown => {
                    registered = Some(self.shared.observe_base(base).await?);
                }
            }
        }
        // The base changed twice in a row under us: serve its latest
        // registered version on demand.
        match registered {
            Some(id) => Ok(Served::Empty { id }),
            None => Err(OverlayError::Stopped),
        }
    }

    async fn create_on_demand(
        &self,
        base: &Path,
        id: BaseId,
        dest: &Path,
        start: std::time::Instant,
    ) -> Result<Acquired> {
        let (backing, seed) = self
            .shared
            .lock_bases()
            .get(base)
            .map(|s| (s.backing.clone(), s.seed.clone().filter(|_| s.id == id)))
            .ok_or(OverlayError::Stopped)?;
        let out = self
            .shared
            .dir
            .path
            .join(temp_name(&id, self.shared.next_seq()));
        let spec = self.shared.spec(backing.clone(), out.clone());
        let created = create_seeded(
            &spec,
            seed.as_ref(),
            base,
            self.shared.config.create_timeout,
            self.shared.shutdown_receiver(),
        )
        .await;
        let seed = match created {
            Ok(seed) => seed,
            Err(error) => {
                if !matches!(error, OverlayError::Stopped) {
                    if let Some(state) = self.shared.lock_bases().get_mut(base) {
                        state.record_failure(&error, None);
                    }
                }
                return Err(error);
            }
        };
        if let Some(state) = self.shared.lock_bases().get_mut(base) {
            state.keep_seed(id, seed);
        }
        let shared = Arc::clone(&self.shared);
        let (out_owned, dest_owned) = (out.clone(), dest.to_path_buf());
        let moved =
            tokio::task::spawn_blocking(move || shared.move_out_blocking(&out_owned, &dest_owned))
                .await
                .unwrap_or_else(|join| {
                    Err(MoveError::Fatal(OverlayError::from(IoError::new(
                        "move an overlay to",
                        dest.to_path_buf(),
                        io::Error::other(join),
                    ))))
                });
        if let Err(error) = moved {
            remove_quietly(&out).await;
            return Err(match error {
                MoveError::Fatal(error) => error,
                // Only `stop` deletes our temp files behind our back.
                MoveError::SourceGone => OverlayError::Stopped,
            });
        }
        if let Some(state) = self.shared.lock_bases().get_mut(base) {
            state.misses += 1;
        }
        self.shared.wake.notify_one();
        let elapsed = start.elapsed();
        if self.shared.config.target_per_base > 0 {
            // Worth noticing: the pool is too small for the demand.
            tracing::info!(
                base = %base.display(), dest = %dest.display(),
                elapsed_ms = elapsed.as_millis() as u64,
                "overlay pool empty; created overlay on demand"
            );
        } else {
            tracing::debug!(
                base = %base.display(), dest = %dest.display(),
                elapsed_ms = elapsed.as_millis() as u64, "created overlay on demand"
            );
        }
        Ok(Acquired {
            path: dest.to_path_buf(),
            backing,
            base_id: id,
            pool_hit: false,
            elapsed,
        })
    }

    /// A snapshot of every base's pool and counters.
    pub fn stats(&self) -> PoolStats {
        let bases = self.shared.lock_bases();
        let mut stats: Vec<BaseStats> = bases
            .iter()
            .map(|(key, s)| BaseStats {
                base: key.clone(),
                backing: s.backing.clone(),
                base_id: s.id,
                ready: s.ready.len(),
                creating: s.creating,
                hits: s.hits,
                misses: s.misses,
                created: s.created,
                retired: s.retired,
                create_failures: s.create_failures,
                last_error: s.last_error.clone(),
            })
            .collect();
        stats.sort_by(|a, b| a.base.cmp(&b.base));
        PoolStats { bases: stats }
    }

    /// Waits until every registered base has `target_per_base` overlays
    /// ready, or `timeout` passes. Returns whether the pool is full.
    pub async fn wait_full(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let target = self.shared.config.target_per_base;
        loop {
            let notified = self.shared.filled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let full = self
                .shared
                .lock_bases()
                .values()
                .all(|s| s.ready.len() >= target);
            if full {
                return true;
            }
            if self.shared.is_stopped()
                || tokio::time::timeout_at(deadline, notified).await.is_err()
            {
                return false;
            }
        }
    }

    /// Stops the refill task (killing creations in flight) and deletes every
    /// pooled overlay and temp file. Overlays already acquired are not
    /// touched. Idempotent; afterwards `acquire` fails with
    /// [`OverlayError::Stopped`]. Never fails: what it could not do is
    /// logged and reflected in the report.
    pub async fn stop(&self) -> StopReport {
        self.shared.shutdown.send_replace(true);
        let handle = self
            .task
            .handle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let mut report = StopReport {
            removed_files: 0,
            refill_stopped_cleanly: true,
        };
        if let Some(mut handle) = handle {
            match tokio::time::timeout(STOP_GRACE, &mut handle).await {
                Ok(Ok(removed)) => report.removed_files += removed,
                Ok(Err(error)) => {
                    tracing::error!(%error, "overlay refill task failed");
                    report.refill_stopped_cleanly = false;
                }
                Err(_) => {
                    tracing::warn!("overlay refill task did not stop in time; aborting it");
                    handle.abort();
                    report.refill_stopped_cleanly = false;
                }
            }
        }
        report.removed_files += self.shared.remove_all_ready().await;
        match self.shared.dir.sweep(|_| false).await {
            Ok(swept) => report.removed_files += swept,
            Err(error) => tracing::warn!(%error, "cannot sweep overlay pool dir on stop"),
        }
        tracing::info!(
            pool_dir = %self.shared.dir.path.display(),
            removed = report.removed_files, "overlay pool stopped"
        );
        report
    }

    fn ensure_running(&self) -> Result<()> {
        if self.shared.is_stopped() {
            Err(OverlayError::Stopped)
        } else {
            Ok(())
        }
    }
}

/// Runs `qemu-img --version` so a missing qemu-img fails at start, clearly.
async fn probe_qemu_img(program: &Path) -> Result<()> {
    let spawn_error = |source: io::Error| OverlayError::QemuImgMissing {
        program: program.to_path_buf(),
        source,
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("--version");
    match output_with_deadline(&mut cmd, None, PROBE_TIMEOUT).await {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(spawn_error(io::Error::other(format!(
            "`--version` ended with {}",
            output.status
        )))),
        Err(SysError::Timeout { .. }) => Err(spawn_error(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("`--version` did not answer within {PROBE_TIMEOUT:?}"),
        ))),
        Err(other) => Err(spawn_error(other.into_io_error())),
    }
}
