//! Package layers: the key a package list is stored under, and the store
//! of finished layers under `<cache>/packages/` (blocking file work: call
//! it on the blocking pool).
//!
//! A layer is `<key>/layer.img` (a raw ext4 image the guest mounts
//! read-only on `/opt`) and `<key>/layer.json` (what it was built from,
//! what the package manager resolved, its size). It is built in a staging
//! dir (`.staging/<pid>-<start>-<key>`) and renamed into place whole, so a
//! reader sees a complete layer or none.

use super::spec::PackageList;
use crate::template::store::{age_since, disk_usage, entry_dirs, read_json};
use airlock_protocol::client::sha256_hex;
use airlock_protocol::Language;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Version of the layer layout (`python/`, `node/node_modules/` at the
/// image's root) and of what goes into its key; bumped when either changes.
pub const LAYER_FORMAT: u32 = 1;
/// The disk image in a layer dir.
pub const IMAGE_FILE: &str = "layer.img";
/// The metadata in a layer dir.
pub const METADATA_FILE: &str = "layer.json";
/// Where layers are built before they are renamed into place.
const STAGING_DIR: &str = ".staging";

/// Everything a layer depends on: the same inputs give the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInputs {
    /// [`LAYER_FORMAT`].
    pub format: u32,
    /// The language (its root disk's interpreter and package manager).
    pub language: Language,
    /// Hash of the language's root disk (images manifest): the interpreter
    /// the packages were installed for.
    pub rootfs_hash: String,
    /// The pinned packages, canonical and sorted.
    pub packages: Vec<String>,
}

impl LayerInputs {
    /// The inputs of `list` installed over the root disk `rootfs_hash`.
    pub fn new(list: &PackageList, rootfs_hash: impl Into<String>) -> Self {
        Self {
            format: LAYER_FORMAT,
            language: list.language(),
            rootfs_hash: rootfs_hash.into(),
            packages: list.canonical(),
        }
    }

    /// The key: `<language>-pkgs-<16 hex digits of the sha256 of the
    /// inputs>`; a valid identifier.
    pub fn key(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        let digest = sha256_hex(&canonical);
        format!("{}-pkgs-{}", self.language, &digest[..16])
    }
}

/// `layer.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMetadata {
    /// The key (the dir's name).
    pub key: String,
    /// What it was built from.
    pub inputs: LayerInputs,
    /// What the package manager installed, dependencies included
    /// (`pip list --format=freeze`, `npm ls --all --parseable` names).
    pub installed: Vec<String>,
    /// Size of the image file (apparent; it is sparse).
    pub image_bytes: u64,
    /// When it was built (seconds since the Unix epoch).
    pub created_unix: u64,
    /// How long the install took (boot, install, store).
    pub build_ms: u64,
}

/// A checked layer, ready to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Its dir.
    pub dir: PathBuf,
    /// Its metadata.
    pub metadata: LayerMetadata,
}

impl Layer {
    /// The disk image to attach read-only.
    pub fn image(&self) -> PathBuf {
        self.dir.join(IMAGE_FILE)
    }
}

/// One entry of [`LayerStore::list`].
#[derive(Debug, Clone)]
pub struct ListedLayer {
    /// The dir name.
    pub key: String,
    /// Its metadata, or why it cannot be read.
    pub metadata: Result<LayerMetadata, String>,
    /// Disk space it takes (allocated blocks).
    pub disk_bytes: u64,
    /// Time since it was built (`None` without readable metadata).
    pub age: Option<Duration>,
}

/// The layers under one root dir.
#[derive(Debug, Clone)]
pub struct LayerStore {
    root: PathBuf,
}

impl LayerStore {
    /// The store at `root` (created when a layer is first built).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The dir of layer `key`.
    pub fn dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The finished layer of `inputs`, checked (metadata matches, image
    /// present with the recorded size); `None` when there is none or it
    /// is damaged (a damaged one is rebuilt over).
    pub fn lookup(&self, inputs: &LayerInputs) -> Option<Layer> {
        let dir = self.dir(&inputs.key());
        match check(&dir, inputs) {
            Ok(metadata) => Some(Layer { dir, metadata }),
            Err(reason) => {
                if dir.exists() {
                    tracing::warn!(dir = %dir.display(), reason, "damaged package layer: rebuilding it");
                }
                None
            }
        }
    }

    /// A fresh, empty staging dir for building layer `key` (0700); the
    /// staging dirs of dead processes are swept first.
    ///
    /// # Errors
    /// The failing file operation.
    pub fn staging(&self, key: &str) -> io::Result<PathBuf> {
        crate::sweep::fresh_staging_dir(&self.root.join(STAGING_DIR), key)
    }

    /// Completes the layer built in `staging` (its image written and the
    /// VM that wrote it gone): writes its metadata, syncs, and renames it
    /// into place. When another process stored the same key meanwhile,
    /// theirs is kept. The staging dir is gone afterwards, whatever
    /// happened.
    ///
    /// # Errors
    /// The failing file operation.
    pub fn publish(
        &self,
        staging: &Path,
        inputs: &LayerInputs,
        installed: Vec<String>,
        build: Duration,
    ) -> io::Result<Layer> {
        let result = self.publish_inner(staging, inputs, installed, build);
        if staging.exists() {
            let _ = std::fs::remove_dir_all(staging);
        }
        result
    }

    fn publish_inner(
        &self,
        staging: &Path,
        inputs: &LayerInputs,
        installed: Vec<String>,
        build: Duration,
    ) -> io::Result<Layer> {
        let key = inputs.key();
        let image = staging.join(IMAGE_FILE);
        let metadata = LayerMetadata {
            key: key.clone(),
            inputs: inputs.clone(),
            installed,
            image_bytes: std::fs::metadata(&image)?.len(),
            created_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            build_ms: crate::ms(build),
        };
        let json = serde_json::to_vec_pretty(&metadata).map_err(io::Error::other)?;
        std::fs::write(staging.join(METADATA_FILE), json)?;
        // Read-only from now on: a later VM attaches it read-only anyway.
        for file in [IMAGE_FILE, METADATA_FILE] {
            let path = staging.join(file);
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
            std::fs::File::open(&path)?.sync_all()?;
        }
        let dir = self.dir(&key);
        if let Ok(metadata) = check(&dir, inputs) {
            // Someone else built it meanwhile: theirs is as good.
            return Ok(Layer { dir, metadata });
        }
        if dir.exists() {
            remove_layer_dir(&dir)?;
        }
        if let Err(e) = std::fs::rename(staging, &dir) {
            return match check(&dir, inputs) {
                Ok(metadata) => Ok(Layer { dir, metadata }),
                Err(_) => Err(e),
            };
        }
        std::fs::File::open(&self.root)?.sync_all()?;
        Ok(Layer { dir, metadata })
    }

    /// Every layer dir, with its metadata when readable, sorted by key.
    pub fn list(&self) -> Vec<ListedLayer> {
        entry_dirs(&self.root)
            .into_iter()
            .map(|(key, dir)| {
                let metadata = read_metadata(&dir);
                ListedLayer {
                    key,
                    disk_bytes: disk_usage(&dir),
                    age: metadata
                        .as_ref()
                        .ok()
                        .and_then(|m| age_since(m.created_unix)),
                    metadata,
                }
            })
            .collect()
    }

    /// Removes every layer `keep` refuses, and the staging dirs of dead
    /// builds. Returns the keys removed.
    ///
    /// # Errors
    /// The first removal that failed.
    pub fn prune(&self, keep: impl Fn(&ListedLayer) -> bool) -> io::Result<Vec<String>> {
        crate::sweep::sweep_dead_process_dirs(&self.root.join(STAGING_DIR));
        let mut removed = Vec::new();
        for listed in self.list() {
            if !keep(&listed) {
                remove_layer_dir(&self.dir(&listed.key))?;
                removed.push(listed.key);
            }
        }
        Ok(removed)
    }
}

/// Whether a listed layer is usable with the root disks `rootfs_hash`
/// (language -> hash): readable metadata of this format, built over the
/// current root disk of its language. Stale layers are never attached
/// (their key differs); `airlock snapshot prune` removes them.
pub fn is_current(entry: &ListedLayer, rootfs_hash: &BTreeMap<Language, String>) -> bool {
    entry.metadata.as_ref().is_ok_and(|m| {
        m.key == entry.key
            && m.inputs.key() == entry.key
            && m.inputs.format == LAYER_FORMAT
            && rootfs_hash.get(&m.inputs.language) == Some(&m.inputs.rootfs_hash)
    })
}

/// Removes a layer dir. Its files are read-only, which does not stop their
/// removal (the dir itself stays writable). A VM that has the image open
/// keeps reading it until it ends.
fn remove_layer_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn read_metadata(dir: &Path) -> Result<LayerMetadata, String> {
    read_json(&dir.join(METADATA_FILE))
}

/// Checks a layer dir against `inputs`; the reason when it must not be
/// attached.
fn check(dir: &Path, inputs: &LayerInputs) -> Result<LayerMetadata, String> {
    let metadata = read_metadata(dir)?;
    if metadata.key != inputs.key() || &metadata.inputs != inputs {
        return Err(format!(
            "it was built from other inputs (key {})",
            metadata.key
        ));
    }
    let image = dir.join(IMAGE_FILE);
    let size = std::fs::metadata(&image)
        .map_err(|e| format!("{}: {e}", image.display()))?
        .len();
    if size != metadata.image_bytes {
        return Err(format!(
            "{} is {size} bytes, {} recorded",
            image.display(),
            metadata.image_bytes
        ));
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;
    use proptest::prelude::*;

    fn inputs(packages: &[&str]) -> LayerInputs {
        let list = PackageList::parse(Language::Python, packages).unwrap();
        LayerInputs::new(&list, "rootfs-abc")
    }

    #[test]
    fn the_key_names_the_language_and_is_a_valid_id() {
        let key = inputs(&["six==1.16.0"]).key();
        assert!(key.starts_with("python-pkgs-"), "{key}");
        assert_eq!(key.len(), "python-pkgs-".len() + 16);
        airlock_sys_util::check_id(&key).unwrap();
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = inputs(&["six==1.16.0"]);
        let others = [
            inputs(&["six==1.15.0"]),
            inputs(&["six==1.16.0", "idna==3.7"]),
            LayerInputs {
                rootfs_hash: "rootfs-def".into(),
                ..base.clone()
            },
            LayerInputs {
                format: LAYER_FORMAT + 1,
                ..base.clone()
            },
            LayerInputs {
                language: Language::Javascript,
                ..base.clone()
            },
        ];
        for other in others {
            assert_ne!(other.key(), base.key(), "{other:?}");
        }
    }

    proptest! {
        #[test]
        fn the_key_ignores_order_duplicates_and_name_spelling(
            names in proptest::collection::btree_set("[a-z][a-z0-9]{0,6}", 1..6),
            seed in any::<u64>(),
        ) {
            let specs: Vec<String> = names.iter().map(|n| format!("{n}==1.0")).collect();
            let mut shuffled: Vec<String> = specs
                .iter()
                .map(|s| s.to_ascii_uppercase())
                .collect();
            shuffled.push(specs[0].clone());
            let by = (seed % shuffled.len() as u64) as usize;
            shuffled.rotate_left(by);
            let a = LayerInputs::new(&PackageList::parse(Language::Python, &specs).unwrap(), "r");
            let b = LayerInputs::new(&PackageList::parse(Language::Python, &shuffled).unwrap(), "r");
            prop_assert_eq!(a.key(), b.key());
        }
    }

    /// A staged layer with an image of `bytes` bytes.
    fn stage(store: &LayerStore, inputs: &LayerInputs, bytes: usize) -> PathBuf {
        let staging = store.staging(&inputs.key()).unwrap();
        std::fs::write(staging.join(IMAGE_FILE), vec![0u8; bytes]).unwrap();
        staging
    }

    #[test]
    fn a_published_layer_is_found_listed_and_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LayerStore::new(tmp.path().join("packages"));
        let inputs = inputs(&["six==1.16.0"]);
        assert!(store.lookup(&inputs).is_none());
        let staging = stage(&store, &inputs, 4096);
        let layer = store
            .publish(
                &staging,
                &inputs,
                vec!["six==1.16.0".into()],
                Duration::from_secs(3),
            )
            .unwrap();
        assert!(!staging.exists());
        assert_eq!(layer.image(), store.dir(&inputs.key()).join(IMAGE_FILE));
        let found = store.lookup(&inputs).unwrap();
        assert_eq!(found.metadata.installed, ["six==1.16.0"]);
        assert_eq!(found.metadata.image_bytes, 4096);
        let listed = store.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, inputs.key());
        assert!(store.prune(|_| true).unwrap().is_empty());
        assert_eq!(store.prune(|_| false).unwrap(), [inputs.key()]);
        assert!(store.list().is_empty());
    }

    #[test]
    fn only_layers_over_the_current_root_disk_are_current() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LayerStore::new(tmp.path());
        let inputs = inputs(&["six==1.16.0"]);
        let staging = stage(&store, &inputs, 10);
        store
            .publish(&staging, &inputs, Vec::new(), Duration::ZERO)
            .unwrap();
        std::fs::create_dir(tmp.path().join("python-pkgs-damaged")).unwrap();
        let listed = store.list();
        let current = BTreeMap::from([(Language::Python, "rootfs-abc".to_owned())]);
        let rebuilt = BTreeMap::from([(Language::Python, "rootfs-new".to_owned())]);
        let verdicts: Vec<(String, bool, bool)> = listed
            .iter()
            .map(|e| {
                (
                    e.key.clone(),
                    is_current(e, &current),
                    is_current(e, &rebuilt),
                )
            })
            .collect();
        assert_eq!(
            verdicts,
            [
                (inputs.key(), true, false),
                ("python-pkgs-damaged".to_owned(), false, false)
            ]
        );
        let removed = store.prune(|e| is_current(e, &current)).unwrap();
        assert_eq!(removed, ["python-pkgs-damaged"]);
    }

    #[test]
    fn a_layer_whose_image_changed_size_is_not_attached() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LayerStore::new(tmp.path());
        let inputs = inputs(&["idna==3.7"]);
        let staging = stage(&store, &inputs, 100);
        let layer = store
            .publish(&staging, &inputs, Vec::new(), Duration::ZERO)
            .unwrap();
        let image = layer.image();
        std::fs::set_permissions(&image, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::write(&image, b"short").unwrap();
        assert!(store.lookup(&inputs).is_none());
        // A rebuild replaces the damaged one.
        let staging = stage(&store, &inputs, 200);
        store
            .publish(&staging, &inputs, Vec::new(), Duration::ZERO)
            .unwrap();
        assert_eq!(store.lookup(&inputs).unwrap().metadata.image_bytes, 200);
    }

    #[test]
    fn a_second_publish_of_one_key_keeps_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LayerStore::new(tmp.path());
        let inputs = inputs(&["six==1.16.0"]);
        let first = stage(&store, &inputs, 100);
        store
            .publish(&first, &inputs, vec!["first".into()], Duration::ZERO)
            .unwrap();
        let second = stage(&store, &inputs, 300);
        let kept = store
            .publish(&second, &inputs, vec!["second".into()], Duration::ZERO)
            .unwrap();
        assert_eq!(kept.metadata.installed, ["first"]);
        assert!(!second.exists());
    }
}
