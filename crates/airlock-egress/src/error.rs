//! The crate's one error type: setup errors only. A refused connection is a
//! [`crate::DenyReason`] and a counter, never an error.

/// What stops the egress proxy from starting (or its measurement from
/// running). Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// An [`EgressConfig`](crate::EgressConfig) field is out of range.
    #[error("invalid egress proxy config: `{field}` {reason}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// Why it is refused and what is accepted.
        reason: String,
    },

    /// [`EgressProxy::serve`](crate::EgressProxy::serve) was called outside
    /// a tokio runtime.
    #[error("the egress proxy of VM {vm_id} must be started inside a tokio runtime (call it from async code)")]
    NoRuntime {
        /// The VM the proxy was for.
        vm_id: String,
    },

    /// A listener handed to the proxy cannot be used.
    #[error(
        "egress proxy of VM {vm_id}: cannot use the listener for port {port}: {source}; \
         pass a bound, listening TCP socket"
    )]
    Listener {
        /// The VM the proxy was for.
        vm_id: String,
        /// 80 or 443.
        port: u16,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The TLS settings for intercepted hosts cannot be built.
    #[error("egress proxy of VM {vm_id}: cannot set up TLS for hosts with secrets: {reason}")]
    Tls {
        /// The VM the proxy was for.
        vm_id: String,
        /// What failed and what to do.
        reason: String,
    },

    /// A measurement ([`crate::measure_throughput`],
    /// [`crate::measure_interception`]) could not run to the end.
    #[error("egress measurement failed while {step}: {source}")]
    Measurement {
        /// What it was doing.
        step: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}
