//! The package layer as the agent sees it: a disk `airlock-init` mounted on
//! [`PACKAGES_DIR`] (`/opt`), read-only in runs, writable in the install VM
//! that fills it.
//!
//! - Every process the agent starts finds the layer's packages:
//!   `PYTHONPATH` names `/opt/python` and `NODE_PATH`
//!   `/opt/node/node_modules` when they exist ([`layer_env`]). The host may
//!   not set either (the env policy refuses them), so only a layer the
//!   host attached is ever on them.
//! - An install into a writable layer ([`InstallTarget::Layer`]) puts
//!   pip's `--target` in `/opt/python` and npm's `--prefix` in `/opt/node`,
//!   with the package managers' temporary files and caches on the layer
//!   too (not in the small tmpfs `/tmp`); when it ends, the scratch dir is
//!   removed and the layer remounted read-only ([`seal_layer`]), which
//!   flushes it and leaves a clean file system for the host to keep.

use crate::AgentError;
use airlock_sys_util::{IoError, IoResultExt};
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Where `airlock-init` mounts the package layer.
pub const PACKAGES_DIR: &str = airlock_protocol::abi::PACKAGES_MOUNT;
/// pip's `--target` in the layer (on `PYTHONPATH`).
pub const PYTHON_DIR: &str = "/opt/python";
/// npm's `--prefix` in the layer.
pub const NODE_PREFIX: &str = "/opt/node";
/// npm's packages in the layer (on `NODE_PATH`).
pub const NODE_MODULES: &str = "/opt/node/node_modules";
/// Temporary files and caches of an install into the layer; removed before
/// the layer is sealed.
pub const SCRATCH_DIR: &str = "/opt/.install-tmp";

/// Where an install goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallTarget {
    /// The sandbox user's own space under the home (`pip --user`, `npm
    /// --prefix $HOME`), for a VM without a writable layer.
    Home(String),
    /// The writable package layer on [`PACKAGES_DIR`].
    Layer,
}

/// `PYTHONPATH` and `NODE_PATH` for the layer's dirs that exist.
pub fn layer_env() -> Vec<(&'static str, &'static str)> {
    layer_env_for(
        Path::new(PYTHON_DIR).is_dir(),
        Path::new(NODE_MODULES).is_dir(),
    )
}

/// The variables for a layer with (or without) each language's dir (pure).
pub fn layer_env_for(python: bool, node: bool) -> Vec<(&'static str, &'static str)> {
    let mut env = Vec::new();
    if python {
        env.push(("PYTHONPATH", PYTHON_DIR));
    }
    if node {
        env.push(("NODE_PATH", NODE_MODULES));
    }
    env
}

/// Whether [`PACKAGES_DIR`] is a writable mount of its own (a package
/// layer the host attached for an install), as opposed to a dir of the
/// read-only root or a read-only layer.
pub fn writable_layer() -> bool {
    let (Ok(dir), Ok(root)) = (std::fs::metadata(PACKAGES_DIR), std::fs::metadata("/")) else {
        return false;
    };
    dir.dev() != root.dev()
        && nix::sys::statvfs::statvfs(PACKAGES_DIR)
            .is_ok_and(|s| !s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

/// Makes the layer's dirs for `language`'s install and the scratch dir,
/// owned by the sandbox user `uid:gid` (the agent is root; the package
/// manager is not).
///
/// # Errors
/// [`AgentError::Io`] naming the dir.
pub fn prepare_layer(dirs: &[&str], owner: Option<(u32, u32)>) -> Result<(), AgentError> {
    for dir in dirs.iter().chain([&SCRATCH_DIR]) {
        let io = |action, source| AgentError::from(IoError::new(action, (*dir).to_owned(), source));
        std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| io("chown", e))?;
        }
    }
    Ok(())
}

/// Ends an install into the layer: removes the scratch dir, then
/// remounts the layer read-only, which writes everything out and marks
/// the file system clean. Nothing can change the layer afterwards.
///
/// # Errors
/// [`AgentError::Io`] when the remount fails (the layer must then not be
/// kept).
pub fn seal_layer() -> Result<(), AgentError> {
    if let Err(e) = std::fs::remove_dir_all(SCRATCH_DIR) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %e, "cannot remove the install scratch dir");
        }
    }
    use nix::mount::{mount, MsFlags};
    let flags = MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOATIME;
    let target = CString::new(PACKAGES_DIR).map_err(|e| {
        AgentError::from(IoError::new(
            "remount read-only",
            PACKAGES_DIR,
            std::io::Error::other(e),
        ))
    })?;
    mount(
        None::<&str>,
        target.as_c_str(),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .with_path("remount read-only", PACKAGES_DIR)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_dirs_that_exist_go_on_the_paths() {
        assert!(layer_env_for(false, false).is_empty());
        assert_eq!(layer_env_for(true, false), [("PYTHONPATH", "/opt/python")]);
        assert_eq!(
            layer_env_for(true, true),
            [
                ("PYTHONPATH", "/opt/python"),
                ("NODE_PATH", "/opt/node/node_modules")
            ]
        );
    }

    #[test]
    fn the_layer_paths_are_under_the_mount() {
        for dir in [PYTHON_DIR, NODE_PREFIX, NODE_MODULES, SCRATCH_DIR] {
            assert!(Path::new(dir).starts_with(PACKAGES_DIR), "{dir}");
        }
    }

    #[test]
    fn a_plain_root_directory_is_not_a_writable_layer() {
        // On a test host /opt is a dir of the root (or absent): never a
        // layer the agent would install into.
        let opt = std::fs::metadata(PACKAGES_DIR);
        let root = std::fs::metadata("/").unwrap();
        if opt.is_err() || opt.is_ok_and(|m| m.dev() == root.dev()) {
            assert!(!writable_layer());
        }
    }
}
