//! `airlock-egress`: the egress policy proxy, what a VM in allowlist mode
//! may reach.
//!
//! It does not start gvproxy, make namespaces or bind its listeners in
//! them (`airlock-gvproxy` does, with `bind_tcp_in_netns`), hold the
//! allowlist's syntax (the caller passes a predicate, [`EgressConfig::allow`]),
//! or carry anything but TCP on ports 80 and 443. It terminates TLS only
//! for names a secret is bound to ([`intercept`]).
//!
//! Layer: a leaf crate under the orchestrator (`airlock`), beside
//! `airlock-gvproxy`; it depends on no other Airlock crate. Its errors are
//! one enum, [`EgressError`].
//!
//! # How it works
//! A VM with allowlist networking talks only to its gvproxy, which runs in
//! an empty network namespace. gvproxy's DNS answers allowlisted names with
//! its host address, which it translates to 127.0.0.1 of its namespace; there,
//! on ports 80 and 443, listens this proxy (the sockets are bound inside the
//! namespace, the tasks run in the host process). For each connection it:
//!
//! 1. reads the first bytes, under a deadline (10 s) and a size cap (16 KiB):
//!    on 443 a TLS ClientHello ([`sni`]), on 80 an HTTP/1.x request head
//!    ([`http`]);
//! 2. takes the name the client asks for (SNI `host_name`, or `Host`) and
//!    checks it is a plain DNS name ([`name`]): no IP literal, one canonical
//!    spelling;
//! 3. asks the VM's allowlist ([`EgressConfig::allow`]);
//! 4. resolves the name on the host ([`Resolver`]) and keeps only public
//!    addresses ([`address`]);
//! 5. connects to one of them on the same port, replays the bytes already
//!    read, and splices both ways with backpressure until both sides close,
//!    5 minutes pass without a byte, or the proxy stops.
//!
//! For a name one of the VM's secrets ([`EgressConfig::secrets`]) is bound
//! to, step 5 is different on port 443: the proxy terminates the guest's
//! TLS with a certificate from Airlock's CA ([`ca`]), opens its own verified
//! TLS to the server, and relays HTTP/1.1 requests with the secrets'
//! placeholders replaced by their values ([`intercept`]). The leak guard
//! blocks any placeholder headed elsewhere: in a server name, in a
//! plain-HTTP request (every request of the connection), or in a request
//! to an intercepted host the secret is not bound to; each block is
//! counted (`secrets_blocked`) with its host ([`EgressHandle::secret_blocks`]).
//!
//! Anything else closes the connection: port 443 gets a TLS `access_denied`
//! alert, port 80 a `403 Forbidden` (or `502 Bad Gateway` when an allowed
//! server cannot be reached). Every refusal is logged with
//! `tracing::warn!(vm_id, name, port, reason)` and counted
//! ([`EgressStats`]).
//!
//! # Threat model: what is checked and why
//! The guest is hostile and controls every byte it sends, including the
//! name it asks for and, through a domain it owns, DNS answers for that
//! domain. The proxy must not let it reach anything but allowlisted names
//! on the internet.
//! - **The name is what the server sees.** The proxy forwards the very bytes
//!   it parsed, and its parsers refuse every ambiguity that could make a
//!   server read another name (duplicate SNI or `Host`, absolute-form
//!   targets naming another host, bare LF, folding, ...).
//! - **No SNI means refusal.** Without a name there is nothing to check the
//!   allowlist against; the destination IP is no help because the guest
//!   only ever sees gvproxy's address.
//! - **Encrypted Client Hello means refusal.** With ECH the visible SNI is
//!   the public name of a client-facing server (a CDN front), and the real
//!   destination is encrypted: allowing on the visible name would open every
//!   site behind that front. Clients in the guest images (OpenSSL-based
//!   Python, Node, curl) do not send ECH; browsers that send GREASE ECH
//!   would be refused.
//! - **DNS rebinding is avoided by construction.** The guest's DNS answer is
//!   never used: the host resolves the allowed name itself, checks the
//!   addresses it got, and connects to exactly the address it checked. A
//!   name that resolves to loopback, private, link-local (the cloud metadata
//!   service at 169.254.169.254), multicast or reserved space is refused.
//!   Names are resolved as absolute names, so the host's search domains are
//!   never appended.
//! - **Resources are bounded.** Every wait has a deadline, first bytes are
//!   capped, connections per VM are capped (256; more are closed at once),
//!   and a splice moves data only as fast as the slower side takes it.
//!
//! What it does not do: outside hosts with a bound secret it does not
//! terminate TLS, so it cannot see what a client does inside an allowed
//! TLS connection (nor see a placeholder there: the leak guard covers
//! server names, plain HTTP and intercepted hosts). Secrets are
//! substituted over HTTP/1.1 only; HTTP/2 is refused by ALPN on
//! intercepted hosts. Domain fronting (an
//! allowed SNI, another `Host` inside TLS) and later requests with another
//! `Host` on a kept-alive port-80 connection reach the same server as the
//! allowed name; whether that server serves other sites is its business. An
//! allowlist of names on shared CDNs therefore allows what those servers
//! are willing to serve. Only ports 80 and 443 exist, and only TCP.
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use airlock_egress::{EgressConfig, EgressProxy};
//!
//! # async fn demo() -> Result<(), airlock_egress::EgressError> {
//! // In Airlock both listeners are bound inside the VM's gvproxy namespace.
//! let l80 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
//! let l443 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
//! let config = EgressConfig {
//!     vm_id: "vm-42".into(),
//!     allow: Arc::new(|name: &str| name == "pypi.org" || name == "files.pythonhosted.org"),
//!     ..EgressConfig::default()
//! };
//! let proxy = EgressProxy::serve(l80, l443, config)?;
//! // ... the VM runs ...
//! let stats = proxy.stop().await;
//! println!("{} bytes in, {} denied", stats.bytes_in, stats.connections_denied);
//! # Ok(())
//! # }
//! ```
//!
//! # Throughput
//! [`measure_throughput`] pushes bytes through one allowed connection on
//! loopback (upstream -> proxy -> client, the download direction). On the
//! 2-core development host, release build, 1 GiB per run, with other builds
//! running (load average about 3): 1.2 to 1.36 GiB/s through the proxy,
//! against 4 to 6 GiB/s for a direct loopback connection with the same
//! chunk sizes. The guest's own path (virtio-net under TCG, gvproxy's
//! user-mode TCP stack) is expected to be far slower (not measured here),
//! so the proxy should not be the bottleneck.
//!
//! [`measure_interception`] times whole HTTPS requests to a host with a
//! bound secret against requests to one without (`cargo xtask bench`, the
//! secrets rows of `docs/benchmarks.md`).

pub mod address;
mod bench;
mod bench_interception;
pub mod ca;
mod config;
mod connection;
mod decision;
mod error;
pub mod http;
pub mod intercept;
pub mod name;
mod proxy;
pub mod request;
mod resolver;
pub mod secret;
pub mod sni;
mod splice;
mod stats;
mod tls;

#[cfg(test)]
mod intercept_tests;
#[cfg(test)]
mod proxy_tests;

pub use bench::measure_throughput;
pub use bench_interception::{measure_interception, InterceptionCost};
pub use ca::{AirlockCa, CaError};
pub use config::{
    AllowPredicate, EgressConfig, UpstreamRoots, MAX_CONNECTIONS, MAX_FIRST_BYTES,
    MAX_SPLICE_BUFFER_BYTES, MAX_VM_ID_BYTES, MIN_FIRST_BYTES, MIN_SPLICE_BUFFER_BYTES,
};
pub use decision::{
    loggable_name, permitted_addresses, requested_name, worth_parsing, DenyReason, RequestedName,
    ServicePort,
};
pub use error::EgressError;
pub use proxy::{EgressHandle, EgressProxy};
pub use resolver::{ResolveFuture, Resolver, StaticResolver, SystemResolver};
pub use secret::{HostPattern, Placeholder, Secret, SecretError, SecretSet, SecretValue};
pub use stats::{EgressStats, SecretBlock, MAX_SECRET_BLOCKS_KEPT};
