//! The CA bundle a guest with a network trusts.
//!
//! Where the host's own outbound HTTPS passes a TLS-inspecting proxy (many
//! company networks), the certificates a guest sees are signed by that
//! proxy's CA, which only the host's system bundle holds: the guest's own
//! Debian bundle then fails with `CERTIFICATE_VERIFY_FAILED`. So every VM
//! with an allowlist network gets the host's system bundle (or the file
//! `--ca-bundle` names), written into its home as [`GUEST_CA_FILE`] right
//! after boot, and its processes are pointed at it ([`ca_env`]):
//! `SSL_CERT_FILE` (Python's `ssl`, `urllib`, OpenSSL), `REQUESTS_CA_BUNDLE`
//! (requests), `PIP_CERT` (pip), `NODE_EXTRA_CA_CERTS` (Node's `https`,
//! npm), `NPM_CONFIG_CAFILE` (npm) and `CURL_CA_BUNDLE` (curl). With
//! secrets the bundle ends with Airlock's CA (`docs/secrets.md`). The host bundle holds the public
//! roots too, so nothing else stops working. The bundle is never part of
//! an image, a layer or the repository.

use crate::error::{ExecError, InputError, PackageError};
pub use crate::spec::CaBundle;
use crate::vm::Vm;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The bundle's name in the guest home.
pub const GUEST_CA_FILE: &str = ".airlock-ca-bundle.pem";
/// The sandbox home of the guest images (`airlock-init`'s `SANDBOX_HOME`).
pub const GUEST_HOME: &str = airlock_protocol::abi::SANDBOX_HOME;
/// Largest bundle accepted (Debian's is about 220 KB).
pub const MAX_CA_BUNDLE_BYTES: usize = 8 * 1024 * 1024;
/// Where systems keep their bundle, first found wins (Debian and Ubuntu,
/// Fedora and RHEL, openSUSE, Alpine and others).
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
/// Deadline of the bundle's write into the guest.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

impl CaBundle {
    /// The file to copy in, if any (looks at the host's files).
    ///
    /// # Errors
    /// [`InputError::Invalid`] when [`CaBundle::File`] does not exist.
    pub fn resolve(&self) -> Result<Option<PathBuf>, InputError> {
        match self {
            CaBundle::GuestOnly => Ok(None),
            CaBundle::File(path) => {
                if path.is_file() {
                    Ok(Some(path.clone()))
                } else {
                    Err(InputError::invalid(
                        "ca_bundle",
                        format!("{} is not a readable file", path.display()),
                    ))
                }
            }
            CaBundle::System => {
                let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
                Ok(system_bundle(
                    from_env.as_deref(),
                    SYSTEM_BUNDLES.iter().map(Path::new),
                ))
            }
        }
    }
}

/// The first existing file of `env_file` then `candidates` (pure but for
/// the existence checks).
fn system_bundle<'a>(
    env_file: Option<&'a Path>,
    candidates: impl Iterator<Item = &'a Path>,
) -> Option<PathBuf> {
    env_file
        .into_iter()
        .chain(candidates)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
}

/// Checks that `bytes` is a PEM bundle of reasonable size.
///
/// # Errors
/// [`InputError::Invalid`] for `ca_bundle`, naming `path`.
pub fn check_bundle(path: &Path, bytes: &[u8]) -> Result<(), InputError> {
    let bad = |why: &str| InputError::invalid("ca_bundle", format!("{}: {why}", path.display()));
    if bytes.len() > MAX_CA_BUNDLE_BYTES {
        return Err(bad(&format!(
            "{} bytes is over the limit of {MAX_CA_BUNDLE_BYTES}",
            bytes.len()
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not a PEM text file"))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(())
}

/// The variables that point a guest's TLS clients at the bundle.
pub fn ca_env() -> BTreeMap<String, String> {
    let path = format!("{GUEST_HOME}/{GUEST_CA_FILE}");
    [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "PIP_CERT",
        "NODE_EXTRA_CA_CERTS",
        "NPM_CONFIG_CAFILE",
        "CURL_CA_BUNDLE",
    ]
    .into_iter()
    .map(|name| (name.to_owned(), path.clone()))
    .collect()
}

/// The bytes of the bundle `choice` resolves to, checked (`None`: no
/// bundle to copy in).
///
/// # Errors
/// [`InputError::Invalid`] for a missing or malformed bundle,
/// [`InputError::Unreadable`] when it cannot be read.
pub async fn read_bundle(choice: &CaBundle) -> Result<Option<Vec<u8>>, InputError> {
    let Some(path) = choice.resolve()? else {
        return Ok(None);
    };
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| InputError::Unreadable {
            field: "ca_bundle",
            source: airlock_sys_util::IoError::new("read the CA bundle", &path, e),
        })?;
    check_bundle(&path, &bytes)?;
    Ok(Some(bytes))
}

/// Copies the bundle `choice` resolves to into `vm` and returns the
/// variables to add to its processes' environment (empty when there is no
/// bundle to copy).
///
/// # Errors
/// As [`read_bundle`]; [`ExecError::Protocol`] when the write fails.
pub async fn install_bundle(
    vm: &Vm,
    choice: &CaBundle,
) -> Result<BTreeMap<String, String>, PackageError> {
    let Some(bytes) = read_bundle(choice).await? else {
        return Ok(BTreeMap::new());
    };
    vm.client()?
        .write_file(GUEST_CA_FILE, 0o644, &bytes, WRITE_TIMEOUT)
        .await
        .map_err(|source| ExecError::Protocol {
            vm_id: vm.id().to_owned(),
            source,
        })?;
    tracing::debug!(vm_id = vm.id(), "CA bundle copied in");
    Ok(ca_env())
}

/// `env` with the CA variables added where the caller set none of its own.
pub fn with_ca_env(
    mut env: BTreeMap<String, String>,
    ca: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    for (name, value) in ca {
        env.entry(name).or_insert(value);
    }
    env
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    const PEM: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn the_first_existing_bundle_wins_the_environment_first() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a.pem"), tmp.path().join("b.pem"));
        std::fs::write(&b, PEM).unwrap();
        let missing = tmp.path().join("missing.pem");
        let found = system_bundle(None, [missing.as_path(), b.as_path()].into_iter());
        assert_eq!(found.as_deref(), Some(b.as_path()));
        std::fs::write(&a, PEM).unwrap();
        let found = system_bundle(Some(&a), [b.as_path()].into_iter());
        assert_eq!(found.as_deref(), Some(a.as_path()));
        assert_eq!(system_bundle(None, [missing.as_path()].into_iter()), None);
    }

    #[test]
    fn an_explicit_bundle_must_exist_and_guest_only_copies_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let err = CaBundle::File(tmp.path().join("nope.pem"))
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        assert_eq!(CaBundle::GuestOnly.resolve().unwrap(), None);
        let file = tmp.path().join("ca.pem");
        std::fs::write(&file, PEM).unwrap();
        assert_eq!(CaBundle::File(file.clone()).resolve().unwrap(), Some(file));
    }

    #[test]
    fn only_pem_bundles_are_copied_in() {
        let path = Path::new("/x.pem");
        check_bundle(path, PEM).unwrap();
        assert!(check_bundle(path, b"not a certificate").is_err());
        assert!(check_bundle(path, &[0xff, 0xfe]).is_err());
        let huge = vec![b'a'; MAX_CA_BUNDLE_BYTES + 1];
        assert!(check_bundle(path, &huge).is_err());
    }

    #[test]
    fn every_tls_client_is_pointed_at_the_bundle_and_callers_win() {
        let env = ca_env();
        for name in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "PIP_CERT",
            "NODE_EXTRA_CA_CERTS",
            "NPM_CONFIG_CAFILE",
        ] {
            assert_eq!(env[name], "/home/sandbox/.airlock-ca-bundle.pem", "{name}");
            airlock_protocol::check_env(name, &env[name]).unwrap();
        }
        let mine = BTreeMap::from([("SSL_CERT_FILE".to_owned(), "/mine.pem".to_owned())]);
        let merged = with_ca_env(mine, env);
        assert_eq!(merged["SSL_CERT_FILE"], "/mine.pem");
        assert_eq!(merged["PIP_CERT"], "/home/sandbox/.airlock-ca-bundle.pem");
    }
}
