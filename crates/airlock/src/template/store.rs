//! The template store: `<cache>/templates/<key>/` holding the guest RAM
//! (`memory`), the device state (`state`), `template.json` (what it was
//! built from, sizes, the state's sha256) and `uses` (one byte per
//! restore), kept by the [`ArtifactStore`]: built in a staging dir,
//! renamed into place whole, checked before each use (a damaged or
//! mismatched one is reported, never restored).
//!
//! Blocking file work: call it on the blocking pool.

use super::key::TemplateInputs;
use crate::artifacts::{self, Artifact, ArtifactStore, Staging, StoreEntry, Stored};
use airlock_protocol::client::sha256_hex;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The guest RAM file.
pub const MEMORY_FILE: &str = "memory";
/// The device state (a migration stream without RAM).
pub const STATE_FILE: &str = "state";
/// What the template is, as JSON.
pub const METADATA_FILE: &str = "template.json";
/// One byte appended per restore: its size is the use count.
pub const USES_FILE: &str = artifacts::USES_FILE;

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

impl Artifact for TemplateMetadata {
    type Inputs = TemplateInputs;
    const METADATA_FILE: &'static str = METADATA_FILE;
    const DATA_FILES: &'static [&'static str] = &[MEMORY_FILE, STATE_FILE];
    const SEALED: bool = false;

    fn key_of(inputs: &TemplateInputs) -> String {
        inputs.key()
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn inputs(&self) -> &TemplateInputs {
        &self.inputs
    }

    fn created_unix(&self) -> u64 {
        self.created_unix
    }

    /// The memory file's size (that of the shape's memory), the state
    /// file's size and sha256.
    fn check_files(&self, dir: &Path) -> Result<(), String> {
        let expected_memory = u64::from(self.inputs.shape.memory_mib) << 20;
        let memory_bytes = artifacts::file_len(&dir.join(MEMORY_FILE))?;
        if memory_bytes != self.memory_bytes || memory_bytes != expected_memory {
            return Err(format!(
                "the memory file has {memory_bytes} bytes, not {expected_memory}"
            ));
        }
        let state = artifacts::read_file(&dir.join(STATE_FILE))?;
        if state.len() as u64 != self.state_bytes {
            return Err(format!(
                "the state file has {} bytes, not {}",
                state.len(),
                self.state_bytes
            ));
        }
        if sha256_hex(&state) != self.state_sha256 {
            return Err("the state file's sha256 differs from the recorded one".into());
        }
        Ok(())
    }
}

/// A checked template, ready to restore.
pub type Template = Stored<TemplateMetadata>;

impl Stored<TemplateMetadata> {
    /// The guest RAM file.
    pub fn memory_file(&self) -> PathBuf {
        self.dir.join(MEMORY_FILE)
    }

    /// The device state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
}

/// What the store holds for a template's inputs.
pub type Lookup = artifacts::Lookup<Template>;

/// One entry of [`TemplateStore::list`] (and of `Templates::list`).
pub type Listed = StoreEntry<TemplateMetadata>;

/// The templates under one root dir.
pub type TemplateStore = ArtifactStore<TemplateMetadata>;

impl ArtifactStore<TemplateMetadata> {
    /// Completes the template built in `staging` (its memory and state
    /// files written): measures its files into its metadata and publishes
    /// it ([`ArtifactStore::publish_staged`]: when another process
    /// installed the same key meanwhile, theirs is kept).
    ///
    /// # Errors
    /// The failing file operation; the staging dir is removed.
    pub fn install(
        &self,
        staging: Staging,
        inputs: &TemplateInputs,
        build: Duration,
    ) -> io::Result<Template> {
        self.publish_staged(staging, |dir| {
            let state = std::fs::read(dir.join(STATE_FILE))?;
            Ok(TemplateMetadata {
                key: inputs.key(),
                inputs: inputs.clone(),
                memory_bytes: std::fs::metadata(dir.join(MEMORY_FILE))?.len(),
                state_bytes: state.len() as u64,
                state_sha256: sha256_hex(&state),
                created_unix: artifacts::unix_now(),
                build_ms: crate::ms(build),
            })
        })
    }
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
        let dir = staging.path().to_path_buf();
        let memory = std::fs::File::create(dir.join(MEMORY_FILE)).unwrap();
        memory
            .set_len(u64::from(inputs.shape.memory_mib) << 20)
            .unwrap();
        std::fs::write(dir.join(STATE_FILE), b"QEVM device state").unwrap();
        let template = store
            .install(staging, inputs, Duration::from_millis(5))
            .unwrap();
        assert!(!dir.exists());
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
