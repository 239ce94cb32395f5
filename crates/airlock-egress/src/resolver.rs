//! How the proxy turns an allowed name into addresses (effectful, behind a
//! trait so tests can inject a fixed mapping).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

/// The future a [`Resolver`] returns.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Resolves a validated, allowed DNS name to the addresses to try, in order.
///
/// The proxy applies its address policy to whatever comes back, so a
/// resolver needs no policy of its own. The proxy bounds every call with
/// [`EgressConfig::resolve_timeout`](super::EgressConfig::resolve_timeout).
pub trait Resolver: Send + Sync {
    /// Addresses of `name` (lowercase, no trailing dot) with `port` (80 or 443).
    fn resolve<'a>(&'a self, name: &'a str, port: u16) -> ResolveFuture<'a>;
}

/// The host's resolver (`getaddrinfo` through [`tokio::net::lookup_host`]).
///
/// The name is looked up as an absolute name (a trailing dot is added), so
/// the host's `search` domains are never appended: `pypi.org` cannot turn
/// into `pypi.org.corp.internal`. A consequence: glibc's `/etc/hosts`
/// backend does not match absolute names, so only DNS answers count.
/// Runs in the process's network namespace, that is the host's, not the
/// VM's.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move {
            let absolute = absolute_name(name);
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((absolute.as_str(), port))
                .await?
                .collect();
            Ok(addrs)
        })
    }
}

/// `name` with exactly one trailing dot.
fn absolute_name(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// A fixed name -> addresses table, for tests and benchmarks.
///
/// The stored socket addresses are returned as they are: their port
/// replaces the requested one, so a test can send `allowed.test:443` to an
/// upstream on `127.0.0.1:<ephemeral port>`. Unknown names fail like
/// NXDOMAIN.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    entries: HashMap<String, Vec<SocketAddr>>,
}

impl StaticResolver {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the addresses of `name`; builder style.
    pub fn with(mut self, name: &str, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.entries
            .insert(name.to_ascii_lowercase(), addrs.into_iter().collect());
        self
    }
}

impl Resolver for StaticResolver {
    fn resolve<'a>(&'a self, name: &'a str, _port: u16) -> ResolveFuture<'a> {
        let found = self.entries.get(name).cloned();
        Box::pin(async move {
            found.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{name}: no such name in the static table"),
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_static_table_returns_its_addresses_and_refuses_unknown_names() {
        let addr: SocketAddr = "127.0.0.1:4242".parse().expect("test address");
        let resolver = StaticResolver::new().with("Allowed.Test", [addr]);
        assert_eq!(
            resolver.resolve("allowed.test", 443).await.expect("known"),
            vec![addr]
        );
        let err = resolver
            .resolve("other.test", 443)
            .await
            .expect_err("unknown");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn the_system_resolver_asks_for_absolute_names() {
        assert_eq!(absolute_name("pypi.org"), "pypi.org.");
        assert_eq!(absolute_name("pypi.org."), "pypi.org.");
    }
}
