//! Choosing the accelerator: the probe's verdict, then `AIRLOCK_ACCEL`.
//! Pure functions; [`crate::probe`] applies them.

use crate::{Accel, QemuError};
use serde::{Deserialize, Serialize};

/// What the KVM probe concluded, and why (shown by `airlock doctor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelVerdict {
    /// The accelerator the probe recommends.
    pub accel: Accel,
    /// Why, in one line a user can act on.
    pub reason: String,
}

/// The accelerator finally used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// The accelerator.
    pub accel: Accel,
    /// Set when an override contradicts the probe; log it.
    pub warning: Option<String>,
}

/// Reads `AIRLOCK_ACCEL`: unset or empty means no override.
///
/// # Errors
/// [`QemuError::InvalidAccelOverride`] for anything but `kvm` or `tcg`
/// (any case).
pub fn parse_accel_override(value: Option<&str>) -> Result<Option<Accel>, QemuError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match value.to_ascii_lowercase().as_str() {
        "kvm" => Ok(Some(Accel::Kvm)),
        "tcg" => Ok(Some(Accel::Tcg)),
        _ => Err(QemuError::InvalidAccelOverride {
            value: value.to_owned(),
        }),
    }
}

/// Applies an override to the probe's verdict. An override that agrees
/// changes nothing; one that contradicts wins, with a warning.
pub fn choose_accel(verdict: &AccelVerdict, override_accel: Option<Accel>) -> AccelChoice {
    match override_accel {
        None => AccelChoice {
            accel: verdict.accel,
            warning: None,
        },
        Some(wanted) if wanted == verdict.accel => AccelChoice {
            accel: wanted,
            warning: None,
        },
        Some(Accel::Kvm) => AccelChoice {
            accel: Accel::Kvm,
            warning: Some(format!(
                "AIRLOCK_ACCEL=kvm overrides the probe, which chose tcg ({}): VMs may fail to boot",
                verdict.reason
            )),
        },
        Some(Accel::Tcg) => AccelChoice {
            accel: Accel::Tcg,
            warning: Some(format!(
                "AIRLOCK_ACCEL=tcg overrides the probe, which chose kvm ({}): VMs will run slower",
                verdict.reason
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(accel: Accel) -> AccelVerdict {
        AccelVerdict {
            accel,
            reason: "because".into(),
        }
    }

    #[test]
    fn no_override_keeps_the_verdict_without_warning() {
        for accel in [Accel::Kvm, Accel::Tcg] {
            let choice = choose_accel(&verdict(accel), None);
            assert_eq!(
                choice,
                AccelChoice {
                    accel,
                    warning: None
                }
            );
        }
    }

    #[test]
    fn agreeing_override_gives_no_warning() {
        for accel in [Accel::Kvm, Accel::Tcg] {
            let choice = choose_accel(&verdict(accel), Some(accel));
            assert_eq!(
                choice,
                AccelChoice {
                    accel,
                    warning: None
                }
            );
        }
    }

    #[test]
    fn kvm_override_against_tcg_verdict_wins_with_warning() {
        let choice = choose_accel(&verdict(Accel::Tcg), Some(Accel::Kvm));
        assert_eq!(choice.accel, Accel::Kvm);
        let warning = choice.warning.unwrap();
        assert!(warning.contains("AIRLOCK_ACCEL=kvm"), "{warning}");
        assert!(warning.contains("because"), "{warning}");
    }

    #[test]
    fn tcg_override_against_kvm_verdict_wins_with_warning() {
        let choice = choose_accel(&verdict(Accel::Kvm), Some(Accel::Tcg));
        assert_eq!(choice.accel, Accel::Tcg);
        assert!(choice.warning.unwrap().contains("slower"));
    }

    #[test]
    fn override_parser_reads_kvm_tcg_and_unset() {
        assert_eq!(parse_accel_override(None).unwrap(), None);
        assert_eq!(parse_accel_override(Some("")).unwrap(), None);
        assert_eq!(
            parse_accel_override(Some(" KVM ")).unwrap(),
            Some(Accel::Kvm)
        );
        assert_eq!(parse_accel_override(Some("tcg")).unwrap(), Some(Accel::Tcg));
    }

    #[test]
    fn override_parser_rejects_other_values() {
        let err = parse_accel_override(Some("hvf")).unwrap_err();
        assert!(matches!(err, QemuError::InvalidAccelOverride { ref value } if value == "hvf"));
        assert!(err.to_string().contains("use `kvm`, `tcg`"));
    }
}
