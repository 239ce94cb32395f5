//! Building a template: a VM of the shape booted through the normal
//! builder with its RAM in a shared file, its interpreter warmed, then
//! paused and its device state saved over QMP (`x-ignore-shared`: the RAM
//! is already in the file), then ended. The files are made in a staging
//! dir and renamed into the store whole.

use super::key::TemplateInputs;
use super::store::{Template, TemplateStore, MEMORY_FILE, STATE_FILE, WORKSPACE_FILE};
use crate::error::{BootError, Result};
use crate::machine::VmOptions;
use crate::manager::VmManager;
use crate::network::NetworkRequest;
use crate::qemu_launcher::QemuLauncher;
use crate::task::blocking;
use crate::vm::Vm;
use airlock_qemu::{BootImages, QmpClient};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// The limits-group tenant of template VMs.
const TEMPLATE_TENANT: &str = "templates";
/// Longest wait for pausing and saving the device state.
const SAVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the template of `inputs` into `store` and returns it, checked.
///
/// # Errors
/// The boot's error, [`BootError::Protocol`] when the warm-up fails,
/// [`BootError::Qemu`] when the save fails, [`BootError::Io`] for the files.
pub async fn build(
    manager: &VmManager,
    store: &TemplateStore,
    inputs: &TemplateInputs,
) -> Result<Template, BootError> {
    let started = Instant::now();
    let key = inputs.key();
    let staging = {
        let (owned, key) = (store.clone(), key.clone());
        blocking("create a template staging dir", move || owned.staging(&key))
            .await?
            .map_err(|e| BootError::io("create a staging dir under", store.root(), e))?
    };
    // On failure (or when this future is dropped) the staging dir goes
    // with `staging`.
    boot_and_save(manager, inputs, staging.path()).await?;
    let staged = staging.path().to_path_buf();
    let (store, inputs_owned) = (store.clone(), inputs.clone());
    let build_time = started.elapsed();
    let template = blocking("install a template", move || {
        store.install(staging, &inputs_owned, build_time)
    })
    .await?
    .map_err(|e| BootError::io("install the template from", staged, e))?;
    tracing::info!(
        template = key,
        build_ms = template.metadata.build_ms,
        state_bytes = template.metadata.state_bytes,
        "memory template built"
    );
    Ok(template)
}

async fn boot_and_save(
    manager: &VmManager,
    inputs: &TemplateInputs,
    staging: &Path,
) -> Result<(), BootError> {
    let images = manager.images();
    let launcher = QemuLauncher::for_template(
        manager.host().clone(),
        BootImages {
            kernel: images.kernel.clone(),
            initramfs: images.initramfs.clone(),
        },
        staging.join(MEMORY_FILE),
    );
    let options = VmOptions {
        tenant: TEMPLATE_TENANT.into(),
        language: inputs.shape.language,
        image: inputs.shape.image,
        memory_mib: inputs.shape.memory_mib,
        vcpus: inputs.shape.vcpus,
        network: NetworkRequest::default(),
        packages: inputs
            .packages_layer
            .as_ref()
            .map(|key| crate::machine::PackageDisk {
                image: crate::packages::install::store_of(manager)
                    .dir(key)
                    .join(crate::packages::layer::IMAGE_FILE),
                writable: false,
            }),
        secrets: None,
        // Attached and mounted before the template is taken: each clone
        // gets a copy-on-write disk over the one this VM leaves
        // (`save_workspace`), byte for byte what its memory expects.
        disk_mib: inputs.shape.disk_mib,
        mounts: Vec::new(),
    };
    let mut vm = manager.boot_with(&options, &launcher).await?;
    if options.disk_mib > 0 {
        warm_workspace(&mut vm).await;
    }
    let mut saved = warm_and_save(&vm, &staging.join(STATE_FILE)).await;
    if saved.is_ok() && options.disk_mib > 0 {
        saved = save_workspace(&vm, options.disk_mib, &staging.join(WORKSPACE_FILE)).await;
    }
    let report = vm.destroy().await;
    for problem in &report.problems {
        tracing::warn!(vm_id = report.vm_id, problem, "teardown of a template VM");
    }
    saved
}

/// Copies the paused template VM's workspace disk (its overlay over the
/// blank base) into `dest` as one standalone qcow2 (`qemu-img convert`:
/// only written clusters are stored). The VM is paused and its state
/// saved, so QEMU has written everything out; `-U` reads past the lock
/// the still-running QEMU holds. Clones start from this file, so the
/// disk under them is byte for byte what the guest's memory expects.
async fn save_workspace(vm: &Vm, disk_mib: u32, dest: &Path) -> Result<(), BootError> {
    crate::pause::save::copy_disk(&vm.workdir().workspace(), dest)
        .await
        .map_err(|reason| BootError::Workspace {
            disk_mib,
            reason: format!("save the template's disk: {reason}"),
        })
}

/// What [`warm_workspace`] runs: a file written and removed in the home
/// and in `/tmp`, as the sandbox user.
const WORKSPACE_WARM: &str =
    "for d in \"$HOME\" /tmp; do f=\"$d/.airlock-warm\"; echo warm > \"$f\" && rm -f \"$f\"; done";

/// Writes a file into the workspace disk's home and `/tmp` and removes
/// it, before the template is taken: ext4 reads a group's block and inode
/// bitmaps and builds its allocator's buddy cache on the first write
/// there, work every clone's first write would otherwise redo under TCG
/// (about 60 ms of a one-shot run that writes a file, `docs/benchmarks.md`,
/// "Workspace disk"). A failure only costs that time: logged.
async fn warm_workspace(vm: &mut Vm) {
    let request = airlock_protocol::ExecRequest {
        language: airlock_protocol::Language::Raw,
        code: WORKSPACE_WARM.into(),
        timeout_ms: 30_000,
        env: Default::default(),
        cwd: None,
        mode: Default::default(),
    };
    match vm.exec(request, |_, _| {}).await {
        Ok(outcome) if outcome.completion.exit_code == 0 => {}
        Ok(outcome) => tracing::warn!(
            vm_id = vm.id(),
            exit_code = outcome.completion.exit_code,
            stderr = %String::from_utf8_lossy(&outcome.stderr),
            "the template's workspace warm-up failed"
        ),
        Err(e) => {
            tracing::warn!(vm_id = vm.id(), error = %e, "the template's workspace warm-up failed")
        }
    }
}

/// Warms the interpreter, pauses the VM and saves its device state.
async fn warm_and_save(vm: &Vm, state: &Path) -> Result<(), BootError> {
    let protocol = |source| BootError::Protocol {
        vm_id: vm.id().to_owned(),
        source,
    };
    let client = vm.client()?;
    // Every template holds its language's live cell interpreter, started
    // on a clock a day back (`warm_repl` with `for_template`): its clones'
    // reseed sets the real time, which makes Node's OpenSSL DRBGs reseed
    // from the clone's kernel (`docs/templates.md`, "After a restore").
    let completion = client
        .warm_repl_for_template(vm.language(), airlock_protocol::abi::HOST_WARM_TIMEOUT)
        .await
        .map_err(protocol)?;
    if completion.exit_code != 0 {
        tracing::warn!(
            vm_id = vm.id(),
            exit_code = completion.exit_code,
            "the template's interpreter warm-up failed; saving it cold"
        );
    }
    let deadline = Instant::now() + SAVE_TIMEOUT;
    let mut qmp = QmpClient::connect(&vm.workdir().qmp_socket(), deadline)
        .await
        .map_err(BootError::qemu(
            Some(vm.id()),
            "connect to QMP to save a template",
        ))?;
    qmp.stop(deadline).await.map_err(BootError::qemu(
        Some(vm.id()),
        "pause it to save a template",
    ))?;
    let file = tokio::fs::File::create(state)
        .await
        .map_err(|e| BootError::io("create", state, e))?
        .into_std()
        .await;
    qmp.save_device_state(file.as_fd(), deadline)
        .await
        .map_err(BootError::qemu(
            Some(vm.id()),
            "save the template's device state",
        ))?;
    Ok(())
}
