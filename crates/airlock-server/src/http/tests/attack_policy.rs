//! The attack cases of the server's policies (`docs/security.md`): a
//! revoked key, another tenant's MCP session, oversized MCP bodies and
//! file transfers, errors that would show host paths, and allowlists
//! wider than the operator allows. Each names the limit that answers it.

use super::{Harness, Mcp, KEY_A, KEY_B};
use crate::config::{FileLimits, ServerConfig};
use crate::keys::{hash_key, KeysFile};
use axum::body::{Body, Bytes};
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// Removes `key` from the harness's keys file (as `airlock serve keys
/// revoke` does).
fn revoke_in_file(h: &Harness, key: &str) {
    let path = h.airlock.config().keys_file.clone().expect("a keys file");
    let mut file = KeysFile::load(&path, false).expect("the keys file reads");
    let id = hash_key(key)[..12].to_owned();
    file.revoke(&id).expect("the key is in the file");
    file.save(&path).expect("the keys file is written");
}

#[tokio::test]
async fn a_key_revoked_in_the_file_gets_401_after_a_reload_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::with_keys_file(dir.path(), ServerConfig::default());
    h.get(KEY_B, "/v1/sessions").await.ok(StatusCode::OK);

    revoke_in_file(&h, KEY_B);
    h.get(KEY_B, "/v1/sessions").await.ok(StatusCode::OK);
    assert_eq!(h.airlock.reload_keys().await.unwrap(), 1);

    h.get(KEY_B, "/v1/sessions")
        .await
        .error(401, "unauthorized");
    h.get(KEY_A, "/v1/sessions").await.ok(StatusCode::OK);
}

#[tokio::test]
async fn with_keys_reload_s_a_changed_keys_file_is_reloaded_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        keys_reload_s: Some(1),
        ..ServerConfig::default()
    };
    let h = Harness::with_keys_file(dir.path(), config);
    let airlock = h.airlock.clone();
    // Owned by the test: aborted at its end.
    let reloader =
        tokio::spawn(async move { crate::server::reload_keys_on_hangup(&airlock).await });
    h.get(KEY_B, "/v1/sessions").await.ok(StatusCode::OK);

    revoke_in_file(&h, KEY_B);

    let mut refused = false;
    for _ in 0..50 {
        if h.get(KEY_B, "/v1/sessions").await.status == StatusCode::UNAUTHORIZED {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reloader.abort();
    assert!(
        refused,
        "the revoked key still worked 5 s after the file changed"
    );
    h.get(KEY_A, "/v1/sessions").await.ok(StatusCode::OK);
}

#[tokio::test]
async fn a_keys_file_made_world_writable_is_not_reloaded_and_the_old_keys_stay() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::with_keys_file(dir.path(), ServerConfig::default());
    revoke_in_file(&h, KEY_B);
    let path = h.airlock.config().keys_file.clone().unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();

    let err = h.airlock.reload_keys().await.unwrap_err().to_string();

    assert!(err.contains("chmod 600"), "{err}");
    h.get(KEY_B, "/v1/sessions").await.ok(StatusCode::OK);
    std::fs::write(&path, "not toml [[").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(h.airlock.reload_keys().await.is_err());
    h.get(KEY_A, "/v1/sessions").await.ok(StatusCode::OK);
}

#[tokio::test]
async fn a_real_sighup_reloads_the_keys_file() {
    use tokio::signal::unix::{signal, SignalKind};
    // Ours first: a SIGHUP raised before the server's handler exists must
    // not kill the test process.
    let _ours = signal(SignalKind::hangup()).expect("handle SIGHUP");
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::with_keys_file(dir.path(), ServerConfig::default());
    let airlock = h.airlock.clone();
    let reloader =
        tokio::spawn(async move { crate::server::reload_keys_on_hangup(&airlock).await });
    revoke_in_file(&h, KEY_B);

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if h.get(KEY_B, "/v1/sessions").await.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP never reloaded the keys"
        );
    }
    reloader.abort();
    h.get(KEY_A, "/v1/sessions").await.ok(StatusCode::OK);
}

/// An `initialize` of `/mcp` with `key` (and `session`, if any).
fn mcp_request(key: &str, session: Option<&str>, message: &Value) -> Request<Body> {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    if let Some(session) = session {
        headers.push(("mcp-session-id", session));
    }
    Harness::request(Method::POST, "/mcp", key, &headers, message.to_string())
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "attack", "version": "1"}
    }})
}

/// The MCP session id `initialize` with `key` made.
async fn mcp_session(h: &Harness, key: &str) -> String {
    let reply = h.send(mcp_request(key, None, &initialize())).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.headers["mcp-session-id"]
        .to_str()
        .expect("an id")
        .to_owned()
}

/// A request body that never ends: a server that reads it never answers.
fn endless_body() -> Body {
    Body::from_stream(tokio_stream::pending::<Result<Bytes, std::io::Error>>())
}

/// The answer to `request`, which must come within 5 s.
async fn answered_at_once(h: &Harness, request: Request<Body>) -> super::Reply {
    tokio::time::timeout(Duration::from_secs(5), h.send(request))
        .await
        .expect("answered without reading the body")
}

fn closes(reply: &super::Reply) -> bool {
    reply
        .headers
        .get(header::CONNECTION)
        .is_some_and(|v| v == "close")
}

#[tokio::test]
async fn another_tenants_mcp_session_id_is_404_as_if_it_did_not_exist() {
    let h = Harness::new();
    let alices = mcp_session(&h, KEY_A).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});

    let bob = h.send(mcp_request(KEY_B, Some(&alices), &list)).await;
    let unknown = h.send(mcp_request(KEY_B, Some("no-such-id"), &list)).await;

    let message = bob.error(404, "session_not_found");
    assert_eq!(
        message.replace(&alices, "ID"),
        unknown
            .error(404, "session_not_found")
            .replace("no-such-id", "ID")
    );
    let alice = h.send(mcp_request(KEY_A, Some(&alices), &list)).await;
    assert_eq!(alice.status, StatusCode::OK, "{}", alice.text());
    let delete = Harness::request(
        Method::DELETE,
        "/mcp",
        KEY_B,
        &[("mcp-session-id", alices.as_str())],
        Body::empty(),
    );
    h.send(delete).await.error(404, "session_not_found");
    let alice = h.send(mcp_request(KEY_A, Some(&alices), &list)).await;
    assert_eq!(alice.status, StatusCode::OK, "bob could not close it");
}

#[tokio::test]
async fn an_mcp_body_over_the_cap_is_413_unread_or_cut_while_streaming() {
    let mut config = ServerConfig::default();
    config.mcp.max_body_bytes = 1024;
    let h = Harness::with_config(config);
    let declared = Harness::request(
        Method::POST,
        "/mcp",
        KEY_A,
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("content-length", "100000000"),
        ],
        endless_body(),
    );
    let reply = answered_at_once(&h, declared).await;
    reply.error(413, "body_too_large");
    assert!(closes(&reply));
    let mut big = initialize();
    big["params"]["clientInfo"]["name"] = json!("x".repeat(4096));
    let streamed = h.send(mcp_request(KEY_A, None, &big)).await;
    assert_eq!(streamed.status, StatusCode::PAYLOAD_TOO_LARGE);
    mcp_session(&h, KEY_A).await;
}

#[tokio::test]
async fn a_tenants_mcp_sessions_are_capped_and_closing_one_frees_a_place() {
    let mut config = ServerConfig::default();
    config.mcp.max_sessions_per_tenant = 2;
    let h = Harness::with_config(config);
    let first = mcp_session(&h, KEY_A).await;
    mcp_session(&h, KEY_A).await;

    let third = h.send(mcp_request(KEY_A, None, &initialize())).await;

    let message = third.error(429, "quota_exceeded");
    assert!(message.contains("mcp_sessions"), "{message}");
    mcp_session(&h, KEY_B).await;
    let close = Harness::request(
        Method::DELETE,
        "/mcp",
        KEY_A,
        &[("mcp-session-id", first.as_str())],
        Body::empty(),
    );
    assert!(h.send(close).await.status.is_success());
    mcp_session(&h, KEY_A).await;
}

/// Alice's session `id` itself, to write what the code would have made.
fn library_session(h: &Harness, id: &str) -> std::sync::Arc<airlock::Session> {
    let caller = h.airlock.authenticate(Some(KEY_A)).unwrap();
    h.airlock.session(&caller, id).unwrap()
}

#[tokio::test]
async fn mcp_read_file_is_capped_and_points_to_rest_which_reads_it() {
    let mut config = ServerConfig::default();
    config.mcp.max_read_file_bytes = 100;
    let h = Harness::with_config(config);
    let id = h.session(KEY_A).await;
    library_session(&h, &id)
        .write_file("big.bin", &[0xff; 1000])
        .await
        .unwrap();
    let mut mcp = Mcp::connect(&h, KEY_A).await;

    mcp.call_err(
        "read_file",
        json!({"session_id": id, "path": "big.bin"}),
        "GET /v1/sessions/",
    )
    .await;

    let rest = h
        .get(KEY_A, &format!("/v1/sessions/{id}/files/big.bin"))
        .await;
    assert_eq!(rest.status, StatusCode::OK);
    assert_eq!(rest.body.len(), 1000);
}

#[tokio::test]
async fn a_session_file_over_the_one_cap_is_refused_both_ways() {
    let config = ServerConfig {
        files: FileLimits { max_bytes: 100 },
        ..ServerConfig::default()
    };
    let h = Harness::with_config(config);
    let id = h.session(KEY_A).await;
    library_session(&h, &id)
        .write_file("made-by-code", &[1; 101])
        .await
        .unwrap();

    let read = h
        .get(KEY_A, &format!("/v1/sessions/{id}/files/made-by-code"))
        .await;
    let written = h
        .put(KEY_A, &format!("/v1/sessions/{id}/files/up"), &[1; 101])
        .await;

    let message = read.error(413, "file_too_large");
    assert!(message.contains("100 bytes"), "{message}");
    written.error(413, "body_too_large");
    h.put(KEY_A, &format!("/v1/sessions/{id}/files/up"), &[1; 100])
        .await
        .ok(StatusCode::OK);
}

fn put_endless(key: &str, path: &str, length: Option<&str>) -> Request<Body> {
    let mut headers = vec![("content-type", "application/octet-stream")];
    if let Some(length) = length {
        headers.push(("content-length", length));
    }
    Harness::request(Method::PUT, path, key, &headers, endless_body())
}

#[tokio::test]
async fn a_put_into_another_tenants_or_no_session_is_404_with_its_body_unread() {
    let h = Harness::new();
    let alices = h.session(KEY_A).await;
    for path in [
        format!("/v1/sessions/{alices}/files/x"),
        "/v1/sessions/nope/files/x".to_owned(),
    ] {
        let reply = answered_at_once(&h, put_endless(KEY_B, &path, None)).await;
        reply.error(404, "session_not_found");
        assert!(closes(&reply), "{path}");
    }
}

#[tokio::test]
async fn a_put_declaring_more_than_the_cap_is_413_with_its_body_unread() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let path = format!("/v1/sessions/{id}/files/x");
    let reply = answered_at_once(&h, put_endless(KEY_A, &path, Some("1000000000000"))).await;
    reply.error(413, "body_too_large");
    assert!(closes(&reply));
}

#[tokio::test]
async fn a_put_into_a_busy_session_is_409_before_its_body_is_read() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let exec = format!("/v1/sessions/{id}/exec");
    let hang = json!({"code": "hang", "timeout_s": 3});
    let hung = h.post(KEY_A, &exec, &hang);
    let put = async {
        let session = library_session(&h, &id);
        h.until("the cell holds the session", |_| {
            session.check_ready().is_err()
        })
        .await;
        answered_at_once(
            &h,
            put_endless(KEY_A, &format!("/v1/sessions/{id}/files/x"), None),
        )
        .await
    };
    let (hung, reply) = tokio::join!(hung, put);
    reply.error(409, "session_busy");
    assert!(closes(&reply));
    assert_eq!(hung.ok(StatusCode::OK)["timed_out"], true);
}

fn dies_with_a_console_tail() -> airlock::BootError {
    airlock::BootError::VmDied {
        vm_id: "vm-9".into(),
        when: "during boot",
        status: None,
        stderr_tail: "qemu: cannot open /run/airlock/vms/vm-9/overlay.qcow2".into(),
        console_tail: "[ 0.2] host secret in the console".into(),
    }
}

#[tokio::test]
async fn a_vm_error_reaches_the_tenant_without_console_tails_or_host_paths() {
    let h = Harness::new();
    h.fakes.cold.fail_next_boot(dies_with_a_console_tail);
    let reply = h.run(KEY_A, "print(1)", json!({})).await;
    let body = reply.json();
    let text = reply.text();
    assert!(reply.status.is_server_error(), "{text}");
    assert!(
        !text.contains("host secret") && !text.contains("/run/airlock"),
        "{text}"
    );
    let id = body["error"]["request_id"].as_str().expect("a request id");
    assert!(
        body["error"]["message"].as_str().unwrap().contains(id),
        "{text}"
    );

    h.fakes.cold.fail_next_boot(dies_with_a_console_tail);
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let answer = mcp.call("run_code", json!({"code": "print(1)"})).await;
    assert!(answer.is_error, "{}", answer.text);
    assert!(
        !answer.text.contains("host secret") && !answer.text.contains("/run/airlock"),
        "{}",
        answer.text
    );
    assert!(answer.text.contains("request id"), "{}", answer.text);
}

fn github_only() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.egress.allowed_patterns = Some(vec!["*.github.com".into(), "pypi.org".into()]);
    config
}

#[tokio::test]
async fn an_allowlist_outside_the_operators_patterns_is_403_for_runs_and_sessions() {
    let h = Harness::with_config(github_only());
    let network = |domains: Value| json!({"network": {"allow_domains": domains}});

    let evil = h
        .run(
            KEY_A,
            "1",
            network(json!(["api.github.com", "evil.example"])),
        )
        .await;
    let session = h
        .post(
            KEY_A,
            "/v1/sessions",
            &json!({"language": "python", "network": {"allow_domains": ["*.pypi.org"]}}),
        )
        .await;

    let message = evil.error(403, "egress_not_allowed");
    assert!(
        message.contains("evil.example") && message.contains("*.github.com"),
        "{message}"
    );
    session.error(403, "egress_not_allowed");
    assert!(h.fakes.cold.acquired().is_empty(), "no VM was started");
    h.run(KEY_A, "1", network(json!(["api.github.com", "pypi.org"])))
        .await
        .ok(StatusCode::OK);
}

#[tokio::test]
async fn a_wildcard_over_a_public_suffix_is_refused_with_or_without_an_operator_policy() {
    for h in [Harness::new(), Harness::with_config(github_only())] {
        for broad in ["*.com", "*", "*.co.uk"] {
            let reply = h
                .run(KEY_A, "1", json!({"network": {"allow_domains": [broad]}}))
                .await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{broad}: {}",
                reply.text()
            );
        }
    }
    let mut config = ServerConfig::default();
    config.egress.allowed_patterns = Some(vec!["*.com".into()]);
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("egress.allowed_patterns") && err.contains("*.com"),
        "{err}"
    );
}

/// A body of `chunks` pieces of `piece` bytes that never ends after them.
fn endless_after(piece: usize, chunks: usize) -> Body {
    let head = tokio_stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(Bytes::from(vec![7u8; piece]))),
    );
    Body::from_stream(tokio_stream::StreamExt::chain(
        head,
        tokio_stream::pending::<Result<Bytes, std::io::Error>>(),
    ))
}

#[tokio::test]
async fn a_put_without_a_length_is_cut_at_the_cap_and_leaves_no_file() {
    let config = ServerConfig {
        files: FileLimits { max_bytes: 1000 },
        ..ServerConfig::default()
    };
    let h = Harness::with_config(config);
    let id = h.session(KEY_A).await;
    let request = Harness::request(
        Method::PUT,
        &format!("/v1/sessions/{id}/files/up"),
        KEY_A,
        &[("content-type", "application/octet-stream")],
        endless_after(600, 4),
    );

    let reply = answered_at_once(&h, request).await;

    reply.error(413, "body_too_large");
    assert!(library_session(&h, &id).read_file("up").await.is_err());
}

#[tokio::test]
async fn a_put_whose_body_breaks_half_way_is_400_and_leaves_no_file() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let broken = tokio_stream::iter([
        Ok(Bytes::from(vec![1u8; 70_000])),
        Err(std::io::Error::other("the client went away")),
    ]);
    let request = Harness::request(
        Method::PUT,
        &format!("/v1/sessions/{id}/files/up"),
        KEY_A,
        &[("content-type", "application/octet-stream")],
        Body::from_stream(broken),
    );

    let reply = answered_at_once(&h, request).await;

    let message = reply.error(400, "invalid_input");
    assert!(
        message.contains("cannot read the body: the client went away"),
        "{message}"
    );
    assert!(library_session(&h, &id).read_file("up").await.is_err());
    // The session is free again.
    h.put(KEY_A, &format!("/v1/sessions/{id}/files/up"), b"ok")
        .await
        .ok(StatusCode::OK);
}

#[tokio::test]
async fn a_file_larger_than_a_chunk_is_streamed_back_with_its_sha256_as_a_trailer() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let content: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let put = h
        .put(KEY_A, &format!("/v1/sessions/{id}/files/big.bin"), &content)
        .await
        .ok(StatusCode::OK);
    let mut request = Harness::request(
        Method::GET,
        &format!("/v1/sessions/{id}/files/big.bin"),
        KEY_A,
        &[],
        Body::empty(),
    );
    request
        .headers_mut()
        .insert(header::HOST, header::HeaderValue::from_static("127.0.0.1"));

    let response = h.router.clone().oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::TRAILER], "x-sha256");
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("a trailer");
    assert_eq!(trailers["x-sha256"], put["sha256"].as_str().unwrap());
    assert!(collected.to_bytes() == content);
}
