//! The E2B listener's router over the fake VMs (`airlock::testing`): the
//! shapes and statuses E2B's SDKs branch on, for each plane, and tenant
//! isolation. What the fakes do with code (`show`, `raise`, `exit N`,
//! echo) is listed in `airlock::testing`.

use crate::config::ServerConfig;
use crate::http::tests::{Harness, Reply, KEY_A, KEY_B};
use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use std::time::Duration;

struct E2bHarness {
    inner: Harness,
    router: Router,
}

/// A sandbox as create answered it.
struct Made {
    id: String,
    token: String,
    traffic: String,
}

impl E2bHarness {
    fn new() -> Self {
        Self::with_config(ServerConfig::default())
    }

    fn with_config(config: ServerConfig) -> Self {
        let inner = Harness::with_config(config);
        let router = super::router(inner.airlock.clone());
        Self { inner, router }
    }

    async fn api(&self, method: Method, key: &str, path: &str, body: Option<Value>) -> Reply {
        let mut builder = Request::builder().method(method).uri(path);
        if !key.is_empty() {
            builder = builder.header("x-api-key", key);
        }
        let body = match body {
            Some(v) => {
                builder = builder.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.inner
            .send_to(&self.router, builder.body(body).unwrap())
            .await
    }

    async fn create(&self, key: &str, body: Value) -> Made {
        let reply = self
            .api(Method::POST, key, "/v2/sandboxes", Some(body))
            .await;
        let made = reply.ok(StatusCode::CREATED);
        for field in ["templateID", "sandboxID", "clientID", "envdVersion"] {
            assert!(made[field].is_string(), "{field}: {made}");
        }
        Made {
            id: made["sandboxID"].as_str().unwrap().to_owned(),
            token: made["envdAccessToken"].as_str().unwrap().to_owned(),
            traffic: made["trafficAccessToken"].as_str().unwrap().to_owned(),
        }
    }

    /// A sandbox-plane request to `port` of `id` with `headers`: a POST
    /// with `body`, a GET when it is empty.
    async fn plane(
        &self,
        id: &str,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let body: Body = body.into();
        let method = if http_body::Body::size_hint(&body).exact() == Some(0) {
            Method::GET
        } else {
            Method::POST
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("e2b-sandbox-id", id)
            .header("e2b-sandbox-port", port.to_string());
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        self.inner
            .send_to(&self.router, builder.body(body).unwrap())
            .await
    }

    async fn execute(&self, made: &Made, code: &str) -> Vec<Value> {
        let reply = self
            .plane(
                &made.id,
                49999,
                "/execute",
                &[
                    ("x-access-token", &made.token),
                    ("content-type", "application/json"),
                ],
                json!({"code": code, "context_id": null, "language": null, "env_vars": null})
                    .to_string(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// A Connect server stream's frames: (flags, JSON).
    async fn start(&self, made: &Made, command: &str) -> Vec<(u8, Value)> {
        let message =
            json!({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", command]}, "stdin": false});
        let reply = self
            .plane(
                &made.id,
                49983,
                "/process.Process/Start",
                &[
                    ("x-access-token", &made.token),
                    ("content-type", "application/connect+json"),
                ],
                super::connect::frame(&message),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        frames(&reply.body)
    }
}

impl E2bHarness {
    /// A unary envd call (Connect JSON); the reply.
    async fn unary(&self, made: &Made, path: &str, message: Value) -> Reply {
        self.plane(
            &made.id,
            49983,
            path,
            &[
                ("x-access-token", &made.token),
                ("content-type", "application/json"),
            ],
            message.to_string(),
        )
        .await
    }

    /// The pids `Process/List` shows.
    async fn pids(&self, made: &Made) -> Vec<u64> {
        let reply = self.unary(made, "/process.Process/List", json!({})).await;
        reply.ok(StatusCode::OK)["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap())
            .collect()
    }

    /// `Process/Connect` to `pid`: the stream's frames.
    async fn connect(&self, made: &Made, pid: u64) -> Vec<(u8, Value)> {
        let reply = self
            .plane(
                &made.id,
                49983,
                "/process.Process/Connect",
                &[
                    ("x-access-token", &made.token),
                    ("content-type", "application/connect+json"),
                ],
                super::connect::frame(&json!({"process": {"pid": pid}})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        frames(&reply.body)
    }
}

fn frames(mut bytes: &[u8]) -> Vec<(u8, Value)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        out.push((
            bytes[0],
            serde_json::from_slice(&bytes[5..5 + len]).unwrap(),
        ));
        bytes = &bytes[5 + len..];
    }
    out
}

#[tokio::test]
async fn create_get_list_and_kill_answer_e2b_s_shapes() {
    let h = E2bHarness::new();
    let made = h
        .create(
            KEY_A,
            json!({"templateID": "code-interpreter-v1", "timeout": 120, "metadata": {"a": "b"}, "envVars": {}}),
        )
        .await;
    let detail = h
        .api(Method::GET, KEY_A, &format!("/sandboxes/{}", made.id), None)
        .await
        .ok(StatusCode::OK);
    for field in [
        "templateID",
        "sandboxID",
        "clientID",
        "startedAt",
        "endAt",
        "envdVersion",
        "cpuCount",
        "memoryMB",
        "diskSizeMB",
        "state",
    ] {
        assert!(!detail[field].is_null(), "{field}: {detail}");
    }
    assert_eq!(detail["state"], "running");
    assert_eq!(detail["metadata"]["a"], "b");
    let list = h
        .api(
            Method::GET,
            KEY_A,
            "/v2/sandboxes?metadata=a%3Db&state=running",
            None,
        )
        .await
        .ok(StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let none = h
        .api(Method::GET, KEY_A, "/v2/sandboxes?metadata=a%3Dc", None)
        .await
        .ok(StatusCode::OK);
    assert_eq!(none, json!([]));
    let gone = h
        .api(
            Method::DELETE,
            KEY_A,
            &format!("/sandboxes/{}", made.id),
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.text());
    let after = h
        .api(Method::GET, KEY_A, &format!("/sandboxes/{}", made.id), None)
        .await;
    assert_eq!(after.ok(StatusCode::NOT_FOUND)["code"], 404);
    // The session went with it.
    h.inner
        .until("the session is closed", |h| h.airlock.sessions().is_empty())
        .await;
}

#[tokio::test]
async fn another_tenant_s_sandbox_is_not_found_on_every_plane() {
    let h = E2bHarness::new();
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    let path = format!("/sandboxes/{}", made.id);
    for (method, path, body) in [
        (Method::GET, path.clone(), None),
        (Method::DELETE, path.clone(), None),
        (
            Method::POST,
            format!("{path}/timeout"),
            Some(json!({"timeout": 60})),
        ),
        (
            Method::POST,
            format!("/v2/sandboxes/{}/connect", made.id),
            Some(json!({})),
        ),
    ] {
        let reply = h.api(method.clone(), KEY_B, &path, body).await;
        let body = reply.ok(StatusCode::NOT_FOUND);
        assert_eq!(body["code"], 404, "{method} {path}: {body}");
    }
    let listed = h
        .api(Method::GET, KEY_B, "/v2/sandboxes", None)
        .await
        .ok(StatusCode::OK);
    assert_eq!(listed, json!([]));
    // Its own key still reaches it.
    h.api(Method::GET, KEY_A, &path, None)
        .await
        .ok(StatusCode::OK);
}

#[tokio::test]
async fn keys_templates_and_unsupported_calls_are_refused_in_e2b_s_shape() {
    let h = E2bHarness::new();
    let missing = h
        .api(
            Method::POST,
            "",
            "/v2/sandboxes",
            Some(json!({"templateID": "base"})),
        )
        .await;
    assert_eq!(missing.ok(StatusCode::UNAUTHORIZED)["code"], 401);
    let unknown = h
        .api(
            Method::POST,
            "e2b_0000",
            "/v2/sandboxes",
            Some(json!({"templateID": "base"})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    let template = h
        .api(
            Method::POST,
            KEY_A,
            "/v2/sandboxes",
            Some(json!({"templateID": "nope"})),
        )
        .await;
    assert_eq!(template.ok(StatusCode::NOT_FOUND)["code"], 404);
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    let snapshot = h
        .api(
            Method::POST,
            KEY_A,
            &format!("/sandboxes/{}/snapshots", made.id),
            Some(json!({})),
        )
        .await;
    let body = snapshot.ok(StatusCode::NOT_IMPLEMENTED);
    assert_eq!(body["code"], 501);
    assert!(
        body["message"].as_str().unwrap().contains("not supported"),
        "{body}"
    );
    assert_eq!(snapshot.headers["should-retry"], "false");
    // A machine that cannot be paused (the fakes have none) is refused in
    // E2B's shape and runs on.
    let pause = h
        .api(
            Method::POST,
            KEY_A,
            &format!("/sandboxes/{}/pause", made.id),
            Some(json!({})),
        )
        .await;
    // (A 409 would tell the SDKs it was paused already.)
    assert_eq!(pause.ok(StatusCode::BAD_REQUEST)["code"], 400);
    let still = h
        .api(Method::GET, KEY_A, &format!("/sandboxes/{}", made.id), None)
        .await
        .ok(StatusCode::OK);
    assert_eq!(still["state"], "running");
    let resume = h
        .api(
            Method::POST,
            KEY_A,
            &format!("/sandboxes/{}/resume", made.id),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        resume.status,
        StatusCode::CONFLICT,
        "a running one: {}",
        resume.text()
    );
    let missing = h
        .api(
            Method::POST,
            KEY_A,
            "/sandboxes/s-nope/resume",
            Some(json!({})),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text());
    let too_long = h
        .api(
            Method::POST,
            KEY_A,
            "/v2/sandboxes",
            Some(json!({"templateID": "base", "timeout": 999_999})),
        )
        .await;
    assert_eq!(too_long.ok(StatusCode::BAD_REQUEST)["code"], 400);
}

#[tokio::test]
async fn auto_pause_is_taken_and_auto_resume_refused() {
    let h = E2bHarness::new();
    let resume = h
        .api(
            Method::POST,
            KEY_A,
            "/v2/sandboxes",
            Some(json!({"templateID": "base", "autoPause": true, "autoResume": {"enabled": true}})),
        )
        .await;
    assert_eq!(resume.ok(StatusCode::BAD_REQUEST)["code"], 400);
    let made = h
        .api(
            Method::POST,
            KEY_A,
            "/v2/sandboxes",
            Some(json!({"templateID": "base", "autoPause": true, "timeout": 1})),
        )
        .await
        .ok(StatusCode::CREATED);
    let id = made["sandboxID"].as_str().unwrap().to_owned();
    // The fakes cannot be paused: at its end it is killed instead.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = h
            .api(Method::GET, KEY_A, &format!("/sandboxes/{id}"), None)
            .await;
        if got.status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_sandbox_ends_at_its_timeout_and_set_timeout_moves_the_end() {
    let h = E2bHarness::new();
    let made = h
        .create(KEY_A, json!({"templateID": "base", "timeout": 1}))
        .await;
    let later = h
        .create(KEY_A, json!({"templateID": "base", "timeout": 1}))
        .await;
    let moved = h
        .api(
            Method::POST,
            KEY_A,
            &format!("/sandboxes/{}/timeout", later.id),
            Some(json!({"timeout": 300})),
        )
        .await;
    assert_eq!(moved.status, StatusCode::NO_CONTENT, "{}", moved.text());
    let path = format!("/sandboxes/{}", made.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = h.api(Method::GET, KEY_A, &path, None).await;
        if reply.status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other one lives on past its first timeout.
    h.api(
        Method::GET,
        KEY_A,
        &format!("/sandboxes/{}", later.id),
        None,
    )
    .await
    .ok(StatusCode::OK);
    let gone = h
        .plane(&made.id, 49983, "/health", &[], Body::empty())
        .await;
    assert_eq!(gone.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn sandbox_planes_need_the_sandbox_s_token_and_a_live_sandbox() {
    let h = E2bHarness::new();
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    let unknown = h
        .plane(
            "s-nope",
            49983,
            "/filesystem.Filesystem/ListDir",
            &[("x-access-token", &made.token)],
            "{}",
        )
        .await;
    let body = unknown.ok(StatusCode::BAD_GATEWAY);
    assert!(
        body["message"].as_str().unwrap().contains("was not found"),
        "{body}"
    );
    assert_eq!(body["sandboxId"], "s-nope");
    let wrong = h
        .plane(
            &made.id,
            49983,
            "/filesystem.Filesystem/ListDir",
            &[("x-access-token", "ea_wrong")],
            "{}",
        )
        .await;
    assert_eq!(
        wrong.ok(StatusCode::UNAUTHORIZED)["code"],
        "unauthenticated"
    );
    let no_port = h
        .plane(&made.id, 8080, "/", &[("x-access-token", &made.token)], "")
        .await;
    assert_eq!(no_port.status, StatusCode::BAD_GATEWAY);
    // `/contexts` carry only the traffic token.
    let contexts = h
        .plane(
            &made.id,
            49999,
            "/contexts",
            &[("e2b-traffic-access-token", &made.traffic)],
            "",
        )
        .await;
    assert_eq!(contexts.ok(StatusCode::OK)[0]["language"], "bash");
    let health = h
        .plane(&made.id, 49983, "/health", &[], Body::empty())
        .await;
    assert_eq!(health.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn execute_streams_e2b_s_lines_and_counts_executions() {
    let h = E2bHarness::new();
    let made = h
        .create(KEY_A, json!({"templateID": "code-interpreter-v1"}))
        .await;
    let first = h.execute(&made, "show 2").await;
    assert_eq!(first[0]["type"], "result", "{first:?}");
    assert_eq!(first[0]["text"], "2");
    assert_eq!(first[0]["is_main_result"], true);
    let count = first
        .iter()
        .find(|l| l["type"] == "number_of_executions")
        .unwrap();
    assert_eq!(count["execution_count"], 1);
    assert_eq!(first.last().unwrap()["type"], "end_of_execution");
    let second = h.execute(&made, "hello").await;
    assert_eq!(second[0]["type"], "stdout");
    assert!(second[0]["timestamp"].is_string());
    let count = second
        .iter()
        .find(|l| l["type"] == "number_of_executions")
        .unwrap();
    assert_eq!(count["execution_count"], 2);
    let error = h.execute(&made, "raise NameError nope").await;
    let error = error.iter().find(|l| l["type"] == "error").unwrap();
    assert_eq!(error["name"], "NameError");
    assert_eq!(error["value"], "nope");
    assert!(error["traceback"].is_string());
}

#[tokio::test]
async fn contexts_are_one_per_language() {
    let h = E2bHarness::new();
    let made = h
        .create(KEY_A, json!({"templateID": "code-interpreter-v1"}))
        .await;
    let headers = [("e2b-traffic-access-token", made.traffic.as_str())];
    let list = h.plane(&made.id, 49999, "/contexts", &headers, "").await;
    // GET is the list; POST makes one.
    assert_eq!(list.status, StatusCode::OK);
    let bash = h
        .plane(
            &made.id,
            49999,
            "/contexts",
            &headers,
            json!({"language": "bash"}).to_string(),
        )
        .await
        .ok(StatusCode::OK);
    assert_eq!(
        bash,
        json!({"id": "bash", "language": "bash", "cwd": "/home/user"})
    );
    let again = h
        .plane(
            &made.id,
            49999,
            "/contexts",
            &headers,
            json!({"language": "python"}).to_string(),
        )
        .await;
    assert_eq!(
        again.status,
        StatusCode::NOT_IMPLEMENTED,
        "{}",
        again.text()
    );
}

#[tokio::test]
async fn restart_and_delete_end_a_context_s_interpreter_and_delete_forgets_a_made_one() {
    let h = E2bHarness::new();
    let made = h
        .create(KEY_A, json!({"templateID": "code-interpreter-v1"}))
        .await;
    let token = [("e2b-traffic-access-token", made.traffic.as_str())];
    h.plane(
        &made.id,
        49999,
        "/contexts",
        &token,
        json!({"language": "bash"}).to_string(),
    )
    .await
    .ok(StatusCode::OK);
    let call = |method: Method, path: String| {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("e2b-sandbox-id", &made.id)
            .header("e2b-sandbox-port", "49999")
            .header("e2b-traffic-access-token", &made.traffic)
            .body(Body::empty())
            .unwrap();
        h.inner.send_to(&h.router, request)
    };
    let restarted = call(Method::POST, "/contexts/python/restart".into()).await;
    assert_eq!(
        restarted.status,
        StatusCode::NO_CONTENT,
        "{}",
        restarted.text()
    );
    let deleted = call(Method::DELETE, "/contexts/bash".into()).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text());
    let unknown = call(Method::DELETE, "/contexts/ruby".into()).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text());
    let list = h.plane(&made.id, 49999, "/contexts", &token, "").await;
    let ids: Vec<Value> = list
        .ok(StatusCode::OK)
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("python")], "bash is forgotten");
    let resets = [
        h.inner.fakes.cold.resets(),
        h.inner.fakes.template.resets(),
        h.inner.fakes.pool.resets(),
    ]
    .concat();
    assert_eq!(
        resets,
        vec![
            airlock_protocol::Language::Python,
            airlock_protocol::Language::Raw
        ]
    );
}

#[tokio::test]
async fn a_command_streams_start_data_end_and_the_end_of_stream() {
    let h = E2bHarness::new();
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    let frames = h.start(&made, "hi").await;
    assert_eq!(frames[0].1["event"]["start"]["pid"], 1000, "{frames:?}");
    let data = &frames[1].1["event"]["data"]["stdout"];
    assert_eq!(data, "aGk=", "{frames:?}");
    let end = &frames[frames.len() - 2].1["event"]["end"];
    assert_eq!(end["exited"], true, "{frames:?}");
    assert!(
        end.get("exitCode").is_none(),
        "an exit code of 0 is left out: {end}"
    );
    assert_eq!(frames.last().unwrap(), &(2, json!({})));
    let failed = h.start(&made, "exit 3").await;
    let end = &failed[failed.len() - 2].1["event"]["end"];
    assert_eq!(end["exitCode"], 3);
}

#[tokio::test]
async fn a_background_command_runs_beside_cells_and_commands_and_connect_follows_it_to_its_signal()
{
    // Arrange: a command that runs until it is stopped.
    let h = E2bHarness::new();
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    let background = h.start(&made, "hang");
    let others = async {
        let pid = loop {
            if let Some(pid) = h.pids(&made).await.first() {
                break *pid;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // Act: a cell and another command while it runs, then a second
        // client follows it while it is stopped.
        let cell = h.execute(&made, "show 2").await;
        let quick = h.start(&made, "hi").await;
        let follow = h.connect(&made, pid);
        let stop = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let stopped = h
                .unary(
                    &made,
                    "/process.Process/SendSignal",
                    json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
                )
                .await;
            assert_eq!(stopped.status, StatusCode::OK, "{}", stopped.text());
        };
        let (followed, ()) = tokio::join!(follow, stop);
        let missing = h
            .unary(
                &made,
                "/process.Process/SendSignal",
                json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
            )
            .await;
        (pid, cell, quick, followed, missing, h.pids(&made).await)
    };
    let (started, (pid, cell, quick, followed, missing, left)) =
        tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(background, others)
        })
        .await
        .expect("nothing waits for the background command");

    // Assert: the cell and the command ran to their ends meanwhile; both
    // streams of the stopped command end as a kill; it is gone after.
    assert!(
        cell.iter()
            .any(|l| l["type"] == "result" && l["text"] == "2"),
        "{cell:?}"
    );
    let quick_end = &quick[quick.len() - 2].1["event"]["end"];
    assert_eq!(quick_end["exited"], true, "{quick:?}");
    assert_eq!(started[0].1["event"]["start"]["pid"], pid);
    for frames in [&started, &followed] {
        let end = &frames[frames.len() - 2].1["event"]["end"];
        assert_eq!(end["exitCode"], -1, "{frames:?}");
        assert_eq!(end["status"], "signal: killed", "{frames:?}");
    }
    assert_eq!(followed[0].1["event"]["start"]["pid"], pid, "{followed:?}");
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text());
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_command_started_with_stdin_reads_send_input_until_close_stdin() {
    // Arrange: the fake VM's piped process echoes its stdin.
    let h = E2bHarness::new();
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    let message =
        json!({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "cat"]}, "stdin": true});
    let headers = [
        ("x-access-token", made.token.as_str()),
        ("content-type", "application/connect+json"),
    ];
    let started = h.plane(
        &made.id,
        49983,
        "/process.Process/Start",
        &headers,
        super::connect::frame(&message),
    );
    let feed = async {
        let pid = loop {
            if let Some(pid) = h.pids(&made).await.first() {
                break *pid;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // Act
        let sent = h
            .unary(
                &made,
                "/process.Process/SendInput",
                json!({"process": {"pid": pid}, "input": {"stdin": "aGVsbG8K"}}),
            )
            .await;
        let closed = h
            .unary(
                &made,
                "/process.Process/CloseStdin",
                json!({"process": {"pid": pid}}),
            )
            .await;
        let again = h
            .unary(
                &made,
                "/process.Process/CloseStdin",
                json!({"process": {"pid": pid}}),
            )
            .await;
        (sent, closed, again)
    };
    let (started, (sent, closed, again)) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(started, feed)
    })
    .await
    .unwrap();

    // Assert: what was sent came back, and the close ended it.
    assert_eq!(sent.status, StatusCode::OK, "{}", sent.text());
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.text());
    assert_ne!(
        again.status,
        StatusCode::OK,
        "a second close: {}",
        again.text()
    );
    let frames = frames(&started.body);
    assert_eq!(
        frames[1].1["event"]["data"]["stdout"], "aGVsbG8K",
        "{frames:?}"
    );
    assert_eq!(frames[frames.len() - 2].1["event"]["end"]["exited"], true);
    // A command without stdin takes none.
    let plain = h.start(&made, "hi").await;
    assert_eq!(plain[0].1["event"]["start"]["pid"], 1001, "{plain:?}");
}

#[tokio::test]
async fn input_to_a_command_without_stdin_is_refused() {
    let h = E2bHarness::new();
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    let background = h.start(&made, "hang");
    let probe = async {
        let pid = loop {
            if let Some(pid) = h.pids(&made).await.first() {
                break *pid;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let sent = h
            .unary(
                &made,
                "/process.Process/SendInput",
                json!({"process": {"pid": pid}, "input": {"stdin": "eA=="}}),
            )
            .await;
        let missing = h
            .unary(
                &made,
                "/process.Process/SendInput",
                json!({"process": {"pid": 4242}, "input": {"stdin": "eA=="}}),
            )
            .await;
        h.unary(
            &made,
            "/process.Process/SendSignal",
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await;
        (sent, missing)
    };
    let (_, (sent, missing)) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(background, probe)
    })
    .await
    .unwrap();
    assert!(
        sent.text().contains("failed_precondition"),
        "{}",
        sent.text()
    );
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text());
}

#[tokio::test]
async fn a_command_whose_sandbox_is_killed_ends_unavailable_not_not_found() {
    let h = E2bHarness::new();
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    let running = h.start(&made, "hang");
    let kill = async {
        while h.pids(&made).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let gone = h
            .api(
                Method::DELETE,
                KEY_A,
                &format!("/sandboxes/{}", made.id),
                None,
            )
            .await;
        assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.text());
    };
    let (frames, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(running, kill)
    })
    .await
    .unwrap();
    let (flags, end) = frames.last().unwrap();
    assert_eq!(*flags, 2, "{frames:?}");
    assert_eq!(end["error"]["code"], "unavailable", "{frames:?}");
}

#[tokio::test]
async fn connect_to_a_process_that_is_not_running_is_not_found() {
    let h = E2bHarness::new();
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    let reply = h
        .plane(
            &made.id,
            49983,
            "/process.Process/Connect",
            &[
                ("x-access-token", &made.token),
                ("content-type", "application/connect+json"),
            ],
            super::connect::frame(&json!({"process": {"pid": 4242}})),
        )
        .await;
    let frames = frames(&reply.body);
    let (flags, end) = frames.last().unwrap();
    assert_eq!(*flags, 2, "{frames:?}");
    assert_eq!(end["error"]["code"], "not_found", "{frames:?}");
}

#[tokio::test]
async fn files_go_in_as_multipart_and_come_back_whole() {
    let h = E2bHarness::new();
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    let body = "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/a.txt\"\r\n\r\nhello\r\n--B--\r\n";
    let written = h
        .upload(&made, "?path=%2Fhome%2Fuser%2Fa.txt", body)
        .await
        .ok(StatusCode::OK);
    assert_eq!(
        written,
        json!([{"name": "a.txt", "type": "file", "path": "/home/user/a.txt"}])
    );
    let request = Request::builder()
        .method(Method::GET)
        .uri("/files?path=%2Fhome%2Fuser%2Fa.txt")
        .header("e2b-sandbox-id", &made.id)
        .header("e2b-sandbox-port", "49983")
        .header("x-access-token", &made.token)
        .body(Body::empty())
        .unwrap();
    let read = h.inner.send_to(&h.router, request).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.text(), "hello");
    let request = Request::builder()
        .method(Method::GET)
        .uri("/files?path=%2Fhome%2Fuser%2Fnope.txt")
        .header("e2b-sandbox-id", &made.id)
        .header("e2b-sandbox-port", "49983")
        .header("x-access-token", &made.token)
        .body(Body::empty())
        .unwrap();
    let missing = h.inner.send_to(&h.router, request).await;
    assert_eq!(missing.ok(StatusCode::NOT_FOUND)["code"], 404);
}

impl E2bHarness {
    /// A multipart upload of `body` (boundary `B`) to `/files` with
    /// `query`.
    async fn upload(&self, made: &Made, query: &str, body: impl Into<Body>) -> Reply {
        self.plane(
            &made.id,
            49983,
            &format!("/files{query}"),
            &[
                ("x-access-token", &made.token),
                ("content-type", "multipart/form-data; boundary=B"),
            ],
            body,
        )
        .await
    }

    /// `/files` download of `path` (URL-encoded).
    async fn download(&self, made: &Made, path: &str) -> Reply {
        let request = Request::builder()
            .method(Method::GET)
            .uri(format!("/files?path={path}"))
            .header("e2b-sandbox-id", &made.id)
            .header("e2b-sandbox-port", "49983")
            .header("x-access-token", &made.token)
            .body(Body::empty())
            .unwrap();
        self.inner.send_to(&self.router, request).await
    }
}

#[tokio::test]
async fn several_files_stream_in_one_upload_each_to_its_filename() {
    let h = E2bHarness::new();
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    let body = "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/one.txt\"\r\n\r\nfirst\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/d/two.txt\"\r\nContent-Type: application/octet-stream\r\n\r\nsecond\nline\r\n--B--\r\n";
    let written = h.upload(&made, "", body).await.ok(StatusCode::OK);
    assert_eq!(
        written,
        json!([
            {"name": "one.txt", "type": "file", "path": "/home/user/one.txt"},
            {"name": "two.txt", "type": "file", "path": "/home/user/d/two.txt"},
        ])
    );
    assert_eq!(
        h.download(&made, "%2Fhome%2Fuser%2Fone.txt").await.text(),
        "first"
    );
    assert_eq!(
        h.download(&made, "%2Fhome%2Fuser%2Fd%2Ftwo.txt")
            .await
            .text(),
        "second\nline"
    );
}

#[tokio::test]
async fn an_upload_of_endless_part_headers_is_refused_not_held() {
    let h = E2bHarness::new();
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    // 4 MiB of "headers" that never end: multer would hold them all.
    let mut body =
        b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/h.txt\"\r\n"
            .to_vec();
    while body.len() < 4 << 20 {
        body.extend_from_slice(
            b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    let reply = h.upload(&made, "", body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
}

#[tokio::test]
async fn a_large_upload_in_many_chunks_goes_through_whole() {
    let h = E2bHarness::new();
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut body = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/big.bin\"\r\n\r\n".to_vec();
    body.extend_from_slice(&data);
    body.extend_from_slice(b"\r\n--B--\r\n");
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(16 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let streamed = Body::from_stream(tokio_stream::iter(chunks));
    let reply = h.upload(&made, "", streamed).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let back = h.download(&made, "%2Fhome%2Fuser%2Fbig.bin").await;
    assert_eq!(back.status, StatusCode::OK);
    assert!(back.body[..] == data[..], "the file came back whole");
}

#[tokio::test]
async fn a_broken_or_empty_upload_is_refused_with_400() {
    let h = E2bHarness::new();
    let made = h.create(KEY_A, json!({"templateID": "base"})).await;
    // Cut before its closing boundary.
    let cut = "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/c.txt\"\r\n\r\nno end";
    let reply = h.upload(&made, "", cut).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(
        h.download(&made, "%2Fhome%2Fuser%2Fc.txt").await.status,
        StatusCode::NOT_FOUND,
        "a cut part leaves no file"
    );
    let empty = h.upload(&made, "", "--B--\r\n").await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST, "{}", empty.text());
    let nameless = "--B\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--B--\r\n";
    let reply = h.upload(&made, "", nameless).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    // With a path, a nameless single part goes there.
    let reply = h
        .upload(&made, "?path=%2Fhome%2Fuser%2Fn.txt", nameless)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        h.download(&made, "%2Fhome%2Fuser%2Fn.txt").await.text(),
        "x"
    );
}

#[tokio::test]
async fn the_e2b_routes_are_in_the_request_metrics_by_plane() {
    let h = E2bHarness::new();
    h.create(KEY_A, json!({"templateID": "base"})).await;
    let rendered = h.inner.airlock.metrics().render();
    assert!(rendered.contains("e2b-api /v2/sandboxes"), "{rendered}");
}

#[tokio::test]
async fn a_keyless_server_takes_any_key_on_loopback_only() {
    let inner = Harness::keyless();
    let h = E2bHarness {
        router: super::router(inner.airlock.clone()),
        inner,
    };
    let made = h
        .create("e2b_anything", json!({"templateID": "base"}))
        .await;
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("/sandboxes/{}", made.id))
        .header("host", "evil.example")
        .header("x-api-key", "e2b_anything")
        .body(Body::empty())
        .unwrap();
    let rebound = h.inner.send_to(&h.router, request).await;
    assert_eq!(rebound.ok(StatusCode::FORBIDDEN)["code"], 403);
}

#[tokio::test]
async fn a_list_pages_by_the_next_token_header() {
    let h = E2bHarness::new();
    for _ in 0..3 {
        h.create(KEY_A, json!({"templateID": "base"})).await;
    }
    let first = h
        .api(Method::GET, KEY_A, "/v2/sandboxes?limit=2", None)
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json().as_array().unwrap().len(), 2);
    let token = first.headers["x-next-token"].to_str().unwrap().to_owned();
    let last = h
        .api(
            Method::GET,
            KEY_A,
            &format!("/v2/sandboxes?limit=2&nextToken={token}"),
            None,
        )
        .await;
    assert_eq!(last.json().as_array().unwrap().len(), 1);
    assert!(last.headers.get("x-next-token").is_none());
    let paused = h
        .api(Method::GET, KEY_A, "/v2/sandboxes?state=paused", None)
        .await
        .ok(StatusCode::OK);
    assert_eq!(paused, json!([]));
}

#[tokio::test]
async fn a_list_is_newest_first_unless_asked_and_filters_by_start_time() {
    let h = E2bHarness::new();
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(h.create(KEY_A, json!({"templateID": "base"})).await.id);
        // Distinct start times, to the microsecond E2B shows.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ids = |reply: Reply| -> Vec<String> {
        reply
            .ok(StatusCode::OK)
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sandboxID"].as_str().unwrap().to_owned())
            .collect()
    };
    let newest: Vec<String> = made.iter().rev().cloned().collect();
    assert_eq!(
        ids(h.api(Method::GET, KEY_A, "/v2/sandboxes", None).await),
        newest
    );
    assert_eq!(
        ids(h
            .api(Method::GET, KEY_A, "/v2/sandboxes?order=desc&limit=1", None)
            .await),
        newest[..1].to_vec()
    );
    assert_eq!(
        ids(h
            .api(Method::GET, KEY_A, "/v2/sandboxes?order=asc", None)
            .await),
        made
    );
    let later = h
        .api(
            Method::GET,
            KEY_A,
            "/v2/sandboxes?startedAfter=2030-01-01T00%3A00%3A00%2B00%3A00",
            None,
        )
        .await;
    assert!(ids(later).is_empty());
    let naive = h
        .api(
            Method::GET,
            KEY_A,
            "/v2/sandboxes?startedAfter=2020-01-01T00%3A00%3A00.5",
            None,
        )
        .await;
    assert_eq!(ids(naive).len(), 3, "a time without an offset is UTC");
    let bad = h
        .api(Method::GET, KEY_A, "/v2/sandboxes?order=sideways", None)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = h
        .api(
            Method::GET,
            KEY_A,
            "/v2/sandboxes?startedAfter=yesterday",
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[test]
fn a_host_names_a_sandbox_and_port_under_the_domain_only() {
    let of = super::sandbox_of_host;
    let d = "sandboxes.test";
    assert_eq!(
        of("49999-s-ab12.sandboxes.test", d),
        Some((49999, "s-ab12".into()))
    );
    assert_eq!(
        of("49983-S-AB12.Sandboxes.Test:8443", d),
        Some((49983, "s-ab12".into()))
    );
    assert_eq!(
        of("49983-s-ab12.sandboxes.test.", d),
        Some((49983, "s-ab12".into()))
    );
    for other in [
        "api.sandboxes.test",
        "sandboxes.test",
        "49999-s-ab12.other.test",
        "49999-s-ab12.evilsandboxes.test",
        "x-s-ab12.sandboxes.test",
        "99999-s-ab12.sandboxes.test",
        "49999-.sandboxes.test",
        "49999-s_ab.sandboxes.test",
        "a.49999-s-ab12.sandboxes.test",
    ] {
        assert_eq!(of(other, d), None, "{other}");
    }
}

#[tokio::test]
async fn with_a_domain_the_host_routes_to_the_sandbox_and_api_to_the_control_plane() {
    let mut config = ServerConfig::default();
    config.e2b.domain = Some("sandboxes.test".into());
    let h = E2bHarness::with_config(config);
    let made = h
        .create(KEY_A, json!({"templateID": "code-interpreter-v1"}))
        .await;
    let by_host = |host: String, path: &str, body: String| {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", host)
            .header("x-access-token", &made.token)
            .header("content-type", "application/json");
        if path.starts_with("/v2") {
            builder = builder.header("x-api-key", KEY_A);
        }
        builder.body(Body::from(body)).unwrap()
    };
    let cell = json!({"code": "show 2", "context_id": null, "language": null, "env_vars": null});
    let reply = h
        .inner
        .send_to(
            &h.router,
            by_host(
                format!("49999-{}.sandboxes.test", made.id),
                "/execute",
                cell.to_string(),
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.text().contains("\"text\":\"2\""), "{}", reply.text());
    // Another port of the sandbox: E2B's "not reachable" answer.
    let closed = h
        .inner
        .send_to(
            &h.router,
            by_host(
                format!("8080-{}.sandboxes.test", made.id),
                "/",
                String::new(),
            ),
        )
        .await;
    assert_eq!(closed.status, StatusCode::BAD_GATEWAY, "{}", closed.text());
    // api.<domain> is the control plane.
    let api = h
        .inner
        .send_to(
            &h.router,
            by_host(
                "api.sandboxes.test".into(),
                "/v2/sandboxes",
                json!({"templateID": "base"}).to_string(),
            ),
        )
        .await;
    assert_eq!(api.status, StatusCode::CREATED, "{}", api.text());
}

#[tokio::test]
async fn without_a_domain_a_sandbox_host_is_the_control_plane() {
    let h = E2bHarness::new();
    let made = h
        .create(KEY_A, json!({"templateID": "code-interpreter-v1"}))
        .await;
    let request = Request::builder()
        .method(Method::POST)
        .uri("/execute")
        .header("host", format!("49999-{}.sandboxes.test", made.id))
        .header("x-api-key", KEY_A)
        .header("content-type", "application/json")
        .body(Body::from("{\"code\": \"show 2\"}"))
        .unwrap();
    let reply = h.inner.send_to(&h.router, request).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
}
