//! What a run asks for, how it is validated, and what it returns.
//!
//! Validation is pure and happens before anything is touched (step 1 of a
//! VM's life in `docs/architecture.md`): a refused request never starts a
//! VM.

use crate::error::{InputError, Result};
use crate::files::{validate_guest_path, Downloaded, FileUpload};
use crate::spec::SandboxSpec;
use crate::vm::BootTimings;
use airlock_protocol::Language;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest accepted source code, in bytes.
pub const MAX_CODE_BYTES: usize = 4 * 1024 * 1024;
/// Default overall deadline of a run's uploads
/// ([`RunRequest::upload_timeout`]).
pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest accepted run timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Largest total size of the environment (names and values), in bytes.
pub const MAX_ENV_BYTES: usize = 64 * 1024;
/// Default run timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One run: a sandbox of [`RunRequest::spec`], code run once in it, the
/// VM destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// The sandbox: tenant, shape, network, packages.
    pub spec: SandboxSpec,
    /// The source code.
    pub code: String,
    /// Deadline for the code itself (boot not included).
    pub timeout: Duration,
    /// Environment variables for the code.
    pub env: BTreeMap<String, String>,
    /// Files written into the sandbox home before the code runs, in order
    /// (each checked end to end by sha256).
    pub uploads: Vec<FileUpload>,
    /// Deadline of writing all [`RunRequest::uploads`] into the VM,
    /// together (not counted in [`RunRequest::timeout`]); past it the run
    /// fails with [`crate::ExecError::UploadTimeout`].
    pub upload_timeout: Duration,
    /// Files (paths relative to the sandbox home) read back after the code
    /// ended, whatever its status (a timeout included); each lands in
    /// [`RunResult::downloads`], in this order.
    pub downloads: Vec<String>,
}

impl RunRequest {
    /// A request with the default spec ([`SandboxSpec::new`]) and
    /// timeout.
    pub fn new(language: Language, code: impl Into<String>) -> Self {
        Self::in_sandbox(SandboxSpec::new(language), code)
    }

    /// A request in a sandbox of `spec`, with the default timeout.
    pub fn in_sandbox(spec: SandboxSpec, code: impl Into<String>) -> Self {
        Self {
            spec,
            code: code.into(),
            timeout: DEFAULT_TIMEOUT,
            env: BTreeMap::new(),
            uploads: Vec::new(),
            upload_timeout: DEFAULT_UPLOAD_TIMEOUT,
            downloads: Vec::new(),
        }
    }

    /// The language of the code.
    pub fn language(&self) -> Language {
        self.spec.shape.language
    }

    /// Checks every field; the first problem is returned.
    ///
    /// # Errors
    /// [`InputError::Invalid`] naming the field and what is accepted,
    /// [`InputError::PackageSpec`] for a refused package.
    pub fn validate(&self) -> Result<(), InputError> {
        validate_code(&self.code)?;
        validate_timeout(self.timeout)?;
        if self.upload_timeout.is_zero() && !self.uploads.is_empty() {
            return Err(InputError::invalid(
                "upload_timeout",
                "the uploads' deadline is zero: give it a positive duration",
            ));
        }
        self.spec.validate()?;
        validate_env(&self.env)?;
        for upload in &self.uploads {
            validate_guest_path("uploads", &upload.path)?;
        }
        for path in &self.downloads {
            validate_guest_path("downloads", path)?;
        }
        Ok(())
    }

    /// The run's packages, checked and sorted.
    ///
    /// # Errors
    /// [`InputError::PackageSpec`] for an unpinned or malformed spec, or
    /// packages for `raw`.
    pub fn package_list(&self) -> Result<crate::packages::PackageList, InputError> {
        crate::packages::PackageList::parse(self.language(), &self.spec.packages)
    }
}

/// Checks source code (of a run or a session cell): not blank, at most
/// [`MAX_CODE_BYTES`], no NUL byte.
///
/// # Errors
/// [`InputError::Invalid`] for `code`.
pub(crate) fn validate_code(code: &str) -> Result<(), InputError> {
    if code.trim().is_empty() {
        return Err(InputError::invalid("code", "the code is empty"));
    }
    if code.len() > MAX_CODE_BYTES {
        return Err(InputError::invalid(
            "code",
            format!(
                "{} bytes is over the limit of {MAX_CODE_BYTES} bytes",
                code.len()
            ),
        ));
    }
    if code.contains('\0') {
        return Err(InputError::invalid("code", "the code contains a NUL byte"));
    }
    Ok(())
}

/// Checks a timeout: above zero, at most [`MAX_TIMEOUT`].
///
/// # Errors
/// [`InputError::Invalid`] for `timeout`.
pub fn validate_timeout(timeout: Duration) -> Result<(), InputError> {
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(InputError::invalid(
            "timeout",
            format!(
                "{:?} is outside 1 ms ..= {} s",
                timeout,
                MAX_TIMEOUT.as_secs()
            ),
        ));
    }
    Ok(())
}

/// Checks environment variables on the host side, before anything boots,
/// with the one policy the agent applies again as a second line
/// ([`airlock_protocol::check_env`]: POSIX names, injection variables such
/// as `LD_PRELOAD` refused whatever their case, no control character but
/// TAB in values), plus a total size cap.
///
/// # Errors
/// [`InputError::Invalid`] for `env`.
pub fn validate_env(env: &BTreeMap<String, String>) -> Result<(), InputError> {
    let mut total = 0;
    for (name, value) in env {
        airlock_protocol::check_env(name, value)
            .map_err(|e| InputError::invalid("env", e.to_string()))?;
        total += name.len() + value.len() + 2;
    }
    if total > MAX_ENV_BYTES {
        return Err(InputError::invalid(
            "env",
            format!("{total} bytes of environment is over the limit of {MAX_ENV_BYTES}"),
        ));
    }
    Ok(())
}

/// Parses `KEY=VALUE` (as given to `-e`).
///
/// # Errors
/// [`InputError::Invalid`] when there is no `=`.
pub fn parse_env_pair(pair: &str) -> Result<(String, String), InputError> {
    match pair.split_once('=') {
        Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
        None => Err(InputError::invalid(
            "env",
            format!("{pair:?} is not KEY=VALUE"),
        )),
    }
}

/// Where the time of a run went, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Checking the request.
    pub validate_ms: u64,
    /// Waiting for a free VM slot (backpressure).
    pub queue_ms: u64,
    /// Taking (or making) the VM's disk overlay.
    pub overlay_ms: u64,
    /// Whether the overlay came from the pool (else made on demand).
    pub overlay_pool_hit: bool,
    /// Starting QEMU.
    pub spawn_ms: u64,
    /// From QEMU started to the agent's first answer.
    pub guest_ready_ms: u64,
    /// Running the code, as seen from the host.
    pub exec_ms: u64,
    /// Destroying the VM.
    pub teardown_ms: u64,
    /// The whole run.
    pub total_ms: u64,
    /// Boot attempts made (more than 1 after a transient failure).
    pub boot_attempts: u32,
    /// The restore's breakdown of `guest_ready_ms` (state load, resume,
    /// agent, reseed), when the VM was restored from a memory template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<crate::guest::RestoreTimings>,
    /// The VM waited paused in a warm pool: `guest_ready_ms` is its take
    /// (resume and reseed).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_warm_pool: bool,
}

/// The phases of a run around the VM's boot, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunPhases {
    /// Checking the request.
    pub validate_ms: u64,
    /// Running the code.
    pub exec_ms: u64,
    /// Destroying the VM.
    pub teardown_ms: u64,
    /// The whole run.
    pub total_ms: u64,
}

impl Timings {
    /// The breakdown of a run: its boot's timings and the phases around it.
    pub fn new(boot: &BootTimings, phases: RunPhases) -> Self {
        let BootTimings {
            queue_ms,
            overlay_ms,
            overlay_pool_hit,
            spawn_ms,
            guest_ready_ms,
            attempts,
            restore,
            from_warm_pool,
        } = *boot;
        Self {
            validate_ms: phases.validate_ms,
            queue_ms,
            overlay_ms,
            overlay_pool_hit,
            spawn_ms,
            guest_ready_ms,
            exec_ms: phases.exec_ms,
            teardown_ms: phases.teardown_ms,
            total_ms: phases.total_ms,
            boot_attempts: attempts,
            restore,
            from_warm_pool,
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    /// The VM that ran the code.
    pub vm_id: String,
    /// Standard output (lossy UTF-8 in JSON).
    #[serde(serialize_with = "lossy")]
    pub stdout: Vec<u8>,
    /// Standard error (lossy UTF-8 in JSON).
    #[serde(serialize_with = "lossy")]
    pub stderr: Vec<u8>,
    /// The code's exit code (128+N for signal N).
    pub exit_code: i32,
    /// Whether the timeout killed the code.
    pub timed_out: bool,
    /// Whether stdout was cut at its cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at its cap.
    pub stderr_truncated: bool,
    /// The values the code showed, in order (a python or javascript
    /// run's last expression, `display()`, figures): MIME bundles,
    /// `docs/outputs.md`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<airlock_protocol::ExecResult>,
    /// The code's uncaught exception (its traceback is on stderr too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<airlock_protocol::CellError>,
    /// Where the time went.
    pub timings: Timings,
    /// What the VM's processes used on the host (from its limits group).
    pub usage: crate::teardown::Usage,
    /// What the network did (`None`: the VM had none).
    pub network: Option<crate::network::NetworkReport>,
    /// The files of [`RunRequest::downloads`], in order, each read or
    /// failed on its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub downloads: Vec<Downloaded>,
    /// The package layer the run attached (`None`: no packages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packages: Option<crate::packages::install::PackagesReport>,
}

/// Serializes bytes as text, invalid UTF-8 replaced (output in JSON).
pub(crate) fn lossy<S: serde::Serializer>(
    bytes: &[u8],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::RestoreTimings;
    use crate::spec::validate_identifier;

    fn ok_request() -> RunRequest {
        RunRequest::new(Language::Python, "print(1)")
    }

    #[test]
    fn unpinned_or_malformed_packages_are_refused_before_boot() {
        for (language, bad) in [
            (Language::Python, "numpy"),
            (Language::Python, "numpy>=2"),
            (Language::Python, "--index-url=https://evil.example"),
            (Language::Javascript, "is-number@^7.0.0"),
            (Language::Raw, "jq==1.7"),
        ] {
            let mut r = RunRequest::new(language, "print(1)");
            r.spec.packages = vec![bad.into()];
            assert!(
                matches!(r.validate(), Err(InputError::PackageSpec { .. })),
                "{language} {bad}"
            );
        }
        let mut ok = ok_request();
        ok.spec.packages = vec!["six==1.16.0,idna==3.7".into()];
        ok.validate().unwrap();
        assert_eq!(
            ok.package_list().unwrap().canonical(),
            ["idna==3.7", "six==1.16.0"]
        );
    }

    fn field_of(r: &RunRequest) -> &'static str {
        match r.validate() {
            Err(InputError::Invalid { field, .. }) => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn a_default_request_is_valid() {
        ok_request().validate().unwrap();
    }

    #[test]
    fn empty_or_blank_code_is_refused() {
        let mut r = ok_request();
        r.code = "  \n".into();
        assert_eq!(field_of(&r), "code");
    }

    #[test]
    fn oversized_code_is_refused() {
        let mut r = ok_request();
        r.code = "x".repeat(MAX_CODE_BYTES + 1);
        assert_eq!(field_of(&r), "code");
    }

    #[test]
    fn memory_out_of_range_is_refused_with_the_range() {
        for memory_mib in [0, 127, 16385] {
            let mut r = ok_request();
            r.spec.shape.memory_mib = memory_mib;
            let msg = r.validate().unwrap_err().to_string();
            assert!(msg.contains("128 ..= 16384"), "{msg}");
        }
    }

    #[test]
    fn bad_vcpus_and_timeouts_are_refused() {
        let mut r = ok_request();
        r.spec.shape.vcpus = 0;
        assert_eq!(field_of(&r), "vcpus");
        let mut r = ok_request();
        r.timeout = Duration::ZERO;
        assert_eq!(field_of(&r), "timeout");
    }

    #[test]
    fn identifiers_follow_the_documented_alphabet() {
        assert!(validate_identifier("tenant", "team_A-1").is_ok());
        for bad in ["", "a b", "../x", "é", &"a".repeat(129)] {
            assert!(validate_identifier("tenant", bad).is_err(), "{bad:?}");
        }
        match validate_identifier("tenant", "a/b") {
            Err(InputError::Invalid { field, message }) => {
                assert_eq!(field, "tenant");
                assert!(message.contains("A-Z, a-z, 0-9"), "{message}");
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn env_names_must_be_posix() {
        let mut r = ok_request();
        r.env.insert("1X".into(), "v".into());
        assert_eq!(field_of(&r), "env");
        let mut r = ok_request();
        r.env.insert("GOOD_1".into(), "a=b".into());
        r.validate().unwrap();
    }

    #[test]
    fn the_run_timings_keep_every_boot_timing_including_the_queue() {
        let boot = BootTimings {
            queue_ms: 1,
            overlay_ms: 2,
            overlay_pool_hit: true,
            spawn_ms: 3,
            guest_ready_ms: 4,
            attempts: 2,
            restore: Some(RestoreTimings {
                load_ms: 8,
                resume_ms: 9,
                agent_ms: 10,
                reseed_ms: 11,
                state_bytes: 12,
            }),
            from_warm_pool: true,
        };
        let phases = RunPhases {
            validate_ms: 5,
            exec_ms: 6,
            teardown_ms: 7,
            total_ms: 30,
        };
        let t = Timings::new(&boot, phases);
        assert_eq!(
            t,
            Timings {
                validate_ms: 5,
                queue_ms: 1,
                overlay_ms: 2,
                overlay_pool_hit: true,
                spawn_ms: 3,
                guest_ready_ms: 4,
                exec_ms: 6,
                teardown_ms: 7,
                total_ms: 30,
                boot_attempts: 2,
                restore: boot.restore,
                from_warm_pool: true,
            }
        );
    }

    #[test]
    fn the_run_timings_serialize_the_queue_wait() {
        let json = serde_json::to_value(Timings::default()).unwrap();
        for field in [
            "validate_ms",
            "queue_ms",
            "overlay_ms",
            "guest_ready_ms",
            "boot_attempts",
        ] {
            assert!(json[field].is_number(), "{field} in {json}");
        }
    }

    #[test]
    fn injection_variables_are_refused_before_boot_whatever_their_case() {
        for name in ["LD_PRELOAD", "ld_preload", "Ld_Library_Path"] {
            let mut r = RunRequest::new(Language::Raw, "true");
            r.env.insert(name.into(), "/tmp/x.so".into());
            assert_eq!(field_of(&r), "env", "{name}");
        }
    }

    #[test]
    fn env_values_with_control_characters_are_refused_but_tab_is_kept() {
        let mut r = RunRequest::new(Language::Raw, "true");
        r.env.insert("A".into(), "\u{1b}[2J".into());
        assert_eq!(field_of(&r), "env");
        let mut ok = RunRequest::new(Language::Raw, "true");
        ok.env.insert("A".into(), "a\tb".into());
        ok.validate().expect("TAB is allowed");
    }

    #[test]
    fn env_pairs_split_at_the_first_equals() {
        assert_eq!(parse_env_pair("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env_pair("A").is_err());
    }
}
