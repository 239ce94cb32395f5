//! The TLS settings of intercepted connections (hosts with a bound
//! secret): the guest side answered with Airlock's CA, the upstream side
//! verified against the host's trust store or the configured roots, both
//! offering ALPN `http/1.1` only.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::ca::AirlockCa;
use super::config::UpstreamRoots;
use super::secret::SecretSet;

/// The only application protocol offered to both sides.
const HTTP11: &[u8] = b"http/1.1";

/// What the intercepting path needs beyond the proxy's config, built once
/// per proxy.
pub(crate) struct InterceptTls {
    pub(crate) secrets: Arc<SecretSet>,
    pub(crate) server: Arc<rustls::ServerConfig>,
    pub(crate) client: Arc<rustls::ClientConfig>,
}

/// Answers every ClientHello with the CA's leaf for its server name.
#[derive(Debug)]
struct LeafResolver(Arc<AirlockCa>);

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        match self.0.leaf_for(name) {
            Ok(leaf) => Some(leaf),
            Err(err) => {
                tracing::warn!(name, error = %err, "no leaf certificate for an intercepted name");
                None
            }
        }
    }
}

impl InterceptTls {
    /// Builds the TLS configs: the guest side signed by `ca`, the upstream
    /// side verified against `roots`.
    pub(crate) fn new(
        secrets: Arc<SecretSet>,
        ca: Arc<AirlockCa>,
        roots: &UpstreamRoots,
    ) -> Result<Self, String> {
        let roots = load_roots(roots)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = |e: rustls::Error| e.to_string();
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(LeafResolver(ca)));
        server.alpn_protocols = vec![HTTP11.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![HTTP11.to_vec()];
        Ok(InterceptTls {
            secrets,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// Reads the trust store for intercepted upstreams.
fn load_roots(roots: &UpstreamRoots) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let certs: Vec<CertificateDer<'static>> = match roots {
        UpstreamRoots::System => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(format!(
                    "no CA certificate found in the host's trust store ({:?}); install ca-certificates or pass a CA bundle",
                    found.errors
                ));
            }
            found.certs
        }
        UpstreamRoots::PemFile(path) => CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read the CA bundle {}: {e}", path.display()))?,
        UpstreamRoots::Certificates(certs) => certs.clone(),
    };
    let mut store = rustls::RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err("the CA bundle holds no usable certificate".into());
    }
    Ok(store)
}
