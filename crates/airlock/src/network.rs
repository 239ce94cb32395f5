//! A VM's network (step 6 of "A VM's life" in `docs/architecture.md`;
//! `docs/network.md`):
//! its gvproxy in empty namespaces, the
//! egress policy proxy for allowlisted names, and host TCP ports bridged to
//! the guest's exposed ports.

use crate::error::{BootError, InputError, Result};
use crate::process::ProcessRegistry;
use airlock_egress::{
    AirlockCa, EgressConfig, EgressHandle, EgressProxy, Resolver, Secret, SecretSet,
    SystemResolver, UpstreamRoots,
};
use airlock_gvproxy::{
    bind_tcp_in_netns, find_gvproxy_cached, ChildExit, ChildSetup, DomainPattern, Expose,
    GvproxyHandle, GvproxyLauncher, GvproxySpec, LaunchOptions, NetworkMode, NetworkPolicy,
    StopReport,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use tokio::net::{TcpListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

/// What network a run asks for. The default is none: no network device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRequest {
    /// `Some`: the guest may reach these names on ports 80 and 443
    /// (allowlist mode); `None`: it reaches nothing.
    pub allow: Option<Vec<DomainPattern>>,
    /// Guest ports served on host ports.
    pub exposes: Vec<Expose>,
    /// The host address the exposed ports are bound on; `None`:
    /// 127.0.0.1 (the CLI's). The server sets the operator's
    /// (`[expose] address`).
    pub expose_address: Option<IpAddr>,
}

impl NetworkRequest {
    /// The request `airlock run`'s flags (and the server's `network`
    /// field) describe: `network` (or any `allow_domains`) turns egress
    /// on, to `allow_domains` or, when none is named, to the language's
    /// default allowlist (an empty allowlist, raw's, reaches nothing);
    /// `exposes` are `GUEST[:HOST][/tcp]`.
    ///
    /// # Errors
    /// [`InputError::Invalid`] for `network` naming a bad domain or port.
    pub fn from_flags(
        language: airlock_protocol::Language,
        network: bool,
        allow_domains: &[String],
        exposes: &[String],
    ) -> Result<Self, InputError> {
        let invalid =
            |e: airlock_gvproxy::GvproxyError| InputError::invalid("network", e.to_string());
        let allow = if network || !allow_domains.is_empty() {
            Some(if allow_domains.is_empty() {
                airlock_gvproxy::default_allowlist(language.as_str()).map_err(invalid)?
            } else {
                allow_domains
                    .iter()
                    .map(|d| DomainPattern::parse(d).map_err(invalid))
                    .collect::<Result<_, _>>()?
            })
        } else {
            None
        };
        let allow = allow.filter(|a: &Vec<_>| !a.is_empty());
        let exposes = exposes
            .iter()
            .map(|e| Expose::parse(e).map_err(invalid))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            allow,
            exposes,
            expose_address: None,
        })
    }

    /// The mode this request amounts to.
    pub fn mode(&self) -> NetworkMode {
        match (&self.allow, self.exposes.is_empty()) {
            (Some(_), _) => NetworkMode::Allowlist,
            (None, false) => NetworkMode::Ports,
            (None, true) => NetworkMode::None,
        }
    }

    /// The gvproxy policy of VM `vm_id`.
    pub fn policy(&self, vm_id: &str) -> NetworkPolicy {
        NetworkPolicy {
            vm_id: vm_id.to_owned(),
            mode: self.mode(),
            allow: self.allow.clone().unwrap_or_default(),
            exposes: self.exposes.clone(),
        }
    }

    /// This request with the hosts of `secrets` added to the allowlist
    /// (an allowlist of only those hosts when there was none). Hosts
    /// already allowed are not repeated; nothing else is added.
    pub fn with_secret_hosts(&self, secrets: &[Secret]) -> Self {
        let mut request = self.clone();
        if secrets.is_empty() {
            return request;
        }
        let allow = request.allow.get_or_insert_with(Vec::new);
        for host in secrets.iter().flat_map(|s| &s.hosts) {
            // A validated host pattern is a valid domain pattern.
            if let Ok(pattern) = DomainPattern::parse(&host.to_string()) {
                if !allow.contains(&pattern) {
                    allow.push(pattern);
                }
            }
        }
        request
    }

    /// Checks the exposes (ports, duplicate host ports) before anything
    /// starts.
    ///
    /// # Errors
    /// [`InputError::Invalid`] for `network`.
    pub fn validate(&self) -> Result<(), InputError> {
        if self.mode() == NetworkMode::None {
            return Ok(());
        }
        self.policy("request")
            .validate()
            .map_err(|e| InputError::invalid("network", e.to_string()))
    }
}

/// A VM's secrets as its egress proxy needs them: the values with this
/// VM's placeholders, Airlock's CA, and whom to trust upstream.
#[derive(Clone)]
pub struct VmSecrets {
    /// The secrets and their placeholders (new for every VM).
    pub set: Arc<SecretSet>,
    /// Airlock's CA (its key stays on the host).
    pub ca: Arc<AirlockCa>,
    /// The trust store for the real hosts.
    pub upstream_roots: UpstreamRoots,
}

impl VmSecrets {
    /// The guest's variables: each secret's name holding its placeholder.
    pub fn guest_env(&self) -> BTreeMap<String, String> {
        self.set
            .iter()
            .map(|(secret, placeholder)| (secret.name.clone(), placeholder.as_str().to_owned()))
            .collect()
    }
}

impl PartialEq for VmSecrets {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.set, &other.set)
    }
}

impl Eq for VmSecrets {}

impl std::fmt::Debug for VmSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SecretSet's Debug redacts the values.
        f.debug_struct("VmSecrets")
            .field("set", &self.set)
            .field("upstream_roots", &self.upstream_roots)
            .finish_non_exhaustive()
    }
}

/// A guest port and the host address it is served on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExposedAddr {
    /// The guest port.
    pub guest_port: u16,
    /// Where the host serves it (on [`NetworkRequest::expose_address`],
    /// 127.0.0.1 by default).
    pub host: SocketAddr,
}

/// What a VM's network did, for the run result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkReport {
    /// `none`, `ports` or `allowlist`.
    pub mode: String,
    /// Exposed ports and their host addresses.
    pub exposed: Vec<ExposedAddr>,
    /// Bytes the guest sent through the egress proxy.
    pub bytes_out: u64,
    /// Bytes the guest received through the egress proxy.
    pub bytes_in: u64,
    /// Connections the egress proxy refused.
    pub denied_connections: u64,
    /// Connections the guest opened to the egress proxy (allowed, denied
    /// or failed).
    pub connections: u64,
    /// Connections the egress proxy spliced to an upstream (or
    /// intercepted, for hosts with a secret).
    pub allowed_connections: u64,
    /// Requests or connections blocked because they carried a secret's
    /// placeholder to a host it is not bound to (`docs/secrets.md`).
    pub secret_blocked: u64,
    /// The hosts of those blocks, each once, in order (the first 64
    /// blocks).
    pub secret_blocked_hosts: Vec<String>,
    /// Problems met while stopping (gvproxy gone early, files left).
    pub problems: Vec<String>,
}

/// Test-only settings of the egress proxy (a fake resolver, private
/// upstream addresses allowed). Never set them in production: they let a
/// guest reach the host's private addresses.
#[derive(Clone, Default)]
pub struct EgressTestOverrides {
    /// Resolves allowlisted names instead of the host's resolver.
    pub resolver: Option<Arc<dyn Resolver>>,
    /// Allow private and loopback upstream addresses.
    pub allow_private: bool,
    /// Whom intercepted hosts (with a secret) are verified against,
    /// instead of the host's trust store (a test CA).
    pub upstream_roots: Option<UpstreamRoots>,
}

impl std::fmt::Debug for EgressTestOverrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressTestOverrides")
            .field("resolver", &self.resolver.is_some())
            .field("allow_private", &self.allow_private)
            .field("upstream_roots", &self.upstream_roots.is_some())
            .finish()
    }
}

/// A running VM network.
pub struct VmNetwork {
    mode: NetworkMode,
    gvproxy: GvproxyHandle,
    egress: Option<EgressHandle>,
    exposed: Vec<ExposedAddr>,
    bridges: Vec<JoinHandle<()>>,
    /// The registry tracking gvproxy (see [`VmNetwork::track`]).
    registry: Weak<ProcessRegistry>,
}

impl std::fmt::Debug for VmNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmNetwork")
            .field("mode", &self.mode)
            .field("exposed", &self.exposed)
            .finish_non_exhaustive()
    }
}

impl VmNetwork {
    /// Starts gvproxy (joining the VM's limits group through `child_setup`),
    /// the egress proxy inside its namespace (allowlist mode), and the host
    /// side of every exposed port. `allow_documentation_ranges` lets the
    /// proxy connect to documentation addresses
    /// ([`crate::Config::egress_allow_documentation_ranges`]).
    ///
    /// # Errors
    /// [`BootError::Network`] (gvproxy missing, namespaces refused, a host port
    /// taken).
    pub async fn start(
        vm_id: &str,
        dir: &Path,
        request: &NetworkRequest,
        child_setup: Option<ChildSetup>,
        secrets: Option<&VmSecrets>,
        overrides: &EgressTestOverrides,
        allow_documentation_ranges: bool,
    ) -> Result<Self, BootError> {
        let net = |e: airlock_gvproxy::GvproxyError| BootError::Network {
            vm_id: vm_id.to_owned(),
            source: Box::new(e),
        };
        let binary = find_gvproxy_cached().await.map_err(net)?;
        // Forked by the spawner thread with a parent-death signal: gvproxy
        // dies with this process (`docs/architecture.md`, "Nothing
        // outlives its owner").
        let launcher = GvproxyLauncher::new(binary, LaunchOptions::default())
            .map_err(net)?
            .with_spawn(Arc::new(|cmd| Box::pin(crate::spawner::spawn(cmd))));
        let spec = GvproxySpec::new(request.policy(vm_id), dir);
        let gvproxy = launcher.launch(&spec, child_setup).await.map_err(net)?;
        let mut network = Self {
            mode: request.mode(),
            gvproxy,
            egress: None,
            exposed: Vec::new(),
            bridges: Vec::new(),
            registry: Weak::new(),
        };
        if let Some(allow) = &request.allow {
            let patterns = allow.clone();
            let listen = |port| {
                bind_tcp_in_netns(
                    network.gvproxy.netns_fd(),
                    SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                )
            };
            let (l80, l443) = (listen(80).map_err(net)?, listen(443).map_err(net)?);
            let config = EgressConfig {
                vm_id: vm_id.to_owned(),
                allow: Arc::new(move |name: &str| patterns.iter().any(|p| p.matches(name))),
                resolver: overrides
                    .resolver
                    .clone()
                    .unwrap_or_else(|| Arc::new(SystemResolver)),
                allow_private_for_tests: overrides.allow_private,
                allow_documentation_ranges,
                secrets: secrets.map(|s| Arc::clone(&s.set)).unwrap_or_default(),
                ca: secrets.map(|s| Arc::clone(&s.ca)),
                upstream_roots: overrides
                    .upstream_roots
                    .clone()
                    .or_else(|| secrets.map(|s| s.upstream_roots.clone()))
                    .unwrap_or_default(),
                ..EgressConfig::default()
            };
            network.egress = Some(EgressProxy::serve(l80, l443, config).map_err(|source| {
                BootError::Egress {
                    vm_id: vm_id.to_owned(),
                    source: Box::new(source),
                }
            })?);
        }
        let address = request
            .expose_address
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for port in network.gvproxy.exposed_ports().to_vec() {
            let host = SocketAddr::from((address, port.host_port.unwrap_or(0)));
            let bind_error = |action, source| BootError::ExposeBind {
                vm_id: vm_id.to_owned(),
                action,
                addr: host,
                source,
            };
            let listener = TcpListener::bind(host)
                .await
                .map_err(|e| bind_error("listen for exposed guest port on", e))?;
            let host = listener
                .local_addr()
                .map_err(|e| bind_error("read the address of", e))?;
            network.exposed.push(ExposedAddr {
                guest_port: port.guest_port,
                host,
            });
            network.bridges.push(tokio::spawn(bridge(
                listener,
                port.socket,
                vm_id.to_owned(),
            )));
        }
        Ok(network)
    }

    /// The socket QEMU's `-netdev stream` connects to.
    pub fn qemu_socket(&self) -> PathBuf {
        self.gvproxy.qemu_socket()
    }

    /// The exposed ports' host addresses.
    pub fn exposed(&self) -> &[ExposedAddr] {
        &self.exposed
    }

    /// gvproxy's pid.
    pub fn gvproxy_pid(&self) -> u32 {
        self.gvproxy.pid()
    }

    /// Registers gvproxy in `registry` (as serving `vm_id`) until the
    /// network stops or is dropped.
    pub(crate) fn track(&mut self, registry: &Arc<ProcessRegistry>, vm_id: &str) {
        registry.register(self.gvproxy.pid(), vm_id, "gvproxy");
        self.registry = Arc::downgrade(registry);
    }

    fn untrack(&self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.unregister(self.gvproxy.pid());
        }
    }

    /// Stops the bridges (and every connection they carry), the egress
    /// proxy and gvproxy; never fails.
    pub async fn stop(&mut self) -> NetworkReport {
        stop_bridges(&mut self.bridges).await;
        let (stats, blocks) = match self.egress.take() {
            Some(egress) => {
                let blocks = egress.secret_blocks();
                (Some(egress.stop().await), blocks)
            }
            None => (None, Vec::new()),
        };
        let mut secret_blocked_hosts: Vec<String> = Vec::new();
        for block in blocks {
            if !secret_blocked_hosts.contains(&block.host) {
                secret_blocked_hosts.push(block.host);
            }
        }
        let report = self.gvproxy.stop().await;
        self.untrack();
        tracing::debug!(?report, "gvproxy stopped");
        let mut problems = report.problems.clone();
        problems.extend(early_exit_problem(&report));
        NetworkReport {
            mode: format!("{:?}", self.mode).to_lowercase(),
            exposed: self.exposed.clone(),
            bytes_out: stats.as_ref().map_or(0, |s| s.bytes_out),
            bytes_in: stats.as_ref().map_or(0, |s| s.bytes_in),
            denied_connections: stats.as_ref().map_or(0, |s| s.connections_denied),
            connections: stats.as_ref().map_or(0, |s| s.connections_accepted),
            allowed_connections: stats.as_ref().map_or(0, |s| s.connections_allowed),
            secret_blocked: stats.as_ref().map_or(0, |s| s.secrets_blocked),
            secret_blocked_hosts,
            problems,
        }
    }
}

/// Aborts every bridge and waits (briefly) until each has ended: its
/// connections are aborted with it.
async fn stop_bridges(bridges: &mut Vec<JoinHandle<()>>) {
    for bridge in bridges.iter() {
        bridge.abort();
    }
    for bridge in bridges.drain(..) {
        // An aborted task ends at its next poll; the deadline only guards
        // against a runtime shutting down under us.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), bridge).await;
    }
}

/// The problem to report when gvproxy had ended before teardown. gvproxy
/// ends by itself (status 0) once QEMU, stopped first, has closed its
/// connection: only another end is worth reporting.
fn early_exit_problem(report: &StopReport) -> Option<String> {
    if !report.exited_before_stop || report.exit.is_some_and(ChildExit::success) {
        return None;
    }
    Some(format!(
        "gvproxy had exited before teardown ({})",
        report
            .exit
            .map_or_else(|| "unknown status".to_owned(), |x| x.to_string())
    ))
}

impl Drop for VmNetwork {
    fn drop(&mut self) {
        // The handle's own drop kills gvproxy's group.
        self.untrack();
        for bridge in &self.bridges {
            bridge.abort();
        }
    }
}

/// Serves one exposed port: each host connection is spliced to gvproxy's
/// unix socket for the guest port. The connections are tasks of this
/// loop's [`JoinSet`], reaped as they end: aborting the loop (teardown)
/// drops the set, which aborts every connection still open.
async fn bridge(listener: TcpListener, socket: PathBuf, vm_id: String) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (mut tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // A lasting error (out of descriptors) must not spin.
                tracing::warn!(vm_id, error = %e, "exposed port: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let socket = socket.clone();
        let vm_id = vm_id.clone();
        connections.spawn(async move {
            match UnixStream::connect(&socket).await {
                Ok(mut unix) => {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
                Err(e) => {
                    tracing::warn!(vm_id, %peer, error = %e, "exposed port: gvproxy socket unreachable")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    fn stopped(exited_before_stop: bool, exit: Option<ChildExit>) -> StopReport {
        StopReport {
            vm_id: "vm".into(),
            exited_before_stop,
            exit,
            ..StopReport::default()
        }
    }

    #[test]
    fn gvproxy_ending_cleanly_before_teardown_is_no_problem() {
        assert_eq!(
            early_exit_problem(&stopped(true, Some(ChildExit::Code(0)))),
            None
        );
        assert_eq!(
            early_exit_problem(&stopped(false, Some(ChildExit::Code(2)))),
            None
        );
    }

    #[test]
    fn gvproxy_killed_or_failing_before_teardown_is_reported() {
        let killed = early_exit_problem(&stopped(true, Some(ChildExit::Signal(9)))).unwrap();
        assert!(killed.contains("killed by signal 9"), "{killed}");
        let unknown = early_exit_problem(&stopped(true, None)).unwrap();
        assert!(unknown.contains("unknown status"), "{unknown}");
    }

    /// A bridge from a host port to a fake gvproxy socket; returns the
    /// bridge task, its host address and the fake's listener.
    async fn bridge_to_fake_gvproxy(
        dir: &Path,
    ) -> (JoinHandle<()>, SocketAddr, tokio::net::UnixListener) {
        let socket = dir.join("guest-port.sock");
        let gvproxy = tokio::net::UnixListener::bind(&socket).unwrap();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(bridge(listener, socket, "vm-b".into()));
        (task, addr, gvproxy)
    }

    #[tokio::test]
    async fn a_bridged_connection_open_across_teardown_is_closed_by_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let (task, addr, gvproxy) = bridge_to_fake_gvproxy(dir.path()).await;
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut guest, _) = gvproxy.accept().await.unwrap();
        // The connection carries bytes both ways before the teardown.
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        guest.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        // Act: the teardown's stop of the bridges.
        stop_bridges(&mut vec![task]).await;

        // Assert: both ends see the connection closed, though neither
        // closed it.
        let deadline = std::time::Duration::from_secs(5);
        let read = tokio::time::timeout(deadline, client.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "host end still open: {read:?}"
        );
        let read = tokio::time::timeout(deadline, guest.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "guest end still open: {read:?}"
        );
    }

    #[tokio::test]
    async fn ended_bridged_connections_are_reaped_and_new_ones_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let (task, addr, gvproxy) = bridge_to_fake_gvproxy(dir.path()).await;
        for round in 0..3u8 {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut guest, _) = gvproxy.accept().await.unwrap();
            guest.write_all(&[round]).await.unwrap();
            drop(guest);
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, [round]);
        }
        stop_bridges(&mut vec![task]).await;
    }

    #[test]
    fn secret_hosts_join_the_allowlist_and_nothing_else() {
        use airlock_egress::{HostPattern, Secret, SecretValue};
        let secret = |host: &str| Secret {
            name: "K".into(),
            value: SecretValue::new(b"v".to_vec()),
            hosts: vec![HostPattern::parse("K", host).expect("host")],
            body: false,
        };
        let none = NetworkRequest::default();
        let with = none.with_secret_hosts(&[secret("*.example.com")]);
        assert_eq!(with.mode(), NetworkMode::Allowlist);
        let allow = with.allow.as_ref().expect("allowlist");
        assert_eq!(allow.len(), 1);
        assert!(allow[0].matches("api.example.com"));
        assert!(!allow[0].matches("example.org"));
        assert_eq!(none.with_secret_hosts(&[]), none);

        let listed = NetworkRequest::from_flags(
            airlock_protocol::Language::Python,
            true,
            &["api.example.com".into()],
            &[],
        )
        .expect("request");
        let with = listed.with_secret_hosts(&[secret("api.example.com")]);
        assert_eq!(with.allow, listed.allow, "no duplicate");
    }

    #[test]
    fn network_modes_follow_the_request() {
        let none = NetworkRequest::default();
        let ports = NetworkRequest {
            allow: None,
            exposes: vec![Expose {
                guest_port: 8080,
                host_port: None,
                protocol: Default::default(),
            }],
            expose_address: None,
        };
        let allow = NetworkRequest {
            allow: Some(Vec::new()),
            ..NetworkRequest::default()
        };
        assert_eq!(none.mode(), NetworkMode::None);
        assert_eq!(ports.mode(), NetworkMode::Ports);
        assert_eq!(allow.mode(), NetworkMode::Allowlist);
        none.validate().unwrap();
    }
}
