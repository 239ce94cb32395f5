//! Package layers: the key a package list is stored under, and the store
//! of finished layers under `<cache>/packages/` (blocking file work: call
//! it on the blocking pool).
//!
//! A layer is `<key>/layer.img` (a raw ext4 image the guest mounts
//! read-only on `/opt`) and `<key>/layer.json` (what it was built from,
//! what the package manager resolved, its size), both read-only, kept by
//! the [`ArtifactStore`]: built in a staging dir, renamed into place
//! whole, checked before each use.

use super::spec::PackageList;
use crate::artifacts::{
    self, Artifact, ArtifactStore, Metadata, Pruned, Staging, StoreEntry, Stored,
};
use airlock_protocol::Language;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Version of the layer layout (`python/`, `node/node_modules/` at the
/// image's root) and of what goes into its key; bumped when either changes.
pub const LAYER_FORMAT: u32 = 1;
/// The disk image in a layer dir.
pub const IMAGE_FILE: &str = "layer.img";
/// The metadata in a layer dir.
pub const METADATA_FILE: &str = "layer.json";
/// The tenants that used a layer, one a line
/// ([`LayerStore::note_tenant`]).
pub const TENANTS_FILE: &str = "tenants";

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
        format!("{}-pkgs-{}", self.language, artifacts::digest_of(self))
    }
}

/// `layer.json`.
pub type LayerMetadata = Metadata<LayerDetails>;

/// What `layer.json` records besides the key, the inputs and the
/// build's time (the install's: boot, install, store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDetails {
    /// What the package manager installed, dependencies included
    /// (`pip list --format=freeze`, `npm ls --all --parseable` names).
    pub installed: Vec<String>,
    /// Size of the image file (apparent; it is sparse).
    pub image_bytes: u64,
}

impl Artifact for LayerDetails {
    type Inputs = LayerInputs;
    const METADATA_FILE: &'static str = METADATA_FILE;
    const DATA_FILES: &'static [&'static str] = &[IMAGE_FILE];
    // A later VM attaches it read-only anyway.
    const SEALED: bool = true;

    fn key_of(inputs: &LayerInputs) -> String {
        inputs.key()
    }

    /// The image's recorded size.
    fn check_files(metadata: &LayerMetadata, dir: &Path) -> Result<(), String> {
        let image = dir.join(IMAGE_FILE);
        let size = artifacts::file_len(&image)?;
        if size != metadata.image_bytes {
            return Err(format!(
                "{} is {size} bytes, {} recorded",
                image.display(),
                metadata.image_bytes
            ));
        }
        Ok(())
    }
}

/// A checked layer, ready to attach.
pub type Layer = Stored<LayerDetails>;

impl Stored<LayerDetails> {
    /// The disk image to attach read-only.
    pub fn image(&self) -> PathBuf {
        self.dir.join(IMAGE_FILE)
    }
}

/// One entry of [`LayerStore::list`] and [`LayerStore::list_over`].
pub type ListedLayer = StoreEntry<LayerDetails>;

/// The layers under one root dir.
pub type LayerStore = ArtifactStore<LayerDetails>;

impl ArtifactStore<LayerDetails> {
    /// The finished layer of `inputs`, checked (metadata matches, image
    /// present with the recorded size); `None` when there is none or it
    /// is damaged (a damaged one is rebuilt over).
    pub fn find(&self, inputs: &LayerInputs) -> Option<Layer> {
        match self.lookup(inputs) {
            artifacts::Lookup::Ready(layer) => Some(*layer),
            artifacts::Lookup::Missing => None,
            artifacts::Lookup::Damaged(reason) => {
                tracing::warn!(
                    key = inputs.key(),
                    reason,
                    "damaged package layer: rebuilding it"
                );
                None
            }
        }
    }

    /// Completes the layer built in `staging` (its image written and the
    /// VM that wrote it gone): writes its metadata, seals and syncs it,
    /// and renames it into place ([`ArtifactStore::publish_staged`]: when
    /// another process stored the same key meanwhile, theirs is kept).
    /// The staging dir is gone afterwards, whatever happened.
    ///
    /// # Errors
    /// The failing file operation.
    pub fn publish(
        &self,
        staging: Staging,
        inputs: &LayerInputs,
        installed: Vec<String>,
        build: Duration,
    ) -> io::Result<Layer> {
        self.publish_staged(staging, inputs, build, |dir| {
            Ok(LayerDetails {
                installed,
                image_bytes: std::fs::metadata(dir.join(IMAGE_FILE))?.len(),
            })
        })
    }

    /// Records that `tenant` uses `layer` (a line in its `tenants` file,
    /// once per tenant), for [`LayerStore::bytes_by_tenant`].
    ///
    /// # Errors
    /// The failing read or append.
    pub fn note_tenant(layer: &Layer, tenant: &str) -> io::Result<()> {
        use std::io::Write;
        let path = layer.dir.join(TENANTS_FILE);
        let known = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        if known.lines().any(|line| line == tenant) || tenant.contains('\n') {
            return Ok(());
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?
            .write_all(format!("{tenant}\n").as_bytes())
    }

    /// The tenants that used the layer in `dir` ([`LayerStore::note_tenant`]),
    /// sorted, once each; none when it records none.
    pub fn tenants_of(dir: &Path) -> Vec<String> {
        let Ok(text) = std::fs::read_to_string(dir.join(TENANTS_FILE)) else {
            return Vec::new();
        };
        let tenants: std::collections::BTreeSet<&str> =
            text.lines().filter(|l| !l.is_empty()).collect();
        tenants.into_iter().map(str::to_owned).collect()
    }

    /// What each tenant's layers take on disk: every published layer a
    /// tenant used counts whole for it (a layer two tenants share counts
    /// for both: either alone would need it), by tenant name.
    pub fn bytes_by_tenant(&self) -> BTreeMap<String, u64> {
        let mut bytes = BTreeMap::new();
        for entry in self.list() {
            for tenant in Self::tenants_of(&entry.dir) {
                *bytes.entry(tenant).or_insert(0) += entry.disk_bytes;
            }
        }
        bytes
    }

    /// Every layer, half-built ones included, judged against the root
    /// disks `rootfs_hash` (language -> hash): current when built over the
    /// current root disk of its language in this format.
    pub fn list_over(&self, rootfs_hash: &BTreeMap<Language, String>) -> Vec<ListedLayer> {
        self.entries(|m| current_over(m, rootfs_hash))
    }

    /// Removes the layers [`LayerStore::list_over`] does not find current
    /// (stale, damaged, half-built), never one in use.
    ///
    /// # Errors
    /// The first removal that failed.
    pub fn prune_over(&self, rootfs_hash: &BTreeMap<Language, String>) -> io::Result<Pruned> {
        self.prune_stale(|m| current_over(m, rootfs_hash))
    }
}

/// Whether a listed layer is usable with the root disks `rootfs_hash`
/// (language -> hash): readable metadata of this format, built over the
/// current root disk of its language. Stale layers are never attached
/// (their key differs); `airlock snapshot prune` removes them.
pub fn is_current(entry: &ListedLayer, rootfs_hash: &BTreeMap<Language, String>) -> bool {
    entry.metadata.as_ref().is_ok_and(|m| {
        m.key == entry.key && m.inputs.key() == entry.key && current_over(m, rootfs_hash)
    })
}

/// Whether `metadata` is of a layer of this format over the current root
/// disk of its language.
fn current_over(metadata: &LayerMetadata, rootfs_hash: &BTreeMap<Language, String>) -> bool {
    metadata.inputs.format == LAYER_FORMAT
        && rootfs_hash.get(&metadata.inputs.language) == Some(&metadata.inputs.rootfs_hash)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;
    use crate::artifacts::testing;
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

    /// An empty store in a temp dir (removed when the dir is dropped).
    fn fresh() -> (tempfile::TempDir, LayerStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = LayerStore::new(tmp.path());
        (tmp, store)
    }

    /// A staged layer with an image of `bytes` bytes.
    fn stage(store: &LayerStore, inputs: &LayerInputs, bytes: usize) -> Staging {
        let staging = store.staging(&inputs.key()).unwrap();
        std::fs::write(staging.path().join(IMAGE_FILE), vec![0u8; bytes]).unwrap();
        staging
    }

    /// A published layer of `inputs` with an image of `bytes` bytes.
    fn published(store: &LayerStore, inputs: &LayerInputs, bytes: usize) -> Layer {
        let staging = stage(store, inputs, bytes);
        store
            .publish(staging, inputs, Vec::new(), Duration::ZERO)
            .unwrap()
    }

    #[test]
    fn each_tenant_is_charged_the_layers_it_used_once_each() {
        let (_tmp, store) = fresh();
        let six = published(&store, &inputs(&["six==1.16.0"]), 64 * 1024);
        let attrs = published(&store, &inputs(&["attrs==23.1.0"]), 128 * 1024);
        for (layer, tenant) in [
            (&six, "alice"),
            (&six, "bob"),
            (&six, "alice"),
            (&attrs, "bob"),
        ] {
            LayerStore::note_tenant(layer, tenant).unwrap();
        }
        let sizes: BTreeMap<String, u64> = store
            .list()
            .into_iter()
            .map(|e| (e.key, e.disk_bytes))
            .collect();
        let (six_bytes, attrs_bytes) = (sizes[&six.metadata.key], sizes[&attrs.metadata.key]);
        assert!(
            six_bytes >= 64 * 1024 && attrs_bytes >= 128 * 1024,
            "{sizes:?}"
        );
        let by_tenant = store.bytes_by_tenant();
        assert_eq!(by_tenant.len(), 2, "{by_tenant:?}");
        assert_eq!(by_tenant["alice"], six_bytes);
        assert_eq!(by_tenant["bob"], six_bytes + attrs_bytes);
        let noted = std::fs::read_to_string(six.dir.join(TENANTS_FILE)).unwrap();
        assert_eq!(noted, "alice\nbob\n");
        // The layer is still whole: the tenants file is not one of its files.
        assert!(store.find(&inputs(&["six==1.16.0"])).is_some());
    }

    #[test]
    fn a_published_layer_is_found_listed_and_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LayerStore::new(tmp.path().join("packages"));
        let inputs = inputs(&["six==1.16.0"]);
        assert!(store.find(&inputs).is_none());
        let staging = stage(&store, &inputs, 4096);
        let staged = staging.path().to_path_buf();
        let layer = store
            .publish(
                staging,
                &inputs,
                vec!["six==1.16.0".into()],
                Duration::from_secs(3),
            )
            .unwrap();
        assert!(!staged.exists());
        assert_eq!(layer.image(), store.dir(&inputs.key()).join(IMAGE_FILE));
        let found = store.find(&inputs).unwrap();
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
        let (tmp, store) = fresh();
        let inputs = inputs(&["six==1.16.0"]);
        published(&store, &inputs, 10);
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
        let (_tmp, store) = fresh();
        let inputs = inputs(&["idna==3.7"]);
        let layer = published(&store, &inputs, 100);
        let image = layer.image();
        std::fs::set_permissions(&image, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::write(&image, b"short").unwrap();
        assert!(store.find(&inputs).is_none());
        // A rebuild replaces the damaged one.
        published(&store, &inputs, 200);
        assert_eq!(store.find(&inputs).unwrap().metadata.image_bytes, 200);
    }

    #[test]
    fn a_second_publish_of_one_key_keeps_the_first() {
        let (_tmp, store) = fresh();
        let inputs = inputs(&["six==1.16.0"]);
        let first = stage(&store, &inputs, 100);
        store
            .publish(first, &inputs, vec!["first".into()], Duration::ZERO)
            .unwrap();
        let second = stage(&store, &inputs, 300);
        let staged = second.path().to_path_buf();
        let kept = store
            .publish(second, &inputs, vec!["second".into()], Duration::ZERO)
            .unwrap();
        assert_eq!(kept.metadata.installed, ["first"]);
        assert!(!staged.exists());
    }

    #[test]
    fn a_published_layer_is_sealed_and_stale_over_a_rebuilt_root_disk() {
        use std::os::unix::fs::PermissionsExt;
        let (_tmp, store) = fresh();
        let inputs = inputs(&["six==1.16.0"]);
        let layer = published(&store, &inputs, 10);
        for file in [IMAGE_FILE, METADATA_FILE] {
            let mode = std::fs::metadata(layer.dir.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o444, "{file}");
        }
        let current = BTreeMap::from([(Language::Python, "rootfs-abc".to_owned())]);
        let rebuilt = BTreeMap::from([(Language::Python, "rootfs-new".to_owned())]);
        assert_eq!(
            store.list_over(&current)[0].state,
            artifacts::EntryState::Current
        );
        assert_eq!(
            store.list_over(&rebuilt)[0].state,
            artifacts::EntryState::Stale
        );
        assert_eq!(store.prune_over(&current).unwrap(), Pruned::default());
        assert_eq!(store.prune_over(&rebuilt).unwrap().removed, [inputs.key()]);
        assert!(store.find(&inputs).is_none());
    }

    #[test]
    fn a_layer_json_of_the_layout_before_the_generic_store_still_reads() {
        let (_tmp, store) = fresh();
        let inputs = inputs(&["six==1.16.0"]);
        // Keys never change silently: existing layers keep theirs.
        assert_eq!(inputs.key(), "python-pkgs-6a913bc73062b35e");
        let layer = published(&store, &inputs, 10);
        let old = serde_json::json!({
            "key": inputs.key(),
            "inputs": inputs,
            "installed": ["six==1.16.0"],
            "image_bytes": 10,
            "created_unix": 1_700_000_000_u64,
            "build_ms": 5,
        });
        testing::rewrite_in_older_layout(&layer.dir.join(METADATA_FILE), &old);
        let read = store.find(&inputs).unwrap();
        assert_eq!(read.metadata.installed, ["six==1.16.0"]);
    }
}
