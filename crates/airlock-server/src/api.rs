//! The JSON bodies of the REST API and the MCP tools' inputs, and their
//! translation into the orchestrator's requests. Their JSON schemas
//! (schemars) feed the OpenAPI document and the MCP tool list, so the
//! documents say what the code accepts.

use crate::error::{Result, ServerError};
use crate::quota::Quotas;
use airlock::{RunRequest, SessionOptions};
use airlock_protocol::Language;

pub use airlock::spec::args::{LifetimeArgs, NetworkArgs, SandboxArgs, ShapeArgs};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `POST /v1/runs`: run code once in a fresh VM.
///
/// The sandbox's options (`memory_mib`, `cpus`, `network`, `packages`) are
/// the library's [`SandboxArgs`], flattened: the same names, defaults and
/// errors as the CLI's flags and the MCP tools' inputs. Unknown fields are
/// refused by [`crate::json::parse`] (serde's `deny_unknown_fields` does
/// not combine with `flatten`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
// Closed in the schema: `crate::json::parse` refuses any other field.
#[schemars(deny_unknown_fields)]
pub struct RunBody {
    /// `python`, `javascript` or `raw` (bash). Default: the image's
    /// language, else python (as the CLI's `--language`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["python", "python3", "py", "javascript", "js", "node", "nodejs", "raw", "sh", "bash", "shell", null]))]
    pub language: Option<String>,
    /// The source code.
    #[schemars(length(min = 1))]
    pub code: String,
    /// Timeout of the code in seconds (boot not included). Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub timeout_s: Option<f64>,
    /// Memory, vCPUs, network and packages.
    #[serde(flatten)]
    pub sandbox: SandboxArgs,
    /// Environment variables of the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Files written into the guest's home before the code runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileBody>>,
    /// Names of the tenant's secrets (`PUT /v1/secrets/{name}`) the code
    /// may use: each is a placeholder in the variable of its name, and the
    /// egress proxy puts the value into HTTPS requests to its hosts (which
    /// join the allowlist). An unknown name is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// `POST /v1/sessions`: the sandbox's options as for a run, and the
/// session's lifetime ([`LifetimeArgs`]: `idle_timeout_s`,
/// `max_lifetime_s`), both flattened. MCP's `create_session` takes the
/// same ([`SessionSpec`]).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
// Closed in the schema: `crate::json::parse` refuses any other field.
#[schemars(deny_unknown_fields)]
pub struct SessionBody {
    /// `python`, `javascript` or `raw` (bash). Default: the image's
    /// language, else python (as the CLI's `--language`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["python", "python3", "py", "javascript", "js", "node", "nodejs", "raw", "sh", "bash", "shell", null]))]
    pub language: Option<String>,
    /// Memory, vCPUs, network, packages, idle timeout and lifetime.
    #[serde(flatten)]
    pub spec: SessionSpec,
}

/// What a session is made of besides its language: the sandbox and its
/// lifetime, as REST and MCP take them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
pub struct SessionSpec {
    /// Memory, vCPUs, network and packages.
    #[serde(flatten)]
    pub sandbox: SandboxArgs,
    /// Idle timeout and maximum lifetime.
    #[serde(flatten)]
    pub lifetime: LifetimeArgs,
    /// Names of the tenant's secrets the session may use (as for a run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

impl SessionSpec {
    /// The orchestrator's options of a session of `language` for
    /// `tenant`, with `secrets` (the values of [`SessionSpec::secrets`]),
    /// checked.
    ///
    /// # Errors
    /// The library's errors (400) for a bad field.
    pub fn to_options(
        &self,
        tenant: &str,
        language: Language,
        secrets: Vec<airlock::spec::Secret>,
    ) -> Result<SessionOptions> {
        let mut spec = self.sandbox.to_spec(tenant, language)?;
        spec.secrets = secrets;
        spec.validate()?;
        let mut options = SessionOptions::in_sandbox(spec);
        self.lifetime.apply(&mut options);
        options.validate()?;
        Ok(options)
    }
}

/// `POST /v1/sessions/{id}/fork`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkBody {
    /// How many new sessions (1..=8), each a copy of the session's
    /// memory, files and running threads, reseeded.
    #[schemars(range(min = 1, max = 8))]
    pub count: usize,
}

/// `POST /v1/sessions/{id}/exec`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// The code: a cell of the session's interpreter (state is kept).
    #[schemars(length(min = 1))]
    pub code: String,
    /// Timeout in seconds. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub timeout_s: Option<f64>,
    /// Environment variables of this cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
}

/// `POST /v1/sessions/{id}/packages`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackagesBody {
    /// Pinned packages (`pip name==version`, `npm name@version`).
    pub packages: Vec<String>,
}

/// `PUT /v1/secrets/{name}`: a secret's value and the hosts it may go
/// to. `Debug` shows no value, and no refusal quotes it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    /// The value (1 to 16384 bytes of text). Stored encrypted; never
    /// shown again.
    #[schemars(with = "String")]
    pub value: SecretText,
    /// The hosts it may be sent to: names (`api.example.com`) or
    /// `*.domain` (every name under the domain). At least one.
    pub hosts: Vec<String>,
    /// Substitute the value in request bodies too, not only in headers.
    /// Default false.
    #[serde(default)]
    pub body: bool,
}

/// A secret's value in a request body: a JSON string. A value of another
/// type is refused without being quoted (serde's own messages quote
/// numbers), and `Debug` shows none.
#[derive(Clone)]
pub struct SecretText(pub airlock::spec::SecretValue);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(text) => {
                Ok(Self(airlock::spec::SecretValue::new(text.into_bytes())))
            }
            _ => Err(serde::de::Error::custom("`value` must be a JSON string")),
        }
    }
}

impl SecretBody {
    /// The secret to store under `name`.
    pub fn to_new_secret(&self, name: &str) -> crate::secrets::NewSecret {
        crate::secrets::NewSecret {
            name: name.to_owned(),
            value: self.value.0.clone(),
            hosts: self.hosts.clone(),
            body: self.body,
        }
    }
}

/// A file given inline.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileBody {
    /// Path relative to the guest's home dir.
    pub path: String,
    /// The content, base64.
    pub content_b64: String,
}

impl FileBody {
    /// The orchestrator's upload (the path is checked with the request).
    ///
    /// # Errors
    /// [`ServerError::BadRequest`] when `content_b64` is not base64.
    pub fn to_upload(&self) -> Result<airlock::FileUpload> {
        use base64::Engine;
        let content = base64::engine::general_purpose::STANDARD
            .decode(&self.content_b64)
            .map_err(|e| {
                ServerError::bad_request(format!(
                    "files: {:?}: content_b64 is not base64: {e}",
                    self.path
                ))
            })?;
        Ok(airlock::FileUpload::new(self.path.clone(), content))
    }
}

/// Parses a language name.
///
/// # Errors
/// [`ServerError::BadRequest`] naming the accepted names.
pub fn parse_language(name: &str) -> Result<Language> {
    name.parse::<Language>()
        .map_err(|e| ServerError::bad_request(format!("language: {e}")))
}

/// The language of a request: the one it names, else its image's, else
/// python: the CLI's default, on every front end.
///
/// # Errors
/// As [`parse_language`].
pub fn language_of(language: Option<&str>, sandbox: &SandboxArgs) -> Result<Language> {
    match language {
        Some(name) => parse_language(name),
        None => Ok(sandbox.shape.language(None, Language::Python)),
    }
}

/// A timeout in seconds, checked.
///
/// # Errors
/// [`ServerError::BadRequest`] for a value that is not a positive number.
pub fn parse_timeout(timeout_s: Option<f64>, default: Duration) -> Result<Duration> {
    match timeout_s {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 => Duration::try_from_secs_f64(s)
            .map_err(|e| ServerError::bad_request(format!("timeout_s: {e}"))),
        Some(s) => Err(ServerError::bad_request(format!(
            "timeout_s: {s} is not a positive number of seconds"
        ))),
    }
}

impl RunBody {
    /// The orchestrator's request for `tenant`, with `secrets` (the
    /// values of [`RunBody::secrets`]), checked against its quotas (memory
    /// and timeout; the count of runs is the caller's).
    ///
    /// # Errors
    /// [`ServerError::BadRequest`] (or an orchestrator's invalid input) for
    /// a bad field, [`ServerError::Quota`] over the quotas.
    pub fn to_request(
        &self,
        tenant: &str,
        quotas: &Quotas,
        secrets: Vec<airlock::spec::Secret>,
    ) -> Result<RunRequest> {
        let language = language_of(self.language.as_deref(), &self.sandbox)?;
        let mut spec = self.sandbox.to_spec(tenant, language)?;
        spec.secrets = secrets;
        let mut request = RunRequest::in_sandbox(spec, self.code.clone());
        request.timeout = parse_timeout(self.timeout_s, airlock::DEFAULT_TIMEOUT)?;
        request.env = self.env.clone().unwrap_or_default();
        request.uploads = self
            .files
            .iter()
            .flatten()
            .map(FileBody::to_upload)
            .collect::<Result<_>>()?;
        request.validate()?;
        quotas.check_vm(
            tenant,
            request.spec.shape.memory_mib,
            request.spec.shape.vcpus,
            request.timeout,
        )?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_language_names_the_schemas_list_are_the_ones_parsed() {
        for schema in [
            serde_json::to_value(schemars::schema_for!(RunBody)).unwrap(),
            serde_json::to_value(schemars::schema_for!(SessionBody)).unwrap(),
        ] {
            let names = schema["properties"]["language"]["enum"].as_array().unwrap();
            for name in names.iter().filter_map(serde_json::Value::as_str) {
                assert!(parse_language(name).is_ok(), "{name}");
            }
            for language in [Language::Python, Language::Javascript, Language::Raw] {
                assert!(
                    names.contains(&serde_json::json!(language.to_string())),
                    "{language}"
                );
            }
            assert!(names.contains(&serde_json::Value::Null));
        }
    }

    fn body(json: serde_json::Value) -> RunBody {
        crate::json::parse(json).unwrap()
    }

    #[test]
    fn a_minimal_body_is_a_default_request_for_the_tenant() {
        let r = body(serde_json::json!({"language": "python", "code": "print(1)"}))
            .to_request("alice", &Quotas::default(), Vec::new())
            .unwrap();
        assert_eq!(r.spec.tenant, "alice");
        assert_eq!(r.timeout, airlock::DEFAULT_TIMEOUT);
        assert_eq!(r.spec.shape.memory_mib, airlock::DEFAULT_MEMORY_MIB);
        assert_eq!(r.spec.network, airlock::NetworkRequest::default());
    }

    #[test]
    fn fields_map_to_the_request() {
        let r = body(serde_json::json!({
            "language": "python", "code": "1", "timeout_s": 2.5, "memory_mib": 256,
            "cpus": 2, "env": {"A": "1"}, "network": {"allow_domains": ["example.com"]},
            "packages": ["six==1.16.0"]
        }))
        .to_request("t", &Quotas::default(), Vec::new())
        .unwrap();
        assert_eq!(r.timeout, Duration::from_millis(2500));
        assert_eq!((r.spec.shape.memory_mib, r.spec.shape.vcpus), (256, 2));
        assert_eq!(r.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(
            r.spec.network.mode(),
            airlock_gvproxy::NetworkMode::Allowlist
        );
        assert_eq!(r.spec.packages, ["six==1.16.0"]);
    }

    #[test]
    fn files_become_uploads_and_bad_ones_are_refused() {
        let r = body(serde_json::json!({
            "language": "python", "code": "1",
            "files": [{"path": "in/a.txt", "content_b64": "aGk="}]
        }))
        .to_request("t", &Quotas::default(), Vec::new())
        .unwrap();
        assert_eq!(r.uploads.len(), 1);
        assert_eq!(r.uploads[0].path, "in/a.txt");
        assert_eq!(r.uploads[0].content, b"hi");
        for bad in [
            serde_json::json!([{"path": "a", "content_b64": "%%%"}]),
            serde_json::json!([{"path": "../x", "content_b64": ""}]),
            serde_json::json!([{"path": "/etc/passwd", "content_b64": ""}]),
        ] {
            let b = body(serde_json::json!({"language": "python", "code": "1", "files": bad}));
            assert!(
                b.to_request("t", &Quotas::default(), Vec::new()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_empty_network_object_means_the_default_registries() {
        let r = body(serde_json::json!({"language": "python", "code": "1", "network": {}}))
            .to_request("t", &Quotas::default(), Vec::new())
            .unwrap();
        assert_eq!(
            r.spec.network.mode(),
            airlock_gvproxy::NetworkMode::Allowlist
        );
        let none = body(
            serde_json::json!({"language": "python", "code": "1", "network": {"allow_domains": []}}),
        )
        .to_request("t", &Quotas::default(), Vec::new())
        .unwrap();
        assert_eq!(none.spec.network.mode(), airlock_gvproxy::NetworkMode::None);
    }

    #[test]
    fn bad_fields_are_400_and_quotas_429() {
        let q = Quotas {
            memory_mib: 256,
            ..Quotas::default()
        };
        for json in [
            serde_json::json!({"language": "cobol", "code": "1"}),
            serde_json::json!({"language": "python", "code": ""}),
            serde_json::json!({"language": "python", "code": "1", "timeout_s": -1}),
            serde_json::json!({"language": "python", "code": "1", "env": {"LD_PRELOAD": "x"}}),
            serde_json::json!({"language": "python", "code": "1", "network": {"allow_domains": ["bad..name"]}}),
        ] {
            let err = body(json.clone())
                .to_request("t", &q, Vec::new())
                .unwrap_err();
            assert_eq!(err.status().as_u16(), 400, "{json}: {err}");
        }
        let err = body(serde_json::json!({"language": "python", "code": "1", "memory_mib": 512}))
            .to_request("t", &q, Vec::new())
            .unwrap_err();
        assert_eq!(err.status().as_u16(), 429, "{err}");
    }

    #[test]
    fn unknown_fields_are_refused_also_inside_the_flattened_options() {
        for json in [
            serde_json::json!({"language": "python", "code": "1", "tiemout": 1}),
            serde_json::json!({"language": "python", "code": "1", "network": {"allow": []}}),
            serde_json::json!({"language": "python", "code": "1", "egress": true}),
        ] {
            let err = crate::json::parse::<RunBody>(json.clone()).unwrap_err();
            assert_eq!(err.status().as_u16(), 400, "{json}: {err}");
        }
    }

    #[test]
    fn a_network_given_as_an_array_is_refused_not_read_as_defaults() {
        // Found by schemathesis: serde read `[]` as a network with every
        // option defaulted, turning egress on.
        let json = serde_json::json!({"code": "0", "network": []});
        let err = crate::json::parse::<RunBody>(json).unwrap_err();
        assert_eq!(err.status().as_u16(), 400, "{err}");
        assert!(err.to_string().contains("`network`"), "{err}");
    }

    #[test]
    fn a_session_body_takes_cpus_and_both_lifetimes() {
        let body: SessionBody = crate::json::parse(serde_json::json!({
            "language": "raw", "cpus": 2, "memory_mib": 256,
            "idle_timeout_s": 5, "max_lifetime_s": 60
        }))
        .unwrap();
        let language = language_of(body.language.as_deref(), &body.spec.sandbox).unwrap();
        let options = body.spec.to_options("t", language, Vec::new()).unwrap();
        assert_eq!(
            (options.spec.shape.vcpus, options.spec.shape.memory_mib),
            (2, 256)
        );
        assert_eq!(options.idle_timeout, Duration::from_secs(5));
        assert_eq!(options.max_lifetime, Duration::from_secs(60));
        assert_eq!(options.spec.tenant, "t");
    }

    #[test]
    fn a_zero_lifetime_is_the_librarys_400() {
        let spec: SessionSpec =
            crate::json::parse(serde_json::json!({"max_lifetime_s": 0})).unwrap();
        let err = spec.to_options("t", Language::Raw, Vec::new()).unwrap_err();
        assert_eq!(err.status().as_u16(), 400, "{err}");
        assert_eq!(err.kind(), "invalid_input");
    }
}
