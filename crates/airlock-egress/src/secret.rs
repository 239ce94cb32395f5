//! Secrets the proxy substitutes: the model (name, value, bound hosts),
//! the per-VM placeholders the guest sees instead of the values, and the
//! pure byte work on them (finding placeholders, substituting values).
//!
//! A guest holds only `airlock-secret-<32 hex>` in the variable of a
//! secret's name. The proxy replaces it by the real value in requests to
//! the hosts the secret is bound to (over TLS it terminates,
//! [`crate::intercept`]), and blocks a request carrying any placeholder to
//! any other place (the leak guard).
//!
//! Placeholders are 128 random bits from the operating system's generator,
//! new for every [`SecretSet`] (that is, every VM): a guest that learnt the
//! placeholder of another VM cannot use it here.

use std::collections::HashMap;
use std::fmt;

use super::name::normalize_dns_name;

/// What every placeholder starts with.
pub const PLACEHOLDER_PREFIX: &[u8] = b"airlock-secret-";
/// Hex digits after the prefix (128 random bits).
pub const PLACEHOLDER_HEX_DIGITS: usize = 32;
/// Length of a placeholder in bytes.
pub const PLACEHOLDER_LEN: usize = PLACEHOLDER_PREFIX.len() + PLACEHOLDER_HEX_DIGITS;
/// Longest secret name (an environment variable name).
pub const MAX_SECRET_NAME_BYTES: usize = 128;
/// Largest secret value.
pub const MAX_SECRET_VALUE_BYTES: usize = 16 * 1024;

/// A secret's value. Its `Debug` never shows the bytes, so a value cannot
/// reach a log line through `{:?}` of a struct holding it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// Wraps `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        SecretValue(bytes.into())
    }

    /// The bytes, for the one place that sends them upstream.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty (refused by [`Secret::validate`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<redacted, {} bytes>)", self.0.len())
    }
}

/// A host a secret may go to: one exact name, or every name under a domain
/// (`*.example.com`: `api.example.com` and `a.b.example.com`, not
/// `example.com` itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this name (lowercase, no trailing dot).
    Exact(String),
    /// Any name ending in `.` + this domain (which has at least two labels).
    Subdomains(String),
}

/// Why a secret is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The name is not an environment variable name.
    #[error("secret name {0:?} is not a variable name: use 1 to 128 of A-Z, a-z, 0-9 and '_', not starting with a digit")]
    InvalidName(String),
    /// Two secrets share a name.
    #[error("secret {0} is given twice: give each secret once, with all its hosts")]
    DuplicateName(String),
    /// The value is empty or too large.
    #[error("secret {name}: the value must be 1 to 16384 bytes (it has {len})")]
    InvalidValue {
        /// The secret.
        name: String,
        /// Its length.
        len: usize,
    },
    /// The value contains a placeholder prefix, which would confuse the
    /// leak guard.
    #[error(
        "secret {0}: the value contains `airlock-secret-`, which is reserved for placeholders"
    )]
    ValueLooksLikePlaceholder(String),
    /// No host is given.
    #[error("secret {0} is bound to no host: name at least one host it may be sent to")]
    NoHost(String),
    /// A host pattern is malformed.
    #[error("secret {name}: host {host:?} is not a DNS name or `*.domain`: {reason}")]
    InvalidHost {
        /// The secret.
        name: String,
        /// The pattern as given.
        host: String,
        /// Why.
        reason: String,
    },
    /// A wildcard over a top-level domain (`*.com`) or everything (`*`).
    #[error("secret {name}: host {host:?} would send the secret to a whole top-level domain; name the domain (`*.example.com`)")]
    WildcardTooBroad {
        /// The secret.
        name: String,
        /// The pattern as given.
        host: String,
    },
}

impl HostPattern {
    /// Parses `raw` for secret `secret` (named in errors): a DNS name, or
    /// `*.` and a domain of at least two labels.
    ///
    /// # Errors
    /// [`SecretError::InvalidHost`] or [`SecretError::WildcardTooBroad`].
    pub fn parse(secret: &str, raw: &str) -> Result<Self, SecretError> {
        let invalid = |reason: String| SecretError::InvalidHost {
            name: secret.to_owned(),
            host: raw.to_owned(),
            reason,
        };
        if raw == "*" {
            return Err(SecretError::WildcardTooBroad {
                name: secret.to_owned(),
                host: raw.to_owned(),
            });
        }
        if let Some(domain) = raw.strip_prefix("*.") {
            let domain = normalize_dns_name(domain).map_err(|e| invalid(e.to_string()))?;
            if !domain.contains('.') {
                return Err(SecretError::WildcardTooBroad {
                    name: secret.to_owned(),
                    host: raw.to_owned(),
                });
            }
            return Ok(HostPattern::Subdomains(domain));
        }
        if raw.contains('*') {
            return Err(invalid("`*` is allowed only as a whole first label".into()));
        }
        normalize_dns_name(raw)
            .map(HostPattern::Exact)
            .map_err(|e| invalid(e.to_string()))
    }

    /// Whether `name` (validated: lowercase, no trailing dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => name == exact,
            HostPattern::Subdomains(domain) => name
                .strip_suffix(domain.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Subdomains(domain) => write!(f, "*.{domain}"),
        }
    }
}

/// One secret: what the guest's variable is called, the value the proxy
/// sends instead of the placeholder, and where it may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// The variable name the guest sees (`[A-Za-z_][A-Za-z0-9_]{0,127}`).
    pub name: String,
    /// The real value; never inside the VM.
    pub value: SecretValue,
    /// Where it may be sent (at least one).
    pub hosts: Vec<HostPattern>,
    /// Substitute in request bodies too, not only in headers. Bodies are
    /// then read whole before they are sent (up to
    /// [`crate::intercept::MAX_BODY_BYTES`]).
    pub body: bool,
}

impl Secret {
    /// Checks name, value and hosts.
    ///
    /// # Errors
    /// The [`SecretError`] of the first problem.
    pub fn validate(&self) -> Result<(), SecretError> {
        let name_ok = (1..=MAX_SECRET_NAME_BYTES).contains(&self.name.len())
            && !self.name.as_bytes()[0].is_ascii_digit()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(SecretError::InvalidName(self.name.clone()));
        }
        if !(1..=MAX_SECRET_VALUE_BYTES).contains(&self.value.len()) {
            return Err(SecretError::InvalidValue {
                name: self.name.clone(),
                len: self.value.len(),
            });
        }
        if find_subslice(self.value.expose(), PLACEHOLDER_PREFIX).is_some() {
            return Err(SecretError::ValueLooksLikePlaceholder(self.name.clone()));
        }
        if self.hosts.is_empty() {
            return Err(SecretError::NoHost(self.name.clone()));
        }
        Ok(())
    }

    /// Whether this secret may go to `name`.
    pub fn bound_to(&self, name: &str) -> bool {
        self.hosts.iter().any(|h| h.matches(name))
    }
}

/// A placeholder: `airlock-secret-` and 32 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Placeholder([u8; PLACEHOLDER_LEN]);

impl Placeholder {
    /// A fresh random placeholder.
    pub fn random() -> Self {
        let mut random = [0u8; PLACEHOLDER_HEX_DIGITS / 2];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
        Self::from_random(random)
    }

    fn from_random(random: [u8; PLACEHOLDER_HEX_DIGITS / 2]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0u8; PLACEHOLDER_LEN];
        bytes[..PLACEHOLDER_PREFIX.len()].copy_from_slice(PLACEHOLDER_PREFIX);
        for (i, b) in random.iter().enumerate() {
            let at = PLACEHOLDER_PREFIX.len() + 2 * i;
            bytes[at] = HEX[usize::from(b >> 4)];
            bytes[at + 1] = HEX[usize::from(b & 0x0f)];
        }
        Placeholder(bytes)
    }

    /// The placeholder's text, what the guest's variable holds.
    pub fn as_str(&self) -> &str {
        // Built from ASCII only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The placeholder's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Placeholder({})", self.as_str())
    }
}

/// The secrets of one VM, each with its fresh placeholder.
#[derive(Debug, Clone, Default)]
pub struct SecretSet {
    entries: Vec<(Secret, Placeholder)>,
    /// Placeholder bytes -> index in `entries`.
    by_placeholder: HashMap<[u8; PLACEHOLDER_LEN], usize>,
}

/// A placeholder found in some bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Index of the secret in its [`SecretSet`].
    pub secret: usize,
    /// Where the placeholder starts.
    pub at: usize,
}

impl SecretSet {
    /// Validates `secrets` and gives each a fresh placeholder.
    ///
    /// # Errors
    /// The first secret's [`SecretError`], or
    /// [`SecretError::DuplicateName`].
    pub fn new(secrets: Vec<Secret>) -> Result<Self, SecretError> {
        let mut set = SecretSet::default();
        for secret in secrets {
            secret.validate()?;
            if set.entries.iter().any(|(s, _)| s.name == secret.name) {
                return Err(SecretError::DuplicateName(secret.name));
            }
            let placeholder = loop {
                let candidate = Placeholder::random();
                if !set.by_placeholder.contains_key(&candidate.0) {
                    break candidate;
                }
            };
            set.by_placeholder.insert(placeholder.0, set.entries.len());
            set.entries.push((secret, placeholder));
        }
        Ok(set)
    }

    /// Whether there is no secret.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The secrets and their placeholders, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&Secret, &Placeholder)> {
        self.entries.iter().map(|(s, p)| (s, p))
    }

    /// The secret at `index` (from a [`Found`]).
    pub fn secret(&self, index: usize) -> Option<&Secret> {
        self.entries.get(index).map(|(s, _)| s)
    }

    /// The placeholder of the secret named `name`.
    pub fn placeholder(&self, name: &str) -> Option<&Placeholder> {
        self.entries
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(_, p)| p)
    }

    /// Whether any secret is bound to `host`: the proxy then terminates TLS
    /// for it.
    pub fn any_bound_to(&self, host: &str) -> bool {
        self.entries.iter().any(|(s, _)| s.bound_to(host))
    }

    /// Every hex-digit placeholder of this set in `bytes`, in order.
    pub fn find_all(&self, bytes: &[u8]) -> Vec<Found> {
        let mut found = Vec::new();
        if self.entries.is_empty() {
            return found;
        }
        let mut from = 0;
        while let Some(pos) = find_subslice(&bytes[from..], PLACEHOLDER_PREFIX) {
            let at = from + pos;
            if let Some(candidate) = bytes.get(at..at + PLACEHOLDER_LEN) {
                let mut key = [0u8; PLACEHOLDER_LEN];
                key.copy_from_slice(candidate);
                if let Some(&secret) = self.by_placeholder.get(&key) {
                    found.push(Found { secret, at });
                    from = at + PLACEHOLDER_LEN;
                    continue;
                }
            }
            from = at + 1;
        }
        found
    }

    /// The first placeholder in `bytes` whose secret may not go to `host`
    /// (`None` for a host nothing is bound to, such as a passthrough one).
    pub fn first_unbound(&self, bytes: &[u8], host: Option<&str>) -> Option<Found> {
        self.find_all(bytes).into_iter().find(|f| {
            let secret = &self.entries[f.secret].0;
            !host.is_some_and(|h| secret.bound_to(h))
        })
    }

    /// `bytes` with the placeholder of every secret bound to `host` (and,
    /// when `body` is set, marked `body = true`) replaced by its value.
    /// Other placeholders are left as they are (the caller refuses them
    /// first with [`first_unbound`](Self::first_unbound)).
    pub fn substitute(&self, bytes: &[u8], host: &str, body: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        let mut copied = 0;
        for found in self.find_all(bytes) {
            let secret = &self.entries[found.secret].0;
            if secret.bound_to(host) && (!body || secret.body) {
                out.extend_from_slice(&bytes[copied..found.at]);
                out.extend_from_slice(secret.value.expose());
                copied = found.at + PLACEHOLDER_LEN;
            }
        }
        out.extend_from_slice(&bytes[copied..]);
        out
    }

    /// Whether a body to `host` must be read whole for substitution.
    pub fn body_substitution_for(&self, host: &str) -> bool {
        self.entries.iter().any(|(s, _)| s.body && s.bound_to(host))
    }
}

/// Finds placeholders in a stream that arrives in pieces: feed every
/// piece in order; a placeholder split across pieces is found in the piece
/// that completes it.
#[derive(Debug, Default)]
pub struct StreamScanner {
    /// The last bytes of the previous pieces that could start a
    /// placeholder (fewer than [`PLACEHOLDER_LEN`]).
    carry: Vec<u8>,
}

impl StreamScanner {
    /// A scanner at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans the next piece; returns the index of the first secret whose
    /// placeholder it finds (completed by this piece), if any.
    pub fn feed(&mut self, set: &SecretSet, piece: &[u8]) -> Option<usize> {
        if set.is_empty() {
            return None;
        }
        let mut window = std::mem::take(&mut self.carry);
        window.extend_from_slice(piece);
        let found = set.find_all(&window).first().map(|f| f.secret);
        let keep = window.len().min(PLACEHOLDER_LEN - 1);
        self.carry = window.split_off(window.len() - keep);
        found
    }
}

/// Where `needle` first occurs in `haystack`.
pub(crate) fn find_subslice(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret(name: &str, value: &str, hosts: &[&str], body: bool) -> Secret {
        Secret {
            name: name.into(),
            value: SecretValue::new(value.as_bytes()),
            hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(name, h).expect("valid host"))
                .collect(),
            body,
        }
    }

    fn set() -> SecretSet {
        SecretSet::new(vec![
            secret("API_TOKEN", "sk-real-1", &["api.example.com"], false),
            secret("GH", "ghp_real_2", &["*.github.com"], true),
        ])
        .expect("valid set")
    }

    #[test]
    fn placeholders_have_the_documented_shape_and_differ_per_set() {
        let (a, b) = (set(), set());
        let pa = a.placeholder("API_TOKEN").expect("placeholder").as_str();
        assert_eq!(pa.len(), PLACEHOLDER_LEN);
        assert!(pa.starts_with("airlock-secret-"));
        assert!(pa[15..]
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(
            pa,
            b.placeholder("API_TOKEN").expect("placeholder").as_str()
        );
        assert_ne!(pa, a.placeholder("GH").expect("placeholder").as_str());
    }

    #[test]
    fn the_debug_form_of_a_secret_never_shows_its_value() {
        let text = format!("{:?}", set());
        assert!(!text.contains("sk-real-1") && !text.contains("ghp_real_2"));
        assert!(text.contains("redacted"));
    }

    #[test]
    fn host_patterns_match_exact_names_and_strict_subdomains() {
        let exact = HostPattern::parse("S", "API.Example.com.").expect("exact");
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("x.api.example.com"));
        let wild = HostPattern::parse("S", "*.example.com").expect("wildcard");
        assert!(wild.matches("a.example.com") && wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
        assert!(!wild.matches(".example.com"));
    }

    #[test]
    fn bare_tld_wildcards_and_malformed_hosts_are_refused() {
        for host in ["*", "*.com", "*.COM."] {
            assert!(
                matches!(
                    HostPattern::parse("S", host),
                    Err(SecretError::WildcardTooBroad { .. })
                ),
                "{host}"
            );
        }
        for host in [
            "",
            "a*.example.com",
            "*example.com",
            "1.2.3.4",
            "a b.com",
            "*.*.com",
        ] {
            assert!(
                matches!(
                    HostPattern::parse("S", host),
                    Err(SecretError::InvalidHost { .. })
                ),
                "{host}"
            );
        }
    }

    #[test]
    fn secrets_with_bad_names_values_or_no_host_are_refused() {
        let good = secret("TOKEN_1", "v", &["a.example.com"], false);
        assert!(good.validate().is_ok());
        for name in ["", "1TOKEN", "A-B", "A B", &"A".repeat(129)] {
            let s = Secret {
                name: name.into(),
                ..good.clone()
            };
            assert!(
                matches!(s.validate(), Err(SecretError::InvalidName(_))),
                "{name}"
            );
        }
        let empty = Secret {
            value: SecretValue::new(Vec::new()),
            ..good.clone()
        };
        assert!(matches!(
            empty.validate(),
            Err(SecretError::InvalidValue { .. })
        ));
        let huge = Secret {
            value: SecretValue::new(vec![b'x'; MAX_SECRET_VALUE_BYTES + 1]),
            ..good.clone()
        };
        assert!(matches!(
            huge.validate(),
            Err(SecretError::InvalidValue { .. })
        ));
        let tricky = Secret {
            value: SecretValue::new(b"xairlock-secret-y".to_vec()),
            ..good.clone()
        };
        assert!(matches!(
            tricky.validate(),
            Err(SecretError::ValueLooksLikePlaceholder(_))
        ));
        let nowhere = Secret {
            hosts: Vec::new(),
            ..good.clone()
        };
        assert!(matches!(nowhere.validate(), Err(SecretError::NoHost(_))));
        assert!(matches!(
            SecretSet::new(vec![good.clone(), good]),
            Err(SecretError::DuplicateName(_))
        ));
    }

    #[test]
    fn substitution_replaces_only_secrets_bound_to_the_host() {
        let set = set();
        let api = set.placeholder("API_TOKEN").expect("p").as_str().to_owned();
        let gh = set.placeholder("GH").expect("p").as_str().to_owned();
        let head = format!("Authorization: Bearer {api}\r\nX-Gh: {gh}\r\n");
        let out = set.substitute(head.as_bytes(), "api.example.com", false);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            format!("Authorization: Bearer sk-real-1\r\nX-Gh: {gh}\r\n")
        );
        assert_eq!(
            set.first_unbound(head.as_bytes(), Some("api.example.com"))
                .map(|f| f.secret),
            Some(1)
        );
        assert_eq!(
            set.first_unbound(head.as_bytes(), None).map(|f| f.at),
            Some(head.find(&api).expect("api"))
        );
    }

    #[test]
    fn body_substitution_applies_only_to_secrets_marked_body() {
        let set = set();
        let api = set.placeholder("API_TOKEN").expect("p").as_str().to_owned();
        let gh = set.placeholder("GH").expect("p").as_str().to_owned();
        let body = format!("{{\"a\":\"{api}\",\"g\":\"{gh}\"}}");
        let out = set.substitute(body.as_bytes(), "api.github.com", true);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            format!("{{\"a\":\"{api}\",\"g\":\"ghp_real_2\"}}")
        );
        let out = set.substitute(body.as_bytes(), "api.example.com", true);
        assert_eq!(out, body.as_bytes(), "API_TOKEN is not a body secret");
        assert!(set.body_substitution_for("api.github.com"));
        assert!(!set.body_substitution_for("api.example.com"));
    }

    #[test]
    fn a_placeholder_of_another_vm_or_a_truncated_one_is_not_found() {
        let set = set();
        let other =
            SecretSet::new(vec![secret("API_TOKEN", "x", &["a.example.com"], false)]).expect("set");
        let foreign = other.placeholder("API_TOKEN").expect("p").as_bytes();
        assert!(set.find_all(foreign).is_empty());
        let ours = set.placeholder("API_TOKEN").expect("p").as_bytes();
        assert!(set.find_all(&ours[..PLACEHOLDER_LEN - 1]).is_empty());
    }

    fn split_points(len: usize) -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(0..=len, 0..8).prop_map(|mut v| {
            v.sort_unstable();
            v
        })
    }

    proptest! {
        #[test]
        fn the_stream_scanner_finds_a_placeholder_however_the_stream_is_split(
            before in proptest::collection::vec(any::<u8>(), 0..200),
            after in proptest::collection::vec(any::<u8>(), 0..200),
            which in 0usize..2,
            cuts in split_points(500),
        ) {
            let set = set();
            let name = if which == 0 { "API_TOKEN" } else { "GH" };
            let mut stream = before.clone();
            stream.extend_from_slice(set.placeholder(name).expect("p").as_bytes());
            stream.extend_from_slice(&after);
            let mut scanner = StreamScanner::new();
            let mut found = None;
            let mut start = 0;
            for cut in cuts.into_iter().map(|c| c.min(stream.len())).chain([stream.len()]) {
                if cut < start { continue; }
                if let Some(secret) = scanner.feed(&set, &stream[start..cut]) {
                    found.get_or_insert(secret);
                }
                start = cut;
            }
            // Random bytes before could hold the other placeholder only by
            // a 2^-128 chance; the one inserted must be found.
            prop_assert!(found.is_some());
        }

        #[test]
        fn the_stream_scanner_finds_nothing_in_bytes_without_placeholders(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in split_points(600),
        ) {
            let set = set();
            let mut scanner = StreamScanner::new();
            let mut start = 0;
            for cut in cuts.into_iter().map(|c| c.min(bytes.len())).chain([bytes.len()]) {
                if cut < start { continue; }
                prop_assert_eq!(scanner.feed(&set, &bytes[start..cut]), None);
                start = cut;
            }
        }

        #[test]
        fn substitution_leaves_no_bound_placeholder_and_keeps_everything_else(
            parts in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..40), 0usize..3), 0..6),
        ) {
            let set = set();
            let api = set.placeholder("API_TOKEN").expect("p").as_bytes().to_vec();
            let gh = set.placeholder("GH").expect("p").as_bytes().to_vec();
            let (mut input, mut expected) = (Vec::new(), Vec::new());
            for (filler, kind) in parts {
                input.extend_from_slice(&filler);
                expected.extend_from_slice(&filler);
                match kind {
                    1 => { input.extend_from_slice(&api); expected.extend_from_slice(b"sk-real-1"); }
                    2 => { input.extend_from_slice(&gh); expected.extend_from_slice(&gh); }
                    _ => {}
                }
            }
            let out = set.substitute(&input, "api.example.com", false);
            prop_assert_eq!(&out, &expected);
            prop_assert!(set.first_unbound(&out, Some("api.example.com")).is_none()
                || find_subslice(&out, &gh).is_some());
        }
    }
}
