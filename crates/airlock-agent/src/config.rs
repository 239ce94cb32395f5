//! The agent's configuration: one typed struct with defaults, validated once.

use crate::AgentError;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The unprivileged identity user code runs as (numeric: the guest has no
/// user database lookups, the agent is linked statically).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl RunAs {
    /// The sandbox user of the guest images (`1000:1000`).
    pub const SANDBOX: RunAs = RunAs {
        uid: airlock_protocol::abi::SANDBOX_UID,
        gid: airlock_protocol::abi::SANDBOX_UID,
    };
}

impl fmt::Display for RunAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

impl FromStr for RunAs {
    type Err = AgentError;

    /// Parses `UID:GID` (numbers only).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || AgentError::Config(format!("--run-as {s:?}: expected UID:GID, e.g. 1000:1000"));
        let (uid, gid) = s.split_once(':').ok_or_else(bad)?;
        Ok(RunAs {
            uid: uid.parse().map_err(|_| bad())?,
            gid: gid.parse().map_err(|_| bad())?,
        })
    }
}

/// Everything the agent can be told. Build it, call [`AgentConfig::validate`]
/// once ([`crate::serve`] does), then share it behind an `Arc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The sandbox home: user code's working directory and the root of every
    /// file path.
    pub home: PathBuf,
    /// Who user code runs as; `None` runs it as the agent's own user (only
    /// allowed when the agent is not root: see [`AgentConfig::validate`]).
    pub run_as: Option<RunAs>,
    /// Value of `USER`/`LOGNAME` for user code.
    pub user_name: String,
    /// Value of `PATH` for user code (the agent finds interpreters with it).
    pub path_env: String,
    /// Longest accepted request line and longest event line, in bytes.
    pub max_line_bytes: usize,
    /// Standard output kept per exec before truncation.
    pub stdout_cap_bytes: u64,
    /// Standard error kept per exec before truncation.
    pub stderr_cap_bytes: u64,
    /// Rich results (`result` events: MIME bundles, base64 images) kept
    /// per cell, counted as their wire JSON; past it results are dropped and
    /// a marker line goes to stderr. Each result is also capped at
    /// [`airlock_protocol::result::MAX_RESULT_BYTES`] and at
    /// `max_line_bytes`.
    pub results_cap_bytes: u64,
    /// Largest file written or read: only a sanity bound, as files move
    /// in chunks and are never held whole on either side (the space of
    /// the home is the real limit, and the host's own caps).
    pub max_file_bytes: u64,
    /// Largest total size of the extra environment of an exec (names plus
    /// values plus 2 bytes per variable).
    pub max_env_bytes: usize,
    /// Output chunks are flushed when they reach this size...
    pub output_flush_bytes: usize,
    /// ...or when their first byte is this old.
    pub output_flush_interval: Duration,
    /// Between SIGTERM and SIGKILL of a timed-out process group.
    pub kill_grace: Duration,
    /// How long an interrupted cell (cancelled, or past its timeout) has
    /// to report, after SIGINT, before its interpreter is killed and its
    /// state lost. Longer than [`Self::kill_grace`]: reporting a
    /// `KeyboardInterrupt` is cheap, but a guest starved of CPU on a
    /// loaded host (TCG) can take seconds to get to it, and losing the
    /// interpreter costs the session all its state.
    pub interrupt_grace: Duration,
    /// How long to wait for output pipes to close after the main process
    /// exited (a process that escaped the group may hold them open).
    pub output_drain_timeout: Duration,
    /// Deadline of a `warm_repl`.
    pub warm_timeout: Duration,
    /// Operations in flight at once.
    pub max_ops_in_flight: usize,
    /// A directory on cgroup2 under which each exec gets its own cgroup,
    /// killed as a whole when the exec ends (see [`crate::exec_cgroup`]);
    /// `None`: execs are killed by process group only, and a process that
    /// calls `setsid()` can outlive its exec. Needs the agent to be root.
    pub exec_cgroup_parent: Option<PathBuf>,
    /// Where the agent writes the code of each cell for its persistent
    /// interpreter (made 0755 on first use; the files are root-owned,
    /// 0644, removed after the cell). Absolute, no space or newline.
    pub cell_dir: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            home: PathBuf::from(airlock_protocol::abi::SANDBOX_HOME),
            run_as: None,
            user_name: "sandbox".into(),
            path_env: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            max_line_bytes: airlock_protocol::DEFAULT_MAX_LINE_BYTES,
            stdout_cap_bytes: 4 * 1024 * 1024,
            stderr_cap_bytes: 1024 * 1024,
            results_cap_bytes: 64 * 1024 * 1024,
            max_file_bytes: 64 * 1024 * 1024 * 1024,
            max_env_bytes: 128 * 1024,
            output_flush_bytes: 64 * 1024,
            output_flush_interval: Duration::from_millis(50),
            kill_grace: Duration::from_secs(2),
            interrupt_grace: Duration::from_secs(6),
            output_drain_timeout: Duration::from_secs(1),
            warm_timeout: airlock_protocol::abi::DRIVER_START_TIMEOUT,
            max_ops_in_flight: 64,
            exec_cgroup_parent: None,
            cell_dir: PathBuf::from("/run/airlock-cells"),
        }
    }
}

/// Smallest accepted line limit: a 256 KiB file chunk is ~350 KiB of JSON.
const MIN_LINE_BYTES: usize = 1024 * 1024;

impl AgentConfig {
    /// Checks every value.
    ///
    /// # Errors
    /// [`AgentError::Config`] naming the bad value and the accepted range.
    pub fn validate(&self) -> Result<(), AgentError> {
        let fail = |msg: String| Err(AgentError::Config(msg));
        if !self.home.is_absolute() {
            return fail(format!("home {:?} must be an absolute path", self.home));
        }
        let cell_dir_ok = self.cell_dir.is_absolute()
            && self
                .cell_dir
                .to_str()
                .is_some_and(|dir| !dir.contains([' ', '\n', '\r']));
        if !cell_dir_ok {
            return fail(format!(
                "cell_dir {:?} must be an absolute UTF-8 path without spaces or newlines",
                self.cell_dir
            ));
        }
        let root = nix::unistd::geteuid().is_root();
        if let Some(run_as) = self.run_as {
            if !root {
                return fail(format!(
                    "run-as {run_as} needs the agent to run as root: leave it unset"
                ));
            }
            if run_as.uid == 0 || run_as.gid == 0 {
                return fail(format!(
                    "run-as {run_as} would run user code as root: use an unprivileged uid and gid"
                ));
            }
        } else if root {
            return fail("the agent runs as root: set run_as (e.g. 1000:1000)".into());
        }
        if self.max_line_bytes < MIN_LINE_BYTES {
            return fail(format!(
                "max_line_bytes {} is below the minimum of {MIN_LINE_BYTES}",
                self.max_line_bytes
            ));
        }
        // Base64 and JSON escaping grow a chunk by up to 6x (\u00XX).
        if self.output_flush_bytes == 0 || self.output_flush_bytes > self.max_line_bytes / 8 {
            return fail(format!(
                "output_flush_bytes {} must be between 1 and max_line_bytes / 8 ({})",
                self.output_flush_bytes,
                self.max_line_bytes / 8
            ));
        }
        for (name, value) in [
            ("stdout_cap_bytes", self.stdout_cap_bytes),
            ("stderr_cap_bytes", self.stderr_cap_bytes),
            ("results_cap_bytes", self.results_cap_bytes),
            ("max_file_bytes", self.max_file_bytes),
            ("max_env_bytes", self.max_env_bytes as u64),
            ("max_ops_in_flight", self.max_ops_in_flight as u64),
        ] {
            if value == 0 {
                return fail(format!("{name} must be at least 1"));
            }
        }
        if self.output_flush_interval.is_zero() {
            return fail("output_flush_interval must be above zero".into());
        }
        if self.user_name.is_empty() || self.user_name.contains('\0') {
            return fail(format!("user_name {:?} is not a user name", self.user_name));
        }
        if let Some(parent) = &self.exec_cgroup_parent {
            if !parent.is_absolute() {
                return fail(format!(
                    "exec_cgroup_parent {parent:?} must be an absolute path"
                ));
            }
            if !root {
                return fail(format!(
                    "exec_cgroup_parent {parent:?} needs the agent to run as root: leave it unset"
                ));
            }
        }
        if self.path_env.is_empty() || self.path_env.contains('\0') {
            return fail(format!("path_env {:?} is not a PATH", self.path_env));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid configuration for whoever runs the tests.
    fn valid() -> AgentConfig {
        let root = nix::unistd::geteuid().is_root();
        AgentConfig {
            run_as: root.then_some(RunAs::SANDBOX),
            ..AgentConfig::default()
        }
    }

    #[test]
    fn default_with_run_as_is_valid() {
        assert!(valid().validate().is_ok());
    }

    #[test]
    fn run_as_parses_numbers_only() {
        assert_eq!(
            "1000:1001".parse::<RunAs>().ok(),
            Some(RunAs {
                uid: 1000,
                gid: 1001
            })
        );
        for bad in ["", "1000", "a:b", "1000:", ":1000", "-1:5", "1:2:3"] {
            assert!(bad.parse::<RunAs>().is_err(), "{bad}");
        }
    }

    #[test]
    fn run_as_is_required_exactly_when_root() {
        let root = nix::unistd::geteuid().is_root();
        let with = AgentConfig {
            run_as: Some(RunAs::SANDBOX),
            ..valid()
        };
        let without = AgentConfig {
            run_as: None,
            ..valid()
        };
        assert_eq!(with.validate().is_ok(), root);
        assert_eq!(without.validate().is_ok(), !root);
    }

    #[test]
    fn root_identity_is_refused() {
        for run_as in [RunAs { uid: 0, gid: 1000 }, RunAs { uid: 1000, gid: 0 }] {
            let config = AgentConfig {
                run_as: Some(run_as),
                ..valid()
            };
            assert!(config.validate().is_err(), "{run_as}");
        }
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let cases = [
            AgentConfig {
                home: "relative".into(),
                ..valid()
            },
            AgentConfig {
                max_line_bytes: 1000,
                ..valid()
            },
            AgentConfig {
                output_flush_bytes: 0,
                ..valid()
            },
            AgentConfig {
                output_flush_bytes: 8 * 1024 * 1024,
                ..valid()
            },
            AgentConfig {
                stdout_cap_bytes: 0,
                ..valid()
            },
            AgentConfig {
                max_file_bytes: 0,
                ..valid()
            },
            AgentConfig {
                output_flush_interval: Duration::ZERO,
                ..valid()
            },
            AgentConfig {
                path_env: String::new(),
                ..valid()
            },
            AgentConfig {
                exec_cgroup_parent: Some("relative/exec".into()),
                ..valid()
            },
        ];
        for config in cases {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
