//! The environment of user code: a fixed base set by the agent plus the
//! variables the host asked for, after this policy accepted them.
//!
//! Pure logic: no process is started here.
//!
//! A variable is refused (error kind `env_refused`, naming it) when:
//! - its name is not POSIX (`[A-Za-z_][A-Za-z0-9_]*`) or its value holds NUL;
//! - its name is in [`REFUSED_NAMES`] or starts with one of
//!   [`REFUSED_PREFIXES`]: variables that make the loader, an interpreter or
//!   the shell run code the host did not send, or that the agent sets itself;
//! - the whole set is larger than the configured cap (`max_env_bytes`).

use crate::{AgentConfig, AgentError};
use std::collections::BTreeMap;

/// Names refused outright, with the reason given to the host.
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

/// Name prefixes refused, with the reason given to the host.
pub const REFUSED_PREFIXES: &[(&str, &str)] = &[
    (
        "LD_",
        "dynamic loader variables (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT...) inject code",
    ),
    ("BASH_FUNC_", "exported bash functions run code"),
    ("AIRLOCK_", "reserved for Airlock"),
];

/// Checks the variables the host asked for.
///
/// # Errors
/// [`AgentError::EnvRefused`] naming the first refused variable.
pub fn check_env(env: &BTreeMap<String, String>, max_env_bytes: usize) -> Result<(), AgentError> {
    let mut total = 0usize;
    for (name, value) in env {
        check_name(name)?;
        if value.contains('\0') {
            return Err(refused(name, "its value contains a NUL byte"));
        }
        total = total.saturating_add(name.len() + value.len() + 2);
        if total > max_env_bytes {
            return Err(refused(
                name,
                &format!("the environment exceeds the limit of {max_env_bytes} bytes"),
            ));
        }
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), AgentError> {
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
    if let Some((_, reason)) = REFUSED_NAMES.iter().find(|(n, _)| *n == name) {
        return Err(refused(name, reason));
    }
    if let Some((_, reason)) = REFUSED_PREFIXES.iter().find(|(p, _)| name.starts_with(p)) {
        return Err(refused(name, reason));
    }
    Ok(())
}

fn refused(name: &str, reason: &str) -> AgentError {
    let mut shown: String = name.chars().take(64).collect();
    if shown.len() < name.len() {
        shown.push_str("...");
    }
    AgentError::EnvRefused {
        name: shown,
        reason: reason.to_owned(),
    }
}

/// The complete environment of a process: the agent's base set, then
/// `extra` (set by the agent for a tool, e.g. pip), then the host's
/// variables (already checked by [`check_env`]). Later entries win.
pub fn build_env(
    config: &AgentConfig,
    extra: &[(&str, &str)],
    requested: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let home = config.home.to_string_lossy().into_owned();
    let mut env: BTreeMap<String, String> = [
        ("PATH", config.path_env.as_str()),
        ("HOME", home.as_str()),
        ("USER", config.user_name.as_str()),
        ("LOGNAME", config.user_name.as_str()),
        ("LANG", "C.UTF-8"),
        ("TMPDIR", "/tmp"),
        ("PYTHONUNBUFFERED", "1"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.extend(requested.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(name: &str, value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(name.to_owned(), value.to_owned())])
    }

    fn refused_name(name: &str) -> Option<String> {
        match check_env(&one(name, "x"), 1 << 20) {
            Err(AgentError::EnvRefused { name, .. }) => Some(name),
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
            "PYTHONPATH",
            "PYTHONHOME",
            "PYTHONINSPECT",
            "NODE_OPTIONS",
            "NODE_PATH",
            "BASH_ENV",
            "ENV",
            "SHELLOPTS",
            "BASHOPTS",
            "PS4",
            "BASH_FUNC_x",
            "PATH",
            "HOME",
            "AIRLOCK_X",
        ] {
            assert_eq!(refused_name(name).as_deref(), Some(name));
        }
    }

    #[test]
    fn non_posix_names_are_refused() {
        for name in ["", "1A", "A-B", "A=B", "A B", "É", "BASH_FUNC_f%%", "A\0"] {
            assert!(refused_name(name).is_some(), "{name:?}");
        }
    }

    #[test]
    fn nul_in_value_is_refused() {
        assert!(check_env(&one("A", "x\0y"), 1024).is_err());
    }

    #[test]
    fn total_size_is_capped() {
        let env = one("A", &"x".repeat(100));
        assert!(check_env(&env, 103).is_ok());
        assert!(check_env(&env, 102).is_err());
    }

    #[test]
    fn long_names_are_cut_in_messages() {
        let name = "1".repeat(10_000);
        let shown = refused_name(&name).unwrap_or_default();
        assert!(shown.len() < 100);
    }

    #[test]
    fn build_env_sets_base_then_extra_then_requested() {
        let config = AgentConfig::default();
        let env = build_env(
            &config,
            &[("PIP_X", "1"), ("LANG", "C")],
            &one("TMPDIR", "/var/tmp"),
        );
        assert_eq!(env["HOME"], "/home/sandbox");
        assert_eq!(env["PATH"], config.path_env);
        assert_eq!(env["PIP_X"], "1");
        assert_eq!(env["LANG"], "C");
        assert_eq!(env["TMPDIR"], "/var/tmp");
        assert_eq!(env["PYTHONUNBUFFERED"], "1");
    }

    proptest! {
        #[test]
        fn accepted_names_are_posix_and_not_listed(name in "\\PC{0,12}") {
            if check_env(&one(&name, "v"), 1 << 20).is_ok() {
                let first = name.as_bytes()[0];
                prop_assert!(first.is_ascii_alphabetic() || first == b'_');
                prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
                prop_assert!(!name.starts_with("LD_"));
                prop_assert!(!REFUSED_NAMES.iter().any(|(n, _)| *n == name));
            }
        }
    }
}
