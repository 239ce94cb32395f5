//! The network of an Airlock VM: one gvproxy per VM, run where the guest
//! can reach nothing but what Airlock serves it.
//!
//! - **Policy** ([`NetworkPolicy`], pure): a mode ([`NetworkMode`]: none,
//!   ports only, allowlist), allowlisted [`DomainPattern`]s
//!   (`example.com`, `*.example.com`) and exposed guest ports ([`Expose`],
//!   `GUEST[:HOST][/tcp]`), plus per-language defaults
//!   ([`default_allowlist`]).
//! - **Rendering** ([`config`], pure): gvproxy's command line for its
//!   version, the DNS zones pushed over its API (allowlisted names answer
//!   gvproxy's host address, everything else is NXDOMAIN), the unix-socket
//!   port forwards, and the YAML `-config` file of gvproxy 0.8.8+. Golden
//!   files under `tests/golden/` show them.
//! - **Finding gvproxy** ([`find_gvproxy`]): `$AIRLOCK_GVPROXY`, `PATH`,
//!   podman's libexec folders, then `<cache>/bin/gvproxy` (where
//!   `cargo xtask` puts Debian 13's package on Debian 12), and its version.
//! - **Launch** ([`GvproxyLauncher`]): gvproxy runs in a fresh network
//!   namespace holding only `lo` (so whatever the guest sends has no route
//!   out) and a mount namespace where only its own directory is writable
//!   (its forwarding API is also served to the guest, and a forward creates
//!   a socket at any path it is given), as an unprivileged user ([`RunAs`],
//!   `nobody` by default) with no capabilities and `no_new_privs`; it is
//!   waited for by inotify, then configured over its API. [`GvproxyHandle`] gives the QEMU socket, the
//!   exposed ports' sockets, and the namespace, in which
//!   [`bind_tcp_in_netns`] opens the egress proxy's listeners.
//!
//! It does not start QEMU, bridge exposed sockets to host TCP ports, apply
//! resource limits (the caller passes a [`ChildSetup`] to put gvproxy in
//! the VM's limits group), or check what the guest connects to: the egress
//! policy proxy serving 127.0.0.1:80/443 inside gvproxy's namespace is the
//! `airlock-egress` crate.
//!
//! Layer: a leaf crate under the orchestrator, beside `airlock-egress`; of
//! Airlock it depends only on `airlock-sys-util` (ids, child processes,
//! PATH lookup, exit statuses).
//!
//! ```
//! use airlock_gvproxy::{
//!     command_line, dns_zones, Addressing, DomainPattern, GvproxySpec, GvproxyVersion,
//!     NetworkMode, NetworkPolicy,
//! };
//!
//! let policy = NetworkPolicy {
//!     vm_id: "run-1".into(),
//!     mode: NetworkMode::Allowlist,
//!     allow: vec![DomainPattern::parse("*.pythonhosted.org").unwrap()],
//!     exposes: vec![],
//! };
//! let spec = GvproxySpec::new(policy, "/run/airlock/run-1/net");
//! spec.validate().unwrap();
//! let argv = command_line(&spec, GvproxyVersion::new(0, 8, 1));
//! assert_eq!(argv[1], "unix:///run/airlock/run-1/net/api.sock");
//! let zones = dns_zones(&spec.policy, Addressing::LEGACY);
//! assert_eq!(zones[0].name, ""); // catches every name: the rest is NXDOMAIN
//! ```

mod api;
mod binary;
pub mod config;
mod error;
mod launch;
pub mod netns;
mod policy;
pub mod privileges;
mod watch;

pub use airlock_sys_util::ChildExit;
pub use api::{GvproxyApi, MAX_RESPONSE_BYTES};
pub use binary::{
    find_gvproxy, find_gvproxy_cached, probe_version, GvproxyBinary, GvproxyVersion, SearchPath,
    PODMAN_LIBEXEC_DIRS,
};
pub use config::{
    command_line, dns_record, dns_zones, expose_requests, render_yaml, Addressing, DnsRecord,
    DnsZone, ExposeRequest, GvproxyPaths, GvproxySpec, DEFAULT_MTU, GUEST_MAC,
    MAX_SOCKET_PATH_BYTES,
};
pub use error::GvproxyError;
pub use launch::{
    ChildSetup, ExposedPort, GvproxyHandle, GvproxyLauncher, LaunchOptions, SpawnWith, StopReport,
};
pub use netns::{bind_tcp_in_netns, in_netns, NamespaceKind};
pub use policy::{
    default_allowlist, is_public_suffix, validate_vm_id, DomainPattern, Expose, NetworkMode,
    NetworkPolicy, Protocol, MAX_DOMAIN_BYTES, MAX_LABEL_BYTES, MULTI_LABEL_PUBLIC_SUFFIXES,
};
pub use privileges::{RunAs, DEFAULT_USER};
