//! The proxy's decisions as pure functions: which name a connection asks
//! for, whether it may have it, which resolved addresses may be used, and
//! why a connection was not spliced.

use std::fmt;
use std::net::SocketAddr;

use super::address::{check_address, AddressPolicy, RefusedAddress};
use super::http::{parse_request_host, HttpParseError};
use super::name::{normalize_dns_name, NameError};
use super::sni::{ends_at_record_boundary, parse_client_hello, TlsParseError};

/// The two ports the proxy serves, and the protocol it expects on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServicePort {
    /// Port 80: plain HTTP/1.x, routed by `Host`.
    Http,
    /// Port 443: TLS, routed by the ClientHello's server name.
    Https,
}

impl ServicePort {
    /// The port number, on the guest's side and on the upstream's.
    pub fn number(self) -> u16 {
        match self {
            ServicePort::Http => 80,
            ServicePort::Https => 443,
        }
    }
}

/// Why a connection was closed instead of spliced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// A TLS ClientHello without a server name: nothing to check.
    NoServerName,
    /// A ClientHello offering Encrypted Client Hello: its visible name is
    /// only the front's public name.
    EncryptedClientHello,
    /// The bytes on port 443 are not an acceptable ClientHello.
    Tls(TlsParseError),
    /// The bytes on port 80 are not an acceptable HTTP request head.
    Http(HttpParseError),
    /// The name is not a plain DNS host name.
    InvalidName(NameError),
    /// The name is not in the VM's allowlist.
    NotAllowed,
    /// Every address the name resolved to is refused.
    OnlyRefusedAddresses(Vec<RefusedAddress>),
    /// The first bytes did not arrive within the deadline.
    FirstBytesTimeout,
    /// The guest closed (or reset) before sending a whole ClientHello or
    /// request head.
    ClosedEarly,
    /// The VM already has the maximum number of connections open.
    TooManyConnections,
    /// Resolving the allowed name failed (the text is the resolver's error).
    ResolveFailed(String),
    /// Resolving the allowed name took longer than its deadline.
    ResolveTimeout,
    /// No address could be connected to (the text is the last error).
    ConnectFailed(String),
    /// Connecting took longer than its deadline.
    ConnectTimeout,
    /// TLS to the upstream failed on a connection the proxy intercepts
    /// (certificate not trusted, no HTTP/1.1, ...); the text says why.
    UpstreamTls(String),
    /// A secret's placeholder in the server name or a plain-HTTP request:
    /// the leak guard (counted in `secrets_blocked`).
    SecretPlaceholder,
}

impl DenyReason {
    /// `true` for an allowed name the proxy could not reach (resolution or
    /// connection failed), `false` for a policy refusal.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            DenyReason::ResolveFailed(_)
                | DenyReason::ResolveTimeout
                | DenyReason::ConnectFailed(_)
                | DenyReason::ConnectTimeout
                | DenyReason::UpstreamTls(_)
        )
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoServerName => f.write_str("TLS ClientHello without server name (SNI)"),
            DenyReason::EncryptedClientHello => {
                f.write_str("TLS ClientHello offers Encrypted Client Hello; its visible name is not the destination")
            }
            DenyReason::Tls(err) => write!(f, "{err}"),
            DenyReason::Http(err) => write!(f, "{err}"),
            DenyReason::InvalidName(err) => write!(f, "invalid name: {err}"),
            DenyReason::NotAllowed => f.write_str("name not in the allowlist"),
            DenyReason::OnlyRefusedAddresses(refused) => {
                f.write_str("name resolves only to refused addresses:")?;
                for (i, addr) in refused.iter().enumerate() {
                    write!(f, "{} {addr}", if i == 0 { "" } else { "," })?;
                }
                Ok(())
            }
            DenyReason::FirstBytesTimeout => f.write_str("no complete ClientHello or request head in time"),
            DenyReason::ClosedEarly => f.write_str("closed before sending a complete ClientHello or request head"),
            DenyReason::TooManyConnections => f.write_str("too many connections open for this VM"),
            DenyReason::ResolveFailed(err) => write!(f, "resolving failed: {err}"),
            DenyReason::ResolveTimeout => f.write_str("resolving timed out"),
            DenyReason::ConnectFailed(err) => write!(f, "connecting failed: {err}"),
            DenyReason::ConnectTimeout => f.write_str("connecting timed out"),
            DenyReason::UpstreamTls(err) => write!(f, "TLS to the server failed: {err}"),
            DenyReason::SecretPlaceholder => {
                f.write_str("a secret placeholder headed for a host it is not bound to")
            }
        }
    }
}

/// The name a connection asks for, once its first bytes are complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestedName {
    /// A valid DNS name, normalised (lowercase, no trailing dot).
    Valid(String),
    /// The first bytes are refused. `raw_name` is the name as sent, when the
    /// bytes carried one (for the log).
    Refused {
        /// Why.
        reason: DenyReason,
        /// The unvalidated name, if any.
        raw_name: Option<String>,
    },
}

/// Whether parsing `first_bytes` again, after its last `new_bytes` arrived,
/// can give a new answer. Parsing everything after every small read would
/// cost time quadratic in the cap for a guest sending a byte at a time; the
/// name can only become known when a TLS record ends or an HTTP line ends.
/// The first read is always parsed (early refusal of the wrong protocol),
/// and so is a buffer at the cap.
pub fn worth_parsing(
    port: ServicePort,
    first_bytes: &[u8],
    new_bytes: usize,
    max_bytes: usize,
) -> bool {
    if new_bytes >= first_bytes.len() || first_bytes.len() >= max_bytes {
        return true;
    }
    match port {
        ServicePort::Https => ends_at_record_boundary(first_bytes),
        ServicePort::Http => first_bytes[first_bytes.len() - new_bytes..].contains(&b'\n'),
    }
}

/// Reads the requested name from the first bytes of a connection on `port`.
/// `None`: incomplete, read more (under `max_bytes`).
pub fn requested_name(
    port: ServicePort,
    first_bytes: &[u8],
    max_bytes: usize,
) -> Option<RequestedName> {
    let raw = match port {
        ServicePort::Https => match parse_client_hello(first_bytes, max_bytes) {
            Ok(None) => return None,
            Err(err) => Err((DenyReason::Tls(err), None)),
            Ok(Some(hello)) => match (hello.server_name, hello.offers_ech) {
                (name, true) => Err((DenyReason::EncryptedClientHello, name)),
                (None, false) => Err((DenyReason::NoServerName, None)),
                (Some(name), false) => Ok(name),
            },
        },
        ServicePort::Http => match parse_request_host(first_bytes, max_bytes) {
            Ok(None) => return None,
            Err(err) => Err((DenyReason::Http(err), None)),
            Ok(Some(host)) => Ok(host),
        },
    };
    Some(match raw {
        Err((reason, raw_name)) => RequestedName::Refused { reason, raw_name },
        Ok(raw) => match normalize_dns_name(&raw) {
            Ok(name) => RequestedName::Valid(name),
            Err(err) => RequestedName::Refused {
                reason: DenyReason::InvalidName(err),
                raw_name: Some(raw),
            },
        },
    })
}

/// Keeps the resolved addresses the proxy may connect to, in their order.
/// Refused when none is left (an empty answer counts as a resolver failure).
pub fn permitted_addresses(
    resolved: &[SocketAddr],
    policy: AddressPolicy,
) -> Result<Vec<SocketAddr>, DenyReason> {
    if resolved.is_empty() {
        return Err(DenyReason::ResolveFailed("no addresses".into()));
    }
    let mut permitted = Vec::new();
    let mut refused = Vec::new();
    for addr in resolved {
        match check_address(addr.ip(), policy) {
            Ok(()) => permitted.push(*addr),
            Err(refusal) => refused.push(refusal),
        }
    }
    if permitted.is_empty() {
        return Err(DenyReason::OnlyRefusedAddresses(refused));
    }
    Ok(permitted)
}

/// A printable, bounded form of an untrusted name for logs: control and
/// non-ASCII characters escaped, at most 256 characters.
pub fn loggable_name(raw: &str) -> String {
    raw.chars()
        .flat_map(char::escape_default)
        .take(256)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::sni::build::{client_hello, HelloSpec};
    use super::*;

    const CAP: usize = 16 * 1024;

    fn tls(name: Option<&str>, ech: bool) -> Vec<u8> {
        client_hello(&HelloSpec {
            server_name: name.map(|n| n.as_bytes().to_vec()),
            ech,
            ..HelloSpec::default()
        })
    }

    #[test]
    fn a_tls_name_is_normalised() {
        let name = requested_name(ServicePort::Https, &tls(Some("PyPI.org."), false), CAP);
        assert_eq!(name, Some(RequestedName::Valid("pypi.org".into())));
    }

    #[test]
    fn an_http_host_is_normalised() {
        let request = b"GET / HTTP/1.1\r\nHost: Files.PythonHosted.org.:80\r\n\r\n";
        let name = requested_name(ServicePort::Http, request, CAP);
        assert_eq!(
            name,
            Some(RequestedName::Valid("files.pythonhosted.org".into()))
        );
    }

    #[test]
    fn incomplete_bytes_ask_for_more_on_both_ports() {
        assert_eq!(
            requested_name(
                ServicePort::Https,
                &tls(Some("a.example"), false)[..10],
                CAP
            ),
            None
        );
        assert_eq!(
            requested_name(ServicePort::Http, b"GET / HTTP/1.1\r\nHo", CAP),
            None
        );
    }

    #[test]
    fn no_sni_and_ech_are_refused_with_their_reason() {
        assert_eq!(
            requested_name(ServicePort::Https, &tls(None, false), CAP),
            Some(RequestedName::Refused {
                reason: DenyReason::NoServerName,
                raw_name: None
            })
        );
        assert_eq!(
            requested_name(ServicePort::Https, &tls(Some("public.example"), true), CAP),
            Some(RequestedName::Refused {
                reason: DenyReason::EncryptedClientHello,
                raw_name: Some("public.example".into())
            })
        );
    }

    #[test]
    fn ip_literals_and_the_wrong_protocol_are_refused() {
        assert!(matches!(
            requested_name(
                ServicePort::Https,
                &tls(Some("169.254.169.254"), false),
                CAP
            ),
            Some(RequestedName::Refused {
                reason: DenyReason::InvalidName(NameError::NumericTopLabel),
                ..
            })
        ));
        assert!(matches!(
            requested_name(
                ServicePort::Http,
                b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",
                CAP
            ),
            Some(RequestedName::Refused {
                reason: DenyReason::InvalidName(_),
                ..
            })
        ));
        assert!(matches!(
            requested_name(ServicePort::Https, b"GET / HTTP/1.1\r\n", CAP),
            Some(RequestedName::Refused {
                reason: DenyReason::Tls(TlsParseError::NotTls),
                ..
            })
        ));
        assert!(matches!(
            requested_name(ServicePort::Http, &tls(Some("a.example"), false), CAP),
            Some(RequestedName::Refused {
                reason: DenyReason::Http(HttpParseError::NotHttp),
                ..
            })
        ));
    }

    #[test]
    fn parsing_waits_for_a_record_or_line_end_but_never_past_the_cap() {
        let hello = tls(Some("a.example"), false);
        assert!(
            worth_parsing(ServicePort::Https, &hello[..3], 3, CAP),
            "first read"
        );
        assert!(!worth_parsing(ServicePort::Https, &hello[..10], 1, CAP));
        assert!(
            worth_parsing(ServicePort::Https, &hello, 1, CAP),
            "record end"
        );
        assert!(
            worth_parsing(ServicePort::Https, &hello[..10], 1, 10),
            "cap"
        );
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(!worth_parsing(ServicePort::Http, &request[..20], 2, CAP));
        assert!(
            worth_parsing(ServicePort::Http, &request[..16], 2, CAP),
            "line end"
        );
        assert!(
            worth_parsing(ServicePort::Http, request, 1, CAP),
            "head end"
        );
    }

    /// Gating never changes the answer: feeding any valid ClientHello or
    /// request a byte at a time and parsing only when worth it decides at
    /// the same point as parsing after every byte.
    #[test]
    fn gated_parsing_decides_at_the_same_byte_as_parsing_every_time() {
        let inputs: [(ServicePort, Vec<u8>); 4] = [
            (ServicePort::Https, tls(Some("a.example"), false)),
            (
                ServicePort::Https,
                client_hello(&HelloSpec {
                    server_name: Some(b"b.example".to_vec()),
                    max_record_payload: 9,
                    ..HelloSpec::default()
                }),
            ),
            (
                ServicePort::Http,
                b"GET / HTTP/1.1\r\nHost: a.example\r\nX: y\r\n\r\n".to_vec(),
            ),
            (
                ServicePort::Http,
                b"GET / HTTP/1.1\nHost: a.example\r\n\r\n".to_vec(),
            ),
        ];
        for (port, bytes) in inputs {
            let every =
                (1..=bytes.len()).find(|end| requested_name(port, &bytes[..*end], CAP).is_some());
            let gated = (1..=bytes.len()).find(|end| {
                worth_parsing(port, &bytes[..*end], 1, CAP)
                    && requested_name(port, &bytes[..*end], CAP).is_some()
            });
            assert_eq!(
                gated,
                every,
                "{port:?} {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn refused_addresses_are_dropped_and_their_absence_of_alternatives_denied() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("test address");
        let mixed = [
            addr("10.0.0.1:443"),
            addr("93.184.215.14:443"),
            addr("[fe80::1]:443"),
        ];
        let production = AddressPolicy::default();
        let tests = AddressPolicy {
            allow_private_for_tests: true,
            ..production
        };
        assert_eq!(
            permitted_addresses(&mixed, production),
            Ok(vec![addr("93.184.215.14:443")])
        );
        let private = [addr("10.0.0.1:443"), addr("169.254.169.254:443")];
        let denied = permitted_addresses(&private, production).expect_err("all refused");
        assert_eq!(
            denied.to_string(),
            "name resolves only to refused addresses: 10.0.0.1 (private), 169.254.169.254 (link-local)"
        );
        assert_eq!(
            permitted_addresses(&private, tests),
            Ok(vec![addr("10.0.0.1:443")])
        );
        assert!(permitted_addresses(&[], production)
            .expect_err("empty")
            .is_upstream_failure());
    }

    #[test]
    fn names_for_logs_are_escaped_and_bounded() {
        assert_eq!(loggable_name("a.example"), "a.example");
        assert_eq!(loggable_name("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(loggable_name(&"x".repeat(1000)).len(), 256);
    }

    #[test]
    fn only_resolution_and_connection_problems_are_upstream_failures() {
        assert!(DenyReason::ConnectTimeout.is_upstream_failure());
        assert!(DenyReason::ResolveFailed("x".into()).is_upstream_failure());
        assert!(!DenyReason::NotAllowed.is_upstream_failure());
        assert!(!DenyReason::OnlyRefusedAddresses(vec![]).is_upstream_failure());
    }
}
