//! What the host's apt knows: the mirror and suite debootstrap uses, and the
//! versions of the packages a root disk is built from (an input of its hash).

use super::command_output;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The archive a root disk is bootstrapped from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// The mirror URI, as written in the host's apt sources.
    pub mirror: String,
    /// The release suite (the host's `VERSION_CODENAME`).
    pub suite: String,
}

/// Reads `VERSION_CODENAME` from the text of `/etc/os-release`.
pub fn parse_codename(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("VERSION_CODENAME=")?;
        let value = value.trim().trim_matches('"').trim_matches('\'');
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// The first mirror serving `suite` in a deb822 `.sources` file (a stanza
/// with `Types:` containing `deb` and `Suites:` containing `suite`).
pub fn mirror_from_deb822(text: &str, suite: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        let enabled = !matches!(field("Enabled"), Some(v) if v.eq_ignore_ascii_case("no"));
        let is_deb = field("Types")?.split_whitespace().any(|t| t == "deb");
        let has_suite = field("Suites")?.split_whitespace().any(|s| s == suite);
        let uri = field("URIs")?.split_whitespace().next()?.to_owned();
        (enabled && is_deb && has_suite).then_some(uri)
    })
}

/// The first mirror serving `suite` in a one-line `sources.list`
/// (`deb [options] URI suite components...`).
pub fn mirror_from_list(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "deb" {
            return None;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let end = rest.iter().position(|w| w.ends_with(']'))?;
            rest.drain(..=end);
        }
        let (uri, line_suite) = (rest.first()?, rest.get(1)?);
        (*line_suite == suite).then(|| (*uri).to_owned())
    })
}

/// Finds the archive from the host: suite from `/etc/os-release`, mirror
/// from `/etc/apt/sources.list.d/*.sources`, then `/etc/apt/sources.list`.
pub fn host_archive() -> Result<Archive> {
    let os_release = std::fs::read_to_string("/etc/os-release").context("read /etc/os-release")?;
    let Some(suite) = parse_codename(&os_release) else {
        bail!("/etc/os-release has no VERSION_CODENAME: root disks are built for a Debian release");
    };
    let mut sources: Vec<_> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    sources.sort();
    for path in sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sources"))
    {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(mirror) = mirror_from_deb822(&text, &suite) {
            return Ok(Archive { mirror, suite });
        }
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Some(mirror) = mirror_from_list(&list, &suite) {
        return Ok(Archive { mirror, suite });
    }
    bail!(
        "no apt source serves suite {suite}: add one to /etc/apt/sources.list.d/ \
         (the root disks are bootstrapped from the host's own mirror)"
    )
}

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
    fn codename_from_os_release() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(parse_codename(text).as_deref(), Some("bookworm"));
        assert_eq!(parse_codename("ID=debian\n"), None);
        assert_eq!(
            parse_codename("VERSION_CODENAME=\"trixie\"\n").as_deref(),
            Some("trixie")
        );
    }

    #[test]
    fn deb822_picks_the_stanza_with_the_release_suite() {
        let text = "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n\
                    Components: main\n\nTypes: deb deb-src\n# a comment\nURIs: http://mirror.example/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            mirror_from_deb822(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn deb822_skips_disabled_and_source_only_stanzas() {
        let text = "Types: deb\nEnabled: no\nURIs: http://off.example/\nSuites: bookworm\n\n\
                    Types: deb-src\nURIs: http://src.example/\nSuites: bookworm\n";
        assert_eq!(mirror_from_deb822(text, "bookworm"), None);
    }

    #[test]
    fn one_line_list_with_options() {
        let text = "# deb http://old.example/ bookworm main\n\
                    deb-src http://src.example/ bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_list(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_from_list(text, "trixie"), None);
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
