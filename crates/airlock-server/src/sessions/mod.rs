//! Sessions over the server: a table of the orchestrator's
//! [`airlock::Session`]s by id, each owned by one tenant, and the
//! operations REST and MCP share (create, list, exec, files, packages,
//! close). A tenant never sees another tenant's session: a lookup with the
//! wrong tenant is answered exactly like an unknown id.
//!
//! The orchestrator reaps a session at its idle timeout and maximum
//! lifetime (its calls then fail with `SessionClosed`); the table drops
//! closed sessions on the next lookup and in a sweep every few seconds.

pub mod http;
pub mod mcp;

use crate::api::{network_request, parse_language, parse_timeout};
use crate::error::{Result, ServerError};
use crate::keys::Caller;
use crate::quota::Place;
use crate::service::Airlock;
use airlock::{CellRequest, CellResult, FileInfo, RunObserver, Session, SessionOptions};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// `POST /v1/sessions`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionBody {
    /// `python`, `javascript` or `raw` (bash).
    pub language: String,
    /// Guest memory in MiB. Default 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Closed after this many seconds without a call. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    /// Pinned packages installed when the session starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<Vec<String>>,
    /// Network access (none without this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::api::NetworkBody>,
}

/// `POST /v1/sessions/{id}/exec`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// The code: a cell of the session's interpreter (state is kept).
    pub code: String,
    /// Timeout in seconds. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// Environment variables of this cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
}

/// `POST /v1/sessions/{id}/packages`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackagesBody {
    /// Pinned packages (`pip name==version`, `npm name@version`).
    pub packages: Vec<String>,
}

/// What the API says of a session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// Its id.
    pub id: String,
    /// Its language.
    pub language: String,
    /// When it started (seconds since the epoch).
    pub created_at: u64,
    /// When it was last used (seconds since the epoch).
    pub last_used: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn info(session: &Session) -> SessionInfo {
    SessionInfo {
        id: session.id().to_owned(),
        language: session.language().to_string(),
        created_at: unix(session.created_at()),
        last_used: unix(session.last_used()),
    }
}

struct Entry {
    session: Arc<Session>,
    _place: Place,
}

/// The live sessions, by id.
#[derive(Default)]
pub struct SessionTable {
    map: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field("live", &self.lock().len())
            .finish()
    }
}

impl SessionTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, session: Session, place: Place) -> Arc<Session> {
        let session = Arc::new(session);
        self.lock().insert(
            session.id().to_owned(),
            Entry {
                session: session.clone(),
                _place: place,
            },
        );
        session
    }

    /// The caller's session `id`: 404 when unknown, closed, or another
    /// tenant's.
    fn get(&self, tenant: &str, id: &str) -> Result<Arc<Session>> {
        let mut map = self.lock();
        match map.get(id) {
            Some(e) if e.session.tenant() == tenant && !e.session.is_closed() => {
                Ok(e.session.clone())
            }
            Some(e) if e.session.is_closed() => {
                map.remove(id);
                Err(not_found(id))
            }
            _ => Err(not_found(id)),
        }
    }

    fn remove(&self, tenant: &str, id: &str) -> Result<Arc<Session>> {
        let mut map = self.lock();
        match map.get(id) {
            Some(e) if e.session.tenant() == tenant => Ok(map
                .remove(id)
                .map(|e| e.session)
                .ok_or_else(|| not_found(id))?),
            _ => Err(not_found(id)),
        }
    }

    fn list(&self, tenant: &str) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .lock()
            .values()
            .filter(|e| e.session.tenant() == tenant && !e.session.is_closed())
            .map(|e| info(&e.session))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Drops the sessions the orchestrator closed; returns how many.
    pub fn sweep(&self) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, e| !e.session.is_closed());
        before - map.len()
    }

    /// Takes every session out (to close them).
    fn drain(&self) -> Vec<Arc<Session>> {
        self.lock().drain().map(|(_, e)| e.session).collect()
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

fn not_found(id: &str) -> ServerError {
    ServerError::SessionNotFound {
        session_id: id.to_owned(),
    }
}

impl Airlock {
    /// Starts a session for `caller`.
    ///
    /// # Errors
    /// 400 for bad input, 429 over the live-sessions or memory quota, 503
    /// while draining; the orchestrator's errors.
    pub async fn create_session(&self, caller: &Caller, body: &SessionBody) -> Result<SessionInfo> {
        self.check_not_draining()?;
        let language = parse_language(&body.language)?;
        let mut options = SessionOptions::new(language);
        options.spec.tenant.clone_from(&caller.tenant);
        if let Some(m) = body.memory_mib {
            options.spec.shape.memory_mib = m;
        }
        if let Some(s) = body.idle_timeout_s {
            options.idle_timeout = Duration::from_secs(s);
        }
        options.spec.packages = body.packages.clone().unwrap_or_default();
        options.spec.network = network_request(language, body.network.as_ref())?;
        options.validate()?;
        caller.quotas.check_vm(
            &caller.tenant,
            options.spec.shape.memory_mib,
            Duration::ZERO,
        )?;
        // Sessions the orchestrator closed (idle, lifetime) give their
        // places back here.
        self.sweep_sessions();
        let place = self
            .ledger()
            .start_session(&caller.tenant, &caller.quotas)?;
        let session = self.scheduler().session(options).await?;
        let metrics = self.metrics();
        metrics.sessions_created.inc();
        let session = self.sessions().insert(session, place);
        self.update_session_gauges();
        Ok(info(&session))
    }

    /// Drops the sessions the orchestrator closed (idle timeout, lifetime,
    /// a dead VM) from the table, giving back their quota places.
    pub fn sweep_sessions(&self) {
        if self.sessions().sweep() > 0 {
            self.update_session_gauges();
        }
    }

    fn update_session_gauges(&self) {
        let live = i64::try_from(self.sessions().len()).unwrap_or(i64::MAX);
        let metrics = self.metrics();
        let before = metrics.sessions_live.set(live);
        metrics.vms_live.inc_by(live - before);
    }

    /// The caller's live sessions.
    pub fn list_sessions(&self, caller: &Caller) -> Vec<SessionInfo> {
        self.sweep_sessions();
        self.sessions().list(&caller.tenant)
    }

    /// One of the caller's sessions.
    ///
    /// # Errors
    /// 404 for an unknown, closed or other tenant's session.
    pub fn session_info(&self, caller: &Caller, id: &str) -> Result<SessionInfo> {
        let session = self.sessions().get(&caller.tenant, id)?;
        Ok(info(&session))
    }

    /// Closes one of the caller's sessions and destroys its VM.
    ///
    /// # Errors
    /// 404 as [`Airlock::session_info`].
    pub async fn close_session(&self, caller: &Caller, id: &str) -> Result<()> {
        let session = self.sessions().remove(&caller.tenant, id)?;
        session.close().await;
        self.update_session_gauges();
        Ok(())
    }

    /// The caller's session `id`, for a call.
    ///
    /// # Errors
    /// 503 while draining; 404 as [`Airlock::session_info`].
    pub fn session(&self, caller: &Caller, id: &str) -> Result<Arc<Session>> {
        self.check_not_draining()?;
        self.sessions().get(&caller.tenant, id)
    }

    /// Runs a cell in one of the caller's sessions.
    ///
    /// # Errors
    /// 400, 404, 409 (busy), 429 (timeout over the quota), the
    /// orchestrator's errors.
    pub async fn exec(
        &self,
        caller: &Caller,
        session: &Session,
        body: &ExecBody,
        observer: &mut dyn RunObserver,
    ) -> Result<CellResult> {
        let mut request = CellRequest::new(body.code.clone());
        request.timeout = parse_timeout(body.timeout_s, airlock::DEFAULT_TIMEOUT)?;
        request.env = body.env.clone().unwrap_or_default();
        caller
            .quotas
            .check_timeout(&caller.tenant, request.timeout)?;
        let result = session.exec(request, observer).await?;
        self.metrics()
            .exec_seconds
            .observe(result.duration_ms as f64 / 1000.0);
        Ok(result)
    }

    /// Closes every session (draining).
    pub async fn close_all_sessions(&self) {
        for session in self.sessions().drain() {
            session.close().await;
        }
        self.update_session_gauges();
    }

    /// Writes a file into a session.
    ///
    /// # Errors
    /// 404, 409, the orchestrator's errors.
    pub async fn write_file(
        &self,
        session: &Session,
        path: &str,
        bytes: &[u8],
    ) -> Result<FileInfo> {
        Ok(session.write_file(path, bytes).await?)
    }
}
