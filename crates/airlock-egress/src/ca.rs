//! Airlock's certificate authority: the key the proxy signs its
//! per-host leaf certificates with when it terminates a guest's TLS for a
//! host a secret is bound to.
//!
//! The key is made on first use in a directory the caller names (the
//! cache), in one file of mode 0600 that also holds the CA certificate,
//! and loaded after. It never enters a VM: guests get the certificate only
//! ([`AirlockCa::cert_pem`]). Leaf certificates (ECDSA P-256, valid for the
//! one name, a week) are made on demand and kept per name.
//!
//! Certificates are made with `rcgen` (rustls' own X.509 generator): the
//! DER encoding of extensions, key identifiers and signatures is exactly
//! what a hand-written generator would get wrong.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// The file, in the directory given to [`AirlockCa::load_or_create`], that
/// holds the CA's private key and certificate (PEM, mode 0600).
pub const CA_FILE_NAME: &str = "airlock-ca.pem";
/// The CA certificate's common name (what a guest's tools show).
pub const CA_COMMON_NAME: &str = "Airlock sandbox egress CA";
/// Most leaf certificates kept in memory; past it the cache starts again.
const MAX_CACHED_LEAVES: usize = 1024;
/// How long a leaf is valid.
const LEAF_VALIDITY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// Age past which a kept leaf is made again: well before it expires, so a
/// process that runs for weeks never hands out an expired one.
const LEAF_RENEW_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Why the CA cannot be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading, writing or creating a file or directory failed.
    #[error("Airlock CA: cannot {action} {}: {source}; check the cache directory's permissions", path.display())]
    Io {
        /// What it was doing.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The CA file exists but is not what this crate writes.
    #[error("Airlock CA: {} is not a valid CA file ({reason}); remove it and a new CA is made (guests then trust the new one)", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The CA file can be read by other users.
    #[error("Airlock CA: {} has mode {mode:o}; it holds a private key and must be 0600 (chmod 600 it)", path.display())]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Making a certificate failed.
    #[error("Airlock CA: cannot make a certificate for {name}: {reason}")]
    Certificate {
        /// For which name.
        name: String,
        /// rcgen's or rustls' error.
        reason: String,
    },
}

/// The CA: its signing key, its certificate, and the leaves made so far.
pub struct AirlockCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    leaves: Mutex<HashMap<String, Leaf>>,
}

/// A leaf kept in the cache, with when it was made.
struct Leaf {
    made: std::time::Instant,
    key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for AirlockCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AirlockCa")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The CA's fixed parameters. Fixed so that the issuer rebuilt from the
/// stored key names exactly the certificate stored beside it.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Airlock");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    params
}

impl AirlockCa {
    /// Loads the CA from `dir`, or makes it there (and `dir`, mode 0700)
    /// on first use. Blocking file work: from async code call it inside
    /// `spawn_blocking`.
    ///
    /// Two processes making it at once is safe: the file appears whole
    /// (written aside, then hard-linked into place, which fails if it
    /// exists) and the loser loads the winner's.
    ///
    /// # Errors
    /// [`CaError`] naming the file and what to do.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        Self::load_or_create_named(dir, CA_COMMON_NAME)
    }

    /// As [`AirlockCa::load_or_create`], for a CA whose certificate is
    /// named `common_name` (what clients show): another use of the same
    /// machinery, such as the E2B listener's local CA, with a key of its
    /// own in a directory of its own. The name must be the same at every
    /// load of one directory.
    ///
    /// # Errors
    /// [`CaError`] naming the file and what to do.
    pub fn load_or_create_named(dir: &Path, common_name: &str) -> Result<Self, CaError> {
        let path = dir.join(CA_FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => return Self::load(&path, &text, common_name),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CaError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
            action: "create",
            path: dir.to_owned(),
            source,
        })?;
        let key = KeyPair::generate().map_err(|e| CaError::Certificate {
            name: common_name.into(),
            reason: e.to_string(),
        })?;
        let cert = ca_params(common_name)
            .self_signed(&key)
            .map_err(|e| CaError::Certificate {
                name: common_name.into(),
                reason: e.to_string(),
            })?;
        let text = format!("{}{}", key.serialize_pem(), cert.pem());
        let aside = dir.join(format!(".{CA_FILE_NAME}.{}", std::process::id()));
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io {
                action,
                path,
                source,
            }
        };
        {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&aside)
                .map_err(io("create", &aside))?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io("write", &aside))?;
        }
        let linked = std::fs::hard_link(&aside, &path);
        let _ = std::fs::remove_file(&aside);
        match linked {
            Ok(()) => Self::load(&path, &text, common_name),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
                Self::load(&path, &text, common_name)
            }
            Err(source) => Err(CaError::Io {
                action: "create",
                path,
                source,
            }),
        }
    }

    fn load(path: &Path, text: &str, common_name: &str) -> Result<Self, CaError> {
        let corrupt = |reason: &str| CaError::Corrupt {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let mode = std::fs::metadata(path)
            .map_err(|source| CaError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            })?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(CaError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let cert_start = text
            .find("-----BEGIN CERTIFICATE-----")
            .ok_or_else(|| corrupt("no certificate"))?;
        let (key_pem, cert_pem) = text.split_at(cert_start);
        let key = KeyPair::from_pem(key_pem).map_err(|e| corrupt(&e.to_string()))?;
        let cert_der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| corrupt(&format!("certificate: {e}")))?;
        Ok(AirlockCa {
            issuer: Issuer::new(ca_params(common_name), key),
            cert_pem: cert_pem.to_owned(),
            cert_der,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate in PEM, what guests add to their trust store.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The leaf certificate and key for `name` (a validated DNS name),
    /// made on first use and kept; made again once a day, so a kept leaf
    /// is never near its end.
    ///
    /// # Errors
    /// [`CaError::Certificate`].
    pub fn leaf_for(&self, name: &str) -> Result<Arc<CertifiedKey>, CaError> {
        if let Some(leaf) = self.cache().get(name) {
            if leaf.made.elapsed() < LEAF_RENEW_AFTER {
                return Ok(Arc::clone(&leaf.key));
            }
        }
        let key = Arc::new(self.make_leaf(name)?);
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED_LEAVES {
            cache.clear();
        }
        cache.insert(
            name.to_owned(),
            Leaf {
                made: std::time::Instant::now(),
                key: Arc::clone(&key),
            },
        );
        Ok(key)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Leaf>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.leaves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn make_leaf(&self, name: &str) -> Result<CertifiedKey, CaError> {
        let fail = |reason: String| CaError::Certificate {
            name: name.to_owned(),
            reason,
        };
        let mut params =
            CertificateParams::new(vec![name.to_owned()]).map_err(|e| fail(e.to_string()))?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + LEAF_VALIDITY;
        let key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| fail(e.to_string()))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .map_err(|e| fail(e.to_string()))?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            signing,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_with_mode_0600_and_loaded_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = AirlockCa::load_or_create(&dir.path().join("ca")).expect("made");
        let path = dir.path().join("ca").join(CA_FILE_NAME);
        let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = AirlockCa::load_or_create(&dir.path().join("ca")).expect("loaded");
        assert_eq!(first.cert_pem(), again.cert_pem());
        assert!(first.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("ca"))
            .expect("dir")
            .collect();
        assert_eq!(leftovers.len(), 1, "only the CA file remains");
    }

    #[test]
    fn a_ca_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        AirlockCa::load_or_create(dir.path()).expect("made");
        let path = dir.path().join(CA_FILE_NAME);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            AirlockCa::load_or_create(dir.path()),
            Err(CaError::TooOpen { mode: 0o644, .. })
        ));
    }

    #[test]
    fn a_garbled_ca_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CA_FILE_NAME);
        std::fs::write(&path, "not pem").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = AirlockCa::load_or_create(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains("remove it"), "{err}");
    }

    #[test]
    fn leaves_are_kept_per_name_and_verify_against_the_ca_after_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = AirlockCa::load_or_create(dir.path()).expect("made");
        let a = made.leaf_for("api.example.com").expect("leaf");
        let b = made.leaf_for("api.example.com").expect("leaf");
        assert!(Arc::ptr_eq(&a, &b));
        // A leaf signed by the reloaded CA verifies against the stored
        // certificate: the rebuilt issuer names the same CA.
        let reloaded = AirlockCa::load_or_create(dir.path()).expect("loaded");
        let leaf = reloaded.leaf_for("api.example.com").expect("leaf");
        assert!(
            verifies(&made, &leaf, "api.example.com"),
            "the leaf verifies against the CA"
        );
        assert!(!verifies(&made, &leaf, "other.example.com"));
    }

    #[test]
    fn a_named_ca_is_its_own_and_its_reloaded_leaves_verify_against_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let named = AirlockCa::load_or_create_named(dir.path(), "Test listener CA").expect("made");
        let egress = tempfile::tempdir().expect("tempdir");
        let default = AirlockCa::load_or_create(egress.path()).expect("made");
        assert_ne!(named.cert_pem(), default.cert_pem());
        let reloaded =
            AirlockCa::load_or_create_named(dir.path(), "Test listener CA").expect("again");
        let leaf = reloaded.leaf_for("api.localhost").expect("leaf");
        assert!(verifies(&named, &leaf, "api.localhost"));
        assert!(!verifies(&default, &leaf, "api.localhost"));
    }

    /// Whether `leaf` verifies for `name` against `ca` as its only root.
    fn verifies(ca: &AirlockCa, leaf: &CertifiedKey, name: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            verifier.as_ref(),
            &leaf.cert[0],
            &leaf.cert[1..],
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .is_ok()
    }
}
