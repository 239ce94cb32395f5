//! The template store: `<cache>/templates/<key>/` holding the guest RAM
//! (`memory`), the device state (`state`), `template.json` (what it was
//! built from, sizes, the state's sha256) and `uses` (one byte per
//! restore), kept by the [`ArtifactStore`]: built in a staging dir,
//! renamed into place whole, checked before each use (a damaged or
//! mismatched one is reported, never restored).
//!
//! Blocking file work: call it on the blocking pool.

use super::key::TemplateInputs;
use crate::artifacts::{self, Artifact, ArtifactStore, Metadata, Staging, StoreEntry, Stored};
use airlock_protocol::client::sha256_hex;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The guest RAM file.
pub const MEMORY_FILE: &str = "memory";
/// The device state (a migration stream without RAM).
pub const STATE_FILE: &str = "state";
/// The workspace disk as the template VM left it (a standalone qcow2),
/// when its shape has one: each clone's disk is an overlay over it.
pub const WORKSPACE_FILE: &str = "workspace.qcow2";
/// What the template is, as JSON.
pub const METADATA_FILE: &str = "template.json";
/// One byte appended per restore: its size is the use count.
pub const USES_FILE: &str = artifacts::USES_FILE;

/// The templates under one root dir.
pub type TemplateStore = ArtifactStore<TemplateDetails>;

impl ArtifactStore<TemplateDetails> {
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
        self.publish_staged(staging, inputs, build, |dir| {
            let state = std::fs::read(dir.join(STATE_FILE))?;
            let workspace_bytes = if inputs.shape.disk_mib > 0 {
                std::fs::metadata(dir.join(WORKSPACE_FILE))?.len()
            } else {
                0
            };
            Ok(TemplateDetails {
                memory_bytes: std::fs::metadata(dir.join(MEMORY_FILE))?.len(),
                state_bytes: state.len() as u64,
                state_sha256: sha256_hex(&state),
                workspace_bytes,
            })
        })
    }
}

/// `template.json`.
pub type TemplateMetadata = Metadata<TemplateDetails>;

/// What `template.json` records besides the key, the inputs and the
/// build's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateDetails {
    /// Size of the memory file (the guest memory).
    pub memory_bytes: u64,
    /// Size of the state file.
    pub state_bytes: u64,
    /// Hex sha256 of the state file.
    pub state_sha256: String,
    /// Size of the workspace disk file (`0`: the shape has no disk; then
    /// left out, so `template.json` keeps its earlier layout).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub workspace_bytes: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Artifact for TemplateDetails {
    type Inputs = TemplateInputs;
    const METADATA_FILE: &'static str = METADATA_FILE;
    const DATA_FILES: &'static [&'static str] = &[MEMORY_FILE, STATE_FILE];
    const SEALED: bool = false;

    fn key_of(inputs: &TemplateInputs) -> String {
        inputs.key()
    }

    /// The memory file's size (that of the shape's memory), the state
    /// file's size and sha256.
    fn check_files(metadata: &TemplateMetadata, dir: &Path) -> Result<(), String> {
        let expected_memory = u64::from(metadata.inputs.shape.memory_mib) << 20;
        let memory_bytes = artifacts::file_len(&dir.join(MEMORY_FILE))?;
        if memory_bytes != metadata.memory_bytes || memory_bytes != expected_memory {
            return Err(format!(
                "the memory file has {memory_bytes} bytes, not {expected_memory}"
            ));
        }
        let state = artifacts::read_file(&dir.join(STATE_FILE))?;
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
        if metadata.inputs.shape.disk_mib > 0 {
            let workspace_bytes = artifacts::file_len(&dir.join(WORKSPACE_FILE))?;
            if workspace_bytes != metadata.workspace_bytes {
                return Err(format!(
                    "the workspace disk has {workspace_bytes} bytes, not {}",
                    metadata.workspace_bytes
                ));
            }
        }
        Ok(())
    }
}

/// A checked template, ready to restore.
pub type Template = Stored<TemplateDetails>;

impl Stored<TemplateDetails> {
    /// The guest RAM file.
    pub fn memory_file(&self) -> PathBuf {
        self.dir.join(MEMORY_FILE)
    }

    /// The device state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The workspace disk clones start from, when the shape has one.
    pub fn workspace_file(&self) -> Option<PathBuf> {
        (self.metadata.inputs.shape.disk_mib > 0).then(|| self.dir.join(WORKSPACE_FILE))
    }
}

/// What the store holds for a template's inputs.
pub type Lookup = artifacts::Lookup<Template>;

/// One entry of [`TemplateStore::list`] (and of `Templates::list`).
pub type Listed = StoreEntry<TemplateDetails>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::testing;
    use crate::template::key::test_inputs;
    use airlock_protocol::Language;

    fn inputs(memory_mib: u32) -> TemplateInputs {
        test_inputs(Language::Raw, memory_mib)
    }

    /// An empty store in a temp dir (removed when the dir is dropped).
    fn fresh() -> (tempfile::TempDir, TemplateStore) {
        let root = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(root.path());
        (root, store)
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

    /// A store holding one template of 64 MiB.
    fn with_one() -> (tempfile::TempDir, TemplateStore, Template) {
        let (root, store) = fresh();
        let template = built(&store, &inputs(64));
        (root, store, template)
    }

    #[test]
    fn an_installed_template_is_found_ready() {
        let (_root, store) = fresh();
        assert_eq!(store.lookup(&inputs(64)), Lookup::Missing);
        let template = built(&store, &inputs(64));
        assert_eq!(template.metadata.state_bytes, 17);
        assert_eq!(template.metadata.memory_bytes, 64 << 20);
        assert_eq!(store.lookup(&inputs(64)), Lookup::Ready(Box::new(template)));
    }

    #[test]
    fn a_truncated_or_altered_state_file_is_damaged() {
        let cases: [(&[u8], &str); 2] = [
            (b"QEVM", "4 bytes"),
            // Same size, other bytes.
            (b"QEVM device stat!", "sha256"),
        ];
        for (state, why) in cases {
            let (_root, store, template) = with_one();
            std::fs::write(template.state_file(), state).unwrap();
            let reason = testing::damage(store.lookup(&inputs(64)));
            assert!(reason.contains(why), "{reason}");
        }
    }

    #[test]
    fn a_memory_file_of_another_size_is_damaged() {
        let (_root, store, template) = with_one();
        std::fs::File::options()
            .write(true)
            .open(template.memory_file())
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        testing::damage(store.lookup(&inputs(64)));
    }

    #[test]
    fn metadata_of_other_inputs_is_damaged_even_under_the_right_name() {
        let (_root, store, template) = with_one();
        let mut metadata = template.metadata.clone();
        metadata.inputs.qemu_version = "8.2.0".into();
        std::fs::write(
            template.dir.join(METADATA_FILE),
            serde_json::to_vec(&metadata).unwrap(),
        )
        .unwrap();
        testing::damage(store.lookup(&inputs(64)));
    }

    #[test]
    fn installing_over_a_damaged_template_replaces_it() {
        let (_root, store, template) = with_one();
        std::fs::remove_file(template.state_file()).unwrap();
        testing::damage(store.lookup(&inputs(64)));
        built(&store, &inputs(64));
        assert!(matches!(store.lookup(&inputs(64)), Lookup::Ready(_)));
    }

    #[test]
    fn list_shows_templates_and_prune_removes_the_refused_ones() {
        let (_root, store) = fresh();
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

    #[test]
    fn a_template_json_of_the_layout_before_the_generic_store_still_reads() {
        let (_root, store, template) = with_one();
        // Keys never change silently: existing templates keep theirs (this
        // one moved with protocol 5, whose agent a template must hold,
        // with template format 4, whose disk's allocator is warm, and with
        // format 5, whose disk has no metadata checksums).
        assert_eq!(template.metadata.key, "raw-64m-1c-755d39430a2091f4");
        let old = serde_json::json!({
            "key": template.metadata.key,
            "inputs": inputs(64),
            "memory_bytes": 64 << 20,
            "state_bytes": 17,
            "state_sha256": template.metadata.state_sha256,
            "created_unix": 1_700_000_000_u64,
            "build_ms": 5,
        });
        testing::rewrite_in_older_layout(&template.dir.join(METADATA_FILE), &old);
        let Lookup::Ready(read) = store.lookup(&inputs(64)) else {
            panic!("the older layout was refused");
        };
        assert_eq!(read.metadata.created_unix, 1_700_000_000);
    }
}
