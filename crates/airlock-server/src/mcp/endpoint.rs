//! `/mcp` over HTTP: rmcp's streamable-HTTP service behind the server's
//! own rules. rmcp knows sessions but not tenants; this binds each MCP
//! session to the tenant whose `initialize` made it, so another tenant's
//! `Mcp-Session-Id` is answered 404 as if it did not exist, caps the live
//! MCP sessions of one tenant (`[mcp] max_sessions_per_tenant`, 429) and
//! refuses a body declared over `[mcp] max_body_bytes` before reading it
//! (rmcp also stops reading at that cap, whatever the headers say).

use crate::error::ServerError;
use crate::keys::Caller;
use crate::service::Airlock;
use axum::extract::Request;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The header naming an MCP session.
const SESSION_HEADER: &str = "mcp-session-id";

/// rmcp's service over the tools.
type Inner = StreamableHttpService<super::McpTools, LocalSessionManager>;

/// The MCP endpoint mounted at `/mcp` (cheap to clone).
#[derive(Clone)]
pub struct McpEndpoint {
    service: Inner,
    manager: Arc<LocalSessionManager>,
    owners: Arc<Mutex<Owners>>,
    max_sessions_per_tenant: usize,
    max_body_bytes: usize,
}

impl std::fmt::Debug for McpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpEndpoint")
            .field("max_sessions_per_tenant", &self.max_sessions_per_tenant)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// Who made each MCP session, and the `initialize`s under way per tenant
/// (counted against the cap before their session exists).
#[derive(Debug, Default)]
struct Owners {
    by_session: HashMap<String, String>,
    starting: HashMap<String, usize>,
}

impl Owners {
    /// Forgets the sessions rmcp no longer has (closed, idle past its
    /// keep-alive), then counts `tenant`'s, those starting included.
    fn live_of(&mut self, tenant: &str, live: &dyn Fn(&str) -> bool) -> usize {
        self.by_session.retain(|id, _| live(id));
        self.by_session.values().filter(|t| *t == tenant).count()
            + self.starting.get(tenant).copied().unwrap_or(0)
    }

    fn done_starting(&mut self, tenant: &str) {
        if let Some(n) = self.starting.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.starting.remove(tenant);
            }
        }
    }
}

/// Locks the owners (a poisoned lock's map is still whole: every change
/// is one insert or remove).
fn lock(owners: &Mutex<Owners>) -> std::sync::MutexGuard<'_, Owners> {
    owners.lock().unwrap_or_else(|p| p.into_inner())
}

impl McpEndpoint {
    /// The endpoint of `airlock`'s tools, ended when the server drains.
    pub fn new(airlock: &Airlock) -> Self {
        let limits = airlock.config().mcp.clone();
        // Keys guard a server with keys; a keyless one checks `Host` and
        // `Origin` on every route, this one included (`http::keyless`).
        let config = StreamableHttpServerConfig::default()
            .with_cancellation_token(airlock.drain_token().child_token())
            .with_max_request_body_bytes(limits.max_body_bytes)
            .disable_allowed_hosts();
        let tools = airlock.clone();
        let manager = Arc::new(LocalSessionManager::default());
        let service = StreamableHttpService::new(
            move || Ok(super::McpTools::new(tools.clone(), None)),
            Arc::clone(&manager),
            config,
        );
        Self {
            service,
            manager,
            owners: Arc::default(),
            max_sessions_per_tenant: limits.max_sessions_per_tenant,
            max_body_bytes: limits.max_body_bytes,
        }
    }

    /// Answers one request to `/mcp` of the caller the key middleware
    /// found (a request without one is refused).
    pub async fn handle(&self, request: Request) -> Response {
        let Some(caller) = request.extensions().get::<Caller>().cloned() else {
            let e = ServerError::Unauthorized {
                message: "no authenticated caller".into(),
            };
            return crate::http::refuse(request, e).await;
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes as u64) {
            let e = ServerError::TooLarge {
                limit_bytes: self.max_body_bytes,
            };
            return crate::http::refuse(request, e).await;
        }
        let session = request
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match session {
            Some(id) => self.in_session(request, &caller, id).await,
            None if request.method() == Method::POST => self.start(request, &caller).await,
            None => self.service.handle(request).await.into_response(),
        }
    }

    /// A request in MCP session `id`: only its own tenant's.
    async fn in_session(&self, request: Request, caller: &Caller, id: String) -> Response {
        let owner = lock(&self.owners).by_session.get(&id).cloned();
        if owner.as_deref() != Some(caller.tenant.as_str()) {
            // Unknown and foreign alike: nothing says the id exists.
            let e = ServerError::SessionNotFound { session_id: id };
            return crate::http::refuse(request, e).await;
        }
        let closing = request.method() == Method::DELETE;
        let response = self.service.handle(request).await.into_response();
        if closing && response.status().is_success() {
            lock(&self.owners).by_session.remove(&id);
        }
        response
    }

    /// A POST without a session: an `initialize` that makes one, within
    /// the tenant's cap.
    async fn start(&self, request: Request, caller: &Caller) -> Response {
        let refused = {
            let mut owners = lock(&self.owners);
            // Read under our lock: an id in `by_session` went into rmcp's
            // table before ours, so one missing there now is closed. When
            // rmcp's table is being written, nothing is forgotten this time.
            let live = self.manager.sessions.try_read().ok();
            let is_live = |id: &str| live.as_ref().is_none_or(|table| table.contains_key(id));
            let count = owners.live_of(&caller.tenant, &is_live);
            drop(live);
            if count >= self.max_sessions_per_tenant {
                Some(ServerError::Quota {
                    tenant: caller.tenant.clone(),
                    quota: "mcp_sessions",
                    message: format!(
                        "{count} MCP sessions are open, the limit is {}: close one (HTTP DELETE /mcp with its Mcp-Session-Id)",
                        self.max_sessions_per_tenant
                    ),
                })
            } else {
                *owners.starting.entry(caller.tenant.clone()).or_default() += 1;
                None
            }
        };
        if let Some(e) = refused {
            return crate::http::refuse(request, e).await;
        }
        // Counted as starting until rmcp answers, even if this request is
        // dropped on the way.
        let guard = Starting {
            owners: &self.owners,
            tenant: &caller.tenant,
        };
        let response = self.service.handle(request).await.into_response();
        let made = response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(id) = made {
            lock(&self.owners)
                .by_session
                .insert(id, caller.tenant.clone());
        }
        drop(guard);
        response
    }
}

/// One `initialize` under way: uncounted when dropped.
struct Starting<'a> {
    owners: &'a Mutex<Owners>,
    tenant: &'a str,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        lock(self.owners).done_starting(self.tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_rmcp_dropped_are_forgotten_and_starting_ones_count() {
        let mut owners = Owners::default();
        owners.by_session.insert("s1".into(), "alice".into());
        owners.by_session.insert("s2".into(), "alice".into());
        owners.by_session.insert("s3".into(), "bob".into());
        *owners.starting.entry("alice".into()).or_default() += 1;

        assert_eq!(owners.live_of("alice", &|id| id != "s2"), 2);
        assert!(!owners.by_session.contains_key("s2"));
        assert_eq!(owners.live_of("bob", &|_| true), 1);
        owners.done_starting("alice");
        assert_eq!(owners.live_of("alice", &|_| true), 1);
        assert!(owners.starting.is_empty());
    }
}
