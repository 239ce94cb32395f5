//! The exec operations: code or a package install run in the guest, read
//! as a stream of output events and one completion; cancel.

use super::caps::{CappedExecOutput, ExecOutput};
use super::channel::{next, unexpected, within};
use super::handle::Client;
use crate::message::{Completion, EventBody, ExecRequest, Language, OpId, Request, RequestBody};
use crate::{CellError, ExecResult, ProtocolError};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// One piece of an exec's progress.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// Bytes on standard output.
    Stdout(Bytes),
    /// Bytes on standard error.
    Stderr(Bytes),
    /// A value the cell showed (a MIME bundle), in order with the output.
    Result(ExecResult),
    /// The cell's uncaught exception (its traceback came on stderr).
    CellError(CellError),
    /// The process ended.
    Complete(Completion),
}

impl Client {
    /// Starts an exec; read its progress from the returned stream.
    ///
    /// # Errors
    /// [`ProtocolError::Closed`] or a transport error.
    pub async fn exec(&self, request: ExecRequest) -> Result<ExecStream<'_>, ProtocolError> {
        let (op, rx) = self.channel.open(RequestBody::Exec(request)).await?;
        Ok(ExecStream {
            client: self,
            op,
            rx,
            done: false,
        })
    }

    /// Starts a package install (answered like an exec: output events,
    /// then the completion); read its progress from the returned stream.
    ///
    /// # Errors
    /// [`ProtocolError::Closed`] or a transport error.
    pub async fn install_packages(
        &self,
        language: Language,
        packages: Vec<String>,
        timeout: Duration,
        env: BTreeMap<String, String>,
    ) -> Result<ExecStream<'_>, ProtocolError> {
        let (op, rx) = self
            .channel
            .open(RequestBody::InstallPackages {
                language,
                packages,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                env,
            })
            .await?;
        Ok(ExecStream {
            client: self,
            op,
            rx,
            done: false,
        })
    }

    /// Runs an exec to its end, collecting the output. The host-side
    /// deadline is the request's timeout plus `grace` (the guest enforces the
    /// timeout itself; this only guards against a stuck guest).
    ///
    /// # Errors
    /// As [`Client::exec`], plus [`ProtocolError::Timeout`] and
    /// [`ProtocolError::Guest`].
    pub async fn exec_collect(
        &self,
        request: ExecRequest,
        grace: Duration,
    ) -> Result<ExecOutput, ProtocolError> {
        let deadline = Duration::from_millis(request.timeout_ms) + grace;
        let stream = self.exec(request).await?;
        within(deadline, "exec", stream.collect()).await
    }

    /// Interrupts the exec running under `target` (see
    /// [`ExecStream::op`](super::ExecStream::op)): the agent sends SIGINT (a cell's interpreter
    /// survives it where it can), then kills after its grace; the exec's
    /// own stream reports the end (exit code 130 for a cell). Not
    /// answered; an unknown or finished target is ignored by the agent.
    ///
    /// # Errors
    /// [`ProtocolError::Closed`] or a transport error.
    pub async fn cancel(&self, target: OpId) -> Result<(), ProtocolError> {
        self.send_to_exec(RequestBody::Cancel { target }).await
    }
}

impl Client {
    /// Writes `data` to the stdin of the exec running under `target` (one
    /// started in [`crate::ExecMode::PipedProcess`]), after what was sent
    /// before. Not answered; the agent ignores an unknown or finished
    /// target.
    ///
    /// # Errors
    /// [`ProtocolError::Closed`] or a transport error.
    pub async fn send_stdin(&self, target: OpId, data: &[u8]) -> Result<(), ProtocolError> {
        self.send_to_exec(RequestBody::Stdin {
            target,
            data: crate::Data::text_or_base64(data.to_vec()),
        })
        .await
    }

    /// Closes the stdin of the exec running under `target` once what was
    /// sent before is written. Not answered.
    ///
    /// # Errors
    /// [`ProtocolError::Closed`] or a transport error.
    pub async fn close_stdin(&self, target: OpId) -> Result<(), ProtocolError> {
        self.send_to_exec(RequestBody::CloseStdin { target }).await
    }

    async fn send_to_exec(&self, body: RequestBody) -> Result<(), ProtocolError> {
        if self.channel.is_closed() {
            return Err(ProtocolError::Closed);
        }
        let op = self.channel.new_op();
        self.channel.send(&Request::new(op, body)).await
    }
}

/// An exec in progress.
#[derive(Debug)]
pub struct ExecStream<'a> {
    client: &'a Client,
    op: OpId,
    rx: mpsc::Receiver<EventBody>,
    done: bool,
}

impl ExecStream<'_> {
    /// The operation id of this exec.
    pub fn op(&self) -> OpId {
        self.op
    }

    /// Reads the stream to its completion, keeping the output within the
    /// client's caps ([`CappedExecOutput`]). No deadline of its own: wrap
    /// it in one.
    ///
    /// # Errors
    /// As [`ExecStream::next`](super::ExecStream::next), and [`ProtocolError::Closed`] when the
    /// stream ends without a completion.
    pub async fn collect(mut self) -> Result<ExecOutput, ProtocolError> {
        let mut output = CappedExecOutput::new(&self.client.config);
        while let Some(event) = self.next().await? {
            match event {
                ExecEvent::Stdout(b) => {
                    output.push_stdout(&b);
                }
                ExecEvent::Stderr(b) => {
                    output.push_stderr(&b);
                }
                ExecEvent::Result(result) => output.push_result(result),
                ExecEvent::CellError(error) => output.set_error(error),
                ExecEvent::Complete(completion) => return Ok(output.finish(completion)),
            }
        }
        Err(ProtocolError::Closed)
    }

    /// The next piece of progress; `None` after [`ExecEvent::Complete`](super::ExecEvent::Complete).
    ///
    /// # Errors
    /// [`ProtocolError::Guest`] when the agent refused or failed the exec,
    /// [`ProtocolError::Closed`] when the guest went away.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, ProtocolError> {
        if self.done {
            return Ok(None);
        }
        let event = next(&mut self.rx).await;
        let event = match event {
            Ok(EventBody::Stdout { data }) => ExecEvent::Stdout(data.into_bytes()),
            Ok(EventBody::Stderr { data }) => ExecEvent::Stderr(data.into_bytes()),
            Ok(EventBody::Result(result)) => ExecEvent::Result(result),
            Ok(EventBody::CellError(error)) => ExecEvent::CellError(error),
            Ok(EventBody::Complete(c)) => {
                self.done = true;
                ExecEvent::Complete(c)
            }
            Ok(other) => {
                self.done = true;
                return Err(unexpected("exec", other));
            }
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        };
        Ok(Some(event))
    }
}

impl Drop for ExecStream<'_> {
    fn drop(&mut self) {
        self.client.channel.close(self.op);
    }
}
