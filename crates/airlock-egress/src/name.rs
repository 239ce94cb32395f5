//! Validation and normalisation of the name a guest asks for (pure).
//!
//! The name comes from the guest (TLS SNI or HTTP `Host`), so it is untrusted
//! text. Before it is compared with the allowlist or handed to the host
//! resolver it must be a plain DNS host name in one canonical spelling:
//!
//! - ASCII letters, digits and `-` only (internationalised names arrive as
//!   `xn--` A-labels, which pass); no `_`, no spaces, no `%` escapes;
//! - labels of 1 to 63 bytes that neither start nor end with `-`;
//! - at most 253 bytes, one trailing dot allowed and removed;
//! - lowercased, so `PyPI.org.` and `pypi.org` are the same name;
//! - the last label starts with a letter. No top-level domain starts with a
//!   digit, and this refuses every IP literal the C resolver would accept
//!   (`1.2.3.4`, `127.1`, `0x7f000001`, `017700000001`), and with the `:` and
//!   `[` refusal, every IPv6 literal. An IP literal in SNI is forbidden by
//!   RFC 6066 anyway; in `Host` it would skip the allowlist's intent.

use std::fmt;

/// Longest DNS name in its dotted text form, without the trailing dot.
pub const MAX_NAME_BYTES: usize = 253;
/// Longest DNS label.
pub const MAX_LABEL_BYTES: usize = 63;

/// Why a name is not a plain DNS host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty (or only a dot).
    Empty,
    /// Longer than [`MAX_NAME_BYTES`].
    TooLong,
    /// Two dots in a row, or a leading dot.
    EmptyLabel,
    /// A label longer than [`MAX_LABEL_BYTES`].
    LabelTooLong,
    /// A label starts or ends with `-`.
    HyphenAtLabelEdge,
    /// A byte other than an ASCII letter, digit, `-` or `.`.
    InvalidCharacter,
    /// The last label does not start with a letter: an IP literal or a
    /// numeric top-level domain.
    NumericTopLabel,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            NameError::Empty => "empty name",
            NameError::TooLong => "name longer than 253 bytes",
            NameError::EmptyLabel => "empty label",
            NameError::LabelTooLong => "label longer than 63 bytes",
            NameError::HyphenAtLabelEdge => "label starts or ends with '-'",
            NameError::InvalidCharacter => "character outside letters, digits, '-' and '.'",
            NameError::NumericTopLabel => "IP literal or numeric top-level label",
        };
        f.write_str(text)
    }
}

/// Checks `raw` and returns its canonical form: lowercase, without the
/// trailing dot. See the module docs for the rules.
pub fn normalize_dns_name(raw: &str) -> Result<String, NameError> {
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err(NameError::Empty);
    }
    if trimmed.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong);
    }
    let mut last_label = "";
    for label in trimmed.split('.') {
        check_label(label)?;
        last_label = label;
    }
    if !last_label
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
    {
        return Err(NameError::NumericTopLabel);
    }
    Ok(trimmed.to_ascii_lowercase())
}

fn check_label(label: &str) -> Result<(), NameError> {
    let bytes = label.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return Err(NameError::EmptyLabel);
    };
    if bytes.len() > MAX_LABEL_BYTES {
        return Err(NameError::LabelTooLong);
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    {
        return Err(NameError::InvalidCharacter);
    }
    if first == b'-' || last == b'-' {
        return Err(NameError::HyphenAtLabelEdge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_are_lowercased_and_lose_the_trailing_dot() {
        assert_eq!(normalize_dns_name("PyPI.org.").as_deref(), Ok("pypi.org"));
        assert_eq!(
            normalize_dns_name("files.pythonhosted.org").as_deref(),
            Ok("files.pythonhosted.org")
        );
        assert_eq!(
            normalize_dns_name("xn--bcher-kva.example").as_deref(),
            Ok("xn--bcher-kva.example")
        );
        assert_eq!(normalize_dns_name("a-b.c0.io").as_deref(), Ok("a-b.c0.io"));
        assert_eq!(normalize_dns_name("localhost").as_deref(), Ok("localhost"));
    }

    #[test]
    fn ip_literals_in_every_resolver_spelling_are_refused() {
        for literal in [
            "1.2.3.4",
            "127.0.0.1",
            "127.1",
            "2130706433",
            "0x7f000001",
            "0x7f.1",
            "017700000001",
            "169.254.169.254.",
            "::1",
            "[::1]",
            "fe80::1%eth0",
            "::ffff:10.0.0.1",
        ] {
            assert!(normalize_dns_name(literal).is_err(), "{literal} accepted");
        }
        assert_eq!(
            normalize_dns_name("10.0.0.1"),
            Err(NameError::NumericTopLabel)
        );
        assert_eq!(normalize_dns_name("::1"), Err(NameError::InvalidCharacter));
    }

    #[test]
    fn malformed_names_say_what_is_wrong() {
        assert_eq!(normalize_dns_name(""), Err(NameError::Empty));
        assert_eq!(normalize_dns_name("."), Err(NameError::Empty));
        assert_eq!(normalize_dns_name("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(normalize_dns_name(".a.b"), Err(NameError::EmptyLabel));
        assert_eq!(normalize_dns_name("a.b.."), Err(NameError::EmptyLabel));
        assert_eq!(
            normalize_dns_name("-a.com"),
            Err(NameError::HyphenAtLabelEdge)
        );
        assert_eq!(
            normalize_dns_name("a-.com"),
            Err(NameError::HyphenAtLabelEdge)
        );
        assert_eq!(
            normalize_dns_name("a_b.com"),
            Err(NameError::InvalidCharacter)
        );
        assert_eq!(
            normalize_dns_name("a b.com"),
            Err(NameError::InvalidCharacter)
        );
        assert_eq!(
            normalize_dns_name("bücher.de"),
            Err(NameError::InvalidCharacter)
        );
        assert_eq!(
            normalize_dns_name("a.com\0.evil"),
            Err(NameError::InvalidCharacter)
        );
        assert_eq!(
            normalize_dns_name("a.com:443"),
            Err(NameError::InvalidCharacter)
        );
        assert_eq!(
            normalize_dns_name("a.com/x"),
            Err(NameError::InvalidCharacter)
        );
        assert_eq!(normalize_dns_name("a.123"), Err(NameError::NumericTopLabel));
    }

    #[test]
    fn length_limits_are_enforced_at_the_exact_bounds() {
        let label63 = "a".repeat(63);
        assert!(normalize_dns_name(&format!("{label63}.com")).is_ok());
        assert_eq!(
            normalize_dns_name(&format!("{}.com", "a".repeat(64))),
            Err(NameError::LabelTooLong)
        );
        // 63 * 4 + 3 dots = 255; trim to exactly 253 and 254 bytes.
        let long = [label63.as_str(); 4].join(".");
        let name253 = &long[long.len() - 253..];
        let name253 = name253.trim_start_matches('.');
        assert_eq!(name253.len(), 253);
        assert!(normalize_dns_name(name253).is_ok());
        assert!(normalize_dns_name(&format!("{name253}.")).is_ok());
        let name254 = format!("b{name253}");
        assert_eq!(normalize_dns_name(&name254), Err(NameError::TooLong));
    }

    proptest! {
        #[test]
        fn never_panics_and_accepted_names_are_canonical(raw in "\\PC{0,300}") {
            if let Ok(name) = normalize_dns_name(&raw) {
                prop_assert!(!name.ends_with('.'));
                prop_assert!(name.len() <= MAX_NAME_BYTES);
                prop_assert_eq!(name.to_ascii_lowercase(), name.clone());
                prop_assert_eq!(normalize_dns_name(&name), Ok(name.clone()));
            }
        }

        #[test]
        fn generated_valid_names_are_accepted(
            labels in proptest::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", 0..5),
            top in "[a-zA-Z][a-zA-Z0-9]{0,10}",
            trailing_dot in any::<bool>(),
        ) {
            let mut name = labels.join(".");
            if !name.is_empty() { name.push('.'); }
            name.push_str(&top);
            let expected = name.to_ascii_lowercase();
            if trailing_dot { name.push('.'); }
            prop_assert_eq!(normalize_dns_name(&name), Ok(expected));
        }

        #[test]
        fn ipv4_literals_are_refused(a in any::<u8>(), b in any::<u8>(), c in any::<u8>(), d in any::<u8>()) {
            let dotted = format!("{a}.{b}.{c}.{d}");
            prop_assert!(normalize_dns_name(&dotted).is_err());
            let number = u32::from_be_bytes([a, b, c, d]);
            prop_assert!(normalize_dns_name(&number.to_string()).is_err());
            let hex = format!("0x{number:x}");
            prop_assert!(normalize_dns_name(&hex).is_err());
        }
    }
}
