//! The template store: `<cache>/templates/<key>/` holding the guest RAM
//! (`memory`), the device state (`state`), `template.json` (what it was
//! built from, sizes, the state's sha256) and `uses` (one byte per
//! restore). A template is built in a staging dir (`.staging/<pid>-<start>-<key>`)
//! and renamed into place whole, so a reader sees a complete template or
//! none; each use checks it first, and a damaged or mismatched one is
//! reported, never restored.
//!
//! Blocking file work: call it on the blocking pool.

use super::key::TemplateInputs;
use airlock_protocol::client::sha256_hex;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The guest RAM file.
pub const MEMORY_FILE: &str = "memory";
/// The device state (a migration stream without RAM).
pub const STATE_FILE: &str = "state";
/// What the template is, as JSON.
pub const METADATA_FILE: &str = "template.json";
/// One byte appended per restore: its size is the use count (appends are
/// atomic, so concurrent runs need no lock).
pub const USES_FILE: &str = "uses";
/// Where templates are built before they are renamed into place.
const STAGING_DIR: &str = ".staging";

/// `template.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMetadata {
    /// The key (the dir's name).
    pub key: String,
    /// What it was built from.
    pub inputs: TemplateInputs,
    /// Size of the memory file (the guest memory).
    pub memory_bytes: u64,
    /// Size of the state file.
    pub state_bytes: u64,
    /// Hex sha256 of the state file.
    pub state_sha256: String,
    /// When it was built (seconds since the Unix epoch).
    pub created_unix: u64,
    /// How long the build took.
    pub build_ms: u64,
}

/// A checked template, ready to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Its dir.
    pub dir: PathBuf,
    /// Its metadata.
    pub metadata: TemplateMetadata,
}

impl Template {
    /// The guest RAM file.
    pub fn memory_file(&self) -> PathBuf {
        self.dir.join(MEMORY_FILE)
    }

    /// The device state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
}

/// What the store holds for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A complete template matching the inputs.
    Ready(Box<Template>),
    /// Nothing.
    Missing,
    /// Something that must not be restored, and why.
    Damaged(String),
}

/// One entry of [`TemplateStore::list`].
#[derive(Debug, Clone)]
pub struct Listed {
    /// The dir name.
    pub key: String,
    /// Its metadata, or why it cannot be read.
    pub metadata: Result<TemplateMetadata, String>,
    /// Disk space it takes (allocated blocks: the memory file is sparse).
    pub disk_bytes: u64,
    /// Time since it was built (`None` without readable metadata).
    pub age: Option<Duration>,
    /// How many VMs were restored from it.
    pub uses: u64,
}

/// The templates under one root dir.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    root: PathBuf,
}

impl TemplateStore {
    /// The store at `root` (created when a template is first built).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The dir of template `key`.
    pub fn dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Looks the template of `inputs` up and checks it: metadata, inputs,
    /// the memory file's size and the state file's size and sha256.
    pub fn lookup(&self, inputs: &TemplateInputs) -> Lookup {
        let key = inputs.key();
        let dir = self.dir(&key);
        if !dir.exists() {
            return Lookup::Missing;
        }
        match check(&dir, &key, inputs) {
            Ok(metadata) => Lookup::Ready(Box::new(Template { dir, metadata })),
            Err(reason) => Lookup::Damaged(reason),
        }
    }

    /// A fresh, empty staging dir for building template `key` (0700).
    ///
    /// # Errors
    /// The failing file operation.
    pub fn staging(&self, key: &str) -> io::Result<PathBuf> {
        // Builds of processes that died halfway are swept first.
        crate::sweep::fresh_staging_dir(&self.root.join(STAGING_DIR), key)
    }

    /// Completes the template built in `staging`: measures its files,
    /// writes its metadata, syncs, and renames it into place, replacing a
    /// damaged template of the same key. When another process installed the
    /// same key meanwhile, theirs is kept and `staging` removed.
    ///
    /// # Errors
    /// The failing file operation; the staging dir is removed.
    pub fn install(
        &self,
        staging: &Path,
        inputs: &TemplateInputs,
        build: Duration,
    ) -> io::Result<Template> {
        let result = self.install_inner(staging, inputs, build);
        if result.is_err() || staging.exists() {
            let _ = std::fs::remove_dir_all(staging);
        }
        result
    }

    fn install_inner(
        &self,
        staging: &Path,
        inputs: &TemplateInputs,
        build: Duration,
    ) -> io::Result<Template> {
        let key = inputs.key();
        let state = std::fs::read(staging.join(STATE_FILE))?;
        let memory_bytes = std::fs::metadata(staging.join(MEMORY_FILE))?.len();
        let metadata = TemplateMetadata {
            key: key.clone(),
            inputs: inputs.clone(),
            memory_bytes,
            state_bytes: state.len() as u64,
            state_sha256: sha256_hex(&state),
            created_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            build_ms: crate::ms(build),
        };
        let json = serde_json::to_vec_pretty(&metadata).map_err(io::Error::other)?;
        std::fs::write(staging.join(METADATA_FILE), json)?;
        for file in [MEMORY_FILE, STATE_FILE, METADATA_FILE] {
            std::fs::File::open(staging.join(file))?.sync_all()?;
        }
        let dir = self.dir(&key);
        if dir.exists() {
            match check(&dir, &key, inputs) {
                // Someone else built it meanwhile: theirs is as good.
                Ok(metadata) => return Ok(Template { dir, metadata }),
                Err(_) => std::fs::remove_dir_all(&dir)?,
            }
        }
        if let Err(e) = std::fs::rename(staging, &dir) {
            // Another process renamed its build into place in between.
            return match check(&dir, &key, inputs) {
                Ok(metadata) => Ok(Template { dir, metadata }),
                Err(_) => Err(e),
            };
        }
        std::fs::File::open(&self.root)?.sync_all()?;
        Ok(Template { dir, metadata })
    }

    /// Every template dir, with its metadata when readable.
    pub fn list(&self) -> Vec<Listed> {
        entry_dirs(&self.root)
            .into_iter()
            .map(|(key, dir)| {
                let metadata = read_metadata(&dir);
                Listed {
                    key,
                    disk_bytes: disk_usage(&dir),
                    uses: std::fs::metadata(dir.join(USES_FILE)).map_or(0, |m| m.len()),
                    age: metadata
                        .as_ref()
                        .ok()
                        .and_then(|m| age_since(m.created_unix)),
                    metadata,
                }
            })
            .collect()
    }

    /// Removes every template `keep` refuses, and the staging dirs of dead
    /// builds. Returns the keys removed.
    ///
    /// # Errors
    /// The first removal that failed.
    pub fn prune(&self, keep: impl Fn(&Listed) -> bool) -> io::Result<Vec<String>> {
        crate::sweep::sweep_dead_process_dirs(&self.root.join(STAGING_DIR));
        let mut removed = Vec::new();
        for listed in self.list() {
            if !keep(&listed) {
                std::fs::remove_dir_all(self.dir(&listed.key))?;
                removed.push(listed.key);
            }
        }
        Ok(removed)
    }

    /// Counts one more restore of `template`.
    ///
    /// # Errors
    /// The failing append.
    pub fn record_use(template: &Template) -> io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(template.dir.join(USES_FILE))?
            .write_all(b".")
    }

    /// Removes the template of `key` (a damaged one, before a rebuild).
    ///
    /// # Errors
    /// The failing removal.
    pub fn remove(&self, key: &str) -> io::Result<()> {
        match std::fs::remove_dir_all(self.dir(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn read_metadata(dir: &Path) -> Result<TemplateMetadata, String> {
    read_json(&dir.join(METADATA_FILE))
}

/// The visible subdirs of a store's `root` (not `.staging`), as (name,
/// path), sorted by name. Shared with the package layer store.
pub(crate) fn entry_dirs(root: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    dirs.sort();
    dirs
}

/// A JSON metadata file, or why it cannot be read.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Time since `created_unix` (seconds since the epoch); `None` if later
/// than now.
pub(crate) fn age_since(created_unix: u64) -> Option<Duration> {
    (SystemTime::UNIX_EPOCH + Duration::from_secs(created_unix))
        .elapsed()
        .ok()
}

/// Checks a template dir against `inputs`; the reason when it must not be
/// restored.
fn check(dir: &Path, key: &str, inputs: &TemplateInputs) -> Result<TemplateMetadata, String> {
    let metadata = read_metadata(dir)?;
    if metadata.key != key || &metadata.inputs != inputs {
        return Err(format!(
            "it was built from other inputs (key {})",
            metadata.key
        ));
    }
    let expected_memory = u64::from(inputs.shape.memory_mib) << 20;
    let memory = dir.join(MEMORY_FILE);
    let memory_bytes = std::fs::metadata(&memory)
        .map_err(|e| format!("{}: {e}", memory.display()))?
        .len();
    if memory_bytes != metadata.memory_bytes || memory_bytes != expected_memory {
        return Err(format!(
            "the memory file has {memory_bytes} bytes, not {expected_memory}"
        ));
    }
    let state_path = dir.join(STATE_FILE);
    let state = std::fs::read(&state_path).map_err(|e| format!("{}: {e}", state_path.display()))?;
    if state.len() as u64 != metadata.state_bytes {
        return Err(format!(
            "the state file has {} bytes, not {}",
            state.len(),
            metadata.state_bytes
        ));
    }
    if sha256_hex(&state) != metadata.state_sha256 {
        return Err("the state file's sha256 differs from the recorded one".into());
    }
    Ok(metadata)
}

/// Allocated bytes of the files in `dir` (not their apparent size).
pub(crate) fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::key::test_inputs;
    use airlock_protocol::Language;

    fn inputs(memory_mib: u32) -> TemplateInputs {
        test_inputs(Language::Raw, memory_mib)
    }

    /// Builds a fake template (a sparse memory file, a small state) in the
    /// store and installs it.
    fn built(store: &TemplateStore, inputs: &TemplateInputs) -> Template {
        let staging = store.staging(&inputs.key()).unwrap();
        let memory = std::fs::File::create(staging.join(MEMORY_FILE)).unwrap();
        memory
            .set_len(u64::from(inputs.shape.memory_mib) << 20)
            .unwrap();
        std::fs::write(staging.join(STATE_FILE), b"QEVM device state").unwrap();
        let template = store
            .install(&staging, inputs, Duration::from_millis(5))
            .unwrap();
        assert!(!staging.exists());
        template
    }

    #[test]
    fn an_installed_template_is_found_ready() {
        let root = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(root.path());
        assert_eq!(store.lookup(&inputs(64)), Lookup::Missing);
        let template = built(&store, &inputs(64));
        assert_eq!(template.metadata.state_bytes, 17);
        assert_eq!(template.metadata.memory_bytes, 64 << 20);
        assert_eq!(store.lookup(&inputs(64)), Lookup::Ready(Box::new(template)));
    }

    #[test]
    fn a_truncated_state_file_is_damaged() {
        let root = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(root.path());
        let template = built(&store, &inputs(64));
        std::fs::write(template.state_file(), b"QEVM").unwrap();
        let Lookup::Damaged(reason) = store.lookup(&inputs(64)) else {
            panic!("a truncated template was accepted");
        };
        assert!(reason.contains("4 bytes"), "{reason}");
    }

    #[test]
    fn an_altered_state_file_of_the_same_size_is_damaged() {
        let root = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(root.path());
        let template = built(&store, &inputs(64));
        std::fs::write(template.state_file(), b"QEVM device stat!").unwrap();
        let Lookup::Damaged(reason) = store.lookup(&inputs(64)) else {
            panic!("an altered template was accepted");
        };
        assert!(reason.contains("sha256"), "{reason}");
    }

    #[test]
    fn a_memory_file_of_another_size_is_damaged() {
        let root = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(root.path());
        let template = built(&store, &inputs(64));
        std::fs::File::options()
            .write(true)
            .open(template.memory_file())
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        assert!(matches!(store.lookup(&inputs(64)), Lookup::Damaged(_)));
    }

    #[test]
    fn metadata_of_other_inputs_is_damaged_even_under_the_right_name() {
        let root = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(root.path());
        let template = built(&store, &inputs(64));
        let mut metadata = template.metadata.clone();
        metadata.inputs.qemu_version = "8.2.0".into();
        std::fs::write(
            template.dir.join(METADATA_FILE),
            serde_json::to_vec(&metadata).unwrap(),
        )
        .unwrap();
        assert!(matches!(store.lookup(&inputs(64)), Lookup::Damaged(_)));
    }

    #[test]
    fn installing_over_a_damaged_template_replaces_it() {
        let root = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(root.path());
        let template = built(&store, &inputs(64));
        std::fs::remove_file(template.state_file()).unwrap();
        assert!(matches!(store.lookup(&inputs(64)), Lookup::Damaged(_)));
        built(&store, &inputs(64));
        assert!(matches!(store.lookup(&inputs(64)), Lookup::Ready(_)));
    }

    #[test]
    fn list_shows_templates_and_prune_removes_the_refused_ones() {
        let root = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(root.path());
        built(&store, &inputs(64));
        built(&store, &inputs(128));
        let restored = store.lookup(&inputs(64));
        let Lookup::Ready(template) = restored else {
            panic!("{restored:?}");
        };
        TemplateStore::record_use(&template).unwrap();
        TemplateStore::record_use(&template).unwrap();
        assert!(
            matches!(store.lookup(&inputs(64)), Lookup::Ready(_)),
            "uses are not checked"
        );
        let listed = store.list();
        assert_eq!(listed.len(), 2, "the staging dir is not listed");
        let uses = |mib: u32| {
            listed
                .iter()
                .find(|l| {
                    l.metadata
                        .as_ref()
                        .is_ok_and(|m| m.inputs.shape.memory_mib == mib)
                })
                .map(|l| l.uses)
        };
        assert_eq!((uses(64), uses(128)), (Some(2), Some(0)));
        assert!(listed.iter().all(|l| l.metadata.is_ok()));
        let removed = store
            .prune(|l| {
                l.metadata
                    .as_ref()
                    .is_ok_and(|m| m.inputs.shape.memory_mib == 64)
            })
            .unwrap();
        assert_eq!(removed, vec![inputs(128).key()]);
        assert!(matches!(store.lookup(&inputs(64)), Lookup::Ready(_)));
        assert_eq!(store.lookup(&inputs(128)), Lookup::Missing);
    }
}
