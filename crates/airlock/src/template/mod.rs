//! Memory templates (QEMU's VM templating, `docs/templates.md`): a VM of
//! one shape booted once to "agent ready, interpreter warm", paused and
//! saved, its guest RAM a file; every later VM of the shape is a clone
//! that maps the file privately (copy-on-write) and loads only the device
//! state, instead of booting.
//!
//! - [`key`]: what a template must match (images, QEMU, argv, shape,
//!   protocol) and the key it is stored under;
//! - [`store`]: the files under `<cache>/templates/<key>/`, kept by the
//!   generic [`crate::artifacts`] store: written atomically, checked
//!   before each use, listed and pruned;
//! - [`build`]: a template's boot, warm-up and save;
//! - [`restore`]: the [`RestoreLauncher`], the second implementation of
//!   `Launcher`: slots, retries and teardown are those
//!   of every VM.
//!
//! [`Templates`] ties them to a [`VmManager`].

pub mod build;
pub mod key;
pub mod restore;
pub mod store;

pub use key::{TemplateInputs, TemplateShape, TEMPLATE_FORMAT};
pub(crate) use restore::reseed;
pub use restore::{clone_spec, RestoreLauncher};
pub use store::{Listed, Lookup, Template, TemplateDetails, TemplateMetadata, TemplateStore};

use crate::artifacts::{eviction_spares, EntryState, Pruned};
use crate::error::{BootError, Result};
use crate::flight::SingleFlight;
use crate::launcher::MachinePlan;
use crate::machine::VmOptions;
use crate::manager::VmManager;
use crate::task::blocking;
use crate::vm::Vm;
use crate::workdir::WorkDir;
use airlock_protocol::client::sha256_hex;
use airlock_qemu::{argv_to_lines, BootImages, HostCaps, QemuArgs};
use std::path::PathBuf;
use std::time::Duration;

/// What [`Templates::find`] found for a shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A checked template.
    Ready(Template),
    /// None usable: build one with [`Templates::build`].
    Build {
        /// What it must be built from.
        inputs: TemplateInputs,
        /// Why the one in the store was refused (`None`: there was none).
        damaged: Option<String>,
    },
}

/// The memory templates of one [`VmManager`]: found, built, restored.
#[derive(Debug, Clone)]
pub struct Templates {
    manager: VmManager,
    store: TemplateStore,
    /// One build per template at a time in this process (two runs of one
    /// missing shape build it once); other templates build meanwhile.
    building: SingleFlight,
}

impl Templates {
    /// The templates of `manager`, stored in its configured
    /// `templates_dir`.
    pub fn new(manager: VmManager) -> Self {
        let store = TemplateStore::new(manager.config().templates_dir.clone());
        Self {
            manager,
            store,
            building: SingleFlight::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &TemplateStore {
        &self.store
    }

    /// Every template, half-built ones included, judged against this host
    /// and these images: current when intact, what this host would build
    /// for its shape now, and (built over a package layer) over a current
    /// layer; stale, damaged or half-built otherwise.
    ///
    /// # Errors
    /// [`BootError::TaskFailed`] when the blocking task fails.
    pub async fn list(&self) -> Result<Vec<Listed>, BootError> {
        let templates = self.clone();
        blocking("list memory templates", move || {
            templates.store.entries(templates.current_judge())
        })
        .await
    }

    /// Removes the templates [`Templates::list`] does not find current
    /// (stale, damaged, half-built), never one in use (restored VMs map
    /// its memory file; a live process builds it).
    ///
    /// # Errors
    /// [`BootError::Io`] for the first removal that failed.
    pub async fn prune(&self) -> Result<Pruned, BootError> {
        let templates = self.clone();
        let root = self.store.root().to_path_buf();
        blocking("prune memory templates", move || {
            templates.store.prune_stale(templates.current_judge())
        })
        .await?
        .map_err(|e| BootError::io("prune templates in", root, e))
    }

    /// Whether a template's metadata is what this host would build now
    /// (blocking: it lists the package layers).
    fn current_judge(&self) -> impl Fn(&TemplateMetadata) -> bool + '_ {
        let layers = crate::packages::layer::LayerStore::new(&self.manager.config().packages_dir)
            .list_over(&self.manager.images().rootfs_hash);
        let current_layers: Vec<String> = layers
            .into_iter()
            .filter(|layer| layer.state == EntryState::Current)
            .map(|layer| layer.key)
            .collect();
        move |metadata| {
            is_current(metadata, &current_layers, |shape, layer| {
                self.inputs_over(shape, layer)
            })
        }
    }

    /// What the template of `shape` must match on this host and images.
    ///
    /// # Errors
    /// [`BootError::ImagesMissing`] without a root disk for the shape's
    /// image; [`BootError::Qemu`] for a shape QEMU refuses.
    pub fn inputs(&self, shape: TemplateShape) -> Result<TemplateInputs, BootError> {
        self.inputs_over(shape, None)
    }

    /// What the template of `shape` with the package layer `layer` (its
    /// key) attached must match.
    ///
    /// # Errors
    /// As [`Templates::inputs`].
    pub fn inputs_over(
        &self,
        shape: TemplateShape,
        layer: Option<&str>,
    ) -> Result<TemplateInputs, BootError> {
        let images = self.manager.images();
        let rootfs_hash = images.disk(shape.image())?.hash.clone();
        let caps = &self.manager.host().caps;
        Ok(TemplateInputs {
            format: TEMPLATE_FORMAT,
            shape,
            kernel_hash: images.kernel_hash.clone(),
            initramfs_hash: images.initramfs_hash.clone(),
            rootfs_hash,
            qemu_version: caps.qemu_version.to_string(),
            accel: caps.accel.as_str().to_owned(),
            argv_hash: argv_hash(shape, caps, layer.is_some())?,
            protocol: airlock_protocol::PROTOCOL_VERSION,
            airlock_version: env!("CARGO_PKG_VERSION").to_owned(),
            packages_layer: layer.map(str::to_owned),
        })
    }

    /// Looks up the template of `shape` and checks it. A damaged or
    /// mismatched one is reported (and logged as a warning), never
    /// returned.
    ///
    /// # Errors
    /// As [`Templates::inputs`].
    pub async fn find(&self, shape: TemplateShape) -> Result<Found, BootError> {
        self.find_inputs(self.inputs(shape)?).await
    }

    /// [`Templates::find`] for the template of `shape` over the package
    /// layer `layer` (its key; `None`: no layer).
    ///
    /// # Errors
    /// As [`Templates::inputs`].
    pub async fn find_over(
        &self,
        shape: TemplateShape,
        layer: Option<&str>,
    ) -> Result<Found, BootError> {
        self.find_inputs(self.inputs_over(shape, layer)?).await
    }

    async fn find_inputs(&self, inputs: TemplateInputs) -> Result<Found, BootError> {
        let (store, looked_up) = (self.store.clone(), inputs.clone());
        let found = blocking("check a memory template", move || {
            let found = store.lookup(&looked_up);
            if let Lookup::Ready(template) = &found {
                // Marked used before a VM maps it: eviction spares it.
                if let Err(e) = TemplateStore::touch(template) {
                    tracing::debug!(template = template.metadata.key, error = %e, "not touched");
                }
            }
            found
        })
        .await?;
        Ok(match found {
            Lookup::Ready(template) => Found::Ready(*template),
            Lookup::Missing => Found::Build {
                inputs,
                damaged: None,
            },
            Lookup::Damaged(reason) => {
                tracing::warn!(
                    template = inputs.key(),
                    reason,
                    "memory template damaged or mismatched: rebuilding it"
                );
                Found::Build {
                    inputs,
                    damaged: Some(reason),
                }
            }
        })
    }

    /// Builds the template of `inputs` (replacing a damaged one), unless a
    /// good one appeared while this waited for another build of it.
    ///
    /// # Errors
    /// The template boot's or save's error.
    pub async fn build(&self, inputs: &TemplateInputs) -> Result<Template, BootError> {
        // Another build of it may take its slot wait, its boot attempts
        // and its warm-up: wait that long, not for ever.
        let config = self.manager.config();
        let wait = config.queue_timeout
            + config.boot_timeout * config.boot_attempts
            + airlock_protocol::abi::HOST_WARM_TIMEOUT
            + Duration::from_secs(60);
        match self.build_within(inputs, wait).await? {
            Some(template) => Ok(template),
            None => Err(BootError::TaskFailed {
                task: "wait for another build of a memory template",
                message: format!(
                    "template {} was still being built after {}s",
                    inputs.key(),
                    wait.as_secs()
                ),
            }),
        }
    }

    /// As [`Templates::build`], waiting at most `wait` for another
    /// request's build of the same template: `None` past it (boot cold
    /// instead). After a build, the store is brought under its budget
    /// ([`Config::templates_budget`](crate::Config::templates_budget)).
    ///
    /// # Errors
    /// The template boot's or save's error.
    pub async fn build_within(
        &self,
        inputs: &TemplateInputs,
        wait: Duration,
    ) -> Result<Option<Template>, BootError> {
        let key = inputs.key();
        let _flight = match self.building.take(&key, wait).await {
            Ok(flight) => flight,
            Err(busy) => {
                tracing::info!(
                    template = key,
                    waited_ms = crate::ms(busy.waited),
                    "template still being built: not waiting longer"
                );
                return Ok(None);
            }
        };
        if let Found::Ready(template) = self.find_inputs(inputs.clone()).await? {
            return Ok(Some(template));
        }
        let store = self.store.clone();
        let removed_key = key.clone();
        blocking("remove a damaged memory template", move || {
            store.remove(&removed_key)
        })
        .await?
        .map_err(|e| BootError::io("remove", self.store.dir(&key), e))?;
        let template = build::build(&self.manager, &self.store, inputs).await?;
        self.evict_over_budget(&key).await;
        Ok(Some(template))
    }

    /// Brings the store under its budget, sparing `keep` (the template
    /// just built) and the templates without a layer of the configured
    /// shapes and the pools' (so that templates over package layers, which
    /// any new list makes, cannot push them out). A failure is logged:
    /// the template built is fine.
    async fn evict_over_budget(&self, keep: &str) {
        let config = self.manager.config();
        let Some(budget) = config.templates_budget else {
            return;
        };
        let mut kept: Vec<String> = config
            .template_shapes
            .iter()
            .flatten()
            .copied()
            .chain(config.warm_pools.iter().map(|pool| pool.shape))
            .filter_map(|shape| self.inputs(shape).ok())
            .map(|inputs| inputs.key())
            .collect();
        kept.push(keep.to_owned());
        let store = self.store.clone();
        let spares = eviction_spares(config);
        let evicted = blocking("evict memory templates", move || {
            store.evict_to_budget(budget, spares, |key| kept.iter().any(|k| k == key))
        })
        .await;
        match evicted {
            Ok(Ok(evicted)) if !evicted.removed.is_empty() => tracing::info!(
                removed = ?evicted.removed,
                freed_bytes = evicted.freed_bytes,
                "memory templates evicted to stay within the budget"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot evict memory templates"),
            Err(e) => tracing::warn!(error = %e, "cannot evict memory templates"),
        }
    }

    /// The template of `shape`, built first when missing or damaged.
    ///
    /// # Errors
    /// As [`Templates::find`] and [`Templates::build`].
    pub async fn ensure(&self, shape: TemplateShape) -> Result<Template, BootError> {
        match self.find(shape).await? {
            Found::Ready(template) => Ok(template),
            Found::Build { inputs, .. } => self.build(&inputs).await,
        }
    }

    /// A VM restored from `template` (which must be of `options`' shape,
    /// without a network): the manager's slots, retries and teardown, the
    /// restore launcher.
    ///
    /// # Errors
    /// [`BootError::TemplateMismatch`] when the shapes differ or a network is
    /// asked for, or as [`VmManager::boot`].
    pub async fn boot(&self, options: &VmOptions, template: &Template) -> Result<Vm, BootError> {
        if options.network.mode() != airlock_gvproxy::NetworkMode::None {
            return Err(BootError::TemplateMismatch {
                reason: "a VM with a network cannot be restored from a memory template (QEMU 7.2 \
                         cannot reconnect its network device): boot it cold"
                    .to_owned(),
            });
        }
        let shape = template.metadata.inputs.shape;
        let layer_attached = options.packages.as_ref().is_some_and(|disk| !disk.writable);
        if layer_attached != template.metadata.inputs.packages_layer.is_some() {
            return Err(BootError::TemplateMismatch {
                reason: format!(
                    "template {} {} a package layer and this VM {}",
                    template.metadata.key,
                    if layer_attached { "has no" } else { "has" },
                    if layer_attached {
                        "has one"
                    } else {
                        "has none"
                    }
                ),
            });
        }
        if shape != shape_of(options) {
            return Err(BootError::TemplateMismatch {
                reason: format!(
                    "template {} is for {shape}, not for this VM",
                    template.metadata.key
                ),
            });
        }
        let images = self.manager.images();
        let launcher = RestoreLauncher::new(
            self.manager.host().clone(),
            BootImages {
                kernel: images.kernel.clone(),
                initramfs: images.initramfs.clone(),
            },
            template.clone(),
        );
        let vm = self.manager.boot_with(options, &launcher).await?;
        let used = template.clone();
        let counted = blocking("count a template use", move || {
            TemplateStore::record_use(&used)
        })
        .await?;
        if let Err(e) = counted {
            tracing::debug!(template = template.metadata.key, error = %e, "use not counted");
        }
        Ok(vm)
    }
}

impl Templates {
    /// [`Templates::boot`], falling back to a cold boot when the restore
    /// itself fails (QEMU refused the state, the clone died or hung, the
    /// agent did not answer): the template is then removed with a
    /// warning, so that the next run rebuilds it rather than trying it
    /// again. Other errors (no slot, shut down) are returned as they are.
    ///
    /// # Errors
    /// As [`VmManager::boot`].
    pub async fn boot_or_cold(
        &self,
        options: &VmOptions,
        template: &Template,
    ) -> Result<Vm, BootError> {
        let error = match self.boot(options, template).await {
            Ok(vm) => return Ok(vm),
            Err(e) if !restore_failed(&e) => return Err(e),
            Err(e) => e,
        };
        let key = template.metadata.key.clone();
        tracing::warn!(
            template = key,
            error = %error,
            "restoring the memory template failed: booting cold; it will be rebuilt"
        );
        let store = self.store.clone();
        let removed = blocking("remove a memory template", move || store.remove(&key)).await?;
        if let Err(e) = removed {
            tracing::warn!(template = template.metadata.key, error = %e, "cannot remove the template");
        }
        self.manager.boot(options).await
    }
}

/// Whether the template of `metadata` is what this host builds now: its
/// package layer, if any, among `current_layers`, and its inputs those
/// `inputs_over` gives for its shape and layer (pure).
fn is_current(
    metadata: &TemplateMetadata,
    current_layers: &[String],
    inputs_over: impl Fn(TemplateShape, Option<&str>) -> Result<TemplateInputs, BootError>,
) -> bool {
    let layer = metadata.inputs.packages_layer.as_deref();
    layer.is_none_or(|key| current_layers.iter().any(|k| k == key))
        && inputs_over(metadata.inputs.shape, layer).is_ok_and(|inputs| inputs == metadata.inputs)
}

/// Whether `error` says the restore went wrong (rather than the host or
/// the request).
fn restore_failed(error: &BootError) -> bool {
    matches!(
        error,
        BootError::Qemu { .. }
            | BootError::Restore { .. }
            | BootError::VmDied { .. }
            | BootError::BootTimeout { .. }
            | BootError::AttemptTimeout { .. }
            | BootError::Protocol { .. }
    )
}

/// The template shape of a VM.
pub fn shape_of(options: &VmOptions) -> TemplateShape {
    options.shape()
}

/// Hash of a clone's argv for `shape` on `caps`, its per-VM paths fixed:
/// it changes when the device set or any option changes.
fn argv_hash(shape: TemplateShape, caps: &HostCaps, layer: bool) -> Result<String, BootError> {
    let fixed = PathBuf::from("/airlock/template");
    let plan = MachinePlan {
        vm_id: "template".into(),
        memory_mib: shape.memory_mib,
        vcpus: shape.vcpus,
        workdir: WorkDir::at(fixed.join("vm")),
        root_base: fixed.join("rootfs.qcow2"),
        network_socket: None,
        verbose_console: false,
        packages: layer.then(|| crate::machine::PackageDisk {
            image: fixed.join("packages.img"),
            writable: false,
        }),
        translation_cache_mib: shape.image().translation_cache_mib(),
        workspace_base: (shape.disk_mib > 0).then(|| fixed.join("workspace.qcow2")),
        mounts: Vec::new(),
    };
    let boot = BootImages {
        kernel: fixed.join("kernel"),
        initramfs: fixed.join("initramfs"),
    };
    let spec = clone_spec(&plan, &boot, &fixed.join("memory"));
    let argv = QemuArgs::build(&spec, caps)
        .map_err(BootError::qemu(None, "build a template's command line"))?;
    Ok(sha256_hex(argv_to_lines(&argv).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_protocol::Language;
    use airlock_qemu::{Accel, Arch, QemuVersion};

    fn caps() -> HostCaps {
        HostCaps {
            arch: Arch::X86_64,
            accel: Accel::Tcg,
            qemu_version: QemuVersion::new(7, 2, 0),
            io_uring: true,
            tsc_khz: Some(2_000_000),
        }
    }

    fn shape(memory_mib: u32) -> TemplateShape {
        TemplateShape {
            language: Language::Python,
            image: None,
            memory_mib,
            vcpus: 1,
            disk_mib: 0,
        }
    }

    #[test]
    fn a_template_is_current_only_with_this_hosts_inputs_and_a_current_layer() {
        let mut inputs = key::test_inputs(Language::Python, 512);
        let metadata = |inputs: &TemplateInputs| TemplateMetadata {
            key: inputs.key(),
            inputs: inputs.clone(),
            created_unix: 0,
            build_ms: 0,
            details: TemplateDetails {
                memory_bytes: 512 << 20,
                state_bytes: 0,
                state_sha256: String::new(),
                workspace_bytes: 0,
            },
        };
        let host = |other: &TemplateInputs| {
            let other = other.clone();
            move |shape: TemplateShape, layer: Option<&str>| {
                Ok(TemplateInputs {
                    shape,
                    packages_layer: layer.map(str::to_owned),
                    ..other.clone()
                })
            }
        };
        let same = inputs.clone();
        assert!(is_current(&metadata(&inputs), &[], host(&same)));
        let upgraded = TemplateInputs {
            qemu_version: "8.2.0".into(),
            ..inputs.clone()
        };
        assert!(!is_current(&metadata(&inputs), &[], host(&upgraded)));
        let no_root_disk =
            |_: TemplateShape, _: Option<&str>| -> Result<TemplateInputs, BootError> {
                Err(BootError::ImagesMissing {
                    dir: "/images".into(),
                    what: "no root disk".into(),
                })
            };
        assert!(!is_current(&metadata(&inputs), &[], no_root_disk));
        inputs.packages_layer = Some("python-pkgs-0123".into());
        let layers = ["python-pkgs-0123".to_owned()];
        assert!(is_current(&metadata(&inputs), &layers, host(&same)));
        assert!(!is_current(&metadata(&inputs), &[], host(&same)));
    }

    #[test]
    fn the_argv_hash_follows_the_machine_and_the_host() {
        let base = argv_hash(shape(512), &caps(), false).unwrap();
        assert_eq!(base, argv_hash(shape(512), &caps(), false).unwrap());
        assert_ne!(base, argv_hash(shape(256), &caps(), false).unwrap());
        let other_tsc = HostCaps {
            tsc_khz: Some(3_000_000),
            ..caps()
        };
        assert_ne!(base, argv_hash(shape(512), &other_tsc, false).unwrap());
        let no_io_uring = HostCaps {
            io_uring: false,
            ..caps()
        };
        assert_ne!(base, argv_hash(shape(512), &no_io_uring, false).unwrap());
        assert_ne!(base, argv_hash(shape(512), &caps(), true).unwrap());
    }
}
