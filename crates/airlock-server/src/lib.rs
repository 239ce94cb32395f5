//! Airlock's server: the orchestrator's runs (and sessions) for programs in
//! any language, over HTTP and MCP, on one box.
//!
//! - REST over HTTP (axum, [`http`]): `POST /v1/runs` answers with the same
//!   JSON as `airlock run --json`, or streams server-sent events; health,
//!   Prometheus metrics and an OpenAPI document (`docs/api.md`).
//! - API keys ([`keys`]): a keys file maps the sha256 of each bearer key
//!   to a tenant and its quotas ([`quota`]: concurrent runs, live
//!   sessions, memory per VM, longest timeout, requests per minute).
//! - Sessions ([`sessions`]): the orchestrator's `Session`s by id, each
//!   owned by one tenant, with REST routes (exec, files, packages) and MCP
//!   tools.
//! - Secrets ([`secrets`]): each tenant's secrets, encrypted at rest under
//!   the operator's key, named by runs and sessions (`"secrets": [..]`),
//!   so the VM gets only placeholders (`docs/secrets.md`).
//! - Inputs ([`api`], [`json`]): the bodies and tool inputs flatten the
//!   library's shared options (`airlock::spec::args`), so REST, MCP and
//!   the CLI name, default and check each option alike; unknown fields are
//!   refused against the published schema.
//! - MCP ([`mcp`], rmcp): the same operations as tools, over stdio
//!   (`airlock mcp`) and streamable HTTP at `/mcp`.
//! - E2B's protocol ([`e2b`], `docs/e2b.md`): E2B's SDKs unchanged, on a
//!   second listener (`[e2b] listen`): its REST API and, by the
//!   `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers, its envd and
//!   code-interpreter planes, each sandbox a session.
//! - A life ([`server`]): listen on loopback by default, refuse a public
//!   address without keys, drain on SIGTERM and destroy every VM.
//! - The listener ([`listener`], hyper): connection caps in all and per
//!   address, header, idle, send and body deadlines, the descriptor limit
//!   raised at start; a request without a valid key is answered 401 at
//!   once, its body unread, and its connection closed; a keyless server
//!   takes only loopback `Host`s, no foreign `Origin` and JSON bodies
//!   (`docs/security.md`).
//!
//! What it does not do: run or manage VMs itself. Every VM comes from the
//! orchestrator's public library API ([`airlock::Scheduler`]); the server
//! adds only who may ask, how much, and the wire formats. It does not
//! terminate TLS (put a reverse proxy in front for that).
//!
//! Layer: above the orchestrator (`airlock`), below the `airlock` binary
//! (`airlock-cli`), whose `serve` and `mcp` commands call [`server::run`]
//! (until a shutdown future: the command's stop signal) and
//! [`mcp::serve_stdio`], and manage the [`keys`] file. It parses no
//! command line, installs no signal handler and no log subscriber: those
//! belong to the process, that is to the binary.
//!
//! ```no_run
//! use airlock_server::{Airlock, ServerConfig};
//!
//! # async fn demo() -> airlock_server::Result<()> {
//! let config = ServerConfig::default(); // 127.0.0.1:7000, no keys
//! let airlock = Airlock::start(config, None).await?;
//! let router = airlock_server::http::router(airlock.clone(), None);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7000").await.expect("bind");
//! let limits = airlock.config().listener.clone();
//! // Until the server drains; `server::run` does this, and the rest.
//! let drain = airlock.clone();
//! airlock_server::listener::serve(listener, router, limits, airlock.metrics().clone(), async move {
//!     drain.draining().await
//! })
//! .await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod config;
pub mod e2b;
mod error;
pub mod fair;
pub mod http;
pub mod json;
pub mod keys;
pub mod listener;
pub mod mcp;
pub mod metrics;
pub mod quota;
pub mod secrets;
pub mod server;
mod service;
pub mod sessions;
pub mod tls;

pub use config::ServerConfig;
pub use error::{redact_host_paths, ErrorKind, PublicError, Result, ServerError};
pub use service::{local_tenant, Airlock, PreparedRun};
