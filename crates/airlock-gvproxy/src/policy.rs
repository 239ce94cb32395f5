//! What a VM may do on the network: its mode, the domains it may reach and
//! the guest ports it exposes. Pure: parsing and checking only.

use crate::GvproxyError;
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Longest DNS name in its text form, without the trailing dot (RFC 1035).
pub const MAX_DOMAIN_BYTES: usize = 253;

/// Longest DNS label (RFC 1035).
pub const MAX_LABEL_BYTES: usize = 63;

/// The network modes of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NetworkMode {
    /// No network device at all (the default): no gvproxy either.
    #[default]
    None,
    /// The guest can serve on exposed ports; it can reach nothing.
    Ports,
    /// The guest reaches only allowlisted domains, on ports 80 and 443.
    Allowlist,
}

impl NetworkMode {
    /// Whether the VM gets a network device (and a gvproxy).
    pub fn has_network(self) -> bool {
        self != Self::None
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Ports => "ports",
            Self::Allowlist => "allowlist",
        })
    }
}

/// Public suffixes of two labels or more under which anyone may register a
/// name (a few of the Public Suffix List's most used): `*.co.uk` is as
/// broad as `*.com`. Not the whole list: a wildcard over a suffix missing
/// here is still refused by an operator's `[egress] allowed_patterns`.
pub const MULTI_LABEL_PUBLIC_SUFFIXES: &[&str] = &[
    "ac.uk",
    "co.uk",
    "gov.uk",
    "ltd.uk",
    "me.uk",
    "net.uk",
    "org.uk",
    "plc.uk",
    "com.au",
    "net.au",
    "org.au",
    "edu.au",
    "gov.au",
    "co.nz",
    "net.nz",
    "org.nz",
    "co.jp",
    "ne.jp",
    "or.jp",
    "ac.jp",
    "go.jp",
    "co.kr",
    "or.kr",
    "com.br",
    "net.br",
    "org.br",
    "com.cn",
    "net.cn",
    "org.cn",
    "com.hk",
    "com.tw",
    "com.sg",
    "com.my",
    "co.in",
    "net.in",
    "org.in",
    "co.za",
    "org.za",
    "com.mx",
    "com.ar",
    "com.tr",
    "co.il",
    "com.ua",
    "co.id",
    "or.id",
    "com.ph",
    "com.vn",
    "com.pl",
    "com.es",
    "com.ru",
    "github.io",
    "gitlab.io",
    "herokuapp.com",
    "appspot.com",
    "azurewebsites.net",
    "cloudfront.net",
    "amazonaws.com",
    "blogspot.com",
    "netlify.app",
    "vercel.app",
    "pages.dev",
    "workers.dev",
    "web.app",
    "firebaseapp.com",
];

/// Whether `name` (lowercase, no trailing dot) is a public suffix: a
/// single label (`com`, `io`) or one of [`MULTI_LABEL_PUBLIC_SUFFIXES`].
/// A wildcard over one (`*.com`, `*.co.uk`) would allow every domain
/// anyone registers there.
pub fn is_public_suffix(name: &str) -> bool {
    !name.contains('.') || MULTI_LABEL_PUBLIC_SUFFIXES.contains(&name)
}

/// An allowlisted domain: `example.com` (that name only) or
/// `*.example.com` (every name under it, not the name itself). A wildcard
/// over a public suffix (`*.com`, `*.co.uk`; `*` alone) is refused.
///
/// Parsed with [`DomainPattern::parse`]: RFC 1035 labels (letters, digits and
/// inner hyphens, 1 to 63 bytes), at most 253 bytes in all, lowercased, one
/// optional trailing dot dropped. IP literals are refused: the allowlist is
/// about names, the egress proxy checks the addresses they resolve to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainPattern {
    /// The name, lowercase, without the `*.` and without a trailing dot.
    base: String,
    /// Whether it was written `*.base`.
    wildcard: bool,
}

impl DomainPattern {
    /// Parses `example.com` or `*.example.com`.
    ///
    /// # Errors
    /// [`GvproxyError::InvalidDomain`] saying what is wrong.
    pub fn parse(input: &str) -> Result<Self, GvproxyError> {
        let invalid = |reason| GvproxyError::InvalidDomain {
            input: input.to_owned(),
            reason,
        };
        let (wildcard, rest) = match input.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        let rest = rest.strip_suffix('.').unwrap_or(rest);
        if rest.is_empty() {
            return Err(invalid("the name is empty"));
        }
        if rest.parse::<IpAddr>().is_ok() || input.contains(':') {
            return Err(invalid(
                "IP addresses are not allowed, only names (the egress proxy resolves them)",
            ));
        }
        if rest.len() > MAX_DOMAIN_BYTES {
            return Err(invalid("the name is longer than 253 bytes"));
        }
        let mut last_label = "";
        for label in rest.split('.') {
            check_label(label).map_err(invalid)?;
            last_label = label;
        }
        if last_label.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "the last label is numeric, which no real domain has (an IP address?)",
            ));
        }
        let base = rest.to_ascii_lowercase();
        if wildcard && is_public_suffix(&base) {
            return Err(invalid(
                "a wildcard over a top-level domain or public suffix (`*.com`, `*.co.uk`) would allow every domain registered there: name the domain (`*.example.com`)",
            ));
        }
        Ok(Self { base, wildcard })
    }

    /// Whether every name `other` allows, this pattern allows too (an
    /// operator's pattern covering a tenant's): `*.github.com` covers
    /// `api.github.com` and `*.api.github.com`, not `github.com`;
    /// `github.com` covers only itself.
    pub fn covers(&self, other: &DomainPattern) -> bool {
        match (self.wildcard, other.wildcard) {
            (_, false) => self.matches(&other.base),
            (true, true) => self.base == other.base || self.matches(&other.base),
            (false, true) => false,
        }
    }

    /// The name without `*.`, lowercase (`example.com` for `*.example.com`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether the pattern is `*.base`.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether `name` (any case, optional trailing dot) is allowed: equal to
    /// the name, or for `*.base` a name strictly under `base`.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if self.wildcard {
            let Some(prefix_len) = name.len().checked_sub(self.base.len() + 1) else {
                return false;
            };
            prefix_len > 0
                && name.is_char_boundary(prefix_len)
                && name[prefix_len..].starts_with('.')
                && name[prefix_len + 1..].eq_ignore_ascii_case(&self.base)
        } else {
            name.eq_ignore_ascii_case(&self.base)
        }
    }
}

fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("a label is empty (two dots in a row, or a leading dot)");
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err("a label is longer than 63 bytes");
    }
    if label.contains('*') {
        return Err("`*` is allowed only as a leading `*.`");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err("a label holds a character other than a letter, a digit or `-`");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("a label starts or ends with `-`");
    }
    Ok(())
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.base)
    }
}

impl FromStr for DomainPattern {
    type Err = GvproxyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Transport protocol of an exposed port. Only TCP: gvproxy's unix-socket
/// forwards carry streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tcp")
    }
}

/// A guest port served to the host.
///
/// gvproxy exposes it as a unix socket (see
/// [`crate::GvproxyPaths::expose_socket`]); the orchestrator bridges that
/// socket to `127.0.0.1:host_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Expose {
    /// The port the guest listens on (1..=65535).
    pub guest_port: u16,
    /// The host port, or `None` to let the host choose a free one.
    pub host_port: Option<u16>,
    /// The protocol.
    pub protocol: Protocol,
}

impl Expose {
    /// Exposes `guest_port` on a host port chosen when bridging.
    pub fn tcp(guest_port: u16) -> Self {
        Self {
            guest_port,
            host_port: None,
            protocol: Protocol::Tcp,
        }
    }

    /// Parses `GUEST[:HOST][/tcp]` (`8080`, `8080:18080`, `8080/tcp`).
    ///
    /// # Errors
    /// [`GvproxyError::InvalidExpose`] for port 0, a port over 65535, a
    /// malformed number or a protocol other than `tcp`.
    pub fn parse(input: &str) -> Result<Self, GvproxyError> {
        let invalid = |reason: String| GvproxyError::InvalidExpose {
            input: input.to_owned(),
            reason,
        };
        let (ports, protocol) = match input.split_once('/') {
            Some((ports, proto)) if proto.eq_ignore_ascii_case("tcp") => (ports, Protocol::Tcp),
            Some((_, proto)) => {
                return Err(invalid(format!(
                    "protocol {proto:?} is not supported, only tcp"
                )))
            }
            None => (input, Protocol::Tcp),
        };
        let (guest, host) = match ports.split_once(':') {
            Some((guest, host)) => (guest, Some(host)),
            None => (ports, None),
        };
        let port = |text: &str, which: &str| -> Result<u16, GvproxyError> {
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(format!(
                    "the {which} port {text:?} is not a number"
                )));
            }
            match text.parse::<u32>() {
                Ok(0) => Err(invalid(format!("the {which} port is 0"))),
                Ok(n) => u16::try_from(n)
                    .map_err(|_| invalid(format!("the {which} port {n} is over 65535"))),
                Err(_) => Err(invalid(format!("the {which} port {text} is over 65535"))),
            }
        };
        Ok(Self {
            guest_port: port(guest, "guest")?,
            host_port: host.map(|h| port(h, "host")).transpose()?,
            protocol,
        })
    }
}

impl fmt::Display for Expose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.guest_port)?;
        if let Some(host) = self.host_port {
            write!(f, ":{host}")?;
        }
        write!(f, "/{}", self.protocol)
    }
}

impl FromStr for Expose {
    type Err = GvproxyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The network policy of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkPolicy {
    /// The VM (`[A-Za-z0-9_-]{1,128}`); names logs and errors.
    pub vm_id: String,
    /// Its mode.
    pub mode: NetworkMode,
    /// Domains it may reach ([`NetworkMode::Allowlist`] only).
    pub allow: Vec<DomainPattern>,
    /// Guest ports served to the host (any mode but [`NetworkMode::None`]).
    pub exposes: Vec<Expose>,
}

impl NetworkPolicy {
    /// Checks the policy as a whole.
    ///
    /// # Errors
    /// An invalid VM id; domains outside allowlist mode; allowlist mode with
    /// no domain; exposed ports without a network; two exposes of one guest
    /// port or one host port.
    pub fn validate(&self) -> Result<(), GvproxyError> {
        validate_vm_id(&self.vm_id)?;
        let invalid = |reason: String| GvproxyError::InvalidPolicy {
            vm_id: self.vm_id.clone(),
            reason,
        };
        match self.mode {
            NetworkMode::None if !self.exposes.is_empty() => {
                return Err(invalid(
                    "exposing ports needs a network: use ports or allowlist mode".into(),
                ))
            }
            NetworkMode::None | NetworkMode::Ports if !self.allow.is_empty() => {
                return Err(invalid(format!(
                    "allowed domains need allowlist mode (the mode is {})",
                    self.mode
                )))
            }
            NetworkMode::Allowlist if self.allow.is_empty() => {
                return Err(invalid(
                    "allowlist mode needs at least one allowed domain (or use ports mode)".into(),
                ))
            }
            _ => {}
        }
        let mut guest_ports = BTreeSet::new();
        let mut host_ports = BTreeSet::new();
        for expose in &self.exposes {
            if expose.guest_port == 0 || expose.host_port == Some(0) {
                return Err(invalid(format!("{expose}: port 0 cannot be exposed")));
            }
            if !guest_ports.insert(expose.guest_port) {
                return Err(invalid(format!(
                    "guest port {} is exposed twice",
                    expose.guest_port
                )));
            }
            if let Some(host) = expose.host_port {
                if !host_ports.insert(host) {
                    return Err(invalid(format!("host port {host} is used twice")));
                }
            }
        }
        Ok(())
    }

    /// Whether `name` is on the allowlist (always false outside allowlist
    /// mode).
    pub fn allows(&self, name: &str) -> bool {
        self.mode == NetworkMode::Allowlist && self.allow.iter().any(|p| p.matches(name))
    }
}

/// The domains a language's package installer needs: `python` -> PyPI,
/// `javascript` -> the npm registry, `raw` -> none.
///
/// # Errors
/// [`GvproxyError::UnknownLanguage`] for any other language.
pub fn default_allowlist(language: &str) -> Result<Vec<DomainPattern>, GvproxyError> {
    let names: &[&str] = match language {
        "python" => &["pypi.org", "files.pythonhosted.org"],
        "javascript" => &["registry.npmjs.org"],
        "raw" => &[],
        _ => {
            return Err(GvproxyError::UnknownLanguage {
                language: language.to_owned(),
            })
        }
    };
    names.iter().map(|n| DomainPattern::parse(n)).collect()
}

/// Checks a VM id: `[A-Za-z0-9_-]{1,128}` ([`airlock_sys_util::id`]).
///
/// # Errors
/// [`GvproxyError::InvalidVmId`].
pub fn validate_vm_id(vm_id: &str) -> Result<(), GvproxyError> {
    airlock_sys_util::check_id(vm_id).map_err(|_| GvproxyError::InvalidVmId {
        vm_id: vm_id.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_over_public_suffixes_are_refused_and_a_domain_under_one_is_not() {
        for broad in ["*", "*.com", "*.COM.", "*.io", "*.co.uk", "*.github.io"] {
            let err = DomainPattern::parse(broad).unwrap_err().to_string();
            assert!(
                err.contains("wildcard over a top-level domain")
                    || err.contains("`*` is allowed only"),
                "{broad}: {err}"
            );
        }
        for fine in [
            "*.example.com",
            "*.example.co.uk",
            "com",
            "co.uk",
            "*.me.github.io",
        ] {
            DomainPattern::parse(fine).unwrap_or_else(|e| panic!("{fine}: {e}"));
        }
    }

    #[test]
    fn an_operator_pattern_covers_exactly_the_names_it_allows() {
        let p = |s: &str| DomainPattern::parse(s).unwrap();
        let github = p("*.github.com");
        assert!(github.covers(&p("api.github.com")));
        assert!(github.covers(&p("*.api.github.com")));
        assert!(github.covers(&p("*.github.com")));
        assert!(!github.covers(&p("github.com")));
        assert!(!github.covers(&p("evilgithub.com")));
        assert!(!github.covers(&p("*.com.evil.org")));
        assert!(p("pypi.org").covers(&p("pypi.org")));
        assert!(!p("pypi.org").covers(&p("*.pypi.org")));
        assert!(!p("pypi.org").covers(&p("files.pypi.org")));
    }
    use proptest::prelude::*;

    fn domain(s: &str) -> DomainPattern {
        DomainPattern::parse(s).unwrap()
    }

    fn policy(mode: NetworkMode) -> NetworkPolicy {
        NetworkPolicy {
            vm_id: "vm-1".into(),
            mode,
            allow: vec![],
            exposes: vec![],
        }
    }

    #[test]
    fn exact_domain_matches_itself_in_any_case_only() {
        let d = domain("PyPI.org");
        assert_eq!(d.to_string(), "pypi.org");
        assert!(d.matches("pypi.org"));
        assert!(d.matches("PYPI.ORG."));
        assert!(!d.matches("files.pypi.org"));
        assert!(!d.matches("evilpypi.org"));
        assert!(!d.matches("pypi.org.evil"));
    }

    #[test]
    fn wildcard_matches_subdomains_but_not_the_name_itself() {
        let d = domain("*.example.com");
        assert!(d.is_wildcard());
        assert_eq!(d.base(), "example.com");
        assert!(d.matches("a.example.com"));
        assert!(d.matches("a.b.Example.COM."));
        assert!(!d.matches("example.com"));
        assert!(!d.matches("badexample.com"));
        assert!(!d.matches(".example.com"));
    }

    #[test]
    fn trailing_dot_is_dropped() {
        assert_eq!(domain("example.com.").to_string(), "example.com");
    }

    #[test]
    fn bad_domains_are_refused() {
        let long_label = "a".repeat(64);
        let long_name = format!("{}.com", "a.".repeat(125));
        for bad in [
            "",
            ".",
            "*",
            "*.",
            "**.example.com",
            "a.*.example.com",
            "example*.com",
            "-a.com",
            "a-.com",
            "a..com",
            ".a.com",
            "a b.com",
            "a_b.com",
            "exämple.com",
            "1.2.3.4",
            "127.1",
            "::1",
            "[::1]",
            "example.com:443",
            "example.123",
            &long_label,
            &long_name,
        ] {
            assert!(DomainPattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn label_and_name_limits_are_inclusive() {
        let label63 = format!("{}.com", "a".repeat(63));
        assert!(DomainPattern::parse(&label63).is_ok());
        // 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253 bytes.
        let name253 = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(name253.len(), 253);
        assert!(DomainPattern::parse(&name253).is_ok());
        assert!(DomainPattern::parse(&format!("{name253}e")).is_err());
    }

    #[test]
    fn error_message_says_what_to_write() {
        let msg = DomainPattern::parse("1.2.3.4").unwrap_err().to_string();
        assert!(msg.contains("IP addresses are not allowed"), "{msg}");
        assert!(msg.contains("*.example.com"), "{msg}");
    }

    #[test]
    fn expose_forms_parse() {
        assert_eq!(Expose::parse("8080").unwrap(), Expose::tcp(8080));
        assert_eq!(
            Expose::parse("8080:18080/TCP").unwrap(),
            Expose {
                guest_port: 8080,
                host_port: Some(18080),
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(Expose::parse("1/tcp").unwrap().to_string(), "1/tcp");
        assert_eq!(Expose::parse("65535:1").unwrap().to_string(), "65535:1/tcp");
    }

    #[test]
    fn bad_exposes_are_refused() {
        for bad in [
            "",
            "0",
            "8080:0",
            "65536",
            "8080:65536",
            "99999999999999999999",
            "-1",
            "+80",
            "80:",
            ":80",
            "80/udp",
            "80/",
            "80:81:82",
            " 80",
            "80 ",
            "8o",
        ] {
            assert!(Expose::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let msg = Expose::parse("80/udp").unwrap_err().to_string();
        assert!(msg.contains("only tcp"), "{msg}");
    }

    #[test]
    fn none_mode_without_anything_is_valid() {
        assert!(policy(NetworkMode::None).validate().is_ok());
    }

    #[test]
    fn exposes_need_a_network() {
        let mut p = policy(NetworkMode::None);
        p.exposes.push(Expose::tcp(80));
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("ports or allowlist"));
        p.mode = NetworkMode::Ports;
        assert!(p.validate().is_ok());
    }

    #[test]
    fn domains_need_allowlist_mode_and_allowlist_needs_domains() {
        let mut p = policy(NetworkMode::Ports);
        p.allow.push(domain("pypi.org"));
        assert!(p.validate().is_err());
        p.mode = NetworkMode::Allowlist;
        assert!(p.validate().is_ok());
        p.allow.clear();
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at least one"));
    }

    #[test]
    fn duplicate_ports_are_refused() {
        let mut p = policy(NetworkMode::Ports);
        p.exposes = vec![
            Expose::parse("80:8000").unwrap(),
            Expose::parse("81:8000").unwrap(),
        ];
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("host port 8000"));
        p.exposes = vec![
            Expose::parse("80").unwrap(),
            Expose::parse("80:9000").unwrap(),
        ];
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("guest port 80"));
        p.exposes = vec![Expose::parse("80").unwrap(), Expose::parse("81").unwrap()];
        assert!(p.validate().is_ok());
    }

    #[test]
    fn port_zero_built_by_hand_is_refused() {
        let mut p = policy(NetworkMode::Ports);
        p.exposes = vec![Expose::tcp(0)];
        assert!(p.validate().is_err());
    }

    #[test]
    fn bad_vm_id_is_refused() {
        let mut p = policy(NetworkMode::None);
        p.vm_id = "a/b".into();
        assert!(matches!(
            p.validate(),
            Err(GvproxyError::InvalidVmId { .. })
        ));
        assert!(validate_vm_id(&"a".repeat(129)).is_err());
        assert!(validate_vm_id(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn allows_only_in_allowlist_mode() {
        let mut p = policy(NetworkMode::Allowlist);
        p.allow = vec![domain("*.pythonhosted.org")];
        assert!(p.allows("files.pythonhosted.org"));
        assert!(!p.allows("pypi.org"));
        p.mode = NetworkMode::Ports;
        assert!(!p.allows("files.pythonhosted.org"));
    }

    #[test]
    fn default_allowlists_per_language() {
        let names = |l| -> Vec<String> {
            default_allowlist(l)
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(names("python"), ["pypi.org", "files.pythonhosted.org"]);
        assert_eq!(names("javascript"), ["registry.npmjs.org"]);
        assert!(names("raw").is_empty());
        assert!(default_allowlist("cobol").is_err());
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"
    }

    fn valid_name() -> impl Strategy<Value = String> {
        (prop::collection::vec(label(), 1..5), "[a-z][a-z0-9]{1,6}")
            .prop_map(|(labels, tld)| format!("{}.{tld}", labels.join(".")))
    }

    proptest! {
        #[test]
        fn domain_parse_never_panics(input in "\\PC{0,300}") {
            let _ = DomainPattern::parse(&input);
        }

        #[test]
        fn domain_parse_never_panics_on_name_like_input(input in "[*.a-zA-Z0-9:-]{0,80}") {
            if let Ok(d) = DomainPattern::parse(&input) {
                // Whatever is accepted prints back to something accepted.
                prop_assert_eq!(DomainPattern::parse(&d.to_string()).unwrap(), d);
            }
        }

        #[test]
        fn valid_names_round_trip(name in valid_name(), wildcard: bool) {
            let text = if wildcard { format!("*.{name}") } else { name.clone() };
            let d = DomainPattern::parse(&text).unwrap();
            prop_assert_eq!(d.to_string(), text);
            prop_assert_eq!(d.matches(&name), !wildcard);
            prop_assert_eq!(d.matches(&format!("x.{name}")), wildcard);
            let upper = DomainPattern::parse(&d.to_string().to_ascii_uppercase()).unwrap();
            prop_assert_eq!(upper, d);
        }

        #[test]
        fn matches_never_panics(pattern in valid_name(), name in "\\PC{0,80}") {
            let _ = domain(&format!("*.{pattern}")).matches(&name);
            let _ = domain(&pattern).matches(&name);
        }

        #[test]
        fn expose_parse_never_panics(input in "\\PC{0,40}") {
            let _ = Expose::parse(&input);
        }

        #[test]
        fn valid_exposes_round_trip(guest in 1u16.., host in proptest::option::of(1u16..)) {
            let e = Expose { guest_port: guest, host_port: host, protocol: Protocol::Tcp };
            prop_assert_eq!(Expose::parse(&e.to_string()).unwrap(), e);
        }
    }
}
