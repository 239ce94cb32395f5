//! The server's attack cases that need no VM: what a client without a
//! key, a client that never reads, or a web page can try, against the
//! listener `airlock serve` runs (real sockets on 127.0.0.1, the router
//! over fakes) or against the router itself. Each case names the limit
//! that answers it (`docs/security.md`).

use super::{body, Harness, KEY_A, NO_KEY};
use crate::config::{ListenerConfig, ServerConfig, StreamLimits};
use crate::listener;
use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tower::ServiceExt;

/// A listener serving a harness's router on 127.0.0.1, stopped (and its
/// connections ended) when dropped.
struct Served {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Served {
    async fn start(h: &Harness, limits: ListenerConfig) -> Self {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = tcp.local_addr().expect("its address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(listener::serve(
            tcp,
            h.router.clone(),
            limits,
            h.airlock.metrics().clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// A connection from `source` (a loopback address).
    async fn connect_from(&self, source: &str) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket
            .bind(format!("{source}:0").parse().expect("an address"))
            .expect("bind the source");
        socket.connect(self.addr).await.expect("connect")
    }

    async fn connect(&self) -> TcpStream {
        self.connect_from("127.0.0.1").await
    }
}

/// Short deadlines for the cases.
fn fast() -> ListenerConfig {
    ListenerConfig {
        header_read_timeout_s: 1,
        idle_timeout_s: 2,
        request_body_timeout_s: 1,
        ..ListenerConfig::default()
    }
}

/// Reads until the server closes; the bytes, and how long it took.
async fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the server closes within 10 s");
        match read {
            Ok(0) | Err(_) => return (out, started.elapsed()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A counter of the metrics text, 0 when absent.
fn counter(h: &Harness, line_start: &str) -> u64 {
    h.airlock
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The SSE frames of a streamed answer read to its end, each frame
/// within 20 s (`what` says what the wait is for).
async fn read_frames(mut body: Body, what: &str) -> Vec<(Option<String>, Option<String>)> {
    let mut text = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .unwrap_or_else(|_| panic!("{what}"))
    {
        if let Ok(data) = frame.expect("a frame").into_data() {
            text.extend_from_slice(&data);
        }
    }
    super::sse_frames(&String::from_utf8(text).unwrap())
}

const HEALTH: &[u8] = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_deadline() {
    let h = Harness::new();
    let served = Served::start(&h, fast()).await;
    let mut idle = served.connect().await;
    let (bytes, after) = read_to_close(&mut idle).await;
    assert!(bytes.is_empty(), "no answer to nothing");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(4),
        "{after:?}"
    );
    assert_eq!(
        counter(
            &h,
            "airlock_connections_closed_total{kind=\"header_timeout\"}"
        ),
        1
    );
}

#[tokio::test]
async fn a_head_that_trickles_is_cut_at_the_header_deadline() {
    let h = Harness::new();
    let served = Served::start(&h, fast()).await;
    let mut slow = served.connect().await;
    let started = Instant::now();
    slow.write_all(b"GET /v1/health HTTP/1.1\r\n")
        .await
        .unwrap();
    // One byte of a header every 100 ms: bytes keep coming, the head never
    // ends.
    let mut closed_after = None;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.write_all(b"X").await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let after = closed_after.expect("the trickling head is cut");
    assert!(after < Duration::from_secs(3), "{after:?}");
    assert_eq!(
        counter(
            &h,
            "airlock_connections_closed_total{kind=\"header_timeout\"}"
        ),
        1
    );
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let h = Harness::new();
    let served = Served::start(&h, fast()).await;
    let mut conn = served.connect().await;
    conn.write_all(HEALTH).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    // Past the header deadline (1 s) but within the idle one (2 s): still
    // open, and serves a second request.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    conn.write_all(HEALTH).await.unwrap();
    let n = conn.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let (rest, after) = read_to_close(&mut conn).await;
    assert!(rest.is_empty());
    assert!(
        after >= Duration::from_millis(1800) && after < Duration::from_secs(5),
        "{after:?}"
    );
    assert_eq!(
        counter(
            &h,
            "airlock_connections_closed_total{kind=\"idle_timeout\"}"
        ),
        1
    );
}

#[tokio::test]
async fn a_big_body_without_a_key_is_answered_401_at_once_and_never_read() {
    let h = Harness::new();
    let served = Served::start(&h, fast()).await;
    let mut conn = served.connect().await;
    // The head announces 8 MiB; not one byte of it is sent.
    conn.write_all(
        b"POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 8388608\r\n\r\n",
    )
    .await
    .unwrap();
    let (answer, after) = read_to_close(&mut conn).await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("unauthorized"), "{answer}");
    assert!(
        after < Duration::from_millis(900),
        "answered before any deadline: {after:?}"
    );
    assert_eq!(h.fakes.cold.acquired().len(), 0);
}

#[tokio::test]
async fn a_small_body_without_a_key_is_read_so_its_client_gets_the_401() {
    let h = Harness::new();
    let served = Served::start(&h, fast()).await;
    let mut conn = served.connect().await;
    let body = format!("{{\"code\": \"{}\"}}", "x".repeat(40_000));
    let head = format!(
        "POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // The body follows after a pause: the answer waits for it (a body the
    // server never read would be reset under the client when it closes).
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.write_all(body.as_bytes()).await.unwrap();

    let (answer, _) = read_to_close(&mut conn).await;

    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(h.fakes.cold.acquired().len(), 0);
}

#[tokio::test]
async fn a_refusal_at_the_router_says_connection_close() {
    let h = Harness::new();
    let reply = h.run(NO_KEY, "print(1)", json!({})).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.headers[header::CONNECTION], "close");
}

#[tokio::test]
async fn connections_past_the_per_address_and_global_caps_are_closed_at_once() {
    let h = Harness::new();
    let limits = ListenerConfig {
        max_connections: 3,
        max_connections_per_address: 2,
        ..fast()
    };
    let served = Served::start(
        &h,
        ListenerConfig {
            header_read_timeout_s: 30,
            idle_timeout_s: 30,
            ..limits
        },
    )
    .await;
    let mut held = vec![
        served.connect_from("127.0.0.1").await,
        served.connect_from("127.0.0.1").await,
    ];
    h.until("two connections open", |h| {
        h.airlock.metrics().connections_open.get() == 2
    })
    .await;
    let mut third = served.connect_from("127.0.0.1").await;
    let (bytes, after) = read_to_close(&mut third).await;
    assert!(
        bytes.is_empty() && after < Duration::from_secs(1),
        "{after:?}"
    );
    assert_eq!(
        counter(
            &h,
            "airlock_connections_refused_total{kind=\"max_connections_per_address\"}"
        ),
        1
    );
    // Another address still gets in, up to the global cap.
    held.push(served.connect_from("127.0.0.2").await);
    h.until("three connections open", |h| {
        h.airlock.metrics().connections_open.get() == 3
    })
    .await;
    let mut fourth = served.connect_from("127.0.0.3").await;
    let (bytes, _) = read_to_close(&mut fourth).await;
    assert!(bytes.is_empty());
    assert_eq!(
        counter(
            &h,
            "airlock_connections_refused_total{kind=\"max_connections\"}"
        ),
        1
    );
    // A held connection still works; closing one frees its slot.
    held[0].write_all(HEALTH).await.unwrap();
    let mut buf = [0u8; 512];
    let n = held[0].read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    held.remove(1);
    h.until("the slot is back", |h| {
        h.airlock.metrics().connections_open.get() == 2
    })
    .await;
    let mut again = served.connect_from("127.0.0.1").await;
    again.write_all(HEALTH).await.unwrap();
    let n = again.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_cut_at_the_body_deadline() {
    let h = Harness::new();
    let served = Served::start(&h, fast()).await;
    let mut conn = served.connect().await;
    let head = format!(
        "POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY_A}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"language\""
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let (answer, after) = read_to_close(&mut conn).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("request_body_timeout_s"), "{answer}");
    assert!(after < Duration::from_secs(4), "{after:?}");
    assert_eq!(
        counter(
            &h,
            "airlock_connections_closed_total{kind=\"request_body_timeout\"}"
        ),
        1
    );
    assert_eq!(h.fakes.cold.acquired().len(), 0);
}

#[tokio::test]
async fn stopping_ends_idle_connections_and_lets_a_running_request_finish() {
    let h = Harness::new();
    let mut served = Served::start(
        &h,
        ListenerConfig {
            idle_timeout_s: 30,
            header_read_timeout_s: 30,
            ..fast()
        },
    )
    .await;
    let mut idle = served.connect().await;
    idle.write_all(HEALTH).await.unwrap();
    let mut buf = [0u8; 512];
    let _ = idle.read(&mut buf).await.unwrap();
    let mut busy = served.connect().await;
    let run = body("python", "hang", json!({"timeout_s": 1})).to_string();
    let head = format!(
        "POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY_A}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{run}",
        run.len()
    );
    busy.write_all(head.as_bytes()).await.unwrap();
    h.until("the run started", |h| {
        h.airlock.metrics().runs_in_flight.get() == 1
    })
    .await;
    let _ = served.stop.take().map(|stop| stop.send(()));
    let (answer, _) = read_to_close(&mut busy).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let (rest, after) = read_to_close(&mut idle).await;
    assert!(
        rest.is_empty() && after < Duration::from_secs(2),
        "{after:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), &mut served.task)
        .await
        .expect("the listener ends once its connections have")
        .expect("it did not panic");
}

#[tokio::test]
async fn a_client_that_does_not_read_a_stream_holds_its_run_not_the_servers_memory() {
    let h = Harness::new();
    // 8 MiB of 0xff in 64 KiB chunks.
    let request = Harness::request(
        Method::POST,
        "/v1/runs",
        KEY_A,
        &[
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
        ],
        body("python", "bytes ff 8388608 65536", json!({})).to_string(),
    );
    let response = h.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Nothing read: the run waits with a full channel, it does not end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.airlock.metrics().runs_in_flight.get(),
        1,
        "the run is held while its client does not read"
    );
    let frames = read_frames(response.into_body(), "the stream goes on once read").await;
    let stdout: Vec<_> = frames
        .iter()
        .filter(|(name, _)| name.as_deref() == Some("stdout"))
        .collect();
    assert_eq!(stdout.len(), 128, "one event per chunk, not one per byte");
    let first: serde_json::Value = serde_json::from_str(stdout[0].1.as_deref().unwrap()).unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(first["b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, vec![0xff; 65536]);
    assert_eq!(frames.last().unwrap().0.as_deref(), Some("done"));
    assert_eq!(h.airlock.metrics().runs_in_flight.get(), 0);
}

#[tokio::test]
async fn a_client_that_stops_reading_cannot_hold_its_vm_past_the_stall_limit() {
    let h = Harness::with_config(ServerConfig {
        streams: StreamLimits {
            max_stall_s: 1,
            ..StreamLimits::default()
        },
        ..ServerConfig::default()
    });
    // 2 MiB of 0xff in 64 KiB chunks: 32 events, twice the channel.
    let request = Harness::request(
        Method::POST,
        "/v1/runs",
        KEY_A,
        &[
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
        ],
        body("python", "bytes ff 2097152 65536", json!({})).to_string(),
    );
    let response = h.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Nothing read: after the stall limit the run goes on and ends, and
    // its VM with it.
    let started = std::time::Instant::now();
    h.until("the run starts", |h| {
        h.airlock.metrics().runs_in_flight.get() == 1
    })
    .await;
    while h.airlock.metrics().runs_in_flight.get() != 0 || h.fakes.live() != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the run is still held by a client that reads nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let frames = read_frames(
        response.into_body(),
        "the rest of the stream comes once read",
    )
    .await;
    let names: Vec<_> = frames.iter().filter_map(|(n, _)| n.as_deref()).collect();
    let stdout = names.iter().filter(|n| **n == "stdout").count();
    assert!(stdout < 32, "events past the stall were dropped: {stdout}");
    assert_eq!(&names[names.len() - 2..], ["cut", "done"], "{names:?}");
    let cut: serde_json::Value =
        serde_json::from_str(frames[frames.len() - 2].1.as_deref().unwrap()).unwrap();
    assert_eq!(cut["reason"], "client_stalled");
    let done: serde_json::Value =
        serde_json::from_str(frames.last().unwrap().1.as_deref().unwrap()).unwrap();
    assert_eq!(done["exit_code"], 0, "{done}");
    assert_eq!(
        done["stdout"].as_str().unwrap().chars().count(),
        2 * 1024 * 1024,
        "the answer has the whole output"
    );
    assert_eq!(
        counter(&h, "airlock_streams_cut_total{kind=\"client_stalled\"}"),
        1
    );
}

#[tokio::test]
async fn non_utf8_output_past_the_streams_byte_cap_is_cut_and_the_answer_still_comes() {
    let h = Harness::with_config(ServerConfig {
        streams: StreamLimits {
            max_bytes: 100_000,
            ..StreamLimits::default()
        },
        ..ServerConfig::default()
    });
    let reply = h
        .post_events(
            KEY_A,
            "/v1/runs",
            &body("python", "bytes ff 1000000 10000", json!({})),
        )
        .await;
    let events = reply.events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let cut = names.iter().position(|n| *n == "cut").expect("a cut event");
    assert_eq!(&names[cut + 1..], ["done"], "{names:?}");
    assert!(names[..cut].iter().all(|n| *n == "stdout"));
    assert_eq!(events[cut].1["reason"], "max_bytes");
    assert_eq!(events[cut].1["max_bytes"], 100_000);
    let done = &events.last().unwrap().1;
    assert_eq!(done["exit_code"], 0);
}

/// A keyless request with `headers` (Host 127.0.0.1 unless given).
fn keyless_request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> axum::http::Request<Body> {
    Harness::request(method, path, NO_KEY, headers, body.to_owned())
}

#[tokio::test]
async fn a_keyless_server_refuses_a_foreign_host_on_every_route() {
    let h = Harness::keyless();
    let json = [
        ("content-type", "application/json"),
        ("host", "evil.example:7000"),
    ];
    for (method, path, body) in [
        (Method::GET, "/v1/health", ""),
        (Method::GET, "/metrics", ""),
        (Method::GET, "/v1/openapi.json", ""),
        (Method::GET, "/v1/sessions", ""),
        (
            Method::POST,
            "/v1/runs",
            r#"{"language":"python","code":"1"}"#,
        ),
        (Method::POST, "/mcp", "{}"),
        (Method::GET, "/v1/nothing", ""),
    ] {
        let reply = h
            .send(keyless_request(method.clone(), path, &json, body))
            .await;
        reply.error(403, "forbidden");
        assert_eq!(
            reply.headers[header::CONNECTION],
            "close",
            "{method} {path}"
        );
    }
    h.send(keyless_request(
        Method::GET,
        "/v1/health",
        &[("host", "localhost:7000")],
        "",
    ))
    .await
    .ok(StatusCode::OK);
    assert_eq!(h.fakes.cold.acquired().len(), 0);
}

#[tokio::test]
async fn a_keyless_server_refuses_a_foreign_origin() {
    let h = Harness::keyless();
    for origin in [
        "https://evil.example",
        "null",
        "http://localhost.evil.example",
    ] {
        h.send(keyless_request(
            Method::POST,
            "/v1/runs",
            &[("content-type", "application/json"), ("origin", origin)],
            r#"{"language":"python","code":"1"}"#,
        ))
        .await
        .error(403, "forbidden");
    }
    let reply = h
        .send(keyless_request(
            Method::POST,
            "/v1/runs",
            &[
                ("content-type", "application/json"),
                ("origin", "http://127.0.0.1:7000"),
            ],
            r#"{"language":"python","code":"1"}"#,
        ))
        .await;
    reply.ok(StatusCode::OK);
    assert_eq!(
        h.fakes.cold.acquired().len(),
        1,
        "only the loopback origin ran"
    );
}

#[tokio::test]
async fn a_keyless_server_takes_json_bodies_only() {
    let h = Harness::keyless();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        h.send(keyless_request(
            Method::POST,
            "/v1/runs",
            &[("content-type", content_type)],
            r#"{"language":"python","code":"1"}"#,
        ))
        .await
        .error(415, "unsupported_media_type");
    }
    h.send(keyless_request(
        Method::POST,
        "/v1/runs",
        &[],
        r#"{"language":"python","code":"1"}"#,
    ))
    .await
    .error(415, "unsupported_media_type");
    assert_eq!(h.fakes.cold.acquired().len(), 0);
    // A file upload may be raw bytes.
    let id = h.session(NO_KEY).await;
    h.put(NO_KEY, &format!("/v1/sessions/{id}/files/a.txt"), b"hi")
        .await
        .ok(StatusCode::OK);
}

#[tokio::test]
async fn a_server_with_keys_leaves_host_and_origin_to_its_keys() {
    let h = Harness::new();
    let request = Harness::request(
        Method::GET,
        "/v1/sessions",
        KEY_A,
        &[
            ("host", "api.example.com"),
            ("origin", "https://app.example.com"),
        ],
        Body::empty(),
    );
    h.send(request).await.ok(StatusCode::OK);
}
