//! The paused sessions on disk: one dir per session under
//! [`crate::Config::paused_dir`] (`<cache>/paused/<session id>/`) holding
//! `state` (the whole machine's migration stream, RAM included),
//! `workspace.qcow2` (its workspace disk, standalone, when it has one) and
//! `paused.json` ([`PausedMeta`], written last: a dir without it is a
//! pause that did not finish, and is swept).

use crate::error::PauseError;
use crate::spec::MachineShape;
use crate::template::TemplateInputs;
use airlock_protocol::Language;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Version of the paused-session layout.
pub const PAUSED_FORMAT: u32 = 1;
/// The metadata file of a paused session.
pub const META_FILE: &str = "paused.json";
/// The machine's migration stream.
pub const STATE_FILE: &str = "state";
/// The workspace disk.
pub const WORKSPACE_FILE: &str = "workspace.qcow2";
/// Default time a paused session is kept before the sweep deletes it.
pub const DEFAULT_PAUSED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Suffix of a paused session's dir while a resume holds it.
const CLAIMED_SUFFIX: &str = ".resuming";
/// Suffix of a dir a pause is writing.
const STAGING_SUFFIX: &str = ".saving";

/// What a paused session is: who, what machine, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PausedMeta {
    /// [`PAUSED_FORMAT`].
    pub format: u32,
    /// The session id (kept across the pause).
    pub session_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its interpreter's language.
    pub language: Language,
    /// Its machine shape.
    pub shape: MachineShape,
    /// The package layer image it had attached (read-only), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<PathBuf>,
    /// Its RAM was a named backend (a template clone): a resume names
    /// its RAM so too, or the stream does not load.
    pub named_ram: bool,
    /// Everything the machine must share with the one that loads it
    /// (QEMU, accelerator, kernel, root disk, agent, device set): the
    /// inputs of a memory template of its shape.
    pub machine: TemplateInputs,
    /// When the session started (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When it was paused.
    pub paused_at_ms: u64,
    /// When the sweep deletes it.
    pub expires_at_ms: u64,
    /// Its idle timeout once resumed, in ms.
    pub idle_timeout_ms: u64,
    /// Its maximum lifetime once resumed (from the resume), in ms.
    pub max_lifetime_ms: u64,
    /// Size of the machine's state stream.
    pub state_bytes: u64,
    /// Size of the saved workspace disk (0: none).
    pub disk_bytes: u64,
}

impl PausedMeta {
    /// What the paused session takes on disk.
    pub fn bytes(&self) -> u64 {
        self.state_bytes.saturating_add(self.disk_bytes)
    }

    /// Whether it has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }

    /// Parses a metadata file's text (pure).
    ///
    /// # Errors
    /// [`PauseError::Corrupt`] when it is not this format's JSON.
    pub fn parse(text: &[u8], path: &Path) -> Result<Self, PauseError> {
        let corrupt = |reason: String| PauseError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let meta: Self = serde_json::from_slice(text).map_err(|e| corrupt(e.to_string()))?;
        if meta.format != PAUSED_FORMAT {
            return Err(corrupt(format!(
                "format {} (this Airlock reads {PAUSED_FORMAT})",
                meta.format
            )));
        }
        if !is_session_id(&meta.session_id) {
            return Err(corrupt(format!("bad session id {:?}", meta.session_id)));
        }
        Ok(meta)
    }

    /// Why a host whose machine inputs are `here` cannot load this state
    /// (pure); `None` when it can.
    pub fn incompatibility(&self, here: &TemplateInputs) -> Option<String> {
        let then = &self.machine;
        let fields = [
            ("QEMU", &then.qemu_version, &here.qemu_version),
            ("accelerator", &then.accel, &here.accel),
            ("kernel", &then.kernel_hash, &here.kernel_hash),
            ("initramfs", &then.initramfs_hash, &here.initramfs_hash),
            ("root disk", &then.rootfs_hash, &here.rootfs_hash),
            ("QEMU device set", &then.argv_hash, &here.argv_hash),
            ("Airlock", &then.airlock_version, &here.airlock_version),
        ];
        for (what, a, b) in fields {
            if a != b {
                return Some(format!("its {what} was {a}, this host has {b}"));
            }
        }
        if then.protocol != here.protocol {
            return Some(format!(
                "its agent protocol was {}, this host speaks {}",
                then.protocol, here.protocol
            ));
        }
        (then != here).then(|| "its machine inputs differ from this host's".to_owned())
    }
}

/// A paused session as listed: its metadata and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PausedEntry {
    /// The metadata.
    pub meta: PausedMeta,
    /// Its dir.
    pub dir: PathBuf,
}

/// Whether `id` may name a paused session's dir (`s-` and letters,
/// digits, `-`; no path separators, no dots).
pub fn is_session_id(id: &str) -> bool {
    id.starts_with("s-")
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Milliseconds since the Unix epoch of `at`.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The paused sessions under one root dir. Blocking calls (small dirs):
/// run them on the blocking pool.
#[derive(Debug, Clone)]
pub struct PausedStore {
    root: PathBuf,
}

impl PausedStore {
    /// The store under `root` (made on first save).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Its root dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The dir of paused session `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// A fresh staging dir for the pause of `id` (removed first if a
    /// crashed pause left it).
    ///
    /// # Errors
    /// [`PauseError::Io`].
    pub fn staging(&self, id: &str) -> Result<PathBuf, PauseError> {
        let dir = self.root.join(format!("{id}{STAGING_SUFFIX}"));
        remove_dir(&dir)?;
        std::fs::create_dir_all(&dir).map_err(|e| PauseError::io("create", &dir, e))?;
        Ok(dir)
    }

    /// Writes `meta` into `staging` and renames it to the session's dir.
    ///
    /// # Errors
    /// [`PauseError::Io`].
    pub fn install(&self, staging: &Path, meta: &PausedMeta) -> Result<PathBuf, PauseError> {
        let text = serde_json::to_vec_pretty(meta).map_err(|e| PauseError::Corrupt {
            path: staging.join(META_FILE),
            reason: e.to_string(),
        })?;
        let file = staging.join(META_FILE);
        std::fs::write(&file, text).map_err(|e| PauseError::io("write", &file, e))?;
        let dir = self.dir(&meta.session_id);
        remove_dir(&dir)?;
        std::fs::rename(staging, &dir).map_err(|e| PauseError::io("rename into place", &dir, e))?;
        Ok(dir)
    }

    /// The metadata of paused session `id`.
    ///
    /// # Errors
    /// [`PauseError::NotFound`], [`PauseError::Corrupt`].
    pub fn get(&self, id: &str) -> Result<PausedEntry, PauseError> {
        if !is_session_id(id) {
            return Err(PauseError::NotFound {
                session_id: id.to_owned(),
            });
        }
        read_entry(&self.dir(id))?.ok_or_else(|| PauseError::NotFound {
            session_id: id.to_owned(),
        })
    }

    /// Takes paused session `id` for a resume (its dir renamed aside, so
    /// a second resume finds nothing); give it back with
    /// [`PausedStore::release`] when the resume fails.
    ///
    /// # Errors
    /// As [`PausedStore::get`].
    pub fn claim(&self, id: &str) -> Result<PausedEntry, PauseError> {
        let entry = self.get(id)?;
        let claimed = self.root.join(format!("{id}{CLAIMED_SUFFIX}"));
        remove_dir(&claimed)?;
        std::fs::rename(&entry.dir, &claimed).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PauseError::NotFound {
                session_id: id.to_owned(),
            },
            _ => PauseError::io("claim", &entry.dir, e),
        })?;
        Ok(PausedEntry {
            meta: entry.meta,
            dir: claimed,
        })
    }

    /// Gives a claimed session back (its resume failed).
    ///
    /// # Errors
    /// [`PauseError::Io`].
    pub fn release(&self, claimed: &PausedEntry) -> Result<(), PauseError> {
        let dir = self.dir(&claimed.meta.session_id);
        drop_resume_scratch(&claimed.dir);
        std::fs::rename(&claimed.dir, &dir).map_err(|e| PauseError::io("give back", &dir, e))
    }

    /// Deletes paused session `id`; whether it was there.
    ///
    /// # Errors
    /// [`PauseError::Io`].
    pub fn remove(&self, id: &str) -> Result<bool, PauseError> {
        if !is_session_id(id) {
            return Ok(false);
        }
        remove_dir(&self.dir(id))
    }

    /// Every paused session, sorted by id; damaged ones are skipped with a
    /// warning.
    ///
    /// # Errors
    /// [`PauseError::Io`] when the root cannot be read.
    pub fn list(&self) -> Result<Vec<PausedEntry>, PauseError> {
        let read = match std::fs::read_dir(&self.root) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(PauseError::io("list", &self.root, e)),
        };
        let mut entries = Vec::new();
        for dirent in read.flatten() {
            let name = dirent.file_name();
            let Some(name) = name.to_str() else { continue };
            if !is_session_id(name) {
                continue;
            }
            match read_entry(&dirent.path()) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(dir = %dirent.path().display(), error = %e, "skipping a damaged paused session")
                }
            }
        }
        entries.sort_by(|a, b| a.meta.session_id.cmp(&b.meta.session_id));
        Ok(entries)
    }

    /// What `tenant`'s paused sessions take on disk.
    ///
    /// # Errors
    /// As [`PausedStore::list`].
    pub fn tenant_bytes(&self, tenant: &str) -> Result<u64, PauseError> {
        Ok(tenant_bytes(&self.list()?, tenant))
    }

    /// Deletes the paused sessions expired at `now_ms` and what crashed
    /// pauses left (staging dirs older than `stale`), and gives back the
    /// sessions a crashed resume claimed (claimed dirs older than
    /// `stale`: paused again); returns the ids of the expired ones
    /// deleted.
    ///
    /// # Errors
    /// As [`PausedStore::list`].
    pub fn sweep(&self, now_ms: u64, stale: Duration) -> Result<Vec<String>, PauseError> {
        let mut removed = Vec::new();
        for entry in self.list()? {
            if entry.meta.expired(now_ms) && remove_dir(&entry.dir)? {
                tracing::info!(session_id = entry.meta.session_id, "paused session expired");
                removed.push(entry.meta.session_id);
            }
        }
        let Ok(read) = std::fs::read_dir(&self.root) else {
            return Ok(removed);
        };
        for dirent in read.flatten() {
            let name = dirent.file_name().to_string_lossy().into_owned();
            let old = dirent
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= stale);
            if !old {
                continue;
            }
            if name.ends_with(STAGING_SUFFIX) {
                remove_dir(&dirent.path())?;
            } else if let Some(id) = name.strip_suffix(CLAIMED_SUFFIX) {
                let dir = self.dir(id);
                if is_session_id(id) && !dir.exists() {
                    drop_resume_scratch(&dirent.path());
                    std::fs::rename(dirent.path(), &dir)
                        .map_err(|e| PauseError::io("give back", &dir, e))?;
                    tracing::info!(
                        session_id = id,
                        "a crashed resume's session is paused again"
                    );
                } else {
                    remove_dir(&dirent.path())?;
                }
            }
        }
        Ok(removed)
    }
}

/// What `tenant`'s entries take on disk (pure).
pub fn tenant_bytes(entries: &[PausedEntry], tenant: &str) -> u64 {
    entries
        .iter()
        .filter(|e| e.meta.tenant == tenant)
        .map(|e| e.meta.bytes())
        .fold(0, u64::saturating_add)
}

/// Whether `needed` more bytes keep a tenant holding `used` within
/// `quota` (pure; `None`: no quota).
pub fn within_quota(used: u64, needed: u64, quota: Option<u64>) -> bool {
    quota.is_none_or(|quota| used.saturating_add(needed) <= quota)
}

fn read_entry(dir: &Path) -> Result<Option<PausedEntry>, PauseError> {
    let file = dir.join(META_FILE);
    let text = match std::fs::read(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PauseError::io("read", &file, e)),
    };
    let meta = PausedMeta::parse(&text, &file)?;
    Ok(Some(PausedEntry {
        meta,
        dir: dir.to_path_buf(),
    }))
}

/// Removes `dir` and everything in it; whether it was there.
fn remove_dir(dir: &Path) -> Result<bool, PauseError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(PauseError::io("remove", dir, e)),
    }
}

/// Removes what a resume wrote into the dir it claimed (the saved stream
/// filtered against a template, [`super::fork::DELTA_FILE`]) before the
/// dir is given back: a paused session holds only what its pause saved.
fn drop_resume_scratch(claimed: &Path) {
    let scratch = claimed.join(super::fork::DELTA_FILE);
    if let Err(e) = std::fs::remove_file(&scratch) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(file = %scratch.display(), error = %e, "cannot remove a resume's scratch file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::key::test_inputs;

    fn meta(id: &str, tenant: &str, bytes: u64, expires_at_ms: u64) -> PausedMeta {
        PausedMeta {
            format: PAUSED_FORMAT,
            session_id: id.into(),
            tenant: tenant.into(),
            language: Language::Python,
            shape: MachineShape::new(Language::Python),
            packages: None,
            named_ram: true,
            machine: test_inputs(Language::Python, 512),
            created_at_ms: 1,
            paused_at_ms: 2,
            expires_at_ms,
            idle_timeout_ms: 600_000,
            max_lifetime_ms: 3_600_000,
            state_bytes: bytes,
            disk_bytes: 0,
        }
    }

    #[test]
    fn metadata_round_trips_and_another_format_is_refused() {
        let m = meta("s-0123456789abcdef", "t", 5, 10);
        let text = serde_json::to_vec(&m).unwrap();
        assert_eq!(PausedMeta::parse(&text, Path::new("/p")).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        v["format"] = 99.into();
        let err = PausedMeta::parse(&serde_json::to_vec(&v).unwrap(), Path::new("/p")).unwrap_err();
        assert!(matches!(err, PauseError::Corrupt { .. }), "{err}");
        assert!(PausedMeta::parse(b"not json", Path::new("/p")).is_err());
    }

    #[test]
    fn metadata_with_a_path_in_its_id_is_refused() {
        let mut v = serde_json::to_value(meta("s-1", "t", 1, 1)).unwrap();
        v["session_id"] = "s-../../etc".into();
        let err = PausedMeta::parse(&serde_json::to_vec(&v).unwrap(), Path::new("/p")).unwrap_err();
        assert!(err.to_string().contains("bad session id"), "{err}");
    }

    #[test]
    fn a_changed_qemu_or_kernel_makes_a_paused_session_incompatible() {
        let m = meta("s-1", "t", 1, 1);
        assert_eq!(m.incompatibility(&m.machine), None);
        let mut here = m.machine.clone();
        here.qemu_version = "8.2.0".into();
        let why = m.incompatibility(&here).unwrap();
        assert!(why.contains("QEMU") && why.contains("8.2.0"), "{why}");
        let mut here = m.machine.clone();
        here.kernel_hash = "other".into();
        assert!(m.incompatibility(&here).unwrap().contains("kernel"));
    }

    #[test]
    fn quota_counts_only_the_tenants_own_paused_sessions() {
        let entries: Vec<PausedEntry> = [("s-a", "t", 100), ("s-b", "t", 50), ("s-c", "u", 1000)]
            .into_iter()
            .map(|(id, tenant, bytes)| PausedEntry {
                meta: meta(id, tenant, bytes, 1),
                dir: PathBuf::from(id),
            })
            .collect();
        assert_eq!(tenant_bytes(&entries, "t"), 150);
        assert!(within_quota(150, 50, Some(200)));
        assert!(!within_quota(150, 51, Some(200)));
        assert!(within_quota(u64::MAX, 1, None));
    }

    #[test]
    fn the_sweep_deletes_expired_sessions_and_keeps_the_others() {
        let root = tempfile::tempdir().unwrap();
        let store = PausedStore::new(root.path().to_path_buf());
        for (id, expires) in [("s-old", 100), ("s-new", 10_000)] {
            let staging = store.staging(id).unwrap();
            std::fs::write(staging.join(STATE_FILE), b"x").unwrap();
            store.install(&staging, &meta(id, "t", 1, expires)).unwrap();
        }
        // A pause that crashed half way, a resume that crashed after its
        // claim, and garbage that is no session.
        std::fs::create_dir(root.path().join("s-crashed.saving")).unwrap();
        let staging = store.staging("s-claimed").unwrap();
        store
            .install(&staging, &meta("s-claimed", "t", 1, u64::MAX))
            .unwrap();
        let claimed = store.claim("s-claimed").unwrap();
        // What its resume wrote before it crashed.
        std::fs::write(claimed.dir.join(crate::pause::fork::DELTA_FILE), b"d").unwrap();
        std::fs::create_dir(root.path().join("s-nometa")).unwrap();
        let ids: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.meta.session_id)
            .collect();
        assert_eq!(ids, ["s-new", "s-old"]);
        assert_eq!(store.sweep(5_000, Duration::ZERO).unwrap(), ["s-old"]);
        assert!(store.get("s-old").is_err());
        assert!(store.get("s-new").is_ok());
        assert!(!root.path().join("s-crashed.saving").exists());
        let given_back = store.get("s-claimed").expect("given back, not deleted");
        assert!(!given_back.dir.join(crate::pause::fork::DELTA_FILE).exists());
    }

    #[test]
    fn a_claimed_session_is_not_found_again_until_released() {
        let root = tempfile::tempdir().unwrap();
        let store = PausedStore::new(root.path().to_path_buf());
        let staging = store.staging("s-1").unwrap();
        store
            .install(&staging, &meta("s-1", "t", 1, u64::MAX))
            .unwrap();
        let claimed = store.claim("s-1").unwrap();
        assert!(matches!(
            store.claim("s-1"),
            Err(PauseError::NotFound { .. })
        ));
        assert!(store.list().unwrap().is_empty());
        std::fs::write(claimed.dir.join(crate::pause::fork::DELTA_FILE), b"d").unwrap();
        store.release(&claimed).unwrap();
        let back = store.get("s-1").unwrap();
        assert_eq!(back.meta.session_id, "s-1");
        assert!(
            !back.dir.join(crate::pause::fork::DELTA_FILE).exists(),
            "the resume's scratch stays behind"
        );
        assert!(matches!(
            store.get("../x"),
            Err(PauseError::NotFound { .. })
        ));
    }
}
