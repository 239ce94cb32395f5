//! Which environment variables a host may hand to user code: the pure check
//! shared by the host (before it boots a VM) and the guest agent (before it
//! starts a process).
//!
//! A variable is refused ([`ProtocolError::EnvRefused`], naming it) when:
//! - its name is not POSIX (`[A-Za-z_][A-Za-z0-9_]*`);
//! - its name, compared case-insensitively, is in [`REFUSED_NAMES`] or starts
//!   with one of [`REFUSED_PREFIXES`]: variables that make the loader, an
//!   interpreter or the shell run code the host did not send, or that the
//!   agent sets itself (`ld_preload` is refused like `LD_PRELOAD`: some
//!   programs look names up without regard to case, and a near-miss is
//!   never what a caller meant);
//! - its value holds a control character other than TAB (NUL, newline,
//!   ESC, DEL, C1 controls...): such values smuggle terminal escapes into
//!   logs and break line-oriented consumers.
//!
//! The size cap of the whole set is the agent's configuration, not part of
//! this check.

use crate::ProtocolError;

/// Names refused outright (upper case; matched case-insensitively), with the
/// reason given to the host.
pub const REFUSED_NAMES: &[(&str, &str)] = &[
    // Set by the agent: PATH chooses which interpreter binary runs.
    (
        "PATH",
        "the agent sets it (it selects the interpreter binary)",
    ),
    ("HOME", "the agent sets it"),
    ("USER", "the agent sets it"),
    ("LOGNAME", "the agent sets it"),
    ("SHELL", "the agent sets it"),
    ("PWD", "the agent sets it"),
    // C library.
    (
        "GLIBC_TUNABLES",
        "it changes the C library's behaviour (loader injection)",
    ),
    (
        "GCONV_PATH",
        "it loads code into the C library (gconv modules)",
    ),
    ("LOCPATH", "it points the C library at other locale data"),
    (
        "NLSPATH",
        "it points the C library at other message catalogues",
    ),
    ("HOSTALIASES", "it rewrites host name resolution"),
    ("RESOLV_HOST_CONF", "it rewrites host name resolution"),
    // Python.
    ("PYTHONSTARTUP", "it makes Python run another file"),
    ("PYTHONPATH", "it makes Python import other modules"),
    (
        "PYTHONHOME",
        "it makes Python load another standard library",
    ),
    ("PYTHONINSPECT", "it changes how Python runs the code"),
    ("PYTHONUSERBASE", "it makes Python import other modules"),
    ("PYTHONPLATLIBDIR", "it makes Python import other modules"),
    ("PYTHONEXECUTABLE", "it changes how Python finds itself"),
    (
        "PYTHONBREAKPOINT",
        "it makes Python import and call other code",
    ),
    ("PYTHONWARNINGS", "its filters make Python import modules"),
    // Node.js.
    (
        "NODE_OPTIONS",
        "it makes node preload code (--require, --import)",
    ),
    ("NODE_PATH", "it makes node import other modules"),
    (
        "NODE_REPL_EXTERNAL_MODULE",
        "it makes node load another module",
    ),
    // Shells.
    ("BASH_ENV", "it makes bash run another file first"),
    ("ENV", "it makes sh run another file first"),
    ("SHELLOPTS", "it changes shell options before the code runs"),
    ("BASHOPTS", "it changes shell options before the code runs"),
    ("PS4", "its expansion runs commands when tracing"),
    ("PROMPT_COMMAND", "it runs commands"),
    ("IFS", "it changes how the shell splits words"),
    ("BASH_XTRACEFD", "it redirects shell tracing"),
];

/// Name prefixes refused (upper case; matched case-insensitively), with the
/// reason given to the host.
pub const REFUSED_PREFIXES: &[(&str, &str)] = &[
    (
        "LD_",
        "dynamic loader variables (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT...) inject code",
    ),
    ("BASH_FUNC_", "exported bash functions run code"),
    ("AIRLOCK_", "reserved for Airlock"),
];

/// Longest part of a refused name quoted in the error.
const SHOWN_NAME_CHARS: usize = 64;

/// Checks one variable the host wants user code to see.
///
/// # Errors
/// [`ProtocolError::EnvRefused`] naming the variable (cut to 64 characters)
/// and saying why.
///
/// ```
/// use airlock_protocol::check_env;
///
/// assert!(check_env("TZ", "UTC").is_ok());
/// assert!(check_env("ld_preload", "/tmp/x.so").is_err());
/// assert!(check_env("A", "\u{1b}[2J").is_err());
/// ```
pub fn check_env(name: &str, value: &str) -> Result<(), ProtocolError> {
    let mut bytes = name.bytes();
    let posix = match bytes.next() {
        Some(first) => {
            (first.is_ascii_alphabetic() || first == b'_')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }
        None => false,
    };
    if !posix {
        return Err(refused(name, "not a POSIX name ([A-Za-z_][A-Za-z0-9_]*)"));
    }
    let upper = name.to_ascii_uppercase();
    if let Some((_, reason)) = REFUSED_NAMES.iter().find(|(n, _)| *n == upper) {
        return Err(refused(name, reason));
    }
    if let Some((_, reason)) = REFUSED_PREFIXES.iter().find(|(p, _)| upper.starts_with(p)) {
        return Err(refused(name, reason));
    }
    if let Some(c) = value.chars().find(|&c| c.is_control() && c != '\t') {
        let reason = format!(
            "its value contains the control character U+{:04X} (only TAB is allowed)",
            u32::from(c)
        );
        return Err(refused(name, &reason));
    }
    Ok(())
}

fn refused(name: &str, reason: &str) -> ProtocolError {
    let mut shown: String = name.chars().take(SHOWN_NAME_CHARS).collect();
    if shown.len() < name.len() {
        shown.push_str("...");
    }
    ProtocolError::EnvRefused {
        name: shown,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn refused_name(name: &str) -> Option<String> {
        match check_env(name, "x") {
            Err(ProtocolError::EnvRefused { name, .. }) => Some(name),
            Err(other) => panic!("unexpected error {other}"),
            Ok(()) => None,
        }
    }

    #[test]
    fn ordinary_variables_pass() {
        for name in [
            "KEY",
            "_x",
            "a1",
            "LANG",
            "TZ",
            "TMPDIR",
            "PYTHONHASHSEED",
            "NODE_ENV",
            "http_proxy",
        ] {
            assert_eq!(refused_name(name), None, "{name}");
        }
    }

    #[test]
    fn every_listed_name_is_refused_and_named() {
        for (name, _) in REFUSED_NAMES {
            assert_eq!(refused_name(name).as_deref(), Some(*name));
        }
    }

    #[test]
    fn every_refused_class_is_refused() {
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "LD_ANYTHING",
            "GLIBC_TUNABLES",
            "PYTHONSTARTUP",
            "NODE_OPTIONS",
            "BASH_ENV",
            "ENV",
            "PS4",
            "BASH_FUNC_x",
            "PATH",
            "AIRLOCK_X",
        ] {
            assert_eq!(refused_name(name).as_deref(), Some(name));
        }
    }

    #[test]
    fn names_are_refused_whatever_their_case() {
        for name in [
            "ld_preload",
            "Ld_Preload",
            "lD_aUDIT",
            "path",
            "Node_Options",
            "pythonpath",
            "bash_func_f",
            "airlock_token",
        ] {
            assert_eq!(refused_name(name).as_deref(), Some(name), "{name}");
        }
        let err = check_env("ld_preload", "x").unwrap_err();
        assert!(err.to_string().contains("ld_preload"), "{err}");
    }

    #[test]
    fn non_posix_names_are_refused() {
        for name in ["", "1A", "A-B", "A=B", "A B", "É", "BASH_FUNC_f%%", "A\0"] {
            assert!(refused_name(name).is_some(), "{name:?}");
        }
    }

    #[test]
    fn control_characters_in_values_are_refused_but_tab() {
        for value in ["x\0y", "\u{1b}[31m", "a\nb", "a\rb", "\u{7f}", "\u{85}"] {
            let err = check_env("A", value).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::EnvRefused, "{value:?}");
            assert!(err.to_string().contains("control character"), "{err}");
        }
        assert!(check_env("A", "a\tb").is_ok());
        assert!(check_env("A", "héllo wörld ✓").is_ok());
    }

    #[test]
    fn the_refusal_names_the_control_character() {
        let err = check_env("A", "\u{1b}").unwrap_err();
        assert!(err.to_string().contains("U+001B"), "{err}");
    }

    #[test]
    fn long_names_are_cut_in_messages() {
        let name = "1".repeat(10_000);
        let shown = refused_name(&name).unwrap_or_default();
        assert!(shown.len() < 100);
    }

    proptest! {
        #[test]
        fn accepted_names_are_posix_and_not_listed_in_any_case(name in "\\PC{0,12}") {
            if check_env(&name, "v").is_ok() {
                let first = name.as_bytes()[0];
                prop_assert!(first.is_ascii_alphabetic() || first == b'_');
                prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
                let upper = name.to_ascii_uppercase();
                prop_assert!(!REFUSED_PREFIXES.iter().any(|(p, _)| upper.starts_with(p)));
                prop_assert!(!REFUSED_NAMES.iter().any(|(n, _)| *n == upper));
            }
        }

        #[test]
        fn accepted_values_hold_no_control_but_tab(value in "\\PC{0,8}|[\\x00-\\x20]{0,4}") {
            if check_env("A", &value).is_ok() {
                prop_assert!(value.chars().all(|c| c == '\t' || !c.is_control()));
            }
        }
    }
}
