//! Identifiers (VM ids, tenants, sessions): `[A-Za-z0-9_-]{1,128}`.
//!
//! Such an id can never be `.` or `..`, hold a `/`, a NUL or a newline, or
//! start a cgroup interface name (those all hold a `.`), so it is safe as a
//! path component, in a QEMU `-name`, a socket name or a log field. Check it
//! once where it enters ([`Id::new`] or [`check_id`]) and pass it on.

use crate::SysError;
use std::fmt;
use std::str::FromStr;

/// Longest accepted identifier, in bytes (all of them ASCII).
pub const MAX_ID_LEN: usize = 128;

/// Whether `value` is a valid id: `[A-Za-z0-9_-]{1,128}`.
pub fn is_valid_id(value: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks `value` with [`is_valid_id`].
///
/// # Errors
/// [`SysError::InvalidId`] holding the value.
pub fn check_id(value: &str) -> Result<(), SysError> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(SysError::InvalidId {
            value: value.to_owned(),
        })
    }
}

/// A checked identifier: `[A-Za-z0-9_-]{1,128}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(String);

impl Id {
    /// Checks `value` and keeps it.
    ///
    /// # Errors
    /// [`SysError::InvalidId`].
    pub fn new(value: impl Into<String>) -> Result<Self, SysError> {
        let value = value.into();
        check_id(&value)?;
        Ok(Self(value))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Id {
    type Err = SysError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for Id {
    type Error = SysError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Id> for String {
    fn from(id: Id) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    #[test]
    fn letters_digits_dash_and_underscore_are_accepted() {
        assert!(is_valid_id("vm-01_A"));
        assert!(is_valid_id(&"a".repeat(MAX_ID_LEN)));
        assert_eq!(Id::new("vm-1").expect("valid").as_str(), "vm-1");
    }

    #[test]
    fn empty_long_and_path_like_ids_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a.b",
            "é",
            "a b",
            "memory.max",
            "a\nb",
            "a\0b",
        ] {
            assert!(!is_valid_id(bad), "{bad:?} accepted");
            assert!(
                matches!(Id::new(bad), Err(SysError::InvalidId { value }) if value == bad),
                "{bad:?}"
            );
        }
        assert!(!is_valid_id(&"a".repeat(MAX_ID_LEN + 1)));
    }

    #[test]
    fn an_id_parses_displays_and_converts_back_to_its_text() {
        let id: Id = "tenant-a".parse().expect("valid");
        assert_eq!(id.to_string(), "tenant-a");
        assert_eq!(String::from(id.clone()), "tenant-a");
        assert_eq!(Id::try_from("tenant-a".to_owned()).expect("valid"), id);
        assert!("no/slash".parse::<Id>().is_err());
    }

    proptest! {
        #[test]
        fn every_string_of_the_alphabet_up_to_128_bytes_is_valid(s in "[A-Za-z0-9_-]{1,128}") {
            prop_assert!(is_valid_id(&s));
            prop_assert_eq!(Id::new(s.clone()).map(Id::into_string).ok(), Some(s));
        }

        #[test]
        fn a_valid_id_is_one_normal_path_component(s in "\\PC{0,140}") {
            if is_valid_id(&s) {
                let components: Vec<_> = Path::new(&s).components().collect();
                prop_assert_eq!(components.len(), 1);
                prop_assert!(matches!(components[0], Component::Normal(_)));
                prop_assert!(!s.contains('.') && !s.contains('/'));
            }
        }

        #[test]
        fn any_byte_outside_the_alphabet_makes_an_id_invalid(
            prefix in "[A-Za-z0-9_-]{0,60}",
            bad in "[^A-Za-z0-9_-]",
            suffix in "[A-Za-z0-9_-]{0,60}",
        ) {
            let s = format!("{prefix}{bad}{suffix}");
            prop_assert!(!is_valid_id(&s));
            prop_assert!(check_id(&s).is_err());
        }

        #[test]
        fn ids_longer_than_128_bytes_are_invalid(s in "[A-Za-z0-9_-]{129,200}") {
            prop_assert!(!is_valid_id(&s));
        }
    }
}
