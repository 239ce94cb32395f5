//! The proxy for real, on loopback: listeners on 127.0.0.1:0, an echo
//! upstream on 127.0.0.1, a static resolver mapping `allowed.test` to it,
//! and `allow_private_for_tests` (except where the address policy itself is
//! under test). Real TLS goes through it with rustls on both ends.

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::sni::build::{client_hello, HelloSpec};
use super::sni::{parse_client_hello, DEFAULT_MAX_CLIENT_HELLO_BYTES};
use super::*;

const ALLOWED: &str = "allowed.test";
const TEST_DEADLINE: Duration = Duration::from_secs(10);
const TLS_ALERT_ACCESS_DENIED: [u8; 7] = [21, 3, 3, 0, 2, 2, 49];

/// Fails the test instead of hanging.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// An upstream that echoes every byte and counts what it got.
struct EchoUpstream {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_upstream() -> EchoUpstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let received = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (rx, conns) = (Arc::clone(&received), Arc::clone(&connections));
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::SeqCst);
            let rx = Arc::clone(&rx);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            rx.fetch_add(n as u64, Ordering::SeqCst);
                            if conn.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    EchoUpstream {
        addr,
        received,
        connections,
        task,
    }
}

fn std_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy listener")
}

fn config_for(upstream: SocketAddr) -> EgressConfig {
    let resolver = StaticResolver::new()
        .with(ALLOWED, [upstream])
        .with("private.test", ["10.0.0.1:443".parse().expect("addr")])
        .with(
            "metadata.test",
            ["169.254.169.254:80".parse().expect("addr")],
        )
        .with("closed.test", [closed_port()]);
    let allowed = [
        ALLOWED,
        "private.test",
        "metadata.test",
        "closed.test",
        "unresolvable.test",
    ];
    EgressConfig {
        vm_id: "vm-test".into(),
        allow: Arc::new(move |name: &str| allowed.contains(&name)),
        resolver: Arc::new(resolver),
        allow_private_for_tests: true,
        ..EgressConfig::default()
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

fn hello_for(name: &str) -> Vec<u8> {
    client_hello(&HelloSpec {
        server_name: Some(name.as_bytes().to_vec()),
        ..HelloSpec::default()
    })
}

/// Reads until the proxy closes (a reset counts as closed).
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    within("connection to close", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

/// Waits until the proxy's counters satisfy `done`.
async fn wait_for_stats(proxy: &EgressHandle, done: impl Fn(&EgressStats) -> bool) -> EgressStats {
    within("stats", async {
        loop {
            let stats = proxy.stats();
            if done(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Captures this thread's log output (the tests run on a current-thread
/// runtime, so the proxy's tasks log on this thread too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let sink = Arc::clone(&logs.0);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }

    fn denials(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains("egress connection denied"))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn an_allowed_sni_is_spliced_both_ways_and_counted() {
    // Arrange
    let upstream = echo_upstream().await;
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config_for(upstream.addr))
        .expect("serve");
    let mut sent = hello_for(ALLOWED);
    sent.extend_from_slice(b"application bytes after the hello");

    // Act
    let mut client = TcpStream::connect(proxy.https_addr())
        .await
        .expect("connect");
    client.write_all(&sent).await.expect("send");
    let mut echoed = vec![0u8; sent.len()];
    within("echo", client.read_exact(&mut echoed))
        .await
        .expect("echo arrives");
    client.shutdown().await.expect("half-close");
    let rest = read_until_closed(&mut client).await;

    // Assert
    assert_eq!(echoed, sent);
    assert!(rest.is_empty());
    let stats = wait_for_stats(&proxy, |s| s.connections_active == 0).await;
    let n = sent.len() as u64;
    assert_eq!(
        stats,
        EgressStats {
            connections_accepted: 1,
            connections_allowed: 1,
            connections_denied: 0,
            connections_failed: 0,
            connections_active: 0,
            bytes_out: n,
            bytes_in: n,
            secrets_blocked: 0,
        }
    );
    assert_eq!(upstream.received.load(Ordering::SeqCst), n);
    assert_eq!(proxy.stop().await.bytes_in, n);
}

#[tokio::test]
async fn first_bytes_sent_one_at_a_time_are_still_routed() {
    let upstream = echo_upstream().await;
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config_for(upstream.addr))
        .expect("serve");
    let hello = client_hello(&HelloSpec {
        server_name: Some(ALLOWED.as_bytes().to_vec()),
        max_record_payload: 50,
        ..HelloSpec::default()
    });
    let request = b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n".to_vec();

    for (addr, bytes) in [(proxy.https_addr(), hello), (proxy.http_addr(), request)] {
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.set_nodelay(true).expect("nodelay");
        for byte in &bytes {
            client
                .write_all(std::slice::from_ref(byte))
                .await
                .expect("send a byte");
            tokio::task::yield_now().await;
        }
        let mut echoed = vec![0u8; bytes.len()];
        within("echo", client.read_exact(&mut echoed))
            .await
            .expect("echo");
        assert_eq!(echoed, bytes);
    }
    assert_eq!(proxy.stats().connections_allowed, 2);
}

#[tokio::test]
async fn byte_counts_are_readable_while_a_connection_is_open() {
    let upstream = echo_upstream().await;
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config_for(upstream.addr))
        .expect("serve");
    let mut client = TcpStream::connect(proxy.https_addr())
        .await
        .expect("connect");
    let hello = hello_for(ALLOWED);
    client.write_all(&hello).await.expect("send");
    let mut echoed = vec![0u8; hello.len()];
    within("echo", client.read_exact(&mut echoed))
        .await
        .expect("echo");

    let stats = wait_for_stats(&proxy, |s| s.bytes_in == hello.len() as u64).await;

    assert_eq!(stats.connections_active, 1);
    assert_eq!(stats.bytes_out, hello.len() as u64);
}

#[tokio::test]
async fn a_denied_sni_is_closed_logged_and_never_reaches_the_upstream() {
    let (logs, _guard) = Logs::capture();
    let upstream = echo_upstream().await;
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config_for(upstream.addr))
        .expect("serve");

    let mut client = TcpStream::connect(proxy.https_addr())
        .await
        .expect("connect");
    client
        .write_all(&hello_for("denied.test"))
        .await
        .expect("send");
    let answer = read_until_closed(&mut client).await;

    assert_eq!(answer, TLS_ALERT_ACCESS_DENIED);
    let stats = wait_for_stats(&proxy, |s| s.connections_active == 0).await;
    assert_eq!(
        (
            stats.connections_denied,
            stats.connections_allowed,
            stats.bytes_out
        ),
        (1, 0, 0)
    );
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 0);
    let denials = logs.denials();
    assert_eq!(denials.len(), 1, "{}", logs.text());
    let line = &denials[0];
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("vm-test") && line.contains("denied.test") && line.contains("port=443"),
        "{line}"
    );
    assert!(line.contains("name not in the allowlist"), "{line}");
}

#[tokio::test]
async fn tls_without_a_usable_name_is_closed_with_its_reason() {
    let (logs, _guard) = Logs::capture();
    let upstream = echo_upstream().await;
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config_for(upstream.addr))
        .expect("serve");
    let cases: [(&str, Vec<u8>); 5] = [
        ("without server name", client_hello(&HelloSpec::default())),
        (
            "Encrypted Client Hello",
            client_hello(&HelloSpec {
                server_name: Some(ALLOWED.as_bytes().to_vec()),
                ech: true,
                ..HelloSpec::default()
            }),
        ),
        ("IP literal", hello_for("127.0.0.1")),
        (
            "not a TLS handshake",
            b"\x00\x01garbage that is not TLS".to_vec(),
        ),
        ("malformed ClientHello", {
            let mut bytes = hello_for(ALLOWED);
            bytes[9] = 0x02; // legacy_version 0x0203 (after 5 + 4 header bytes)
            bytes
        }),
    ];

    for (reason, bytes) in &cases {
        let mut client = TcpStream::connect(proxy.https_addr())
            .await
            .expect("connect");
        client.write_all(bytes).await.expect("send");
        let answer = read_until_closed(&mut client).await;
        assert_eq!(answer, TLS_ALERT_ACCESS_DENIED, "{reason}");
    }

    let stats = wait_for_stats(&proxy, |s| s.connections_active == 0).await;
    assert_eq!(stats.connections_denied, cases.len() as u64);
    assert_eq!(stats.connections_allowed, 0);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 0);
    let denials = logs.denials();
    for ((reason, _), line) in cases.iter().zip(&denials) {
        assert!(line.contains(reason), "expected {reason:?} in {line}");
    }
    assert!(
        denials[1].contains("allowed.test"),
        "ECH logs the outer name: {}",
        denials[1]
    );
}

#[tokio::test]
async fn an_allowed_http_host_is_spliced() {
    let upstream = echo_upstream().await;
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config_for(upstream.addr))
        .expect("serve");
    let request = b"GET /simple/ HTTP/1.1\r\nHost: Allowed.Test:80\r\nUser-Agent: t\r\n\r\n";

    let mut client = TcpStream::connect(proxy.http_addr())
        .await
        .expect("connect");
    client.write_all(request).await.expect("send");
    let mut echoed = vec![0u8; request.len()];
    within("echo", client.read_exact(&mut echoed))
        .await
        .expect("echo");

    assert_eq!(&echoed[..], &request[..]);
    let stats = wait_for_stats(&proxy, |s| s.bytes_in == request.len() as u64).await;
    assert_eq!(stats.connections_allowed, 1);
}

#[tokio::test]
async fn a_denied_or_malformed_http_request_gets_403_and_is_closed() {
    let (logs, _guard) = Logs::capture();
    let upstream = echo_upstream().await;
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config_for(upstream.addr))
        .expect("serve");
    let requests: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n",
        b"GET http://denied.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: allowed.test\r\nHost: denied.test\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",
    ];

    for request in requests {
        let mut client = TcpStream::connect(proxy.http_addr())
            .await
            .expect("connect");
        client.write_all(request).await.expect("send");
        let answer = String::from_utf8(read_until_closed(&mut client).await).expect("text answer");
        assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
        assert!(answer.ends_with("not allowed\n"), "{answer}");
    }

    let stats = wait_for_stats(&proxy, |s| s.connections_active == 0).await;
    assert_eq!(stats.connections_denied, 4);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 0);
    let denials = logs.denials();
    assert!(
        denials[0].contains("denied.test") && denials[0].contains("port=80"),
        "{}",
        denials[0]
    );
    assert!(denials[1].contains("another host"), "{}", denials[1]);
    assert!(denials[2].contains("more than one Host"), "{}", denials[2]);
    assert!(denials[3].contains("not an HTTP request"), "{}", denials[3]);
}

#[tokio::test]
async fn names_resolving_to_private_link_local_or_loopback_are_refused_in_production_mode() {
    let (logs, _guard) = Logs::capture();
    let upstream = echo_upstream().await;
    let config = EgressConfig {
        allow_private_for_tests: false,
        ..config_for(upstream.addr)
    };
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config).expect("serve");

    for name in ["private.test", "metadata.test", ALLOWED] {
        let mut client = TcpStream::connect(proxy.https_addr())
            .await
            .expect("connect");
        client.write_all(&hello_for(name)).await.expect("send");
        assert_eq!(
            read_until_closed(&mut client).await,
            TLS_ALERT_ACCESS_DENIED,
            "{name}"
        );
    }
    let mut client = TcpStream::connect(proxy.http_addr())
        .await
        .expect("connect");
    client
        .write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: metadata.test\r\n\r\n")
        .await
        .expect("send");
    assert!(read_until_closed(&mut client)
        .await
        .starts_with(b"HTTP/1.1 403"));

    let stats = wait_for_stats(&proxy, |s| s.connections_active == 0).await;
    assert_eq!(
        (stats.connections_denied, stats.connections_allowed),
        (4, 0)
    );
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 0);
    let denials = logs.denials();
    assert!(denials[0].contains("10.0.0.1 (private)"), "{}", denials[0]);
    assert!(
        denials[1].contains("169.254.169.254 (link-local)"),
        "{}",
        denials[1]
    );
    assert!(
        denials[2].contains("127.0.0.1 (loopback)"),
        "{}",
        denials[2]
    );
    assert!(
        denials[3].contains("169.254.169.254 (link-local)"),
        "{}",
        denials[3]
    );
}

#[tokio::test]
async fn the_metadata_address_stays_refused_even_in_test_mode() {
    let upstream = echo_upstream().await;
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config_for(upstream.addr))
        .expect("serve");

    let mut client = TcpStream::connect(proxy.https_addr())
        .await
        .expect("connect");
    client
        .write_all(&hello_for("metadata.test"))
        .await
        .expect("send");

    assert_eq!(
        read_until_closed(&mut client).await,
        TLS_ALERT_ACCESS_DENIED
    );
    assert_eq!(
        wait_for_stats(&proxy, |s| s.connections_active == 0)
            .await
            .connections_denied,
        1
    );
}

#[tokio::test]
async fn an_unreachable_allowed_server_counts_as_failed_and_http_gets_502() {
    let (logs, _guard) = Logs::capture();
    let upstream = echo_upstream().await;
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config_for(upstream.addr))
        .expect("serve");

    let mut client = TcpStream::connect(proxy.http_addr())
        .await
        .expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: closed.test\r\n\r\n")
        .await
        .expect("send");
    let answer = read_until_closed(&mut client).await;
    let mut client = TcpStream::connect(proxy.https_addr())
        .await
        .expect("connect");
    client
        .write_all(&hello_for("unresolvable.test"))
        .await
        .expect("send");
    let _ = read_until_closed(&mut client).await;

    assert!(answer.starts_with(b"HTTP/1.1 502 Bad Gateway\r\n"));
    let stats = wait_for_stats(&proxy, |s| s.connections_active == 0).await;
    assert_eq!((stats.connections_failed, stats.connections_denied), (2, 0));
    let text = logs.text();
    assert!(text.contains("connecting failed"), "{text}");
    assert!(text.contains("resolving failed"), "{text}");
}

#[tokio::test]
async fn a_silent_or_slow_client_is_closed_at_the_first_bytes_deadline() {
    let upstream = echo_upstream().await;
    let config = EgressConfig {
        first_bytes_timeout: Duration::from_millis(200),
        ..config_for(upstream.addr)
    };
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config).expect("serve");
    let hello = hello_for(ALLOWED);

    let mut silent = TcpStream::connect(proxy.https_addr())
        .await
        .expect("connect");
    let mut partial = TcpStream::connect(proxy.https_addr())
        .await
        .expect("connect");
    partial
        .write_all(&hello[..hello.len() / 2])
        .await
        .expect("send half");
    let started = tokio::time::Instant::now();
    let (a, b) = tokio::join!(
        read_until_closed(&mut silent),
        read_until_closed(&mut partial)
    );

    assert_eq!(
        (a, b),
        (
            TLS_ALERT_ACCESS_DENIED.to_vec(),
            TLS_ALERT_ACCESS_DENIED.to_vec()
        )
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        wait_for_stats(&proxy, |s| s.connections_active == 0)
            .await
            .connections_denied,
        2
    );
}

#[tokio::test]
async fn an_idle_spliced_connection_is_closed() {
    let upstream = echo_upstream().await;
    let config = EgressConfig {
        idle_timeout: Duration::from_millis(300),
        ..config_for(upstream.addr)
    };
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config).expect("serve");
    let hello = hello_for(ALLOWED);
    let mut client = TcpStream::connect(proxy.https_addr())
        .await
        .expect("connect");
    client.write_all(&hello).await.expect("send");
    let mut echoed = vec![0u8; hello.len()];
    within("echo", client.read_exact(&mut echoed))
        .await
        .expect("echo");

    let started = tokio::time::Instant::now();
    let rest = read_until_closed(&mut client).await;

    assert!(rest.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let stats = wait_for_stats(&proxy, |s| s.connections_active == 0).await;
    assert_eq!(stats.connections_allowed, 1);
}

#[tokio::test]
async fn stop_closes_spliced_connections_and_the_listeners() {
    let upstream = echo_upstream().await;
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config_for(upstream.addr))
        .expect("serve");
    let (http_addr, https_addr) = (proxy.http_addr(), proxy.https_addr());
    let hello = hello_for(ALLOWED);
    let request = b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n";
    let mut tls = TcpStream::connect(https_addr).await.expect("connect");
    tls.write_all(&hello).await.expect("send");
    let mut http = TcpStream::connect(http_addr).await.expect("connect");
    http.write_all(request).await.expect("send");
    let mut buf = vec![0u8; hello.len()];
    within("tls echo", tls.read_exact(&mut buf))
        .await
        .expect("echo");
    let mut buf = vec![0u8; request.len()];
    within("http echo", http.read_exact(&mut buf))
        .await
        .expect("echo");
    let mut idle_unchecked = TcpStream::connect(https_addr).await.expect("connect");
    wait_for_stats(&proxy, |s| s.connections_active == 3).await;

    let stats = within("stop", proxy.stop()).await;

    assert_eq!(
        (stats.connections_allowed, stats.connections_active),
        (2, 0)
    );
    assert!(read_until_closed(&mut tls).await.is_empty());
    assert!(read_until_closed(&mut http).await.is_empty());
    assert!(read_until_closed(&mut idle_unchecked).await.is_empty());
    assert!(
        TcpStream::connect(https_addr).await.is_err(),
        "443 listener still open"
    );
    assert!(
        TcpStream::connect(http_addr).await.is_err(),
        "80 listener still open"
    );
}

#[tokio::test]
async fn dropping_the_handle_also_closes_everything() {
    let upstream = echo_upstream().await;
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config_for(upstream.addr))
        .expect("serve");
    let hello = hello_for(ALLOWED);
    let mut tls = TcpStream::connect(proxy.https_addr())
        .await
        .expect("connect");
    tls.write_all(&hello).await.expect("send");
    let mut buf = vec![0u8; hello.len()];
    within("echo", tls.read_exact(&mut buf))
        .await
        .expect("echo");

    drop(proxy);

    assert!(read_until_closed(&mut tls).await.is_empty());
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_until_a_slot_frees() {
    let upstream = echo_upstream().await;
    let config = EgressConfig {
        max_connections: 1,
        ..config_for(upstream.addr)
    };
    let proxy = EgressProxy::serve(std_listener(), std_listener(), config).expect("serve");
    let hello = hello_for(ALLOWED);
    let mut first = TcpStream::connect(proxy.https_addr())
        .await
        .expect("connect");
    first.write_all(&hello).await.expect("send");
    let mut buf = vec![0u8; hello.len()];
    within("echo", first.read_exact(&mut buf))
        .await
        .expect("echo");

    let mut second = TcpStream::connect(proxy.https_addr())
        .await
        .expect("connect");
    let refused = read_until_closed(&mut second).await;
    drop(first);
    wait_for_stats(&proxy, |s| s.connections_active == 0).await;
    let mut third = TcpStream::connect(proxy.https_addr())
        .await
        .expect("connect");
    third.write_all(&hello).await.expect("send");
    within("echo", third.read_exact(&mut buf))
        .await
        .expect("third is served");

    assert_eq!(refused, TLS_ALERT_ACCESS_DENIED);
    let stats = proxy.stats();
    assert_eq!(
        (stats.connections_allowed, stats.connections_denied),
        (2, 1)
    );
}

#[tokio::test]
async fn serve_refuses_an_invalid_config() {
    let result = EgressProxy::serve(std_listener(), std_listener(), EgressConfig::default());
    assert!(matches!(
        result,
        Err(crate::EgressError::Config { field: "vm_id", .. })
    ));
}

#[test]
fn serve_outside_a_runtime_is_an_error_not_a_panic() {
    let config = EgressConfig {
        vm_id: "vm".into(),
        ..EgressConfig::default()
    };
    let result = EgressProxy::serve(std_listener(), std_listener(), config);
    assert!(matches!(result, Err(crate::EgressError::NoRuntime { .. })));
}

/// Real TLS: a rustls client and server talk through the proxy.
mod real_tls {
    use super::*;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
    use rustls::server::{ClientHello as RustlsClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;
    use rustls::{
        ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, ServerConnection,
        SignatureScheme,
    };

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A fixed Ed25519 test key (PKCS#8 v1, seed of 0x07 bytes) and a
    /// placeholder certificate: the client below checks nothing, the point
    /// is the handshake and the encrypted bytes going through the proxy.
    #[derive(Debug)]
    struct TestKey(Arc<CertifiedKey>);

    impl TestKey {
        fn new() -> Self {
            let mut pkcs8 = vec![
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20,
            ];
            pkcs8.extend_from_slice(&[7u8; 32]);
            let key = rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8))
                .expect("test key");
            let cert = CertificateDer::from(b"test certificate, not checked".to_vec());
            TestKey(Arc::new(CertifiedKey::new(vec![cert], key)))
        }
    }

    impl ResolvesServerCert for TestKey {
        fn resolve(&self, _hello: RustlsClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(Arc::clone(&self.0))
        }
    }

    #[derive(Debug)]
    struct AcceptAnyServer;

    impl ServerCertVerifier for AcceptAnyServer {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    }

    fn client_config() -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
            .with_no_client_auth();
        Arc::new(config)
    }

    fn server_config() -> Arc<ServerConfig> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(TestKey::new()));
        Arc::new(config)
    }

    #[test]
    fn a_rustls_client_hello_yields_its_server_name() {
        let name = ServerName::try_from("files.pythonhosted.org").expect("name");
        let mut conn = ClientConnection::new(client_config(), name).expect("client");
        let mut bytes = Vec::new();
        conn.write_tls(&mut bytes).expect("client hello");

        let hello = parse_client_hello(&bytes, DEFAULT_MAX_CLIENT_HELLO_BYTES)
            .expect("valid")
            .expect("complete");

        assert_eq!(hello.server_name.as_deref(), Some("files.pythonhosted.org"));
        assert!(!hello.offers_ech);
    }

    #[tokio::test]
    async fn a_real_tls_session_goes_through_the_proxy() {
        // Arrange: a rustls server on 127.0.0.1 that answers with the SNI it saw.
        let server_listener = std_listener();
        let server_addr = server_listener.local_addr().expect("addr");
        let server = tokio::task::spawn_blocking(move || {
            let (tcp, _) = server_listener.accept().expect("accept");
            tcp.set_read_timeout(Some(TEST_DEADLINE)).expect("timeout");
            let conn = ServerConnection::new(server_config()).expect("server");
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut request = [0u8; 5];
            tls.read_exact(&mut request).expect("read request");
            let sni = tls.conn.server_name().unwrap_or("").to_string();
            tls.write_all(format!("{} -> {sni}", String::from_utf8_lossy(&request)).as_bytes())
                .expect("reply");
            tls.conn.send_close_notify();
            tls.flush().expect("flush");
        });
        let proxy = EgressProxy::serve(std_listener(), std_listener(), config_for(server_addr))
            .expect("serve");
        let proxy_addr = proxy.https_addr();

        // Act: a rustls client connects to the proxy as if it were allowed.test.
        let client = tokio::task::spawn_blocking(move || {
            let tcp = std::net::TcpStream::connect(proxy_addr).expect("connect");
            tcp.set_read_timeout(Some(TEST_DEADLINE)).expect("timeout");
            let name = ServerName::try_from(ALLOWED).expect("name");
            let conn = ClientConnection::new(client_config(), name).expect("client");
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(b"hello").expect("send");
            let mut reply = String::new();
            tls.read_to_string(&mut reply).expect("reply");
            (reply, tls.conn.protocol_version())
        });
        let (reply, version) = within("tls client", client).await.expect("client thread");
        within("tls server", server).await.expect("server thread");

        // Assert
        assert_eq!(reply, "hello -> allowed.test");
        assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
        let stats = wait_for_stats(&proxy, |s| s.connections_active == 0).await;
        assert_eq!(stats.connections_allowed, 1);
        assert!(stats.bytes_out > 200 && stats.bytes_in > 200, "{stats:?}");
    }
}
