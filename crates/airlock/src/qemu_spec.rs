//! The QEMU spec of one VM, built in one place from its [`MachinePlan`]
//! (pure: no file or process is touched).

use crate::launcher::MachinePlan;
use airlock_protocol::abi::{GuestMount, WORKSPACE_ARG, WORKSPACE_FS, WORKSPACE_SERIAL};
use airlock_qemu::{
    BootImages, DiskAccess, DiskFormat, ExtraDrive, NetworkAttachment, RootDisk, Share, VmSpec,
};

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
    if let Some(base) = &plan.workspace_base {
        spec.extra_drives.push(ExtraDrive {
            id: "workspace".into(),
            path: workdir.workspace(),
            format: DiskFormat::Qcow2,
            access: DiskAccess::ReadWrite,
            serial: WORKSPACE_SERIAL.into(),
            backing: Some(base.clone()),
        });
        spec.extra_kernel_args
            .push(format!("{WORKSPACE_ARG}={WORKSPACE_FS}"));
    }
    for (index, mount) in plan.mounts.iter().enumerate() {
        let guest = GuestMount {
            tag: GuestMount::tag_of(index),
            read_only: mount.read_only,
            dir: mount.guest.clone(),
        };
        spec.extra_kernel_args.push(guest.kernel_arg());
        spec.shares.push(Share {
            tag: guest.tag,
            path: mount.host.clone(),
            read_only: mount.read_only,
        });
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
            workspace_base: None,
            mounts: Vec::new(),
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
    fn a_workspace_is_a_writable_overlay_in_the_work_dir_announced_to_init() {
        let mut with = plan(None, false);
        with.workspace_base = Some(PathBuf::from("/cache/workspace/ext4-2048m.qcow2"));
        let spec = vm_spec(&with, &boot());
        assert_eq!(
            spec.extra_drives,
            [ExtraDrive {
                id: "workspace".into(),
                path: PathBuf::from("/run/airlock/vms/0123456789abcdef/workspace.qcow2"),
                format: DiskFormat::Qcow2,
                access: DiskAccess::ReadWrite,
                serial: "airlock-workspace".into(),
                backing: Some(PathBuf::from("/cache/workspace/ext4-2048m.qcow2")),
            }]
        );
        assert_eq!(spec.extra_kernel_args, ["airlock.workspace=ext4"]);
        let without = vm_spec(&plan(None, false), &boot());
        assert!(without.extra_drives.is_empty() && without.extra_kernel_args.is_empty());
    }

    #[test]
    fn each_mount_is_a_share_and_a_kernel_argument_with_the_same_tag() {
        let mut with = plan(None, false);
        with.mounts = vec![
            crate::spec::Mount::parse("/data/in:/mnt/in").unwrap(),
            crate::spec::Mount::parse("/data/out:/home/sandbox/out:rw").unwrap(),
        ];
        let spec = vm_spec(&with, &boot());
        assert_eq!(
            spec.shares,
            [
                Share {
                    tag: "mount0".into(),
                    path: "/data/in".into(),
                    read_only: true
                },
                Share {
                    tag: "mount1".into(),
                    path: "/data/out".into(),
                    read_only: false
                },
            ]
        );
        assert_eq!(
            spec.extra_kernel_args,
            [
                "airlock.mount=mount0:ro:/mnt/in",
                "airlock.mount=mount1:rw:/home/sandbox/out"
            ]
        );
        let caps = airlock_qemu::HostCaps {
            arch: airlock_qemu::Arch::X86_64,
            accel: airlock_qemu::Accel::Tcg,
            qemu_version: airlock_qemu::QemuVersion::new(7, 2, 0),
            io_uring: false,
            tsc_khz: None,
        };
        airlock_qemu::QemuArgs::build(&spec, &caps).unwrap();
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
