//! The on-disk cache of the KVM probe's verdict.
//!
//! One small JSON file per [`CacheKey`] under `<cache dir>/probe/`. The key
//! holds everything the verdict depends on: the guest kernel and initramfs
//! (by content hash), the QEMU version, the host kernel release and CPU
//! model, and this crate's probe format. Any change gives a new file name,
//! so a stale verdict is never read.

use crate::accel::AccelVerdict;
use crate::QemuError;
use airlock_sys_util::{sha256_file_hex, IoError, IoResultExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Bumped when the probe's method changes, so old verdicts are not reused.
pub const PROBE_FORMAT: u32 = 1;

/// What a cached verdict depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// [`PROBE_FORMAT`] of the writer.
    pub probe_format: u32,
    /// sha256 (hex) of the guest kernel the probe boots.
    pub kernel_sha256: String,
    /// sha256 (hex) of the initramfs the probe boots.
    pub initramfs_sha256: String,
    /// `QEMU emulator version` line content, e.g. `7.2.22 (Debian ...)`.
    pub qemu_version: String,
    /// Host kernel release (`uname -r`).
    pub host_kernel: String,
    /// Host CPU model.
    pub cpu_model: String,
}

impl CacheKey {
    /// The cache file name: `accel-<16 hex digits of the key's hash>.json`.
    pub fn file_name(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [
            self.probe_format.to_string().as_str(),
            &self.kernel_sha256,
            &self.initramfs_sha256,
            &self.qemu_version,
            &self.host_kernel,
            &self.cpu_model,
        ] {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hex::encode(hasher.finalize());
        format!("accel-{}.json", &digest[..16])
    }
}

/// A cache file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedVerdict {
    /// The key it was stored under (checked again on read).
    pub key: CacheKey,
    /// The verdict.
    pub verdict: AccelVerdict,
    /// How long the probe took, in milliseconds.
    pub probe_ms: u64,
    /// When it ran (seconds since the Unix epoch).
    pub probed_at_unix: u64,
}

/// The verdict in `json` when it belongs to `key`.
pub fn decode_cached(json: &[u8], key: &CacheKey) -> Option<CachedVerdict> {
    serde_json::from_slice::<CachedVerdict>(json)
        .ok()
        .filter(|c| &c.key == key)
}

/// The probe cache dir under the Airlock cache dir.
pub fn probe_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("probe")
}

/// Reads the cached verdict for `key`, if any. Unreadable or foreign files
/// count as absent.
pub(crate) async fn load(cache_dir: &Path, key: &CacheKey) -> Option<CachedVerdict> {
    let path = probe_dir(cache_dir).join(key.file_name());
    let bytes = tokio::fs::read(&path).await.ok()?;
    decode_cached(&bytes, key)
}

/// Stores a verdict atomically (temp file, then rename).
pub(crate) async fn store(cache_dir: &Path, entry: &CachedVerdict) -> Result<PathBuf, QemuError> {
    let dir = probe_dir(cache_dir);
    tokio::fs::create_dir_all(&dir)
        .await
        .with_path("create", &dir)?;
    let path = dir.join(entry.key.file_name());
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        entry.key.file_name(),
        std::process::id()
    ));
    let mut json = serde_json::to_vec_pretty(entry)
        .map_err(|e| IoError::new("serialize", &path, std::io::Error::other(e)))?;
    json.push(b'\n');
    tokio::fs::write(&tmp, &json)
        .await
        .with_path("write", &tmp)?;
    tokio::fs::rename(&tmp, &path)
        .await
        .with_path("rename", &tmp)?;
    Ok(path)
}

/// sha256 (hex) of a file's content, hashed off the async threads.
pub(crate) async fn file_sha256(path: &Path) -> Result<String, QemuError> {
    let owned = path.to_path_buf();
    let hashed = tokio::task::spawn_blocking(move || sha256_file_hex(&owned))
        .await
        .map_err(|e| IoError::new("hash", path, std::io::Error::other(e)))?;
    Ok(hashed.with_path("hash", path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Accel;

    fn key() -> CacheKey {
        CacheKey {
            probe_format: PROBE_FORMAT,
            kernel_sha256: "aa".repeat(32),
            initramfs_sha256: "bb".repeat(32),
            qemu_version: "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)".into(),
            host_kernel: "6.1.0-test".into(),
            cpu_model: "AMD EPYC".into(),
        }
    }

    fn entry() -> CachedVerdict {
        CachedVerdict {
            key: key(),
            verdict: AccelVerdict {
                accel: Accel::Tcg,
                reason: "KVM guest aborted".into(),
            },
            probe_ms: 120,
            probed_at_unix: 1_700_000_000,
        }
    }

    #[test]
    fn same_key_gives_same_file_name() {
        assert_eq!(key().file_name(), key().file_name());
        assert!(key().file_name().starts_with("accel-"));
        assert!(key().file_name().ends_with(".json"));
    }

    #[test]
    fn every_component_changes_the_file_name() {
        let base = key().file_name();
        let variants = [
            CacheKey {
                probe_format: PROBE_FORMAT + 1,
                ..key()
            },
            CacheKey {
                kernel_sha256: "cc".repeat(32),
                ..key()
            },
            CacheKey {
                initramfs_sha256: "cc".repeat(32),
                ..key()
            },
            CacheKey {
                qemu_version: "8.0.0".into(),
                ..key()
            },
            CacheKey {
                host_kernel: "6.2.0".into(),
                ..key()
            },
            CacheKey {
                cpu_model: "Intel Xeon".into(),
                ..key()
            },
        ];
        for variant in variants {
            assert_ne!(variant.file_name(), base, "{variant:?}");
        }
    }

    #[test]
    fn shifting_bytes_between_fields_changes_the_file_name() {
        let a = CacheKey {
            host_kernel: "ab".into(),
            cpu_model: "c".into(),
            ..key()
        };
        let b = CacheKey {
            host_kernel: "a".into(),
            cpu_model: "bc".into(),
            ..key()
        };
        assert_ne!(a.file_name(), b.file_name());
    }

    #[test]
    fn decode_accepts_its_own_key_only() {
        let json = serde_json::to_vec(&entry()).unwrap();
        assert_eq!(decode_cached(&json, &key()), Some(entry()));
        let other = CacheKey {
            cpu_model: "other".into(),
            ..key()
        };
        assert_eq!(decode_cached(&json, &other), None);
    }

    #[test]
    fn decode_ignores_garbage() {
        assert_eq!(decode_cached(b"{not json", &key()), None);
        assert_eq!(decode_cached(b"", &key()), None);
    }

    #[tokio::test]
    async fn store_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = store(dir.path(), &entry()).await.unwrap();
        assert!(path.starts_with(dir.path().join("probe")));
        assert_eq!(load(dir.path(), &key()).await, Some(entry()));
    }

    #[tokio::test]
    async fn file_hash_matches_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(
            file_sha256(&file).await.unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
