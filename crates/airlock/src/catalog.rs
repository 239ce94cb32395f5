//! What Airlock keeps on disk between runs, for a person to see and clean
//! up (`airlock snapshot`): the memory templates (`docs/templates.md`) and
//! the package layers (`docs/packages.md`), each listed with whether the
//! current host and images can still use it, and pruned of those they
//! cannot.
//!
//! [`Artifacts`] is the whole API: plain listings ([`TemplateEntry`],
//! [`LayerEntry`]) and the keys a prune removed. The stores behind it
//! (`template::store`, `packages::layer`) are how it is done, not what a
//! caller sees.

use crate::artifacts::EntryState;
use crate::error::{BootError, Error, Result};
use crate::manager::VmManager;
use crate::packages::{install::store_of, ListedLayer};
use crate::task::blocking;
use crate::template::{Template, TemplateShape, Templates};
use std::time::Duration;

/// One memory template in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateEntry {
    /// Its key (the name of its dir).
    pub key: String,
    /// The VM shape it restores (`None`: its metadata cannot be read).
    pub shape: Option<TemplateShape>,
    /// The key of the package layer it was built over, if any.
    pub packages_layer: Option<String>,
    /// Disk space it takes (allocated blocks: the memory file is sparse).
    pub disk_bytes: u64,
    /// Time since it was built (`None` without readable metadata).
    pub age: Option<Duration>,
    /// How many VMs were restored from it.
    pub uses: u64,
    /// Whether it is the intact template this host and these images would
    /// restore for its shape (over a layer that is itself current).
    pub current: bool,
}

/// One package layer in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Its key (the name of its dir).
    pub key: String,
    /// The pinned packages it holds, as asked (`None`: its metadata cannot
    /// be read).
    pub packages: Option<Vec<String>>,
    /// Disk space it takes (allocated blocks).
    pub disk_bytes: u64,
    /// Time since it was built (`None` without readable metadata).
    pub age: Option<Duration>,
    /// Whether the current root disks can attach it.
    pub current: bool,
    /// The tenants that used it (what each tenant's layers cost: a layer
    /// two tenants share counts for both), sorted.
    pub tenants: Vec<String>,
}

/// The templates and package layers of one [`VmManager`]'s configuration,
/// judged against its host and images.
#[derive(Debug, Clone)]
pub struct Artifacts {
    manager: VmManager,
    templates: Templates,
}

impl Artifacts {
    /// The artifacts `manager` restores from and attaches.
    pub fn new(manager: VmManager) -> Self {
        let templates = Templates::new(manager.clone());
        Self { manager, templates }
    }

    /// Builds the memory template of `shape`, replacing the one stored
    /// (an explicit build always builds).
    ///
    /// # Errors
    /// [`BootError::ImagesMissing`] without a root disk for the language,
    /// [`BootError::Io`] when the old template cannot be removed, or the
    /// template boot's or save's error.
    pub async fn build_template(&self, shape: TemplateShape) -> Result<Template, BootError> {
        let inputs = self.templates.inputs(shape)?;
        let store = self.templates.store().clone();
        let key = inputs.key();
        let dir = store.dir(&key);
        blocking("remove a memory template", move || store.remove(&key))
            .await?
            .map_err(|e| BootError::io("remove", dir, e))?;
        self.templates.build(&inputs).await
    }

    /// Every template in the store, sorted by key (half-built ones left
    /// out), judged against this host and its layers.
    ///
    /// # Errors
    /// [`Error::Boot`] ([`BootError::TaskFailed`]) when the listing task
    /// fails.
    pub async fn templates(&self) -> Result<Vec<TemplateEntry>> {
        let listed = self.templates.list().await?;
        Ok(listed
            .into_iter()
            .filter(|entry| entry.state != EntryState::HalfBuilt)
            .map(|entry| {
                let (shape, packages_layer) = match &entry.metadata {
                    Ok(m) => (Some(m.inputs.shape), m.inputs.packages_layer.clone()),
                    Err(_) => (None, None),
                };
                TemplateEntry {
                    current: entry.state == EntryState::Current,
                    key: entry.key,
                    shape,
                    packages_layer,
                    disk_bytes: entry.disk_bytes,
                    age: entry.age,
                    uses: entry.uses,
                }
            })
            .collect())
    }

    /// Every package layer in the store, sorted by key (half-built ones
    /// left out).
    ///
    /// # Errors
    /// [`Error::Boot`] ([`BootError::TaskFailed`]) when the listing task
    /// fails.
    pub async fn layers(&self) -> Result<Vec<LayerEntry>> {
        let store = store_of(&self.manager);
        let rootfs = self.manager.images().rootfs_hash.clone();
        blocking("list package layers", move || {
            store
                .list_over(&rootfs)
                .iter()
                .filter(|entry| entry.state != EntryState::HalfBuilt)
                .map(layer_entry)
                .collect()
        })
        .await
        .map_err(Error::from)
    }

    /// Removes every template that is not current (other kernel, root
    /// disk, QEMU or agent; over a stale layer; damaged; half built),
    /// never one in use. Returns the keys removed.
    ///
    /// # Errors
    /// [`Error::Boot`] ([`BootError::Io`]) for the first removal that
    /// failed.
    pub async fn prune_templates(&self) -> Result<Vec<String>> {
        Ok(self.templates.prune().await?.removed)
    }

    /// Removes every layer the current root disks cannot attach (other
    /// root disk, damaged, half built), never one in use. Returns the
    /// keys removed.
    ///
    /// # Errors
    /// [`Error::Io`] for the first removal that failed.
    pub async fn prune_layers(&self) -> Result<Vec<String>> {
        let store = store_of(&self.manager);
        let root = store.root().to_path_buf();
        let rootfs = self.manager.images().rootfs_hash.clone();
        let pruned = blocking("prune package layers", move || store.prune_over(&rootfs))
            .await?
            .map_err(|e| Error::io("prune package layers in", root, e))?;
        Ok(pruned.removed)
    }
}

/// The listing of one stored layer (pure).
fn layer_entry(entry: &ListedLayer) -> LayerEntry {
    LayerEntry {
        key: entry.key.clone(),
        packages: entry
            .metadata
            .as_ref()
            .ok()
            .map(|m| m.inputs.packages.clone()),
        disk_bytes: entry.disk_bytes,
        age: entry.age,
        current: entry.state == EntryState::Current,
        tenants: crate::packages::LayerStore::tenants_of(&entry.dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_layer_is_listed_without_packages() {
        let listed = ListedLayer {
            key: "python-pkgs-0123".into(),
            dir: "/nonexistent/python-pkgs-0123".into(),
            metadata: Err("no layer.json".into()),
            disk_bytes: 4096,
            age: None,
            uses: 0,
            last_use: None,
            state: EntryState::Damaged("no layer.json".into()),
            in_use: false,
        };
        let entry = layer_entry(&listed);
        assert_eq!(entry.key, "python-pkgs-0123");
        assert_eq!(entry.packages, None);
        assert_eq!((entry.disk_bytes, entry.current), (4096, false));
    }
}
