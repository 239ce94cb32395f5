//! What gvproxy is told, rendered from a [`GvproxySpec`]: its command line,
//! the DNS zones and port forwards pushed over its API, and the YAML file of
//! versions that take `-config`. Pure: no file is written here.

use crate::policy::{DomainPattern, NetworkMode, NetworkPolicy};
use crate::{GvproxyError, GvproxyVersion};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The guest's MAC address: gvproxy's static DHCP lease gives it the
/// guest address. QEMU's virtio-net device must use it.
pub const GUEST_MAC: &str = "5a:94:ef:e4:0c:ee";

/// The MAC address of gvproxy's gateway.
pub const GATEWAY_MAC: &str = "5a:94:ef:e4:0c:dd";

/// The longest unix socket path (`sockaddr_un.sun_path` less its NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Default MTU of the virtual link.
pub const DEFAULT_MTU: u32 = 1500;

/// Where the host resolves what gvproxy's host address is translated to:
/// the loopback address of gvproxy's own network namespace, where the egress
/// proxy listens.
pub const NETNS_LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The files of one gvproxy, all in one directory dedicated to it (gvproxy
/// may write only there: see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GvproxyPaths {
    dir: PathBuf,
}

impl GvproxyPaths {
    /// Files under `dir` (absolute, used by this gvproxy only).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The HTTP API socket (`-listen`).
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// The socket QEMU's `-netdev stream` connects to (`-listen-qemu`).
    pub fn qemu_socket(&self) -> PathBuf {
        self.dir.join("qemu.sock")
    }

    /// gvproxy's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("gvproxy.pid")
    }

    /// gvproxy's own log (`-log-file`).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("gvproxy.log")
    }

    /// Where gvproxy's stdout and stderr go.
    pub fn output_file(&self) -> PathBuf {
        self.dir.join("gvproxy.out")
    }

    /// The YAML configuration (versions that take `-config`).
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("gvproxy.yaml")
    }

    /// The unix socket a guest port is exposed on.
    pub fn expose_socket(&self, guest_port: u16) -> PathBuf {
        self.dir.join(format!("port-{guest_port}.sock"))
    }
}

/// The addresses of the virtual network: a /24 whose `.1` is the gateway
/// (DNS, DHCP), `.2` the guest and `.254` the host address, which gvproxy
/// translates to 127.0.0.1 of its own network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing {
    network: Ipv4Addr,
}

impl Addressing {
    /// gvproxy's fixed network before `-config`: 192.168.127.0/24.
    pub const LEGACY: Self = Self {
        network: Ipv4Addr::new(192, 168, 127, 0),
    };

    /// A /24 in 10.0.0.0/8 chosen by a hash of the VM id, so parallel VMs
    /// get different subnets (65,536 choices; each gvproxy also has its own
    /// network namespace, so even equal subnets would not meet).
    pub fn for_vm(vm_id: &str) -> Self {
        let hash = Sha256::digest(vm_id.as_bytes());
        Self {
            network: Ipv4Addr::new(10, hash[0], hash[1], 0),
        }
    }

    /// What a gvproxy of `version` uses: [`Addressing::for_vm`] when it
    /// takes `-config`, else [`Addressing::LEGACY`].
    pub fn for_version(vm_id: &str, version: GvproxyVersion) -> Self {
        if version.takes_config_file() {
            Self::for_vm(vm_id)
        } else {
            Self::LEGACY
        }
    }

    fn host_part(self, last: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.network.octets();
        Ipv4Addr::new(a, b, c, last)
    }

    /// `a.b.c.0/24`.
    pub fn subnet(self) -> String {
        format!("{}/24", self.network)
    }

    /// The gateway (`.1`): DNS and DHCP server.
    pub fn gateway(self) -> Ipv4Addr {
        self.host_part(1)
    }

    /// The guest (`.2`), leased to [`GUEST_MAC`].
    pub fn guest(self) -> Ipv4Addr {
        self.host_part(2)
    }

    /// The host address (`.254`), translated to [`NETNS_LOOPBACK`].
    pub fn host(self) -> Ipv4Addr {
        self.host_part(254)
    }
}

/// Everything gvproxy needs for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GvproxySpec {
    /// The policy (its mode must have a network).
    pub policy: NetworkPolicy,
    /// The files.
    pub paths: GvproxyPaths,
    /// MTU of the virtual link (576..=65535).
    pub mtu: u32,
}

impl GvproxySpec {
    /// A spec with the default MTU.
    pub fn new(policy: NetworkPolicy, dir: impl Into<PathBuf>) -> Self {
        Self {
            policy,
            paths: GvproxyPaths::new(dir),
            mtu: DEFAULT_MTU,
        }
    }

    /// The VM id.
    pub fn vm_id(&self) -> &str {
        &self.policy.vm_id
    }

    /// Checks the policy, the mode, the MTU and the paths.
    ///
    /// # Errors
    /// Policy errors; [`GvproxyError::InvalidPolicy`] for mode `none`;
    /// [`GvproxyError::InvalidOptions`] for the MTU;
    /// [`GvproxyError::InvalidPath`] for a relative directory, one with
    /// characters a `unix://` URI cannot carry as is, or sockets over the
    /// unix path limit.
    pub fn validate(&self) -> Result<(), GvproxyError> {
        self.policy.validate()?;
        let vm_id = self.vm_id();
        if !self.policy.mode.has_network() {
            return Err(GvproxyError::InvalidPolicy {
                vm_id: vm_id.to_owned(),
                reason: "mode none has no network: do not start gvproxy".into(),
            });
        }
        if !(576..=65535).contains(&self.mtu) {
            return Err(GvproxyError::InvalidOptions {
                reason: format!("MTU {} is outside 576..=65535", self.mtu),
            });
        }
        let dir = self.paths.dir();
        let invalid = |field, path: &Path, reason: String| GvproxyError::InvalidPath {
            vm_id: vm_id.to_owned(),
            field,
            path: path.to_path_buf(),
            reason,
        };
        if !dir.is_absolute() {
            return Err(invalid(
                "gvproxy dir",
                dir,
                "is relative: pass an absolute path".into(),
            ));
        }
        let Some(text) = dir.to_str() else {
            return Err(invalid(
                "gvproxy dir",
                dir,
                "is not UTF-8: use a plain path".into(),
            ));
        };
        if let Some(bad) = text.chars().find(|c| {
            c.is_control() || c.is_whitespace() || matches!(c, '%' | '?' | '#' | '"' | '\\')
        }) {
            return Err(invalid(
                "gvproxy dir",
                dir,
                format!(
                    "holds {bad:?}, which gvproxy's unix:// URIs cannot carry: use a plain path"
                ),
            ));
        }
        let longest = self.paths.expose_socket(65535);
        let len = longest.as_os_str().len();
        if len > MAX_SOCKET_PATH_BYTES {
            return Err(invalid(
                "socket",
                &longest,
                format!(
                    "is {len} bytes, over the unix socket limit of {MAX_SOCKET_PATH_BYTES}: use a \
                     shorter work dir (e.g. under /tmp or $XDG_RUNTIME_DIR)"
                ),
            ));
        }
        Ok(())
    }

    /// The unix sockets of the exposed guest ports, in policy order.
    pub fn expose_sockets(&self) -> Vec<(u16, PathBuf)> {
        self.policy
            .exposes
            .iter()
            .map(|e| (e.guest_port, self.paths.expose_socket(e.guest_port)))
            .collect()
    }
}

fn unix_uri(path: &Path) -> String {
    format!("unix://{}", path.display())
}

/// gvproxy's arguments (without the program) for `version`.
///
/// Before `-config` (0.8.1): `-listen unix://API -listen-qemu unix://QEMU
/// -ssh-port -1 -mtu N -pid-file F -log-file F`. With it (0.8.8+):
/// `-config FILE`, the file being [`render_yaml`].
pub fn command_line(spec: &GvproxySpec, version: GvproxyVersion) -> Vec<OsString> {
    let paths = &spec.paths;
    let args: Vec<OsString> = if version.takes_config_file() {
        vec!["-config".into(), paths.config_file().into()]
    } else {
        vec![
            "-listen".into(),
            unix_uri(&paths.api_socket()).into(),
            "-listen-qemu".into(),
            unix_uri(&paths.qemu_socket()).into(),
            "-ssh-port".into(),
            "-1".into(),
            "-mtu".into(),
            spec.mtu.to_string().into(),
            "-pid-file".into(),
            paths.pid_file().into(),
            "-log-file".into(),
            paths.log_file().into(),
        ]
    };
    args
}

/// One DNS zone, as gvproxy's `POST /services/dns/add` and YAML read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsZone {
    /// The zone's suffix with a trailing dot; `""` matches every name.
    pub name: String,
    /// Its records.
    pub records: Vec<DnsRecord>,
    /// The answer for names of the zone without a record; `None` answers
    /// NXDOMAIN.
    #[serde(rename = "defaultIP", skip_serializing_if = "Option::is_none")]
    pub default_ip: Option<Ipv4Addr>,
}

/// One A record of a [`DnsZone`]: by exact name or by regular expression
/// (Go RE2 syntax, matched against the name without the zone suffix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsRecord {
    /// The exact name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The regular expression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regexp: Option<String>,
    /// The answer.
    pub ip: Ipv4Addr,
}

/// The record that answers `pattern` with `ip`: an exact name, or for
/// `*.base` the anchored, case-insensitive regexp
/// `(?i)^([a-z0-9-]+\.)+base$` (subdomains only, as
/// [`DomainPattern::matches`]).
pub fn dns_record(pattern: &DomainPattern, ip: Ipv4Addr) -> DnsRecord {
    if pattern.is_wildcard() {
        DnsRecord {
            name: None,
            regexp: Some(format!(
                r"(?i)^([a-z0-9-]+\.)+{}$",
                pattern.base().replace('.', r"\.")
            )),
            ip,
        }
    } else {
        DnsRecord {
            name: Some(pattern.base().to_owned()),
            regexp: None,
            ip,
        }
    }
}

/// The DNS zones of a policy: one zone named `""` (it matches every name)
/// holding a record per allowlisted pattern, all answering the host address
/// (so the guest's connections reach the egress proxy), and no default
/// address, so every other name is NXDOMAIN. In ports mode the zone has no
/// record: every name is NXDOMAIN.
///
/// gvproxy answers from the first zone whose suffix matches. Its built-in
/// zones before `-config` (`containers.internal.`, `docker.internal.`) stay
/// first and keep their names (`host.containers.internal` reaches the
/// egress proxy, which refuses it unless allowlisted); the zone pushed here
/// comes after them and catches everything else. Only A queries are
/// answered from zones; other types go to the resolver of gvproxy's empty
/// network namespace, which cannot be reached, and AAAA is never answered.
pub fn dns_zones(policy: &NetworkPolicy, addressing: Addressing) -> Vec<DnsZone> {
    let records = match policy.mode {
        NetworkMode::Allowlist => policy
            .allow
            .iter()
            .map(|p| dns_record(p, addressing.host()))
            .collect(),
        NetworkMode::None | NetworkMode::Ports => Vec::new(),
    };
    vec![DnsZone {
        name: String::new(),
        records,
        default_ip: None,
    }]
}

/// A `POST /services/forwarder/expose` request: gvproxy listens on the unix
/// socket `local` and forwards each connection to `remote` in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExposeRequest {
    /// The unix socket path.
    pub local: String,
    /// `tcp://GUEST_IP:PORT`.
    pub remote: String,
    /// Always `unix`.
    pub protocol: &'static str,
}

/// The forwards of a spec's exposed ports.
pub fn expose_requests(spec: &GvproxySpec, addressing: Addressing) -> Vec<ExposeRequest> {
    spec.expose_sockets()
        .into_iter()
        .map(|(port, socket)| ExposeRequest {
            local: socket.display().to_string(),
            remote: format!("tcp://{}:{port}", addressing.guest()),
            protocol: "unix",
        })
        .collect()
}

/// A YAML double-quoted scalar.
fn yaml_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The YAML `-config` file of gvproxy 0.8.8+ for `spec`.
///
/// Written by hand: the document is small and fixed in shape, every value
/// is double-quoted and escaped, and a YAML library would add a dependency for
/// no gain (the well-kept `serde_yaml` is no longer maintained).
///
/// It holds the API and QEMU sockets, pid and log files, and the `stack`:
/// subnet from [`Addressing::for_vm`], gateway, guest (device) and host
/// addresses, the host address translated to 127.0.0.1, the DNS zones of
/// [`dns_zones`], and the static DHCP lease of [`GUEST_MAC`]. Exposed ports
/// are listed in a comment only: `stack.forwards` listens on TCP or UDP
/// addresses, not unix sockets, so they are added over the API after start
/// (see [`expose_requests`]).
pub fn render_yaml(spec: &GvproxySpec, addressing: Addressing) -> String {
    let paths = &spec.paths;
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# gvproxy configuration of vm {} (airlock-gvproxy)",
        spec.vm_id()
    );
    let _ = writeln!(y, "log-level: info");
    let _ = writeln!(y, "listen:");
    let _ = writeln!(y, "  - {}", yaml_str(&unix_uri(&paths.api_socket())));
    let _ = writeln!(y, "interfaces:");
    let _ = writeln!(y, "  qemu: {}", yaml_str(&unix_uri(&paths.qemu_socket())));
    let _ = writeln!(
        y,
        "pid-file: {}",
        yaml_str(&paths.pid_file().display().to_string())
    );
    let _ = writeln!(
        y,
        "log-file: {}",
        yaml_str(&paths.log_file().display().to_string())
    );
    let _ = writeln!(y, "stack:");
    let _ = writeln!(y, "  mtu: {}", spec.mtu);
    let _ = writeln!(y, "  subnet: {}", yaml_str(&addressing.subnet()));
    let ip = |a: Ipv4Addr| yaml_str(&a.to_string());
    let _ = writeln!(y, "  gatewayIP: {}", ip(addressing.gateway()));
    let _ = writeln!(y, "  gatewayMacAddress: {}", yaml_str(GATEWAY_MAC));
    let _ = writeln!(y, "  deviceIP: {}", ip(addressing.guest()));
    let _ = writeln!(y, "  hostIP: {}", ip(addressing.host()));
    let _ = writeln!(y, "  dns:");
    for zone in dns_zones(&spec.policy, addressing) {
        let _ = writeln!(y, "    - name: {}", yaml_str(&zone.name));
        if zone.records.is_empty() {
            let _ = writeln!(y, "      records: []");
        } else {
            let _ = writeln!(y, "      records:");
        }
        for record in &zone.records {
            let (key, value) = match (&record.name, &record.regexp) {
                (Some(name), _) => ("name", name),
                (None, Some(regexp)) => ("regexp", regexp),
                (None, None) => continue,
            };
            let _ = writeln!(y, "        - {key}: {}", yaml_str(value));
            let _ = writeln!(y, "          ip: {}", ip(record.ip));
        }
        if let Some(default_ip) = zone.default_ip {
            let _ = writeln!(y, "      defaultIP: {}", ip(default_ip));
        }
    }
    let _ = writeln!(y, "  nat:");
    let _ = writeln!(y, "    {}: {}", ip(addressing.host()), ip(NETNS_LOOPBACK));
    let _ = writeln!(y, "  gatewayVirtualIPs:");
    let _ = writeln!(y, "    - {}", ip(addressing.host()));
    let _ = writeln!(y, "  dhcpStaticLeases:");
    let _ = writeln!(y, "    {}: {}", ip(addressing.guest()), yaml_str(GUEST_MAC));
    for request in expose_requests(spec, addressing) {
        let _ = writeln!(
            y,
            "# exposed over the API after start: {} -> {}",
            request.local, request.remote
        );
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Expose;

    fn spec(mode: NetworkMode) -> GvproxySpec {
        let mut policy = NetworkPolicy {
            vm_id: "vm-1".into(),
            mode,
            allow: vec![],
            exposes: vec![Expose::tcp(8080)],
        };
        if mode == NetworkMode::Allowlist {
            policy.allow = vec![
                DomainPattern::parse("pypi.org").unwrap(),
                DomainPattern::parse("*.example.com").unwrap(),
            ];
        }
        GvproxySpec::new(policy, "/run/airlock/vm-1/net")
    }

    #[test]
    fn valid_spec_passes() {
        assert!(spec(NetworkMode::Allowlist).validate().is_ok());
        assert!(spec(NetworkMode::Ports).validate().is_ok());
    }

    #[test]
    fn mode_none_is_refused() {
        let mut s = spec(NetworkMode::Ports);
        s.policy.exposes.clear();
        s.policy.mode = NetworkMode::None;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("do not start gvproxy"));
    }

    #[test]
    fn bad_paths_are_refused() {
        for dir in [
            "relative/dir",
            "/tmp/a b",
            "/tmp/a%20",
            "/tmp/a?b",
            "/tmp/a#b",
            "/tmp/a\nb",
        ] {
            let mut s = spec(NetworkMode::Ports);
            s.paths = GvproxyPaths::new(dir);
            assert!(s.validate().is_err(), "{dir:?} accepted");
        }
        let mut s = spec(NetworkMode::Ports);
        s.paths = GvproxyPaths::new(format!("/{}", "d".repeat(100)));
        let msg = s.validate().unwrap_err().to_string();
        assert!(msg.contains("unix socket limit"), "{msg}");
    }

    #[test]
    fn bad_mtu_is_refused() {
        let mut s = spec(NetworkMode::Ports);
        s.mtu = 100;
        assert!(s.validate().is_err());
    }

    #[test]
    fn legacy_addressing_is_gvproxys_fixed_network() {
        let a = Addressing::LEGACY;
        assert_eq!(a.subnet(), "192.168.127.0/24");
        assert_eq!(a.gateway(), Ipv4Addr::new(192, 168, 127, 1));
        assert_eq!(a.guest(), Ipv4Addr::new(192, 168, 127, 2));
        assert_eq!(a.host(), Ipv4Addr::new(192, 168, 127, 254));
        assert_eq!(
            Addressing::for_version("x", GvproxyVersion::new(0, 8, 1)),
            Addressing::LEGACY
        );
    }

    #[test]
    fn per_vm_subnets_are_stable_and_differ() {
        let a = Addressing::for_vm("vm-a");
        assert_eq!(a, Addressing::for_vm("vm-a"));
        assert!(a.subnet().starts_with("10."));
        let distinct: std::collections::BTreeSet<String> = (0..200)
            .map(|i| Addressing::for_vm(&format!("vm-{i}")).subnet())
            .collect();
        assert!(
            distinct.len() >= 199,
            "too many collisions: {}",
            distinct.len()
        );
    }

    #[test]
    fn wildcard_record_is_an_anchored_case_insensitive_regexp() {
        let r = dns_record(
            &DomainPattern::parse("*.example.com").unwrap(),
            Ipv4Addr::LOCALHOST,
        );
        assert_eq!(r.name, None);
        assert_eq!(
            r.regexp.as_deref(),
            Some(r"(?i)^([a-z0-9-]+\.)+example\.com$")
        );
    }

    #[test]
    fn ports_mode_zone_answers_nothing() {
        let zones = dns_zones(&spec(NetworkMode::Ports).policy, Addressing::LEGACY);
        assert_eq!(zones.len(), 1);
        assert_eq!(zones[0].name, "");
        assert!(zones[0].records.is_empty());
        assert_eq!(zones[0].default_ip, None);
        let json = serde_json::to_string(&zones[0]).unwrap();
        assert_eq!(json, r#"{"name":"","records":[]}"#);
    }

    #[test]
    fn yaml_strings_are_escaped() {
        assert_eq!(yaml_str(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(yaml_str("a\nb"), r#""a\u000ab""#);
    }

    #[test]
    fn expose_request_points_at_the_guest() {
        let reqs = expose_requests(&spec(NetworkMode::Ports), Addressing::LEGACY);
        assert_eq!(
            reqs,
            vec![ExposeRequest {
                local: "/run/airlock/vm-1/net/port-8080.sock".into(),
                remote: "tcp://192.168.127.2:8080".into(),
                protocol: "unix",
            }]
        );
    }
}
