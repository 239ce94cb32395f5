//! The options every front end takes, defined once.
//!
//! The CLI flattens them into its subcommands (`#[command(flatten)]`, with
//! the `clap` feature, which only `airlock-cli` enables), the REST API and
//! MCP into their request bodies (`#[serde(flatten)]`; their JSON schema
//! comes from `schemars`). An option therefore has one name, default, help
//! and error on every front end:
//!
//! | option            | CLI                          | JSON                          |
//! |-------------------|------------------------------|-------------------------------|
//! | image             | `--image NAME`               | `image` (the language's own)  |
//! | guest memory      | `-m/--memory MIB` (512)      | `memory_mib` (512)            |
//! | vCPUs             | `--cpus N` (1)               | `cpus` (1)                    |
//! | egress            | `--network`, `--allow-domain`| `network: {allow_domains}`    |
//! | exposed ports     | `--expose GUEST[:HOST]`      | `network: {expose}`           |
//! | packages          | `--packages SPEC[,SPEC]`     | `packages`                    |
//! | workspace disk    | `--disk MIB` (2048; 0: RAM)  | `disk_mib` (2048)             |
//! | host folders      | `--mount HOST:GUEST[:ro|rw]` | `mounts` (the same strings)   |
//! | idle timeout      | `--idle-timeout S` (600)     | `idle_timeout_s` (600)        |
//! | max lifetime      | `--max-lifetime S` (3600)    | `max_lifetime_s` (3600)       |
//!
//! The network is flat flags on the CLI and one object in JSON: its JSON
//! form is the field `network` of [`SandboxArgs`] (absent: no network), so
//! a body keeps `deny_unknown_fields` off when it flattens
//! [`SandboxArgs`] (serde cannot combine the two).
//!
//! [`SandboxArgs::to_spec`] and [`LifetimeArgs::apply`] turn them into the
//! library's [`SandboxSpec`] and [`crate::SessionOptions`], with the
//! library's errors.

use super::{Image, Mount, SandboxSpec, DEFAULT_DISK_MIB, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
use crate::error::{InputError, Result};
use crate::network::NetworkRequest;
use airlock_protocol::Language;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Default idle timeout of a session, in seconds (10 min).
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 10 * 60;
/// Default maximum lifetime of a session, in seconds (1 h).
pub const DEFAULT_MAX_LIFETIME_S: u64 = 60 * 60;

fn default_memory_mib() -> u32 {
    DEFAULT_MEMORY_MIB
}

fn default_cpus() -> u32 {
    DEFAULT_VCPUS
}

fn default_disk_mib() -> u32 {
    DEFAULT_DISK_MIB
}

fn default_idle_timeout_s() -> u64 {
    DEFAULT_IDLE_TIMEOUT_S
}

fn default_max_lifetime_s() -> u64 {
    DEFAULT_MAX_LIFETIME_S
}

fn enabled() -> bool {
    true
}

/// The machine: its image, memory and vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ShapeArgs {
    /// The guest image: python, javascript, raw, or python-data (python
    /// with numpy, pandas, matplotlib, scipy, scikit-learn, seaborn,
    /// sympy, statsmodels; numpy, pandas and matplotlib already imported).
    /// Default: the language's own. An image alone picks its language
    /// (`--image python-data` runs python); a language it does not run is
    /// refused.
    #[cfg_attr(feature = "clap", arg(long = "image", value_name = "NAME"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// Guest memory in MiB.
    #[cfg_attr(
        feature = "clap",
        arg(short = 'm', long = "memory", value_name = "MEMORY", default_value_t = DEFAULT_MEMORY_MIB)
    )]
    #[serde(default = "default_memory_mib")]
    #[schemars(range(min = 128, max = 16384))]
    pub memory_mib: u32,
    /// Number of vCPUs.
    #[cfg_attr(feature = "clap", arg(long = "cpus", default_value_t = DEFAULT_VCPUS))]
    #[serde(default = "default_cpus")]
    #[schemars(range(min = 1, max = 16))]
    pub cpus: u32,
    /// The workspace disk in MiB: the sandbox home and /tmp live on a
    /// sparse ext4 disk of this size (a full disk is ENOSPC for the code).
    /// 0: no disk, both in RAM (256 and 64 MiB).
    #[cfg_attr(
        feature = "clap",
        arg(long = "disk", value_name = "MIB", default_value_t = DEFAULT_DISK_MIB)
    )]
    #[serde(default = "default_disk_mib")]
    #[schemars(range(max = 262_144))]
    pub disk_mib: u32,
}

impl Default for ShapeArgs {
    fn default() -> Self {
        Self {
            image: None,
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: DEFAULT_VCPUS,
            disk_mib: DEFAULT_DISK_MIB,
        }
    }
}

impl ShapeArgs {
    /// The language of the sandbox: the one `asked` (a flag, a file's
    /// extension, a body's field), else the image's, else `default`. A
    /// language the image does not run is refused by
    /// [`SandboxArgs::to_spec`].
    pub fn language(&self, asked: Option<Language>, default: Language) -> Language {
        asked.or(self.image.map(Image::language)).unwrap_or(default)
    }
}

/// The network: egress to allowlisted domains, exposed guest ports.
///
/// CLI: `--network` turns egress on (to the language's default registries
/// unless `--allow-domain` names others; any `--allow-domain` implies it);
/// `--expose` alone serves ports and reaches nothing. JSON: the object's
/// presence turns egress on; `allow_domains` absent means the language's
/// default registries, empty means nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct NetworkArgs {
    /// Let the guest reach allowlisted domains on ports 80 and 443, nothing
    /// else. Without --allow-domain the language's default allowlist
    /// applies: python: pypi.org, files.pythonhosted.org; javascript:
    /// registry.npmjs.org; raw: none (nothing is reachable).
    #[cfg_attr(feature = "clap", arg(long = "network"))]
    #[serde(skip, default = "enabled")]
    pub egress: bool,
    /// A domain the guest may reach (repeatable; `*.example.com` allows
    /// its subdomains). Implies --network.
    #[cfg_attr(feature = "clap", arg(long = "allow-domain", value_name = "NAME"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_domains: Option<Vec<String>>,
    /// Serve a guest port on the host's 127.0.0.1: GUEST[:HOST][/tcp]
    /// (repeatable; without HOST a free port is chosen and printed). The
    /// guest still reaches nothing unless --network is given.
    #[cfg_attr(feature = "clap", arg(long, value_name = "GUEST[:HOST][/tcp]"))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
}

impl NetworkArgs {
    /// Whether nothing is asked (no egress, no port): no network device.
    pub fn is_none(&self) -> bool {
        !self.egress && self.allow_domains.is_none() && self.expose.is_empty()
    }

    /// The network request these options describe for `language`.
    ///
    /// # Errors
    /// [`InputError::Invalid`] for `network` naming a bad domain or
    /// port.
    pub fn to_request(&self, language: Language) -> Result<NetworkRequest, InputError> {
        let domains = self.allow_domains.as_deref().unwrap_or_default();
        // An explicitly empty allowlist (JSON `allow_domains: []`) reaches
        // nothing, whatever turned egress on.
        let egress = match &self.allow_domains {
            Some(list) if list.is_empty() => false,
            _ => self.egress || !domains.is_empty(),
        };
        NetworkRequest::from_flags(language, egress, domains, &self.expose)
    }
}

/// What a sandbox is made of, as every front end takes it: shape, network
/// and packages (the language and tenant come from elsewhere: the
/// subcommand or body's own `language`, the caller's key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct SandboxArgs {
    /// Memory and vCPUs.
    #[cfg_attr(feature = "clap", command(flatten))]
    #[serde(flatten)]
    pub shape: ShapeArgs,
    /// Network access (none without this field).
    #[cfg_attr(feature = "clap", command(flatten))]
    #[serde(default, skip_serializing_if = "NetworkArgs::is_none")]
    pub network: NetworkArgs,
    /// Pinned packages to install (repeatable or comma-separated): python
    /// `name==version`, javascript `name@version`. Installed once through
    /// the registries (a separate VM; the sandbox itself gets no network
    /// from it), kept as a read-only layer and attached to later sandboxes
    /// with the same list.
    #[cfg_attr(
        feature = "clap",
        arg(long = "packages", value_name = "SPEC[,SPEC...]")
    )]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// A host folder the guest sees: HOST_DIR:GUEST_DIR[:ro|rw]
    /// (repeatable; read-only unless `rw`; GUEST_DIR below /home/sandbox
    /// or /mnt). A sandbox with mounts boots cold.
    #[cfg_attr(
        feature = "clap",
        arg(long = "mount", value_name = "HOST_DIR:GUEST_DIR[:ro|rw]")
    )]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
}

impl SandboxArgs {
    /// The spec of a sandbox of `language` for `tenant`; validated.
    /// `language` is what was asked, or the image's
    /// ([`ShapeArgs::language`]).
    ///
    /// # Errors
    /// As [`SandboxSpec::validate`] and [`NetworkArgs::to_request`].
    pub fn to_spec(&self, tenant: &str, language: Language) -> Result<SandboxSpec, InputError> {
        let mut spec = SandboxSpec::new(language);
        if let Some(image) = self.shape.image {
            spec.shape = spec.shape.with_image(image);
        }
        tenant.clone_into(&mut spec.tenant);
        spec.shape.memory_mib = self.shape.memory_mib;
        spec.shape.vcpus = self.shape.cpus;
        spec.shape.disk_mib = self.shape.disk_mib;
        spec.network = self.network.to_request(language)?;
        spec.packages.clone_from(&self.packages);
        spec.mounts = self
            .mounts
            .iter()
            .map(|text| Mount::parse(text))
            .collect::<Result<_, _>>()?;
        spec.validate()?;
        Ok(spec)
    }
}

/// How long a session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct LifetimeArgs {
    /// Close the session after this many seconds without a call.
    #[cfg_attr(
        feature = "clap",
        arg(long = "idle-timeout", value_name = "SECONDS", default_value_t = DEFAULT_IDLE_TIMEOUT_S)
    )]
    #[serde(default = "default_idle_timeout_s")]
    #[schemars(range(min = 1, max = 86400))]
    pub idle_timeout_s: u64,
    /// Close the session this many seconds after it started, even mid-call.
    #[cfg_attr(
        feature = "clap",
        arg(long = "max-lifetime", value_name = "SECONDS", default_value_t = DEFAULT_MAX_LIFETIME_S)
    )]
    #[serde(default = "default_max_lifetime_s")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_lifetime_s: u64,
}

impl Default for LifetimeArgs {
    fn default() -> Self {
        Self {
            idle_timeout_s: DEFAULT_IDLE_TIMEOUT_S,
            max_lifetime_s: DEFAULT_MAX_LIFETIME_S,
        }
    }
}

impl LifetimeArgs {
    /// Sets `options`' idle timeout and lifetime (checked by
    /// [`crate::SessionOptions::validate`]).
    pub fn apply(&self, options: &mut crate::SessionOptions) {
        options.idle_timeout = Duration::from_secs(self.idle_timeout_s);
        options.max_lifetime = Duration::from_secs(self.max_lifetime_s);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;
    use airlock_gvproxy::NetworkMode;

    fn from_json(json: &str) -> SandboxArgs {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_empty_body_has_the_cli_defaults_and_no_network() {
        let args = from_json("{}");
        assert_eq!(args, SandboxArgs::default());
        let spec = args.to_spec("t", Language::Python).unwrap();
        assert_eq!((spec.shape.memory_mib, spec.shape.vcpus), (512, 1));
        assert_eq!(spec.network.mode(), NetworkMode::None);
        assert_eq!(spec.tenant, "t");
    }

    #[test]
    fn the_json_field_names_are_the_rest_apis() {
        let args = from_json(
            r#"{"memory_mib": 256, "cpus": 2, "packages": ["six==1.16.0"],
                "network": {"allow_domains": ["example.com"], "expose": ["8080"]}}"#,
        );
        assert_eq!(
            args.shape,
            ShapeArgs {
                image: None,
                memory_mib: 256,
                cpus: 2,
                disk_mib: DEFAULT_DISK_MIB,
            }
        );
        let spec = args.to_spec("t", Language::Python).unwrap();
        assert_eq!(spec.network.mode(), NetworkMode::Allowlist);
        assert_eq!(spec.network.exposes.len(), 1);
        assert_eq!(spec.packages, ["six==1.16.0"]);
    }

    #[test]
    fn a_json_network_object_turns_egress_on_unless_its_allowlist_is_empty() {
        let on = from_json(r#"{"network": {}}"#);
        assert_eq!(
            on.to_spec("t", Language::Python).unwrap().network.mode(),
            NetworkMode::Allowlist
        );
        let ports = from_json(r#"{"network": {"allow_domains": [], "expose": ["80"]}}"#);
        assert_eq!(
            ports.to_spec("t", Language::Python).unwrap().network.mode(),
            NetworkMode::Ports
        );
    }

    #[test]
    fn cli_style_expose_alone_serves_ports_and_reaches_nothing() {
        let args = SandboxArgs {
            network: NetworkArgs {
                expose: vec!["8080".into()],
                ..NetworkArgs::default()
            },
            ..SandboxArgs::default()
        };
        let spec = args.to_spec("t", Language::Python).unwrap();
        assert_eq!(spec.network.mode(), NetworkMode::Ports);
    }

    #[test]
    fn a_shape_out_of_range_is_the_librarys_error_on_every_front_end() {
        let args = from_json(r#"{"memory_mib": 64}"#);
        let err = args.to_spec("t", Language::Python).unwrap_err();
        assert!(
            matches!(
                err,
                InputError::Invalid {
                    field: "memory_mib",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_json_image_alone_picks_its_language_and_boots_its_disk() {
        let args = from_json(r#"{"image": "python-data"}"#);
        assert_eq!(args.shape.image, Some(Image::PythonData));
        let language = args.shape.language(None, Language::Raw);
        assert_eq!(language, Language::Python);
        let spec = args.to_spec("t", language).unwrap();
        assert_eq!(spec.image(), Image::PythonData);
        assert_eq!(
            serde_json::to_value(&args).unwrap()["image"],
            "python-data",
            "the image round-trips under its JSON name"
        );
    }

    #[test]
    fn an_unknown_json_image_is_refused_listing_the_names() {
        let err = serde_json::from_str::<SandboxArgs>(r#"{"image": "r-data"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("python-data") && err.contains("raw"), "{err}");
    }

    #[test]
    fn an_image_contradicting_the_language_is_refused_naming_the_image() {
        let args = from_json(r#"{"image": "python-data"}"#);
        let asked = args
            .shape
            .language(Some(Language::Javascript), Language::Python);
        let err = args.to_spec("t", asked).unwrap_err();
        assert!(
            matches!(err, InputError::Invalid { field: "image", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("python-data runs python"), "{err}");
        let own = from_json(r#"{"image": "javascript"}"#);
        let spec = own.to_spec("t", Language::Javascript).unwrap();
        assert_eq!(spec.shape.image, None, "a language's own image is no extra");
    }

    #[test]
    fn lifetimes_default_to_the_sessions_and_apply_as_durations() {
        let lifetime: LifetimeArgs = serde_json::from_str(r#"{"idle_timeout_s": 5}"#).unwrap();
        assert_eq!(lifetime.max_lifetime_s, DEFAULT_MAX_LIFETIME_S);
        let mut options = crate::SessionOptions::new(Language::Raw);
        lifetime.apply(&mut options);
        assert_eq!(options.idle_timeout, Duration::from_secs(5));
        assert_eq!(options.max_lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn absent_network_is_left_out_when_serialized() {
        let json = serde_json::to_value(SandboxArgs::default()).unwrap();
        assert!(json.get("network").is_none(), "{json}");
        assert_eq!(json["memory_mib"], 512);
    }

    #[test]
    fn the_json_schema_names_the_rest_fields_and_hides_the_cli_only_one() {
        let schema = serde_json::to_value(schemars::schema_for!(SandboxArgs)).unwrap();
        let properties = &schema["properties"];
        for field in ["image", "memory_mib", "cpus", "network", "packages"] {
            assert!(properties.get(field).is_some(), "{field} in {schema}");
        }
        let network = serde_json::to_value(schemars::schema_for!(NetworkArgs)).unwrap();
        assert!(
            network["properties"].get("allow_domains").is_some(),
            "{network}"
        );
        assert!(network["properties"].get("egress").is_none(), "{network}");
    }

    #[test]
    fn the_json_schema_bounds_are_the_ones_validation_enforces() {
        let schema = serde_json::to_value(schemars::schema_for!(SandboxArgs)).unwrap();
        let bounds = |field: &str| {
            let p = &schema["properties"][field];
            (
                p["minimum"].as_u64().unwrap(),
                p["maximum"].as_u64().unwrap(),
            )
        };
        let memory = crate::spec::MEMORY_MIB_RANGE;
        let vcpus = crate::spec::VCPUS_RANGE;
        assert_eq!(
            bounds("memory_mib"),
            (u64::from(*memory.start()), u64::from(*memory.end()))
        );
        assert_eq!(
            bounds("cpus"),
            (u64::from(*vcpus.start()), u64::from(*vcpus.end()))
        );
        let lifetime = serde_json::to_value(schemars::schema_for!(LifetimeArgs)).unwrap();
        let max = crate::session::MAX_SESSION_LIFETIME.as_secs();
        for field in ["idle_timeout_s", "max_lifetime_s"] {
            let p = &lifetime["properties"][field];
            assert_eq!(
                (p["minimum"].as_u64(), p["maximum"].as_u64()),
                (Some(1), Some(max)),
                "{field}"
            );
        }
    }

    #[cfg(feature = "clap")]
    mod cli {
        use super::*;
        use clap::Parser;

        #[derive(Debug, Parser)]
        struct Cmd {
            /// A positional after the options, as `airlock run` has.
            code: Option<String>,
            #[command(flatten)]
            sandbox: SandboxArgs,
            #[command(flatten)]
            lifetime: LifetimeArgs,
        }

        fn parse(args: &[&str]) -> Cmd {
            Cmd::try_parse_from(std::iter::once("airlock").chain(args.iter().copied())).unwrap()
        }

        #[test]
        fn no_flags_give_the_same_defaults_as_an_empty_json_body() {
            let cmd = parse(&[]);
            assert_eq!(cmd.sandbox, SandboxArgs::default());
            assert_eq!(cmd.lifetime, LifetimeArgs::default());
        }

        #[test]
        fn the_cli_keeps_its_flag_names() {
            let cmd = parse(&[
                "-m",
                "256",
                "--cpus",
                "2",
                "--network",
                "--allow-domain",
                "example.com",
                "--expose",
                "8080",
                "--packages",
                "six==1.16.0",
                "--idle-timeout",
                "5",
                "--max-lifetime",
                "60",
            ]);
            assert_eq!(
                cmd.sandbox.shape,
                ShapeArgs {
                    image: None,
                    memory_mib: 256,
                    cpus: 2,
                    disk_mib: DEFAULT_DISK_MIB,
                }
            );
            assert!(cmd.sandbox.network.egress);
            assert_eq!(
                cmd.sandbox.network.allow_domains.as_deref(),
                Some(&["example.com".to_owned()][..])
            );
            assert_eq!(cmd.sandbox.network.expose, ["8080"]);
            assert_eq!(cmd.sandbox.packages, ["six==1.16.0"]);
            assert_eq!(
                (cmd.lifetime.idle_timeout_s, cmd.lifetime.max_lifetime_s),
                (5, 60)
            );
            let twice = parse(&["--allow-domain", "a.org", "--allow-domain", "b.org", "x"]);
            assert_eq!(
                twice.sandbox.network.allow_domains.unwrap(),
                ["a.org", "b.org"]
            );
            assert!(
                Cmd::try_parse_from(["airlock", "--allow-domain"]).is_err(),
                "a domain is required"
            );
            let long = parse(&["--memory", "1024"]);
            assert_eq!(long.sandbox.shape.memory_mib, 1024);
        }

        #[test]
        fn the_image_flag_takes_names_and_refuses_unknown_ones_listing_them() {
            let data = parse(&["--image", "python-data"]);
            assert_eq!(data.sandbox.shape.image, Some(Image::PythonData));
            let err = Cmd::try_parse_from(["airlock", "--image", "r-data"])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("python, javascript, raw or python-data"),
                "{err}"
            );
        }
    }
}
