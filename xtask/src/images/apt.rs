//! What the host's apt knows about a root disk's packages: their versions
//! in the host's archive (an input of the disk's hash; the archive itself is
//! [`crate::host::archive`]).

use super::command_output;
use crate::host::archive::Archive;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Versions by package from `apt-cache madison` output, taking only lines
/// from `suite/main` of `mirror` (what debootstrap installs).
pub fn parse_madison(output: &str, archive: &Archive) -> BTreeMap<String, String> {
    let mirror = archive.mirror.trim_end_matches('/');
    let suite_main = format!("{}/main", archive.suite);
    let mut versions = BTreeMap::new();
    for line in output.lines() {
        let parts: Vec<&str> = line.split('|').map(str::trim).collect();
        let [name, version, origin] = parts[..] else {
            continue;
        };
        let mut origin = origin.split_whitespace();
        let (Some(uri), Some(suite)) = (origin.next(), origin.next()) else {
            continue;
        };
        if uri.trim_end_matches('/') == mirror && suite == suite_main && !name.is_empty() {
            versions
                .entry(name.to_owned())
                .or_insert_with(|| version.to_owned());
        }
    }
    versions
}

/// The cache of version look-ups: valid while the apt lists are unchanged.
#[derive(Debug, Default, Serialize, Deserialize)]
struct VersionCache {
    /// Fingerprint of `/var/lib/apt/lists` (names, sizes, mtimes).
    lists_fingerprint: String,
    /// Looked-up versions by `suite` + package.
    versions: BTreeMap<String, String>,
}

/// A fingerprint of the apt lists: changes on every `apt-get update` that
/// changed something.
fn lists_fingerprint() -> String {
    let mut parts: Vec<String> = std::fs::read_dir("/var/lib/apt/lists")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    let mtime = meta
                        .modified()
                        .ok()?
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()?;
                    Some(format!(
                        "{:?}:{}:{}",
                        e.file_name(),
                        meta.len(),
                        mtime.as_nanos()
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    airlock_sys_util::sha256_hex(parts.join("\n").as_bytes())
}

/// The versions of `packages` in `archive`, from `apt-cache madison`,
/// cached in `cache_file` while the apt lists do not change.
pub fn package_versions(
    packages: &[&str],
    archive: &Archive,
    cache_file: &Path,
) -> Result<BTreeMap<String, String>> {
    let fingerprint = lists_fingerprint();
    let mut cache: VersionCache = std::fs::read(cache_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|c: &VersionCache| c.lists_fingerprint == fingerprint)
        .unwrap_or_else(|| VersionCache {
            lists_fingerprint: fingerprint,
            versions: BTreeMap::new(),
        });
    let key = |p: &str| format!("{} {} {p}", archive.mirror, archive.suite);
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !cache.versions.contains_key(&key(p)))
        .collect();
    if !missing.is_empty() {
        let out = command_output(Command::new("apt-cache").arg("madison").args(&missing))?;
        let found = parse_madison(&out, archive);
        for package in &missing {
            let Some(version) = found.get(*package) else {
                bail!(
                    "package {package} not found in {} {}/main by `apt-cache madison`: \
                     run `apt-get update` (the host's apt lists describe what debootstrap gets)",
                    archive.mirror,
                    archive.suite
                );
            };
            cache.versions.insert(key(package), version.clone());
        }
        let json = serde_json::to_vec_pretty(&cache).context("serialize the version cache")?;
        // A cache that cannot be written only costs time on the next run.
        drop(std::fs::write(cache_file, json));
    }
    Ok(packages
        .iter()
        .filter_map(|p| {
            cache
                .versions
                .get(&key(p))
                .map(|v| ((*p).to_owned(), v.clone()))
        })
        .collect())
}

/// The version of an installed host package (`dpkg-query`).
pub fn installed_version(package: &str) -> Result<String> {
    let out = command_output(Command::new("dpkg-query").args(["-W", "-f", "${Version}", package]))?;
    let version = out.trim();
    if version.is_empty() {
        bail!("host package {package} is not installed: run `apt-get install {package}`");
    }
    Ok(version.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Archive {
        Archive {
            mirror: "http://mirror.example/debian".into(),
            suite: "bookworm".into(),
        }
    }

    #[test]
    fn madison_keeps_the_release_suite_only() {
        let out = "    nodejs | 18.20.4+dfsg-1~deb12u3 | http://mirror.example/debian-security bookworm-security/main amd64 Packages\n\
                       nodejs | 18.20.4+dfsg-1~deb12u2 | http://mirror.example/debian bookworm/main amd64 Packages\n\
                         bash | 5.2.15-2+b13 | http://mirror.example/debian bookworm/main amd64 Packages\n\
                          npm | 9.2.0 | http://other.example/debian bookworm/main amd64 Packages\n";
        let versions = parse_madison(out, &archive());
        assert_eq!(versions.len(), 2);
        assert_eq!(versions["nodejs"], "18.20.4+dfsg-1~deb12u2");
        assert_eq!(versions["bash"], "5.2.15-2+b13");
    }

    #[test]
    fn madison_ignores_garbage() {
        assert!(parse_madison("nonsense\n| |\n", &archive()).is_empty());
    }
}
