//! Where a VM's root disk overlay comes from: the overlay pool, behind a
//! small seam so that the builder can be tested without `qemu-img`.

use crate::error::{BootError, Result};
use crate::task::BoxFuture;
use airlock_overlay::OverlayPool;
use std::path::Path;
use std::time::Duration;

/// An overlay placed in a VM's work dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskAcquired {
    /// How long it took.
    pub elapsed: Duration,
    /// Whether it came ready-made from the pool.
    pub pool_hit: bool,
}

/// Gives a VM its copy-on-write root disk.
pub trait DiskSource: Send + Sync {
    /// Puts an overlay over `base` at `dest`.
    ///
    /// # Errors
    /// [`crate::BootError::Overlay`].
    fn acquire<'a>(
        &'a self,
        base: &'a Path,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<DiskAcquired, BootError>>;
}

impl DiskSource for OverlayPool {
    fn acquire<'a>(
        &'a self,
        base: &'a Path,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<DiskAcquired, BootError>> {
        Box::pin(async move {
            let acquired = OverlayPool::acquire(self, base, dest)
                .await
                .map_err(crate::BootError::overlay(None, "take a disk overlay"))?;
            Ok(DiskAcquired {
                elapsed: acquired.elapsed,
                pool_hit: acquired.pool_hit,
            })
        })
    }
}

/// The label of every workspace file system.
pub const WORKSPACE_LABEL: &str = "airlock-work";
/// Deadline of one `mkfs.ext4` or `qemu-img convert`.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The layout of the workspace file system [`mkfs_ext4_args`] makes, in
/// its base's name: a base made with other options is never taken for
/// one of these. 2: no metadata checksums.
const WORKSPACE_FS_LAYOUT: u32 = 2;

/// The file name of the blank workspace base of `disk_mib` MiB.
pub fn workspace_base_name(disk_mib: u32) -> String {
    format!("ext4-v{WORKSPACE_FS_LAYOUT}-{disk_mib}m.qcow2")
}

/// What an ext4 file system [`mkfs_ext4_args`] makes is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ext4Use {
    /// A VM's workspace, written by its code and thrown away with it (or
    /// kept whole with a paused session): no metadata checksums (they
    /// guard metadata across crashes and media errors a throw-away disk
    /// does not live through; under TCG a restored run that wrote one
    /// file took 6 ms less without them, of the 20 the disk added), and
    /// the inode tables zeroed now (`lazy_itable_init=0`; else the guest
    /// kernel zeroes them in the background of every boot). Both make
    /// mkfs write every table into the raw file, which the conversion to
    /// qcow2 gives back.
    Workspace,
    /// A package layer, written once by its install VM, then read-only:
    /// mkfs's defaults, so the raw file it keeps stays sparse (without
    /// the checksums no block group can be left uninitialised).
    Layer,
}

/// What a blank ext4 file system is made with (pure): `mkfs.ext4` over a
/// sparse raw `image` of `mib` MiB, no reserved blocks (the sandbox user
/// may fill it all), no journal (a VM's disk is thrown away with it; a
/// journal doubles metadata writes), the rest as `purpose` asks.
pub fn mkfs_ext4_args(
    image: &Path,
    mib: u64,
    label: &str,
    root_owner: Option<u32>,
    purpose: Ext4Use,
) -> Vec<std::ffi::OsString> {
    let (features, mut extended) = match purpose {
        Ext4Use::Workspace => (
            "^has_journal,^metadata_csum",
            "lazy_itable_init=0,nodiscard".to_owned(),
        ),
        Ext4Use::Layer => ("^has_journal", "nodiscard".to_owned()),
    };
    if let Some(uid) = root_owner {
        extended.push_str(&format!(",root_owner={uid}:{uid}"));
    }
    let mut args: Vec<std::ffi::OsString> = [
        "-q", "-F", "-m", "0", "-O", features, "-L", label, "-E", &extended,
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    args.push(image.as_os_str().to_owned());
    args.push(format!("{mib}M").into());
    args
}

/// Runs `program` with `args` under [`TOOL_TIMEOUT`]; its failure in
/// words (exit and stderr).
pub(crate) async fn run_tool(program: &str, args: &[std::ffi::OsString]) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    let output = airlock_sys_util::output_with_deadline(&mut cmd, None, TOOL_TIMEOUT)
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program}: {}: {}",
            output.exit(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// The blank workspace base of `disk_mib` MiB under `dir`, made once: an
/// ext4 file system in a sparse raw file, converted to qcow2 (the overlay
/// pool's base format; only the written blocks are stored), published
/// without replacing one another process made meanwhile. Mode 0644: a
/// jailed QEMU reads it.
///
/// # Errors
/// [`BootError::Workspace`] with the tools' words; [`BootError::Io`].
pub async fn workspace_base(dir: &Path, disk_mib: u32) -> Result<std::path::PathBuf, BootError> {
    let dest = dir.join(workspace_base_name(disk_mib));
    if tokio::fs::metadata(&dest).await.is_ok() {
        return Ok(dest);
    }
    let failed = |reason: String| BootError::Workspace { disk_mib, reason };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| BootError::io("create", dir, e))?;
    let stem = format!(".tmp-{}-{:016x}", std::process::id(), rand::random::<u64>());
    let raw = dir.join(format!("{stem}.raw"));
    let qcow2 = dir.join(format!("{stem}.qcow2"));
    let made = async {
        run_tool(
            "mkfs.ext4",
            &mkfs_ext4_args(
                &raw,
                u64::from(disk_mib),
                WORKSPACE_LABEL,
                None,
                Ext4Use::Workspace,
            ),
        )
        .await?;
        let convert: Vec<std::ffi::OsString> = vec![
            "convert".into(),
            "-q".into(),
            "-f".into(),
            "raw".into(),
            "-O".into(),
            "qcow2".into(),
            raw.as_os_str().to_owned(),
            qcow2.as_os_str().to_owned(),
        ];
        run_tool("qemu-img", &convert).await?;
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(&qcow2, std::fs::Permissions::from_mode(0o644))
            .await
            .map_err(|e| format!("chmod {}: {e}", qcow2.display()))?;
        // A link never replaces: the loser of a race keeps the winner's.
        match tokio::fs::hard_link(&qcow2, &dest).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(format!("publish {}: {e}", dest.display())),
        }
    }
    .await;
    for scratch in [&raw, &qcow2] {
        let _ = tokio::fs::remove_file(scratch).await;
    }
    made.map_err(failed)?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    #[test]
    fn a_workspace_file_system_has_no_journal_no_checksums_no_reserve_and_its_tables_written() {
        let args = mkfs_ext4_args(
            Path::new("/d/x.raw"),
            2048,
            WORKSPACE_LABEL,
            None,
            Ext4Use::Workspace,
        );
        let words: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            words,
            [
                "-q",
                "-F",
                "-m",
                "0",
                "-O",
                "^has_journal,^metadata_csum",
                "-L",
                "airlock-work",
                "-E",
                "lazy_itable_init=0,nodiscard",
                "/d/x.raw",
                "2048M"
            ]
        );
        let owned = mkfs_ext4_args(Path::new("/d/x.raw"), 1, "l", Some(1000), Ext4Use::Layer);
        assert_eq!(owned[5], "^has_journal");
        assert_eq!(owned[9], "nodiscard,root_owner=1000:1000");
    }

    #[tokio::test]
    async fn a_workspace_base_is_made_once_sparse_and_readable_by_all() {
        if airlock_sys_util::which("mkfs.ext4").is_none()
            || airlock_sys_util::which("qemu-img").is_none()
        {
            eprintln!("skipped: no mkfs.ext4 or qemu-img on this host");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let base = workspace_base(dir.path(), 256).await.unwrap();
        assert_eq!(base, dir.path().join("ext4-v2-256m.qcow2"));
        let meta = std::fs::metadata(&base).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o644);
        assert!(
            meta.blocks() * 512 < 16 << 20,
            "{} bytes",
            meta.blocks() * 512
        );
        let again = workspace_base(dir.path(), 256).await.unwrap();
        assert_eq!(std::fs::metadata(&again).unwrap().ino(), meta.ino());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "no scratch file left: {names:?}");
        // Made as asked: no journal, no metadata checksums.
        if airlock_sys_util::which("dumpe2fs").is_some() {
            let raw = dir.path().join("check.raw");
            let converted = std::process::Command::new("qemu-img")
                .args(["convert", "-f", "qcow2", "-O", "raw"])
                .arg(&base)
                .arg(&raw)
                .status()
                .unwrap();
            assert!(converted.success());
            let out = std::process::Command::new("dumpe2fs")
                .arg("-h")
                .arg(&raw)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let features = text
                .lines()
                .find(|l| l.starts_with("Filesystem features:"))
                .unwrap_or_else(|| panic!("no features in {text}"));
            assert!(features.contains("extent"), "{features}");
            for off in ["has_journal", "metadata_csum"] {
                assert!(!features.contains(off), "{features}");
            }
        }
    }
}
