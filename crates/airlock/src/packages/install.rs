//! Building package layers, and installs into a running VM.
//!
//! [`ensure_layer`] returns the layer of a package list, building it when
//! the store has none:
//! 1. a blank ext4 image (sparse, [`LAYER_DISK_MIB`]) is made in a staging
//!    dir with `mkfs.ext4`, its root owned by the sandbox user;
//! 2. an install VM boots with that image attached writable
//!    (`airlock.packages=rw`: init mounts it on `/opt`) and an allowlist
//!    network that reaches only the language's registries
//!    ([`PackageManager::registries`]) through the egress proxy;
//! 3. the CA bundle is copied in ([`super::ca`]); the agent runs pip or
//!    npm into the layer with it, then remounts the layer read-only;
//! 4. what got installed (dependencies included) is listed, the VM is
//!    destroyed, and the image is renamed into the store with its
//!    metadata ([`LayerStore::publish`]).
//!
//! The user's code never runs in the install VM: it runs in a fresh VM
//! over the finished layer, read-only, with only the network it asked
//! for. A second run with the same list finds the layer and boots no
//! install VM: it makes no network connection at all.

use super::ca::{self, CaBundle};
use super::layer::{Layer, LayerInputs, LayerStore, IMAGE_FILE};
use super::spec::{PackageList, PackageManager};
use super::PackageDisk;
use crate::artifacts::eviction_spares;
use crate::error::{BootError, ExecError, InputError, PackageError, Result};
use crate::machine::VmOptions;
use crate::manager::VmManager;
use crate::network::{NetworkReport, NetworkRequest};
pub use crate::spec::{
    InstallLimits, DEFAULT_INSTALL_TIMEOUT, INSTALL_MEMORY_MIB, MIN_INSTALL_MEMORY_MIB,
};
use crate::task::blocking;
use crate::vm::Vm;
use airlock_gvproxy::DomainPattern;
use airlock_protocol::client::ExecOutput;
use airlock_protocol::{ExecRequest, Language};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Apparent size of a layer's disk, in MiB (sparse: only what is written
/// takes space).
pub const LAYER_DISK_MIB: u64 = 4096;
/// Deadline of the listing of what was installed.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// Host-side slack over a guest deadline.
const HOST_MARGIN: Duration = Duration::from_secs(15);
/// Output kept in an install error.
const ERROR_TAIL_BYTES: usize = 4000;
/// Numeric id of the guest's sandbox user (owner of the layer's root).
const SANDBOX_ID: u32 = 1000;

/// How a layer is installed.
#[derive(Debug, Clone)]
pub struct InstallSettings {
    /// The tenant the install VM is accounted to.
    pub tenant: String,
    /// The CA bundle the install VM trusts.
    pub ca: CaBundle,
    /// Deadline of the package manager's run.
    pub timeout: Duration,
    /// Guest memory of the install VM, in MiB.
    pub memory_mib: u32,
}

impl Default for InstallSettings {
    fn default() -> Self {
        Self {
            tenant: "default".into(),
            ca: CaBundle::System,
            timeout: DEFAULT_INSTALL_TIMEOUT,
            memory_mib: INSTALL_MEMORY_MIB,
        }
    }
}

/// What [`ensure_layer`] did.
#[derive(Debug, Clone)]
pub struct LayerOutcome {
    /// The layer to attach.
    pub layer: Layer,
    /// The install, when one ran (`None`: the layer was in the store).
    pub install: Option<InstallReport>,
}

/// What an install VM did (in the run result as `packages`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstallReport {
    /// The install VM.
    pub vm_id: String,
    /// The whole build: image, boot, install, listing, teardown, store.
    pub build_ms: u64,
    /// The package manager's run.
    pub install_ms: u64,
    /// The install VM's network, as its egress proxy counted it.
    pub network: NetworkReport,
}

/// The run result's account of its packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackagesReport {
    /// The layer's key.
    pub layer: String,
    /// The pinned packages, canonical and sorted.
    pub packages: Vec<String>,
    /// What is installed, dependencies included.
    pub installed: Vec<String>,
    /// Whether the layer came from the store (no install, no network).
    pub cached: bool,
    /// The install, when one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallReport>,
}

impl PackagesReport {
    /// The report of `outcome`.
    pub fn of(outcome: &LayerOutcome) -> Self {
        let metadata = &outcome.layer.metadata;
        Self {
            layer: metadata.key.clone(),
            packages: metadata.inputs.packages.clone(),
            installed: metadata.installed.clone(),
            cached: outcome.install.is_none(),
            install: outcome.install.clone(),
        }
    }
}

/// The store of `manager`'s configuration.
pub fn store_of(manager: &VmManager) -> LayerStore {
    LayerStore::new(manager.config().packages_dir.clone())
}

/// The layer inputs of `list` over the current images.
///
/// # Errors
/// [`BootError::ImagesMissing`] when the language has no root disk.
pub fn inputs_of(manager: &VmManager, list: &PackageList) -> Result<LayerInputs, BootError> {
    let images = manager.images();
    let rootfs_hash =
        images
            .rootfs_hash
            .get(&list.language())
            .ok_or_else(|| BootError::ImagesMissing {
                dir: images.dir.clone(),
                what: format!("no root disk for {}", list.language()),
            })?;
    Ok(LayerInputs::new(list, rootfs_hash.clone()))
}

/// The layer of `list` (not empty): from the store, else built by an
/// install VM (see the module docs).
///
/// # Errors
/// [`PackageError::Install`] when the install fails (with the package
/// manager's output), boot and network errors of the install VM.
pub async fn ensure_layer(
    manager: &VmManager,
    list: &PackageList,
    settings: &InstallSettings,
) -> Result<LayerOutcome, PackageError> {
    if let Some(layer) = find_layer(manager, list).await? {
        return Ok(LayerOutcome {
            layer,
            install: None,
        });
    }
    build_layer(manager, list, settings).await
}

/// The layer a VM of `language` with `packages` attaches, for runs and
/// sessions alike: `None` for an empty list; the stored layer; else one
/// built now (`on_install` is called first, for progress displays). Specs
/// are checked before anything else.
///
/// A session calls it before booting and sets `VmOptions::packages` to
/// [`PackageDisk::read_only`] of the layer. An install VM takes at most
/// `limits`' memory and time.
///
/// # Errors
/// [`InputError::PackageSpec`], [`PackageError::InstallRefused`] when
/// `limits` are too small for an install, and as [`ensure_layer`].
pub async fn prepare(
    manager: &VmManager,
    language: Language,
    packages: &[String],
    tenant: &str,
    limits: &InstallLimits,
    on_install: impl FnOnce() + Send,
) -> Result<Option<LayerOutcome>, PackageError> {
    let list = PackageList::parse(language, packages)?;
    if list.is_empty() {
        return Ok(None);
    }
    if let Some(layer) = find_layer(manager, &list).await? {
        note_tenant(&layer, tenant).await;
        return Ok(Some(LayerOutcome {
            layer,
            install: None,
        }));
    }
    // One install per layer at a time: a second request for the same list
    // waits for the first, then attaches what it stored.
    let key = inputs_of(manager, &list)?.key();
    let wait = manager.config().layer_wait;
    let _flight = manager
        .layer_flights()
        .take(&key, wait)
        .await
        .map_err(|busy| PackageError::Busy {
            packages: list.canonical().join(" "),
            waited: busy.waited,
        })?;
    if let Some(layer) = find_layer(manager, &list).await? {
        note_tenant(&layer, tenant).await;
        return Ok(Some(LayerOutcome {
            layer,
            install: None,
        }));
    }
    let memory_mib = limits.install_memory_mib(&list)?;
    on_install();
    let settings = InstallSettings {
        tenant: tenant.to_owned(),
        ca: manager.config().ca_bundle.clone(),
        timeout: limits.timeout,
        memory_mib,
    };
    let outcome = build_layer(manager, &list, &settings).await?;
    note_tenant(&outcome.layer, tenant).await;
    evict_layers_over_budget(manager, &outcome.layer.metadata.key).await;
    Ok(Some(outcome))
}

/// Records that `tenant` uses `layer` ([`LayerStore::bytes_by_tenant`]);
/// a failure is logged, the layer is fine.
async fn note_tenant(layer: &Layer, tenant: &str) {
    let (layer, tenant) = (layer.clone(), tenant.to_owned());
    let noted = blocking("note a package layer's tenant", move || {
        LayerStore::note_tenant(&layer, &tenant)
    })
    .await;
    match noted {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "a layer's tenant not recorded"),
        Err(e) => tracing::debug!(error = %e, "a layer's tenant not recorded"),
    }
}

/// Brings the layer store under its budget (`Config::layers_budget`),
/// sparing `keep` (the layer just built); a failure is logged.
async fn evict_layers_over_budget(manager: &VmManager, keep: &str) {
    let Some(budget) = manager.config().layers_budget else {
        return;
    };
    let (store, keep) = (store_of(manager), keep.to_owned());
    let spares = eviction_spares(manager.config());
    let evicted = blocking("evict package layers", move || {
        store.evict_to_budget(budget, spares, |key| key == keep)
    })
    .await;
    match evicted {
        Ok(Ok(evicted)) if !evicted.removed.is_empty() => tracing::info!(
            removed = ?evicted.removed,
            freed_bytes = evicted.freed_bytes,
            "package layers evicted to stay within the budget"
        ),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot evict package layers"),
        Err(e) => tracing::warn!(error = %e, "cannot evict package layers"),
    }
}

/// The stored layer of `list`, checked; `None` when there is none (or it
/// is damaged).
///
/// # Errors
/// [`BootError::ImagesMissing`], [`BootError::TaskFailed`].
pub async fn find_layer(
    manager: &VmManager,
    list: &PackageList,
) -> Result<Option<Layer>, BootError> {
    let inputs = inputs_of(manager, list)?;
    let store = store_of(manager);
    let found = blocking("look up a package layer", move || {
        let found = store.find(&inputs);
        if let Some(layer) = &found {
            // Marked used before a VM attaches it: eviction spares it.
            if let Err(e) = LayerStore::touch(layer) {
                tracing::debug!(key = layer.metadata.key, error = %e, "not touched");
            }
        }
        found
    })
    .await?;
    if let Some(layer) = &found {
        tracing::debug!(key = layer.metadata.key, "package layer found");
    }
    Ok(found)
}

/// Builds the layer of `list` with an install VM and stores it (see the
/// module docs). A layer another process stored meanwhile wins.
///
/// # Errors
/// As [`ensure_layer`].
pub async fn build_layer(
    manager: &VmManager,
    list: &PackageList,
    settings: &InstallSettings,
) -> Result<LayerOutcome, PackageError> {
    let inputs = inputs_of(manager, list)?;
    let store = store_of(manager);
    let started = Instant::now();
    let (staging_store, key) = (store.clone(), inputs.key());
    let staging = blocking("make a package layer staging dir", move || {
        staging_store.staging(&key)
    })
    .await?
    .map_err(|e| BootError::io("create a staging dir in", store.root(), e))?;
    // On failure (or when this future is dropped) the staging dir goes
    // with `staging`.
    let (mut report, installed) = build_in(manager, list, settings, staging.path()).await?;
    let (publish_store, publish_inputs) = (store.clone(), inputs.clone());
    let elapsed = started.elapsed();
    let layer = blocking("store a package layer", move || {
        publish_store.publish(staging, &publish_inputs, installed, elapsed)
    })
    .await?
    .map_err(|e| BootError::io("store the package layer in", store.dir(&inputs.key()), e))?;
    report.build_ms = crate::ms(started.elapsed());
    tracing::info!(
        key = layer.metadata.key,
        build_ms = report.build_ms,
        "package layer built"
    );
    Ok(LayerOutcome {
        layer,
        install: Some(report),
    })
}

/// The network of an install VM: the manager's registries, nothing else.
pub fn install_network(list: &PackageList) -> Result<NetworkRequest, InputError> {
    let allow = list
        .manager()
        .map_or(&[][..], PackageManager::registries)
        .iter()
        .map(|name| {
            name.parse::<DomainPattern>()
                .map_err(|e| InputError::invalid("network", e.to_string()))
        })
        .collect::<Result<Vec<_>, InputError>>()?;
    Ok(NetworkRequest {
        allow: Some(allow),
        ..NetworkRequest::default()
    })
}

/// Makes the blank image, runs the install VM, lists what it installed;
/// returns the report (its `build_ms` still 0) and the listing.
async fn build_in(
    manager: &VmManager,
    list: &PackageList,
    settings: &InstallSettings,
    staging: &Path,
) -> Result<(InstallReport, Vec<String>), PackageError> {
    let image = staging.join(IMAGE_FILE);
    make_blank_image(&image).await?;
    let options = VmOptions {
        tenant: settings.tenant.clone(),
        language: list.language(),
        image: None,
        memory_mib: settings.memory_mib,
        vcpus: 1,
        network: install_network(list)?,
        packages: Some(PackageDisk {
            image,
            writable: true,
        }),
        secrets: None,
        // The install writes to the layer; its home stays in RAM.
        disk_mib: 0,
        mounts: Vec::new(),
    };
    let mut vm = manager.boot(&options).await?;
    let ran = install_and_list(&vm, list, settings).await;
    let teardown = vm.destroy().await;
    for problem in &teardown.problems {
        tracing::warn!(vm_id = teardown.vm_id, problem, "teardown of an install VM");
    }
    let (install_ms, installed) = ran?;
    Ok((
        InstallReport {
            vm_id: teardown.vm_id.clone(),
            build_ms: 0,
            install_ms,
            network: teardown.network.unwrap_or_default(),
        },
        installed,
    ))
}

/// The install and the listing inside the install VM.
async fn install_and_list(
    vm: &Vm,
    list: &PackageList,
    settings: &InstallSettings,
) -> Result<(u64, Vec<String>), PackageError> {
    let env = ca::install_bundle(vm, &settings.ca).await?;
    let started = Instant::now();
    let output = run_install(vm, list, settings.timeout, env).await?;
    let install_ms = crate::ms(started.elapsed());
    check_install(vm.id(), list, &output)?;
    let installed = list_installed(vm, list.language()).await;
    Ok((install_ms, installed))
}

/// Sends the install request and collects its output.
async fn run_install(
    vm: &Vm,
    list: &PackageList,
    timeout: Duration,
    env: BTreeMap<String, String>,
) -> Result<ExecOutput, ExecError> {
    let protocol = |source| ExecError::Protocol {
        vm_id: vm.id().to_owned(),
        source,
    };
    let client = vm.client()?;
    let stream = client
        .install_packages(list.language(), list.canonical(), timeout, env)
        .await
        .map_err(protocol)?;
    let deadline = timeout + HOST_MARGIN;
    match tokio::time::timeout(deadline, stream.collect()).await {
        Ok(collected) => collected.map_err(protocol),
        Err(_) => Err(protocol(airlock_protocol::ProtocolError::Timeout {
            what: "install_packages".into(),
            after: deadline,
        })),
    }
}

/// [`PackageError::Install`] unless the package manager succeeded.
fn check_install(vm_id: &str, list: &PackageList, output: &ExecOutput) -> Result<(), PackageError> {
    let completion = &output.completion;
    if completion.exit_code == 0 && !completion.timed_out {
        return Ok(());
    }
    let why = if completion.timed_out {
        "the package manager timed out".to_owned()
    } else {
        format!(
            "{} exited with {}",
            list.manager()
                .map_or("the package manager", PackageManager::as_str),
            completion.exit_code
        )
    };
    Err(PackageError::Install {
        vm_id: Some(vm_id.to_owned()),
        packages: list.canonical().join(" "),
        reason: format!(
            "{why}\n--- output (tail) ---\n{}\n{}",
            tail(&output.stdout),
            tail(&output.stderr)
        ),
    })
}

fn tail(bytes: &[u8]) -> String {
    airlock_sys_util::tail_text(&String::from_utf8_lossy(bytes), ERROR_TAIL_BYTES)
}

/// Lists the layer's distributions or packages as `name==version` /
/// `name@version` (empty when the listing fails: it is informative only).
async fn list_installed(vm: &Vm, language: Language) -> Vec<String> {
    let code = match language {
        Language::Python => LIST_PYTHON,
        Language::Javascript => LIST_NODE,
        Language::Raw => return Vec::new(),
    };
    let request = ExecRequest {
        language,
        code: code.into(),
        timeout_ms: crate::ms(LIST_TIMEOUT),
        env: BTreeMap::new(),
        cwd: None,
        mode: Default::default(),
    };
    let Ok(client) = vm.client() else {
        return Vec::new();
    };
    match client.exec_collect(request, HOST_MARGIN).await {
        Ok(out) if out.completion.exit_code == 0 => parse_listing(&out.stdout),
        Ok(out) => {
            tracing::warn!(vm_id = vm.id(), stderr = %tail(&out.stderr), "listing the installed packages failed");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(vm_id = vm.id(), error = %e, "listing the installed packages failed");
            Vec::new()
        }
    }
}

/// Prints `name==version` for each distribution in the layer.
const LIST_PYTHON: &str = r#"import importlib.metadata as m
for d in sorted(m.distributions(path=['/opt/python']), key=lambda d: d.metadata['Name'].lower()):
    print(d.metadata['Name'] + '==' + d.version)
"#;

/// Prints `name@version` for each package of npm's hidden lockfile.
const LIST_NODE: &str = r#"const l = require('/opt/node/node_modules/.package-lock.json');
for (const [k, v] of Object.entries(l.packages || {})) {
  if (k) console.log(k.replace(/^.*node_modules\//, '') + '@' + v.version);
}
"#;

/// The non-empty lines of a listing, sorted.
fn parse_listing(stdout: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

/// A sparse raw file of [`LAYER_DISK_MIB`] holding an empty ext4 file
/// system whose root the sandbox user owns (the host never reads what the
/// guest writes into it).
async fn make_blank_image(image: &Path) -> Result<(), PackageError> {
    let args = crate::disk::mkfs_ext4_args(
        image,
        LAYER_DISK_MIB,
        "airlock-pkgs",
        Some(SANDBOX_ID),
        crate::disk::Ext4Use::Layer,
    );
    crate::disk::run_tool("mkfs.ext4", &args)
        .await
        .map_err(|reason| PackageError::Install {
            vm_id: None,
            packages: String::new(),
            reason: format!("{} (install e2fsprogs)", reason),
        })
}

/// Installs `packages` into the sandbox user's own space of a running VM
/// (a session): the VM must have a network that reaches the language's
/// registries. Refuses unpinned or malformed specs before anything is
/// sent. Returns the package manager's output and completion.
///
/// Sessions that know their packages up front should list them in
/// `SessionOptions.packages` instead: they are then installed in a
/// separate install VM, kept as a layer, and the session needs no
/// network at all.
///
/// # Errors
/// [`InputError::PackageSpec`] for a refused spec; [`PackageError::Install`]
/// when the VM has no network (or the package manager fails: see the
/// returned completion for its exit code; only a failure to run it at all
/// is an error); [`ExecError::Protocol`].
pub async fn install_into(
    vm: &Vm,
    packages: &[String],
    ca: &CaBundle,
    timeout: Duration,
) -> Result<ExecOutput, PackageError> {
    let list = PackageList::parse(vm.language(), packages)?;
    if list.is_empty() {
        return Err(PackageError::Input(InputError::PackageSpec {
            spec: String::new(),
            reason: "no packages given".into(),
        }));
    }
    if vm.gvproxy_pid().is_none() {
        return Err(PackageError::Install {
            vm_id: Some(vm.id().to_owned()),
            packages: list.canonical().join(" "),
            reason: format!(
                "this VM has no network: list the packages when it starts (they are then \
                 installed in a separate VM and attached as a layer), or give it a network \
                 that allows {}",
                list.manager()
                    .map_or(&[][..], PackageManager::registries)
                    .join(", ")
            ),
        });
    }
    let env = ca::install_bundle(vm, ca).await?;
    Ok(run_install(vm, &list, timeout, env).await?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;
    use airlock_protocol::Completion;

    #[test]
    fn the_install_network_allows_only_the_registries() {
        let py = PackageList::parse(Language::Python, &["six==1.16.0"]).unwrap();
        let net = install_network(&py).unwrap();
        let allow = net.allow.unwrap();
        assert!(allow.iter().any(|p| p.matches("pypi.org")));
        assert!(allow.iter().any(|p| p.matches("files.pythonhosted.org")));
        assert!(!allow.iter().any(|p| p.matches("example.com")));
        assert!(!allow.iter().any(|p| p.matches("registry.npmjs.org")));
        assert!(net.exposes.is_empty());
        let js = PackageList::parse(Language::Javascript, &["is-number@7.0.0"]).unwrap();
        let allow = install_network(&js).unwrap().allow.unwrap();
        assert!(allow.iter().any(|p| p.matches("registry.npmjs.org")));
        assert!(!allow.iter().any(|p| p.matches("pypi.org")));
    }

    fn output(exit_code: i32, timed_out: bool, stderr: &[u8]) -> ExecOutput {
        ExecOutput {
            stdout: Vec::new(),
            stderr: stderr.to_vec(),
            results: Vec::new(),
            error: None,
            completion: Completion {
                exit_code,
                timed_out,
                duration_ms: 1,
                spawn_ms: 1,
                stdout_truncated: false,
                stderr_truncated: false,
                state_lost: false,
            },
        }
    }

    #[test]
    fn a_failed_install_names_the_manager_and_keeps_the_output_tail() {
        let list = PackageList::parse(Language::Python, &["nosuchpkg==1.0"]).unwrap();
        check_install("vm1", &list, &output(0, false, b"")).unwrap();
        let err = check_install("vm1", &list, &output(1, false, b"No matching distribution"))
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("pip exited with 1"), "{text}");
        assert!(text.contains("No matching distribution"), "{text}");
        assert!(text.contains("vm vm1"), "{text}");
        assert!(err.hint().is_some());
        let timeout = check_install("vm1", &list, &output(124, true, b"")).unwrap_err();
        assert!(timeout.to_string().contains("timed out"), "{timeout}");
    }

    #[test]
    fn a_listing_is_trimmed_sorted_and_deduplicated() {
        assert_eq!(
            parse_listing(b"six==1.16.0\n\nidna==3.7\r\nsix==1.16.0\n"),
            ["idna==3.7", "six==1.16.0"]
        );
    }

    #[tokio::test]
    async fn a_blank_image_is_a_sparse_ext4_file() {
        if airlock_sys_util::which("mkfs.ext4").is_none() {
            eprintln!("skipped: no mkfs.ext4 on this host");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join(IMAGE_FILE);
        make_blank_image(&image).await.unwrap();
        let meta = std::fs::metadata(&image).unwrap();
        assert_eq!(meta.len(), LAYER_DISK_MIB * 1024 * 1024);
        assert!(
            meta.blocks() * 512 < 64 * 1024 * 1024,
            "not sparse: {}",
            meta.blocks()
        );
        // The ext4 superblock magic (0xEF53) at offset 1024 + 56.
        use std::io::{Read, Seek};
        let mut file = std::fs::File::open(&image).unwrap();
        file.seek(std::io::SeekFrom::Start(1080)).unwrap();
        let mut magic = [0u8; 2];
        file.read_exact(&mut magic).unwrap();
        assert_eq!(magic, [0x53, 0xef]);
    }
}
