//! The router over fakes: every route, error status and kind, tenant
//! isolation, quota, SSE frame and MCP tool, each request sent through
//! `tower::ServiceExt::oneshot` to the router `airlock serve` serves (MCP
//! at `/mcp` included), over a [`Scheduler`](airlock::Scheduler) built
//! from `airlock::testing`'s fake VM sources. No test here starts QEMU:
//! they pass with `AIRLOCK_QEMU=/nonexistent`.
//!
//! The builders every test uses live here and nowhere else: [`Harness`]
//! (the router, its fakes and its keys), [`Reply`] (a whole answer) and
//! [`Mcp`] (a JSON-RPC client of `/mcp`). What the fake VMs do with code
//! (`exit N`, `hang`, `die`, echo) is listed in `airlock::testing`.

mod attack;
mod attack_cache;
mod attack_policy;
mod attack_tenancy;
mod auth;
mod errors;
mod mcp;
mod open;
mod quotas;
mod results;
mod runs;
mod secrets;
mod sessions;
mod sse;

use crate::config::ServerConfig;
use crate::keys::{hash_key, KeyEntry, Keyring, KeysFile};
use crate::quota::{QuotaOverrides, Quotas};
use crate::service::Airlock;
use airlock::testing::FakeSetup;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::time::Duration;
use tower::ServiceExt;

/// Tenant `alice`'s key.
pub(crate) const KEY_A: &str = "airlock_test_alice";
/// Tenant `bob`'s key.
pub(crate) const KEY_B: &str = "airlock_test_bob";
/// No key at all.
pub(super) const NO_KEY: &str = "";

/// Longest wait for a whole answer (an SSE stream or an MCP reply ends
/// well before).
const ANSWER_DEADLINE: Duration = Duration::from_secs(20);

/// The router of a server over fakes, with two tenants' keys.
pub(crate) struct Harness {
    pub airlock: Airlock,
    pub fakes: FakeSetup,
    router: Router,
    /// Holds the secrets store's file (removed with the harness).
    pub secrets_dir: tempfile::TempDir,
}

/// The secrets key of every harness's store.
pub(super) const SECRETS_KEY_HEX: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

impl Harness {
    /// Keys for `alice` and `bob`, the default configuration.
    pub fn new() -> Self {
        Self::with_config(ServerConfig::default())
    }

    /// Keys for `alice` and `bob`, whose quotas are `quotas`.
    pub fn with_quotas(quotas: Quotas) -> Self {
        Self::with_config(ServerConfig {
            quotas,
            ..ServerConfig::default()
        })
    }

    /// Keys for `alice` and `bob` under `config`.
    pub fn with_config(config: ServerConfig) -> Self {
        let keyring = two_tenants(config.quotas);
        Self::build(config, Some(keyring), true)
    }

    /// Keys for `alice` and `bob` under `config`, and fakes that restore
    /// templates as `config` has the orchestrator do (its template
    /// shapes): `fakes.template` serves what would restore.
    pub fn with_template_fakes(config: ServerConfig) -> Self {
        let keyring = two_tenants(config.quotas);
        let orchestrator = config.orchestrator();
        let fakes = airlock::Config {
            restore_templates: orchestrator.restore_templates,
            template_shapes: orchestrator.template_shapes,
            ..airlock::testing::test_config()
        };
        Self::build_over(config, Some(keyring), true, fakes)
    }

    /// Keys for `alice` and `bob`, and no secrets key: the server keeps
    /// no secrets.
    pub fn without_secrets() -> Self {
        Self::build(
            ServerConfig::default(),
            Some(two_tenants(Quotas::default())),
            false,
        )
    }

    /// No keys file: every request acts for the local user.
    pub fn keyless() -> Self {
        Self::build(ServerConfig::default(), None, true)
    }

    /// Keys for `alice` and `bob` read from a keys file in `dir` (mode
    /// 0600), named in the configuration: what SIGHUP reloads.
    pub fn with_keys_file(dir: &std::path::Path, config: ServerConfig) -> Self {
        let path = dir.join("keys.toml");
        two_tenants_file().save(&path).expect("write the keys file");
        let config = ServerConfig {
            keys_file: Some(path),
            ..config
        };
        let keyring = Keyring::of_config(&config)
            .expect("a private keys file loads")
            .expect("a keys file is named");
        Self::build(config, Some(keyring), true)
    }

    fn build(config: ServerConfig, keyring: Option<Keyring>, with_secrets: bool) -> Self {
        Self::build_over(
            config,
            keyring,
            with_secrets,
            airlock::testing::test_config(),
        )
    }

    fn build_over(
        config: ServerConfig,
        keyring: Option<Keyring>,
        with_secrets: bool,
        fakes: airlock::Config,
    ) -> Self {
        let secrets_dir = tempfile::tempdir().expect("a temporary dir");
        // Airlock's CA of VMs with secrets goes to the test's dir, not the
        // user's cache.
        let fakes = FakeSetup::with(
            airlock::Config {
                secrets_ca_dir: secrets_dir.path().join("ca"),
                // As `ServerConfig::orchestrator` does, when the test names one.
                node_name: config.node_name.clone().or(fakes.node_name.clone()),
                ..fakes
            },
            &[],
        );
        let secrets = with_secrets.then(|| {
            let config = ServerConfig {
                secrets_file: Some(secrets_dir.path().join("secrets.json")),
                ..ServerConfig::default()
            };
            config
                .secret_store(Some(SECRETS_KEY_HEX))
                .expect("an empty store opens")
                .expect("a key was given")
        });
        let airlock = Airlock::new(fakes.scheduler.clone(), config, keyring, secrets);
        let router = super::router(airlock.clone(), Some(crate::mcp::http_service(&airlock)));
        Self {
            airlock,
            fakes,
            router,
            secrets_dir,
        }
    }

    /// Sends `request` through the router and reads the whole answer.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        self.send_to(&self.router, request).await
    }

    /// Sends `request` through `router` (the E2B listener's, over this
    /// harness's server) and reads the whole answer.
    pub async fn send_to(&self, router: &Router, mut request: Request<Body>) -> Reply {
        // A keyless server checks the Host (DNS rebinding); a client sends
        // one (a test may send its own).
        request
            .headers_mut()
            .entry(header::HOST)
            .or_insert(header::HeaderValue::from_static("127.0.0.1"));
        let response = router
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|e: std::convert::Infallible| match e {});
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(ANSWER_DEADLINE, body.collect())
            .await
            .expect("the answer ends in time")
            .expect("the body reads")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A request with `key` (none when empty), `headers` and a body.
    pub fn request(
        method: Method,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Request<Body> {
        let mut builder = Request::builder().method(method).uri(path);
        if !key.is_empty() {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(body.into()).expect("a valid request")
    }

    /// `GET path`.
    pub async fn get(&self, key: &str, path: &str) -> Reply {
        self.send(Self::request(Method::GET, path, key, &[], Body::empty()))
            .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, key: &str, path: &str) -> Reply {
        self.send(Self::request(Method::DELETE, path, key, &[], Body::empty()))
            .await
    }

    /// `PUT path` with raw bytes.
    pub async fn put(&self, key: &str, path: &str, bytes: &[u8]) -> Reply {
        let headers = [("content-type", "application/octet-stream")];
        self.send(Self::request(
            Method::PUT,
            path,
            key,
            &headers,
            bytes.to_vec(),
        ))
        .await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, key: &str, path: &str, body: &Value) -> Reply {
        self.post_with(key, path, &[], body).await
    }

    /// `POST path` with a JSON body, asking for server-sent events.
    pub async fn post_events(&self, key: &str, path: &str, body: &Value) -> Reply {
        self.post_with(key, path, &[("accept", "text/event-stream")], body)
            .await
    }

    async fn post_with(
        &self,
        key: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Reply {
        let headers: Vec<(&str, &str)> = [("content-type", "application/json")]
            .into_iter()
            .chain(headers.iter().copied())
            .collect();
        self.send(Self::request(
            Method::POST,
            path,
            key,
            &headers,
            body.to_string(),
        ))
        .await
    }

    /// `POST /v1/runs` with `code` in python, the rest of `extra` merged.
    pub async fn run(&self, key: &str, code: &str, extra: Value) -> Reply {
        self.post(key, "/v1/runs", &body("python", code, extra))
            .await
    }

    /// A new python session of `key`'s tenant, by id.
    pub async fn session(&self, key: &str) -> String {
        let reply = self
            .post(key, "/v1/sessions", &json!({"language": "python"}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()["id"]
            .as_str()
            .expect("a session id")
            .to_owned()
    }

    /// Waits until `check` holds (a concurrent request got somewhere).
    pub async fn until(&self, what: &str, check: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + ANSWER_DEADLINE;
        while !check(self) {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The keys of `alice` and `bob`, both with `quotas`.
fn two_tenants(quotas: Quotas) -> Keyring {
    Keyring::new(&two_tenants_file(), quotas)
}

/// The keys file of `alice` and `bob`, without quota overrides.
fn two_tenants_file() -> KeysFile {
    KeysFile {
        keys: [(KEY_A, "alice"), (KEY_B, "bob")]
            .into_iter()
            .map(|(key, tenant)| KeyEntry {
                id: hash_key(key)[..12].to_owned(),
                sha256: hash_key(key),
                tenant: tenant.to_owned(),
                created_unix: 0,
                quotas: QuotaOverrides::default(),
            })
            .collect(),
    }
}

/// `{language, code}` with the fields of `extra` (an object) added.
pub(super) fn body(language: &str, code: &str, extra: Value) -> Value {
    let mut body = json!({"language": language, "code": code});
    if let (Some(map), Value::Object(more)) = (body.as_object_mut(), extra) {
        map.extend(more);
    }
    body
}

/// A whole answer.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts the status, then returns the JSON body.
    pub fn ok(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        self.json()
    }

    /// Asserts the API's error JSON with this status and kind; returns its
    /// message.
    pub fn error(&self, status: u16, kind: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let body = self.json();
        assert_eq!(body["error"]["kind"], kind, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{body}");
        message.to_owned()
    }

    /// The server-sent events: (event name, data as JSON), in order,
    /// after checking each frame is `event:` and `data:` lines ended by a
    /// blank line.
    pub fn events(&self) -> Vec<(String, Value)> {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}: {}",
            self.text()
        );
        sse_frames(&self.text())
            .into_iter()
            .filter_map(|(name, data)| {
                let data = data?;
                let value = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}"));
                Some((name.unwrap_or_default(), value))
            })
            .collect()
    }
}

/// The frames of an SSE body: (event name, data lines joined), comments
/// and keep-alives dropped. Panics on a line that is no SSE field.
pub(super) fn sse_frames(text: &str) -> Vec<(Option<String>, Option<String>)> {
    let mut frames = Vec::new();
    let (mut name, mut data): (Option<String>, Option<String>) = (None, None);
    for line in text.split('\n') {
        if line.is_empty() {
            if name.is_some() || data.is_some() {
                frames.push((name.take(), data.take()));
            }
        } else if line.starts_with(':') {
            continue;
        } else if let Some(value) = line.strip_prefix("event:") {
            name = Some(value.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            data = Some(match data.take() {
                Some(before) => format!("{before}\n{value}"),
                None => value.to_owned(),
            });
        } else if line.starts_with("id:") || line.starts_with("retry:") {
            continue;
        } else {
            panic!("not an SSE line: {line:?} in {text:?}");
        }
    }
    assert!(
        name.is_none() && data.is_none(),
        "the last frame is not ended by a blank line: {text:?}"
    );
    frames
}

/// A JSON-RPC client of `/mcp` for one key: `initialize`, then calls in
/// that MCP session.
pub(super) struct Mcp<'a> {
    harness: &'a Harness,
    key: &'a str,
    session: Option<String>,
    next_id: u64,
    /// Each tool's declared output schema, by name.
    output_schemas: std::collections::BTreeMap<String, Value>,
}

impl<'a> Mcp<'a> {
    /// Initializes an MCP session (and sends `notifications/initialized`).
    pub async fn connect(harness: &'a Harness, key: &'a str) -> Self {
        let mut mcp = Self {
            harness,
            key,
            session: None,
            next_id: 1,
            output_schemas: std::collections::BTreeMap::new(),
        };
        let (reply, answer) = mcp
            .rpc(
                "initialize",
                json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "airlock-tests", "version": "1"}
                }),
            )
            .await;
        assert!(answer["result"]["serverInfo"].is_object(), "{answer}");
        mcp.session = reply
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let note = mcp
            .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert!(note.status.is_success(), "{}", note.text());
        let (_, tools) = mcp.rpc("tools/list", json!({})).await;
        for tool in tools["result"]["tools"].as_array().into_iter().flatten() {
            if let Some(name) = tool["name"].as_str() {
                mcp.output_schemas
                    .insert(name.to_owned(), tool["outputSchema"].clone());
            }
        }
        mcp
    }

    async fn post(&self, message: Value) -> Reply {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        if let Some(session) = &self.session {
            headers.push(("mcp-session-id", session.as_str()));
        }
        self.harness
            .send(Harness::request(
                Method::POST,
                "/mcp",
                self.key,
                &headers,
                message.to_string(),
            ))
            .await
    }

    /// One request: the reply and its JSON-RPC answer (from a JSON body or
    /// the SSE stream's message with the request's id).
    pub async fn rpc(&mut self, method: &str, params: Value) -> (Reply, Value) {
        let id = self.next_id;
        self.next_id += 1;
        let reply = self
            .post(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{method}: {}", reply.text());
        let is_json = reply
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let answer = if is_json {
            reply.json()
        } else {
            sse_frames(&reply.text())
                .into_iter()
                .filter_map(|(_, data)| serde_json::from_str::<Value>(&data?).ok())
                .find(|message| message["id"] == json!(id))
                .unwrap_or_else(|| panic!("no answer to {method}: {}", reply.text()))
        };
        (reply, answer)
    }

    /// `tools/call`: the tool's result (`isError` and its text parsed as
    /// JSON when it is). A success's structured content must be that JSON
    /// and fit the tool's output schema.
    pub async fn call(&mut self, tool: &str, arguments: Value) -> ToolAnswer {
        let (_, answer) = self
            .rpc("tools/call", json!({"name": tool, "arguments": arguments}))
            .await;
        let result = &answer["result"];
        assert!(result.is_object(), "{tool}: {answer}");
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let answer = ToolAnswer {
            is_error: result["isError"].as_bool().unwrap_or(false),
            value: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        };
        if !answer.is_error {
            assert_eq!(result["structuredContent"], answer.value, "{tool}");
            self.assert_fits_output_schema(tool, &answer.value);
        }
        answer
    }

    /// `value` has every field `tool`'s output schema requires and no
    /// other than it names.
    fn assert_fits_output_schema(&self, tool: &str, value: &Value) {
        let schema = &self.output_schemas[tool];
        let properties = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{tool}: no properties in {schema}"));
        let fields = value
            .as_object()
            .unwrap_or_else(|| panic!("{tool}: not an object: {value}"));
        for field in fields.keys() {
            assert!(
                properties.contains_key(field),
                "{tool}: `{field}` not in {schema}"
            );
        }
        for required in schema["required"].as_array().into_iter().flatten() {
            let required = required.as_str().unwrap_or_default();
            assert!(
                fields.contains_key(required),
                "{tool}: `{required}` missing in {value}"
            );
        }
    }

    /// `tools/call` that must succeed: its JSON.
    pub async fn call_ok(&mut self, tool: &str, arguments: Value) -> Value {
        let answer = self.call(tool, arguments).await;
        assert!(!answer.is_error, "{tool}: {}", answer.text);
        answer.value
    }

    /// `tools/call` that must fail as a tool error whose text holds
    /// `needle`.
    pub async fn call_err(&mut self, tool: &str, arguments: Value, needle: &str) {
        let answer = self.call(tool, arguments).await;
        assert!(
            answer.is_error && answer.text.contains(needle),
            "{tool}: {}",
            answer.text
        );
    }

    /// A new python session over MCP, by id.
    pub async fn session(&mut self) -> String {
        let created = self
            .call_ok("create_session", json!({"language": "python"}))
            .await;
        created["id"].as_str().expect("an id").to_owned()
    }
}

/// A tool's answer.
pub(super) struct ToolAnswer {
    pub is_error: bool,
    pub text: String,
    pub value: Value,
}
