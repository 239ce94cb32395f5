//! TLS for the E2B listener's host-name mode (`--e2b-domain`): E2B's SDKs
//! build `https://api.<domain>` and `https://<port>-<id>.<domain>` URLs,
//! so the listener answers TLS for those names.
//!
//! Two sources of certificates:
//! - the operator's chain and key (`--e2b-cert`, `--e2b-key`), served for
//!   every name (a wildcard `*.<domain>` that also names `api.<domain>`);
//! - else a local CA under the cache (`<cache>/e2b/`, its key mode 0600,
//!   made on first use by the egress crate's [`AirlockCa`]), which signs a
//!   leaf per name asked for, only for names under the domain. Its
//!   certificate is written to `<cache>/e2b/ca.pem` for clients to trust
//!   (`SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`). A wildcard leaf would not
//!   do for `localhost`: OpenSSL refuses `*.localhost` (a wildcard needs
//!   two labels after it).
//!
//! The listener tells TLS from plain HTTP by the connection's first byte
//! (`listener.rs`), so the headers mode keeps working on the same port.
//! ALPN offers `http/1.1` only: the listener serves HTTP/1.1.
//!
//! This module does not route: the host name is read from the request's
//! `Host` header as for plain HTTP (`e2b/mod.rs`).

use crate::error::{Result, ServerError};
use airlock_egress::AirlockCa;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The local CA's directory under the cache.
pub const E2B_CA_DIR: &str = "e2b";
/// The local CA's certificate, for clients to trust, in [`E2B_CA_DIR`].
pub const E2B_CA_CERT_FILE: &str = "ca.pem";
/// The local CA's certificate name, what clients show.
const E2B_CA_COMMON_NAME: &str = "Airlock E2B listener CA";
/// The only application protocol offered.
const HTTP11: &[u8] = b"http/1.1";

/// Where the certificates of the E2B listener's TLS come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// The operator's chain and key files (PEM).
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// A local CA in this directory (`<cache>/e2b`).
    LocalCa(PathBuf),
}

/// The E2B listener's TLS, ready to accept: the acceptor and, for a local
/// CA, the certificate file clients trust.
#[derive(Clone)]
pub struct ListenerTls {
    /// Accepts a connection's handshake.
    pub acceptor: TlsAcceptor,
    /// `<cache>/e2b/ca.pem` for a local CA; `None` for the operator's
    /// certificate.
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("ca_cert", &self.ca_cert)
            .finish_non_exhaustive()
    }
}

impl TlsSource {
    /// The domain of `config` and where its TLS certificates come from:
    /// the operator's files, else a local CA under the cache. `None`
    /// without a domain (no TLS).
    pub fn of(config: &crate::config::E2bConfig) -> Option<(String, TlsSource)> {
        let domain = config.domain.clone()?;
        let source = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => TlsSource::LocalCa(airlock::cache_dir().join(E2B_CA_DIR)),
        };
        Some((domain, source))
    }
}

impl ListenerTls {
    /// Builds the TLS of `domain` from `source`. Blocking file work (and,
    /// the first time, key generation): call it inside `spawn_blocking`.
    ///
    /// # Errors
    /// [`ServerError::Tls`] naming the file and what is wrong with it.
    pub fn build(domain: &str, source: &TlsSource) -> Result<Self> {
        let (resolver, ca_cert): (Arc<dyn ResolvesServerCert>, _) = match source {
            TlsSource::Files { cert, key } => (Arc::new(Fixed(load_files(cert, key)?)), None),
            TlsSource::LocalCa(dir) => {
                let ca = AirlockCa::load_or_create_named(dir, E2B_CA_COMMON_NAME).map_err(|e| {
                    ServerError::Tls {
                        path: dir.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let ca_cert = dir.join(E2B_CA_CERT_FILE);
                write_public(&ca_cert, ca.cert_pem())?;
                let resolver = PerName {
                    ca,
                    domain: domain.to_ascii_lowercase(),
                };
                (Arc::new(resolver), Some(ca_cert))
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServerError::Tls {
                path: PathBuf::new(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![HTTP11.to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            ca_cert,
        })
    }
}

/// Reads the operator's chain and key and checks that they belong
/// together.
fn load_files(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>> {
    let bad = |path: &Path, reason: String| ServerError::Tls {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "no CERTIFICATE block in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| bad(key, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| bad(key, format!("it is not the key of {}: {e}", cert.display())))?;
    Ok(Arc::new(certified))
}

/// Writes the CA certificate for clients (mode 0644), whole: written
/// aside, then renamed over.
fn write_public(path: &Path, pem: &str) -> Result<()> {
    let aside = path.with_extension(format!("pem.{}", std::process::id()));
    std::fs::write(&aside, pem)
        .and_then(|()| std::fs::rename(&aside, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&aside);
            ServerError::Tls {
                path: path.to_owned(),
                reason: format!("cannot write it: {e}"),
            }
        })
}

/// The operator's certificate, for every name.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// A local CA's leaf for each name under the domain the client asks for;
/// `api.<domain>`'s for a client that names none. A name outside the
/// domain gets no certificate (the handshake fails): the CA signs only
/// what the listener serves.
#[derive(Debug)]
struct PerName {
    ca: AirlockCa,
    domain: String,
}

impl PerName {
    fn name_for(&self, asked: Option<&str>) -> Option<String> {
        let Some(asked) = asked else {
            return Some(format!("api.{}", self.domain));
        };
        let asked = asked.to_ascii_lowercase();
        serves(&asked, &self.domain).then_some(asked)
    }
}

/// Whether the listener answers TLS for `name`: the domain itself or one
/// label under it (`api`, `<port>-<id>`).
fn serves(name: &str, domain: &str) -> bool {
    if name == domain {
        return true;
    }
    name.strip_suffix(domain)
        .and_then(|head| head.strip_suffix('.'))
        .is_some_and(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl ResolvesServerCert for PerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = self.name_for(hello.server_name())?;
        match self.ca.leaf_for(&name) {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                tracing::warn!(name, error = %e, "E2B listener: no certificate for a name");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_ca_serves_the_domain_and_one_label_under_it_only() {
        let d = "sandboxes.test";
        assert!(serves("sandboxes.test", d));
        assert!(serves("api.sandboxes.test", d));
        assert!(serves("49999-s-n1-0a1b.sandboxes.test", d));
        assert!(!serves("a.b.sandboxes.test", d));
        assert!(!serves("evilsandboxes.test", d));
        assert!(!serves(".sandboxes.test", d));
        assert!(!serves("example.com", d));
        assert!(!serves("x_y.sandboxes.test", d));
    }

    #[test]
    fn a_local_ca_writes_its_certificate_for_clients_and_keeps_its_key_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("e2b");
        let tls =
            ListenerTls::build("localhost", &TlsSource::LocalCa(ca_dir.clone())).expect("built");
        let cert = tls.ca_cert.expect("a local CA's certificate");
        let text = std::fs::read_to_string(&cert).expect("ca.pem");
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
        assert!(!text.contains("PRIVATE KEY"), "the key stays out of ca.pem");
        // Built again (a restart): the same CA, so clients keep trusting it.
        let again = ListenerTls::build("localhost", &TlsSource::LocalCa(ca_dir)).expect("again");
        let again = std::fs::read_to_string(again.ca_cert.expect("cert")).expect("ca.pem");
        assert_eq!(text, again);
    }

    #[test]
    fn the_operators_files_are_checked_with_the_path_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "not a certificate").expect("write");
        std::fs::write(&key, "not a key").expect("write");
        let source = TlsSource::Files {
            cert: cert.clone(),
            key,
        };
        let err = ListenerTls::build("example.com", &source).expect_err("garbage");
        assert!(err.to_string().contains("c.pem"), "{err}");
    }

    #[test]
    fn a_certificate_with_another_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let make = |name: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
                .expect("params")
                .self_signed(&key)
                .expect("cert");
            (cert.pem(), key.serialize_pem())
        };
        let (cert_a, _) = make("*.example.com");
        let (_, key_b) = make("*.example.com");
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, cert_a).expect("write");
        std::fs::write(&key, key_b).expect("write");
        let err = ListenerTls::build("example.com", &TlsSource::Files { cert, key })
            .expect_err("mismatch");
        assert!(err.to_string().contains("not the key"), "{err}");
    }

    /// One request over `io`; the answer's first line.
    async fn first_line<S>(mut io: S, host: &str) -> String
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!("GET /hello HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        io.write_all(request.as_bytes()).await.expect("send");
        let mut answer = Vec::new();
        io.read_to_end(&mut answer).await.expect("read");
        let text = String::from_utf8_lossy(&answer).into_owned();
        assert!(text.ends_with("hi"), "{text}");
        text.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn one_port_serves_tls_by_name_to_a_client_trusting_ca_pem_and_plain_http_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = ListenerTls::build("localhost", &TlsSource::LocalCa(dir.path().join("e2b")))
            .expect("built");
        let ca_pem = std::fs::read(tls.ca_cert.as_ref().expect("ca.pem")).expect("read");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let router = axum::Router::new().route("/hello", axum::routing::get(|| async { "hi" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(crate::listener::serve_tls(
            tcp,
            router,
            crate::config::ListenerConfig::default(),
            crate::metrics::Metrics::new(),
            Some(tls.acceptor.clone()),
            async move {
                let _ = stopped.await;
            },
        ));
        // A client that trusts only ca.pem, as the SDKs do with
        // SSL_CERT_FILE, for a sandbox's name and the API's.
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            roots.add(cert.expect("pem")).expect("root");
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        for name in ["api.localhost", "49999-s-n1-0a1b.localhost"] {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let server_name =
                rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
            let stream = connector
                .connect(server_name, tcp)
                .await
                .expect("handshake");
            assert_eq!(first_line(stream, name).await, "HTTP/1.1 200 OK");
        }
        // A name outside the domain gets no certificate.
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let outside = rustls::pki_types::ServerName::try_from("example.com").expect("name");
        assert!(connector.connect(outside, tcp).await.is_err());
        // Plain HTTP on the same port.
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert_eq!(first_line(tcp, "127.0.0.1").await, "HTTP/1.1 200 OK");
        let _ = stop.send(());
        served.await.expect("the listener ends");
    }
}
