//! Secret substitution for real, on loopback: HTTPS upstreams with
//! certificates from a test CA (trusted through
//! [`UpstreamRoots::Certificates`]), the proxy terminating the guest's TLS
//! with Airlock's CA (made in a temporary directory), and a rustls client
//! in the guest's place trusting that CA.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;

const API: &str = "api.test";
const OTHER: &str = "other.test";
const PLAIN: &str = "plain.test";
/// Port 80 of this name reaches a plain TCP sink that reads and never answers.
const SINK: &str = "sink.test";
const DEADLINE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A test CA and a server certificate for `names` signed by it.
struct TestPki {
    ca_der: CertificateDer<'static>,
    server: Arc<rustls::sign::CertifiedKey>,
}

fn test_pki(names: &[&str]) -> TestPki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "upstream test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der).expect("signing key");
    TestPki {
        ca_der: ca_cert.der().clone(),
        server: Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert.der().clone()],
            signing,
        )),
    }
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: Vec<u8>,
}

/// An HTTPS upstream answering `200 ok` to every request (keep-alive) and
/// keeping what it received.
struct Upstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

async fn read_body<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>, len: usize) -> Vec<u8> {
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let rest = buf.split_off(len.min(buf.len()));
    std::mem::replace(buf, rest)
}

async fn https_upstream(pki: &TestPki, alpn: &[&[u8]]) -> Upstream {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(Arc::clone(&pki.server))));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&received);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let kept = Arc::clone(&kept);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                while let Some(end) = read_head(&mut tls, &mut buf).await {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let body = read_body(&mut tls, &mut buf, content_length(&head)).await;
                    kept.lock().expect("lock").push(Received { head, body });
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if tls.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        received,
        task,
    }
}

fn secret(name: &str, value: &str, host: &str, body: bool) -> Secret {
    Secret {
        name: name.into(),
        value: SecretValue::new(value.as_bytes()),
        hosts: vec![HostPattern::parse(name, host).expect("host")],
        body,
    }
}

struct Setup {
    proxy: EgressHandle,
    _sink: JoinHandle<()>,
    secrets: Arc<SecretSet>,
    ca: Arc<AirlockCa>,
    upstream: Upstream,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn placeholder(&self, name: &str) -> String {
        self.secrets
            .placeholder(name)
            .expect("placeholder")
            .as_str()
            .to_owned()
    }

    fn received(&self) -> Vec<Received> {
        self.upstream.received.lock().expect("lock").clone()
    }
}

/// The proxy with `API_KEY` bound to api.test (headers), `BODY_KEY` bound
/// to api.test (body too), `OTHER_KEY` bound to other.test; api.test,
/// other.test and plain.test allowed and resolved to one upstream.
async fn setup(upstream_alpn: &[&[u8]], trust_upstream: bool) -> Setup {
    let pki = test_pki(&[API, OTHER, PLAIN]);
    let upstream = https_upstream(&pki, upstream_alpn).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Arc::new(AirlockCa::load_or_create(dir.path()).expect("ca"));
    let secrets = Arc::new(
        SecretSet::new(vec![
            secret("API_KEY", "real-api-value", API, false),
            secret("BODY_KEY", "real-body-value-longer", API, true),
            secret("OTHER_KEY", "real-other-value", OTHER, false),
        ])
        .expect("secrets"),
    );
    let sink_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sink_addr = sink_listener.local_addr().expect("addr");
    let sink = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = sink_listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let resolver = StaticResolver::new()
        .with(SINK, [sink_addr])
        .with(API, [upstream.addr])
        .with(OTHER, [upstream.addr])
        .with(PLAIN, [upstream.addr]);
    let roots = if trust_upstream {
        vec![pki.ca_der.clone()]
    } else {
        vec![test_pki(&[API]).ca_der]
    };
    let config = EgressConfig {
        vm_id: "vm-secrets".into(),
        allow: Arc::new(|name: &str| [API, OTHER, PLAIN, SINK].contains(&name)),
        resolver: Arc::new(resolver),
        allow_private_for_tests: true,
        secrets: Arc::clone(&secrets),
        ca: Some(Arc::clone(&ca)),
        upstream_roots: UpstreamRoots::Certificates(roots),
        ..EgressConfig::default()
    };
    let l80 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let l443 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let proxy = EgressProxy::serve(l80, l443, config).expect("serve");
    Setup {
        proxy,
        _sink: sink,
        secrets,
        ca,
        upstream,
        _dir: dir,
    }
}

/// A guest's TLS connection to the proxy as `name`, trusting Airlock's CA.
async fn guest_tls(
    setup: &Setup,
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(setup.ca.cert_der().clone()).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(setup.proxy.https_addr())
        .await
        .expect("connect");
    let server_name = ServerName::try_from(name.to_owned()).expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
}

/// Sends `request` and reads one response: (status line, body).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> (String, String) {
    within("exchange", async {
        stream.write_all(request).await.expect("send");
        let mut buf = Vec::new();
        let Some(end) = read_head(stream, &mut buf).await else {
            return (String::new(), String::new());
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let body = read_body(stream, &mut buf, content_length(&head)).await;
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
    .await
}

async fn settled(proxy: &EgressHandle) -> EgressStats {
    within("connections to end", async {
        loop {
            let stats = proxy.stats();
            if stats.connections_active == 0 {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn the_bound_host_receives_the_real_values_in_headers_and_marked_bodies_over_keep_alive() {
    // Arrange
    let setup = setup(&[b"http/1.1"], true).await;
    let api = setup.placeholder("API_KEY");
    let body_key = setup.placeholder("BODY_KEY");
    let mut tls = guest_tls(&setup, API, &[b"http/1.1"])
        .await
        .expect("handshake");

    // Act: three requests on one connection: headers, a chunked body with
    // the body secret split across chunks, a Content-Length body.
    let first = format!(
        "GET /v1/me HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {api}\r\nX-Api-Key: {api}\r\n\r\n"
    );
    let r1 = exchange(&mut tls, first.as_bytes()).await;
    let json = format!("{{\"key\":\"{body_key}\",\"not_body\":\"{api}\"}}");
    let (a, b) = json.split_at(30);
    let second = format!(
        "POST /v1/x HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let r2 = exchange(&mut tls, second.as_bytes()).await;
    let third = format!(
        "PUT /v1/y HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\n\r\n{body_key}",
        body_key.len()
    );
    let r3 = exchange(&mut tls, third.as_bytes()).await;

    // Assert
    for r in [&r1, &r2, &r3] {
        assert_eq!(r.0, "HTTP/1.1 200 OK", "{r:?}");
        assert_eq!(r.1, "ok");
    }
    let got = setup.received();
    assert_eq!(
        got.len(),
        3,
        "one upstream connection, three requests: {got:?}"
    );
    assert!(
        got[0]
            .head
            .contains("Authorization: Bearer real-api-value\r\n"),
        "{}",
        got[0].head
    );
    assert!(got[0].head.contains("X-Api-Key: real-api-value\r\n"));
    assert!(!got[0].head.contains("airlock-secret-"));
    let expected_body = format!("{{\"key\":\"real-body-value-longer\",\"not_body\":\"{api}\"}}");
    assert_eq!(String::from_utf8_lossy(&got[1].body), expected_body);
    assert!(got[1]
        .head
        .contains(&format!("Content-Length: {}\r\n", expected_body.len())));
    assert!(!got[1]
        .head
        .to_ascii_lowercase()
        .contains("transfer-encoding"));
    assert_eq!(got[2].body, b"real-body-value-longer");
    drop(tls);
    let stats = settled(&setup.proxy).await;
    assert_eq!(stats.connections_allowed, 1);
    assert_eq!(stats.secrets_blocked, 0);
}

#[tokio::test]
async fn a_placeholder_sent_to_another_intercepted_host_is_blocked_and_counted() {
    let setup = setup(&[b"http/1.1"], true).await;
    let api = setup.placeholder("API_KEY");
    let mut tls = guest_tls(&setup, OTHER, &[b"http/1.1"])
        .await
        .expect("handshake");

    let request =
        format!("GET / HTTP/1.1\r\nHost: other.test\r\nAuthorization: Bearer {api}\r\n\r\n");
    let (status, body) = exchange(&mut tls, request.as_bytes()).await;

    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert!(body.contains("secret placeholder"), "{body}");
    assert!(setup.received().is_empty(), "nothing reached the upstream");
    drop(tls);
    let stats = settled(&setup.proxy).await;
    assert_eq!(stats.secrets_blocked, 1);
    let blocks = setup.proxy.secret_blocks();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].host, OTHER);
    assert_eq!(blocks[0].secret, "API_KEY");
}

#[tokio::test]
async fn a_placeholder_in_the_url_or_a_body_to_a_host_it_is_not_bound_to_is_blocked() {
    let setup = setup(&[b"http/1.1"], true).await;
    let api = setup.placeholder("API_KEY");
    let mut tls = guest_tls(&setup, OTHER, &[b"http/1.1"])
        .await
        .expect("handshake");
    let (status, _) = exchange(
        &mut tls,
        format!("GET /?k={api} HTTP/1.1\r\nHost: other.test\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");

    let mut tls = guest_tls(&setup, OTHER, &[b"http/1.1"])
        .await
        .expect("handshake");
    let body = format!("x={api}");
    let (status, _) = exchange(
        &mut tls,
        format!(
            "POST / HTTP/1.1\r\nHost: other.test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert!(setup.received().is_empty());
    drop(tls);
    assert_eq!(settled(&setup.proxy).await.secrets_blocked, 2);
}

#[tokio::test]
async fn a_placeholder_over_plain_http_or_in_a_server_name_is_blocked_and_counted() {
    let setup = setup(&[b"http/1.1"], true).await;
    let api = setup.placeholder("API_KEY");

    // Plain HTTP to an allowed host, even the bound one: never substituted.
    let mut tcp = TcpStream::connect(setup.proxy.http_addr())
        .await
        .expect("connect");
    let (status, _) = exchange(
        &mut tcp,
        format!("GET / HTTP/1.1\r\nHost: api.test\r\nAuthorization: {api}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");

    // The placeholder as a label of the server name of a passthrough host.
    let sni = format!("{api}.plain.test");
    let refused = guest_tls(&setup, &sni, &[b"http/1.1"]).await;
    assert!(refused.is_err());

    let stats = settled(&setup.proxy).await;
    assert_eq!(stats.secrets_blocked, 2, "{stats:?}");
    let places: Vec<_> = setup
        .proxy
        .secret_blocks()
        .iter()
        .map(|b| b.place)
        .collect();
    assert_eq!(places, ["plain HTTP", "server name"]);
}

#[tokio::test]
async fn a_placeholder_in_a_later_plain_http_request_on_a_kept_alive_connection_is_cut() {
    let setup = setup(&[b"http/1.1"], true).await;
    let api = setup.placeholder("API_KEY");
    let mut tcp = TcpStream::connect(setup.proxy.http_addr())
        .await
        .expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: sink.test\r\n\r\n")
        .await
        .expect("first request");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let split = format!("GET /{api} HTTP/1.1\r\nHost: sink.test\r\n\r\n");
    let (a, b) = split.split_at(20);
    tcp.write_all(a.as_bytes()).await.expect("first half");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = tcp.write_all(b.as_bytes()).await;
    let stats = settled(&setup.proxy).await;
    assert_eq!(stats.secrets_blocked, 1, "{stats:?}");
}

#[tokio::test]
async fn a_host_header_other_than_the_server_name_is_refused() {
    let setup = setup(&[b"http/1.1"], true).await;
    let api = setup.placeholder("API_KEY");
    let mut tls = guest_tls(&setup, API, &[b"http/1.1"])
        .await
        .expect("handshake");

    let request = format!("GET / HTTP/1.1\r\nHost: other.test\r\nAuthorization: {api}\r\n\r\n");
    let (status, _) = exchange(&mut tls, request.as_bytes()).await;

    assert_eq!(status, "HTTP/1.1 421 Misdirected Request");
    assert!(setup.received().is_empty());
    drop(tls);
    let stats = settled(&setup.proxy).await;
    assert_eq!(stats.connections_denied, 1);
}

#[tokio::test]
async fn an_http2_only_upstream_is_refused_clearly() {
    let setup = setup(&[b"h2"], true).await;
    let result = guest_tls(&setup, API, &[b"h2", b"http/1.1"]).await;
    assert!(result.is_err(), "the guest's handshake is refused");
    let stats = settled(&setup.proxy).await;
    assert_eq!(stats.connections_failed, 1, "{stats:?}");
    assert!(setup.received().is_empty());
}

#[tokio::test]
async fn a_guest_offering_only_http2_is_refused_with_a_no_application_protocol_alert() {
    let setup = setup(&[b"http/1.1"], true).await;
    let result = guest_tls(&setup, API, &[b"h2"]).await;
    // The alert follows the ServerHello (TLS 1.3 encrypts it): it reaches
    // the guest only if the proxy's last vectored write sends both.
    let err = result.expect_err("the handshake is refused");
    assert!(
        err.to_string().contains("NoApplicationProtocol"),
        "the guest gets the alert, not a bare close: {err:?}"
    );
    let stats = settled(&setup.proxy).await;
    assert_eq!(stats.connections_denied, 1, "{stats:?}");
}

#[tokio::test]
async fn an_upstream_whose_certificate_is_not_trusted_gets_no_secret() {
    let setup = setup(&[b"http/1.1"], false).await;
    let result = guest_tls(&setup, API, &[b"http/1.1"]).await;
    assert!(result.is_err());
    let stats = settled(&setup.proxy).await;
    assert_eq!(stats.connections_failed, 1, "{stats:?}");
    assert!(setup.received().is_empty());
}

#[tokio::test]
async fn a_host_without_a_bound_secret_keeps_the_passthrough() {
    // plain.test has no secret: the guest's TLS reaches the upstream end
    // to end and sees the upstream's own certificate, not Airlock's.
    let setup = setup(&[b"http/1.1"], true).await;
    let result = guest_tls(&setup, PLAIN, &[b"http/1.1"]).await;
    let err = result.expect_err("Airlock's CA does not vouch for the upstream's certificate");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn secrets_without_a_ca_are_a_config_error() {
    let config = EgressConfig {
        vm_id: "vm".into(),
        secrets: Arc::new(SecretSet::new(vec![secret("K", "v", API, false)]).expect("secrets")),
        ..EgressConfig::default()
    };
    assert!(matches!(
        config.validate(),
        Err(EgressError::Config { field: "ca", .. })
    ));
}

/// Writes `request` in pieces cut at `cuts`, pausing between them so that
/// each piece reaches the proxy in its own read.
async fn send_in_pieces<S: AsyncWrite + Unpin>(stream: &mut S, request: &[u8], cuts: &[usize]) {
    let mut start = 0;
    for &cut in cuts.iter().chain([&request.len()]) {
        stream.write_all(&request[start..cut]).await.expect("send");
        stream.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(30)).await;
        start = cut;
    }
}

#[tokio::test]
async fn a_placeholder_split_across_segments_is_still_substituted_or_blocked() {
    let setup = setup(&[b"http/1.1"], true).await;
    let api = setup.placeholder("API_KEY");

    // To the bound host: substituted, wherever the cuts fall.
    let mut tls = guest_tls(&setup, API, &[b"http/1.1"])
        .await
        .expect("handshake");
    let request = format!("GET / HTTP/1.1\r\nHost: api.test\r\nAuthorization: {api}\r\n\r\n");
    let at = request.find(&api).expect("placeholder");
    send_in_pieces(&mut tls, request.as_bytes(), &[at + 3, at + 20, at + 40]).await;
    let (status, _) = exchange(&mut tls, b"").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(setup.received()[0]
        .head
        .contains("Authorization: real-api-value\r\n"));

    // To another host: blocked.
    let mut tls = guest_tls(&setup, OTHER, &[b"http/1.1"])
        .await
        .expect("handshake");
    let request = format!("GET / HTTP/1.1\r\nHost: other.test\r\nX-K: {api}\r\n\r\n");
    let at = request.find(&api).expect("placeholder");
    send_in_pieces(&mut tls, request.as_bytes(), &[at + 1, at + 30]).await;
    let (status, _) = exchange(&mut tls, b"").await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert_eq!(
        setup.received().len(),
        1,
        "nothing more reached the upstream"
    );
}

#[tokio::test]
async fn connect_and_http2_preface_requests_are_refused_on_an_intercepted_host() {
    let setup = setup(&[b"http/1.1"], true).await;
    for request in [
        "CONNECT other.test:443 HTTP/1.1\r\nHost: api.test\r\n\r\n".to_owned(),
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned(),
    ] {
        let mut tls = guest_tls(&setup, API, &[b"http/1.1"])
            .await
            .expect("handshake");
        let (status, _) = exchange(&mut tls, request.as_bytes()).await;
        assert!(status.starts_with("HTTP/1.1 4"), "{request:?}: {status}");
    }
    assert!(setup.received().is_empty());
}

#[tokio::test]
async fn a_base64_encoded_placeholder_is_neither_caught_nor_substituted() {
    // Documented (docs/secrets.md): only the placeholder's exact bytes are
    // matched; what leaves is an encoding of a worthless random string.
    let setup = setup(&[b"http/1.1"], true).await;
    let api = setup.placeholder("API_KEY");
    let encoded =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, api.as_bytes());
    let mut tls = guest_tls(&setup, OTHER, &[b"http/1.1"])
        .await
        .expect("handshake");
    let request = format!("GET / HTTP/1.1\r\nHost: other.test\r\nX-K: {encoded}\r\n\r\n");
    let (status, _) = exchange(&mut tls, request.as_bytes()).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let got = setup.received();
    assert!(got[0].head.contains(&encoded));
    assert!(!got[0].head.contains("real-"));
    drop(tls);
    assert_eq!(settled(&setup.proxy).await.secrets_blocked, 0);
}
