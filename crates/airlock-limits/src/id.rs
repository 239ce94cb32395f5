//! Validated names of a group: `airlock/<tenant>/<vm>`.

use std::fmt;
use std::path::PathBuf;

use crate::LimitsError;

/// Name of the directory every Airlock group lives under, in every hierarchy.
pub const AIRLOCK_DIR: &str = "airlock";

/// The id check every Airlock crate shares: `[A-Za-z0-9_-]{1,128}`.
///
/// Such an id can never be `.`/`..`, contain a `/`, or start a cgroup
/// interface name (those all contain a `.`), so it is safe as a path
/// component under `airlock/`.
pub use airlock_sys_util::id::{is_valid_id, MAX_ID_LEN};

/// The identity of one VM's group: `airlock/<tenant>/<vm>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupId {
    tenant: String,
    vm: String,
}

impl GroupId {
    /// Checks both ids and builds the name.
    ///
    /// # Errors
    /// [`LimitsError::InvalidId`] naming the bad part.
    pub fn new(tenant: &str, vm: &str) -> Result<Self, LimitsError> {
        for (kind, value) in [("tenant", tenant), ("vm", vm)] {
            if !is_valid_id(value) {
                return Err(LimitsError::InvalidId {
                    kind,
                    value: value.to_owned(),
                });
            }
        }
        Ok(Self {
            tenant: tenant.to_owned(),
            vm: vm.to_owned(),
        })
    }

    /// The tenant id.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The VM id.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// The relative path `airlock/<tenant>/<vm>`.
    pub fn rel_path(&self) -> PathBuf {
        [AIRLOCK_DIR, &self.tenant, &self.vm].iter().collect()
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{AIRLOCK_DIR}/{}/{}", self.tenant, self.vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_letters_digits_dash_underscore() {
        assert!(is_valid_id("vm-01_A"));
        assert!(is_valid_id(&"a".repeat(MAX_ID_LEN)));
    }

    #[test]
    fn rejects_empty_long_and_path_like_ids() {
        for bad in ["", ".", "..", "a/b", "a.b", "é", "a b", "memory.max"] {
            assert!(!is_valid_id(bad), "{bad:?} accepted");
        }
        assert!(!is_valid_id(&"a".repeat(MAX_ID_LEN + 1)));
    }

    #[test]
    fn group_id_names_the_bad_part() {
        let err = GroupId::new("ok", "../x").unwrap_err();
        assert!(matches!(err, LimitsError::InvalidId { kind: "vm", .. }));
        let err = GroupId::new("", "x").unwrap_err();
        assert!(matches!(err, LimitsError::InvalidId { kind: "tenant", .. }));
    }

    #[test]
    fn group_id_renders_its_path() {
        let id = GroupId::new("t1", "vm1").unwrap();
        assert_eq!(id.to_string(), "airlock/t1/vm1");
        assert_eq!(id.rel_path(), PathBuf::from("airlock/t1/vm1"));
    }

    proptest! {
        #[test]
        fn valid_ids_are_single_safe_path_components(s in "\\PC{0,140}") {
            if is_valid_id(&s) {
                let p = PathBuf::from(&s);
                prop_assert_eq!(p.components().count(), 1);
                prop_assert!(!s.contains('.') && !s.contains('/'));
            }
        }
    }
}
