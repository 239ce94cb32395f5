//! The proxy's configuration: one typed struct, validated once.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::ca::AirlockCa;
use super::resolver::{Resolver, SystemResolver};
use super::secret::SecretSet;
use crate::EgressError;

/// Which certificate authorities the proxy trusts when it opens its own
/// TLS to a host it intercepts (hosts with a bound secret).
#[derive(Debug, Clone, Default)]
pub enum UpstreamRoots {
    /// The host's trust store (`SSL_CERT_FILE`, `SSL_CERT_DIR` or the
    /// system's bundle, as `rustls-native-certs` finds it).
    #[default]
    System,
    /// The certificates in this PEM file (`--ca-bundle`).
    PemFile(std::path::PathBuf),
    /// These certificates (tests: a test CA).
    Certificates(Vec<rustls::pki_types::CertificateDer<'static>>),
}

/// Decides whether a guest may reach a name. It receives the validated name
/// (lowercase, no trailing dot) and answers for both ports, 80 and 443.
pub type AllowPredicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Smallest accepted [`EgressConfig::max_first_bytes`]: room for a typical
/// ClientHello (about 1.8 KiB with post-quantum key shares) and request head.
pub const MIN_FIRST_BYTES: usize = 4 * 1024;
/// Largest accepted [`EgressConfig::max_first_bytes`].
pub const MAX_FIRST_BYTES: usize = 64 * 1024;
/// Largest accepted [`EgressConfig::max_connections`].
pub const MAX_CONNECTIONS: usize = 65_536;
/// Smallest accepted [`EgressConfig::splice_buffer_bytes`].
pub const MIN_SPLICE_BUFFER_BYTES: usize = 1024;
/// Largest accepted [`EgressConfig::splice_buffer_bytes`].
pub const MAX_SPLICE_BUFFER_BYTES: usize = 1024 * 1024;
/// Longest accepted VM id (same rule as the orchestrator's identifiers).
pub const MAX_VM_ID_BYTES: usize = 128;

/// Configuration of one VM's egress proxy.
///
/// The defaults deny every name (`allow` answers false) and leave `vm_id`
/// empty, which [`validate`](Self::validate) refuses: a caller sets at least
/// those two.
#[derive(Clone)]
pub struct EgressConfig {
    /// The VM this proxy serves; in every log line. `[A-Za-z0-9_-]{1,128}`.
    pub vm_id: String,
    /// The allowlist. Default: deny everything.
    pub allow: AllowPredicate,
    /// Resolves allowed names on the host. Default: [`SystemResolver`].
    pub resolver: Arc<dyn Resolver>,
    /// Deadline for the guest's first bytes (the whole ClientHello or
    /// request head) after the connection is accepted. Default 10 s.
    pub first_bytes_timeout: Duration,
    /// Deadline for resolving an allowed name. Default 5 s.
    pub resolve_timeout: Duration,
    /// Deadline for connecting to the upstream, over all its addresses.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// A spliced connection with no byte in either direction for this long
    /// is closed. Default 5 min.
    pub idle_timeout: Duration,
    /// Connections open at once for this VM (being checked or spliced);
    /// more are closed at once and counted as denied. Default 256.
    pub max_connections: usize,
    /// Cap on the bytes read to find the name (ClientHello or request head).
    /// Default 16 KiB, accepted 4 to 64 KiB.
    pub max_first_bytes: usize,
    /// Buffer per direction of a spliced connection. Default 64 KiB.
    pub splice_buffer_bytes: usize,
    /// TEST ONLY. Lets the proxy connect to loopback and private addresses
    /// (an upstream on the test host's 127.0.0.1). Link-local (the cloud
    /// metadata service), multicast and the other special ranges stay
    /// refused. Must stay `false` (the default) in production: with it a
    /// guest whose allowed name resolves to the host's networks reaches them.
    pub allow_private_for_tests: bool,
    /// Lets the proxy connect to documentation addresses (TEST-NET-1/2/3,
    /// `2001:db8::/32`), refused by default: for a host whose DNS answers
    /// public names with them (`crate::address`).
    pub allow_documentation_ranges: bool,
    /// The VM's secrets. Connections on 443 to a name one of them is bound
    /// to are intercepted ([`crate::intercept`]); a placeholder headed
    /// anywhere else is blocked. Default: none (nothing is intercepted).
    pub secrets: Arc<SecretSet>,
    /// The CA that signs the leaf certificates of intercepted names;
    /// required when `secrets` is not empty.
    pub ca: Option<Arc<AirlockCa>>,
    /// Whom to trust upstream on intercepted connections. Default: the
    /// host's trust store.
    pub upstream_roots: UpstreamRoots,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            vm_id: String::new(),
            allow: Arc::new(|_| false),
            resolver: Arc::new(SystemResolver),
            first_bytes_timeout: Duration::from_secs(10),
            resolve_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5 * 60),
            max_connections: 256,
            max_first_bytes: 16 * 1024,
            splice_buffer_bytes: 64 * 1024,
            allow_private_for_tests: false,
            allow_documentation_ranges: false,
            secrets: Arc::new(SecretSet::default()),
            ca: None,
            upstream_roots: UpstreamRoots::default(),
        }
    }
}

impl EgressConfig {
    /// The address refusals this proxy lifts.
    pub fn address_policy(&self) -> crate::address::AddressPolicy {
        crate::address::AddressPolicy {
            allow_private_for_tests: self.allow_private_for_tests,
            allow_documentation_ranges: self.allow_documentation_ranges,
        }
    }
}

impl fmt::Debug for EgressConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressConfig")
            .field("vm_id", &self.vm_id)
            .field("allow", &"<predicate>")
            .field("resolver", &"<resolver>")
            .field("first_bytes_timeout", &self.first_bytes_timeout)
            .field("resolve_timeout", &self.resolve_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_first_bytes", &self.max_first_bytes)
            .field("splice_buffer_bytes", &self.splice_buffer_bytes)
            .field("allow_private_for_tests", &self.allow_private_for_tests)
            .field(
                "allow_documentation_ranges",
                &self.allow_documentation_ranges,
            )
            .field("secrets", &self.secrets)
            .field("ca", &self.ca.is_some())
            .field("upstream_roots", &self.upstream_roots)
            .finish()
    }
}

impl EgressConfig {
    /// Checks every field; the proxy relies on this and checks nothing again.
    pub fn validate(&self) -> Result<(), EgressError> {
        let invalid = |field, reason: &str| {
            Err(EgressError::Config {
                field,
                reason: reason.to_string(),
            })
        };
        let id_ok = (1..=MAX_VM_ID_BYTES).contains(&self.vm_id.len())
            && self
                .vm_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return invalid("vm_id", "must be 1 to 128 of A-Z, a-z, 0-9, '_' and '-'");
        }
        for (field, value) in [
            ("first_bytes_timeout", self.first_bytes_timeout),
            ("resolve_timeout", self.resolve_timeout),
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                return invalid(field, "must be longer than zero");
            }
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return invalid("max_connections", "must be between 1 and 65536");
        }
        if !(MIN_FIRST_BYTES..=MAX_FIRST_BYTES).contains(&self.max_first_bytes) {
            return invalid("max_first_bytes", "must be between 4096 and 65536");
        }
        if !(MIN_SPLICE_BUFFER_BYTES..=MAX_SPLICE_BUFFER_BYTES).contains(&self.splice_buffer_bytes)
        {
            return invalid("splice_buffer_bytes", "must be between 1024 and 1048576");
        }
        if !self.secrets.is_empty() && self.ca.is_none() {
            return invalid(
                "ca",
                "must be set when there are secrets (AirlockCa::load_or_create)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> EgressConfig {
        EgressConfig {
            vm_id: "vm-1_a".into(),
            ..EgressConfig::default()
        }
    }

    fn refused_field(config: &EgressConfig) -> &'static str {
        match config.validate() {
            Err(EgressError::Config { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn defaults_with_a_vm_id_are_valid_and_deny_everything() {
        let config = valid();
        assert!(config.validate().is_ok());
        assert!(!(config.allow)("pypi.org"));
        assert!(!config.allow_private_for_tests);
    }

    #[test]
    fn the_default_vm_id_is_refused() {
        assert_eq!(refused_field(&EgressConfig::default()), "vm_id");
    }

    #[test]
    fn bad_vm_ids_are_refused() {
        for id in ["", "a b", "a/b", "vm.1", &"a".repeat(129)] {
            let config = EgressConfig {
                vm_id: id.to_string(),
                ..valid()
            };
            assert_eq!(refused_field(&config), "vm_id", "{id:?}");
        }
        let longest = EgressConfig {
            vm_id: "a".repeat(128),
            ..valid()
        };
        assert!(longest.validate().is_ok());
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let zero = Duration::ZERO;
        assert_eq!(
            refused_field(&EgressConfig {
                first_bytes_timeout: zero,
                ..valid()
            }),
            "first_bytes_timeout"
        );
        assert_eq!(
            refused_field(&EgressConfig {
                resolve_timeout: zero,
                ..valid()
            }),
            "resolve_timeout"
        );
        assert_eq!(
            refused_field(&EgressConfig {
                connect_timeout: zero,
                ..valid()
            }),
            "connect_timeout"
        );
        assert_eq!(
            refused_field(&EgressConfig {
                idle_timeout: zero,
                ..valid()
            }),
            "idle_timeout"
        );
    }

    #[test]
    fn sizes_are_checked_at_their_bounds() {
        assert_eq!(
            refused_field(&EgressConfig {
                max_connections: 0,
                ..valid()
            }),
            "max_connections"
        );
        assert!(EgressConfig {
            max_connections: 1,
            ..valid()
        }
        .validate()
        .is_ok());
        assert_eq!(
            refused_field(&EgressConfig {
                max_connections: 65_537,
                ..valid()
            }),
            "max_connections"
        );
        assert_eq!(
            refused_field(&EgressConfig {
                max_first_bytes: 4095,
                ..valid()
            }),
            "max_first_bytes"
        );
        assert!(EgressConfig {
            max_first_bytes: 4096,
            ..valid()
        }
        .validate()
        .is_ok());
        assert!(EgressConfig {
            max_first_bytes: 65_536,
            ..valid()
        }
        .validate()
        .is_ok());
        assert_eq!(
            refused_field(&EgressConfig {
                max_first_bytes: 65_537,
                ..valid()
            }),
            "max_first_bytes"
        );
        assert_eq!(
            refused_field(&EgressConfig {
                splice_buffer_bytes: 1023,
                ..valid()
            }),
            "splice_buffer_bytes"
        );
        assert_eq!(
            refused_field(&EgressConfig {
                splice_buffer_bytes: 1024 * 1024 + 1,
                ..valid()
            }),
            "splice_buffer_bytes"
        );
    }

    #[test]
    fn debug_output_hides_the_closures_but_shows_the_settings() {
        let text = format!("{:?}", valid());
        assert!(
            text.contains("vm-1_a")
                && text.contains("<predicate>")
                && text.contains("allow_private_for_tests")
        );
    }
}
