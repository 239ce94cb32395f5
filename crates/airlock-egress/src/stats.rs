//! Per-VM counters of the egress proxy, readable while it runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Most [`SecretBlock`]s kept per proxy; later ones are only counted.
pub const MAX_SECRET_BLOCKS_KEPT: usize = 64;

/// One request or connection the leak guard blocked: a secret's
/// placeholder headed for a host the secret is not bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretBlock {
    /// The host it was headed for (SNI or `Host`; bounded, escaped).
    pub host: String,
    /// The secret whose placeholder it carried.
    pub secret: String,
    /// Where the placeholder was seen (`server name`, `request head`,
    /// `request body`, `plain HTTP`).
    pub place: &'static str,
}

/// A snapshot of one VM's egress counters (see [`EgressHandle::stats`](super::EgressHandle::stats)).
///
/// Byte counts are from the VM's point of view and count what the proxy has
/// read from one side (and is writing, or has written, to the other),
/// including the ClientHello or request head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgressStats {
    /// Connections accepted on either port.
    pub connections_accepted: u64,
    /// Connections that passed every check and were spliced to an upstream.
    pub connections_allowed: u64,
    /// Connections refused by policy: no or invalid name, ECH, name not in
    /// the allowlist, only refused addresses, malformed or slow first
    /// bytes, too many connections.
    pub connections_denied: u64,
    /// Allowed names that could not be reached: resolution or connection
    /// failed or timed out.
    pub connections_failed: u64,
    /// Connections open right now (being checked or spliced).
    pub connections_active: u64,
    /// Bytes from the VM to upstream servers.
    pub bytes_out: u64,
    /// Bytes from upstream servers to the VM.
    pub bytes_in: u64,
    /// Requests or connections the leak guard blocked: a secret's
    /// placeholder headed for a host it is not bound to (not counted in
    /// `connections_denied`; the hosts are in
    /// [`EgressHandle::secret_blocks`](super::EgressHandle::secret_blocks)).
    pub secrets_blocked: u64,
}

/// The live counters behind [`EgressStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) allowed: AtomicU64,
    pub(crate) denied: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) secrets_blocked: AtomicU64,
    pub(crate) secret_blocks: Mutex<Vec<SecretBlock>>,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> EgressStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EgressStats {
            connections_accepted: get(&self.accepted),
            connections_allowed: get(&self.allowed),
            connections_denied: get(&self.denied),
            connections_failed: get(&self.failed),
            connections_active: get(&self.active),
            bytes_out: get(&self.bytes_out),
            bytes_in: get(&self.bytes_in),
            secrets_blocked: get(&self.secrets_blocked),
        }
    }

    /// Counts a leak-guard block and keeps its host (the first
    /// [`MAX_SECRET_BLOCKS_KEPT`]).
    pub(crate) fn record_secret_block(&self, host: &str, secret: &str, place: &'static str) {
        Self::bump(&self.secrets_blocked);
        let mut kept = self
            .secret_blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() < MAX_SECRET_BLOCKS_KEPT {
            kept.push(SecretBlock {
                host: super::decision::loggable_name(host),
                secret: secret.to_owned(),
                place,
            });
        }
    }

    /// The blocks kept so far.
    pub(crate) fn secret_blocks(&self) -> Vec<SecretBlock> {
        self.secret_blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
