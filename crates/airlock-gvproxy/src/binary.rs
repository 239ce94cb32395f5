//! Finding the gvproxy binary and reading its version (once per process).

use crate::GvproxyError;
use airlock_sys_util::executable::{is_executable_async, path_candidates};
use airlock_sys_util::{output_with_deadline, IoError, SysError};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::OnceCell;

/// Podman's folders, where distributions put gvproxy.
pub const PODMAN_LIBEXEC_DIRS: [&str; 2] = ["/usr/libexec/podman", "/usr/lib/podman"];

/// How long `gvproxy -version` may take.
const VERSION_DEADLINE: Duration = Duration::from_secs(5);

/// A gvproxy version (`gvproxy version v0.8.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GvproxyVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl GvproxyVersion {
    /// The oldest version driven: 0.8.1 (Debian 13's), whose `-ssh-port -1`
    /// disables the SSH forward and whose API takes unix forwards.
    pub const MIN: Self = Self::new(0, 8, 1);

    /// The first version that reads a YAML `-config` file (and takes a
    /// subnet other than 192.168.127.0/24).
    pub const CONFIG_FILE: Self = Self::new(0, 8, 8);

    /// `major.minor.patch`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Reads the output of `gvproxy -version`: `gvproxy version v0.8.1`,
    /// possibly with a suffix (`v0.8.1-dirty`, `0.8.1+ds1`). `None` when no
    /// `MAJOR.MINOR[.PATCH]` follows the word `version`.
    pub fn parse(output: &str) -> Option<Self> {
        let line = output.lines().find(|l| l.contains("version"))?;
        let word = line
            .split_whitespace()
            .skip_while(|w| *w != "version")
            .nth(1)?;
        let word = word.strip_prefix('v').unwrap_or(word);
        let numeric_end = word
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(word.len());
        let mut parts = word[..numeric_end].split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some("") | None => 0,
            Some(p) => p.parse().ok()?,
        };
        Some(Self::new(major, minor, patch))
    }

    /// Whether gvproxy reads its whole configuration from `-config FILE`.
    pub fn takes_config_file(self) -> bool {
        self >= Self::CONFIG_FILE
    }
}

impl fmt::Display for GvproxyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A gvproxy binary and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GvproxyBinary {
    /// Its path.
    pub path: PathBuf,
    /// Its version.
    pub version: GvproxyVersion,
}

/// Where to look for gvproxy, from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchPath {
    /// `$AIRLOCK_GVPROXY`: when set, the only candidate.
    pub explicit: Option<PathBuf>,
    /// `$PATH`.
    pub path_var: Option<OsString>,
    /// Airlock's cache dir (`$AIRLOCK_CACHE_DIR`, else `~/.cache/airlock`).
    pub cache_dir: Option<PathBuf>,
}

impl SearchPath {
    /// From this process's environment.
    pub fn from_env() -> Self {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        Self {
            explicit: var("AIRLOCK_GVPROXY").map(PathBuf::from),
            path_var: var("PATH"),
            cache_dir: airlock_sys_util::AirlockDirs::from_env()
                .ok()
                .map(|d| d.cache),
        }
    }

    /// The candidates in search order: `$AIRLOCK_GVPROXY` alone when set;
    /// else `PATH` entries, podman's libexec folders, then
    /// `<cache>/bin/gvproxy`.
    pub fn candidates(&self) -> Vec<PathBuf> {
        if let Some(explicit) = &self.explicit {
            return vec![explicit.clone()];
        }
        let mut out = path_candidates(
            self.path_var.as_deref().unwrap_or(OsStr::new("")),
            "gvproxy",
        );
        out.extend(
            PODMAN_LIBEXEC_DIRS
                .iter()
                .map(|d| Path::new(d).join("gvproxy")),
        );
        out.extend(self.cache_dir.iter().map(|d| d.join("bin").join("gvproxy")));
        out
    }
}

/// Finds gvproxy along `search` (the first executable file) and reads its
/// version.
///
/// # Errors
/// [`GvproxyError::NotFound`] listing where it looked; version errors.
pub async fn find_gvproxy(search: &SearchPath) -> Result<GvproxyBinary, GvproxyError> {
    let candidates = search.candidates();
    for candidate in &candidates {
        if is_executable_async(candidate).await {
            let version = probe_version(candidate).await?;
            if version < GvproxyVersion::MIN {
                return Err(GvproxyError::TooOld {
                    binary: candidate.clone(),
                    found: version.to_string(),
                    required: GvproxyVersion::MIN.to_string(),
                });
            }
            tracing::debug!(path = %candidate.display(), %version, "found gvproxy");
            return Ok(GvproxyBinary {
                path: candidate.clone(),
                version,
            });
        }
    }
    let searched = match &search.explicit {
        Some(p) => format!("AIRLOCK_GVPROXY={} is not an executable file", p.display()),
        None => format!(
            "searched {}",
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Err(GvproxyError::NotFound { searched })
}

/// [`find_gvproxy`] with [`SearchPath::from_env`], done once per process:
/// later calls return the first success (a failure is retried).
///
/// # Errors
/// As [`find_gvproxy`].
pub async fn find_gvproxy_cached() -> Result<GvproxyBinary, GvproxyError> {
    static FOUND: OnceCell<GvproxyBinary> = OnceCell::const_new();
    FOUND
        .get_or_try_init(|| async { find_gvproxy(&SearchPath::from_env()).await })
        .await
        .cloned()
}

/// Runs `binary -version` under a deadline and parses it.
///
/// # Errors
/// Spawn failure, timeout or unreadable output.
pub async fn probe_version(binary: &Path) -> Result<GvproxyVersion, GvproxyError> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("-version");
    let unreadable = |output: String| GvproxyError::UnreadableVersion {
        binary: binary.to_path_buf(),
        output,
    };
    let output = match output_with_deadline(&mut cmd, None, VERSION_DEADLINE).await {
        Ok(output) => output,
        Err(SysError::Timeout { .. }) => {
            return Err(unreadable(format!(
                "no answer to -version within {VERSION_DEADLINE:?}"
            )))
        }
        Err(other) => return Err(IoError::new("run", binary, other.into_io_error()).into()),
    };
    let text = format!("{}{}", output.stdout_text(), output.stderr_text());
    GvproxyVersion::parse(&text)
        .ok_or_else(|| unreadable(text.lines().next().unwrap_or_default().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_forms_parse() {
        let v = |s| GvproxyVersion::parse(s);
        assert_eq!(
            v("gvproxy version v0.8.1\n"),
            Some(GvproxyVersion::new(0, 8, 1))
        );
        assert_eq!(
            v("gvproxy version 0.8.8-dirty"),
            Some(GvproxyVersion::new(0, 8, 8))
        );
        assert_eq!(
            v("gvproxy version v1.2"),
            Some(GvproxyVersion::new(1, 2, 0))
        );
        assert_eq!(
            v("gvproxy version 0.7.3+ds1"),
            Some(GvproxyVersion::new(0, 7, 3))
        );
    }

    #[test]
    fn unreadable_versions_are_none() {
        for bad in [
            "",
            "gvproxy version ",
            "gvproxy version (devel)",
            "hello",
            "version x.y",
        ] {
            assert_eq!(GvproxyVersion::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn config_file_starts_at_0_8_8() {
        assert!(!GvproxyVersion::new(0, 8, 1).takes_config_file());
        assert!(GvproxyVersion::new(0, 8, 8).takes_config_file());
        assert!(GvproxyVersion::new(1, 0, 0).takes_config_file());
    }

    #[test]
    fn explicit_path_is_the_only_candidate() {
        let search = SearchPath {
            explicit: Some("/opt/gv".into()),
            path_var: Some("/usr/bin".into()),
            cache_dir: Some("/c".into()),
        };
        assert_eq!(search.candidates(), vec![PathBuf::from("/opt/gv")]);
    }

    #[test]
    fn search_order_is_path_then_podman_then_cache() {
        let search = SearchPath {
            explicit: None,
            path_var: Some("/usr/local/bin:relative:/usr/bin".into()),
            cache_dir: Some("/home/u/.cache/airlock".into()),
        };
        let expected: Vec<PathBuf> = [
            "/usr/local/bin/gvproxy",
            "/usr/bin/gvproxy",
            "/usr/libexec/podman/gvproxy",
            "/usr/lib/podman/gvproxy",
            "/home/u/.cache/airlock/bin/gvproxy",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(search.candidates(), expected);
    }

    #[tokio::test]
    async fn missing_gvproxy_says_how_to_install_it() {
        let search = SearchPath {
            explicit: None,
            path_var: Some("/nonexistent-airlock-test".into()),
            cache_dir: Some("/nonexistent-airlock-test/cache".into()),
        };
        let err = find_gvproxy(&search).await.unwrap_err().to_string();
        assert!(err.contains("gvproxy not found"), "{err}");
        assert!(err.contains("install the `gvproxy` package"), "{err}");
        assert!(err.contains("AIRLOCK_GVPROXY"), "{err}");
        assert!(
            err.contains("/nonexistent-airlock-test/cache/bin/gvproxy"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn explicit_path_that_is_not_executable_is_named() {
        let search = SearchPath {
            explicit: Some("/nonexistent-airlock-test/gvproxy".into()),
            ..SearchPath::default()
        };
        let err = find_gvproxy(&search).await.unwrap_err().to_string();
        assert!(
            err.contains("AIRLOCK_GVPROXY=/nonexistent-airlock-test/gvproxy"),
            "{err}"
        );
    }
}
