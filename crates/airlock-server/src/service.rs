//! [`Airlock`]: what the REST routes and the MCP tools both call. It holds
//! the orchestrator's [`Scheduler`], the keys, the tenants' quota ledger,
//! the metrics and the draining flag, and applies the server's rules in
//! one place: who the caller is, whether the quota allows the work (and
//! the sandbox fits the tenant's limits and the operator's expose
//! policy), the tenant's fair share of the VM slots, and that nothing new
//! starts while the server drains.
//!
//! It uses the orchestrator's public library API only.

use crate::api::RunBody;
use crate::config::ServerConfig;
use crate::error::{Result, ServerError};
use crate::keys::{Caller, Keyring, KeysFile};
use crate::metrics::Metrics;
use crate::quota::Ledger;
use crate::secrets::SecretStore;
use airlock::{RunObserver, RunResult, Scheduler};
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The server's state, shared by every request (cheap to clone).
#[derive(Debug, Clone)]
pub struct Airlock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    scheduler: Scheduler,
    config: ServerConfig,
    /// Replaced whole by [`Airlock::reload_keys`] (SIGHUP).
    keyring: Option<std::sync::RwLock<Arc<Keyring>>>,
    local: Caller,
    ledger: Ledger,
    metrics: Metrics,
    draining: CancellationToken,
    sessions: crate::sessions::table::SessionTable,
    secrets: Option<SecretStore>,
    cache_usage: std::sync::Mutex<CacheUsageState>,
    fair: crate::fair::FairShare,
    /// The kernel's ephemeral ports: the only fixed host ports a tenant
    /// may expose.
    ephemeral_ports: std::ops::RangeInclusive<u16>,
    /// This node's name ([`Airlock::node`]).
    node: String,
}

/// The tenant name of the local user (`airlock mcp`, and a server without
/// a keys file): the login name when it is a valid identifier, else
/// `local`.
pub fn local_tenant() -> String {
    let name = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();
    if airlock_sys_util::id::is_valid_id(&name) {
        name
    } else {
        "local".to_owned()
    }
}

/// A run that passed its checks and holds its quota place.
#[derive(Debug)]
pub struct PreparedRun {
    request: airlock::RunRequest,
    _place: crate::quota::Place,
}

/// Adds one to a gauge until dropped.
struct Held(Gauge);

impl Held {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How often a scrape has the caches' sizes read again.
pub const CACHE_USAGE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The caches' sizes as last read, for `/metrics`.
#[derive(Debug, Default)]
struct CacheUsageState {
    last: Option<crate::metrics::CacheUsage>,
    read_at: Option<std::time::Instant>,
    reading: bool,
}

impl Airlock {
    /// Opens the secrets store (its key from the configuration or
    /// `$AIRLOCK_SECRETS_KEY`), starts the orchestrator for `config` (it
    /// sweeps what an earlier server left behind) and builds the server's
    /// state.
    ///
    /// # Errors
    /// [`ServerError::Secrets`] for a bad key or one that does not open
    /// the store, [`ServerError::Orchestrator`] when the scheduler cannot
    /// start.
    pub async fn start(config: ServerConfig, keyring: Option<Keyring>) -> Result<Self> {
        let for_store = config.clone();
        let secrets = tokio::task::spawn_blocking(move || {
            let env_key = std::env::var(crate::secrets::KEY_ENV).ok();
            for_store.secret_store(env_key.as_deref())
        })
        .await
        .map_err(|e| ServerError::internal("open the secrets store", e))??;
        match &secrets {
            Some(store) => tracing::info!(file = %store.path().display(), "secrets store open"),
            None => tracing::info!("no secrets key: this server keeps no secrets"),
        }
        let scheduler = Scheduler::start(config.orchestrator()).await?;
        // Paused sessions outlive the server: expired ones go now, the
        // others are listed (and resumable) as before the restart.
        match scheduler.sweep_paused().await {
            Ok(expired) if !expired.is_empty() => {
                tracing::info!(?expired, "paused sessions expired");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot sweep the paused sessions"),
        }
        match scheduler.paused_sessions().await {
            Ok(paused) if !paused.is_empty() => {
                tracing::info!(count = paused.len(), dir = %scheduler.config().paused_dir.display(), "paused sessions found");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot list the paused sessions"),
        }
        Ok(Self::new(scheduler, config, keyring, secrets))
    }

    /// The server's state over a running scheduler, with its secrets
    /// store (`None`: the server keeps no secrets). Reads the kernel's
    /// ephemeral port range (a small `/proc` file).
    pub fn new(
        scheduler: Scheduler,
        config: ServerConfig,
        keyring: Option<Keyring>,
        secrets: Option<SecretStore>,
    ) -> Self {
        let local = Caller {
            tenant: local_tenant(),
            quotas: config.quotas,
        };
        let scheduler_node = scheduler.config().node_name.clone();
        Self {
            inner: Arc::new(Inner {
                scheduler,
                keyring: keyring.map(|k| std::sync::RwLock::new(Arc::new(k))),
                local,
                ledger: Ledger::default(),
                metrics: Metrics::new(),
                draining: CancellationToken::new(),
                sessions: crate::sessions::table::SessionTable::default(),
                secrets,
                cache_usage: std::sync::Mutex::default(),
                fair: config.fair_share(),
                ephemeral_ports: crate::config::ephemeral_port_range(),
                // The scheduler's, which its session ids carry.
                node: scheduler_node.unwrap_or_else(|| config.node()),
                config,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The scheduler underneath.
    pub fn scheduler(&self) -> &Scheduler {
        &self.inner.scheduler
    }

    /// The tenants' fair shares of the VM slots.
    pub fn fair_share(&self) -> &crate::fair::FairShare {
        &self.inner.fair
    }

    /// This node's name (`docs/deploy.md`), as its session ids carry it.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// VM slots free for tenants now.
    pub fn free_slots(&self) -> usize {
        let (held, _) = self.inner.fair.totals();
        self.inner.fair.capacity().saturating_sub(held)
    }

    /// Fits a sandbox to the caller and the operator's policy: its VM
    /// within the tenant's memory and vCPUs per VM, its exposed ports
    /// within `[expose]` (bound on its address), its install VM within
    /// the tenant's memory and timeout, its memory rounded up to a
    /// template shape ([`ServerConfig::run_shape`]).
    ///
    /// # Errors
    /// [`ServerError::Quota`], [`ServerError::ExposeDisabled`],
    /// [`ServerError::ExposeRefused`].
    pub fn fit_sandbox(
        &self,
        caller: &Caller,
        spec: &mut airlock::spec::SandboxSpec,
    ) -> Result<()> {
        let quotas = &caller.quotas;
        quotas.check_vm(
            &caller.tenant,
            spec.shape.memory_mib,
            spec.shape.vcpus,
            std::time::Duration::ZERO,
        )?;
        quotas.check_disk(&caller.tenant, spec.shape.disk_mib)?;
        self.inner
            .config
            .expose
            .apply(&mut spec.network, &self.inner.ephemeral_ports)?;
        spec.install = airlock::packages::InstallLimits {
            memory_mib: quotas.memory_mib,
            timeout: std::time::Duration::from_secs(quotas.timeout_s)
                .min(airlock::packages::install::DEFAULT_INSTALL_TIMEOUT),
        };
        // Memory rounded up to a template shape (within the quota just
        // checked), so that the VM restores one rather than booting cold.
        spec.shape = self.inner.config.run_shape(
            spec,
            self.inner.scheduler.config().template_shapes.as_deref(),
            quotas.memory_mib,
        );
        Ok(())
    }

    /// Checks the sandbox's host folders against the operator's roots for
    /// the caller's tenant (`[mounts.roots]`) and makes them name the
    /// resolved dirs, on a blocking thread (it follows links on disk).
    ///
    /// # Errors
    /// [`ServerError::MountRefused`].
    pub async fn fit_mounts(
        &self,
        caller: &Caller,
        spec: &mut airlock::spec::SandboxSpec,
    ) -> Result<()> {
        if spec.mounts.is_empty() {
            return Ok(());
        }
        let config = self.inner.config.mounts.clone();
        let (tenant, mut mounts) = (caller.tenant.clone(), std::mem::take(&mut spec.mounts));
        spec.mounts = tokio::task::spawn_blocking(move || {
            config.resolve(&tenant, &mut mounts).map(|()| mounts)
        })
        .await
        .map_err(|e| ServerError::Internal {
            action: "check the mounts",
            message: format!("the task failed: {e}"),
        })??;
        Ok(())
    }

    /// Takes the caller's place (its count) for a VM of `vcpus`, then a
    /// VM slot of its fair share, waiting in line for it up to the queue
    /// time (or until the server drains), then the VM's vCPUs within the
    /// tenant's quota.
    ///
    /// # Errors
    /// [`ServerError::Quota`], [`ServerError::QueueTimeout`],
    /// [`ServerError::Draining`].
    pub async fn take_place(
        &self,
        caller: &Caller,
        kind: crate::quota::PlaceKind,
        vcpus: u32,
    ) -> Result<crate::quota::Place> {
        let (tenant, quotas) = (&caller.tenant, &caller.quotas);
        // The count first (a request over it waits for nothing); the
        // vCPUs once the slot is given, so that only running VMs hold
        // them (twenty runs queued for four slots hold four VMs' worth).
        let place = match kind {
            crate::quota::PlaceKind::Run => self.inner.ledger.start_run(tenant, quotas, 0)?,
            crate::quota::PlaceKind::Session => {
                self.inner.ledger.start_session(tenant, quotas, 0)?
            }
        };
        if self.inner.config.refuse_when_full && self.free_slots() == 0 {
            return Err(ServerError::NodeFull {
                node: self.inner.node.clone(),
                slots: self.inner.fair.capacity(),
            });
        }
        let slot = tokio::select! {
            slot = self.inner.fair.acquire(tenant) => slot?,
            () = self.inner.draining.cancelled() => return Err(ServerError::Draining),
        };
        let mut place = place.with_slot(slot);
        place.hold_vcpus(quotas, vcpus)?;
        Ok(place)
    }

    /// The quota ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    /// The live sessions.
    pub(crate) fn sessions(&self) -> &crate::sessions::table::SessionTable {
        &self.inner.sessions
    }

    /// The secrets store.
    ///
    /// # Errors
    /// [`ServerError::SecretsDisabled`] when the server has none.
    pub fn secret_store(&self) -> Result<&SecretStore> {
        self.inner
            .secrets
            .as_ref()
            .ok_or(ServerError::SecretsDisabled)
    }

    /// The caller's secrets `names`, for a sandbox spec (none asked: no
    /// store needed).
    ///
    /// # Errors
    /// 400 naming an unknown secret, 501 without a store.
    pub async fn resolve_secrets(
        &self,
        caller: &Caller,
        names: &[String],
    ) -> Result<Vec<airlock::spec::Secret>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = caller.tenant.clone();
        let names = names.to_vec();
        self.secret_store()?
            .blocking(move |store| store.resolve(&tenant, &names))
            .await
    }

    /// Whether the server has no keys file: every request acts for the
    /// local user (loopback only), under the keyless checks
    /// (`http::keyless`).
    pub fn is_keyless(&self) -> bool {
        self.inner.keyring.is_none()
    }

    /// The caller without keys: the local user.
    pub fn local_caller(&self) -> &Caller {
        &self.inner.local
    }

    /// Who a request acts for: the key's tenant, or the local user when the
    /// server has no keys file (loopback only).
    ///
    /// # Errors
    /// [`ServerError::Unauthorized`] for a missing or unknown key.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Caller> {
        let Some(keyring) = &self.inner.keyring else {
            return Ok(self.inner.local.clone());
        };
        let Some(key) = bearer else {
            return Err(ServerError::Unauthorized {
                message: "missing API key: send `Authorization: Bearer KEY`".into(),
            });
        };
        // A poisoned lock still holds a whole keyring (it is only ever
        // replaced whole).
        let keyring = Arc::clone(&keyring.read().unwrap_or_else(|p| p.into_inner()));
        keyring
            .authenticate(key)
            .cloned()
            .ok_or_else(|| ServerError::Unauthorized {
                message: "unknown API key".into(),
            })
    }

    /// Reads the keys file again and replaces the keys in memory with its
    /// keys (what SIGHUP does, `server::run`): a key revoked from the file
    /// stops working, a new one starts. A file that cannot be used
    /// (unreadable, invalid, writable by other users) changes nothing: the
    /// old keys stay. Returns the number of keys now.
    ///
    /// # Errors
    /// [`ServerError::Keys`] for a bad file, or a server without a keys
    /// file (keyless: nothing to reload).
    pub async fn reload_keys(&self) -> Result<usize> {
        let (Some(current), Some(path)) = (&self.inner.keyring, &self.inner.config.keys_file)
        else {
            return Err(ServerError::Keys {
                path: self.inner.config.keys_file.clone().unwrap_or_default(),
                message: "this server has no keys file to reload".into(),
            });
        };
        let (path, defaults) = (path.clone(), self.inner.config.quotas);
        let keyring = tokio::task::spawn_blocking(move || {
            KeysFile::load_trusted(&path).map(|file| Keyring::new(&file, defaults))
        })
        .await
        .map_err(|e| ServerError::internal("reload the keys file", e))??;
        let count = keyring.len();
        *current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keyring);
        Ok(count)
    }

    /// Admits one request of `caller`: not while draining, and within its
    /// requests per minute.
    ///
    /// # Errors
    /// [`ServerError::Draining`], or [`ServerError::Quota`].
    pub fn admit(&self, caller: &Caller) -> Result<()> {
        self.check_not_draining()?;
        self.inner
            .ledger
            .admit_request(&caller.tenant, &caller.quotas)
    }

    /// Fails when the server drains.
    ///
    /// # Errors
    /// [`ServerError::Draining`].
    pub fn check_not_draining(&self) -> Result<()> {
        if self.inner.draining.is_cancelled() {
            Err(ServerError::Draining)
        } else {
            Ok(())
        }
    }

    /// Checks a run before anything starts and takes its place in the
    /// caller's quota and its VM slot: what [`Airlock::execute`] then
    /// runs. A refusal here comes before any VM (and before a stream's
    /// first byte).
    ///
    /// # Errors
    /// [`ServerError::Draining`], [`ServerError::BadRequest`] (an unknown
    /// secret name among them) or an orchestrator's invalid input,
    /// [`ServerError::UploadsTooLarge`], the expose policy's errors,
    /// [`ServerError::Quota`], [`ServerError::QueueTimeout`],
    /// [`ServerError::SecretsDisabled`] for secrets on a server without a
    /// key.
    pub async fn prepare_run(&self, caller: &Caller, body: &RunBody) -> Result<PreparedRun> {
        self.check_not_draining()?;
        self.check_egress(&body.sandbox)?;
        let secrets = self.resolve_secrets(caller, &body.secrets).await?;
        let mut request = body.to_request(&caller.tenant, &caller.quotas, secrets)?;
        let uploads = &self.inner.config.uploads;
        let total_bytes: usize = request.uploads.iter().map(|u| u.content.len()).sum();
        if total_bytes > uploads.max_bytes {
            return Err(ServerError::UploadsTooLarge {
                total_bytes,
                limit_bytes: uploads.max_bytes,
            });
        }
        request.upload_timeout = std::time::Duration::from_secs(uploads.timeout_s);
        self.fit_sandbox(caller, &mut request.spec)?;
        self.fit_mounts(caller, &mut request.spec).await?;
        let place = self
            .take_place(
                caller,
                crate::quota::PlaceKind::Run,
                request.spec.shape.vcpus,
            )
            .await?;
        Ok(PreparedRun {
            request,
            _place: place,
        })
    }

    /// Runs a prepared run in a fresh VM, streaming to `observer`; its
    /// quota place is given back when it ends.
    ///
    /// # Errors
    /// The orchestrator's errors.
    pub async fn execute(
        &self,
        run: PreparedRun,
        observer: &mut dyn RunObserver,
    ) -> Result<RunResult> {
        let PreparedRun { request, _place } = run;
        let metrics = &self.inner.metrics;
        let _in_flight = Held::new(&metrics.runs_in_flight);
        let _vm = Held::new(&metrics.vms_live);
        let result = self.inner.scheduler.run_observed(request, observer).await;
        match &result {
            Ok(result) => metrics.record_run(result),
            Err(_) => Metrics::count(&metrics.runs, "error"),
        }
        Ok(result?)
    }

    /// [`Airlock::prepare_run`] then [`Airlock::execute`].
    ///
    /// # Errors
    /// As both.
    pub async fn run(
        &self,
        caller: &Caller,
        body: &RunBody,
        observer: &mut dyn RunObserver,
    ) -> Result<RunResult> {
        let run = self.prepare_run(caller, body).await?;
        self.execute(run, observer).await
    }

    /// What the memory templates and package layers take on disk, as last
    /// read; a read older than [`CACHE_USAGE_EVERY`] starts one new read
    /// on the blocking pool (one at a time, whoever scrapes), whose
    /// result a later scrape shows. A scrape never waits for the disk.
    pub fn cache_usage(&self) -> Option<crate::metrics::CacheUsage> {
        let mut state = self
            .inner
            .cache_usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = state
            .read_at
            .is_some_and(|at| at.elapsed() < CACHE_USAGE_EVERY);
        if !fresh && !state.reading {
            state.reading = true;
            let config = self.inner.scheduler.config();
            let (templates, layers) = (config.templates_dir.clone(), config.packages_dir.clone());
            let shared = Arc::clone(&self.inner);
            // Bounded work (two directory walks); it ends on its own and
            // clears `reading`, so at most one runs.
            drop(tokio::task::spawn_blocking(move || {
                let usage = crate::metrics::CacheUsage {
                    templates_bytes: airlock::template::TemplateStore::new(templates).usage(),
                    layers_bytes: airlock::packages::LayerStore::new(layers).usage(),
                };
                let mut state = shared
                    .cache_usage
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *state = CacheUsageState {
                    last: Some(usage),
                    read_at: Some(std::time::Instant::now()),
                    reading: false,
                };
            }));
        }
        state.last
    }

    /// Checks the domains a sandbox allowlists against the operator's
    /// `[egress] allowed_patterns`.
    ///
    /// # Errors
    /// 403 `egress_not_allowed` for a domain outside them, 400 for a
    /// malformed one (a wildcard over a public suffix among them).
    pub fn check_egress(&self, sandbox: &airlock::spec::args::SandboxArgs) -> Result<()> {
        let domains = sandbox.network.allow_domains.as_deref().unwrap_or_default();
        self.inner.config.egress.check_tenant_domains(domains)
    }

    /// Starts draining: new work is refused with 503 from now on.
    pub fn drain(&self) {
        self.inner.draining.cancel();
    }

    /// The token cancelled when draining starts.
    pub fn drain_token(&self) -> &CancellationToken {
        &self.inner.draining
    }

    /// Resolves when draining starts.
    pub async fn draining(&self) {
        self.inner.draining.cancelled().await;
    }

    /// Destroys every VM this server holds and stops the orchestrator.
    ///
    /// Returns how many processes the VMs' teardowns left and were killed.
    pub async fn shutdown(&self) -> usize {
        self.drain();
        self.close_all_sessions().await;
        // The warm pools first (their paused VMs destroyed), then the
        // manager: no VM starts after this.
        self.inner.scheduler.shutdown().await
    }
}
