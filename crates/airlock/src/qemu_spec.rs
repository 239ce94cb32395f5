//! The QEMU spec of one VM, built in one place from its [`MachinePlan`]
//! (pure: no file or process is touched).

use crate::launcher::MachinePlan;
use airlock_qemu::{BootImages, DiskAccess, NetworkAttachment, RootDisk, VmSpec};

/// The QEMU spec of the machine `plan` describes, booting `boot`: its root
/// disk is the work dir's overlay over the read-only base; its sockets and
/// logs live in the work dir; a network socket becomes `-netdev stream`.
pub fn vm_spec(plan: &MachinePlan, boot: &BootImages) -> VmSpec {
    let workdir = &plan.workdir;
    let mut spec = VmSpec::new(
        plan.vm_id.as_str(),
        boot.clone(),
        RootDisk {
            base: plan.root_base.clone(),
            overlay: workdir.overlay(),
            access: DiskAccess::ReadOnly,
        },
        workdir.path(),
    );
    spec.memory_mib = plan.memory_mib;
    spec.vcpus = plan.vcpus;
    spec.translation_cache_mib = plan.translation_cache_mib;
    spec.console_log = workdir.console_log();
    // Read by the host into a capped log (`capped_log.rs`).
    spec.console_on_stdout = true;
    spec.cmd_socket = workdir.cmd_socket();
    spec.event_socket = workdir.event_socket();
    spec.qmp_socket = workdir.qmp_socket();
    // With --debug the whole kernel log is worth its console time.
    spec.quiet_kernel = !plan.verbose_console;
    if let Some(socket) = &plan.network_socket {
        spec.network = NetworkAttachment::Stream {
            socket: socket.clone(),
        };
    }
    if let Some(disk) = &plan.packages {
        let (drive, kernel_arg) = disk.attachment();
        spec.extra_drives.push(drive);
        spec.extra_kernel_args.push(kernel_arg);
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workdir::WorkDir;
    use std::path::{Path, PathBuf};

    fn plan(network_socket: Option<PathBuf>, verbose_console: bool) -> MachinePlan {
        MachinePlan {
            vm_id: "0123456789abcdef".into(),
            memory_mib: 768,
            vcpus: 2,
            workdir: WorkDir::at(PathBuf::from("/run/airlock/vms/0123456789abcdef")),
            root_base: PathBuf::from("/images/rootfs-python.qcow2"),
            network_socket,
            verbose_console,
            packages: None,
            translation_cache_mib: airlock_qemu::TCG_TB_SIZE_MIB,
        }
    }

    fn boot() -> BootImages {
        BootImages {
            kernel: PathBuf::from("/images/bzImage"),
            initramfs: PathBuf::from("/images/initramfs"),
        }
    }

    #[test]
    fn the_plans_translation_cache_reaches_the_spec() {
        let mut plan = plan(None, false);
        plan.translation_cache_mib = 128;
        let boot = BootImages {
            kernel: PathBuf::from("/images/kernel"),
            initramfs: PathBuf::from("/images/initramfs"),
        };
        assert_eq!(vm_spec(&plan, &boot).translation_cache_mib, 128);
    }

    #[test]
    fn every_per_vm_file_lives_in_the_work_dir() {
        let spec = vm_spec(&plan(None, false), &boot());
        let dir = Path::new("/run/airlock/vms/0123456789abcdef");
        for file in [
            &spec.console_log,
            &spec.cmd_socket,
            &spec.event_socket,
            &spec.qmp_socket,
            &spec.root.overlay,
        ] {
            assert_eq!(file.parent(), Some(dir), "{}", file.display());
        }
    }

    #[test]
    fn the_root_disk_is_the_overlay_over_the_read_only_base() {
        let spec = vm_spec(&plan(None, false), &boot());
        assert_eq!(spec.root.base, Path::new("/images/rootfs-python.qcow2"));
        assert!(spec.root.overlay.ends_with("root.qcow2"));
        assert_eq!(spec.root.access, DiskAccess::ReadOnly);
        assert_eq!(spec.boot, boot());
    }

    #[test]
    fn the_machine_shape_comes_from_the_plan() {
        let spec = vm_spec(&plan(None, false), &boot());
        assert_eq!((spec.memory_mib, spec.vcpus), (768, 2));
        assert_eq!(spec.vm_id, "0123456789abcdef");
    }

    #[test]
    fn a_vm_without_network_has_no_network_device() {
        let spec = vm_spec(&plan(None, false), &boot());
        assert_eq!(spec.network, NetworkAttachment::None);
    }

    #[test]
    fn a_network_socket_becomes_a_stream_netdev() {
        let socket = PathBuf::from("/run/airlock/vms/0123456789abcdef/net/qemu.sock");
        let spec = vm_spec(&plan(Some(socket.clone()), false), &boot());
        assert_eq!(spec.network, NetworkAttachment::Stream { socket });
    }

    #[test]
    fn a_package_layer_is_a_second_disk_announced_on_the_command_line() {
        use crate::machine::PackageDisk;
        use airlock_qemu::{DiskFormat, ExtraDrive};
        let mut with = plan(None, false);
        with.packages = Some(PackageDisk {
            image: PathBuf::from("/cache/packages/k/layer.img"),
            writable: false,
        });
        let spec = vm_spec(&with, &boot());
        assert_eq!(
            spec.extra_drives,
            [ExtraDrive {
                id: "packages".into(),
                path: PathBuf::from("/cache/packages/k/layer.img"),
                format: DiskFormat::Raw,
                access: DiskAccess::ReadOnly,
                serial: "airlock-packages".into(),
                backing: None,
            }]
        );
        assert_eq!(spec.extra_kernel_args, ["airlock.packages=ro"]);
        with.packages = Some(PackageDisk {
            image: PathBuf::from("/stage/layer.img"),
            writable: true,
        });
        let spec = vm_spec(&with, &boot());
        assert_eq!(spec.extra_drives[0].access, DiskAccess::ReadWrite);
        assert_eq!(spec.extra_kernel_args, ["airlock.packages=rw"]);
        assert!(vm_spec(&plan(None, false), &boot()).extra_drives.is_empty());
    }

    #[test]
    fn the_kernel_is_quiet_unless_the_console_is_verbose() {
        assert!(vm_spec(&plan(None, false), &boot()).quiet_kernel);
        assert!(!vm_spec(&plan(None, true), &boot()).quiet_kernel);
    }
}
