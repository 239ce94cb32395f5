//! `airlock-init`: PID 1 of Airlock guests.
//!
//! The effectful shell around the `airlock_init` library: mounts, root
//! switch, agent supervision and power-off. Every failure prints one
//! `airlock-init: fatal: ...` line on the console and powers the VM off;
//! init never hangs and never panics on bad input.

mod loopback;

use airlock_init::{
    describe_disks, find_root_disk, BootArgs, DiskSerial, InitError, Milestones, PackagesMount,
};
use airlock_protocol::abi::{
    GuestMount, AGENT_PATH, INIT_LOG_PREFIX as LOG_PREFIX, PACKAGES_MOUNT, PACKAGES_SERIAL,
    ROOT_SERIAL, SANDBOX_HOME, SANDBOX_UID, WORKSPACE_SERIAL,
};
use airlock_sys_util::IoResultExt;
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::{chdir, chroot, Pid};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Where the root disk is mounted before the switch.
const NEW_ROOT: &str = "/sysroot";
/// How long to wait for a disk (root, package layer) to appear.
const ROOT_DISK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two looks at `/sys/block`.
const ROOT_DISK_POLL: Duration = Duration::from_millis(5);
/// Where cgroup2 is mounted (sysfs provides the directory).
const CGROUP2_DIR: &str = "/sys/fs/cgroup";
/// Size cap of `/run`, in MiB.
const RUN_MIB: u64 = 16;
/// Where the kernel takes the machine restart method.
const REBOOT_TYPE: &str = "/sys/kernel/reboot/type";
/// Where the workspace disk is mounted in the new root (under `/run`, a
/// root-only dir): its `home` and `tmp` dirs are bound on the sandbox
/// home and `/tmp`.
const WORKSPACE_DIR: &str = "/run/airlock-workspace";
/// Size cap of the tmpfs made on `/mnt` when a host folder goes there.
const MNT_MIB: u64 = 1;
/// 9p's largest message over virtio in this kernel (about 500 KiB): fewer
/// round trips for big reads and writes.
const NINEP_MSIZE: u32 = 512_000;
/// The agent's PATH.
const AGENT_PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn main() {
    match boot() {
        Ok(status) => console(&format!(
            "{LOG_PREFIX} agent exited ({status}), powering off"
        )),
        Err(err) => console(&format!("{LOG_PREFIX} fatal: {err}")),
    }
    power_off();
}

/// The whole boot; returns how the agent ended.
fn boot() -> Result<String, InitError> {
    let kernel_ms = boottime_ms();
    mount_kernel_filesystems()?;
    restart_by_triple_fault()?;
    load_modules();
    // eth0, when the VM has one, is configured by the kernel (`ip=`).
    loopback::bring_up()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").with_path("read", "/proc/cmdline")?;
    let args = BootArgs::parse(&cmdline)?;
    let disk = wait_for_disk(ROOT_SERIAL)?;
    // Looked up now: /sys and /dev move into the new root below.
    let packages = match args.packages {
        Some(mode) => Some((wait_for_disk(PACKAGES_SERIAL)?, mode)),
        None => None,
    };
    let workspace = if args.workspace {
        Some(wait_for_disk(WORKSPACE_SERIAL)?)
    } else {
        None
    };
    mount_new_root(&disk, &args, packages, workspace.as_deref())?;
    mount_shares(&args.mounts)?;
    switch_root()?;
    let root_ms = boottime_ms();
    let agent = spawn_agent()?;
    let agent_ms = boottime_ms();
    console(
        &Milestones {
            kernel_ms,
            root_ms,
            agent_ms,
        }
        .ready_line(),
    );
    Ok(supervise(agent))
}

/// `/proc` (pids of other users hidden), `/sys` and `/dev` in the initramfs.
/// `/dev` is `noexec` like the others: nothing is ever run from it.
fn mount_kernel_filesystems() -> Result<(), InitError> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", hardened, Some("hidepid=2"))?;
    mount_fs("sysfs", "/sys", "sysfs", hardened, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )
}

/// Loads kernel modules. The guest kernel has every driver built in and
/// module loading disabled, so there is nothing to load: this is a
/// deliberate no-op kept as the place to do it should that ever change.
fn load_modules() {}

/// Polls `/sys/block` until a disk carries `serial`; returns its `/dev`
/// path.
fn wait_for_disk(serial: &str) -> Result<String, InitError> {
    let start = Instant::now();
    loop {
        let disks = read_disk_serials();
        if let Some(name) = find_root_disk(&disks, serial) {
            return Ok(format!("/dev/{name}"));
        }
        if start.elapsed() >= ROOT_DISK_TIMEOUT {
            return Err(InitError::RootDiskNotFound {
                serial: serial.into(),
                waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                seen: describe_disks(&disks),
            });
        }
        std::thread::sleep(ROOT_DISK_POLL);
    }
}

/// Every block device with a readable serial (disks without one are skipped).
fn read_disk_serials() -> Vec<DiskSerial> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let serial = std::fs::read_to_string(entry.path().join("serial")).ok()?;
            Some(DiskSerial { name, serial })
        })
        .collect()
}

/// The root disk read-only under [`NEW_ROOT`] (and the package layer on
/// its `/opt` when there is one), a size-capped tmpfs for `/run`, the
/// sandbox home and `/tmp` on the workspace disk when there is one (else
/// size-capped tmpfs), `/dev/pts` and `/dev/shm` (both `noexec`), and
/// cgroup2 on `/sys/fs/cgroup` (the agent gives each exec its own cgroup
/// there).
fn mount_new_root(
    disk: &str,
    args: &BootArgs,
    packages: Option<(String, PackagesMount)>,
    workspace: Option<&str>,
) -> Result<(), InitError> {
    let root_flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs(disk, NEW_ROOT, "ext4", root_flags, None)?;
    if let Some((packages_disk, mode)) = packages {
        mount_packages(&packages_disk, mode)?;
    }
    let scratch = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let tmp = format!("mode=1777,size={}m", args.tmp_mib);
    let run = format!("mode=0755,size={RUN_MIB}m");
    mount_fs(
        "tmpfs",
        &format!("{NEW_ROOT}/run"),
        "tmpfs",
        scratch,
        Some(&run),
    )?;
    match workspace {
        Some(workspace_disk) => mount_workspace(workspace_disk)?,
        None => {
            mount_fs(
                "tmpfs",
                &format!("{NEW_ROOT}/tmp"),
                "tmpfs",
                scratch,
                Some(&tmp),
            )?;
            let home = format!(
                "mode=0700,uid={SANDBOX_UID},gid={SANDBOX_UID},size={}m",
                args.home_mib
            );
            mount_fs(
                "tmpfs",
                &format!("{NEW_ROOT}{SANDBOX_HOME}"),
                "tmpfs",
                scratch,
                Some(&home),
            )?;
        }
    }
    for dir in ["/dev", "/proc", "/sys"] {
        move_mount(dir, &format!("{NEW_ROOT}{dir}"))?;
    }
    let dev = format!("{NEW_ROOT}/dev");
    make_dir(&format!("{dev}/pts"))?;
    let pts = "newinstance,ptmxmode=0666,mode=0620";
    mount_fs(
        "devpts",
        &format!("{dev}/pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(pts),
    )?;
    make_dir(&format!("{dev}/shm"))?;
    mount_fs(
        "tmpfs",
        &format!("{dev}/shm"),
        "tmpfs",
        scratch | MsFlags::MS_NOEXEC,
        Some(&tmp),
    )?;
    mount_fs(
        "cgroup2",
        &format!("{NEW_ROOT}{CGROUP2_DIR}"),
        "cgroup2",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
}

/// Mounts the workspace disk (ext4, made by the host) on
/// [`WORKSPACE_DIR`] of the new root, `nosuid,nodev,noatime`, and binds
/// its `home` (the sandbox user's, 0700) on the sandbox home and its `tmp`
/// (1777) on `/tmp`; both are made on first boot. A full disk is the
/// code's `ENOSPC`, as on any file system.
fn mount_workspace(disk: &str) -> Result<(), InitError> {
    let dir = format!("{NEW_ROOT}{WORKSPACE_DIR}");
    make_dir(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_path("make private", &dir)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
    mount_fs(disk, &dir, "ext4", flags, None)?;
    for (name, target, mode, owner) in [
        ("home", SANDBOX_HOME, 0o700, SANDBOX_UID),
        ("tmp", "/tmp", 0o1777, 0),
    ] {
        let source = format!("{dir}/{name}");
        make_dir(&source)?;
        std::os::unix::fs::chown(&source, Some(owner), Some(owner))
            .with_path("give to its user", &source)?;
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(mode))
            .with_path("set the mode of", &source)?;
        let target = format!("{NEW_ROOT}{target}");
        mount(
            Some(source.as_str()),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|err| sys(format!("bind {source} on {target}"), err))?;
    }
    Ok(())
}

/// Mounts each host folder (virtio-9p, `nosuid,nodev`, read-only when
/// asked) on its guest dir in the new root, making the dir first: as the
/// sandbox user below its home, on a small tmpfs made on `/mnt` for those
/// below it (the root disk is read-only).
fn mount_shares(mounts: &[GuestMount]) -> Result<(), InitError> {
    if mounts.iter().any(|m| m.dir.starts_with("/mnt/")) {
        let mnt = format!("mode=0755,size={MNT_MIB}m");
        mount_fs(
            "tmpfs",
            &format!("{NEW_ROOT}/mnt"),
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(&mnt),
        )?;
    }
    for share in mounts {
        let owner = if share.dir.starts_with(SANDBOX_HOME) {
            SANDBOX_UID
        } else {
            0
        };
        make_dirs_as(&format!("{NEW_ROOT}{}", share.dir), NEW_ROOT, owner)?;
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if share.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        let data = format!("trans=virtio,version=9p2000.L,msize={NINEP_MSIZE}");
        mount_fs(
            &share.tag,
            &format!("{NEW_ROOT}{}", share.dir),
            "9p",
            flags,
            Some(&data),
        )?;
    }
    Ok(())
}

/// Makes `path` and the missing dirs above it (below `stop`), each
/// 0755 and owned by `owner`.
fn make_dirs_as(path: &str, stop: &str, owner: u32) -> Result<(), InitError> {
    let path = Path::new(path);
    if path.is_dir() || path == Path::new(stop) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        make_dirs_as(&parent.to_string_lossy(), stop, owner)?;
    }
    let text = path.to_string_lossy();
    make_dir(&text)?;
    std::os::unix::fs::chown(path, Some(owner), Some(owner))
        .with_path("give to its user", &*text)
        .map_err(InitError::from)
}

/// Mounts the package layer disk on [`PACKAGES_MOUNT`] of the new root:
/// read-only for runs, writable for the install VM (whose agent remounts
/// it read-only once the install is done). `nosuid,nodev` always; not
/// `noexec`, as native extension modules are mapped executable.
fn mount_packages(disk: &str, mode: PackagesMount) -> Result<(), InitError> {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
    if mode == PackagesMount::ReadOnly {
        flags |= MsFlags::MS_RDONLY;
    }
    mount_fs(
        disk,
        &format!("{NEW_ROOT}{PACKAGES_MOUNT}"),
        "ext4",
        flags,
        None,
    )
}

/// Frees the initramfs (removes `/init`), then makes [`NEW_ROOT`] the root:
/// `MS_MOVE` onto `/` and `chroot`, as switch_root does.
fn switch_root() -> Result<(), InitError> {
    // The initramfs holds nothing else worth freeing (a few empty dirs).
    std::fs::remove_file("/init").with_path("free the initramfs: remove", "/init")?;
    chdir(NEW_ROOT).map_err(|source| sys(format!("chdir {NEW_ROOT}"), source))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|source| sys(format!("move {NEW_ROOT} to /"), source))?;
    chroot(".").map_err(|source| sys("chroot to the new root".into(), source))?;
    chdir("/").map_err(|source| sys("chdir / in the new root".into(), source))
}

/// Starts the agent with a minimal environment and the console as stdio.
fn spawn_agent() -> Result<Child, InitError> {
    Command::new(AGENT_PATH)
        .env_clear()
        .env("PATH", AGENT_PATH_ENV)
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .spawn()
        .map_err(|source| InitError::AgentSpawn {
            path: AGENT_PATH.into(),
            source,
        })
}

/// Reaps every child (orphans are re-parented to PID 1) until the agent
/// exits; returns how it ended. Signals are not forwarded to anyone.
fn supervise(agent: Child) -> String {
    let agent_pid = Pid::from_raw(i32::try_from(agent.id()).unwrap_or(i32::MAX));
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == agent_pid => {
                return format!("exit code {code}")
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == agent_pid => {
                return format!("killed by {signal}")
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(err) => return format!("lost track of it: waitpid: {err}"),
        }
    }
}

/// Makes every restart of the guest a triple fault, which resets the machine
/// at once; QEMU, started with `-no-reboot`, exits on that reset.
///
/// The kernel's default restart methods do not work on microvm with
/// `acpi=off`: there is no ACPI, no keyboard controller and no 0xcf9 port,
/// and the BIOS fallback never returns (measured: QEMU kept running). Set
/// early, so that a kernel panic (`panic=-1` restarts) also ends the VM.
fn restart_by_triple_fault() -> Result<(), InitError> {
    Ok(std::fs::write(REBOOT_TYPE, "triple").with_path("write", REBOOT_TYPE)?)
}

/// Powers the VM off by restarting it (see [`restart_by_triple_fault`]).
///
/// `RB_POWER_OFF` cannot stop QEMU here: without ACPI the kernel only halts
/// the CPUs and QEMU keeps running (measured).
fn power_off() -> ! {
    nix::unistd::sync();
    // Idempotent; repeated in case init failed before setting it.
    drop(restart_by_triple_fault());
    let err = reboot(RebootMode::RB_AUTOBOOT);
    console(&format!("{LOG_PREFIX} fatal: restart failed: {err:?}"));
    // Exiting makes the kernel panic; `panic=-1` then restarts, which QEMU
    // (`-no-reboot`) turns into an exit. Last resort, never a hang.
    std::process::exit(1)
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|err| sys(format!("mount {fstype} {source} on {target}"), err))
}

fn move_mount(from: &str, to: &str) -> Result<(), InitError> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|err| sys(format!("move mount {from} to {to}"), err))
}

fn make_dir(path: &str) -> Result<(), InitError> {
    if Path::new(path).is_dir() {
        return Ok(());
    }
    Ok(std::fs::create_dir(path).with_path("create directory", path)?)
}

fn sys(what: String, source: nix::Error) -> InitError {
    InitError::Sys { what, source }
}

/// Milliseconds since the kernel started (0 if the clock is unreadable).
fn boottime_ms() -> u64 {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
            secs * 1000 + nanos / 1_000_000
        })
        .unwrap_or(0)
}

/// Writes one line to `/dev/console` (stderr if it cannot be opened).
fn console(line: &str) {
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open("/dev/console");
    let result = match opened {
        Ok(mut console) => writeln!(console, "{line}"),
        Err(_) => writeln!(std::io::stderr(), "{line}"),
    };
    // Nowhere left to report a failed console write.
    drop(result);
}
