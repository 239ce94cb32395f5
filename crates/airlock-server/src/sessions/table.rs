//! The table of live sessions: the orchestrator's [`Session`]s by id,
//! each holding its place in its tenant's quota. A lookup with the wrong
//! tenant is answered exactly like an unknown id (404).

use crate::error::{Result, ServerError};
use crate::quota::Place;
use airlock::Session;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// What the API says of a session.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SessionInfo {
    /// Its id.
    pub id: String,
    /// Its language.
    pub language: String,
    /// When it started (seconds since the epoch).
    pub created_at: u64,
    /// When it was last used (seconds since the epoch); for a paused
    /// session, when it was paused.
    pub last_used: u64,
    /// `running`, or `paused` (saved to disk, no VM: `POST
    /// /v1/sessions/{id}/resume` brings it back).
    pub state: SessionState,
    /// A paused session's size on disk (its memory and disk saved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// When a paused session is deleted (seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// Whether a session runs or is paused to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Its VM runs.
    Running,
    /// Saved to disk; no VM.
    Paused,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn info(session: &Session) -> SessionInfo {
    SessionInfo {
        id: session.id().to_owned(),
        language: session.language().to_string(),
        created_at: unix(session.created_at()),
        last_used: unix(session.last_used()),
        state: SessionState::Running,
        bytes: None,
        expires_at: None,
    }
}

/// What the API says of a paused session.
pub(crate) fn paused_info(meta: &airlock::pause::PausedMeta) -> SessionInfo {
    SessionInfo {
        id: meta.session_id.clone(),
        language: meta.language.to_string(),
        created_at: meta.created_at_ms / 1000,
        last_used: meta.paused_at_ms / 1000,
        state: SessionState::Paused,
        bytes: Some(meta.bytes()),
        expires_at: Some(meta.expires_at_ms / 1000),
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

    pub(crate) fn insert(&self, session: Session, place: Place) -> Arc<Session> {
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
    pub(crate) fn get(&self, tenant: &str, id: &str) -> Result<Arc<Session>> {
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

    pub(crate) fn remove(&self, tenant: &str, id: &str) -> Result<Arc<Session>> {
        let mut map = self.lock();
        match map.get(id) {
            Some(e) if e.session.tenant() == tenant => Ok(map
                .remove(id)
                .map(|e| e.session)
                .ok_or_else(|| not_found(id))?),
            _ => Err(not_found(id)),
        }
    }

    pub(crate) fn list(&self, tenant: &str) -> Vec<SessionInfo> {
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
    pub(crate) fn drain(&self) -> Vec<Arc<Session>> {
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
