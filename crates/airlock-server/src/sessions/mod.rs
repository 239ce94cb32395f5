//! Sessions over the server: a table of the orchestrator's
//! [`airlock::Session`]s by id, each owned by one tenant, and the
//! operations REST and MCP share (create, list, exec, files, packages,
//! close). A tenant never sees another tenant's session: a lookup with the
//! wrong tenant is answered exactly like an unknown id.
//!
//! The orchestrator reaps a session at its idle timeout and maximum
//! lifetime (its calls then fail with `SessionClosed`); the table drops
//! closed sessions on the next lookup and in a sweep every few seconds.

pub mod mcp;
pub mod table;

use self::table::{info, paused_info, SessionInfo};
use crate::api::{language_of, parse_timeout, ExecBody, SessionBody};
use crate::error::{Result, ServerError};
use crate::keys::Caller;
use crate::service::Airlock;
use airlock::{
    CellRequest, CellResult, ExecError, FileInfo, FileSink, FileSource, RunObserver, Session,
    SessionError,
};
use airlock_protocol::ProtocolError;
use std::sync::Arc;

impl Airlock {
    /// Starts a session for `caller`.
    ///
    /// # Errors
    /// 400 for bad input, 403 or 400 for exposed ports the operator's
    /// policy refuses, 429 over the live-sessions, memory or vCPU quota
    /// or when no VM slot came in time, 503 while draining; the
    /// orchestrator's errors.
    pub async fn create_session(&self, caller: &Caller, body: &SessionBody) -> Result<SessionInfo> {
        self.check_not_draining()?;
        let language = language_of(body.language.as_deref(), &body.spec.sandbox)?;
        self.check_egress(&body.spec.sandbox)?;
        let secrets = self.resolve_secrets(caller, &body.spec.secrets).await?;
        let mut options = body.spec.to_options(&caller.tenant, language, secrets)?;
        self.fit_sandbox(caller, &mut options.spec)?;
        self.fit_mounts(caller, &mut options.spec).await?;
        // Sessions the orchestrator closed (idle, lifetime) give their
        // places back here.
        self.sweep_sessions();
        let place = self
            .take_place(
                caller,
                crate::quota::PlaceKind::Session,
                options.spec.shape.vcpus,
            )
            .await?;
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

    /// The caller's sessions: the live ones, then the paused ones (found
    /// on disk, after a restart too; expired ones are deleted first).
    ///
    /// # Errors
    /// 500 when the paused sessions cannot be read.
    pub async fn list_sessions(&self, caller: &Caller) -> Result<Vec<SessionInfo>> {
        self.sweep_sessions();
        let mut sessions = self.sessions().list(&caller.tenant);
        sessions.extend(
            self.paused_of(&caller.tenant)
                .await?
                .iter()
                .map(|entry| paused_info(&entry.meta)),
        );
        Ok(sessions)
    }

    /// The caller's paused sessions (what was saved of each), after the
    /// expired ones are swept.
    ///
    /// # Errors
    /// 500 when the paused sessions cannot be read.
    pub async fn paused_sessions(
        &self,
        caller: &Caller,
    ) -> Result<Vec<airlock::pause::PausedMeta>> {
        Ok(self
            .paused_of(&caller.tenant)
            .await?
            .into_iter()
            .map(|entry| entry.meta)
            .collect())
    }

    /// The tenant's paused sessions, after the expired ones are swept.
    async fn paused_of(&self, tenant: &str) -> Result<Vec<airlock::pause::PausedEntry>> {
        let scheduler = self.scheduler();
        let swept = scheduler.sweep_paused().await.map_err(SessionError::from)?;
        if !swept.is_empty() {
            tracing::info!(expired = ?swept, "paused sessions expired");
        }
        let mut entries = scheduler
            .paused_sessions()
            .await
            .map_err(SessionError::from)?;
        entries.retain(|e| e.meta.tenant == tenant);
        Ok(entries)
    }

    /// The caller's paused session `id`.
    async fn paused_session(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<airlock::pause::PausedEntry> {
        self.paused_of(&caller.tenant)
            .await?
            .into_iter()
            .find(|e| e.meta.session_id == id)
            .ok_or_else(|| ServerError::SessionNotFound {
                session_id: id.to_owned(),
            })
    }

    /// One of the caller's sessions, live or paused.
    ///
    /// # Errors
    /// 404 for an unknown, closed or other tenant's session.
    pub async fn session_info(&self, caller: &Caller, id: &str) -> Result<SessionInfo> {
        match self.sessions().get(&caller.tenant, id) {
            Ok(session) => Ok(info(&session)),
            Err(not_live) => match self.paused_session(caller, id).await {
                Ok(entry) => Ok(paused_info(&entry.meta)),
                Err(_) => Err(not_live),
            },
        }
    }

    /// Closes one of the caller's sessions and destroys its VM; a paused
    /// one is deleted from disk.
    ///
    /// # Errors
    /// 404 as [`Airlock::session_info`].
    pub async fn close_session(&self, caller: &Caller, id: &str) -> Result<()> {
        let session = match self.sessions().remove(&caller.tenant, id) {
            Ok(session) => session,
            Err(not_live) => {
                if self.paused_session(caller, id).await.is_err() {
                    return Err(not_live);
                }
                self.scheduler()
                    .discard_paused(id)
                    .await
                    .map_err(SessionError::from)?;
                return Ok(());
            }
        };
        session.close().await;
        self.update_session_gauges();
        Ok(())
    }

    /// Pauses one of the caller's sessions to disk (`docs/persistence.md`):
    /// its VM is destroyed and its quota place given back; it is listed as
    /// paused with its size until resumed, deleted, or expired.
    ///
    /// # Errors
    /// 404, 409 (busy, or a session with a network or host folders), 429
    /// over the tenant's `paused_mib` (the session runs on), 503 while
    /// draining, the orchestrator's errors.
    pub async fn pause_session(&self, caller: &Caller, id: &str) -> Result<SessionInfo> {
        let session = self.session(caller, id)?;
        // Expired ones do not count against the quota.
        self.paused_of(&caller.tenant).await?;
        let meta = session
            .pause(self.scheduler(), &caller.quotas.pause_options())
            .await?;
        // Closed now: its place goes back.
        self.sweep_sessions();
        Ok(paused_info(&meta))
    }

    /// Resumes one of the caller's paused sessions, under the same id
    /// (memory, files and running threads as they were); it takes a
    /// session's quota place and a VM slot again.
    ///
    /// # Errors
    /// 404 for no such paused session of the caller's, 409 when the host
    /// changed since the pause, 429 over the live-sessions or vCPU quota,
    /// 503 while draining, the orchestrator's errors.
    pub async fn resume_session(&self, caller: &Caller, id: &str) -> Result<SessionInfo> {
        self.check_not_draining()?;
        let entry = self.paused_session(caller, id).await?;
        self.sweep_sessions();
        let place = self
            .take_place(
                caller,
                crate::quota::PlaceKind::Session,
                entry.meta.shape.vcpus,
            )
            .await?;
        let session = self.scheduler().resume(id).await?;
        self.metrics().sessions_created.inc();
        let session = self.sessions().insert(session, place);
        self.update_session_gauges();
        Ok(info(&session))
    }

    /// Forks one of the caller's sessions into `count` new ones (1..=8),
    /// each counted against the tenant's quotas as a new session: all
    /// places are taken before anything is saved, so a fork over the
    /// quota is refused cleanly and changes nothing.
    ///
    /// # Errors
    /// 400 for a count outside 1..=8, 404, 409 (busy, network, host
    /// folders), 429 over the quotas, the orchestrator's errors.
    pub async fn fork_session(
        &self,
        caller: &Caller,
        id: &str,
        count: usize,
    ) -> Result<Vec<SessionInfo>> {
        airlock::pause::validate_fork_count(count).map_err(SessionError::from)?;
        let parent = self.session(caller, id)?;
        self.sweep_sessions();
        let vcpus = parent.shape().vcpus;
        let mut places = Vec::with_capacity(count);
        for _ in 0..count {
            places.push(
                self.take_place(caller, crate::quota::PlaceKind::Session, vcpus)
                    .await?,
            );
        }
        let children = parent.fork(self.scheduler(), count).await?;
        self.metrics()
            .sessions_created
            .inc_by(children.len() as u64);
        let infos = children
            .into_iter()
            .zip(places)
            .map(|(child, place)| info(&self.sessions().insert(child, place)))
            .collect();
        self.update_session_gauges();
        Ok(infos)
    }

    /// The caller's session `id`, for a call.
    ///
    /// # Errors
    /// 503 while draining; 404 as [`Airlock::session_info`].
    pub fn session(&self, caller: &Caller, id: &str) -> Result<Arc<Session>> {
        self.check_not_draining()?;
        self.sessions().get(&caller.tenant, id)
    }

    /// Checks a cell of `body` for `caller` before anything runs (and
    /// before a stream's first byte).
    ///
    /// # Errors
    /// 400 for a bad timeout, 429 for a timeout over the quota.
    pub fn prepare_exec(&self, caller: &Caller, body: &ExecBody) -> Result<CellRequest> {
        let mut request = CellRequest::new(body.code.clone());
        request.timeout = parse_timeout(body.timeout_s, airlock::DEFAULT_TIMEOUT)?;
        request.env = body.env.clone().unwrap_or_default();
        caller
            .quotas
            .check_timeout(&caller.tenant, request.timeout)?;
        Ok(request)
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
        let request = self.prepare_exec(caller, body)?;
        self.exec_prepared(session, request, observer).await
    }

    /// Runs a cell [`Airlock::prepare_exec`] checked.
    ///
    /// # Errors
    /// 404, 409 (busy), the orchestrator's errors.
    pub async fn exec_prepared(
        &self,
        session: &Session,
        request: CellRequest,
        observer: &mut dyn RunObserver,
    ) -> Result<CellResult> {
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

    /// Writes a file into a session from `source`, streamed (the server
    /// holds one chunk of it), at most `[files] max_bytes`: a declared
    /// `size` over the cap is refused before anything is read, and a
    /// source that passes it fails as soon as it does, leaving no file.
    ///
    /// # Errors
    /// 404, 409, 413 over the cap, 400 when `source` fails (a body cut
    /// short), the orchestrator's errors.
    pub async fn write_file(
        &self,
        session: &Session,
        path: &str,
        size: Option<u64>,
        source: FileSource<'_>,
    ) -> Result<FileInfo> {
        let limit_bytes = self.config().files.max_bytes;
        if size.is_some_and(|size| size > limit_bytes as u64) {
            return Err(ServerError::TooLarge { limit_bytes });
        }
        match session
            .write_file_from(path, size, source, limit_bytes as u64)
            .await
        {
            Err(SessionError::Exec(ExecError::File { source, .. })) if is_host_side(&source) => {
                Err(match source {
                    ProtocolError::HostStream { source, .. } => {
                        ServerError::bad_request(format!("cannot read the body: {source}"))
                    }
                    _ => ServerError::TooLarge { limit_bytes },
                })
            }
            other => Ok(other?),
        }
    }

    /// Reads a file of a session into `sink`, streamed (the server holds
    /// one chunk of it), at most `[files] max_bytes`: a larger file is
    /// refused (`file_too_large`, 413) before any of it reaches `sink`.
    /// After an error, what `sink` got is not the file.
    ///
    /// # Errors
    /// 404, 409 (busy), 413, the orchestrator's errors.
    pub async fn read_file_into(
        &self,
        session: &Session,
        path: &str,
        sink: FileSink<'_>,
    ) -> Result<FileInfo> {
        let max_bytes = self.config().files.max_bytes as u64;
        let read = session.read_file_into(path, max_bytes, sink).await;
        file_too_large(read, path, max_bytes, "")
    }

    /// Reads a whole file of a session into memory, at most `max_bytes`
    /// (and `[files] max_bytes`): MCP's `read_file`, whose answer holds
    /// the content.
    ///
    /// # Errors
    /// As [`Airlock::read_file_into`].
    pub async fn read_file_at_most(
        &self,
        session: &Session,
        path: &str,
        max_bytes: usize,
    ) -> Result<(Vec<u8>, FileInfo)> {
        let limited = max_bytes < self.config().files.max_bytes;
        let max_bytes = max_bytes.min(self.config().files.max_bytes) as u64;
        let where_else = if limited {
            ": read it with GET /v1/sessions/{id}/files/{path}"
        } else {
            ""
        };
        let read = session.read_file_at_most(path, max_bytes).await;
        file_too_large(read, path, max_bytes, where_else)
    }
}

/// Whether a file transfer failed on this side (the cap, the body or the
/// response), not in the guest.
fn is_host_side(error: &ProtocolError) -> bool {
    matches!(
        error,
        ProtocolError::FileTooLarge { .. } | ProtocolError::HostStream { .. }
    )
}

/// A read's result, a file over the cap told as `file_too_large` (413).
fn file_too_large<T>(
    read: std::result::Result<T, SessionError>,
    path: &str,
    limit_bytes: u64,
    where_else: &'static str,
) -> Result<T> {
    match read {
        Err(SessionError::Exec(ExecError::File {
            source: ProtocolError::FileTooLarge { .. },
            ..
        })) => Err(ServerError::FileTooLarge {
            path: path.to_owned(),
            limit_bytes,
            where_else,
        }),
        other => Ok(other?),
    }
}
