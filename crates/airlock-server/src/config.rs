//! The server's configuration: one typed struct with defaults, read from a
//! TOML file, overridden by flags, validated once ([`ServerConfig::validate`]).
//!
//! ```toml
//! listen = "127.0.0.1:7000"
//! keys_file = "/etc/airlock/keys.toml"
//! keys_reload_s = 10       # also reload the keys file when it changes (else SIGHUP only)
//! max_concurrent_vms = 4
//! drain_grace_s = 30
//! node_name = "airlock-0"  # in a cluster: carried by session ids (default: the host name)
//! refuse_when_full = false # true on a cluster's nodes: 503 node_full instead of queueing
//! log_format = "json"
//! secrets_key_file = "/etc/airlock/secrets.key"  # 32 bytes, hex (mode 0600)
//! [quotas]                 # every tenant's defaults (a key may override)
//! concurrent_runs = 4
//! vcpus = 8                # vCPUs of all a tenant's running VMs
//! vcpus_per_vm = 4
//! [tenancy]                # fair shares of the VM slots between tenants
//! share = 0.5              # one tenant holds at most this part while others wait
//! queue_timeout_s = 10     # then 429 with Retry-After
//! [expose]                 # network.expose: guest ports on host ports
//! enabled = false
//! address = "127.0.0.1"
//! max_per_vm = 4
//! fixed_ports = false      # true: any fixed host port (one local user only)
//! [uploads]                # the files sent with a run
//! max_bytes = 4194304
//! timeout_s = 60
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
//! max_stall_s = 10
//! [cache]                  # templates and package layers (docs/templates.md)
//! template_shapes = [{ image = "python", memory_mib = 512, vcpus = 1 }]
//! templates_max_mib = 4096
//! layers_max_mib = 16384
//! template_wait_s = 60
//! layer_wait_s = 900
//! [files]                  # one cap for session file reads and writes
//! max_bytes = 67108864
//! [mcp]                    # MCP over HTTP at /mcp
//! max_body_bytes = 8388608
//! max_sessions_per_tenant = 16
//! max_read_file_bytes = 1048576
//! [egress]                 # what tenants' VMs may reach
//! allowed_patterns = ["*.github.com", "pypi.org"]
//! allow_documentation_ranges = false
//! [e2b]                    # E2B's protocol on a second listener (docs/e2b.md)
//! listen = "127.0.0.1:3000"
//! domain = "sandboxes.example.com"   # also route by Host: <port>-<id>.<domain>, over TLS
//! cert = "/etc/airlock/e2b.crt"      # *.<domain> (unset: a local CA under the cache)
//! key = "/etc/airlock/e2b.key"
//! default_timeout_s = 300
//! [e2b.templates]          # E2B template ids -> Airlock images (over the built-ins)
//! my-data = "python-data"
//! [mounts.roots]           # host folders tenants may mount (none by default)
//! "*" = ["/srv/datasets"]  # every tenant
//! team-a = ["/srv/team-a"]
//! ```

use crate::error::{Result, ServerError};
use crate::quota::Quotas;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A host name made into a node name: its first label, lowercased,
/// characters other than letters, digits and `-` replaced by `-`, cut to
/// [`airlock::MAX_NODE_NAME_LEN`], `-` trimmed from both ends; `node` when
/// nothing is left.
pub fn node_name_from_host(host: &str) -> String {
    let label = host.trim().split('.').next().unwrap_or_default();
    let mapped: String = label
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(airlock::MAX_NODE_NAME_LEN)
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "node".to_owned()
    } else {
        trimmed.to_owned()
    }
}

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
    /// With a keys file: also reload it whenever its content changed,
    /// checked every this many seconds (a Kubernetes Secret is updated in
    /// place); `None`: on SIGHUP only.
    pub keys_reload_s: Option<u64>,
    /// Largest JSON request body, in bytes (larger ones get 413).
    pub max_body_bytes: usize,
    /// The old spelling of `[files] max_bytes`, still read (a file that
    /// gives both is refused); never written.
    #[serde(skip_serializing)]
    pub max_file_bytes: Option<usize>,
    /// VMs at once on this host, all tenants together; less the warm
    /// pools' VMs, the slots tenants share fairly ([`TenancyConfig`]:
    /// more runs and sessions wait in their tenant's line up to
    /// `tenancy.queue_timeout_s`, then get 429). Default: the
    /// orchestrator's.
    pub max_concurrent_vms: Option<usize>,
    /// Longest wait of a boot for the orchestrator's own VM slot, in
    /// seconds (then 503 `overloaded`); the fair shares in front of it
    /// make it rare.
    pub queue_timeout_s: u64,
    /// After SIGTERM: how long running requests may go on before every VM
    /// is destroyed, in seconds.
    pub drain_grace_s: u64,
    /// This node's name in a cluster, carried by every session id
    /// (`s-<node>-<16 hex>`), every answer (`x-airlock-node`) and the
    /// readiness answer, so a proxy routes a session's calls to its node
    /// (`docs/deploy.md`). A DNS label (lowercase letters, digits, `-`;
    /// in Kubernetes the pod name). Default: the host name, made into one.
    pub node_name: Option<String>,
    /// New runs and sessions are refused at once with 503 `node_full`
    /// (`Retry-After: 1`) when every VM slot is taken, instead of waiting
    /// in their tenant's line: for a cluster's nodes, whose proxy then
    /// tries another node. Off by default (one host queues).
    pub refuse_when_full: bool,
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
    /// Memory templates and package layers: which shapes get a template,
    /// disk budgets, how long a request waits for another's build.
    pub cache: CacheConfig,
    /// Fair shares of the VM slots between tenants.
    pub tenancy: TenancyConfig,
    /// Whether and how tenants may expose guest ports on the host.
    pub expose: ExposeConfig,
    /// The files a run uploads.
    pub uploads: UploadLimits,
    /// Session files: one size cap for reads and writes.
    pub files: FileLimits,
    /// MCP over HTTP (`/mcp`): its body cap and sessions per tenant.
    pub mcp: McpLimits,
    /// What tenants' VMs may reach on the network.
    pub egress: EgressPolicy,
    /// The QEMU jail (`docs/security.md`, "The QEMU jail").
    pub jail: JailSection,
    /// The host folders tenants may mount (`mounts` of a sandbox).
    pub mounts: MountsConfig,
    /// The disk budget of each VM's console log (and of its QEMU log),
    /// in bytes: a guest printing without end keeps only its newest
    /// output.
    pub console_log_max_bytes: u64,
    /// E2B's protocol on a second listener (`docs/e2b.md`).
    pub e2b: E2bConfig,
}

/// The template ids every E2B listener knows, and their images: the
/// code-interpreter SDKs' default and the plain SDK's.
pub const E2B_BUILTIN_TEMPLATES: [(&str, &str); 2] =
    [("code-interpreter-v1", "python-data"), ("base", "raw")];

/// [`ServerConfig::e2b`]: the E2B listener (`docs/e2b.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct E2bConfig {
    /// Where to serve E2B's control plane and, by the `E2b-Sandbox-Id`
    /// and `E2b-Sandbox-Port` headers, its sandbox planes; unset: no E2B
    /// listener. The same keys (as `X-API-Key`), tenants and quotas as
    /// the main listener; a non-loopback address needs a keys file.
    pub listen: Option<SocketAddr>,
    /// E2B's host-name mode: a request whose `Host` is
    /// `<port>-<sandbox id>.<domain>` goes to that sandbox's port, as the
    /// headers would route it, and the listener also speaks TLS for
    /// `api.<domain>` and `*.<domain>` (a connection whose first byte is a
    /// TLS handshake; plain HTTP still works for the headers mode). Unset:
    /// headers only, plain HTTP.
    pub domain: Option<String>,
    /// The operator's certificate chain (PEM) for the domain's TLS: a
    /// wildcard `*.<domain>` plus `api.<domain>` (or `<domain>`) in its
    /// names. Unset: a local CA under the cache (`<cache>/e2b/`) signs a
    /// certificate per name, and its certificate is `<cache>/e2b/ca.pem`
    /// for clients to trust. Needs `domain` and `key`.
    pub cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of [`E2bConfig::cert`].
    pub key: Option<std::path::PathBuf>,
    /// E2B template ids and the Airlock image each names (`python-data`,
    /// `raw`, ...), over [`E2B_BUILTIN_TEMPLATES`].
    pub templates: std::collections::BTreeMap<String, String>,
    /// A sandbox's timeout when create names none, in seconds (E2B's 300).
    pub default_timeout_s: u64,
    /// Longest timeout create or set-timeout may give, in seconds (at
    /// most a day, a session's longest life).
    pub max_timeout_s: u64,
}

impl Default for E2bConfig {
    fn default() -> Self {
        Self {
            listen: None,
            domain: None,
            cert: None,
            key: None,
            templates: std::collections::BTreeMap::new(),
            default_timeout_s: 300,
            max_timeout_s: 24 * 3600,
        }
    }
}

impl E2bConfig {
    /// The image a template id names: the operator's map first, then the
    /// built-ins; `None` for an unknown id.
    pub fn template_image(&self, template_id: &str) -> Option<airlock::spec::Image> {
        let name = self
            .templates
            .get(template_id)
            .map(String::as_str)
            .or_else(|| {
                E2B_BUILTIN_TEMPLATES
                    .iter()
                    .find(|(id, _)| *id == template_id)
                    .map(|(_, image)| *image)
            })?;
        name.parse().ok()
    }

    /// The template id of `image`: the operator's first id for it, else
    /// the built-in one, else the image's name (a sandbox resumed after a
    /// restart has only its image).
    pub fn template_of(&self, image: airlock::spec::Image) -> String {
        self.templates
            .iter()
            .find(|(_, name)| name.as_str() == image.name())
            .map(|(id, _)| id.clone())
            .or_else(|| {
                E2B_BUILTIN_TEMPLATES
                    .iter()
                    .find(|(_, name)| *name == image.name())
                    .map(|(id, _)| (*id).to_owned())
            })
            .unwrap_or_else(|| image.name().to_owned())
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(domain) = &self.domain {
            let labels_ok = domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
            if !labels_ok || domain.len() > 253 {
                return Err(format!(
                    "e2b.domain {domain:?} is not a DNS name: give one like sandboxes.example.com (no scheme, port or trailing dot)"
                ));
            }
        }
        match (&self.cert, &self.key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "e2b.cert and e2b.key go together: give both (--e2b-cert and --e2b-key), or neither for the local CA"
                        .into(),
                );
            }
            (Some(_), Some(_)) if self.domain.is_none() => {
                return Err(
                    "e2b.cert is served for the domain's host names: give e2b.domain (--e2b-domain) too".into(),
                );
            }
            _ => {}
        }
        for (id, image) in &self.templates {
            if let Err(e) = image.parse::<airlock::spec::Image>() {
                return Err(format!("e2b.templates.{id}: {e}"));
            }
        }
        if self.default_timeout_s == 0 || self.default_timeout_s > self.max_timeout_s {
            return Err(format!(
                "e2b.default_timeout_s must be in 1..=e2b.max_timeout_s ({}), not {}",
                self.max_timeout_s, self.default_timeout_s
            ));
        }
        let day = airlock::MAX_SESSION_LIFETIME.as_secs();
        if self.max_timeout_s == 0 || self.max_timeout_s > day {
            return Err(format!(
                "e2b.max_timeout_s must be in 1..={day} (a session's longest life), not {}",
                self.max_timeout_s
            ));
        }
        Ok(())
    }
}

/// [`ServerConfig::cache`]: what tenants can make the host build and keep.
/// Without it every (image, memory, vCPUs, package list) a request picks
/// would build and keep a template of 48-200 MiB, and every package list
/// a layer of up to 4 GiB, for ever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// The shapes that get a memory template. A request rounds up to the
    /// smallest one of its image that holds its memory and vCPUs (within
    /// the tenant's memory quota), else it boots cold. Unset: each
    /// image's default shape (512 MiB, 1 vCPU) and the pools' shapes;
    /// `[]`: no templates but the pools'.
    pub template_shapes: Option<Vec<ShapeSpec>>,
    /// Disk budget of the memory templates, MiB: past it, after a build,
    /// the least recently used are removed (never one in use).
    pub templates_max_mib: u64,
    /// Disk budget of the package layers, MiB, as for the templates.
    pub layers_max_mib: u64,
    /// Seconds a request waits for another request's build of the same
    /// template before it boots cold.
    pub template_wait_s: u64,
    /// Seconds a request waits for another request's install of the same
    /// package list before it fails as busy (503 `install_busy`).
    pub layer_wait_s: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            template_shapes: None,
            templates_max_mib: 4096,
            layers_max_mib: 16384,
            template_wait_s: 60,
            layer_wait_s: 900,
        }
    }
}

/// [`ServerConfig::tenancy`]: how tenants share the host's VM slots
/// (`crate::fair`). The slots are `max_concurrent_vms` less the warm
/// pools' VMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenancyConfig {
    /// The part of the slots one tenant may hold while others wait (0 to
    /// 1; at least one slot). Free slots still go to a tenant past its
    /// share when no one else waits.
    pub share: f64,
    /// Seconds a run or a session waits for a slot in its tenant's line;
    /// then 429 `queue_timeout` with `Retry-After`.
    pub queue_timeout_s: u64,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        Self {
            share: 0.5,
            queue_timeout_s: 10,
        }
    }
}

/// One shape of [`CacheConfig::template_shapes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeSpec {
    /// The image (python, javascript, raw, python-data); its language
    /// comes with it.
    pub image: airlock::Image,
    /// Memory in MiB.
    #[serde(default = "default_pool_memory")]
    pub memory_mib: u32,
    /// vCPUs.
    #[serde(default = "default_pool_vcpus")]
    pub vcpus: u32,
    /// Workspace disk in MiB (0: none).
    #[serde(default = "default_disk_mib")]
    pub disk_mib: u32,
}

impl ShapeSpec {
    /// The machine shape.
    pub fn shape(&self) -> airlock::spec::MachineShape {
        airlock::spec::MachineShape {
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            disk_mib: self.disk_mib,
            ..airlock::spec::MachineShape::of_image(self.image)
        }
    }
}

/// [`ServerConfig::expose`]: `network.expose` of REST and MCP bodies,
/// guest ports served on host ports. Off by default: a tenant could
/// otherwise bind the server's ports (a database's, while it restarts).
/// The CLI is not concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExposeConfig {
    /// Whether tenants may expose ports at all (otherwise 403
    /// `expose_disabled`).
    pub enabled: bool,
    /// The host address exposed ports are bound on.
    pub address: std::net::IpAddr,
    /// Ports one VM may expose.
    pub max_per_vm: usize,
    /// Fixed host ports outside the ephemeral range are accepted too:
    /// for one local user only (`airlock mcp` sets it), never on a server
    /// tenants share.
    pub fixed_ports: bool,
}

impl Default for ExposeConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            max_per_vm: 4,
            fixed_ports: false,
        }
    }
}

/// The kernel's ephemeral port range when
/// `/proc/sys/net/ipv4/ip_local_port_range` cannot be read (Linux's
/// default).
pub const DEFAULT_EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

/// The kernel's ephemeral port range (`ip_local_port_range`), or
/// [`DEFAULT_EPHEMERAL_PORTS`]. Reads a small `/proc` file.
pub fn ephemeral_port_range() -> std::ops::RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
        .unwrap_or(DEFAULT_EPHEMERAL_PORTS)
}

fn parse_port_range(text: &str) -> Option<std::ops::RangeInclusive<u16>> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    let (low, high) = (parts.next()?.ok()?, parts.next()?.ok()?);
    (low <= high && low > 0).then_some(low..=high)
}

impl ExposeConfig {
    /// Applies the policy to a sandbox's network: none exposed passes;
    /// else exposing must be enabled, at most `max_per_vm` ports, a host
    /// port given only within `ephemeral` (else the server picks one);
    /// the ports are then bound on `address`.
    ///
    /// # Errors
    /// [`ServerError::ExposeDisabled`], [`ServerError::ExposeRefused`].
    pub fn apply(
        &self,
        network: &mut airlock::NetworkRequest,
        ephemeral: &std::ops::RangeInclusive<u16>,
    ) -> Result<()> {
        if network.exposes.is_empty() {
            return Ok(());
        }
        if !self.enabled {
            return Err(ServerError::ExposeDisabled);
        }
        if network.exposes.len() > self.max_per_vm {
            return Err(ServerError::ExposeRefused {
                message: format!(
                    "{} ports asked, at most {} per VM",
                    network.exposes.len(),
                    self.max_per_vm
                ),
            });
        }
        for expose in &network.exposes {
            let fixed = expose.host_port.filter(|p| !ephemeral.contains(p));
            if let Some(port) = fixed.filter(|_| !self.fixed_ports) {
                return Err(ServerError::ExposeRefused {
                    message: format!(
                        "host port {port} (guest port {}) is outside this host's ephemeral range {}-{}: \
                         give the guest port only and the server picks a free host port",
                        expose.guest_port,
                        ephemeral.start(),
                        ephemeral.end()
                    ),
                });
            }
        }
        network.expose_address = Some(self.address);
        Ok(())
    }
}

/// [`ServerConfig::egress`]: the operator's egress policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressPolicy {
    /// The domain patterns tenants may allowlist (`network.allow_domains`):
    /// each of a tenant's entries must be covered by one of them
    /// (`*.github.com` covers `api.github.com` and `*.api.github.com`;
    /// `pypi.org` only itself). Unset: any valid entry. The language's
    /// default registries (`network: {}`) are not the tenant's choice and
    /// are always allowed. A wildcard over a public suffix (`*.com`,
    /// `*.co.uk`, `*`) is refused here and from tenants alike.
    pub allowed_patterns: Option<Vec<String>>,
    /// Let the egress proxy connect to documentation addresses
    /// (`192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`),
    /// refused by default: for hosts whose DNS answers public names with
    /// them (a sandboxed development gateway). Also
    /// `$AIRLOCK_EGRESS_ALLOW_DOC_RANGES=1`.
    pub allow_documentation_ranges: bool,
}

impl EgressPolicy {
    /// The operator's patterns, parsed; `None` when unset.
    ///
    /// # Errors
    /// The first pattern that is not a domain or a `*.domain` below a
    /// public suffix, with why.
    pub fn patterns(
        &self,
    ) -> std::result::Result<Option<Vec<airlock_gvproxy::DomainPattern>>, String> {
        self.allowed_patterns
            .as_deref()
            .map(|patterns| {
                patterns
                    .iter()
                    .map(|p| {
                        airlock_gvproxy::DomainPattern::parse(p)
                            .map_err(|e| format!("egress.allowed_patterns: {e}"))
                    })
                    .collect()
            })
            .transpose()
    }

    /// Checks a tenant's `allow_domains` against the operator's patterns.
    ///
    /// # Errors
    /// [`ServerError::EgressNotAllowed`] naming the first entry no pattern
    /// covers, and the patterns; [`ServerError::BadRequest`] for an entry
    /// that is no valid pattern (a wildcard over a public suffix among
    /// them).
    pub fn check_tenant_domains(&self, domains: &[String]) -> Result<()> {
        let Some(allowed) = self
            .patterns()
            .map_err(|e| ServerError::internal("read the egress policy", e))?
        else {
            return Ok(());
        };
        for domain in domains {
            let pattern = airlock_gvproxy::DomainPattern::parse(domain)
                .map_err(|e| ServerError::bad_request(format!("network.allow_domains: {e}")))?;
            if !allowed.iter().any(|a| a.covers(&pattern)) {
                return Err(ServerError::EgressNotAllowed {
                    message: format!(
                        "network.allow_domains: {domain:?} is outside what this server allows ({})",
                        self.allowed_patterns
                            .as_deref()
                            .unwrap_or_default()
                            .join(", ")
                    ),
                });
            }
        }
        Ok(())
    }
}

/// [`ServerConfig::uploads`]: the files sent inline with a run
/// (`files` of `POST /v1/runs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadLimits {
    /// Their decoded bytes, all together (more: 413
    /// `uploads_too_large`).
    pub max_bytes: usize,
    /// Seconds to write them all into the VM (more: 408
    /// `upload_timeout`).
    pub timeout_s: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            max_bytes: 4 << 20,
            timeout_s: 60,
        }
    }
}

/// [`ServerConfig::files`]: the one size cap of a session's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileLimits {
    /// Largest file a tenant may write into a session (`PUT`, MCP
    /// `write_file`) or read from one (`GET`), in bytes: a larger upload
    /// gets 413 before its body is read past the cap, a larger read fails
    /// with `file_too_large` (413) as soon as it passes the cap, so the
    /// server never holds more than this of one file.
    pub max_bytes: usize,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
        }
    }
}

/// [`ServerConfig::mcp`]: the limits of MCP over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpLimits {
    /// Largest JSON-RPC message posted to `/mcp`, in bytes (413).
    pub max_body_bytes: usize,
    /// Live MCP sessions of one tenant; one more `initialize` gets 429.
    pub max_sessions_per_tenant: usize,
    /// Largest file the `read_file` tool returns, in bytes (a larger one
    /// is a tool error pointing to `GET /v1/sessions/{id}/files/{path}`):
    /// a tool answer is JSON text (base64 for binary files) read by a
    /// model, not a transfer.
    pub max_read_file_bytes: usize,
}

impl Default for McpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 << 20,
            max_sessions_per_tenant: 16,
            max_read_file_bytes: 1 << 20,
        }
    }
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
    /// of templates' memory files (QEMU < 8.2), so servers sharing a
    /// cache dir must share it. Must be free on the host.
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
/// The largest cache budget accepted, MiB (1 PiB: "no budget" in practice,
/// and no overflow in bytes).
pub const MAX_CACHE_MIB: u64 = 1 << 30;

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
    /// Seconds the work may wait for a client that reads nothing; past
    /// it the stream is cut (`client_stalled`) and the work runs on to its
    /// end (its VM is not held past its timeout), `done` still coming.
    pub max_stall_s: u64,
}

impl StreamLimits {
    /// [`StreamLimits::max_stall_s`].
    pub fn max_stall(&self) -> Duration {
        Duration::from_secs(self.max_stall_s)
    }
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_events: 65_536,
            // Base64 of the VM's 8 MiB stdout and stderr caps, with room.
            max_bytes: 32 << 20,
            max_stall_s: 10,
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
    /// Their workspace disk in MiB (0: none).
    #[serde(default = "default_disk_mib")]
    pub disk_mib: u32,
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
fn default_disk_mib() -> u32 {
    airlock::spec::DEFAULT_DISK_MIB
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
            disk_mib: default_disk_mib(),
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
                disk_mib: self.disk_mib,
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
            max_file_bytes: None,
            max_concurrent_vms: None,
            queue_timeout_s: 120,
            drain_grace_s: 30,
            node_name: None,
            refuse_when_full: false,
            keys_reload_s: None,
            log_format: LogFormat::Text,
            restore_templates: true,
            quotas: Quotas::default(),
            pools: None,
            listener: ListenerConfig::default(),
            streams: StreamLimits::default(),
            cache: CacheConfig::default(),
            tenancy: TenancyConfig::default(),
            expose: ExposeConfig::default(),
            uploads: UploadLimits::default(),
            files: FileLimits::default(),
            mcp: McpLimits::default(),
            egress: EgressPolicy::default(),
            jail: JailSection::default(),
            mounts: MountsConfig::default(),
            console_log_max_bytes: airlock::DEFAULT_CONSOLE_LOG_MAX_BYTES,
            e2b: E2bConfig::default(),
        }
    }
}

/// [`ServerConfig::mounts`]: per tenant (`"*"`: every tenant), the host
/// dirs at or below which its sandboxes may mount folders. None by
/// default: a server refuses every mount (403 `mount_refused`) until its
/// operator lists roots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MountsConfig {
    /// Tenant (or `"*"`) to its roots (absolute dirs).
    pub roots: std::collections::BTreeMap<String, Vec<PathBuf>>,
}

impl MountsConfig {
    /// The roots of `tenant`: its own and those of `"*"`.
    pub fn roots_of<'a>(&'a self, tenant: &'a str) -> impl Iterator<Item = &'a PathBuf> + 'a {
        self.roots
            .iter()
            .filter(move |(name, _)| *name == "*" || *name == tenant)
            .flat_map(|(_, roots)| roots)
    }

    /// Checks that every root is an absolute path.
    ///
    /// # Errors
    /// A message naming the root.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (tenant, roots) in &self.roots {
            if let Some(root) = roots.iter().find(|r| !r.is_absolute()) {
                return Err(format!(
                    "mounts.roots.{tenant}: {} is not an absolute path",
                    root.display()
                ));
            }
        }
        Ok(())
    }

    /// Resolves each mount's host dir (symbolic links and `..` followed,
    /// blocking) and checks it is a directory at or below one of
    /// `tenant`'s roots (resolved the same way); the mounts then name the
    /// resolved dirs, which QEMU opens.
    ///
    /// # Errors
    /// [`ServerError::MountRefused`], naming the folder, without saying
    /// which roots exist.
    pub fn resolve(&self, tenant: &str, mounts: &mut [airlock::spec::Mount]) -> Result<()> {
        let roots: Vec<PathBuf> = self
            .roots_of(tenant)
            .filter_map(|root| std::fs::canonicalize(root).ok())
            .collect();
        for mount in mounts {
            let refused = || ServerError::MountRefused {
                message: format!(
                    "{} is not a folder this tenant may mount",
                    mount.host.display()
                ),
            };
            let real = std::fs::canonicalize(&mount.host).map_err(|_| refused())?;
            if !real.is_dir() || !roots.iter().any(|root| real.starts_with(root)) {
                return Err(refused());
            }
            mount.host = real;
        }
        Ok(())
    }
}

impl ServerConfig {
    /// The configuration of one local user's front end over the server's
    /// tools (`airlock mcp` on stdio): the defaults, but as the CLI
    /// behaves: exposed ports on 127.0.0.1 with any host port, vCPUs up
    /// to the library's range, uploads and the wait for a VM slot bounded
    /// only as the orchestrator bounds them.
    pub fn local_user(restore_templates: bool) -> Self {
        let defaults = Self::default();
        Self {
            restore_templates,
            quotas: Quotas {
                vcpus: u32::MAX,
                vcpus_per_vm: *airlock::spec::VCPUS_RANGE.end(),
                disk_mib: *airlock::spec::DISK_MIB_RANGE.end(),
                ..defaults.quotas
            },
            tenancy: TenancyConfig {
                queue_timeout_s: defaults.queue_timeout_s,
                ..TenancyConfig::default()
            },
            expose: ExposeConfig {
                enabled: true,
                max_per_vm: usize::from(u16::MAX),
                fixed_ports: true,
                ..ExposeConfig::default()
            },
            uploads: UploadLimits {
                max_bytes: usize::MAX,
                timeout_s: MAX_LISTENER_TIMEOUT_S,
            },
            ..defaults
        }
    }

    /// Parses a TOML configuration (unset fields take the defaults).
    ///
    /// # Errors
    /// [`ServerError::Config`] naming `path` and the bad field.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let bad = |message: String| ServerError::Config {
            source_name: path.display().to_string(),
            message,
        };
        let mut config: Self = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if let Some(old) = config.max_file_bytes.take() {
            if config.files != FileLimits::default() {
                return Err(bad(
                    "both max_file_bytes and [files] max_bytes are set: keep [files] max_bytes only"
                        .into(),
                ));
            }
            config.files.max_bytes = old;
        }
        Ok(config)
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
        self.mounts.validate().map_err(bad)?;
        if !self.listen.ip().is_loopback() && self.keys_file.is_none() {
            return Err(bad(format!(
                "listening on {} (not a loopback address) needs a keys file: anyone who can reach it could run code; \
                 give --keys-file (make keys with `airlock serve keys add`) or listen on 127.0.0.1",
                self.listen
            )));
        }
        if self.keys_reload_s == Some(0) {
            return Err(bad(
                "keys_reload_s must be at least 1 (leave it unset to reload on SIGHUP only)".into(),
            ));
        }
        if let Some(e2b) = self.e2b.listen {
            if !e2b.ip().is_loopback() && self.keys_file.is_none() {
                return Err(bad(format!(
                    "the E2B listener on {e2b} (not a loopback address) needs a keys file: \
                     give --keys-file (make keys with `airlock serve keys add --format e2b`) or listen on 127.0.0.1"
                )));
            }
            if e2b == self.listen && e2b.port() != 0 {
                return Err(bad(format!(
                    "e2b.listen {e2b} is the main listener's address: give the E2B listener a port of its own"
                )));
            }
        }
        self.e2b.validate().map_err(bad)?;
        for (name, value) in [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("files.max_bytes", self.files.max_bytes as u64),
            ("mcp.max_body_bytes", self.mcp.max_body_bytes as u64),
            (
                "mcp.max_sessions_per_tenant",
                self.mcp.max_sessions_per_tenant as u64,
            ),
            (
                "mcp.max_read_file_bytes",
                self.mcp.max_read_file_bytes as u64,
            ),
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
            ("streams.max_stall_s", self.streams.max_stall_s),
            ("cache.templates_max_mib", self.cache.templates_max_mib),
            ("cache.layers_max_mib", self.cache.layers_max_mib),
            ("cache.template_wait_s", self.cache.template_wait_s),
            ("cache.layer_wait_s", self.cache.layer_wait_s),
            ("quotas.vcpus", u64::from(self.quotas.vcpus)),
            ("quotas.vcpus_per_vm", u64::from(self.quotas.vcpus_per_vm)),
            ("quotas.disk_mib", u64::from(self.quotas.disk_mib)),
            ("quotas.paused_mib", u64::from(self.quotas.paused_mib)),
            ("quotas.paused_ttl_s", self.quotas.paused_ttl_s),
            ("tenancy.queue_timeout_s", self.tenancy.queue_timeout_s),
            ("expose.max_per_vm", self.expose.max_per_vm as u64),
            ("uploads.max_bytes", self.uploads.max_bytes as u64),
            ("uploads.timeout_s", self.uploads.timeout_s),
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
            (
                "cache.template_wait_s",
                self.cache.template_wait_s,
                MAX_LISTENER_TIMEOUT_S,
            ),
            (
                "cache.layer_wait_s",
                self.cache.layer_wait_s,
                MAX_LISTENER_TIMEOUT_S,
            ),
            (
                "cache.templates_max_mib",
                self.cache.templates_max_mib,
                MAX_CACHE_MIB,
            ),
            (
                "cache.layers_max_mib",
                self.cache.layers_max_mib,
                MAX_CACHE_MIB,
            ),
            (
                "tenancy.queue_timeout_s",
                self.tenancy.queue_timeout_s,
                MAX_LISTENER_TIMEOUT_S,
            ),
            (
                "uploads.timeout_s",
                self.uploads.timeout_s,
                MAX_LISTENER_TIMEOUT_S,
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
        if self.streams.max_stall_s >= self.listener.idle_timeout_s {
            return Err(bad(format!(
                "streams.max_stall_s ({}) must be below listener.idle_timeout_s ({}): the idle deadline would close a stalled stream's connection first",
                self.streams.max_stall_s, self.listener.idle_timeout_s
            )));
        }
        if !(self.tenancy.share > 0.0 && self.tenancy.share <= 1.0) {
            return Err(bad(format!(
                "tenancy.share ({}) must be above 0 and at most 1 (the part of the VM slots one tenant may hold while others wait)",
                self.tenancy.share
            )));
        }
        self.egress.patterns().map_err(bad)?;
        if self.max_concurrent_vms == Some(0) {
            return Err(bad("max_concurrent_vms must be above zero".into()));
        }
        self.orchestrator()
            .validate()
            .map_err(|e| bad(e.to_string()))
    }

    /// This node's name: `node_name`, else the host name made into a DNS
    /// label ([`node_name_from_host`]).
    pub fn node(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            node_name_from_host(&host)
        })
    }

    /// The orchestrator's configuration for this server.
    pub fn orchestrator(&self) -> airlock::Config {
        let mut config = airlock::Config {
            node_name: Some(self.node()),
            queue_timeout: Duration::from_secs(self.queue_timeout_s),
            restore_templates: self.restore_templates,
            console_log_max_bytes: self.console_log_max_bytes,
            ..airlock::Config::default()
        };
        // The variable (read by the default) or the file turns it on.
        config.egress_allow_documentation_ranges |= self.egress.allow_documentation_ranges;
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
        config.template_shapes = Some(self.template_shapes(&config.warm_pools));
        config.templates_budget = Some(self.cache.templates_max_mib << 20);
        config.layers_budget = Some(self.cache.layers_max_mib << 20);
        config.template_wait = Duration::from_secs(self.cache.template_wait_s);
        config.layer_wait = Duration::from_secs(self.cache.layer_wait_s);
        config
    }

    /// The shapes that get a memory template: the configured ones (or
    /// each image's default shape), and the pools' (sorted, once each).
    fn template_shapes(
        &self,
        pools: &[airlock::pool::PoolConfig],
    ) -> Vec<airlock::spec::MachineShape> {
        let mut shapes: Vec<airlock::spec::MachineShape> = match &self.cache.template_shapes {
            Some(shapes) => shapes.iter().map(ShapeSpec::shape).collect(),
            None => airlock::Image::ALL
                .into_iter()
                .map(airlock::spec::MachineShape::of_image)
                .collect(),
        };
        shapes.extend(pools.iter().map(|pool| pool.shape));
        shapes.sort_by_key(|s| (s.language, s.image, s.memory_mib, s.vcpus));
        shapes.dedup();
        shapes
    }

    /// The shape the sandbox `spec` runs at: the smallest of
    /// `template_shapes` (the scheduler's, [`airlock::Config::template_shapes`])
    /// of its image and vCPUs that holds its memory, up to
    /// `max_memory_mib` (the tenant's memory quota), so that it restores a
    /// template; its own when none does (it boots cold), when it has a
    /// network (it boots cold anyway) or when templates are off.
    pub fn run_shape(
        &self,
        spec: &airlock::SandboxSpec,
        template_shapes: Option<&[airlock::spec::MachineShape]>,
        max_memory_mib: u32,
    ) -> airlock::spec::MachineShape {
        let shape = spec.shape;
        let Some(shapes) = template_shapes else {
            return shape;
        };
        if !self.restore_templates || spec.network.mode() != airlock_gvproxy::NetworkMode::None {
            return shape;
        }
        airlock::source::round_up_shape(shape, shapes, max_memory_mib).unwrap_or(shape)
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

    /// The VM slots tenants share: the orchestrator's
    /// `max_concurrent_vms` less the warm pools' VMs (at least 1).
    pub fn tenant_slots(&self) -> usize {
        let orchestrator = self.orchestrator();
        let pooled: usize = orchestrator.warm_pools.iter().map(|p| p.size).sum();
        orchestrator
            .max_concurrent_vms
            .saturating_sub(pooled)
            .max(1)
    }

    /// The fair shares of [`ServerConfig::tenant_slots`].
    pub fn fair_share(&self) -> crate::fair::FairShare {
        crate::fair::FairShare::new(
            self.tenant_slots(),
            self.tenancy.share,
            Duration::from_secs(self.tenancy.queue_timeout_s),
        )
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
    fn a_host_name_becomes_a_valid_node_name() {
        assert_eq!(node_name_from_host("Worker_7.example.com\n"), "worker-7");
        assert_eq!(node_name_from_host("airlock-0"), "airlock-0");
        assert_eq!(node_name_from_host("--"), "node");
        assert_eq!(node_name_from_host(""), "node");
    }

    proptest::proptest! {
        #[test]
        fn any_host_name_gives_a_node_name_the_orchestrator_accepts(host in ".{0,80}") {
            let node = node_name_from_host(&host);
            proptest::prop_assert!(airlock::check_node_name(&node).is_ok(), "{host:?} -> {node:?}");
        }
    }

    #[test]
    fn a_bad_node_name_is_refused_naming_it() {
        let config = ServerConfig {
            node_name: Some("Not A Label".into()),
            ..ServerConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("Not A Label"), "{err}");
    }

    #[test]
    fn the_e2b_section_maps_templates_over_the_built_ins_and_is_checked() {
        let path = Path::new("server.toml");
        let check = |text: &str| ServerConfig::parse(path, text).and_then(|c| c.validate());
        let config = ServerConfig::parse(
            path,
            "[e2b]\nlisten = \"127.0.0.1:3000\"\n[e2b.templates]\nmine = \"python\"\nbase = \"python-data\"\n",
        )
        .unwrap();
        let e2b = &config.e2b;
        assert_eq!(
            e2b.template_image("mine"),
            Some(airlock::spec::Image::Python)
        );
        assert_eq!(
            e2b.template_image("base"),
            Some(airlock::spec::Image::PythonData)
        );
        assert_eq!(
            e2b.template_image("code-interpreter-v1"),
            Some(airlock::spec::Image::PythonData)
        );
        assert_eq!(e2b.template_image("nope"), None);
        let bad_image = "[e2b.templates]\nx = \"cobol\"\n";
        assert!(check(bad_image).is_err());
        let public = "[e2b]\nlisten = \"0.0.0.0:3000\"\n";
        let error = check(public).unwrap_err().to_string();
        assert!(error.contains("needs a keys file"), "{error}");
        let same = "listen = \"127.0.0.1:7000\"\n[e2b]\nlisten = \"127.0.0.1:7000\"\n";
        assert!(check(same).is_err());
        let long = "[e2b]\nmax_timeout_s = 100000\n";
        assert!(check(long).is_err());
        assert!(check("[e2b]\nlisten = \"127.0.0.1:0\"\n").is_ok());
        assert!(check("[e2b]\ndomain = \"sandboxes.example.com\"\n").is_ok());
        for bad in [
            "https://x.example",
            "x.example:443",
            "x..example",
            "-x.example",
            "",
        ] {
            let text = format!("[e2b]\ndomain = {bad:?}\n");
            let error = check(&text).unwrap_err().to_string();
            assert!(error.contains("is not a DNS name"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_mount_is_allowed_only_at_or_below_its_tenants_roots_and_named_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("shared");
        let other = dir.path().join("private");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::os::unix::fs::symlink(&other, root.join("escape")).unwrap();
        std::fs::write(root.join("file"), "x").unwrap();
        let config: ServerConfig = toml::from_str(&format!(
            "[mounts.roots]\nteam-a = [{:?}]\n",
            root.display().to_string()
        ))
        .unwrap();
        config.validate().unwrap();
        let mount = |host: &std::path::Path| airlock::spec::Mount {
            host: host.to_path_buf(),
            guest: "/mnt/x".into(),
            read_only: true,
        };
        let mut ok = [mount(&root.join("data/../data"))];
        config.mounts.resolve("team-a", &mut ok).unwrap();
        assert_eq!(
            ok[0].host,
            std::fs::canonicalize(root.join("data")).unwrap()
        );
        for refused in [
            ("team-b", root.join("data")),
            ("team-a", other.clone()),
            ("team-a", root.join("escape")),
            ("team-a", root.join("file")),
            ("team-a", root.join("missing")),
        ] {
            let mut mounts = [mount(&refused.1)];
            let err = config.mounts.resolve(refused.0, &mut mounts).unwrap_err();
            assert_eq!(err.kind(), "mount_refused", "{refused:?}");
        }
        let mut none = [mount(&root)];
        let err = ServerConfig::default()
            .mounts
            .resolve("team-a", &mut none)
            .unwrap_err();
        assert_eq!(err.kind(), "mount_refused");
    }

    #[test]
    fn relative_mount_roots_are_refused_at_start() {
        let config: ServerConfig = toml::from_str("[mounts.roots]\n\"*\" = [\"srv\"]\n").unwrap();
        assert!(config.validate().is_err());
    }

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

    fn spec_of(memory_mib: u32, vcpus: u32) -> airlock::SandboxSpec {
        let mut spec = airlock::SandboxSpec::new(airlock_protocol::Language::Python);
        spec.shape.memory_mib = memory_mib;
        spec.shape.vcpus = vcpus;
        spec
    }

    #[test]
    fn by_default_each_image_and_each_pool_shape_gets_a_template_and_budgets_are_set() {
        let config = ServerConfig {
            max_concurrent_vms: Some(4),
            pools: Some(vec![PoolSpec {
                memory_mib: 1024,
                ..PoolSpec::new(airlock_protocol::Language::Raw, 1)
            }]),
            ..ServerConfig::default()
        };
        let orchestrator = config.orchestrator();
        let shapes = orchestrator.template_shapes.unwrap();
        assert_eq!(shapes.len(), airlock::Image::ALL.len() + 1, "{shapes:?}");
        for image in airlock::Image::ALL {
            assert!(shapes.contains(&airlock::spec::MachineShape::of_image(image)));
        }
        assert!(shapes.iter().any(|s| s.memory_mib == 1024));
        assert_eq!(orchestrator.templates_budget, Some(4096 << 20));
        assert_eq!(orchestrator.layers_budget, Some(16384 << 20));
        assert_eq!(orchestrator.template_wait, Duration::from_secs(60));
    }

    #[test]
    fn a_request_rounds_up_to_a_template_shape_within_its_quota_or_keeps_its_own() {
        let config: ServerConfig = toml::from_str(
            "[cache]\ntemplate_shapes = [{ image = \"python\", memory_mib = 512 }, { image = \"python\", memory_mib = 1024, vcpus = 2 }]\n",
        )
        .unwrap();
        config.validate().unwrap();
        let orchestrator = config.orchestrator();
        let shapes = orchestrator.template_shapes.as_deref();
        let at = |memory, vcpus, quota| {
            let shape = config.run_shape(&spec_of(memory, vcpus), shapes, quota);
            (shape.memory_mib, shape.vcpus)
        };
        assert_eq!(at(256, 1, 2048), (512, 1));
        assert_eq!(at(512, 1, 2048), (512, 1));
        assert_eq!(at(600, 2, 2048), (1024, 2));
        assert_eq!(at(512, 2, 2048), (1024, 2));
        // More vCPUs are never given: a 1-vCPU request over 512 MiB boots
        // cold at its own shape.
        assert_eq!(at(600, 1, 2048), (600, 1));
        // Past the tenant's memory quota, or no shape holds it: its own.
        assert_eq!(at(600, 2, 768), (600, 2));
        assert_eq!(at(2048, 1, 4096), (2048, 1));
        // A VM with a network boots cold: not rounded.
        let mut networked = spec_of(256, 1);
        networked.network = airlock::NetworkRequest::from_flags(
            airlock_protocol::Language::Python,
            true,
            &["example.com".into()],
            &[],
        )
        .unwrap();
        assert_eq!(config.run_shape(&networked, shapes, 2048).memory_mib, 256);
        // Templates off: nothing is rounded.
        let cold = ServerConfig {
            restore_templates: false,
            ..config.clone()
        };
        assert_eq!(
            cold.run_shape(&spec_of(256, 1), shapes, 2048).memory_mib,
            256
        );
    }

    #[test]
    fn cache_budgets_and_waits_are_bounded_both_ways() {
        for toml in [
            "[cache]\ntemplates_max_mib = 0\n",
            "[cache]\nlayers_max_mib = 0\n",
            "[cache]\ntemplate_wait_s = 0\n",
            "[cache]\nlayer_wait_s = 999999999\n",
            "[cache]\ntemplates_max_mib = 9223372036854775807\n",
        ] {
            let config: ServerConfig = toml::from_str(toml).unwrap();
            assert!(config.validate().is_err(), "{toml}");
        }
        let unknown = toml::from_str::<ServerConfig>("[cache]\ntemplate_shape = []\n");
        assert!(unknown.is_err(), "a misspelt key is refused");
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
    fn tenancy_expose_and_upload_tables_parse_and_are_checked() {
        let config = ServerConfig::parse(
            Path::new("s.toml"),
            "max_concurrent_vms = 6\npools = []\n[tenancy]\nshare = 0.25\n[expose]\nenabled = true\naddress = \"10.0.0.1\"\n[uploads]\nmax_bytes = 10\n",
        )
        .unwrap();
        assert_eq!(config.tenancy.queue_timeout_s, 10);
        assert!(config.expose.enabled);
        assert_eq!(config.expose.max_per_vm, 4);
        assert_eq!(config.uploads.max_bytes, 10);
        assert_eq!(config.tenant_slots(), 6);
        assert_eq!(config.fair_share().share_cap(), 1);
        config.validate().unwrap();
        for share in [0.0, 1.5, f64::NAN] {
            let bad = ServerConfig {
                tenancy: TenancyConfig {
                    share,
                    ..TenancyConfig::default()
                },
                ..ServerConfig::default()
            };
            let msg = bad.validate().unwrap_err().to_string();
            assert!(msg.contains("tenancy.share"), "{msg}");
        }
        let pooled = ServerConfig {
            max_concurrent_vms: Some(4),
            ..ServerConfig::default()
        };
        assert_eq!(pooled.tenant_slots(), 3, "the default pool holds a slot");
    }

    #[test]
    fn the_expose_policy_refuses_by_default_and_bounds_ports_when_enabled() {
        let ephemeral = 32768..=60999;
        let request = |specs: &[&str]| {
            airlock::NetworkRequest::from_flags(
                airlock_protocol::Language::Python,
                false,
                &[],
                &specs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            )
            .unwrap()
        };
        let mut none = request(&[]);
        ExposeConfig::default()
            .apply(&mut none, &ephemeral)
            .unwrap();
        let mut one = request(&["8080"]);
        assert!(matches!(
            ExposeConfig::default().apply(&mut one, &ephemeral),
            Err(ServerError::ExposeDisabled)
        ));
        let enabled = ExposeConfig {
            enabled: true,
            address: "10.1.2.3".parse().unwrap(),
            max_per_vm: 2,
            fixed_ports: false,
        };
        enabled.apply(&mut one, &ephemeral).unwrap();
        assert_eq!(one.expose_address, Some(enabled.address));
        let mut inside = request(&["8080:40000"]);
        enabled.apply(&mut inside, &ephemeral).unwrap();
        for specs in [&["80:5432"][..], &["1", "2", "3"]] {
            let mut refused = request(specs);
            assert!(
                matches!(
                    enabled.apply(&mut refused, &ephemeral),
                    Err(ServerError::ExposeRefused { .. })
                ),
                "{specs:?}"
            );
            assert_eq!(refused.expose_address, None);
        }
        let local = ServerConfig::local_user(true);
        local.validate().unwrap();
        let mut fixed = request(&["80:5432"]);
        local.expose.apply(&mut fixed, &ephemeral).unwrap();
        assert_eq!(local.quotas.vcpus_per_vm, 16);
    }

    #[test]
    fn the_ephemeral_range_is_read_or_defaulted() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_range("9 1"), None);
        assert_eq!(parse_port_range("x"), None);
        let range = ephemeral_port_range();
        assert!(range.start() <= range.end());
    }

    #[test]
    fn documentation_ranges_are_refused_unless_the_file_or_the_variable_allows_them() {
        let from_env = std::env::var(airlock::ALLOW_DOC_RANGES_ENV).is_ok_and(|v| v == "1");
        assert_eq!(
            ServerConfig::default()
                .orchestrator()
                .egress_allow_documentation_ranges,
            from_env
        );
        let config = ServerConfig::parse(
            Path::new("s.toml"),
            "[egress]\nallow_documentation_ranges = true\nallowed_patterns = [\"*.github.com\"]\n",
        )
        .unwrap();
        assert!(config.orchestrator().egress_allow_documentation_ranges);
        config.validate().unwrap();
    }

    #[test]
    fn the_old_max_file_bytes_sets_the_one_file_cap_and_not_beside_the_new_one() {
        let old = ServerConfig::parse(Path::new("s.toml"), "max_file_bytes = 10\n").unwrap();
        assert_eq!(old.files.max_bytes, 10);
        let both = ServerConfig::parse(
            Path::new("s.toml"),
            "max_file_bytes = 10\n[files]\nmax_bytes = 20\n",
        );
        assert!(both.is_err());
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
