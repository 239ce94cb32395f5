//! The environment of user code: a fixed base set by the agent plus the
//! variables the host asked for, after the policy accepted them.
//!
//! Pure logic: no process is started here.
//!
//! Each variable goes through [`airlock_protocol::check_env`], the policy the
//! host applies too (case-insensitive denylist of names that make the
//! loader, an interpreter or the shell run other code; POSIX names; no
//! control character but TAB in values). The agent adds one rule of its
//! own: the whole set may not be larger than the configured cap
//! (`max_env_bytes`). A refusal is error kind `env_refused`, naming the
//! variable.

use crate::{AgentConfig, AgentError};
use airlock_protocol::ProtocolError;
use std::collections::BTreeMap;

/// Checks the variables the host asked for.
///
/// # Errors
/// [`AgentError::EnvRefused`] naming the first refused variable.
pub fn check_env(env: &BTreeMap<String, String>, max_env_bytes: usize) -> Result<(), AgentError> {
    let mut total = 0usize;
    for (name, value) in env {
        airlock_protocol::check_env(name, value).map_err(|e| match e {
            ProtocolError::EnvRefused { name, reason } => AgentError::EnvRefused { name, reason },
            other => AgentError::EnvRefused {
                name: name.chars().take(64).collect(),
                reason: other.to_string(),
            },
        })?;
        total = total.saturating_add(name.len() + value.len() + 2);
        if total > max_env_bytes {
            return Err(AgentError::EnvRefused {
                name: name.chars().take(64).collect(),
                reason: format!("the environment exceeds the limit of {max_env_bytes} bytes"),
            });
        }
    }
    Ok(())
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
        // matplotlib (python-data image, or installed): draw off-screen,
        // and keep its font cache where it can be written (the root is
        // read-only).
        ("MPLBACKEND", "Agg"),
        ("MPLCONFIGDIR", "/tmp/matplotlib"),
    ]
    .into_iter()
    // The package layer's dirs, when the host attached one.
    .chain(crate::packages::layer_env())
    .chain(extra.iter().copied())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.extend(requested.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_shared_policy_applies_to_every_variable() {
        for name in ["LD_PRELOAD", "ld_preload", "Path", "BASH_FUNC_x", "1A"] {
            assert_eq!(refused_name(name).as_deref(), Some(name), "{name}");
        }
        assert_eq!(refused_name("TZ"), None);
    }

    #[test]
    fn control_characters_in_values_are_refused_but_tab() {
        for value in ["x\0y", "\u{1b}[2J", "a\nb"] {
            let err = check_env(&one("A", value), 1024).unwrap_err();
            assert!(
                matches!(&err, AgentError::EnvRefused { name, .. } if name == "A"),
                "{err}"
            );
        }
        assert!(check_env(&one("A", "a\tb"), 1024).is_ok());
    }

    #[test]
    fn total_size_is_capped() {
        let env = one("A", &"x".repeat(100));
        assert!(check_env(&env, 103).is_ok());
        assert!(check_env(&env, 102).is_err());
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
        assert_eq!(env["MPLBACKEND"], "Agg");
        assert!(env["MPLCONFIGDIR"].starts_with("/tmp/"));
    }
}
