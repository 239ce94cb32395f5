//! API keys: a keys file maps the sha256 of each key to a tenant and its
//! quota overrides. The key itself is printed once, when it is made
//! ([`KeysFile::add`]), and never stored.
//!
//! The file is TOML, written whole to a temporary file and renamed (mode
//! 0600), so a reader never sees half of it:
//!
//! ```toml
//! [[key]]
//! id = "3f2a9c1b5d7e"       # the first 12 hex digits of the hash
//! sha256 = "3f2a9c1b5d7e..." # of the whole key
//! tenant = "alice"
//! created_unix = 1764000000
//! [key.quotas]              # optional; unset fields take the defaults
//! concurrent_runs = 2
//! ```

use crate::config::ServerConfig;
use crate::error::{Result, ServerError};
use crate::quota::{QuotaOverrides, Quotas};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The prefix of every key (it makes keys easy to spot in logs and by
/// secret scanners).
pub const KEY_PREFIX: &str = "airlock_";
/// The prefix of an E2B-format key ([`KeyFormat::E2b`]): E2B's SDKs
/// (earlier 2.x releases) refuse a key not matching `^e2b_[0-9a-f]+$`.
pub const E2B_KEY_PREFIX: &str = "e2b_";

/// The form of a new key. Both forms authenticate alike (by hash), on
/// either listener; only the text differs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyFormat {
    /// [`KEY_PREFIX`] and 64 hex digits (Airlock's API: `Authorization:
    /// Bearer`).
    #[default]
    Airlock,
    /// [`E2B_KEY_PREFIX`] and 40 hex digits, the form E2B's SDKs accept
    /// as `E2B_API_KEY` (sent as `X-API-Key` to the E2B listener).
    E2b,
}

/// One key's entry in the keys file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// A short public name of the key: the first 12 hex digits of its hash.
    pub id: String,
    /// The sha256 of the key, in hex.
    pub sha256: String,
    /// The tenant the key acts for (`[A-Za-z0-9_-]{1,128}`).
    pub tenant: String,
    /// When the key was made (seconds since the epoch).
    pub created_unix: u64,
    /// The tenant's quotas over the server's defaults.
    #[serde(default, skip_serializing_if = "is_default")]
    pub quotas: QuotaOverrides,
}

/// The default keys file: `$XDG_CONFIG_HOME/airlock/keys.toml`, else
/// `~/.config/airlock/keys.toml`.
pub fn default_keys_file() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("airlock").join("keys.toml")
}

fn is_default(q: &QuotaOverrides) -> bool {
    *q == QuotaOverrides::default()
}

/// The keys file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// Every key.
    #[serde(default, rename = "key")]
    pub keys: Vec<KeyEntry>,
}

/// The hex sha256 of a key.
pub fn hash_key(key: &str) -> String {
    airlock_sys_util::sha256_hex(key.as_bytes())
}

/// A new random key: [`KEY_PREFIX`] and 32 random bytes in hex.
pub fn new_key() -> String {
    new_key_of(KeyFormat::Airlock)
}

/// A new random key of `format`: [`KEY_PREFIX`] and 32 random bytes in
/// hex, or [`E2B_KEY_PREFIX`] and 20 (160 bits, E2B's own length).
pub fn new_key_of(format: KeyFormat) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    match format {
        KeyFormat::Airlock => format!("{KEY_PREFIX}{}", hex::encode(bytes)),
        KeyFormat::E2b => format!("{E2B_KEY_PREFIX}{}", hex::encode(&bytes[..20])),
    }
}

impl KeysFile {
    /// Parses the text of a keys file and checks it.
    ///
    /// # Errors
    /// [`ServerError::Keys`] naming `path` for bad TOML, a bad tenant name,
    /// a hash that is not 64 hex digits, or a hash listed twice.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let file: KeysFile = toml::from_str(text).map_err(|e| keys_error(path, e))?;
        let mut seen = std::collections::HashSet::new();
        for entry in &file.keys {
            airlock_sys_util::check_id(&entry.tenant)
                .map_err(|e| keys_error(path, format!("tenant {:?}: {e}", entry.tenant)))?;
            if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(keys_error(
                    path,
                    format!("key {}: sha256 must be 64 hex digits", entry.id),
                ));
            }
            if !seen.insert(entry.sha256.to_ascii_lowercase()) {
                return Err(keys_error(
                    path,
                    format!("key {} is listed twice", entry.id),
                ));
            }
        }
        Ok(file)
    }

    /// Reads `path`; a missing file is an empty keys file when
    /// `missing_ok`.
    ///
    /// # Errors
    /// [`ServerError::Keys`] when it cannot be read or parsed.
    pub fn load(path: &Path, missing_ok: bool) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(keys_error(path, e)),
        }
    }

    /// Reads the keys file a server trusts: refused when another user
    /// could rewrite it (writable by its group or by everyone, or owned by
    /// neither this process's user nor root), since whoever writes it
    /// makes keys. Blocking.
    ///
    /// # Errors
    /// [`ServerError::Keys`] naming `path`, with the `chmod 600` (or
    /// `chown`) to run, or as [`KeysFile::load`].
    pub fn load_trusted(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| keys_error(path, e))?;
        let uid = nix::unistd::geteuid().as_raw();
        if let Some(why) = airlock_sys_util::unsafe_to_trust(&meta, uid) {
            return Err(keys_error(
                path,
                format!(
                    "refused: {why}, so another user could add keys; run `chmod 600 {}` (and `chown` it to the server's user)",
                    path.display()
                ),
            ));
        }
        Self::load(path, false)
    }

    /// Writes the file whole (a temporary file renamed over it, mode 0600).
    ///
    /// # Errors
    /// [`ServerError::Keys`] when it cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).map_err(|e| keys_error(path, e))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|e| keys_error(path, e))?;
        }
        airlock_sys_util::write_private_atomic(
            path,
            &[
                b"# Airlock API keys: only their sha256 is stored.\n",
                text.as_bytes(),
            ],
        )
        .map_err(|e| keys_error(path, e))?;
        Ok(())
    }

    /// Adds a new key for `tenant`; returns the key (to print once) and its
    /// entry.
    ///
    /// # Errors
    /// [`ServerError::BadRequest`] for a bad tenant name.
    pub fn add(
        &mut self,
        tenant: &str,
        quotas: QuotaOverrides,
        now_unix: u64,
    ) -> Result<(String, KeyEntry)> {
        self.add_of(KeyFormat::Airlock, tenant, quotas, now_unix)
    }

    /// [`KeysFile::add`] with a key of `format` (`serve keys add --format
    /// e2b`).
    ///
    /// # Errors
    /// As [`KeysFile::add`].
    pub fn add_of(
        &mut self,
        format: KeyFormat,
        tenant: &str,
        quotas: QuotaOverrides,
        now_unix: u64,
    ) -> Result<(String, KeyEntry)> {
        airlock_sys_util::check_id(tenant)
            .map_err(|e| ServerError::bad_request(format!("tenant {tenant:?}: {e}")))?;
        let key = new_key_of(format);
        let sha256 = hash_key(&key);
        let entry = KeyEntry {
            id: sha256[..12].to_owned(),
            sha256,
            tenant: tenant.to_owned(),
            created_unix: now_unix,
            quotas,
        };
        self.keys.push(entry.clone());
        Ok((key, entry))
    }

    /// Removes the key with this id; returns its entry.
    ///
    /// # Errors
    /// [`ServerError::BadRequest`] when no key has this id.
    pub fn revoke(&mut self, id: &str) -> Result<KeyEntry> {
        let index = self
            .keys
            .iter()
            .position(|k| k.id == id)
            .ok_or_else(|| ServerError::bad_request(format!("no key with id {id:?}")))?;
        Ok(self.keys.remove(index))
    }
}

fn keys_error(path: &Path, e: impl std::fmt::Display) -> ServerError {
    ServerError::Keys {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Who a request acts for, and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant.
    pub tenant: String,
    /// Its quotas.
    pub quotas: Quotas,
}

/// The keys in memory, by hash: what [`Keyring::authenticate`] looks in.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    by_hash: HashMap<String, Caller>,
}

impl Keyring {
    /// The keyring of a keys file, each key's quotas over `defaults`.
    pub fn new(file: &KeysFile, defaults: Quotas) -> Self {
        let by_hash = file
            .keys
            .iter()
            .map(|k| {
                (
                    k.sha256.to_ascii_lowercase(),
                    Caller {
                        tenant: k.tenant.clone(),
                        quotas: k.quotas.over(defaults),
                    },
                )
            })
            .collect();
        Self { by_hash }
    }

    /// The keyring of `config`'s keys file, over its default quotas;
    /// `None` without a keys file (every request acts for the local user).
    /// Blocking (it reads the file).
    ///
    /// # Errors
    /// As [`KeysFile::load_trusted`]: an unreadable, invalid, or
    /// group- or world-writable keys file.
    pub fn of_config(config: &ServerConfig) -> Result<Option<Self>> {
        config
            .keys_file
            .as_deref()
            .map(|path| KeysFile::load_trusted(path).map(|f| Self::new(&f, config.quotas)))
            .transpose()
    }

    /// The caller a key acts for, if the key is known. Only the key's hash
    /// is compared, so the lookup's timing says nothing about the key.
    pub fn authenticate(&self, key: &str) -> Option<&Caller> {
        self.by_hash.get(&hash_key(key))
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_authenticates_and_only_its_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let mut file = KeysFile::default();
        let (key, entry) = file.add("alice", QuotaOverrides::default(), 7).unwrap();
        assert!(key.starts_with(KEY_PREFIX));
        file.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&key[KEY_PREFIX.len()..]), "{text}");
        assert!(text.contains(&entry.sha256));
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let ring = Keyring::new(&KeysFile::load(&path, false).unwrap(), Quotas::default());
        assert_eq!(ring.authenticate(&key).unwrap().tenant, "alice");
        assert!(ring.authenticate("airlock_wrong").is_none());
    }

    #[test]
    fn an_e2b_key_has_the_form_the_e2b_sdks_check_and_authenticates() {
        let mut file = KeysFile::default();
        let (key, _) = file
            .add_of(KeyFormat::E2b, "alice", QuotaOverrides::default(), 0)
            .unwrap();
        let hex = key.strip_prefix(E2B_KEY_PREFIX).expect("the e2b_ prefix");
        assert_eq!(hex.len(), 40, "{key}");
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let ring = Keyring::new(&file, Quotas::default());
        assert_eq!(ring.authenticate(&key).unwrap().tenant, "alice");
    }

    #[test]
    fn two_keys_are_never_equal() {
        assert_ne!(new_key(), new_key());
    }

    #[test]
    fn a_revoked_key_no_longer_authenticates() {
        let mut file = KeysFile::default();
        let (key, entry) = file.add("bob", QuotaOverrides::default(), 0).unwrap();
        file.revoke(&entry.id).unwrap();
        assert!(Keyring::new(&file, Quotas::default())
            .authenticate(&key)
            .is_none());
        assert!(file.revoke(&entry.id).is_err());
    }

    #[test]
    fn per_key_quotas_apply_over_the_defaults() {
        let text = r#"
            [[key]]
            id = "aaaaaaaaaaaa"
            sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            tenant = "t1"
            created_unix = 0
            [key.quotas]
            concurrent_runs = 1
        "#;
        let file = KeysFile::parse(Path::new("k.toml"), text).unwrap();
        let ring = Keyring::new(&file, Quotas::default());
        let caller = ring.by_hash.values().next().unwrap();
        assert_eq!(caller.quotas.concurrent_runs, 1);
        assert_eq!(caller.quotas.memory_mib, Quotas::default().memory_mib);
    }

    #[test]
    fn bad_tenants_hashes_and_duplicates_are_refused_with_the_path() {
        let entry = |tenant: &str, sha: &str| {
            format!("[[key]]\nid = \"x\"\nsha256 = \"{sha}\"\ntenant = \"{tenant}\"\ncreated_unix = 0\n")
        };
        let good = "a".repeat(64);
        for text in [
            entry("../x", &good),
            entry("t", "zz"),
            format!("{}{}", entry("t", &good), entry("u", &good)),
            "[[key]]\nunknown = 1\n".to_owned(),
        ] {
            let err = KeysFile::parse(Path::new("/etc/k.toml"), &text).unwrap_err();
            assert!(err.to_string().contains("/etc/k.toml"), "{err}");
        }
    }

    #[test]
    fn a_keys_file_others_can_write_is_refused_with_the_chmod_to_run() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        KeysFile::default().save(&path).unwrap();
        KeysFile::load_trusted(&path).unwrap();
        for mode in [0o620, 0o666] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = KeysFile::load_trusted(&path).unwrap_err().to_string();
            assert!(
                err.contains(&format!("chmod 600 {}", path.display())),
                "{err}"
            );
            assert!(err.contains("writable"), "{err}");
        }
        let config = ServerConfig {
            keys_file: Some(path.clone()),
            ..ServerConfig::default()
        };
        assert!(
            Keyring::of_config(&config).is_err(),
            "the server refuses it at start"
        );
    }

    #[test]
    fn a_missing_file_is_empty_only_when_allowed() {
        let path = Path::new("/nonexistent/airlock/keys.toml");
        assert!(KeysFile::load(path, true).unwrap().keys.is_empty());
        assert!(KeysFile::load(path, false).is_err());
    }
}
