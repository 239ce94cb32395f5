//! Which kernel sources this host offers: the newest `linux-source-X.Y`
//! its apt knows (the guest kernel is built from it, and `cargo xtask`
//! installs it with the other image requirements).

use super::apt_plan::Apt;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The Debian package holding the kernel sources, and its tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSource {
    /// `linux-source-X.Y`.
    pub package: String,
    /// `/usr/src/linux-source-X.Y.tar.xz`, where the package puts it.
    pub tarball: PathBuf,
}

impl KernelSource {
    /// The source of kernel series `series` (`6.1`).
    pub fn of_series(series: &str) -> Self {
        Self {
            package: format!("linux-source-{series}"),
            tarball: PathBuf::from(format!("/usr/src/linux-source-{series}.tar.xz")),
        }
    }

    /// Finds the newest `linux-source-X.Y` the host's apt offers (or, without
    /// package lists, the newest installed tarball).
    ///
    /// # Errors
    /// When neither exists, naming the releases that work.
    pub fn find() -> Result<Self> {
        let names = Command::new("apt-cache")
            .args(["pkgnames", "linux-source-"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let offered: Vec<String> = names
            .lines()
            .filter_map(|n| n.trim().strip_prefix("linux-source-"))
            .filter(|series| series_key(series).is_some())
            .filter(|series| {
                Apt::default()
                    .policy(&format!("linux-source-{series}"))
                    .is_ok_and(|p| p.candidate.is_some() || p.installed.is_some())
            })
            .map(str::to_owned)
            .collect();
        let installed: Vec<String> = std::fs::read_dir("/usr/src")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("linux-source-")?
                    .strip_suffix(".tar.xz")
                    .map(str::to_owned)
            })
            .collect();
        let series = newest_series(&offered)
            .or_else(|| newest_series(&installed))
            .with_context(|| {
                "this host's apt offers no linux-source-X.Y package, which the guest kernel is \
                 built from: run `apt-get update`; Airlock's images build on Debian 12 \
                 (linux-source-6.1) and newer Debian releases"
                    .to_owned()
            })?;
        Ok(Self::of_series(&series))
    }
}

/// The newest kernel series (`6.12` beats `6.1`) among `series`.
pub fn newest_series(series: &[String]) -> Option<String> {
    series
        .iter()
        .filter_map(|s| series_key(s).map(|k| (k, s)))
        .max()
        .map(|(_, s)| s.clone())
}

/// `X.Y` as numbers, `None` for anything else.
fn series_key(series: &str) -> Option<(u32, u32)> {
    let (major, minor) = series.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_newest_kernel_series_wins_numerically() {
        let series = [
            "6.1".to_owned(),
            "6.12".to_owned(),
            "5.10".to_owned(),
            "x".to_owned(),
        ];
        assert_eq!(newest_series(&series).as_deref(), Some("6.12"));
        assert_eq!(newest_series(&[]), None);
        assert_eq!(
            KernelSource::of_series("6.1").tarball,
            Path::new("/usr/src/linux-source-6.1.tar.xz")
        );
    }
}
