//! The control operations: the agent's hello and ping (with the protocol
//! version check), the interpreter warm-up, the reseed after a restore, and
//! a raw line for tests of the agent's error handling.

use super::channel::{next, unexpected, within, AgentInfo};
use super::handle::Client;
use crate::message::{Completion, EventBody, Language, OpId, RequestBody};
use crate::{check_protocol, Data, ProtocolError};
use std::time::Duration;

impl Client {
    /// Sends `ping` and waits for `pong` (without checking the version).
    ///
    /// # Errors
    /// [`ProtocolError::Timeout`], [`ProtocolError::Closed`] or a transport
    /// error.
    pub async fn ping(&self, timeout: Duration) -> Result<AgentInfo, ProtocolError> {
        let (op, mut rx) = self.channel.open(RequestBody::Ping).await?;
        // Closed however this ends: a ping dropped while waiting (one of
        // several in flight, the first answer taken) leaves no route.
        let _route = self.channel.closing(op);
        let answer = within(timeout, "ping", next(&mut rx)).await;
        match answer? {
            EventBody::Pong { version, protocol } => Ok(AgentInfo { version, protocol }),
            other => Err(unexpected("ping", other)),
        }
    }

    /// Waits for the agent's hello (see [`HELLO_OP`](crate::HELLO_OP)) and checks its
    /// protocol version. Returns at once if it already came.
    ///
    /// # Errors
    /// [`ProtocolError::Timeout`], [`ProtocolError::Closed`],
    /// [`ProtocolError::VersionMismatch`].
    pub async fn hello(&self, timeout: Duration) -> Result<AgentInfo, ProtocolError> {
        let mut hello = self.channel.hello();
        let info = within(timeout, "hello", async {
            hello
                .wait_for(Option::is_some)
                .await
                .map_err(|_| ProtocolError::Closed)
                .map(|info| info.clone())
        })
        .await?
        .ok_or(ProtocolError::Closed)?;
        check_protocol(&info.version, info.protocol)?;
        Ok(info)
    }

    /// Pings and checks that the agent speaks our protocol version.
    ///
    /// # Errors
    /// As [`Client::ping`], and [`ProtocolError::VersionMismatch`].
    pub async fn handshake(&self, timeout: Duration) -> Result<AgentInfo, ProtocolError> {
        let info = self.ping(timeout).await?;
        check_protocol(&info.version, info.protocol)?;
        Ok(info)
    }

    /// Asks the agent to start `language`'s persistent interpreter (the one
    /// cells run in) with its common modules imported, and waits until it
    /// is ready.
    ///
    /// # Errors
    /// As [`Client::ping`], or [`ProtocolError::Guest`].
    pub async fn warm_repl(
        &self,
        language: Language,
        timeout: Duration,
    ) -> Result<Completion, ProtocolError> {
        self.warm(language, false, timeout).await
    }

    /// [`Client::warm_repl`] in a VM about to be saved as a memory
    /// template: the agent first sets the guest clock a day back, so that
    /// the clones' reseed (which sets the real time) makes every OpenSSL
    /// DRBG the interpreter seeded reseed itself from the clone's kernel
    /// (`docs/templates.md`, "After a restore, before user code").
    ///
    /// # Errors
    /// As [`Client::warm_repl`].
    pub async fn warm_repl_for_template(
        &self,
        language: Language,
        timeout: Duration,
    ) -> Result<Completion, ProtocolError> {
        self.warm(language, true, timeout).await
    }

    async fn warm(
        &self,
        language: Language,
        for_template: bool,
        timeout: Duration,
    ) -> Result<Completion, ProtocolError> {
        let (op, mut rx) = self
            .channel
            .open(RequestBody::WarmRepl {
                language,
                for_template,
            })
            .await?;
        let answer = within(timeout, "warm_repl", next(&mut rx)).await;
        self.channel.close(op);
        match answer? {
            EventBody::Complete(completion) => Ok(completion),
            other => Err(unexpected("warm_repl", other)),
        }
    }

    /// Ends `language`'s persistent interpreter (the next cell starts a
    /// fresh one); returns once it has ended.
    ///
    /// # Errors
    /// As [`Client::ping`], or [`ProtocolError::Guest`].
    pub async fn reset_repl(
        &self,
        language: Language,
        timeout: Duration,
    ) -> Result<Completion, ProtocolError> {
        let (op, mut rx) = self
            .channel
            .open(RequestBody::ResetRepl { language })
            .await?;
        let answer = within(timeout, "reset_repl", next(&mut rx)).await;
        self.channel.close(op);
        match answer? {
            EventBody::Complete(completion) => Ok(completion),
            EventBody::Error { kind, message } => Err(ProtocolError::Guest { kind, message }),
            other => Err(unexpected("reset_repl", other)),
        }
    }

    /// Sends fresh `entropy` and the host's wall clock (`unix_time_ns`) to
    /// a restored guest; returns `(entropy_bytes, clock_step_ms)` as the
    /// agent reports them.
    ///
    /// # Errors
    /// As [`Client::ping`], or [`ProtocolError::Guest`].
    pub async fn reseed(
        &self,
        entropy: &[u8],
        unix_time_ns: u64,
        timeout: Duration,
    ) -> Result<(u64, i64), ProtocolError> {
        self.reseed_as(entropy, unix_time_ns, false, timeout).await
    }

    /// As [`Client::reseed`]; `copy` for one of several copies of one live
    /// machine (a fork: see [`RequestBody::Reseed`]).
    ///
    /// # Errors
    /// As [`Client::reseed`].
    pub async fn reseed_as(
        &self,
        entropy: &[u8],
        unix_time_ns: u64,
        copy: bool,
        timeout: Duration,
    ) -> Result<(u64, i64), ProtocolError> {
        let body = RequestBody::Reseed {
            entropy: Data::base64(entropy.to_vec()),
            unix_time_ns,
            copy,
        };
        let (op, mut rx) = self.channel.open(body).await?;
        let answer = within(timeout, "reseed", next(&mut rx)).await;
        self.channel.close(op);
        match answer? {
            EventBody::Reseeded {
                entropy_bytes,
                clock_step_ms,
            } => Ok((entropy_bytes, clock_step_ms)),
            other => Err(unexpected("reseed", other)),
        }
    }

    /// Sends a raw line (for tests of the agent's error handling), then
    /// waits for the first event of operation `op`.
    ///
    /// # Errors
    /// As [`Client::ping`].
    pub async fn send_raw_line(
        &self,
        op: OpId,
        line: &[u8],
        timeout: Duration,
    ) -> Result<EventBody, ProtocolError> {
        let mut rx = self.channel.route(op);
        let mut whole = Vec::with_capacity(line.len() + 1);
        whole.extend_from_slice(line);
        whole.push(b'\n');
        let result = async {
            self.channel.send_line(whole).await?;
            within(timeout, "raw line", next(&mut rx)).await
        }
        .await;
        self.channel.close(op);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ping_dropped_while_it_waits_leaves_no_route() {
        // A guest that reads the ping and never answers.
        let (host_cmd, mut agent_cmd) = tokio::io::duplex(1 << 16);
        let (_agent_event, host_event) = tokio::io::duplex(1 << 16);
        let drain = tokio::spawn(async move {
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut agent_cmd, &mut sink).await;
        });
        let client = Client::new(host_event, host_cmd);
        let waited = tokio::time::timeout(
            Duration::from_millis(50),
            client.ping(Duration::from_secs(30)),
        )
        .await;
        assert!(waited.is_err(), "the guest never answers");
        assert_eq!(client.channel.open_routes(), 0);
        drop(client);
        drain.abort();
    }
}
