//! Pausing a session to disk ([`Session::pause`]), resuming it
//! ([`Scheduler::resume`]) and forking it ([`Session::fork`]); the
//! machinery is in [`crate::pause`].

use super::{CloseReason, Session, SessionError, SessionExtras, SessionOptions};
use crate::error::BootError;
use crate::error::PauseError;
use crate::machine::{PackageDisk, VmOptions};
use crate::manager::VmManager;
use crate::ms;
use crate::pause::gate::{gate, Gate};
use crate::pause::save::Saver;
use crate::pause::store::{unix_ms, within_quota};
use crate::pause::{
    save_machine, unpausable_reason, validate_fork_count, PausedEntry, PausedMeta, PausedStore,
    ResumeLauncher, StateSink, DEFAULT_PAUSED_TTL, PAUSED_FORMAT, STATE_FILE, WORKSPACE_FILE,
};
use crate::spec::SandboxSpec;
use crate::task::blocking;
use crate::template::{TemplateInputs, Templates};
use crate::vm::Vm;
use crate::Scheduler;
use airlock_qemu::BootImages;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tokio::task::JoinSet;

/// How a session is paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseOptions {
    /// Deleted by the sweep this long after the pause (default
    /// [`DEFAULT_PAUSED_TTL`], 7 days).
    pub ttl: Duration,
    /// The most bytes the tenant's paused sessions may take, this one
    /// included (`None`: no quota); past it the pause is refused and the
    /// session runs on.
    pub quota_bytes: Option<u64>,
}

impl Default for PauseOptions {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_PAUSED_TTL,
            quota_bytes: None,
        }
    }
}

/// The parts of a real scheduler a pause, resume or fork needs.
fn machinery<'a>(
    scheduler: &'a Scheduler,
    session_id: &str,
) -> Result<(&'a VmManager, &'a Templates), PauseError> {
    match (scheduler.manager(), scheduler.templates()) {
        (Some(manager), Some(templates)) => Ok((manager, templates)),
        _ => Err(PauseError::NotPausable {
            session_id: session_id.to_owned(),
            reason: "the scheduler has no VM manager (built from parts)".into(),
        }),
    }
}

/// The machine inputs of `shape` with the layer image `packages`.
fn machine_inputs(
    templates: &Templates,
    shape: crate::spec::MachineShape,
    packages: Option<&Path>,
) -> Result<TemplateInputs, SessionError> {
    Ok(templates.inputs_over(shape, layer_key(packages).as_deref())?)
}

/// The key of the package layer image `packages`, if any.
fn layer_key(packages: Option<&Path>) -> Option<String> {
    let disk = packages.map(|p| PackageDisk::read_only(p.to_path_buf()));
    disk.as_ref()
        .and_then(PackageDisk::layer_key)
        .map(str::to_owned)
}

fn boot_images(manager: &VmManager) -> BootImages {
    let images = manager.images();
    BootImages {
        kernel: images.kernel.clone(),
        initramfs: images.initramfs.clone(),
    }
}

impl Scheduler {
    /// The paused sessions' store ([`crate::Config::paused_dir`]).
    pub fn paused_store(&self) -> PausedStore {
        PausedStore::new(self.config().paused_dir.clone())
    }

    /// Every paused session on disk (after a restart too), sorted by id.
    ///
    /// # Errors
    /// [`PauseError::Io`] when the store cannot be read.
    pub async fn paused_sessions(&self) -> Result<Vec<PausedEntry>, PauseError> {
        let store = self.paused_store();
        flatten(blocking("list paused sessions", move || store.list()).await)
    }

    /// Deletes paused session `id`; whether it was there.
    ///
    /// # Errors
    /// [`PauseError::Io`].
    pub async fn discard_paused(&self, id: &str) -> Result<bool, PauseError> {
        let (store, id) = (self.paused_store(), id.to_owned());
        flatten(blocking("delete a paused session", move || store.remove(&id)).await)
    }

    /// Deletes the paused sessions past their expiry (and what crashed
    /// pauses left); returns the ids deleted.
    ///
    /// # Errors
    /// [`PauseError::Io`].
    pub async fn sweep_paused(&self) -> Result<Vec<String>, PauseError> {
        let store = self.paused_store();
        let now = unix_ms(SystemTime::now());
        // A pause or resume in flight is minutes at most.
        let stale = Duration::from_secs(3600);
        flatten(blocking("sweep paused sessions", move || store.sweep(now, stale)).await)
    }

    /// Resumes paused session `id`: its machine loaded whole (interpreter
    /// state, files, running processes), its clock set, under the same
    /// id; the paused copy is deleted once it runs. It takes a VM slot as
    /// any session does. A failed resume leaves it paused. Any tenant's
    /// session is resumed: a server checks that it is the caller's first
    /// ([`Scheduler::paused_sessions`]).
    ///
    /// # Errors
    /// [`PauseError::NotFound`], [`PauseError::Incompatible`] (the host
    /// changed since), [`SessionError::Boot`].
    pub async fn resume(&self, id: &str) -> Result<Session, SessionError> {
        let started = Instant::now();
        let (manager, templates) = machinery(self, id)?;
        let store = self.paused_store();
        let claimed = {
            let (store, id) = (store.clone(), id.to_owned());
            flatten(blocking("claim a paused session", move || store.claim(&id)).await)?
        };
        let resumed = self
            .resume_claimed(manager, templates, &claimed, started)
            .await;
        let entry = claimed.clone();
        let after = match &resumed {
            Ok(_) => {
                blocking("delete a resumed session's copy", move || {
                    std::fs::remove_dir_all(&entry.dir)
                        .map_err(|e| PauseError::io("remove", &entry.dir, e))
                })
                .await
            }
            Err(_) => blocking("give back a paused session", move || store.release(&entry)).await,
        };
        if let Err(e) = flatten(after) {
            tracing::warn!(session_id = id, error = %e, "after a resume");
        }
        resumed
    }

    async fn resume_claimed(
        &self,
        manager: &VmManager,
        templates: &Templates,
        claimed: &PausedEntry,
        started: Instant,
    ) -> Result<Session, SessionError> {
        let meta = &claimed.meta;
        let here = machine_inputs(templates, meta.shape, meta.packages.as_deref())?;
        if let Some(reason) = meta.incompatibility(&here) {
            return Err(PauseError::Incompatible {
                session_id: meta.session_id.clone(),
                reason,
            }
            .into());
        }
        let mut options = VmOptions::of_shape(meta.shape, &meta.tenant);
        options.packages = meta.packages.clone().map(PackageDisk::read_only);
        // Over the template's memory file when the RAM was a template's
        // (named): the VM loads only the pages that differ from it and
        // shares the rest with its clones (`pause/fork.rs`).
        let base = if meta.named_ram {
            crate::pause::fork::template_memory(
                templates,
                meta.shape,
                layer_key(meta.packages.as_deref()).as_deref(),
                &meta.session_id,
            )
            .await
        } else {
            None
        };
        let delta = claimed.dir.join(crate::pause::fork::DELTA_FILE);
        let base = match base {
            Some(base) => {
                let state = claimed.dir.join(STATE_FILE);
                crate::pause::fork::delta_of_saved(state, base, delta.clone(), &meta.session_id)
                    .await
            }
            None => None,
        };
        let state = match base {
            Some(_) => delta.clone(),
            None => claimed.dir.join(STATE_FILE),
        };
        let mut launcher = ResumeLauncher::new(
            manager.host().clone(),
            boot_images(manager),
            state,
            (meta.disk_bytes > 0).then(|| claimed.dir.join(WORKSPACE_FILE)),
            meta.named_ram,
            meta.session_id.clone(),
        );
        if let Some(memory) = base {
            launcher = launcher.with_base_memory(memory);
        }
        let booted = manager.boot_with(&options, &launcher).await;
        // The paused copy is given back whole if the resume failed.
        let _ = tokio::fs::remove_file(&delta).await;
        let vm = booted?;
        let mut spec = SandboxSpec::new(meta.language);
        spec.tenant = meta.tenant.clone();
        spec.shape = meta.shape;
        let session_options = SessionOptions {
            spec,
            idle_timeout: Duration::from_millis(meta.idle_timeout_ms),
            max_lifetime: Duration::from_millis(meta.max_lifetime_ms),
        };
        let created = SystemTime::UNIX_EPOCH + Duration::from_millis(meta.created_at_ms);
        let session = Session::start(
            Box::new(vm),
            &session_options,
            SessionExtras {
                start_ms: ms(started.elapsed()),
                base_env: Default::default(),
                ca: self.config().ca_bundle.clone(),
                node: self.config().node_name.clone(),
                packages: meta.packages.clone(),
                resumed: Some((meta.session_id.clone(), created)),
            },
        );
        tracing::info!(
            session_id = meta.session_id,
            resume_ms = session.start_ms(),
            "session resumed"
        );
        Ok(session)
    }
}

impl Session {
    /// Pauses the session to disk: its whole machine (memory, devices,
    /// workspace disk) saved under [`crate::Config::paused_dir`], its VM
    /// destroyed (its slot freed); the session ends with
    /// [`CloseReason::Paused`]. [`Scheduler::resume`] brings it back under
    /// the same id, also after a restart. Waits for no call: a busy
    /// session is refused. A session with a network or host folders is
    /// refused up front; a pause past `options.quota_bytes`, or one that
    /// fails, leaves the session running.
    ///
    /// # Errors
    /// [`PauseError::NotPausable`], [`PauseError::QuotaExceeded`], a save
    /// failure, [`SessionError::Busy`], [`SessionError::Closed`].
    pub async fn pause(
        &self,
        scheduler: &Scheduler,
        options: &PauseOptions,
    ) -> Result<PausedMeta, SessionError> {
        let inner = &self.inner;
        let machine = self.check_saveable(scheduler)?;
        let mut call = inner.begin()?;
        let store = scheduler.paused_store();
        let staging = {
            let (store, id) = (store.clone(), inner.id.clone());
            flatten(blocking("make a pause's staging dir", move || store.staging(&id)).await)?
        };
        let saved = async {
            let vm = call.vm().as_machine().ok_or_else(|| self.not_a_machine())?;
            let saved = save_machine(vm, &inner.id, &staging, false).await?;
            let (list, tenant) = (store.clone(), inner.tenant.clone());
            let used = flatten(
                blocking("measure paused sessions", move || {
                    list.tenant_bytes(&tenant)
                })
                .await,
            )?;
            let needed = saved.state_bytes.saturating_add(saved.disk_bytes);
            if !within_quota(used, needed, options.quota_bytes) {
                return Err(PauseError::QuotaExceeded {
                    session_id: inner.id.clone(),
                    tenant: inner.tenant.clone(),
                    needed_bytes: needed,
                    used_bytes: used,
                    quota_bytes: options.quota_bytes.unwrap_or(u64::MAX),
                });
            }
            let now = SystemTime::now();
            let meta = PausedMeta {
                format: PAUSED_FORMAT,
                session_id: inner.id.clone(),
                tenant: inner.tenant.clone(),
                language: inner.language,
                shape: inner.facts.shape,
                packages: inner.facts.packages.clone(),
                named_ram: saved.named_ram,
                machine,
                created_at_ms: unix_ms(inner.created_at),
                paused_at_ms: unix_ms(now),
                expires_at_ms: unix_ms(now + options.ttl),
                idle_timeout_ms: u64::try_from(inner.facts.idle_timeout.as_millis())
                    .unwrap_or(u64::MAX),
                max_lifetime_ms: u64::try_from(inner.facts.max_lifetime.as_millis())
                    .unwrap_or(u64::MAX),
                state_bytes: saved.state_bytes,
                disk_bytes: saved.disk_bytes,
            };
            let (store, staged, written) = (store.clone(), staging.clone(), meta.clone());
            flatten(
                blocking("install a paused session", move || {
                    store.install(&staged, &written)
                })
                .await,
            )?;
            Ok((meta, saved.stopped_ms))
        }
        .await;
        let (meta, stopped_ms) = match saved {
            Ok(done) => done,
            Err(e) => {
                // The VM runs on (a failed save ran it on already).
                if let Some(vm) = call.vm().as_machine() {
                    if let Err(cont) = crate::pause::save::run_on(vm, &inner.id).await {
                        tracing::debug!(error = %cont, "running a VM on after a refused pause");
                    }
                }
                let _ = tokio::fs::remove_dir_all(&staging).await;
                return Err(e.into());
            }
        };
        inner.mark_closed(CloseReason::Paused);
        if let Some(mut vm) = call.vm.take() {
            vm.destroy().await;
        }
        tracing::info!(
            session_id = inner.id,
            state_bytes = meta.state_bytes,
            disk_bytes = meta.disk_bytes,
            named_ram = meta.named_ram,
            stopped_ms,
            "session paused"
        );
        Ok(meta)
    }

    /// Forks the session into `count` new sessions (1..=8): each a copy of
    /// its whole machine (interpreter state, files, running processes)
    /// under a new id, same tenant, reseeded (kernel CRNG and
    /// interpreters) as a template clone is, with its own copy-on-write
    /// workspace disk over one saved copy. The session itself is stopped
    /// while its state is saved, then runs on unchanged. Each child takes
    /// a VM slot; a failed fork leaves none behind.
    ///
    /// # Errors
    /// [`PauseError::InvalidCount`], [`PauseError::NotPausable`],
    /// [`PauseError::NoSlots`] when fewer VM slots are free, a save
    /// failure, [`SessionError::Boot`] for a child, [`SessionError::Busy`],
    /// [`SessionError::Closed`].
    pub async fn fork(
        &self,
        scheduler: &Scheduler,
        count: usize,
    ) -> Result<Vec<Session>, SessionError> {
        let started = Instant::now();
        validate_fork_count(count)?;
        let inner = &self.inner;
        self.check_saveable(scheduler)?;
        let (manager, templates) = machinery(scheduler, &inner.id)?;
        // Each child takes a slot: refused now rather than queued behind
        // the parent's own slot after its state is saved.
        let free = manager.free_slots();
        if free < count {
            return Err(PauseError::NoSlots {
                session_id: inner.id.clone(),
                needed: count,
                free,
            }
            .into());
        }
        let forks = scheduler.config().run_dir.join(crate::pause::FORKS_DIR);
        let dir = {
            let (forks, suffix) = (
                forks.clone(),
                format!("{}-{}", inner.id, crate::builder::new_vm_id()),
            );
            blocking("make a fork's scratch dir", move || {
                crate::process_dirs::fresh_staging_dir(&forks, &suffix)
                    .map_err(|e| PauseError::io("create a fork's dir under", &forks, e))
            })
            .await
        };
        let dir = flatten(dir)?;
        let forked = self
            .fork_from(scheduler, (manager, templates), &dir, count, started)
            .await;
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a fork's saved state");
        }
        forked
    }

    /// Saves the parent into `dir` while its children are built: each
    /// child makes what owes nothing to the save at once, and waits only
    /// for what it needs, the saved disk and then the state
    /// (`pause/gate.rs`). Should the filter refuse the
    /// parent's stream, the parent is saved again whole (`save.rs`): the
    /// children built meanwhile are failed by the gate, and new ones
    /// load the whole state.
    async fn fork_from(
        &self,
        scheduler: &Scheduler,
        (manager, templates): (&VmManager, &Templates),
        dir: &Path,
        count: usize,
        started: Instant,
    ) -> Result<Vec<Session>, SessionError> {
        let inner = &self.inner;
        let base = crate::pause::fork::template_memory(
            templates,
            inner.facts.shape,
            layer_key(inner.facts.packages.as_deref()).as_deref(),
            &inner.id,
        )
        .await;
        let delta = dir.join(crate::pause::fork::DELTA_FILE);
        let mut options = VmOptions::of_shape(inner.facts.shape, &inner.tenant);
        options.packages = inner.facts.packages.clone().map(PackageDisk::read_only);
        let (saved, early, launcher, base) = {
            let mut call = inner.begin()?;
            let vm = call.vm().as_machine().ok_or_else(|| self.not_a_machine())?;
            let saver = Saver::connect(vm, &inner.id).await?;
            // A memory file can only stand for a RAM block of its name.
            let base = base.filter(|_| saver.named_ram);
            let launcher = ChildLauncher {
                manager,
                dir,
                has_disk: saver.has_disk,
                named_ram: saver.named_ram,
                label: format!("fork of {}", inner.id),
            };
            let (sink, state) = match &base {
                Some(base) => (
                    StateSink::Filtered {
                        base: &base.path,
                        delta: &delta,
                    },
                    delta.clone(),
                ),
                None => (StateSink::File, dir.join(STATE_FILE)),
            };
            let (progress, gate) = gate();
            let early = launcher.boot(&options, count, state, base.clone(), Some(gate));
            let saved = saver.save(dir, true, sink, Some(&progress)).await;
            match &saved {
                Ok(saved) if base.is_none() || saved.filtered.is_some() => progress.saved(),
                Ok(_) => progress
                    .fail("the parent's stream was not filtered: other children load it whole"),
                Err(e) => progress.fail(e.to_string()),
            }
            (saved, early, launcher, base)
        };
        // The parent runs on (and takes calls) while its children load.
        let early = gather(early).await;
        let saved = match saved {
            Ok(saved) => saved,
            Err(e) => {
                destroy_all(early).await;
                return Err(e.into());
            }
        };
        let vms = match (saved.filtered, base) {
            (None, Some(_)) => {
                // Refused by the filter: the gate failed these children.
                destroy_all(early).await;
                let whole = launcher.boot(&options, count, dir.join(STATE_FILE), None, None);
                gather(whole).await?
            }
            (filtered, _) => {
                if let Some(stats) = filtered {
                    tracing::info!(
                        session_id = inner.id,
                        pages = stats.pages,
                        kept = stats.kept,
                        bytes = stats.bytes_out,
                        "the children load the pages that differ from their template"
                    );
                }
                early?
            }
        };
        let mut spec = SandboxSpec::new(inner.language);
        spec.tenant = inner.tenant.clone();
        spec.shape = inner.facts.shape;
        let child_options = SessionOptions {
            spec,
            idle_timeout: inner.facts.idle_timeout,
            max_lifetime: inner.facts.max_lifetime,
        };
        let start_ms = ms(started.elapsed());
        let children: Vec<Session> = vms
            .into_iter()
            .map(|vm| {
                Session::start(
                    Box::new(vm),
                    &child_options,
                    SessionExtras {
                        start_ms,
                        base_env: inner.base_env.clone(),
                        ca: inner.ca.clone(),
                        node: scheduler.config().node_name.clone(),
                        packages: inner.facts.packages.clone(),
                        resumed: None,
                    },
                )
            })
            .collect();
        tracing::info!(
            session_id = inner.id,
            count,
            stopped_ms = saved.stopped_ms,
            fork_ms = start_ms,
            "session forked"
        );
        Ok(children)
    }

    /// Refuses a session whose sandbox cannot be saved; else the machine
    /// inputs a saved copy records.
    fn check_saveable(&self, scheduler: &Scheduler) -> Result<TemplateInputs, SessionError> {
        let inner = &self.inner;
        if let Some(reason) = unpausable_reason(inner.facts.has_network, inner.facts.mounts) {
            return Err(PauseError::NotPausable {
                session_id: inner.id.clone(),
                reason,
            }
            .into());
        }
        let (_, templates) = machinery(scheduler, &inner.id)?;
        machine_inputs(
            templates,
            inner.facts.shape,
            inner.facts.packages.as_deref(),
        )
    }

    fn not_a_machine(&self) -> PauseError {
        PauseError::NotPausable {
            session_id: self.inner.id.clone(),
            reason: "its VM is not a QEMU machine".into(),
        }
    }
}

/// Builds a fork's children from the parent's saved machine in `dir`.
struct ChildLauncher<'a> {
    manager: &'a VmManager,
    dir: &'a Path,
    has_disk: bool,
    named_ram: bool,
    label: String,
}

impl ChildLauncher<'_> {
    /// Starts `count` boots at once (each is its own QEMU), loading the
    /// stream `state` over the memory file `base` (or into empty RAM),
    /// after `gate` when the save is still running. The set owns them: a
    /// boot dropped unfinished tears down what it made.
    fn boot(
        &self,
        options: &VmOptions,
        count: usize,
        state: PathBuf,
        base: Option<crate::pause::fork::BaseMemory>,
        gate: Option<Gate>,
    ) -> JoinSet<Result<Vm, BootError>> {
        let mut launcher = ResumeLauncher::new(
            self.manager.host().clone(),
            boot_images(self.manager),
            state,
            self.has_disk.then(|| self.dir.join(WORKSPACE_FILE)),
            self.named_ram,
            self.label.clone(),
        )
        .for_copies();
        if let Some(memory) = base {
            launcher = launcher.with_base_memory(memory);
        }
        // A child built during the save may wait for it as long as the
        // save may take, on top of its own boot.
        let mut wait = Duration::ZERO;
        if let Some(gate) = gate {
            launcher = launcher.after(gate);
            wait = crate::pause::save::SAVE_TIMEOUT;
        }
        let mut boots = JoinSet::new();
        for _ in 0..count {
            let (manager, options, launcher) =
                (self.manager.clone(), options.clone(), launcher.clone());
            boots.spawn(async move { manager.boot_waiting(&options, &launcher, wait).await });
        }
        boots
    }
}

/// Every child of `boots`, or the first error (the children built then
/// destroyed).
async fn gather(mut boots: JoinSet<Result<Vm, BootError>>) -> Result<Vec<Vm>, SessionError> {
    let mut vms = Vec::with_capacity(boots.len());
    let mut failed = None;
    while let Some(joined) = boots.join_next().await {
        match joined {
            Ok(Ok(vm)) => vms.push(vm),
            Ok(Err(e)) => {
                failed.get_or_insert(SessionError::Boot(e));
            }
            Err(e) => {
                failed.get_or_insert(SessionError::Boot(BootError::TaskFailed {
                    task: "fork a session",
                    message: e.to_string(),
                }));
            }
        }
    }
    match failed {
        Some(e) => {
            destroy_all(Ok(vms)).await;
            Err(e)
        }
        None => Ok(vms),
    }
}

/// Destroys the children `gathered` holds, if any.
async fn destroy_all(gathered: Result<Vec<Vm>, SessionError>) {
    for mut vm in gathered.unwrap_or_default() {
        vm.destroy().await;
    }
}

fn flatten<T>(joined: Result<Result<T, PauseError>, crate::BootError>) -> Result<T, PauseError> {
    match joined {
        Ok(result) => result,
        Err(e) => Err(PauseError::io(
            "run a blocking step",
            PathBuf::new(),
            std::io::Error::other(e.to_string()),
        )),
    }
}
