//! The state the pool handles share with their refill task ([`Shared`]):
//! per-base overlays and counters, and the blocking moves of the hot path.
//! [`crate::pool`] (the handles) and [`crate::refill`] (the task) both use
//! it; it uses neither.

use airlock_sys_util::IoError;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::error::{OverlayError, Result};
use crate::naming::{ready_name, temp_name, BaseId, BaseStat};
use crate::pool_dir::{device_of, rename_noreplace, PoolDir};
use crate::qemu_img::{remove_quietly, CreateSpec, Seed};
use crate::refill_plan::{next_retry, plan_refill, retry_delay, Completion, Job, RefillNeed};

/// Per-base pool state.
#[derive(Debug)]
pub(crate) struct BaseState {
    pub(crate) backing: PathBuf,
    pub(crate) id: BaseId,
    pub(crate) ready: VecDeque<PathBuf>,
    pub(crate) creating: usize,
    pub(crate) failures: u32,
    pub(crate) retry_at: Option<Instant>,
    pub(crate) last_error: Option<String>,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) created: u64,
    pub(crate) retired: u64,
    pub(crate) create_failures: u64,
    /// What qemu-img made for this version: the next overlays are
    /// written from it ([`crate::qemu_img::Seed`]).
    pub(crate) seed: Option<Seed>,
}

impl BaseState {
    pub(crate) fn new(backing: PathBuf, id: BaseId) -> Self {
        Self {
            backing,
            id,
            ready: VecDeque::new(),
            creating: 0,
            failures: 0,
            retry_at: None,
            last_error: None,
            hits: 0,
            misses: 0,
            created: 0,
            retired: 0,
            create_failures: 0,
            seed: None,
        }
    }

    /// Switches to a new base version; returns the overlays to delete.
    pub(crate) fn retire(&mut self, backing: PathBuf, id: BaseId) -> Vec<PathBuf> {
        self.backing = backing;
        self.id = id;
        self.failures = 0;
        self.retry_at = None;
        self.last_error = None;
        self.seed = None;
        let old: Vec<PathBuf> = self.ready.drain(..).collect();
        self.retired += old.len() as u64;
        old
    }

    /// Keeps `seed`, made for version `id`, unless the base moved on.
    pub(crate) fn keep_seed(&mut self, id: BaseId, seed: Option<Seed>) {
        if self.id == id && self.seed.is_none() {
            self.seed = seed;
        }
    }

    pub(crate) fn record_failure(&mut self, error: &OverlayError, backoff: Option<Duration>) {
        self.create_failures += 1;
        self.last_error = Some(error.to_string());
        if let Some(delay) = backoff {
            self.failures = self.failures.saturating_add(1);
            self.retry_at = Some(Instant::now() + delay);
        }
    }

    pub(crate) fn record_success(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.last_error = None;
    }

    pub(crate) fn need(&self) -> RefillNeed {
        RefillNeed {
            ready: self.ready.len(),
            creating: self.creating,
            failing: self.failures > 0,
            retry_at: self.retry_at,
        }
    }
}

/// State shared by the pool handles and the refill task.
pub(crate) struct Shared {
    pub(crate) config: PoolConfig,
    pub(crate) dir: PoolDir,
    pub(crate) bases: Mutex<HashMap<PathBuf, BaseState>>,
    pub(crate) seq: AtomicU64,
    /// Wakes the refill task.
    pub(crate) wake: Notify,
    /// Signalled whenever overlays become ready.
    pub(crate) filled: Notify,
    pub(crate) shutdown: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn lock_bases(&self) -> MutexGuard<'_, HashMap<PathBuf, BaseState>> {
        // A panic while holding the lock leaves plain counters and lists
        // behind, still consistent enough to serve and clean up.
        self.bases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn shutdown_receiver(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn is_stopped(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn spec(&self, backing: PathBuf, out: PathBuf) -> CreateSpec {
        CreateSpec {
            program: self.config.qemu_img.clone(),
            base: backing,
            base_format: self.config.base_format,
            out,
            cluster_size_bytes: self.config.cluster_size_bytes,
            lazy_refcounts: self.config.lazy_refcounts,
            extended_l2: self.config.extended_l2,
        }
    }

    /// Stats `base` and makes sure its pool serves that version: registers
    /// it on first sight, retires its overlays when it changed.
    pub(crate) async fn observe_base(&self, base: &Path) -> Result<BaseId> {
        let unreadable = |source: io::Error| OverlayError::BaseUnreadable {
            base: base.to_path_buf(),
            source,
        };
        let meta = tokio::fs::metadata(base).await.map_err(unreadable)?;
        if !meta.is_file() {
            return Err(unreadable(io::Error::other("not a regular file")));
        }
        let id = BaseId::from_stat(&BaseStat::from_metadata(&meta));
        if self.lock_bases().get(base).is_some_and(|s| s.id == id) {
            return Ok(id);
        }
        let backing = tokio::fs::canonicalize(base).await.map_err(unreadable)?;
        let retired = {
            let mut bases = self.lock_bases();
            match bases.get_mut(base) {
                Some(state) if state.id == id => Vec::new(),
                Some(state) => {
                    tracing::info!(
                        base = %base.display(), old_id = %state.id, new_id = %id,
                        retired = state.ready.len(), "base image changed; retiring its overlays"
                    );
                    state.retire(backing, id)
                }
                None => {
                    tracing::debug!(base = %base.display(), base_id = %id, "base image registered");
                    bases.insert(base.to_path_buf(), BaseState::new(backing, id));
                    Vec::new()
                }
            }
        };
        for path in &retired {
            remove_quietly(path).await;
        }
        self.wake.notify_one();
        Ok(id)
    }

    /// Re-stats every base (so a changed base is retired even if nobody
    /// acquires); a base that became unreadable is marked failing.
    pub(crate) async fn refresh_bases(&self) {
        let keys: Vec<PathBuf> = self.lock_bases().keys().cloned().collect();
        for key in keys {
            if let Err(error) = self.observe_base(&key).await {
                let mut bases = self.lock_bases();
                if let Some(state) = bases.get_mut(&key) {
                    let in_backoff = state.retry_at.is_some_and(|at| at > Instant::now());
                    if !in_backoff {
                        tracing::warn!(base = %key.display(), %error, "base image unusable");
                        let delay = retry_delay(
                            state.failures.saturating_add(1),
                            self.config.retry_backoff_min,
                            self.config.retry_backoff_max,
                        );
                        state.record_failure(&error, Some(delay));
                    }
                }
            }
        }
    }

    /// Reserves background creations for up to `free_slots` overlays; also
    /// says when the task must wake for a back-off to expire.
    pub(crate) fn plan_jobs(&self, free_slots: usize) -> (Vec<Job>, Option<Instant>) {
        let now = Instant::now();
        let target = self.config.target_per_base;
        let mut bases = self.lock_bases();
        let mut keys: Vec<PathBuf> = bases.keys().cloned().collect();
        keys.sort();
        let needs: Vec<RefillNeed> = keys
            .iter()
            .filter_map(|k| bases.get(k).map(BaseState::need))
            .collect();
        let picks = plan_refill(&needs, target, free_slots, now);
        let mut jobs = Vec::with_capacity(picks.len());
        for index in picks {
            let Some(state) = bases.get_mut(&keys[index]) else {
                continue;
            };
            state.creating += 1;
            let seq = self.next_seq();
            let out = self.dir.path.join(temp_name(&state.id, seq));
            jobs.push(Job {
                key: keys[index].clone(),
                id: state.id,
                spec: self.spec(state.backing.clone(), out),
                ready_path: self.dir.path.join(ready_name(&state.id, seq)),
                seed: state.seed.clone(),
            });
        }
        let needs: Vec<RefillNeed> = keys
            .iter()
            .filter_map(|k| bases.get(k).map(BaseState::need))
            .collect();
        (jobs, next_retry(&needs, target, now))
    }

    /// Books a finished background creation.
    pub(crate) async fn complete(&self, done: Option<Completion>) {
        let Some(done) = done else {
            return;
        };
        let stale = {
            let mut bases = self.lock_bases();
            let Some(state) = bases.get_mut(&done.key) else {
                return;
            };
            state.creating = state.creating.saturating_sub(1);
            state.keep_seed(done.id, done.seed);
            match done.result {
                Ok(path) if state.id == done.id && !self.is_stopped() => {
                    state.ready.push_back(path);
                    state.created += 1;
                    state.record_success();
                    None
                }
                Ok(path) => Some(path),
                Err(OverlayError::Stopped) => None,
                Err(error) => {
                    let delay = retry_delay(
                        state.failures.saturating_add(1),
                        self.config.retry_backoff_min,
                        self.config.retry_backoff_max,
                    );
                    tracing::warn!(
                        base = %done.key.display(), %error,
                        failures = state.failures + 1, retry_in_ms = delay.as_millis() as u64,
                        "background overlay creation failed"
                    );
                    state.record_failure(&error, Some(delay));
                    None
                }
            }
        };
        if let Some(path) = stale {
            // Made on a base version that was retired meanwhile (or stopped).
            remove_quietly(&path).await;
        }
        self.filled.notify_waiters();
    }

    /// Deletes every ready overlay; returns how many.
    pub(crate) async fn remove_all_ready(&self) -> usize {
        let paths: Vec<PathBuf> = self
            .lock_bases()
            .values_mut()
            .flat_map(|state| state.ready.drain(..))
            .collect();
        for path in &paths {
            remove_quietly(path).await;
        }
        paths.len()
    }

    /// The hot path, in one blocking hop: stats `base` and, if the pool
    /// serves that version, moves its oldest ready overlay to `dest`.
    pub(crate) fn try_hit_blocking(&self, base: &Path, dest: &Path) -> HitOutcome {
        let meta = match std::fs::metadata(base) {
            Ok(meta) if meta.is_file() => meta,
            // The async slow path reports this with the right error.
            Ok(_) | Err(_) => return HitOutcome::Unknown,
        };
        let id = BaseId::from_stat(&BaseStat::from_metadata(&meta));
        loop {
            let (pooled, backing) = {
                let mut bases = self.lock_bases();
                let Some(state) = bases.get_mut(base).filter(|s| s.id == id) else {
                    return HitOutcome::Unknown;
                };
                let Some(pooled) = state.ready.pop_front() else {
                    return HitOutcome::Empty { id };
                };
                (pooled, state.backing.clone())
            };
            match self.move_out_blocking(&pooled, dest) {
                Ok(()) => {
                    if let Some(state) = self.lock_bases().get_mut(base) {
                        state.hits += 1;
                    }
                    return HitOutcome::Hit { id, backing };
                }
                Err(MoveError::SourceGone) => {
                    tracing::warn!(path = %pooled.display(), "pooled overlay vanished; skipping it");
                }
                Err(MoveError::Fatal(error)) => {
                    if !self.put_back(base, id, pooled.clone()) {
                        // Retired meanwhile: nobody else will delete it.
                        if let Err(error) = std::fs::remove_file(&pooled) {
                            tracing::warn!(path = %pooled.display(), %error, "cannot remove overlay file");
                        }
                    }
                    return HitOutcome::Failed(error);
                }
            }
        }
    }

    /// Puts back an overlay that could not be moved out.
    pub(crate) fn put_back(&self, base: &Path, id: BaseId, path: PathBuf) -> bool {
        let mut bases = self.lock_bases();
        match bases.get_mut(base) {
            Some(state) if state.id == id && !self.is_stopped() => {
                state.ready.push_front(path);
                true
            }
            _ => false,
        }
    }

    /// Moves an overlay out of the pool directory, never replacing `dest`.
    pub(crate) fn move_out_blocking(
        &self,
        from: &Path,
        dest: &Path,
    ) -> std::result::Result<(), MoveError> {
        let error = match rename_noreplace(from, dest) {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let dest_dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Err(match error.raw_os_error() {
            Some(errno) if errno == Errno::EEXIST as i32 => {
                MoveError::Fatal(OverlayError::DestinationExists {
                    dest: dest.to_path_buf(),
                })
            }
            Some(errno) if errno == Errno::EXDEV as i32 => {
                MoveError::Fatal(OverlayError::CrossFilesystem {
                    pool_dir: self.dir.path.clone(),
                    other: dest_dir.to_path_buf(),
                    pool_dev: self.dir.dev,
                    other_dev: device_of(dest_dir).unwrap_or(0),
                })
            }
            _ if error.kind() == io::ErrorKind::NotFound
                && std::fs::symlink_metadata(from).is_err() =>
            {
                MoveError::SourceGone
            }
            _ => MoveError::Fatal(OverlayError::from(IoError::new(
                "move an overlay to",
                dest.to_path_buf(),
                error,
            ))),
        })
    }
}

/// How the hot path ended.
pub(crate) enum HitOutcome {
    /// An overlay was moved to the destination.
    Hit { id: BaseId, backing: PathBuf },
    /// The pool of this (current) base version is empty.
    Empty { id: BaseId },
    /// The base is new, changed or unreadable: take the async slow path.
    Unknown,
    /// Moving the overlay failed.
    Failed(OverlayError),
}

/// Why an overlay could not be moved out.
pub(crate) enum MoveError {
    /// The pooled file vanished (deleted behind our back): try another.
    SourceGone,
    /// Anything else: the caller gets this error.
    Fatal(OverlayError),
}
