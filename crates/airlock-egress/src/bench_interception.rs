//! What interception costs a whole HTTPS request, for `cargo xtask bench`:
//! one proxy on loopback with a secret bound to one name and none to
//! another, both names served by one HTTPS upstream.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::ca::AirlockCa;
use crate::config::{EgressConfig, UpstreamRoots};
use crate::proxy::EgressProxy;
use crate::resolver::StaticResolver;
use crate::secret::{HostPattern, Secret, SecretSet, SecretValue};
use crate::EgressError;

/// The name with a secret bound to it: intercepted.
const SECRET_NAME: &str = "intercepted.bench.test";
/// The name without one: spliced.
const PLAIN_NAME: &str = "passthrough.bench.test";
/// The secret's value, which only the intercepted name's requests carry.
const REAL_VALUE: &[u8] = b"bench-real-value";
/// Deadline of one request (connect, handshakes, answer).
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Wall times, in ms, of whole HTTPS requests through the proxy: each a new
/// TCP connection, the TLS handshake(s), one `GET` carrying a placeholder
/// in a header, and its `200` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct InterceptionCost {
    /// Requests to a host without a bound secret (SNI read, bytes spliced,
    /// TLS end to end with the upstream).
    pub passthrough_ms: Vec<f64>,
    /// Requests to a host with a bound secret (the guest's TLS terminated
    /// with Airlock's CA, the request parsed, the placeholder replaced,
    /// the proxy's own TLS to the upstream).
    pub intercepted_ms: Vec<f64>,
}

/// Measures `requests` requests of each kind, taken in turns so that load
/// on the machine weighs on both alike, after one warm-up of each (the
/// intercepted name's leaf certificate is made on the first). Airlock's CA
/// is made in `ca_dir` (an empty directory the caller owns). Everything
/// runs on the current tokio runtime; use a release build for meaningful
/// numbers.
///
/// # Errors
/// [`EgressError::Measurement`] naming the step that failed (binding,
/// a handshake, a request past its 10 s deadline).
pub async fn measure_interception(
    ca_dir: &Path,
    requests: usize,
) -> Result<InterceptionCost, EgressError> {
    let pki = TestPki::new().map_err(|e| failed("making the upstream's test CA", e))?;
    let upstream = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| failed("binding the upstream", e))?;
    let upstream_addr = upstream
        .local_addr()
        .map_err(|e| failed("binding the upstream", e))?;
    let server = tokio::spawn(serve_upstream(upstream, Arc::clone(&pki.server)));
    let result = measure_against(ca_dir, &pki, upstream_addr, requests).await;
    server.abort();
    result
}

async fn measure_against(
    ca_dir: &Path,
    pki: &TestPki,
    upstream_addr: SocketAddr,
    requests: usize,
) -> Result<InterceptionCost, EgressError> {
    let ca = Arc::new(
        AirlockCa::load_or_create(ca_dir)
            .map_err(|e| failed("making Airlock's CA", std::io::Error::other(e)))?,
    );
    let host = HostPattern::parse("BENCH_KEY", SECRET_NAME)
        .map_err(|e| failed("binding the secret", std::io::Error::other(e)))?;
    let secrets = Arc::new(
        SecretSet::new(vec![Secret {
            name: "BENCH_KEY".into(),
            value: SecretValue::new(REAL_VALUE.to_vec()),
            hosts: vec![host],
            body: false,
        }])
        .map_err(|e| failed("binding the secret", std::io::Error::other(e)))?,
    );
    let placeholder = secrets
        .placeholder("BENCH_KEY")
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let config = EgressConfig {
        vm_id: "bench-interception".into(),
        allow: Arc::new(|name: &str| name == SECRET_NAME || name == PLAIN_NAME),
        resolver: Arc::new(
            StaticResolver::new()
                .with(SECRET_NAME, [upstream_addr])
                .with(PLAIN_NAME, [upstream_addr]),
        ),
        allow_private_for_tests: true,
        secrets,
        ca: Some(Arc::clone(&ca)),
        upstream_roots: UpstreamRoots::Certificates(vec![pki.ca_der.clone()]),
        ..EgressConfig::default()
    };
    let bind = |step| std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| failed(step, e));
    let proxy = EgressProxy::serve(bind("binding port 80")?, bind("binding port 443")?, config)?;
    let proxy_addr = proxy.https_addr();
    let plain = Client::new(proxy_addr, PLAIN_NAME, pki.ca_der.clone(), &placeholder)?;
    let intercepted = Client::new(proxy_addr, SECRET_NAME, ca.cert_der().clone(), &placeholder)?;
    let mut cost = InterceptionCost {
        passthrough_ms: Vec::with_capacity(requests),
        intercepted_ms: Vec::with_capacity(requests),
    };
    let measured = async {
        plain.request().await?;
        intercepted.request().await?;
        for _ in 0..requests {
            cost.passthrough_ms.push(plain.request().await?);
            cost.intercepted_ms.push(intercepted.request().await?);
        }
        Ok::<_, EgressError>(())
    }
    .await;
    proxy.stop().await;
    measured.map(|()| cost)
}

fn failed(step: &'static str, source: std::io::Error) -> EgressError {
    EgressError::Measurement { step, source }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The upstream's own CA, and a certificate for both names signed by it.
struct TestPki {
    ca_der: CertificateDer<'static>,
    server: Arc<rustls::ServerConfig>,
}

impl TestPki {
    fn new() -> std::io::Result<Self> {
        let ca_key = KeyPair::generate().map_err(std::io::Error::other)?;
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(std::io::Error::other)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(std::io::Error::other)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().map_err(std::io::Error::other)?;
        let cert = CertificateParams::new(vec![SECRET_NAME.to_owned(), PLAIN_NAME.to_owned()])
            .map_err(std::io::Error::other)?
            .signed_by(&key, &issuer)
            .map_err(std::io::Error::other)?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(std::io::Error::other)?;
        Ok(Self {
            ca_der: ca_cert.der().clone(),
            server: Arc::new(server),
        })
    }
}

/// Answers each request head on each connection, until aborted: `200 ok`
/// when it carries what that name must receive (the real value for the
/// intercepted name, the placeholder for the other), else `400`, so the
/// measurement checks the substitution it times. Each connection's task
/// ends with its connection (the client closes it after one answer).
async fn serve_upstream(listener: TcpListener, config: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    while let Ok((tcp, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let answer = async {
                let mut tls = acceptor.accept(tcp).await.ok()?;
                let expected: &[u8] = match tls.get_ref().1.server_name() {
                    Some(SECRET_NAME) => REAL_VALUE,
                    _ => b"Bearer airlock-secret-",
                };
                while let Some(head) = read_head(&mut tls).await {
                    let right = head.windows(expected.len()).any(|w| w == expected);
                    let answer: &[u8] = if right {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    } else {
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno"
                    };
                    tls.write_all(answer).await.ok()?;
                }
                Some(())
            };
            let _ = tokio::time::timeout(REQUEST_DEADLINE, answer).await;
        });
    }
}

/// Reads up to the end of one request or response head; `None` at the end
/// of the stream. The body, if any, is not read (none is sent here but
/// the upstream's `ok`, read by [`Client::request`]).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}

/// A guest's client for one name, trusting one root.
struct Client {
    proxy: SocketAddr,
    name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
    request: Vec<u8>,
}

impl Client {
    fn new(
        proxy: SocketAddr,
        name: &'static str,
        root: CertificateDer<'static>,
        placeholder: &str,
    ) -> Result<Self, EgressError> {
        let other = |e| failed("configuring the client", std::io::Error::other(e));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).map_err(other)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            proxy,
            name: ServerName::try_from(name)
                .map_err(|e| failed("configuring the client", std::io::Error::other(e)))?,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            request: format!(
                "GET /v1 HTTP/1.1\r\nHost: {name}\r\nAuthorization: Bearer {placeholder}\r\n\r\n"
            )
            .into_bytes(),
        })
    }

    /// One whole request; its wall time in ms.
    async fn request(&self) -> Result<f64, EgressError> {
        let started = Instant::now();
        let exchange = async {
            let tcp = TcpStream::connect(self.proxy)
                .await
                .map_err(|e| failed("connecting to the proxy", e))?;
            let mut tls = self
                .connector
                .connect(self.name.clone(), tcp)
                .await
                .map_err(|e| failed("the guest's TLS handshake", e))?;
            exchange(&mut tls, &self.request).await
        };
        match tokio::time::timeout(REQUEST_DEADLINE, exchange).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(failed(
                    "waiting for an answer",
                    std::io::ErrorKind::TimedOut.into(),
                ))
            }
        }
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    }
}

/// Sends `request` and reads a `200` answer with its 2-byte body.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> Result<(), EgressError> {
    stream
        .write_all(request)
        .await
        .map_err(|e| failed("sending the request", e))?;
    let head = read_head(stream).await.ok_or_else(|| {
        failed(
            "reading the answer",
            std::io::ErrorKind::UnexpectedEof.into(),
        )
    })?;
    if !head.starts_with(b"HTTP/1.1 200 ") {
        let status =
            String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or(&[])).into_owned();
        return Err(failed(
            "reading the answer",
            std::io::Error::other(format!("not a 200: {status}")),
        ));
    }
    let mut body = [0u8; 2];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| failed("reading the answer's body", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_kinds_of_request_are_measured_through_one_proxy() {
        let dir = tempfile::tempdir().expect("tempdir");

        let cost = measure_interception(dir.path(), 3).await.expect("measure");

        assert_eq!(cost.passthrough_ms.len(), 3);
        assert_eq!(cost.intercepted_ms.len(), 3);
        assert!(cost
            .passthrough_ms
            .iter()
            .chain(&cost.intercepted_ms)
            .all(|ms| *ms > 0.0 && ms.is_finite()));
    }
}
