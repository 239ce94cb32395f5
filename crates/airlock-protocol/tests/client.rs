//! The host client against a scripted fake agent over in-memory pipes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock_protocol::client::{sha256_hex, Client, ClientConfig, ExecEvent};
use airlock_protocol::*;
use std::time::Duration;
use tokio::io::{duplex, DuplexStream};

const T: Duration = Duration::from_secs(5);

/// A fake agent: answers each request with the events `script` returns.
fn fake_agent(script: fn(&Request) -> Vec<EventBody>) -> Client {
    let (host_cmd, agent_cmd) = duplex(1 << 16);
    let (agent_event, host_event) = duplex(1 << 16);
    tokio::spawn(serve(agent_cmd, agent_event, script));
    Client::new(host_event, host_cmd)
}

async fn serve(cmd: DuplexStream, event: DuplexStream, script: fn(&Request) -> Vec<EventBody>) {
    let mut reader = FrameReader::new(cmd);
    let mut writer = FrameWriter::new(event);
    while let Ok(Some(line)) = reader.next_request().await {
        let Ok(request) = line else { continue };
        for body in script(&request) {
            writer.send(&Event::new(request.op, body)).await.unwrap();
        }
    }
}

fn pong() -> EventBody {
    EventBody::Pong {
        version: "test".into(),
        protocol: PROTOCOL_VERSION,
    }
}

fn exec_request(code: &str) -> ExecRequest {
    ExecRequest {
        mode: Default::default(),
        language: Language::Raw,
        code: code.into(),
        timeout_ms: 1000,
        env: Default::default(),
        cwd: None,
    }
}

#[tokio::test]
async fn ping_returns_the_agent_version() {
    let client = fake_agent(|_| vec![pong()]);
    let info = client.handshake(T).await.unwrap();
    assert_eq!(info.version, "test");
}

#[tokio::test]
async fn handshake_refuses_another_protocol() {
    let client = fake_agent(|_| {
        vec![EventBody::Pong {
            version: "old".into(),
            protocol: 0,
        }]
    });
    assert!(matches!(
        client.handshake(T).await,
        Err(ProtocolError::VersionMismatch { guest: 0, .. })
    ));
}

#[tokio::test]
async fn exec_collects_output_until_complete() {
    let client = fake_agent(|_| {
        vec![
            EventBody::Stdout {
                data: Data::text_or_base64("a"),
            },
            EventBody::Stderr {
                data: Data::text_or_base64(vec![0xffu8]),
            },
            EventBody::Stdout {
                data: Data::text_or_base64("b"),
            },
            EventBody::Complete(Completion {
                state_lost: false,
                exit_code: 3,
                timed_out: false,
                duration_ms: 1,
                spawn_ms: 0,
                stdout_truncated: false,
                stderr_truncated: false,
            }),
        ]
    });
    let out = client
        .exec_collect(exec_request("x"), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"ab");
    assert_eq!(out.stderr, vec![0xff]);
    assert_eq!(out.completion.exit_code, 3);
}

#[tokio::test]
async fn exec_stream_yields_events_in_order_then_none() {
    let client = fake_agent(|_| {
        vec![
            EventBody::Stdout {
                data: Data::text_or_base64("x"),
            },
            EventBody::Complete(Completion {
                state_lost: false,
                exit_code: 0,
                timed_out: false,
                duration_ms: 1,
                spawn_ms: 0,
                stdout_truncated: false,
                stderr_truncated: false,
            }),
        ]
    });
    let mut stream = client.exec(exec_request("x")).await.unwrap();
    assert_eq!(
        stream.next().await.unwrap(),
        Some(ExecEvent::Stdout("x".into()))
    );
    assert!(matches!(
        stream.next().await.unwrap(),
        Some(ExecEvent::Complete(_))
    ));
    assert_eq!(stream.next().await.unwrap(), None);
}

fn shown() -> ExecResult {
    ExecResult {
        data: [("text/plain".to_owned(), serde_json::json!("2"))].into(),
        is_main_result: true,
        truncated: false,
    }
}

fn raised() -> CellError {
    CellError {
        name: "ValueError".into(),
        value: "v".into(),
        traceback: "Traceback...".into(),
    }
}

fn output_result_error_complete(_: &Request) -> Vec<EventBody> {
    vec![
        EventBody::Stdout {
            data: Data::text_or_base64("a"),
        },
        EventBody::Result(shown()),
        EventBody::CellError(raised()),
        EventBody::Complete(Completion {
            state_lost: false,
            exit_code: 1,
            timed_out: false,
            duration_ms: 1,
            spawn_ms: 0,
            stdout_truncated: false,
            stderr_truncated: false,
        }),
    ]
}

#[tokio::test]
async fn results_and_the_cell_error_are_streamed_in_order_and_collected() {
    let client = fake_agent(output_result_error_complete);
    let mut stream = client.exec(exec_request("x")).await.unwrap();
    let mut seen = Vec::new();
    while let Some(event) = stream.next().await.unwrap() {
        seen.push(event);
    }
    assert_eq!(seen[1], ExecEvent::Result(shown()));
    assert_eq!(seen[2], ExecEvent::CellError(raised()));
    drop(stream);

    let out = client
        .exec_collect(exec_request("x"), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!((out.results, out.error), (vec![shown()], Some(raised())));
    assert_eq!(out.stdout, b"a");
}

#[tokio::test]
async fn guest_error_event_becomes_a_typed_error() {
    let client = fake_agent(|_| {
        vec![EventBody::Error {
            kind: ErrorKind::EnvRefused,
            message: "LD_PRELOAD is refused".into(),
        }]
    });
    let err = client
        .exec_collect(exec_request("x"), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::Guest {
            kind: ErrorKind::EnvRefused,
            ..
        }
    ));
}

#[tokio::test]
async fn silent_guest_times_out() {
    let client = fake_agent(|_| vec![]);
    let err = client.ping(Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(err, ProtocolError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn closed_channel_ends_pending_operations() {
    let (host_cmd, _agent_cmd) = duplex(1024);
    let (agent_event, host_event) = duplex(1024);
    let client = Client::new(host_event, host_cmd);
    drop(agent_event);
    let err = client.ping(T).await.unwrap_err();
    assert!(matches!(err, ProtocolError::Closed), "{err}");
}

/// A read of the 5-byte file `hello` in two chunks.
fn hello_in_two_chunks() -> Vec<EventBody> {
    vec![
        EventBody::FileData {
            data: Data::base64("hel"),
            size: Some(5),
        },
        EventBody::FileData {
            data: Data::base64("lo"),
            size: None,
        },
        EventBody::FileDone {
            size: 5,
            sha256: sha256_hex(b"hello"),
        },
    ]
}

#[tokio::test]
async fn read_file_verifies_the_checksum() {
    let client = fake_agent(|r| match &r.body {
        RequestBody::ReadFile { path } if path == "good" => hello_in_two_chunks(),
        _ => vec![
            EventBody::FileData {
                data: Data::base64("hello"),
                size: None,
            },
            EventBody::FileDone {
                size: 5,
                sha256: sha256_hex(b"other"),
            },
        ],
    });
    assert_eq!(client.read_file("good", T).await.unwrap().data, b"hello");
    assert!(matches!(
        client.read_file("bad", T).await,
        Err(ProtocolError::Unexpected { .. })
    ));
}

#[tokio::test]
async fn write_file_sends_chunks_and_checks_the_ack() {
    let client = fake_agent(|r| match &r.body {
        RequestBody::WriteFile { .. } => vec![EventBody::FileAck {
            size: 0,
            sha256: None,
        }],
        RequestBody::FileEnd => vec![EventBody::FileAck {
            size: 3,
            sha256: Some(sha256_hex(b"abc")),
        }],
        _ => vec![],
    });
    let sha = client.write_file("f", 0o644, b"abc", T).await.unwrap();
    assert_eq!(sha, sha256_hex(b"abc"));
}

#[tokio::test]
async fn hello_on_op_0_is_seen_without_a_ping() {
    let (_host_cmd, agent_cmd) = duplex(1024);
    let (agent_event, host_event) = duplex(1024);
    let client = Client::new(host_event, _host_cmd);
    drop(agent_cmd);
    let mut writer = FrameWriter::new(agent_event);
    writer.send(&Event::new(HELLO_OP, pong())).await.unwrap();
    let info = client.hello(T).await.unwrap();
    assert_eq!(info.version, "test");
    // It stays: a later call returns at once.
    assert_eq!(client.hello(Duration::from_millis(1)).await.unwrap(), info);
}

#[tokio::test]
async fn no_hello_times_out() {
    let client = fake_agent(|_| vec![]);
    assert!(matches!(
        client.hello(Duration::from_millis(50)).await,
        Err(ProtocolError::Timeout { .. })
    ));
}

fn fake_agent_with(config: ClientConfig, script: fn(&Request) -> Vec<EventBody>) -> Client {
    let (host_cmd, agent_cmd) = duplex(1 << 16);
    let (agent_event, host_event) = duplex(1 << 16);
    tokio::spawn(serve(agent_cmd, agent_event, script));
    Client::with_config(host_event, host_cmd, config).unwrap()
}

#[tokio::test]
async fn exec_collect_cuts_output_at_the_host_cap_and_flags_it() {
    // Arrange: an agent that ignores its own cap.
    let config = ClientConfig {
        max_stdout_bytes: 15,
        ..ClientConfig::default()
    };
    let client = fake_agent_with(config, |_| {
        let chunk = || EventBody::Stdout {
            data: Data::text_or_base64("0123456789"),
        };
        vec![
            chunk(),
            chunk(),
            EventBody::Stderr {
                data: Data::text_or_base64("err"),
            },
            chunk(),
            EventBody::Complete(Completion {
                state_lost: false,
                exit_code: 0,
                timed_out: false,
                duration_ms: 1,
                spawn_ms: 1,
                stdout_truncated: false,
                stderr_truncated: false,
            }),
        ]
    });

    // Act
    let out = client.exec_collect(exec_request("x"), T).await.unwrap();

    // Assert: 15 bytes, the agent's marker, the flag; stderr untouched.
    let expected = format!("012345678901234{}", truncation_marker("stdout", 15));
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    assert!(out.completion.stdout_truncated);
    assert_eq!(out.stderr, b"err");
    assert!(!out.completion.stderr_truncated);
}

#[tokio::test]
async fn read_file_over_the_bound_fails_naming_the_path() {
    let config = ClientConfig {
        max_read_file_bytes: 4,
        ..ClientConfig::default()
    };
    let client = fake_agent_with(config, |_| hello_in_two_chunks());
    let err = client.read_file("out/big.bin", T).await.unwrap_err();
    assert!(
        matches!(&err, ProtocolError::FileTooLarge { path, limit_bytes: 4 } if path == "out/big.bin"),
        "{err}"
    );
    assert!(err.to_string().contains("out/big.bin"), "{err}");
    assert_eq!(err.kind(), ErrorKind::LimitExceeded);
}

#[tokio::test]
async fn a_send_to_a_guest_that_stops_reading_ends_at_its_deadline() {
    // Arrange: a command pipe of 16 bytes nobody reads.
    let (host_cmd, _agent_cmd) = duplex(16);
    let (_agent_event, host_event) = duplex(1024);
    let config = ClientConfig {
        send_timeout: Duration::from_millis(100),
        ..ClientConfig::default()
    };
    let client = Client::with_config(host_event, host_cmd, config).unwrap();

    // Act: a ping whose own deadline is far later.
    let started = std::time::Instant::now();
    let err = client.ping(Duration::from_secs(30)).await.unwrap_err();

    // Assert
    assert!(
        matches!(&err, ProtocolError::Timeout { what, .. } if what == "send"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // And the channel is marked broken: the next send fails at once
    // instead of waiting out a deadline of its own behind the stuck one.
    assert!(client.is_broken());
    let started = std::time::Instant::now();
    let err = client.ping(Duration::from_secs(30)).await.unwrap_err();
    assert!(matches!(err, ProtocolError::ChannelBroken { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_cancelled_send_never_leaves_half_a_line() {
    // Arrange: the agent does not read until told, through a 4 KiB pipe,
    // so a 1 MiB request is stuck mid-line when its caller gives up.
    let (host_cmd, agent_cmd) = duplex(4096);
    let (agent_event, host_event) = duplex(1 << 16);
    let client = Client::new(host_event, host_cmd);
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(async move {
        wait.await.unwrap();
        let mut reader = FrameReader::new(agent_cmd);
        let mut writer = FrameWriter::new(agent_event);
        let mut seen = Vec::new();
        while let Ok(Some(line)) = reader.next_request().await {
            let request = line.expect("every line the agent gets is whole");
            seen.push(request.body.action().to_owned());
            if matches!(request.body, RequestBody::Ping) {
                writer.send(&Event::new(request.op, pong())).await.unwrap();
                break;
            }
        }
        seen
    });

    // Act: the exec's caller is cancelled while its line is half written.
    let big = "x".repeat(1 << 20);
    let cancelled =
        tokio::time::timeout(Duration::from_millis(50), client.exec(exec_request(&big))).await;
    assert!(cancelled.is_err(), "the send should still be in progress");
    go.send(()).unwrap();
    let pong = client.ping(T).await;

    // Assert: the cut-off request arrived whole, then the ping.
    assert!(pong.is_ok(), "{pong:?}");
    assert_eq!(agent.await.unwrap(), ["exec", "ping"]);
}

#[tokio::test]
async fn after_a_failed_write_every_send_fails_as_broken() {
    let (host_cmd, agent_cmd) = duplex(1024);
    let (_agent_event, host_event) = duplex(1024);
    let client = Client::new(host_event, host_cmd);
    drop(agent_cmd);
    let first = client.ping(T).await.unwrap_err();
    assert!(matches!(first, ProtocolError::Io(_)), "{first}");
    assert!(client.is_broken());
    let second = client.ping(T).await.unwrap_err();
    assert!(
        matches!(second, ProtocolError::ChannelBroken { .. }),
        "{second}"
    );
}

#[test]
fn client_config_refuses_zero_limits() {
    assert!(ClientConfig::default().validate().is_ok());
    for config in [
        ClientConfig {
            max_stdout_bytes: 0,
            ..ClientConfig::default()
        },
        ClientConfig {
            max_read_file_bytes: 0,
            ..ClientConfig::default()
        },
        ClientConfig {
            send_timeout: Duration::ZERO,
            ..ClientConfig::default()
        },
    ] {
        assert!(matches!(config.validate(), Err(ProtocolError::Config(_))));
    }
}
