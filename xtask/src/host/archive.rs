//! The host's Debian archive: its release suite (from `/etc/os-release`)
//! and the mirror its apt sources name for it. The root disks are
//! bootstrapped from it and gvproxy is fetched from its next release.

use anyhow::{bail, Context, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
