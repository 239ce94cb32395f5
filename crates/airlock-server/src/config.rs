//! The server's configuration: one typed struct with defaults, read from a
//! TOML file, overridden by flags, validated once ([`ServerConfig::validate`]).
//!
//! ```toml
//! listen = "127.0.0.1:7000"
//! keys_file = "/etc/airlock/keys.toml"
//! max_concurrent_vms = 4
//! drain_grace_s = 30
//! log_format = "json"
//! secrets_key_file = "/etc/airlock/secrets.key"  # 32 bytes, hex (mode 0600)
//! [quotas]                 # every tenant's defaults (a key may override)
//! concurrent_runs = 4
//! [[pools]]                # warm pools: paused VMs ready for runs and sessions
//! language = "python"
//! size = 1
//! [listener]               # connections (docs/security.md)
//! max_connections = 4096
//! max_connections_per_address = 256
//! header_read_timeout_s = 10
//! idle_timeout_s = 60
//! request_body_timeout_s = 120
//! [jail]                   # QEMU as an unprivileged uid when root (docs/security.md)
//! enabled = true
//! uid_base = 1900000000
//! uid_count = 65536
//! [streams]                # server-sent events of one request
//! max_events = 65536
//! max_bytes = 33554432
//! ```

use crate::error::{Result, ServerError};
use crate::quota::Quotas;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";

/// How request and server logs are written (to stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How the server runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where to listen for HTTP.
    pub listen: SocketAddr,
    /// The keys file (`airlock serve keys add`). Without one, every request
    /// acts for the local user, which is allowed on a loopback address only.
    pub keys_file: Option<PathBuf>,
    /// The key of the secrets store (`docs/secrets.md`): a file holding
    /// 32 random bytes as 64 hex digits or base64 (`openssl rand -hex
    /// 32`), mode 0600. Instead, `$AIRLOCK_SECRETS_KEY` may hold the key.
    /// Without either the server keeps no secrets (`/v1/secrets` answers
    /// 501).
    pub secrets_key_file: Option<PathBuf>,
    /// The secrets store (default `<cache>/server/secrets.json`).
    pub secrets_file: Option<PathBuf>,
    /// Largest JSON request body, in bytes (larger ones get 413).
    pub max_body_bytes: usize,
    /// Largest file uploaded to a session, in bytes (larger ones get 413).
    pub max_file_bytes: usize,
    /// VMs at once on this host, all tenants together (more runs wait up
    /// to `queue_timeout_s`, then get 503). Default: the orchestrator's.
    pub max_concurrent_vms: Option<usize>,
    /// Longest wait for a free VM slot, in seconds.
    pub queue_timeout_s: u64,
    /// After SIGTERM: how long running requests may go on before every VM
    /// is destroyed, in seconds.
    pub drain_grace_s: u64,
    /// Text or JSON logs.
    pub log_format: LogFormat,
    /// Runs without a network restore from memory templates instead of
    /// booting cold.
    pub restore_templates: bool,
    /// Every tenant's quotas, unless its key overrides them.
    pub quotas: Quotas,
    /// Warm pools, at most one per shape: paused VMs restored from the
    /// shape's memory template, taken by runs and sessions of that shape
    /// without a network or packages (the rest restore or boot on
    /// demand). Each pool VM holds a VM slot, so together they must leave
    /// one free. Unset: one python VM when there are at least two VM
    /// slots, else none; `[]`: none. Needs `restore_templates`.
    pub pools: Option<Vec<PoolSpec>>,
    /// Connections: how many, from whom, how long (`docs/security.md`).
    pub listener: ListenerConfig,
    /// Server-sent event streams: how much one stream may carry.
    pub streams: StreamLimits,
    /// The QEMU jail (`docs/security.md`, "The QEMU jail").
    pub jail: JailSection,
    /// The disk budget of each VM's console log (and of its QEMU log),
    /// in bytes: a guest printing without end keeps only its newest
    /// output.
    pub console_log_max_bytes: u64,
}

/// [`ServerConfig::jail`]: each VM's QEMU runs as a uid of its own from
/// this range, without capabilities, in a mount namespace showing only
/// its own files, whenever the server runs as root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JailSection {
    /// Jail QEMU when the server runs as root (`AIRLOCK_JAIL=0` also
    /// turns it off). Without root QEMU runs as the server's user.
    pub enabled: bool,
    /// The first uid (and gid) of the range; `uid_base - 1` is the group
    /// of templates' memory files. Must be free on the host.
    pub uid_base: u32,
    /// How many uids the range holds.
    pub uid_count: u32,
}

impl Default for JailSection {
    fn default() -> Self {
        Self {
            enabled: true,
            uid_base: airlock::jail::DEFAULT_UID_BASE,
            uid_count: airlock::jail::DEFAULT_UID_COUNT,
        }
    }
}

/// [`ServerConfig::listener`]: the limits of the HTTP listener, each
/// closing a connection that holds the server without using it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Open connections, all clients together; one more is closed at once
    /// (must fit the descriptor limit with room for the VMs).
    pub max_connections: usize,
    /// Open connections from one IP address; one more is closed at once.
    pub max_connections_per_address: usize,
    /// Seconds a request's head (request line and headers) may take to
    /// arrive: from the connection's accept for its first request, from
    /// the head's first byte for a later one.
    pub header_read_timeout_s: u64,
    /// Seconds a kept-alive connection may wait for its next request, and
    /// a response may wait for a client that reads nothing.
    pub idle_timeout_s: u64,
    /// Seconds a request's body may take to arrive, from its head.
    pub request_body_timeout_s: u64,
}

/// The largest listener deadline accepted, in seconds (a day).
pub const MAX_LISTENER_TIMEOUT_S: u64 = 86_400;
/// The largest connection cap accepted.
pub const MAX_LISTENER_CONNECTIONS: u64 = 1_000_000;

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_address: 256,
            header_read_timeout_s: 10,
            idle_timeout_s: 60,
            request_body_timeout_s: 120,
        }
    }
}

impl ListenerConfig {
    /// [`ListenerConfig::header_read_timeout_s`].
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_s)
    }

    /// [`ListenerConfig::idle_timeout_s`].
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }

    /// [`ListenerConfig::request_body_timeout_s`].
    pub fn request_body_timeout(&self) -> Duration {
        Duration::from_secs(self.request_body_timeout_s)
    }
}

/// [`ServerConfig::streams`]: the caps of one server-sent event stream
/// (a streamed run or exec). Past either, one `cut` event says so and no
/// more output or result events follow; the `done` event still carries
/// the whole answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamLimits {
    /// Output and result events of one stream.
    pub max_events: usize,
    /// Bytes of those events' data, all together.
    pub max_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_events: 65_536,
            // Base64 of the VM's 8 MiB stdout and stderr caps, with room.
            max_bytes: 32 << 20,
        }
    }
}

/// One warm pool of [`ServerConfig::pools`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// The language of the pool's VMs.
    pub language: airlock_protocol::Language,
    /// Their image, when not the language's own (`python-data`): a
    /// request of another image does not use the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<airlock::Image>,
    /// Their memory in MiB (a request of another size does not use the
    /// pool).
    #[serde(default = "default_pool_memory")]
    pub memory_mib: u32,
    /// Their vCPUs.
    #[serde(default = "default_pool_vcpus")]
    pub vcpus: u32,
    /// VMs kept waiting.
    #[serde(default = "default_pool_size")]
    pub size: usize,
    /// A VM waiting longer than this (seconds) is replaced.
    #[serde(default = "default_pool_max_idle")]
    pub max_idle_s: u64,
}

fn default_pool_memory() -> u32 {
    airlock::DEFAULT_MEMORY_MIB
}
fn default_pool_vcpus() -> u32 {
    1
}
fn default_pool_size() -> usize {
    1
}
fn default_pool_max_idle() -> u64 {
    600
}

impl PoolSpec {
    /// A pool of `size` VMs of `language` at the default shape.
    pub fn new(language: airlock_protocol::Language, size: usize) -> Self {
        Self {
            language,
            image: None,
            memory_mib: default_pool_memory(),
            vcpus: default_pool_vcpus(),
            size,
            max_idle_s: default_pool_max_idle(),
        }
    }

    /// Parses a `--pool` flag: `IMAGE[:SIZE]` (python, javascript, raw,
    /// python-data; a language names its own image).
    ///
    /// # Errors
    /// A message naming the bad part.
    pub fn parse_flag(text: &str) -> std::result::Result<Self, String> {
        let (language, size) = match text.split_once(':') {
            Some((language, size)) => (
                language,
                size.parse::<usize>().map_err(|_| {
                    format!("{size:?} is not a pool size (IMAGE[:SIZE], e.g. python:2)")
                })?,
            ),
            None => (text, default_pool_size()),
        };
        let image: airlock::Image = language.parse().map_err(|e| format!("{e}"))?;
        Ok(Self {
            image: (!image.is_language_default()).then_some(image),
            ..Self::new(image.language(), size)
        })
    }

    fn pool_config(&self) -> airlock::pool::PoolConfig {
        airlock::pool::PoolConfig {
            shape: airlock::template::TemplateShape {
                language: self.language,
                image: self.image,
                memory_mib: self.memory_mib,
                vcpus: self.vcpus,
            },
            size: self.size,
            max_idle: Duration::from_secs(self.max_idle_s),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            keys_file: None,
            secrets_key_file: None,
            secrets_file: None,
            max_body_bytes: 8 << 20,
            max_file_bytes: 64 << 20,
            max_concurrent_vms: None,
            queue_timeout_s: 120,
            drain_grace_s: 30,
            log_format: LogFormat::Text,
            restore_templates: true,
            quotas: Quotas::default(),
            pools: None,
            listener: ListenerConfig::default(),
            streams: StreamLimits::default(),
            jail: JailSection::default(),
            console_log_max_bytes: airlock::DEFAULT_CONSOLE_LOG_MAX_BYTES,
        }
    }
}

impl ServerConfig {
    /// Parses a TOML configuration (unset fields take the defaults).
    ///
    /// # Errors
    /// [`ServerError::Config`] naming `path` and the bad field.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| ServerError::Config {
            source_name: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a TOML configuration file.
    ///
    /// # Errors
    /// [`ServerError::Config`] when it cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ServerError::Config {
            source_name: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// Checks the values: a non-loopback address needs a keys file, limits
    /// are above zero.
    ///
    /// # Errors
    /// [`ServerError::Config`] naming the value and the fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| ServerError::Config {
            source_name: "settings".into(),
            message,
        };
        if !self.listen.ip().is_loopback() && self.keys_file.is_none() {
            return Err(bad(format!(
                "listening on {} (not a loopback address) needs a keys file: anyone who can reach it could run code; \
                 give --keys-file (make keys with `airlock serve keys add`) or listen on 127.0.0.1",
                self.listen
            )));
        }
        for (name, value) in [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_file_bytes", self.max_file_bytes as u64),
            ("queue_timeout_s", self.queue_timeout_s),
            (
                "quotas.concurrent_runs",
                u64::from(self.quotas.concurrent_runs),
            ),
            (
                "quotas.requests_per_minute",
                u64::from(self.quotas.requests_per_minute),
            ),
            ("quotas.timeout_s", self.quotas.timeout_s),
            (
                "listener.max_connections",
                self.listener.max_connections as u64,
            ),
            (
                "listener.max_connections_per_address",
                self.listener.max_connections_per_address as u64,
            ),
            (
                "listener.header_read_timeout_s",
                self.listener.header_read_timeout_s,
            ),
            ("listener.idle_timeout_s", self.listener.idle_timeout_s),
            (
                "listener.request_body_timeout_s",
                self.listener.request_body_timeout_s,
            ),
            ("streams.max_events", self.streams.max_events as u64),
            ("streams.max_bytes", self.streams.max_bytes as u64),
        ] {
            if value == 0 {
                return Err(bad(format!("{name} must be above zero")));
            }
        }
        // Bounded above too: the deadlines are added to instants and to
        // each other, and a huge value ("off") must not overflow them.
        for (name, value, max) in [
            (
                "listener.header_read_timeout_s",
                self.listener.header_read_timeout_s,
                MAX_LISTENER_TIMEOUT_S,
            ),
            (
                "listener.idle_timeout_s",
                self.listener.idle_timeout_s,
                MAX_LISTENER_TIMEOUT_S,
            ),
            (
                "listener.request_body_timeout_s",
                self.listener.request_body_timeout_s,
                MAX_LISTENER_TIMEOUT_S,
            ),
            (
                "listener.max_connections",
                self.listener.max_connections as u64,
                MAX_LISTENER_CONNECTIONS,
            ),
        ] {
            if value > max {
                return Err(bad(format!(
                    "{name} ({value}) is above its largest value, {max}"
                )));
            }
        }
        if self.listener.max_connections_per_address > self.listener.max_connections {
            return Err(bad(format!(
                "listener.max_connections_per_address ({}) is above listener.max_connections ({}): lower it",
                self.listener.max_connections_per_address, self.listener.max_connections
            )));
        }
        if self.max_concurrent_vms == Some(0) {
            return Err(bad("max_concurrent_vms must be above zero".into()));
        }
        self.orchestrator()
            .validate()
            .map_err(|e| bad(e.to_string()))
    }

    /// The orchestrator's configuration for this server.
    pub fn orchestrator(&self) -> airlock::Config {
        let mut config = airlock::Config {
            queue_timeout: Duration::from_secs(self.queue_timeout_s),
            restore_templates: self.restore_templates,
            console_log_max_bytes: self.console_log_max_bytes,
            ..airlock::Config::default()
        };
        config.jail = airlock::jail::JailConfig {
            // The environment's AIRLOCK_JAIL=0 turns it off too.
            enabled: self.jail.enabled && config.jail.enabled,
            uid_base: self.jail.uid_base,
            uid_count: self.jail.uid_count,
        };
        if let Some(n) = self.max_concurrent_vms {
            config.max_concurrent_vms = n;
            config.overlay_pool_target = n.min(8);
        }
        if self.restore_templates {
            config.warm_pools = match &self.pools {
                Some(pools) => pools.iter().map(PoolSpec::pool_config).collect(),
                None if config.max_concurrent_vms >= 2 => {
                    vec![PoolSpec::new(airlock_protocol::Language::Python, 1).pool_config()]
                }
                None => Vec::new(),
            };
        }
        config
    }

    /// The secrets store of this configuration, its key from
    /// `secrets_key_file` or `env_key` (the value of
    /// `$AIRLOCK_SECRETS_KEY`); `None` without a key. Blocking (it reads
    /// and checks the store).
    ///
    /// # Errors
    /// [`ServerError::Secrets`]: a bad key, or one that does not open the
    /// store.
    pub fn secret_store(
        &self,
        env_key: Option<&str>,
    ) -> Result<Option<crate::secrets::SecretStore>> {
        let Some(key) = crate::secrets::SecretsKey::of(self.secrets_key_file.as_deref(), env_key)?
        else {
            return Ok(None);
        };
        let path = self
            .secrets_file
            .clone()
            .unwrap_or_else(crate::secrets::default_secrets_file);
        crate::secrets::SecretStore::open(path, key).map(Some)
    }

    /// The grace after SIGTERM.
    pub fn drain_grace(&self) -> Duration {
        Duration::from_secs(self.drain_grace_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pool_is_one_python_vm_when_two_slots_allow_it() {
        let mut config = ServerConfig {
            max_concurrent_vms: Some(4),
            ..ServerConfig::default()
        };
        let pools = config.orchestrator().warm_pools;
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].shape.language, airlock_protocol::Language::Python);
        assert_eq!(pools[0].size, 1);
        config.max_concurrent_vms = Some(1);
        assert!(config.orchestrator().warm_pools.is_empty());
        assert!(config.validate().is_ok());
        config.pools = Some(vec![PoolSpec::new(airlock_protocol::Language::Raw, 1)]);
        assert!(
            config.validate().is_err(),
            "an explicit pool that fills every slot is refused"
        );
        config.max_concurrent_vms = Some(4);
        config.restore_templates = false;
        assert!(
            config.orchestrator().warm_pools.is_empty(),
            "--cold keeps no pool"
        );
    }

    #[test]
    fn pool_flags_parse_language_and_size() {
        let spec = PoolSpec::parse_flag("javascript:3").unwrap();
        assert_eq!(spec.language, airlock_protocol::Language::Javascript);
        assert_eq!(spec.size, 3);
        assert_eq!(PoolSpec::parse_flag("py").unwrap().size, 1);
        assert!(PoolSpec::parse_flag("cobol:1").is_err());
        assert!(PoolSpec::parse_flag("python:x").is_err());
    }

    #[test]
    fn a_data_image_pool_is_a_python_pool_of_its_own_shape() {
        let spec = PoolSpec::parse_flag("python-data:2").unwrap();
        assert_eq!(spec.language, airlock_protocol::Language::Python);
        assert_eq!(spec.image, Some(airlock::Image::PythonData));
        let shape = spec.pool_config().shape;
        assert_eq!(shape.image(), airlock::Image::PythonData);
        assert_ne!(
            shape,
            PoolSpec::new(airlock_protocol::Language::Python, 2)
                .pool_config()
                .shape
        );
        assert_eq!(PoolSpec::parse_flag("python").unwrap().image, None);
        let toml: PoolSpec =
            toml::from_str("language = \"python\"\nimage = \"python-data\"").unwrap();
        assert_eq!(toml.image, Some(airlock::Image::PythonData));
    }

    #[test]
    fn the_defaults_listen_on_loopback_and_are_valid() {
        let config = ServerConfig::default();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        config.validate().unwrap();
    }

    #[test]
    fn a_public_address_without_keys_is_refused_with_the_fix() {
        let config = ServerConfig {
            listen: "0.0.0.0:7000".parse().unwrap(),
            ..ServerConfig::default()
        };
        let msg = config.validate().unwrap_err().to_string();
        assert!(msg.contains("--keys-file"), "{msg}");
        let with_keys = ServerConfig {
            keys_file: Some("/k.toml".into()),
            ..config
        };
        with_keys.validate().unwrap();
    }

    #[test]
    fn a_file_sets_only_what_it_names() {
        let config = ServerConfig::parse(
            Path::new("s.toml"),
            "listen = \"127.0.0.1:9\"\nlog_format = \"json\"\n[quotas]\nconcurrent_runs = 1\nlive_sessions = 1\nmemory_mib = 256\ntimeout_s = 5\nrequests_per_minute = 10\n",
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.quotas.concurrent_runs, 1);
        assert_eq!(config.drain_grace_s, ServerConfig::default().drain_grace_s);
    }

    #[test]
    fn unknown_fields_and_zero_limits_are_refused() {
        let err = ServerConfig::parse(Path::new("s.toml"), "listn = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("s.toml"), "{err}");
        let zero = ServerConfig {
            max_body_bytes: 0,
            ..ServerConfig::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn the_jail_and_the_console_budget_reach_the_orchestrator_and_are_checked() {
        let config = ServerConfig::parse(
            Path::new("s.toml"),
            "console_log_max_bytes = 1048576\n[jail]\nenabled = false\nuid_base = 500000\n",
        )
        .unwrap();
        let orchestrator = config.orchestrator();
        assert!(!orchestrator.jail.enabled);
        assert_eq!(orchestrator.jail.uid_base, 500_000);
        assert_eq!(
            orchestrator.jail.uid_count,
            airlock::jail::DEFAULT_UID_COUNT
        );
        assert_eq!(orchestrator.console_log_max_bytes, 1 << 20);
        config.validate().unwrap();
        assert!(ServerConfig::default().jail.enabled, "on by default");
        let mut bad = ServerConfig::default();
        bad.jail.uid_base = 0;
        assert!(bad.validate().unwrap_err().to_string().contains("jail"));
        let tiny = ServerConfig {
            console_log_max_bytes: 10,
            ..ServerConfig::default()
        };
        let err = tiny.validate().unwrap_err().to_string();
        assert!(err.contains("console_log_max_bytes"), "{err}");
    }

    #[test]
    fn listener_deadlines_and_caps_too_large_to_add_are_refused() {
        let mut config = ServerConfig::default();
        config.listener.idle_timeout_s = u64::MAX;

        let err = config.validate().unwrap_err().to_string();

        assert!(err.contains("listener.idle_timeout_s"), "{err}");
        assert!(err.contains("86400"), "{err}");
        let mut config = ServerConfig::default();
        config.listener.max_connections = usize::MAX;
        config.listener.max_connections_per_address = 1;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("listener.max_connections"), "{err}");
        config.listener.max_connections = 86_400;
        config.validate().unwrap();
    }

    #[test]
    fn listener_limits_parse_default_and_refuse_zero_or_inverted_caps() {
        let config = ServerConfig::parse(
            Path::new("s.toml"),
            "[listener]\nmax_connections = 100\nmax_connections_per_address = 10\nheader_read_timeout_s = 3\n[streams]\nmax_events = 7\n",
        )
        .unwrap();
        assert_eq!(config.listener.max_connections, 100);
        assert_eq!(
            config.listener.header_read_timeout(),
            Duration::from_secs(3)
        );
        assert_eq!(
            config.listener.idle_timeout_s,
            ListenerConfig::default().idle_timeout_s
        );
        assert_eq!(config.streams.max_events, 7);
        config.validate().unwrap();
        let inverted = ServerConfig {
            listener: ListenerConfig {
                max_connections: 10,
                max_connections_per_address: 11,
                ..ListenerConfig::default()
            },
            ..ServerConfig::default()
        };
        let msg = inverted.validate().unwrap_err().to_string();
        assert!(msg.contains("max_connections_per_address"), "{msg}");
        for zero in [
            ListenerConfig {
                header_read_timeout_s: 0,
                ..ListenerConfig::default()
            },
            ListenerConfig {
                max_connections: 0,
                ..ListenerConfig::default()
            },
        ] {
            let config = ServerConfig {
                listener: zero,
                ..ServerConfig::default()
            };
            assert!(config.validate().is_err());
        }
        assert!(
            ServerConfig::parse(Path::new("s.toml"), "[listener]\nmax_conns = 1\n").is_err(),
            "unknown listener fields are refused"
        );
    }

    #[test]
    fn the_vm_limit_reaches_the_orchestrator() {
        let config = ServerConfig {
            max_concurrent_vms: Some(4),
            ..ServerConfig::default()
        };
        assert_eq!(config.orchestrator().max_concurrent_vms, 4);
        assert!(config.orchestrator().restore_templates);
    }
}
