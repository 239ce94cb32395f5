//! [`Airlock`]: what the REST routes and the MCP tools both call. It holds
//! the orchestrator's [`Scheduler`], the keys, the tenants' quota ledger,
//! the metrics and the draining flag, and applies the server's rules in
//! one place: who the caller is, whether the quota allows the work, and
//! that nothing new starts while the server drains.
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
        Ok(Self::new(scheduler, config, keyring, secrets))
    }

    /// The server's state over a running scheduler, with its secrets
    /// store (`None`: the server keeps no secrets).
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
        Self {
            inner: Arc::new(Inner {
                scheduler,
                config,
                keyring: keyring.map(|k| std::sync::RwLock::new(Arc::new(k))),
                local,
                ledger: Ledger::default(),
                metrics: Metrics::new(),
                draining: CancellationToken::new(),
                sessions: crate::sessions::table::SessionTable::default(),
                secrets,
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
    /// caller's quota: what [`Airlock::execute`] then runs. A refusal
    /// here comes before any VM (and before a stream's first byte).
    ///
    /// # Errors
    /// [`ServerError::Draining`], [`ServerError::BadRequest`] (an unknown
    /// secret name among them) or an orchestrator's invalid input,
    /// [`ServerError::Quota`], [`ServerError::SecretsDisabled`] for secrets
    /// on a server without a key.
    pub async fn prepare_run(&self, caller: &Caller, body: &RunBody) -> Result<PreparedRun> {
        self.check_not_draining()?;
        self.check_egress(&body.sandbox)?;
        let secrets = self.resolve_secrets(caller, &body.secrets).await?;
        let request = body.to_request(&caller.tenant, &caller.quotas, secrets)?;
        let place = self
            .inner
            .ledger
            .start_run(&caller.tenant, &caller.quotas)?;
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
