//! A small async QMP client: the greeting, `qmp_capabilities`, commands
//! under a deadline, descriptors passed with `getfd` (`SCM_RIGHTS`), and
//! the two migration sequences VM templating needs (QEMU
//! `docs/system/vm-templating.rst`):
//!
//! - [`QmpClient::save_device_state`]: a stopped template's device state to
//!   an open file, with `x-ignore-shared` (its RAM is already in its
//!   shared memory file, so the stream holds only device state);
//! - [`QmpClient::load_device_state`]: the same file into a clone started
//!   with `-incoming defer`;
//! - [`QmpClient::save_full_state`] / [`QmpClient::load_full_state`]: a
//!   whole stopped VM, RAM included, to a file and back (pausing a
//!   session to disk, forking it).
//!
//! QEMU runs under `-sandbox ...,spawn=deny`, which forbids `exec:` URIs;
//! files travel as descriptors (`fd:NAME` after `getfd`). A clone must be
//! started with `-incoming defer`, not `-incoming fd:N`: with the latter
//! QEMU starts loading before the capability can be set and refuses the
//! stream ("Capability x-ignore-shared is off, but received capability is
//! on").

use crate::QemuError;
use airlock_sys_util::Backoff;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::{json, Value};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// The descriptor name a migration file is registered under (`getfd`).
pub const MIGRATION_FD_NAME: &str = "airlock-state";
/// The migration bandwidth cap while saving a whole VM to a file, in
/// bytes per second: QEMU 7.2 caps it at 128 MiB/s by default (meant for
/// a live migration over a network); a file takes what the disk gives.
const UNCAPPED_BANDWIDTH: u64 = 64 << 30;
/// Longest QMP line accepted (QEMU's answers here are a few KiB).
const MAX_LINE_BYTES: usize = 1 << 20;
/// The longest wait between two looks at a migration's progress. QEMU's
/// `MIGRATION` events (capability `events`) end the wait as soon as the
/// state changes, also one that came while a command was answered (it is
/// noted then, [`QmpClient::answer`]); the tick only bounds what an event
/// QEMU never sent could cost. (Polling with a back-off instead saw a
/// 95 ms save end at 110 ms.)
const MIGRATION_TICK: Duration = Duration::from_millis(50);
/// How often a missing or refusing QMP socket is tried again.
const CONNECT: Backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(50));

/// A QMP session in command mode (capabilities negotiated).
#[derive(Debug)]
pub struct QmpClient {
    socket: PathBuf,
    stream: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
    greeting: Value,
    /// A `MIGRATION` event was skipped while a command was answered: the
    /// next wait for one returns at once.
    migration_event_skipped: bool,
}

impl QmpClient {
    /// Connects to the QMP socket QEMU serves at `socket`, trying again
    /// while it is missing or refusing (QEMU is starting), and negotiates
    /// capabilities, all by `deadline`.
    ///
    /// # Errors
    /// [`QemuError::QmpIo`] when the socket never accepts,
    /// [`QemuError::QmpProtocol`] when the peer does not speak QMP,
    /// [`QemuError::QmpTimeout`].
    pub async fn connect(socket: &Path, deadline: Instant) -> Result<Self, QemuError> {
        let stream = airlock_sys_util::retry_until(
            &CONNECT,
            deadline,
            || UnixStream::connect(socket),
            |e| {
                matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                )
            },
        )
        .await
        .map_err(|source| QemuError::QmpIo {
            socket: socket.to_path_buf(),
            action: "connect",
            source,
        })?;
        Self::handshake(stream, socket.to_path_buf(), deadline).await
    }

    /// Reads the greeting on a connected `stream` and negotiates
    /// capabilities by `deadline`. `socket` names the peer in errors.
    ///
    /// # Errors
    /// As [`QmpClient::connect`].
    pub async fn handshake(
        stream: UnixStream,
        socket: PathBuf,
        deadline: Instant,
    ) -> Result<Self, QemuError> {
        let mut client = Self {
            socket,
            stream,
            buf: Vec::new(),
            next_id: 1,
            greeting: Value::Null,
            migration_event_skipped: false,
        };
        let greeting = client.read_message(deadline, "greeting").await?;
        if greeting.get("QMP").is_none() {
            return Err(client.protocol(format!("the first message is not a greeting: {greeting}")));
        }
        client.greeting = greeting;
        client.execute("qmp_capabilities", None, deadline).await?;
        Ok(client)
    }

    /// The QEMU version the greeting announced (`major.minor.micro`).
    pub fn qemu_version(&self) -> Option<String> {
        let v = self.greeting.pointer("/QMP/version/qemu")?;
        Some(format!(
            "{}.{}.{}",
            v.get("major")?,
            v.get("minor")?,
            v.get("micro")?
        ))
    }

    /// Runs `command` with `arguments` and returns its `return` value,
    /// skipping the asynchronous events in between.
    ///
    /// # Errors
    /// [`QemuError::QmpCommand`] when QEMU refuses it, [`QemuError::QmpIo`],
    /// [`QemuError::QmpProtocol`], [`QemuError::QmpTimeout`].
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        deadline: Instant,
    ) -> Result<Value, QemuError> {
        let (id, line) = self.command_line(command, arguments)?;
        let sent = tokio::time::timeout_at(deadline, self.stream.write_all(&line)).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.io("send", e)),
            Err(_) => return Err(timeout(command)),
        }
        self.answer(id, command, deadline).await
    }

    /// Hands QEMU a descriptor under `name` (`getfd`, the descriptor riding
    /// on the command as `SCM_RIGHTS`). QEMU keeps its own copy.
    ///
    /// # Errors
    /// As [`QmpClient::execute`].
    pub async fn send_fd(
        &mut self,
        name: &str,
        fd: BorrowedFd<'_>,
        deadline: Instant,
    ) -> Result<(), QemuError> {
        let (id, line) = self.command_line("getfd", Some(json!({ "fdname": name })))?;
        let send = async {
            // The descriptor travels with the first bytes of the command;
            // QEMU attaches it to the command it reads them in.
            let sent = loop {
                self.stream.writable().await?;
                let result = self.stream.try_io(Interest::WRITABLE, || {
                    let fds = [fd.as_raw_fd()];
                    sendmsg::<()>(
                        self.stream.as_raw_fd(),
                        &[IoSlice::new(&line)],
                        &[ControlMessage::ScmRights(&fds)],
                        MsgFlags::MSG_NOSIGNAL,
                        None,
                    )
                    .map_err(std::io::Error::from)
                });
                match result {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            self.stream.write_all(&line[sent..]).await
        };
        let sent = tokio::time::timeout_at(deadline, send).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.io("send a descriptor", e)),
            Err(_) => return Err(timeout("getfd")),
        }
        self.answer(id, "getfd", deadline).await.map(drop)
    }

    /// The run state (`running`, `paused`, `inmigrate`, ...).
    ///
    /// # Errors
    /// As [`QmpClient::execute`].
    pub async fn status(&mut self, deadline: Instant) -> Result<String, QemuError> {
        let answer = self.execute("query-status", None, deadline).await?;
        answer
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| self.protocol(format!("query-status without a status: {answer}")))
    }

    /// Pauses the vCPUs (`stop`).
    ///
    /// # Errors
    /// As [`QmpClient::execute`].
    pub async fn stop(&mut self, deadline: Instant) -> Result<(), QemuError> {
        self.execute("stop", None, deadline).await.map(drop)
    }

    /// Resumes the vCPUs (`cont`).
    ///
    /// # Errors
    /// As [`QmpClient::execute`].
    pub async fn cont(&mut self, deadline: Instant) -> Result<(), QemuError> {
        self.execute("cont", None, deadline).await.map(drop)
    }

    /// Saves the device state of a stopped VM whose RAM is a shared memory
    /// file to `file` (`x-ignore-shared`, `fd:` URI), and waits until the
    /// migration completed. The VM stays paused.
    ///
    /// # Errors
    /// [`QemuError::MigrationFailed`], or as [`QmpClient::execute`].
    pub async fn save_device_state(
        &mut self,
        file: BorrowedFd<'_>,
        deadline: Instant,
    ) -> Result<(), QemuError> {
        self.set_ignore_shared(true, deadline).await?;
        self.migrate_to(file, deadline).await
    }

    /// Saves the whole state of a stopped VM, its RAM included, to `file`
    /// (`x-ignore-shared` off, the bandwidth cap lifted: the stream goes
    /// to a file, not a network), and waits until the migration
    /// completed. The VM stays paused: [`QmpClient::cont`] runs it on.
    ///
    /// # Errors
    /// As [`QmpClient::save_device_state`].
    pub async fn save_full_state(
        &mut self,
        file: BorrowedFd<'_>,
        deadline: Instant,
    ) -> Result<(), QemuError> {
        self.set_ignore_shared(false, deadline).await?;
        let unlimited = json!({ "max-bandwidth": UNCAPPED_BANDWIDTH });
        self.execute("migrate-set-parameters", Some(unlimited), deadline)
            .await?;
        self.migrate_to(file, deadline).await
    }

    /// The ids of the VM's memory backends (`query-memdev`): a VM whose
    /// RAM is a named backend ([`crate::MEMORY_BACKEND_ID`]) lists it.
    ///
    /// # Errors
    /// As [`QmpClient::execute`].
    pub async fn memory_backends(&mut self, deadline: Instant) -> Result<Vec<String>, QemuError> {
        let answer = self.execute("query-memdev", None, deadline).await?;
        Ok(answer
            .as_array()
            .map(|devs| {
                devs.iter()
                    .filter_map(|d| d.get("id").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Migrates the stopped VM to `file` and waits for the end.
    async fn migrate_to(
        &mut self,
        file: BorrowedFd<'_>,
        deadline: Instant,
    ) -> Result<(), QemuError> {
        self.send_fd(MIGRATION_FD_NAME, file, deadline).await?;
        let uri = format!("fd:{MIGRATION_FD_NAME}");
        self.execute("migrate", Some(json!({ "uri": uri })), deadline)
            .await?;
        loop {
            let info = self.execute("query-migrate", None, deadline).await?;
            let status = info.get("status").and_then(Value::as_str).unwrap_or("none");
            match status {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    return Err(QemuError::MigrationFailed {
                        direction: "save",
                        status: status.to_owned(),
                        detail: info
                            .get("error-desc")
                            .and_then(Value::as_str)
                            .unwrap_or("QEMU gave no reason")
                            .to_owned(),
                    })
                }
                _ => self.next_migration_event(deadline, "migrate").await?,
            }
        }
    }

    /// Loads the device state in `file` into a VM started with
    /// `-incoming defer` whose RAM maps the template's memory file, and
    /// waits until the load ended. The VM is then paused: resume it with
    /// [`QmpClient::cont`].
    ///
    /// # Errors
    /// [`QemuError::MigrationFailed`], or as [`QmpClient::execute`]. A
    /// failed load usually ends QEMU: then [`QemuError::QmpIo`].
    pub async fn load_device_state(
        &mut self,
        file: BorrowedFd<'_>,
        deadline: Instant,
    ) -> Result<(), QemuError> {
        self.set_ignore_shared(true, deadline).await?;
        self.migrate_from(file, deadline).await
    }

    /// Loads a whole saved state ([`QmpClient::save_full_state`]: RAM
    /// included) into a VM started with `-incoming defer` with the same
    /// machine, and waits until the load ended. The VM is then paused.
    ///
    /// # Errors
    /// As [`QmpClient::load_device_state`].
    pub async fn load_full_state(
        &mut self,
        file: BorrowedFd<'_>,
        deadline: Instant,
    ) -> Result<(), QemuError> {
        self.set_ignore_shared(false, deadline).await?;
        self.migrate_from(file, deadline).await
    }

    /// Loads the stream in `file` and waits until the VM is paused.
    async fn migrate_from(
        &mut self,
        file: BorrowedFd<'_>,
        deadline: Instant,
    ) -> Result<(), QemuError> {
        self.send_fd(MIGRATION_FD_NAME, file, deadline).await?;
        let uri = format!("fd:{MIGRATION_FD_NAME}");
        self.execute("migrate-incoming", Some(json!({ "uri": uri })), deadline)
            .await?;
        loop {
            let status = self.status(deadline).await?;
            match status.as_str() {
                "inmigrate" => {
                    self.next_migration_event(deadline, "migrate-incoming")
                        .await?
                }
                "paused" => return Ok(()),
                _ => {
                    return Err(QemuError::MigrationFailed {
                        direction: "load",
                        status,
                        detail: "the machine is not paused after loading".into(),
                    })
                }
            }
        }
    }

    /// Sets `x-ignore-shared` to `on`, and `events` on: QEMU then tells
    /// each change of a migration's state ([`QmpClient::next_migration_event`]).
    async fn set_ignore_shared(&mut self, on: bool, deadline: Instant) -> Result<(), QemuError> {
        let caps = json!({ "capabilities": [
            { "capability": "x-ignore-shared", "state": on },
            { "capability": "events", "state": true },
        ] });
        self.execute("migrate-set-capabilities", Some(caps), deadline)
            .await
            .map(drop)
    }

    /// Waits until QEMU sends a `MIGRATION` event (the migration's state
    /// changed), at most [`MIGRATION_TICK`]; other events are skipped.
    /// Returns at once when one came during the last command. The caller
    /// then looks at the state.
    ///
    /// # Errors
    /// [`QemuError::QmpTimeout`] once `deadline` passed; as
    /// [`QmpClient::execute`] when the socket fails.
    async fn next_migration_event(
        &mut self,
        deadline: Instant,
        what: &str,
    ) -> Result<(), QemuError> {
        if Instant::now() >= deadline {
            return Err(timeout(what));
        }
        if std::mem::take(&mut self.migration_event_skipped) {
            return Ok(());
        }
        let tick = (Instant::now() + MIGRATION_TICK).min(deadline);
        loop {
            match self.read_message(tick, what).await {
                Ok(message) => match message.get("event").and_then(Value::as_str) {
                    Some("MIGRATION") => return Ok(()),
                    Some(_) => {
                        tracing::trace!(%message, "QMP event");
                    }
                    None => {
                        return Err(self.protocol(format!("an answer to no command: {message}")))
                    }
                },
                Err(QemuError::QmpTimeout { .. }) if Instant::now() < deadline => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn command_line(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<(u64, Vec<u8>), QemuError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let mut line = serde_json::to_vec(&message)
            .map_err(|e| self.protocol(format!("cannot encode {command}: {e}")))?;
        line.push(b'\n');
        Ok((id, line))
    }

    /// Reads until the answer to command `id`, skipping events.
    async fn answer(
        &mut self,
        id: u64,
        command: &str,
        deadline: Instant,
    ) -> Result<Value, QemuError> {
        loop {
            let mut message = self.read_message(deadline, command).await?;
            if let Some(event) = message.get("event") {
                tracing::trace!(%message, "QMP event");
                if event == "MIGRATION" {
                    self.migration_event_skipped = true;
                }
                continue;
            }
            if message.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(self.protocol(format!("an answer to another command: {message}")));
            }
            if let Some(error) = message.get("error") {
                let field = |k: &str| {
                    error
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                };
                return Err(QemuError::QmpCommand {
                    command: command.to_owned(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return match message.get_mut("return") {
                Some(value) => Ok(value.take()),
                None => Err(self.protocol(format!("neither return nor error: {message}"))),
            };
        }
    }

    /// One JSON message (one line).
    async fn read_message(&mut self, deadline: Instant, what: &str) -> Result<Value, QemuError> {
        let line = loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                break line;
            }
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(self.protocol(format!("a line longer than {MAX_LINE_BYTES} bytes")));
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Err(_) => return Err(timeout(what)),
                Ok(Err(e)) => return Err(self.io("read", e)),
                Ok(Ok(0)) => return Err(self.io("read", std::io::ErrorKind::UnexpectedEof.into())),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        };
        serde_json::from_slice(&line).map_err(|e| {
            self.protocol(format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&line).trim_end()
            ))
        })
    }

    fn io(&self, action: &'static str, source: std::io::Error) -> QemuError {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
        let source = if matches!(source.kind(), BrokenPipe | ConnectionReset | UnexpectedEof) {
            std::io::Error::new(
                source.kind(),
                "QEMU closed the QMP socket (it has probably exited)",
            )
        } else {
            source
        };
        QemuError::QmpIo {
            socket: self.socket.clone(),
            action,
            source,
        }
    }

    fn protocol(&self, reason: String) -> QemuError {
        QemuError::QmpProtocol {
            socket: self.socket.clone(),
            reason,
        }
    }
}

fn timeout(what: &str) -> QemuError {
    QemuError::QmpTimeout {
        what: what.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::io::{IoSliceMut, Write};
    use std::os::fd::RawFd;
    use std::os::unix::net::UnixStream as StdStream;

    /// The far end of the QMP socket, scripted by a test, on a thread.
    struct FakeQemu {
        stream: StdStream,
        buf: Vec<u8>,
    }

    impl FakeQemu {
        fn send(&mut self, message: Value) {
            let mut line = serde_json::to_vec(&message).unwrap();
            line.push(b'\n');
            self.stream.write_all(&line).unwrap();
        }

        /// The next command and the descriptors that came with it.
        fn recv(&mut self) -> (Value, Vec<RawFd>) {
            let mut fds = Vec::new();
            loop {
                if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=end).collect();
                    return (serde_json::from_slice(&line).unwrap(), fds);
                }
                let mut chunk = [0u8; 4096];
                let mut cmsg = nix::cmsg_space!([RawFd; 2]);
                let mut iov = [IoSliceMut::new(&mut chunk)];
                let msg = recvmsg::<()>(
                    self.stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                )
                .unwrap();
                for c in msg.cmsgs().unwrap() {
                    if let ControlMessageOwned::ScmRights(received) = c {
                        fds.extend(received);
                    }
                }
                let n = msg.bytes;
                assert!(n > 0, "the client closed the socket");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        /// Answers the next command, which must be `command`, with `value`.
        fn answer(&mut self, command: &str, value: Value) -> Value {
            let (message, _) = self.recv();
            assert_eq!(message["execute"], command, "{message}");
            self.send(json!({ "return": value, "id": message["id"] }));
            message
        }

        /// Greets, then takes the start of a migration: the
        /// `x-ignore-shared` capability (checked) and the state file's
        /// descriptor (closed after it is counted).
        fn greet_and_take_state_fd(&mut self) {
            self.greet();
            let caps = self.answer("migrate-set-capabilities", json!({}));
            assert_eq!(
                caps["arguments"]["capabilities"][0],
                json!({ "capability": "x-ignore-shared", "state": true })
            );
            assert_eq!(
                caps["arguments"]["capabilities"][1],
                json!({ "capability": "events", "state": true })
            );
            let (getfd, fds) = self.recv();
            assert_eq!(getfd["arguments"]["fdname"], MIGRATION_FD_NAME);
            assert_eq!(fds.len(), 1, "the state file came without its descriptor");
            nix::unistd::close(fds[0]).unwrap();
            self.send(json!({ "return": {}, "id": getfd["id"] }));
        }

        fn greet(&mut self) {
            self.send(json!({ "QMP": { "version": { "qemu": { "major": 7, "minor": 2, "micro": 22 }, "package": "" }, "capabilities": ["oob"] } }));
            self.answer("qmp_capabilities", json!({}));
        }
    }

    /// A client whose peer runs `script` on a thread; joined by the caller.
    fn fake(
        script: impl FnOnce(&mut FakeQemu) + Send + 'static,
    ) -> (UnixStream, std::thread::JoinHandle<()>) {
        let (ours, theirs) = StdStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let thread = std::thread::spawn(move || {
            script(&mut FakeQemu {
                stream: theirs,
                buf: Vec::new(),
            })
        });
        (UnixStream::from_std(ours).unwrap(), thread)
    }

    async fn client(
        script: impl FnOnce(&mut FakeQemu) + Send + 'static,
    ) -> (QmpClient, std::thread::JoinHandle<()>) {
        let (stream, thread) = fake(script);
        let client = QmpClient::handshake(stream, "/fake/qmp.sock".into(), soon())
            .await
            .unwrap();
        (client, thread)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn the_handshake_negotiates_capabilities_and_keeps_the_version() {
        let (client, thread) = client(|q| q.greet()).await;
        assert_eq!(client.qemu_version().as_deref(), Some("7.2.22"));
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_does_not_greet_is_not_qmp() {
        let (stream, thread) = fake(|q| q.send(json!({ "hello": 1 })));
        let err = QmpClient::handshake(stream, "/fake/qmp.sock".into(), soon())
            .await
            .unwrap_err();
        assert!(matches!(err, QemuError::QmpProtocol { .. }), "{err}");
        assert!(err.to_string().contains("served by QEMU"), "{err}");
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn execute_skips_events_and_returns_the_answer() {
        let (mut client, thread) = client(|q| {
            q.greet();
            let (message, _) = q.recv();
            assert_eq!(message["execute"], "query-status");
            q.send(json!({ "event": "RESUME", "timestamp": { "seconds": 1, "microseconds": 2 } }));
            q.send(
                json!({ "return": { "status": "running", "running": true }, "id": message["id"] }),
            );
        })
        .await;
        assert_eq!(client.status(soon()).await.unwrap(), "running");
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn a_refused_command_carries_qemus_class_and_description() {
        let (mut client, thread) = client(|q| {
            q.greet();
            let (message, _) = q.recv();
            q.send(json!({ "error": { "class": "CommandNotFound", "desc": "The command frobnicate has not been found" }, "id": message["id"] }));
        })
        .await;
        let err = client
            .execute("frobnicate", None, soon())
            .await
            .unwrap_err();
        match err {
            QemuError::QmpCommand {
                command,
                class,
                desc,
            } => {
                assert_eq!(command, "frobnicate");
                assert_eq!(class, "CommandNotFound");
                assert!(desc.contains("not been found"));
            }
            other => panic!("{other}"),
        }
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn send_fd_hands_over_a_descriptor_of_the_same_file() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"device state").unwrap();
        let (mut client, thread) = client(|q| {
            q.greet();
            let (message, fds) = q.recv();
            assert_eq!(message["execute"], "getfd");
            assert_eq!(message["arguments"]["fdname"], "state");
            assert_eq!(fds.len(), 1);
            let mut read = [0u8; 12];
            nix::unistd::lseek(fds[0], 0, nix::unistd::Whence::SeekSet).unwrap();
            assert_eq!(nix::unistd::read(fds[0], &mut read).unwrap(), 12);
            assert_eq!(&read, b"device state");
            nix::unistd::close(fds[0]).unwrap();
            q.send(json!({ "return": {}, "id": message["id"] }));
        })
        .await;
        use std::os::fd::AsFd;
        client.send_fd("state", file.as_fd(), soon()).await.unwrap();
        thread.join().unwrap();
    }

    /// Saves (`save`) or loads a state file against a fake QEMU that takes
    /// the capability and the descriptor, then runs `script`.
    async fn migration(
        save: bool,
        script: impl FnOnce(&mut FakeQemu) + Send + 'static,
    ) -> Result<(), QemuError> {
        use std::os::fd::AsFd;
        let file = tempfile::tempfile().unwrap();
        let (mut client, thread) = client(|q| {
            q.greet_and_take_state_fd();
            script(q);
        })
        .await;
        let result = if save {
            client.save_device_state(file.as_fd(), soon()).await
        } else {
            client.load_device_state(file.as_fd(), soon()).await
        };
        thread.join().unwrap();
        result
    }

    #[tokio::test]
    async fn saving_sets_ignore_shared_passes_the_file_and_waits_for_completion() {
        migration(true, |q| {
            let migrate = q.answer("migrate", json!({}));
            assert_eq!(migrate["arguments"]["uri"], "fd:airlock-state");
            q.answer("query-migrate", json!({ "status": "active" }));
            q.answer("query-migrate", json!({ "status": "completed" }));
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_migration_event_ends_the_wait_for_the_next_look_before_the_tick() {
        migration(true, |q| {
            q.answer("migrate", json!({}));
            q.answer("query-migrate", json!({ "status": "active" }));
            std::thread::sleep(Duration::from_millis(5));
            q.send(json!({ "event": "RESUME", "timestamp": { "seconds": 1, "microseconds": 0 } }));
            q.send(json!({ "event": "MIGRATION", "data": { "status": "completed" }, "timestamp": { "seconds": 1, "microseconds": 1 } }));
            let sent = std::time::Instant::now();
            q.answer("query-migrate", json!({ "status": "completed" }));
            assert!(
                sent.elapsed() < MIGRATION_TICK,
                "the client looked again only after {:?}",
                sent.elapsed()
            );
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_migration_event_sent_before_a_querys_answer_is_not_waited_for_again() {
        migration(true, |q| {
            q.answer("migrate", json!({}));
            // The migration thread's event lands before the main loop's
            // answer, which still says "active".
            let (query, _) = q.recv();
            assert_eq!(query["execute"], "query-migrate");
            q.send(json!({ "event": "MIGRATION", "data": { "status": "completed" }, "timestamp": { "seconds": 1, "microseconds": 1 } }));
            q.send(json!({ "return": { "status": "active" }, "id": query["id"] }));
            let sent = std::time::Instant::now();
            q.answer("query-migrate", json!({ "status": "completed" }));
            assert!(
                sent.elapsed() < MIGRATION_TICK / 2,
                "the client waited {:?} for an event it had already read",
                sent.elapsed()
            );
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_failed_save_reports_qemus_reason() {
        let err = migration(true, |q| {
            q.answer("migrate", json!({}));
            q.answer(
                "query-migrate",
                json!({ "status": "failed", "error-desc": "Broken pipe" }),
            );
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&err, QemuError::MigrationFailed { direction: "save", detail, .. } if detail == "Broken pipe"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn loading_waits_until_the_machine_leaves_inmigrate() {
        migration(false, |q| {
            let incoming = q.answer("migrate-incoming", json!({}));
            assert_eq!(incoming["arguments"]["uri"], "fd:airlock-state");
            q.answer("query-status", json!({ "status": "inmigrate" }));
            q.answer("query-status", json!({ "status": "inmigrate" }));
            q.answer("query-status", json!({ "status": "paused" }));
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_load_that_ends_running_is_not_taken_for_success() {
        let err = migration(false, |q| {
            q.answer("migrate-incoming", json!({}));
            q.answer("query-status", json!({ "status": "internal-error" }));
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&err, QemuError::MigrationFailed { direction: "load", status, .. } if status == "internal-error"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_silent_peer_fails_at_the_deadline() {
        let (stream, thread) = fake(|q| {
            // Greets, then never answers.
            q.send(json!({ "QMP": {} }));
            let _ = q.recv();
            std::thread::sleep(Duration::from_millis(300));
        });
        let deadline = Instant::now() + Duration::from_millis(100);
        let err = QmpClient::handshake(stream, "/fake/qmp.sock".into(), deadline)
            .await
            .unwrap_err();
        assert!(matches!(err, QemuError::QmpTimeout { .. }), "{err}");
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_hangs_up_is_an_io_error_saying_qemu_exited() {
        let (stream, thread) = fake(|q| q.send(json!({ "QMP": {} })));
        let err = QmpClient::handshake(stream, "/fake/qmp.sock".into(), soon())
            .await
            .unwrap_err();
        assert!(matches!(err, QemuError::QmpIo { .. }), "{err}");
        assert!(err.to_string().contains("exited"), "{err}");
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn connect_waits_for_a_socket_that_appears_late() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let served = path.clone();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            let listener = std::os::unix::net::UnixListener::bind(&served).unwrap();
            let (stream, _) = listener.accept().unwrap();
            FakeQemu {
                stream,
                buf: Vec::new(),
            }
            .greet();
        });
        let client = QmpClient::connect(&path, soon()).await.unwrap();
        assert_eq!(client.qemu_version().as_deref(), Some("7.2.22"));
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn connect_to_a_socket_that_never_appears_fails_by_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let deadline = Instant::now() + Duration::from_millis(80);
        let err = QmpClient::connect(&dir.path().join("qmp.sock"), deadline)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                QemuError::QmpIo {
                    action: "connect",
                    ..
                }
            ),
            "{err}"
        );
    }
}
