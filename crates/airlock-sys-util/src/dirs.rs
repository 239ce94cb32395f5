//! Where Airlock keeps its files, resolved once, in one order, for every
//! program of the workspace.
//!
//! | dir | first match wins |
//! | --- | --- |
//! | cache | `$AIRLOCK_CACHE_DIR`; `$XDG_CACHE_HOME/airlock`; `$HOME/.cache/airlock` |
//! | images | `$AIRLOCK_IMAGES`; `<cache>/images` |
//! | probe cache | `<cache>/probe` |
//! | fetched binaries | `<cache>/bin` |
//! | run dir | `$AIRLOCK_RUN_DIR`; `/run/airlock` for root; `$XDG_RUNTIME_DIR/airlock`; `/tmp/airlock-<uid>` |
//!
//! Empty variables count as unset. Relative paths are refused: a relative
//! cache would move with the current directory, and a program started
//! elsewhere would not find what another built.
//!
//! The resolution is a pure function of an [`EnvSnapshot`] and the uid, so it
//! is tested without touching the process environment.

use crate::SysError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Overrides the cache dir.
pub const CACHE_DIR_ENV: &str = "AIRLOCK_CACHE_DIR";
/// Overrides the guest images dir.
pub const IMAGES_ENV: &str = "AIRLOCK_IMAGES";
/// Overrides the per-VM run dir.
pub const RUN_DIR_ENV: &str = "AIRLOCK_RUN_DIR";

/// The environment variables the resolution reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvSnapshot {
    /// `$AIRLOCK_CACHE_DIR`.
    pub airlock_cache_dir: Option<OsString>,
    /// `$AIRLOCK_IMAGES`.
    pub airlock_images: Option<OsString>,
    /// `$AIRLOCK_RUN_DIR`.
    pub airlock_run_dir: Option<OsString>,
    /// `$XDG_CACHE_HOME`.
    pub xdg_cache_home: Option<OsString>,
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<OsString>,
    /// `$HOME`.
    pub home: Option<OsString>,
}

impl EnvSnapshot {
    /// Reads the variables of this process.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var_os(name);
        Self {
            airlock_cache_dir: var(CACHE_DIR_ENV),
            airlock_images: var(IMAGES_ENV),
            airlock_run_dir: var(RUN_DIR_ENV),
            xdg_cache_home: var("XDG_CACHE_HOME"),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR"),
            home: var("HOME"),
        }
    }
}

/// Airlock's directories, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AirlockDirs {
    /// The cache: everything Airlock may rebuild or refetch.
    pub cache: PathBuf,
    /// Guest images (kernel, initramfs, root disks, `manifest.json`).
    pub images: PathBuf,
    /// Cached host probe verdicts (the KVM probe).
    pub probe: PathBuf,
    /// Binaries Airlock fetched itself (gvproxy on older releases).
    pub bin: PathBuf,
    /// Per-VM work dirs (sockets: keep it short).
    pub run: PathBuf,
}

impl AirlockDirs {
    /// Resolves the dirs of this process (its environment and uid).
    ///
    /// # Errors
    /// [`SysError::NoCacheDir`] when no cache dir can be named;
    /// [`SysError::Relative`] when a variable is relative.
    pub fn from_env() -> Result<Self, SysError> {
        Self::resolve(&EnvSnapshot::from_process(), current_uid())
    }

    /// Resolves the dirs from `env` for a process running as `uid`.
    ///
    /// # Errors
    /// [`SysError::NoCacheDir`] when no cache dir can be named;
    /// [`SysError::Relative`] when a variable is relative.
    pub fn resolve(env: &EnvSnapshot, uid: u32) -> Result<Self, SysError> {
        let cache = match absolute(CACHE_DIR_ENV, &env.airlock_cache_dir)? {
            Some(dir) => dir,
            None => match absolute("XDG_CACHE_HOME", &env.xdg_cache_home)? {
                Some(xdg) => xdg.join("airlock"),
                None => absolute("HOME", &env.home)?
                    .map(|home| home.join(".cache").join("airlock"))
                    .ok_or(SysError::NoCacheDir)?,
            },
        };
        let images =
            absolute(IMAGES_ENV, &env.airlock_images)?.unwrap_or_else(|| cache.join("images"));
        let run = match absolute(RUN_DIR_ENV, &env.airlock_run_dir)? {
            Some(dir) => dir,
            None if uid == 0 => PathBuf::from("/run/airlock"),
            None => match absolute("XDG_RUNTIME_DIR", &env.xdg_runtime_dir)? {
                Some(dir) => dir.join("airlock"),
                None => PathBuf::from(format!("/tmp/airlock-{uid}")),
            },
        };
        Ok(Self {
            probe: cache.join("probe"),
            bin: cache.join("bin"),
            images,
            run,
            cache,
        })
    }
}

/// The real uid of this process, read from `/proc/self/status` so that this
/// crate needs no `unsafe` and no libc binding; falls back to the owner of
/// `/proc/self`.
fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .or_else(|| std::fs::metadata("/proc/self").ok().map(|m| m.uid()))
        .unwrap_or(u32::MAX)
}

/// `value` as an absolute path; `None` when unset or empty.
fn absolute(var: &'static str, value: &Option<OsString>) -> Result<Option<PathBuf>, SysError> {
    match value.as_deref().filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) if Path::new(v).is_absolute() => Ok(Some(PathBuf::from(v))),
        Some(v) => Err(SysError::Relative {
            var,
            value: PathBuf::from(v),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home_only() -> EnvSnapshot {
        EnvSnapshot {
            home: Some("/home/u".into()),
            ..EnvSnapshot::default()
        }
    }

    #[test]
    fn home_alone_puts_everything_under_dot_cache() {
        let dirs = AirlockDirs::resolve(&home_only(), 1000).expect("resolves");
        assert_eq!(dirs.cache, Path::new("/home/u/.cache/airlock"));
        assert_eq!(dirs.images, Path::new("/home/u/.cache/airlock/images"));
        assert_eq!(dirs.probe, Path::new("/home/u/.cache/airlock/probe"));
        assert_eq!(dirs.bin, Path::new("/home/u/.cache/airlock/bin"));
        assert_eq!(dirs.run, Path::new("/tmp/airlock-1000"));
    }

    #[test]
    fn xdg_cache_home_beats_home() {
        let env = EnvSnapshot {
            xdg_cache_home: Some("/xdg".into()),
            ..home_only()
        };
        let dirs = AirlockDirs::resolve(&env, 1000).expect("resolves");
        assert_eq!(dirs.cache, Path::new("/xdg/airlock"));
        assert_eq!(dirs.images, Path::new("/xdg/airlock/images"));
    }

    #[test]
    fn airlock_cache_dir_beats_xdg_and_home() {
        let env = EnvSnapshot {
            airlock_cache_dir: Some("/c".into()),
            xdg_cache_home: Some("/xdg".into()),
            ..home_only()
        };
        let dirs = AirlockDirs::resolve(&env, 1000).expect("resolves");
        assert_eq!(dirs.cache, Path::new("/c"));
        assert_eq!(dirs.images, Path::new("/c/images"));
        assert_eq!(dirs.bin, Path::new("/c/bin"));
    }

    #[test]
    fn airlock_images_overrides_only_the_images() {
        let env = EnvSnapshot {
            airlock_images: Some("/img".into()),
            ..home_only()
        };
        let dirs = AirlockDirs::resolve(&env, 1000).expect("resolves");
        assert_eq!(dirs.images, Path::new("/img"));
        assert_eq!(dirs.cache, Path::new("/home/u/.cache/airlock"));
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let env = EnvSnapshot {
            airlock_cache_dir: Some("".into()),
            airlock_images: Some("".into()),
            xdg_cache_home: Some("".into()),
            ..home_only()
        };
        let dirs = AirlockDirs::resolve(&env, 1000).expect("resolves");
        assert_eq!(dirs.images, Path::new("/home/u/.cache/airlock/images"));
    }

    #[test]
    fn run_dir_is_run_airlock_for_root_and_runtime_dir_for_users() {
        let env = EnvSnapshot {
            xdg_runtime_dir: Some("/run/user/1000".into()),
            ..home_only()
        };
        let root = AirlockDirs::resolve(&env, 0).expect("resolves");
        assert_eq!(root.run, Path::new("/run/airlock"));
        let user = AirlockDirs::resolve(&env, 1000).expect("resolves");
        assert_eq!(user.run, Path::new("/run/user/1000/airlock"));
        let explicit = EnvSnapshot {
            airlock_run_dir: Some("/r".into()),
            ..env
        };
        assert_eq!(
            AirlockDirs::resolve(&explicit, 0).expect("resolves").run,
            Path::new("/r")
        );
    }

    #[test]
    fn relative_paths_are_refused_with_the_variable_named() {
        let env = EnvSnapshot {
            airlock_images: Some("images".into()),
            ..home_only()
        };
        let err = AirlockDirs::resolve(&env, 1000).expect_err("refused");
        assert!(err.to_string().contains("AIRLOCK_IMAGES"), "{err}");
    }

    #[test]
    fn nothing_set_is_an_error_that_names_the_fix() {
        let err = AirlockDirs::resolve(&EnvSnapshot::default(), 1000).expect_err("no cache");
        assert!(matches!(err, SysError::NoCacheDir));
        assert!(err.to_string().contains("AIRLOCK_CACHE_DIR"));
    }
}
