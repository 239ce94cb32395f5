//! Per-tenant secrets kept by the server (`docs/secrets.md`): a name, a
//! value, the hosts it may go to and whether bodies are substituted too.
//! Runs and sessions name them (`"secrets": ["NAME"]`); the server turns
//! the names into the sandbox spec's [`Secret`]s, so the VM gets only a
//! placeholder and the egress proxy substitutes the value.
//!
//! The store is one JSON file (default `<cache>/server/secrets.json`),
//! written whole to a temporary file and renamed, mode 0600. Each value is
//! sealed with ChaCha20-Poly1305 (`ring`) under the operator's 256-bit key
//! ([`SecretsKey`]: a file or `AIRLOCK_SECRETS_KEY`), with a random 96-bit
//! nonce per value; the associated data binds the ciphertext to its
//! tenant, name, hosts and body flag, so an edit of the file cannot move a
//! value to another tenant or host (it fails to open). A `key_check` field
//! sealed when the file is made tells a wrong key at once.
//!
//! The file is the only state: every call reads it, and a change is a
//! read, modify, write under an exclusive lock (`secrets.json.lock`,
//! waited for at most [`LOCK_DEADLINE`]), so `airlock serve secrets set`
//! and a running server see each other's changes without a restart.
//! Calls do blocking file work: async callers run them on a blocking
//! thread ([`SecretStore::blocking`]).
//!
//! Values are never logged and never answered: [`SecretInfo`] has none,
//! and the value types' `Debug` is redacted.

use crate::error::{Result, ServerError};
use airlock::spec::{HostPattern, Secret, SecretValue};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The environment variable that may hold the store's key (64 hex digits
/// or base64 of 32 bytes), instead of `secrets_key_file`.
pub const KEY_ENV: &str = "AIRLOCK_SECRETS_KEY";
/// Longest wait for the store's lock.
pub const LOCK_DEADLINE: Duration = Duration::from_secs(5);
/// The plaintext of the `key_check` field.
const KEY_CHECK: &[u8] = b"airlock secrets store v1";
/// The store file's format version.
const VERSION: u32 = 1;

/// The default store file: `<cache>/server/secrets.json`.
pub fn default_secrets_file() -> PathBuf {
    airlock::cache_dir().join("server").join("secrets.json")
}

/// The store's 256-bit key, ready for ChaCha20-Poly1305. `Debug` shows
/// none of it.
#[derive(Clone)]
pub struct SecretsKey(std::sync::Arc<LessSafeKey>);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(<redacted>)")
    }
}

impl SecretsKey {
    /// Parses a key: 64 hex digits or the base64 of 32 bytes (surrounding
    /// whitespace ignored). `source` names where it came from in errors.
    ///
    /// # Errors
    /// [`ServerError::Secrets`] saying how to make a key.
    pub fn parse(source: &str, text: &str) -> Result<Self> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                secrets_error(
                    source,
                    "the secrets key must be 32 bytes as 64 hex digits or base64; make one with `openssl rand -hex 32`",
                )
            })?;
        Self::from_bytes(&bytes).ok_or_else(|| secrets_error(source, "the cipher refused the key"))
    }

    /// The key of 32 bytes; `None` for another length.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).ok()?;
        Some(Self(std::sync::Arc::new(LessSafeKey::new(unbound))))
    }

    /// Reads a key file, refused when other users may read it.
    ///
    /// # Errors
    /// [`ServerError::Secrets`] for an unreadable, too open or malformed
    /// file.
    pub fn read_file(path: &Path) -> Result<Self> {
        let source = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| secrets_error(&source, e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(secrets_error(
                &source,
                format!(
                    "the secrets key file is readable by other users (mode {:o}): `chmod 600 {source}`",
                    meta.permissions().mode() & 0o777
                ),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| secrets_error(&source, e))?;
        Self::parse(&source, &text)
    }

    /// The key of a server: its key file, else `env` (the value of
    /// [`KEY_ENV`]); `None` when neither is given (the feature is off).
    ///
    /// # Errors
    /// [`ServerError::Secrets`] when both are given, or for a bad key.
    pub fn of(file: Option<&Path>, env: Option<&str>) -> Result<Option<Self>> {
        match (file, env) {
            (Some(path), Some(_)) => Err(secrets_error(
                &path.display().to_string(),
                format!("both secrets_key_file and ${KEY_ENV} are set: give the key once"),
            )),
            (Some(path), None) => Self::read_file(path).map(Some),
            (None, Some(text)) => Self::parse(KEY_ENV, text).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// A sealed value: nonce and ciphertext with its tag, both base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    nonce: String,
    ciphertext: String,
}

fn seal(key: &SecretsKey, aad: &[u8], plaintext: &[u8]) -> Result<Sealed> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let mut in_out = plaintext.to_vec();
    key.0
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut in_out,
        )
        .map_err(|_| ServerError::internal("seal a secret", "the cipher refused"))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Sealed {
        nonce: b64.encode(nonce),
        ciphertext: b64.encode(in_out),
    })
}

/// Opens `sealed`; `None` when the key or the associated data is not the
/// one it was sealed with (or the file was altered).
fn open(key: &SecretsKey, aad: &[u8], sealed: &Sealed) -> Option<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let nonce: [u8; NONCE_LEN] = b64.decode(&sealed.nonce).ok()?.try_into().ok()?;
    let mut in_out = b64.decode(&sealed.ciphertext).ok()?;
    let plain = key
        .0
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut in_out,
        )
        .ok()?;
    Some(plain.to_vec())
}

/// One stored secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    tenant: String,
    name: String,
    hosts: Vec<String>,
    body: bool,
    created_unix: u64,
    updated_unix: u64,
    value: Sealed,
}

impl Entry {
    /// What the value's seal is bound to: every field but the dates.
    fn aad(&self) -> Vec<u8> {
        let mut aad = format!("airlock-secret-v1\0{}\0{}\0", self.tenant, self.name).into_bytes();
        for host in &self.hosts {
            aad.extend_from_slice(host.as_bytes());
            aad.push(0);
        }
        aad.push(u8::from(self.body));
        aad
    }

    fn info(&self) -> SecretInfo {
        SecretInfo {
            name: self.name.clone(),
            hosts: self.hosts.clone(),
            body: self.body,
            created_unix: self.created_unix,
            updated_unix: self.updated_unix,
        }
    }
}

/// The store file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    key_check: Sealed,
    #[serde(default)]
    secrets: Vec<Entry>,
}

/// What is shown of a secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretInfo {
    /// The name (the variable the sandbox sees).
    pub name: String,
    /// The hosts the value may go to.
    pub hosts: Vec<String>,
    /// Whether the value is substituted in request bodies too.
    pub body: bool,
    /// When it was first set (seconds since the epoch).
    pub created_unix: u64,
    /// When its value or hosts last changed (seconds since the epoch).
    pub updated_unix: u64,
}

/// A secret to store: what `PUT /v1/secrets/{name}` and `airlock serve
/// secrets set` give.
#[derive(Debug, Clone)]
pub struct NewSecret {
    /// The name.
    pub name: String,
    /// The value (`Debug` redacted).
    pub value: SecretValue,
    /// The hosts, as given (`api.example.com`, `*.example.com`).
    pub hosts: Vec<String>,
    /// Substitute in bodies too.
    pub body: bool,
}

impl NewSecret {
    /// The checked secret: name, value and hosts as the library checks
    /// them; hosts normalized.
    ///
    /// # Errors
    /// [`ServerError::BadRequest`] naming the secret (never its value).
    fn to_secret(&self) -> Result<Secret> {
        let hosts = self
            .hosts
            .iter()
            .map(|h| HostPattern::parse(&self.name, h.trim()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ServerError::bad_request(e.to_string()))?;
        let secret = Secret {
            name: self.name.clone(),
            value: self.value.clone(),
            hosts,
            body: self.body,
        };
        secret
            .validate()
            .map_err(|e| ServerError::bad_request(e.to_string()))?;
        Ok(secret)
    }
}

/// Whether a secret was made or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// It did not exist.
    Created,
    /// It replaced one of the same name.
    Replaced,
}

/// The secrets store: a file and its key. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SecretStore {
    path: PathBuf,
    key: SecretsKey,
}

impl SecretStore {
    /// A store at `path` under `key`; checks an existing file opens with
    /// the key (every value, so a damaged file is found at start).
    ///
    /// # Errors
    /// [`ServerError::Secrets`]: unreadable file, or a key that does not
    /// open it.
    pub fn open(path: PathBuf, key: SecretsKey) -> Result<Self> {
        let store = Self { path, key };
        if let Some(file) = store.read()? {
            for entry in &file.secrets {
                store.open_value(entry)?;
            }
        }
        Ok(store)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `call` on a blocking thread (the store does file work).
    ///
    /// # Errors
    /// `call`'s, or [`ServerError::Internal`] when the thread fails.
    pub async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Self) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || call(&store))
            .await
            .map_err(|e| ServerError::internal("use the secrets store", e))?
    }

    fn error(&self, message: impl std::fmt::Display) -> ServerError {
        secrets_error(&self.path.display().to_string(), message)
    }

    /// The file's content, checked against the key; `None` when there is
    /// no file yet.
    fn read(&self) -> Result<Option<StoreFile>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        let file: StoreFile = serde_json::from_str(&text).map_err(|e| self.error(e))?;
        if file.version != VERSION {
            return Err(self.error(format!(
                "format version {} is not this server's ({VERSION})",
                file.version
            )));
        }
        if open(&self.key, b"key_check", &file.key_check).as_deref() != Some(KEY_CHECK) {
            return Err(self.error(
                "the secrets key does not open this store: it was written with another key \
                 (give the key it was made with, or move the file away to start an empty store)",
            ));
        }
        Ok(Some(file))
    }

    fn open_value(&self, entry: &Entry) -> Result<SecretValue> {
        open(&self.key, &entry.aad(), &entry.value)
            .map(SecretValue::new)
            .ok_or_else(|| {
                self.error(format!(
                    "secret {} of tenant {} does not open with the key: the file was altered",
                    entry.name, entry.tenant
                ))
            })
    }

    fn write(&self, file: &StoreFile) -> Result<()> {
        let text = serde_json::to_vec_pretty(file).map_err(|e| self.error(e))?;
        airlock_sys_util::write_private_atomic(&self.path, &[&text]).map_err(|e| self.error(e))
    }

    /// Runs `change` on the file's content (a new, empty one when there is
    /// none) under the lock, then writes it.
    fn change<T>(&self, change: impl FnOnce(&mut StoreFile) -> Result<T>) -> Result<T> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.error(e))?;
        }
        let _lock = self.lock()?;
        let mut file = match self.read()? {
            Some(file) => file,
            None => StoreFile {
                version: VERSION,
                key_check: seal(&self.key, b"key_check", KEY_CHECK)?,
                secrets: Vec::new(),
            },
        };
        let answer = change(&mut file)?;
        self.write(&file)?;
        Ok(answer)
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>> {
        let path = sibling(&self.path, ".lock");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| self.error(e))?;
        let deadline = Instant::now() + LOCK_DEADLINE;
        loop {
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((back, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((_, errno)) => {
                    return Err(self.error(format!(
                        "lock {}: {errno} (another `airlock serve secrets` holds it?)",
                        path.display()
                    )))
                }
            }
        }
    }

    /// Stores (or replaces) `tenant`'s secret.
    ///
    /// # Errors
    /// [`ServerError::BadRequest`] for a bad tenant, name, value or host;
    /// [`ServerError::Secrets`] when the file cannot be used.
    pub fn set(
        &self,
        tenant: &str,
        secret: &NewSecret,
        now_unix: u64,
    ) -> Result<(Stored, SecretInfo)> {
        airlock_sys_util::check_id(tenant)
            .map_err(|e| ServerError::bad_request(format!("tenant {tenant:?}: {e}")))?;
        let checked = secret.to_secret()?;
        let hosts: Vec<String> = checked.hosts.iter().map(ToString::to_string).collect();
        self.change(|file| {
            let existing = file
                .secrets
                .iter()
                .position(|e| e.tenant == tenant && e.name == checked.name);
            let created_unix = existing.map_or(now_unix, |i| file.secrets[i].created_unix);
            let mut entry = Entry {
                tenant: tenant.to_owned(),
                name: checked.name.clone(),
                hosts,
                body: checked.body,
                created_unix,
                updated_unix: now_unix,
                value: Sealed {
                    nonce: String::new(),
                    ciphertext: String::new(),
                },
            };
            entry.value = seal(&self.key, &entry.aad(), checked.value.expose())?;
            let info = entry.info();
            Ok(match existing {
                Some(i) => {
                    file.secrets[i] = entry;
                    (Stored::Replaced, info)
                }
                None => {
                    file.secrets.push(entry);
                    (Stored::Created, info)
                }
            })
        })
    }

    /// `tenant`'s secrets, by name (never a value).
    ///
    /// # Errors
    /// [`ServerError::Secrets`] when the file cannot be read.
    pub fn list(&self, tenant: &str) -> Result<Vec<SecretInfo>> {
        let Some(file) = self.read()? else {
            return Ok(Vec::new());
        };
        let mut list: Vec<SecretInfo> = file
            .secrets
            .iter()
            .filter(|e| e.tenant == tenant)
            .map(Entry::info)
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// Deletes `tenant`'s secret `name`.
    ///
    /// # Errors
    /// [`ServerError::SecretNotFound`] when the tenant has none of that
    /// name; [`ServerError::Secrets`] when the file cannot be used.
    pub fn delete(&self, tenant: &str, name: &str) -> Result<()> {
        self.change(|file| {
            let index = file
                .secrets
                .iter()
                .position(|e| e.tenant == tenant && e.name == name)
                .ok_or_else(|| ServerError::SecretNotFound {
                    name: name.to_owned(),
                })?;
            file.secrets.remove(index);
            Ok(())
        })
    }

    /// The secrets `names` of `tenant`, values opened, for a sandbox spec.
    ///
    /// # Errors
    /// [`ServerError::BadRequest`] naming the first name the tenant has no
    /// secret of; [`ServerError::Secrets`] when the file cannot be used.
    pub fn resolve(&self, tenant: &str, names: &[String]) -> Result<Vec<Secret>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let file = self.read()?;
        let entries: BTreeMap<&str, &Entry> = file
            .iter()
            .flat_map(|f| &f.secrets)
            .filter(|e| e.tenant == tenant)
            .map(|e| (e.name.as_str(), e))
            .collect();
        names
            .iter()
            .map(|name| {
                let entry = entries.get(name.as_str()).ok_or_else(|| {
                    ServerError::bad_request(format!(
                        "secrets: no secret {name:?} for this tenant: set it first with \
                         `PUT /v1/secrets/{name}` (or `airlock serve secrets set`)"
                    ))
                })?;
                let hosts = entry
                    .hosts
                    .iter()
                    .map(|h| HostPattern::parse(&entry.name, h))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| self.error(e))?;
                Ok(Secret {
                    name: entry.name.clone(),
                    value: self.open_value(entry)?,
                    hosts,
                    body: entry.body,
                })
            })
            .collect()
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn secrets_error(source: &str, message: impl std::fmt::Display) -> ServerError {
    ServerError::Secrets {
        source_name: source.to_owned(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretsKey {
        SecretsKey::from_bytes(&[byte; 32]).unwrap()
    }

    fn new(name: &str, value: &str, hosts: &[&str]) -> NewSecret {
        NewSecret {
            name: name.into(),
            value: SecretValue::new(value.as_bytes().to_vec()),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            body: false,
        }
    }

    fn store(dir: &Path, k: u8) -> Result<SecretStore> {
        SecretStore::open(dir.join("secrets.json"), key(k))
    }

    #[test]
    fn a_stored_value_is_encrypted_at_rest_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1).unwrap();
        let value = "sk-live-0123456789abcdef";
        s.set("alice", &new("TOKEN", value, &["api.example.com"]), 5)
            .unwrap();
        let bytes = std::fs::read(s.path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(value), "{text}");
        assert!(!text.contains(&base64::engine::general_purpose::STANDARD.encode(value)));
        assert!(!text.contains(&hex::encode(value)));
        let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let resolved = s.resolve("alice", &["TOKEN".into()]).unwrap();
        assert_eq!(resolved[0].value.expose(), value.as_bytes());
        assert!(resolved[0].bound_to("api.example.com"));
    }

    #[test]
    fn two_seals_of_one_value_differ_by_their_random_nonce() {
        let a = seal(&key(1), b"x", b"same").unwrap();
        let b = seal(&key(1), b"x", b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_wrong_key_is_refused_clearly_at_open() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), 1)
            .unwrap()
            .set("alice", &new("TOKEN", "v", &["a.example.com"]), 0)
            .unwrap();
        let err = store(dir.path(), 2).unwrap_err().to_string();
        assert!(err.contains("does not open this store"), "{err}");
        assert!(err.contains("secrets.json"), "{err}");
    }

    #[test]
    fn a_value_moved_to_another_tenant_in_the_file_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1).unwrap();
        s.set("alice", &new("TOKEN", "v", &["a.example.com"]), 0)
            .unwrap();
        let text = std::fs::read_to_string(s.path()).unwrap();
        std::fs::write(s.path(), text.replace("\"alice\"", "\"bob\"")).unwrap();
        assert!(s.resolve("bob", &["TOKEN".into()]).is_err());
        let text = std::fs::read_to_string(s.path()).unwrap();
        std::fs::write(
            s.path(),
            text.replace("\"bob\"", "\"alice\"")
                .replace("a.example.com", "evil.example.net"),
        )
        .unwrap();
        let err = store(dir.path(), 1).unwrap_err().to_string();
        assert!(err.contains("altered"), "{err}");
    }

    #[test]
    fn tenants_see_only_their_own_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1).unwrap();
        s.set("alice", &new("TOKEN", "a", &["a.example.com"]), 0)
            .unwrap();
        assert!(s.list("bob").unwrap().is_empty());
        let err = s.resolve("bob", &["TOKEN".into()]).unwrap_err();
        assert_eq!(err.status().as_u16(), 400);
        assert!(err.to_string().contains("TOKEN"), "{err}");
        assert!(matches!(
            s.delete("bob", "TOKEN"),
            Err(ServerError::SecretNotFound { .. })
        ));
        assert_eq!(s.list("alice").unwrap().len(), 1);
    }

    #[test]
    fn replacing_keeps_the_creation_date_and_deleting_removes() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1).unwrap();
        let (first, _) = s
            .set("t", &new("K", "one", &["a.example.com"]), 10)
            .unwrap();
        let (again, info) = s
            .set("t", &new("K", "two", &["*.example.com"]), 20)
            .unwrap();
        assert_eq!((first, again), (Stored::Created, Stored::Replaced));
        assert_eq!((info.created_unix, info.updated_unix), (10, 20));
        assert_eq!(info.hosts, ["*.example.com"]);
        assert_eq!(
            s.resolve("t", &["K".into()]).unwrap()[0].value.expose(),
            b"two"
        );
        s.delete("t", "K").unwrap();
        assert!(s.list("t").unwrap().is_empty());
    }

    #[test]
    fn bad_secrets_are_refused_without_their_value() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1).unwrap();
        for bad in [
            new("1BAD", "hidden-value", &["a.example.com"]),
            new("K", "hidden-value", &[]),
            new("K", "hidden-value", &["*.com"]),
            new("K", "airlock-secret-hidden-value", &["a.example.com"]),
        ] {
            let err = s.set("t", &bad, 0).unwrap_err();
            assert_eq!(err.status().as_u16(), 400, "{err}");
            assert!(!err.to_string().contains("hidden-value"), "{err}");
        }
    }

    #[test]
    fn keys_parse_from_hex_or_base64_and_files_must_be_private() {
        let hex_key = "ab".repeat(32);
        assert!(SecretsKey::parse("k", &format!("{hex_key}\n")).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(SecretsKey::parse("k", &b64).is_ok());
        assert!(SecretsKey::parse("k", "short").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, &hex_key).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretsKey::read_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(SecretsKey::read_file(&path).is_ok());
        assert!(SecretsKey::of(Some(&path), Some(&hex_key)).is_err());
        assert!(SecretsKey::of(None, None).unwrap().is_none());
        assert_eq!(format!("{:?}", key(9)), "SecretsKey(<redacted>)");
    }
}
