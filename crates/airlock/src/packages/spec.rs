//! Pinned package specs: parsing and validation (pure).
//!
//! Only exact pins are accepted, one grammar per package manager:
//! - pip: `name==version`. The name follows PEP 508 (ASCII letters,
//!   digits, `.`, `_`, `-`, starting and ending with a letter or digit) and
//!   is compared in its PEP 503 normal form (lower case, runs of `._-` as
//!   one `-`); the version is a PEP 440 public version with an optional
//!   local part (`1.16.0`, `2.0rc1`, `1!2.0.post1.dev3`, `1.0+cpu`).
//! - npm: `name@version` or `@scope/name@version`. Names follow npm's rules
//!   (lower case, at most 214 bytes, URL-safe `[a-z0-9._~-]`, not starting
//!   with `.` or `_`); the version is an exact semver
//!   (`MAJOR.MINOR.PATCH[-pre][+build]`).
//!
//! Everything else is refused with [`InputError::PackageSpec`] before a VM
//! boots: unpinned names, ranges (`>=`, `^`, `~`, `*`, `x`), tags
//! (`latest`), extras, URLs, paths, `-e`, options such as `--index-url`,
//! whitespace inside a spec. Pinning the listed packages is what makes a
//! list a cache key; their own dependencies are resolved by the registry at
//! install time and recorded in the layer (`docs/packages.md`).

use crate::error::{InputError, Result};
use airlock_protocol::Language;
use std::fmt;

/// Most packages in one list (the agent's limit per install).
pub const MAX_PACKAGES: usize = 100;
/// Longest accepted spec, in bytes.
pub const MAX_SPEC_BYTES: usize = 256;
/// Longest npm package name (npm's own limit).
const MAX_NPM_NAME_BYTES: usize = 214;

/// Which package manager a language installs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PackageManager {
    /// pip (Python), from PyPI.
    Pip,
    /// npm (JavaScript), from the npm registry.
    Npm,
}

impl PackageManager {
    /// The package manager of `language`, `None` for `raw`.
    pub fn of(language: Language) -> Option<Self> {
        match language {
            Language::Python => Some(Self::Pip),
            Language::Javascript => Some(Self::Npm),
            Language::Raw => None,
        }
    }

    /// Its name (`pip`, `npm`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pip => "pip",
            Self::Npm => "npm",
        }
    }

    /// The registry host names an install may reach, and nothing else.
    pub fn registries(self) -> &'static [&'static str] {
        match self {
            Self::Pip => &["pypi.org", "files.pythonhosted.org"],
            Self::Npm => &["registry.npmjs.org"],
        }
    }

    /// The pin format, for messages.
    fn pin_format(self) -> &'static str {
        match self {
            Self::Pip => "name==version, e.g. six==1.16.0",
            Self::Npm => "name@version, e.g. is-number@7.0.0 or @types/node@20.11.5",
        }
    }
}

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageSpec {
    /// The name as it compares: PEP 503 normal form for pip, as given for
    /// npm (npm names are lower case already).
    pub name: String,
    /// The exact version.
    pub version: String,
    /// Who installs it.
    pub manager: PackageManager,
}

impl PackageSpec {
    /// Parses one spec for `manager`.
    ///
    /// # Errors
    /// [`InputError::PackageSpec`] saying what is wrong and what is accepted.
    pub fn parse(manager: PackageManager, spec: &str) -> Result<Self, InputError> {
        let refuse = |why: String| InputError::PackageSpec {
            spec: shown(spec),
            reason: format!("{why}; pin it as {}", manager.pin_format()),
        };
        if spec.is_empty() {
            return Err(refuse("the spec is empty".into()));
        }
        if spec.len() > MAX_SPEC_BYTES {
            return Err(refuse(format!(
                "{} bytes is over the limit of {MAX_SPEC_BYTES}",
                spec.len()
            )));
        }
        if let Some(c) = spec
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
        {
            return Err(refuse(format!("it contains {c:?}")));
        }
        if spec.starts_with('-') {
            return Err(refuse(
                "options (-e, -r, --index-url, ...) are not accepted".into(),
            ));
        }
        if spec.contains("://") || spec.starts_with('.') || (spec.contains('/') && !is_scoped(spec))
        {
            return Err(refuse(
                "URLs, paths and other sources are not accepted: packages come from the registry"
                    .into(),
            ));
        }
        match manager {
            PackageManager::Pip => parse_pip(spec).map_err(refuse),
            PackageManager::Npm => parse_npm(spec).map_err(refuse),
        }
    }

    /// The canonical text: `name==version` (pip) or `name@version` (npm).
    /// The same package always gives the same text.
    pub fn canonical(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for PackageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.manager {
            PackageManager::Pip => write!(f, "{}=={}", self.name, self.version),
            PackageManager::Npm => write!(f, "{}@{}", self.name, self.version),
        }
    }
}

/// A checked, sorted, de-duplicated list of pinned packages of one
/// language: what a package layer is made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackageList {
    language: Language,
    /// `None` only for an empty list of a language without one (raw).
    manager: Option<PackageManager>,
    specs: Vec<PackageSpec>,
}

impl PackageList {
    /// Parses `items` for `language`. Each item may hold several specs
    /// separated by commas (as `--packages a==1,b==2` gives them); empty
    /// items are skipped. Exact duplicates are folded; two versions of one
    /// package are refused.
    ///
    /// # Errors
    /// [`InputError::PackageSpec`] for a refused spec, a language without a
    /// package manager, a package pinned twice, or too many packages.
    pub fn parse<S: AsRef<str>>(language: Language, items: &[S]) -> Result<Self, InputError> {
        let specs: Vec<&str> = items
            .iter()
            .flat_map(|item| item.as_ref().split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let Some(manager) = PackageManager::of(language) else {
            if specs.is_empty() {
                return Ok(Self {
                    language,
                    manager: None,
                    specs: Vec::new(),
                });
            }
            return Err(InputError::PackageSpec {
                spec: specs.first().map(|s| shown(s)).unwrap_or_default(),
                reason: "raw has no package manager: use python (pip) or javascript (npm)".into(),
            });
        };
        if specs.len() > MAX_PACKAGES {
            return Err(InputError::PackageSpec {
                spec: format!("{} specs", specs.len()),
                reason: format!("at most {MAX_PACKAGES} packages per list"),
            });
        }
        let mut parsed = specs
            .iter()
            .map(|s| PackageSpec::parse(manager, s))
            .collect::<Result<Vec<_>, InputError>>()?;
        parsed.sort();
        parsed.dedup();
        if let Some(pair) = parsed.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(InputError::PackageSpec {
                spec: format!("{}, {}", pair[0], pair[1]),
                reason: format!("{} is pinned to two versions: keep one", pair[0].name),
            });
        }
        Ok(Self {
            language,
            manager: Some(manager),
            specs: parsed,
        })
    }

    /// The language.
    pub fn language(&self) -> Language {
        self.language
    }

    /// The package manager (`None` for raw, whose lists are always
    /// empty).
    pub fn manager(&self) -> Option<PackageManager> {
        self.manager
    }

    /// The specs, sorted by name.
    pub fn specs(&self) -> &[PackageSpec] {
        &self.specs
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The canonical texts, sorted: what the package manager is given and
    /// what the layer key hashes.
    pub fn canonical(&self) -> Vec<String> {
        self.specs.iter().map(PackageSpec::canonical).collect()
    }
}

/// A spec cut for an error message.
fn shown(spec: &str) -> String {
    spec.chars().take(80).collect()
}

fn is_scoped(spec: &str) -> bool {
    spec.starts_with('@') && spec.matches('/').count() == 1
}

fn parse_pip(spec: &str) -> std::result::Result<PackageSpec, String> {
    if spec.contains('[') {
        return Err("extras (name[extra]) are not accepted".into());
    }
    let Some((name, version)) = spec.split_once("==") else {
        return Err(if spec.contains(['<', '>', '~', '!', '=', '*']) {
            "version ranges are not accepted, only an exact pin".into()
        } else {
            "the version is not pinned".into()
        });
    };
    if version.starts_with('=') {
        return Err("arbitrary equality (===) is not accepted".into());
    }
    if !is_pep508_name(name) {
        return Err(format!(
            "{name:?} is not a package name (letters, digits, '.', '_', '-', \
             starting and ending with a letter or digit)"
        ));
    }
    if !is_pep440_version(version) {
        return Err(format!(
            "{version:?} is not an exact version (e.g. 1.16.0, 2.0rc1, 1.0.post1)"
        ));
    }
    Ok(PackageSpec {
        name: pep503_normal(name),
        version: version.to_ascii_lowercase(),
        manager: PackageManager::Pip,
    })
}

fn parse_npm(spec: &str) -> std::result::Result<PackageSpec, String> {
    // The version follows the last '@' that is not the scope's.
    let at = spec[1..].rfind('@').map(|i| i + 1);
    let Some(at) = at else {
        return Err("the version is not pinned".into());
    };
    let (name, version) = (&spec[..at], &spec[at + 1..]);
    if !is_npm_name(name) {
        return Err(format!(
            "{name:?} is not an npm package name (lower case letters, digits, '-', '.', '_', \
             '~', at most {MAX_NPM_NAME_BYTES} bytes, optionally @scope/name)"
        ));
    }
    if !is_semver(version) {
        return Err(format!(
            "{version:?} is not an exact version (MAJOR.MINOR.PATCH, e.g. 7.0.0): ranges and \
             tags are not accepted"
        ));
    }
    Ok(PackageSpec {
        name: name.to_owned(),
        version: version.to_owned(),
        manager: PackageManager::Npm,
    })
}

/// PEP 508: `^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$`, case-insensitive.
fn is_pep508_name(name: &str) -> bool {
    let b = name.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// PEP 503 normal form: lower case, each run of `-_.` one `-`.
fn pep503_normal(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A PEP 440 public version (`[N!]N(.N)*[{a|b|rc}N][.postN][.devN]`) with
/// an optional local part (`+[a-z0-9]+(.[a-z0-9]+)*`); lower case only in
/// the canonical spellings.
fn is_pep440_version(version: &str) -> bool {
    let version = version.to_ascii_lowercase();
    let (public, local) = match version.split_once('+') {
        Some((p, l)) => (p, Some(l)),
        None => (version.as_str(), None),
    };
    if let Some(local) = local {
        if !local
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return false;
        }
    }
    let mut rest = public;
    if let Some((epoch, after)) = rest.split_once('!') {
        if !is_number(epoch) {
            return false;
        }
        rest = after;
    }
    // Suffixes, last first.
    for suffix in [".dev", ".post"] {
        if let Some(i) = rest.rfind(suffix) {
            if !is_number(&rest[i + suffix.len()..]) {
                return false;
            }
            rest = &rest[..i];
        }
    }
    let release_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (release, pre) = rest.split_at(release_end);
    if !release.split('.').all(is_number) {
        return false;
    }
    if pre.is_empty() {
        return true;
    }
    ["rc", "a", "b"]
        .iter()
        .any(|tag| pre.strip_prefix(tag).is_some_and(is_number))
}

/// npm's rules for new package names, with an optional `@scope/`.
fn is_npm_name(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_NPM_NAME_BYTES {
        return false;
    }
    let part_ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with(['.', '_'])
            && part.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'-' | b'.' | b'_' | b'~')
            })
    };
    let bare = match name.strip_prefix('@') {
        Some(scoped) => match scoped.split_once('/') {
            Some((scope, bare)) if part_ok(scope) => bare,
            _ => return false,
        },
        None => name,
    };
    part_ok(bare) && !matches!(bare, "node_modules" | "favicon.ico")
}

/// An exact semver 2.0 version: `MAJOR.MINOR.PATCH[-pre][+build]`.
fn is_semver(version: &str) -> bool {
    let (rest, build) = match version.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (version, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let ident_ok =
        |id: &str| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| is_number(p) && (p.len() == 1 || !p.starts_with('0')))
        && pre.is_none_or(|p| p.split('.').all(ident_ok))
        && build.is_none_or(|b| b.split('.').all(ident_ok))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;
    use proptest::prelude::*;

    fn pip(spec: &str) -> Result<PackageSpec, InputError> {
        PackageSpec::parse(PackageManager::Pip, spec)
    }

    fn npm(spec: &str) -> Result<PackageSpec, InputError> {
        PackageSpec::parse(PackageManager::Npm, spec)
    }

    #[test]
    fn exact_pip_pins_are_accepted_and_normalised() {
        for (spec, canonical) in [
            ("six==1.16.0", "six==1.16.0"),
            ("idna==3.7", "idna==3.7"),
            ("Typing_Extensions==4.12.2", "typing-extensions==4.12.2"),
            ("zope.interface==6.4.post2", "zope-interface==6.4.post2"),
            ("numpy==2.2.4", "numpy==2.2.4"),
            ("torch==2.3.0+cpu", "torch==2.3.0+cpu"),
            ("pkg==1!2.0rc1.dev3", "pkg==1!2.0rc1.dev3"),
            ("A==1", "a==1"),
        ] {
            assert_eq!(pip(spec).unwrap().canonical(), canonical, "{spec}");
        }
    }

    #[test]
    fn unpinned_ranged_and_odd_pip_specs_are_refused_with_the_format() {
        for bad in [
            "six",
            "six>=1.16",
            "six~=1.16",
            "six!=1.0",
            "six==1.*",
            "six===1.16.0",
            "six==",
            "==1.0",
            "six == 1.16.0",
            "requests[socks]==2.31.0",
            "-e .",
            "--index-url=https://evil.example/simple",
            "-r requirements.txt",
            "git+https://github.com/x/y",
            "https://example.com/x.whl",
            "./local.whl",
            "/abs/path.whl",
            "six==1.16.0;python_version<'4'",
            "six==latest",
            "-six==1.0",
            "six-==1.0",
            "sïx==1.0",
            "six==1.0\n",
        ] {
            let err = pip(bad).unwrap_err();
            assert!(
                matches!(err, InputError::PackageSpec { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("name==version"), "{bad}: {err}");
        }
    }

    #[test]
    fn exact_npm_pins_are_accepted_scoped_too() {
        for spec in [
            "is-number@7.0.0",
            "@types/node@20.11.5",
            "left-pad@1.3.0",
            "lodash.merge@4.6.2",
            "pkg@1.0.0-beta.1+build.5",
        ] {
            assert_eq!(npm(spec).unwrap().canonical(), spec);
        }
        let scoped = npm("@types/node@20.11.5").unwrap();
        assert_eq!(scoped.name, "@types/node");
        assert_eq!(scoped.version, "20.11.5");
    }

    #[test]
    fn npm_ranges_tags_and_bad_names_are_refused() {
        for bad in [
            "is-number",
            "is-number@",
            "is-number@^7.0.0",
            "is-number@~7.0.0",
            "is-number@7",
            "is-number@7.0",
            "is-number@7.x",
            "is-number@*",
            "is-number@latest",
            "is-number@>=7.0.0",
            "is-number@07.0.0",
            "Is-Number@7.0.0",
            ".hidden@1.0.0",
            "_under@1.0.0",
            "@scope@1.0.0",
            "@/name@1.0.0",
            "@scope/@1.0.0",
            "node_modules@1.0.0",
            "github:user/repo",
            "user/repo@1.0.0",
            "file:../x",
            "http://registry.example/x.tgz",
            "--registry=http://evil",
            "a b@1.0.0",
        ] {
            let err = npm(bad).unwrap_err();
            assert!(
                matches!(err, InputError::PackageSpec { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_list_is_split_on_commas_sorted_and_deduplicated() {
        let list = PackageList::parse(
            Language::Python,
            &["six==1.16.0, idna==3.7", "six==1.16.0", ""],
        )
        .unwrap();
        assert_eq!(list.canonical(), ["idna==3.7", "six==1.16.0"]);
        assert_eq!(list.manager(), Some(PackageManager::Pip));
        let empty = PackageList::parse::<&str>(Language::Javascript, &[]).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn one_package_pinned_twice_is_refused() {
        let err =
            PackageList::parse(Language::Python, &["six==1.16.0", "Six==1.15.0"]).unwrap_err();
        assert!(err.to_string().contains("two versions"), "{err}");
    }

    #[test]
    fn raw_has_no_package_manager_but_may_have_an_empty_list() {
        assert!(PackageList::parse::<&str>(Language::Raw, &[])
            .unwrap()
            .is_empty());
        let err = PackageList::parse(Language::Raw, &["jq==1.0"]).unwrap_err();
        assert!(
            err.to_string().contains("raw has no package manager"),
            "{err}"
        );
    }

    #[test]
    fn too_many_packages_are_refused() {
        let many: Vec<String> = (0..=MAX_PACKAGES).map(|i| format!("p{i}==1.0")).collect();
        assert!(PackageList::parse(Language::Python, &many).is_err());
    }

    #[test]
    fn registries_are_the_managers_own() {
        assert_eq!(
            PackageManager::Pip.registries(),
            ["pypi.org", "files.pythonhosted.org"]
        );
        assert_eq!(PackageManager::Npm.registries(), ["registry.npmjs.org"]);
    }

    fn pip_name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9]([A-Za-z0-9._-]{0,20}[A-Za-z0-9])?"
    }

    fn version() -> impl Strategy<Value = String> {
        "(0|[1-9][0-9]{0,3})\\.(0|[1-9][0-9]{0,3})\\.(0|[1-9][0-9]{0,3})"
    }

    fn npm_name() -> impl Strategy<Value = String> {
        "(@[a-z0-9][a-z0-9-]{0,10}/)?[a-z0-9][a-z0-9._-]{0,20}"
    }

    proptest! {
        #[test]
        fn valid_pip_pins_round_trip_through_their_canonical_text(name in pip_name(), v in version()) {
            let spec = pip(&format!("{name}=={v}")).unwrap();
            prop_assert_eq!(pip(&spec.canonical()).unwrap(), spec.clone());
            prop_assert_eq!(spec.version, v);
        }

        #[test]
        fn valid_npm_pins_round_trip(name in npm_name(), v in version()) {
            prop_assume!(!matches!(name.rsplit('/').next(), Some("node_modules" | "favicon.ico")));
            let text = format!("{name}@{v}");
            let spec = npm(&text).unwrap();
            prop_assert_eq!(spec.canonical(), text);
        }

        #[test]
        fn pip_specs_without_exact_pin_are_refused(name in pip_name(), op in "(>=|<=|~=|!=|<|>)", v in version()) {
            let spec = format!("{name}{op}{v}");
            prop_assert!(pip(&spec).is_err());
            prop_assert!(pip(&name).is_err());
        }

        #[test]
        fn npm_ranges_are_refused(name in npm_name(), op in "(\\^|~|>=|<|=)", v in version()) {
            let spec = format!("{name}@{op}{v}");
            prop_assert!(npm(&spec).is_err());
        }

        #[test]
        fn anything_starting_with_a_dash_is_refused(rest in "[ -~]{0,40}") {
            let spec = format!("-{rest}");
            prop_assert!(pip(&spec).is_err());
            prop_assert!(npm(&spec).is_err());
        }

        #[test]
        fn the_parser_never_panics_and_accepts_no_whitespace(s in "\\PC{0,64}") {
            for manager in [PackageManager::Pip, PackageManager::Npm] {
                if let Ok(spec) = PackageSpec::parse(manager, &s) {
                    prop_assert!(!spec.canonical().contains(char::is_whitespace));
                    prop_assert!(!spec.canonical().starts_with('-'));
                    prop_assert!(!spec.canonical().contains("://"));
                }
            }
        }

        #[test]
        fn list_order_does_not_change_the_list(mut names in proptest::collection::btree_set("[a-z][a-z0-9]{0,8}", 1..8)) {
            let specs: Vec<String> = names.iter().map(|n| format!("{n}==1.0")).collect();
            let mut reversed = specs.clone();
            reversed.reverse();
            let a = PackageList::parse(Language::Python, &specs).unwrap();
            let b = PackageList::parse(Language::Python, &reversed).unwrap();
            prop_assert_eq!(&a, &b);
            names.clear();
        }
    }
}
