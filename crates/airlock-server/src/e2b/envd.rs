//! E2B's envd plane (port 49983): processes and the filesystem over the
//! Connect protocol (JSON), and `/files` uploads and downloads.
//!
//! - `Process/Start` runs the command as a new bash process in the
//!   sandbox's VM beside everything else it runs (cells, file transfers,
//!   other commands: `processes.rs`), streaming `start`, `data`
//!   (stdout/stderr, base64) and `end`. `Connect` follows a running one
//!   from then on, `List` lists them, `SendSignal` stops one. A command
//!   started with `stdin` reads what `SendInput` writes until
//!   `CloseStdin`. A client that leaves a stream leaves the process
//!   running. `StreamInput`, PTYs and watchers answer `unimplemented`.
//! - The filesystem calls (`Stat`, `ListDir`, `MakeDir`, `Move`,
//!   `Remove`) run GNU `find`, `mkdir`, `mv` and `rm` the same way, as the
//!   sandbox user; paths under `/home/user` are the sandbox home
//!   ([`super::paths`]).
//! - `/files` reads and writes files of the sandbox home through the
//!   agent (sha256-checked, `[files] max_bytes`); multipart uploads of one
//!   or several files.

use super::connect::{self, STREAM_CONTENT_TYPE};
use super::paths::{home_relative, shell_quote, to_e2b, to_guest, E2B_HOME};
use super::processes::{Ended, InputRefused, ProcessEvent};
use super::sandboxes::Sandbox;
use super::stream::{watching_body, Frames, KEEPALIVE_EVERY};
use super::{for_tenant, sandbox_of, streamed, E2b, E2bError, Plane, ACCESS_TOKEN};
use crate::error::ServerError;
use airlock::{CellRequest, Discard, OutputStream};
use airlock_protocol::Language;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;

/// Longest a filesystem call may run in the VM.
const FS_TIMEOUT: Duration = Duration::from_secs(30);

/// envd's routes.
pub(super) fn routes() -> Router<E2b> {
    let mut router = Router::new()
        .route("/process.Process/Start", post(start))
        .route("/process.Process/List", post(list))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/process.Process/Connect", post(connect_to))
        .route("/process.Process/SendInput", post(send_input))
        .route("/process.Process/CloseStdin", post(close_stdin))
        .route("/filesystem.Filesystem/Stat", post(stat))
        .route("/filesystem.Filesystem/ListDir", post(list_dir))
        .route("/filesystem.Filesystem/MakeDir", post(make_dir))
        .route("/filesystem.Filesystem/Move", post(move_entry))
        .route("/filesystem.Filesystem/Remove", post(remove))
        .route("/files", get(download).post(upload))
        .route("/health", get(health));
    router = router.route(
        "/filesystem.Filesystem/WatchDir",
        post(stream_unimplemented),
    );
    for unary in [
        "/process.Process/StreamInput",
        "/process.Process/Update",
        "/filesystem.Filesystem/CreateWatcher",
        "/filesystem.Filesystem/GetWatcherEvents",
        "/filesystem.Filesystem/RemoveWatcher",
    ] {
        router = router.route(unary, post(unary_unimplemented));
    }
    router.fallback(not_found)
}

/// The sandbox of an envd request, by its `X-Access-Token`.
fn sandbox(e2b: &E2b, headers: &HeaderMap, plane: Plane) -> Result<Arc<Sandbox>, E2bError> {
    sandbox_of(
        e2b,
        headers,
        plane,
        |s| vec![s.access_token.as_str()],
        &[ACCESS_TOKEN],
    )
}

async fn not_found(request: Request) -> Response {
    connect::coded_error(
        "not_found",
        &format!("no route {} {}", request.method(), request.uri().path()),
    )
}

async fn health(State(e2b): State<E2b>, headers: HeaderMap) -> Response {
    let id = super::header_str(&headers, super::SANDBOX_ID).unwrap_or_default();
    match e2b.sandboxes.get(None, id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => E2bError::sandbox_gone(id).into_response(),
    }
}

fn unsupported_message(path: &str) -> String {
    let what = path.rsplit('/').next().unwrap_or(path);
    format!(
        "{what} is not supported by this server (Airlock has no PTYs, input streams or \
         filesystem watchers; see docs/e2b.md)"
    )
}

async fn unary_unimplemented(request: Request) -> Response {
    connect::coded_error("unimplemented", &unsupported_message(request.uri().path()))
}

async fn stream_unimplemented(request: Request) -> Response {
    let message = unsupported_message(request.uri().path());
    stream_error("unimplemented", &message)
}

/// A stream that ends at once with `code`: streams carry their errors in
/// the end frame (the JS SDK reads an HTTP error on a stream as
/// `unimplemented`).
fn stream_error(code: &str, message: &str) -> Response {
    let mut response = streamed(
        STREAM_CONTENT_TYPE,
        axum::body::Body::from(connect::end_frame(Some((code, message)))),
    );
    response
        .extensions_mut()
        .insert(crate::error::ErrorKind("e2b_stream_error"));
    response
}

/// The JSON of a unary request.
fn unary_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, E2bError> {
    serde_json::from_slice(body)
        .map_err(|e| E2bError::connect("invalid_argument", format!("the request: {e}")))
}

/// A server error as a unary Connect answer.
fn unary_error(error: &ServerError) -> E2bError {
    E2bError::server(Plane::Envd, error)
}

#[derive(Debug, Deserialize)]
struct StartRequest {
    process: ProcessConfig,
    pty: Option<Value>,
    tag: Option<String>,
    /// Whether the process gets a stdin the client writes (`SendInput`).
    #[serde(default)]
    stdin: Option<bool>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct ProcessConfig {
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    cwd: Option<String>,
}

impl ProcessConfig {
    /// The bash code that runs it: `bash -c X` (with or without `-l`) is
    /// X; anything else is exec'd with its arguments quoted. A `cwd` is
    /// entered first.
    fn code(&self) -> String {
        let is_shell = matches!(self.cmd.as_str(), "/bin/bash" | "bash" | "/bin/sh" | "sh");
        let script = match self.args.as_slice() {
            [flag, c, script] if is_shell && flag == "-l" && c == "-c" => script.clone(),
            [c, script] if is_shell && c == "-c" => script.clone(),
            _ => std::iter::once(&self.cmd)
                .chain(&self.args)
                .map(|word| shell_quote(word))
                .collect::<Vec<_>>()
                .join(" "),
        };
        match &self.cwd {
            Some(cwd) => format!("cd {} || exit 1\n{script}", shell_quote(&to_guest(cwd))),
            None => script,
        }
    }
}

/// The timeout of a call: `Connect-Timeout-Ms` when it is sent, within
/// the tenant's longest timeout.
fn timeout_of(headers: &HeaderMap, sandbox: &Sandbox) -> Duration {
    let longest = Duration::from_secs(sandbox.caller.quotas.timeout_s);
    super::header_str(headers, "connect-timeout-ms")
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(longest, |ms| Duration::from_millis(ms).min(longest))
}

async fn start(State(e2b): State<E2b>, headers: HeaderMap, body: Bytes) -> Response {
    let sandbox = match sandbox(&e2b, &headers, Plane::Envd) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let tenant = sandbox.caller.tenant.clone();
    let response = start_stream(&e2b, &headers, &body, sandbox).await;
    for_tenant(response, &tenant)
}

async fn start_stream(
    e2b: &E2b,
    headers: &HeaderMap,
    body: &[u8],
    sandbox: Arc<Sandbox>,
) -> Response {
    let request: StartRequest = match connect::request_message(body)
        .and_then(|v| serde_json::from_value(v).map_err(|e| format!("the request: {e}")))
    {
        Ok(r) => r,
        Err(message) => return stream_error("invalid_argument", &message),
    };
    if request.pty.is_some() {
        return stream_error(
            "unimplemented",
            "PTYs are not supported by this server (see docs/e2b.md)",
        );
    }
    if let Some(reason) = sandbox.session.close_reason() {
        let e = ServerError::from(airlock::SessionError::Closed {
            session_id: sandbox.id.clone(),
            reason,
        });
        return stream_error(connect::code_of(e.status()), &e.public().message);
    }
    if sandbox.processes.list().len() >= super::processes::MAX_PROCESSES {
        return stream_error(
            "resource_exhausted",
            &format!(
                "this sandbox runs {} commands already: wait for one to end or kill one",
                super::processes::MAX_PROCESSES
            ),
        );
    }
    let mut cell = CellRequest::new(request.process.code());
    cell.timeout = timeout_of(headers, &sandbox);
    cell.env = sandbox.env_vars.clone();
    cell.env.extend(request.process.envs.clone());
    let config = serde_json::to_value(&request.process).unwrap_or(Value::Null);
    let (pid, events) = sandbox.processes.start(
        Arc::clone(&sandbox.session),
        cell,
        config,
        request.tag,
        request.stdin.unwrap_or(false),
    );
    follow(e2b, headers, pid, events)
}

/// The stream of a process from now on: `start` (its pid), its `data`,
/// its `end`, with keepalives while it is silent.
fn follow(
    e2b: &E2b,
    headers: &HeaderMap,
    pid: u32,
    events: broadcast::Receiver<ProcessEvent>,
) -> Response {
    let max_bytes = e2b.airlock.config().streams.max_bytes;
    // The client's `Keepalive-Ping-Interval` (seconds), when shorter.
    let every = super::header_str(headers, "keepalive-ping-interval")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(KEEPALIVE_EVERY, |s| {
            Duration::from_secs(s).min(KEEPALIVE_EVERY)
        });
    let keepalive = (connect::frame(&json!({"event": {"keepalive": {}}})), every);
    let body = watching_body(max_bytes, keepalive, move |frames| {
        forward(pid, events, frames)
    });
    streamed(STREAM_CONTENT_TYPE, body)
}

/// Writes a process's events as Connect frames until its end, or until
/// the client leaves.
async fn forward(pid: u32, mut events: broadcast::Receiver<ProcessEvent>, mut frames: Frames) {
    frames.last(connect::frame(&json!({"event": {"start": {"pid": pid}}})));
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = frames.closed() => return,
        };
        match event {
            Ok(ProcessEvent::Data { stream, bytes }) => data_frame(&mut frames, stream, &bytes),
            Ok(ProcessEvent::End(ended)) => return end_frames(&frames, ended),
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                let note = format!(
                    "[airlock: {lost} pieces of output lost: this stream fell behind the process]\n"
                );
                data_frame(&mut frames, OutputStream::Stderr, note.as_bytes());
            }
            Err(broadcast::error::RecvError::Closed) => {
                frames.last(connect::end_frame(Some((
                    "unavailable",
                    "the sandbox ended while the process ran",
                ))));
                return;
            }
        }
    }
}

/// A `data` event, within the stream's cap.
fn data_frame(frames: &mut Frames, stream: OutputStream, bytes: &[u8]) {
    let name = match stream {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    };
    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
    let event = json!({"event": {"data": {name: data}}});
    if frames.output(connect::frame(&event)) {
        let note = base64::engine::general_purpose::STANDARD
            .encode("[airlock: output cut at the stream's cap ([streams] max_bytes)]\n");
        frames.last(connect::frame(
            &json!({"event": {"data": {"stderr": note}}}),
        ));
    }
}

/// The `end` event and the end of the stream.
fn end_frames(frames: &Frames, ended: Ended) {
    match ended {
        Ended::Exited {
            exit_code,
            signalled,
            timed_out,
        } => {
            let end = if signalled {
                json!({"exitCode": -1, "status": "signal: killed"})
            } else {
                let mut end = json!({"exited": true, "status": format!("exit status {exit_code}")});
                if exit_code != 0 {
                    end["exitCode"] = exit_code.into();
                }
                end
            };
            frames.last(connect::frame(&json!({"event": {"end": end}})));
            let error = timed_out.then_some((
                "deadline_exceeded",
                "the command ran past its timeout and was stopped",
            ));
            frames.last(connect::end_frame(error));
        }
        Ended::Failed { code, message } => {
            frames.last(connect::end_frame(Some((code, &message))));
        }
    }
}

async fn connect_to(State(e2b): State<E2b>, headers: HeaderMap, body: Bytes) -> Response {
    let sandbox = match sandbox(&e2b, &headers, Plane::Envd) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let request: SignalRequest = match connect::request_message(&body)
        .and_then(|v| serde_json::from_value(v).map_err(|e| format!("the request: {e}")))
    {
        Ok(r) => r,
        Err(message) => return stream_error("invalid_argument", &message),
    };
    let selector = request.process;
    let response = match sandbox
        .processes
        .subscribe(selector.pid, selector.tag.as_deref())
    {
        Some((pid, events)) => follow(&e2b, &headers, pid, events),
        None => stream_error("not_found", "no such process is running in this sandbox"),
    };
    for_tenant(response, &sandbox.caller.tenant)
}

async fn list(State(e2b): State<E2b>, headers: HeaderMap) -> Response {
    let sandbox = match sandbox(&e2b, &headers, Plane::Envd) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let processes: Vec<Value> = sandbox
        .processes
        .list()
        .into_iter()
        .map(|r| {
            let mut p = json!({"config": r.config, "pid": r.pid});
            if let Some(tag) = r.tag {
                p["tag"] = tag.into();
            }
            p
        })
        .collect();
    for_tenant(
        connect::ok(json!({"processes": processes})),
        &sandbox.caller.tenant,
    )
}

#[derive(Debug, Deserialize)]
struct SignalRequest {
    process: Selector,
}

#[derive(Debug, Deserialize)]
struct Selector {
    pid: Option<u32>,
    tag: Option<String>,
}

async fn send_signal(State(e2b): State<E2b>, headers: HeaderMap, body: Bytes) -> Response {
    unary_call(
        &e2b,
        &headers,
        &body,
        |sandbox, r: SignalRequest| async move {
            // SIGTERM and SIGKILL alike: the agent interrupts, then kills
            // the process group after its grace.
            if sandbox
                .processes
                .signal(r.process.pid, r.process.tag.as_deref())
            {
                Ok(json!({}))
            } else {
                Err(input_refused(InputRefused::NotFound))
            }
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
struct InputRequest {
    process: Selector,
    input: ProcessInput,
}

#[derive(Debug, Deserialize)]
struct ProcessInput {
    /// Base64 (protobuf JSON's bytes).
    stdin: Option<String>,
    /// A PTY's input: there are no PTYs here.
    pty: Option<String>,
}

/// The Connect error of a process call that cannot reach its process.
fn input_refused(refused: InputRefused) -> E2bError {
    match refused {
        InputRefused::NotFound => {
            E2bError::connect("not_found", "no such process is running in this sandbox")
        }
        InputRefused::NoStdin => E2bError::connect(
            "failed_precondition",
            "the process has no stdin: start it with stdin=True (and not after close_stdin)",
        ),
    }
}

async fn send_input(State(e2b): State<E2b>, headers: HeaderMap, body: Bytes) -> Response {
    unary_call(
        &e2b,
        &headers,
        &body,
        |sandbox, r: InputRequest| async move {
            if r.input.pty.is_some() {
                return Err(E2bError::connect(
                    "unimplemented",
                    "PTYs are not supported by this server (see docs/e2b.md)",
                ));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(r.input.stdin.unwrap_or_default())
                .map_err(|e| E2bError::connect("invalid_argument", format!("input.stdin: {e}")))?;
            sandbox
                .processes
                .send_input(r.process.pid, r.process.tag.as_deref(), bytes.into())
                .await
                .map_err(input_refused)?;
            Ok(json!({}))
        },
    )
    .await
}

async fn close_stdin(State(e2b): State<E2b>, headers: HeaderMap, body: Bytes) -> Response {
    unary_call(
        &e2b,
        &headers,
        &body,
        |sandbox, r: SignalRequest| async move {
            sandbox
                .processes
                .close_input(r.process.pid, r.process.tag.as_deref())
                .await
                .map_err(input_refused)?;
            Ok(json!({}))
        },
    )
    .await
}

/// The `find -printf` format of one entry: type, size, mode bits,
/// permissions, owner, group, mtime, symlink target, path.
const ENTRY_FORMAT: &str = r"%Y\t%s\t%m\t%M\t%u\t%g\t%T@\t%l\t%p\n";
/// What a script prints for a path that is not there.
const NOT_FOUND: &str = "airlock:not_found";
/// ... that is there already.
const EXISTS: &str = "airlock:exists";
/// ... that is not a directory.
const NOT_DIR: &str = "airlock:not_dir";

/// Runs a filesystem script beside whatever else the sandbox runs; its
/// stdout, or the Connect error.
async fn shell(sandbox: &Sandbox, script: String) -> Result<String, E2bError> {
    let mut request = CellRequest::new(script);
    request.timeout = FS_TIMEOUT;
    let done = sandbox
        .session
        .run_process_beside(
            Language::Raw,
            request,
            &mut Discard,
            Box::pin(std::future::pending()),
            None,
        )
        .await
        .map_err(|e| unary_error(&e.into()))?;
    let stdout = String::from_utf8_lossy(&done.stdout).into_owned();
    let first = stdout.lines().next().unwrap_or_default();
    let refused = |code: &'static str, what: &str| Err(E2bError::connect(code, what));
    match first {
        NOT_FOUND => return refused("not_found", "no such file or directory"),
        EXISTS => return refused("already_exists", "the path exists already"),
        NOT_DIR => return refused("invalid_argument", "the path is not a directory"),
        _ => {}
    }
    if done.exit_code != 0 {
        let stderr = String::from_utf8_lossy(&done.stderr);
        let code = if stderr.contains("Permission denied") || stderr.contains("Read-only") {
            "permission_denied"
        } else {
            "internal"
        };
        return refused(code, stderr.trim());
    }
    Ok(stdout)
}

/// One entry of `find -printf ENTRY_FORMAT` as E2B's `EntryInfo`.
fn entry_info(line: &str) -> Option<Value> {
    let fields: Vec<&str> = line.splitn(9, '\t').collect();
    let [kind, size, mode, permissions, owner, group, mtime, target, path] = fields.as_slice()
    else {
        return None;
    };
    // `%Y`: the type of what a symlink points to, as E2B's envd reports
    // it (`N`, `L`, `?`: a dangling link, a loop, an error).
    let kind = match *kind {
        "f" => "FILE_TYPE_FILE",
        "d" => "FILE_TYPE_DIRECTORY",
        "l" | "N" | "L" | "?" => "FILE_TYPE_SYMLINK",
        _ => "FILE_TYPE_UNSPECIFIED",
    };
    let path = path.trim_end_matches('/');
    // The guest's one user is E2B's `user`, as its home is `/home/user`.
    let shown_user = |name: &str| {
        if name == "sandbox" {
            "user".to_owned()
        } else {
            name.to_owned()
        }
    };
    let name = path.rsplit('/').next().unwrap_or(path);
    let mtime = mtime
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .map(|d| super::control::rfc3339(SystemTime::UNIX_EPOCH + d));
    let mut entry = json!({
        "name": name,
        "type": kind,
        "path": to_e2b(if path.is_empty() { "/" } else { path }),
        "size": size,
        "mode": u32::from_str_radix(mode, 8).unwrap_or(0),
        "permissions": permissions,
        "owner": shown_user(owner),
        "group": shown_user(group),
    });
    if let Some(mtime) = mtime {
        entry["modifiedTime"] = mtime.into();
    }
    if !target.is_empty() {
        // Absolute, as envd gives it: a relative target is from the link's
        // directory.
        let absolute = if target.starts_with('/') {
            (*target).to_owned()
        } else {
            let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
            format!("{dir}/{target}")
        };
        entry["symlinkTarget"] = to_e2b(&absolute).into();
    }
    Some(entry)
}

fn entries(stdout: &str) -> Vec<Value> {
    stdout.lines().filter_map(entry_info).collect()
}

#[derive(Debug, Deserialize)]
struct PathRequest {
    path: String,
    depth: Option<u32>,
}

/// A unary filesystem call: the sandbox, the parsed request, the answer.
/// A unary envd call (a process or filesystem call): the sandbox by its
/// token, the request parsed, `call`'s answer or Connect error.
async fn unary_call<T, F, Fut>(e2b: &E2b, headers: &HeaderMap, body: &[u8], call: F) -> Response
where
    T: serde::de::DeserializeOwned,
    F: FnOnce(Arc<Sandbox>, T) -> Fut,
    Fut: std::future::Future<Output = Result<Value, E2bError>>,
{
    let sandbox = match sandbox(e2b, headers, Plane::Envd) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let tenant = sandbox.caller.tenant.clone();
    let answer = match unary_body::<T>(body) {
        Ok(request) => match call(sandbox, request).await {
            Ok(value) => connect::ok(value),
            Err(refused) => refused.into_response(),
        },
        Err(refused) => refused.into_response(),
    };
    for_tenant(answer, &tenant)
}

fn exists_check(path: &str) -> String {
    format!(
        "p={}\nif [ ! -e \"$p\" ] && [ ! -L \"$p\" ]; then echo {NOT_FOUND}; exit 0; fi\n",
        shell_quote(&to_guest(path))
    )
}

async fn stat(State(e2b): State<E2b>, headers: HeaderMap, body: Bytes) -> Response {
    unary_call(
        &e2b,
        &headers,
        &body,
        |sandbox, r: PathRequest| async move {
            let script = format!(
                "{}find \"$p\" -maxdepth 0 -printf '{ENTRY_FORMAT}'",
                exists_check(&r.path)
            );
            let out = shell(&sandbox, script).await?;
            let entry = entries(&out).into_iter().next().unwrap_or(Value::Null);
            Ok(json!({"entry": entry}))
        },
    )
    .await
}

async fn list_dir(State(e2b): State<E2b>, headers: HeaderMap, body: Bytes) -> Response {
    unary_call(&e2b, &headers, &body, |sandbox, r: PathRequest| async move {
        let depth = r.depth.unwrap_or(1).max(1);
        let script = format!(
            "{}if [ ! -d \"$p\" ]; then echo {NOT_DIR}; exit 0; fi\nfind \"$p\" -mindepth 1 -maxdepth {depth} -printf '{ENTRY_FORMAT}' | sort -t\"$(printf '\\t')\" -k9",
            exists_check(&r.path)
        );
        let out = shell(&sandbox, script).await?;
        Ok(json!({"entries": entries(&out)}))
    })
    .await
}

async fn make_dir(State(e2b): State<E2b>, headers: HeaderMap, body: Bytes) -> Response {
    unary_call(&e2b, &headers, &body, |sandbox, r: PathRequest| async move {
        let script = format!(
            "p={}\nif [ -e \"$p\" ] || [ -L \"$p\" ]; then echo {EXISTS}; exit 0; fi\nmkdir -p \"$p\" && find \"$p\" -maxdepth 0 -printf '{ENTRY_FORMAT}'",
            shell_quote(&to_guest(&r.path))
        );
        let out = shell(&sandbox, script).await?;
        let entry = entries(&out).into_iter().next().unwrap_or(Value::Null);
        Ok(json!({"entry": entry}))
    })
    .await
}

#[derive(Debug, Deserialize)]
struct MoveRequest {
    source: String,
    destination: String,
}

async fn move_entry(State(e2b): State<E2b>, headers: HeaderMap, body: Bytes) -> Response {
    unary_call(&e2b, &headers, &body, |sandbox, r: MoveRequest| async move {
        let script = format!(
            "{}d={}\nmkdir -p \"$(dirname \"$d\")\" && mv -T \"$p\" \"$d\" && find \"$d\" -maxdepth 0 -printf '{ENTRY_FORMAT}'",
            exists_check(&r.source),
            shell_quote(&to_guest(&r.destination))
        );
        let out = shell(&sandbox, script).await?;
        let entry = entries(&out).into_iter().next().unwrap_or(Value::Null);
        Ok(json!({"entry": entry}))
    })
    .await
}

async fn remove(State(e2b): State<E2b>, headers: HeaderMap, body: Bytes) -> Response {
    unary_call(
        &e2b,
        &headers,
        &body,
        |sandbox, r: PathRequest| async move {
            // A path that is not there is removed already (envd's
            // `os.RemoveAll`).
            let script = format!("p={}\nrm -rf \"$p\"", shell_quote(&to_guest(&r.path)));
            shell(&sandbox, script).await?;
            Ok(json!({}))
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
struct FilesQuery {
    path: Option<String>,
}

/// A `/files` error: `{"code": <status>, "message"}`.
fn files_error(status: StatusCode, kind: &'static str, message: impl Into<String>) -> E2bError {
    E2bError::new(Plane::Files, status, kind, message)
}

/// The home-relative path of a `/files` path, or the refusal.
fn files_path(path: &str) -> Result<String, E2bError> {
    match home_relative(path) {
        Some(rel) if !rel.is_empty() => Ok(rel),
        _ => Err(files_error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            format!("path {path:?}: this server reads and writes files under {E2B_HOME} only"),
        )),
    }
}

async fn download(
    State(e2b): State<E2b>,
    headers: HeaderMap,
    Query(query): Query<FilesQuery>,
) -> Response {
    let sandbox = match sandbox(&e2b, &headers, Plane::Files) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let tenant = sandbox.caller.tenant.clone();
    let answer = async {
        let path = query.path.unwrap_or_default();
        let rel = files_path(&path)?;
        super::wait_ready(&sandbox)
            .await
            .map_err(|e| E2bError::server(Plane::Files, &e))?;
        let airlock = e2b.airlock.clone();
        let session = sandbox.session.clone();
        let read = rel.clone();
        // Streamed from the VM, as the REST route's (`file_body`).
        let streamed = crate::http::file_body::respond(move |mut sink| async move {
            airlock.read_file_into(&session, &read, &mut sink).await
        })
        .await;
        match streamed {
            Ok(response) => Ok(response),
            Err(e) if e.status() == StatusCode::NOT_FOUND => Err(files_error(
                StatusCode::NOT_FOUND,
                "file_not_found",
                format!("path '{path}' does not exist"),
            )),
            Err(e) => Err(E2bError::server(Plane::Files, &e)),
        }
    }
    .await;
    for_tenant(answer.unwrap_or_else(IntoResponse::into_response), &tenant)
}

async fn upload(
    State(e2b): State<E2b>,
    Query(query): Query<FilesQuery>,
    request: Request,
) -> Response {
    let sandbox = match sandbox(&e2b, request.headers(), Plane::Files) {
        Ok(s) => s,
        Err(e) => return crate::http::refuse_with(request, e.into_response()).await,
    };
    let tenant = sandbox.caller.tenant.clone();
    let answer = write_files(&e2b, &sandbox, query.path, request).await;
    for_tenant(answer.unwrap_or_else(IntoResponse::into_response), &tenant)
}

/// Most files one upload may hold.
const MAX_UPLOAD_FILES: usize = 256;
/// Most bytes of an upload that are not the files' data (boundaries, the
/// parts' headers): 4 KiB a file and then some.
const MAX_UPLOAD_FRAMING: u64 = (MAX_UPLOAD_FILES as u64) * 4096 + 64 * 1024;

/// An upload's body as multer reads it, failing once more than
/// [`MAX_UPLOAD_FRAMING`] of it is not files' data handed on (`delivered`
/// counts those): multer buffers a part's headers until it finds their
/// end, so without this a body of endless "headers" would be held whole.
struct Framing<S> {
    inner: S,
    passed: u64,
    delivered: Arc<std::sync::atomic::AtomicU64>,
}

impl<S> futures_core::Stream for Framing<S>
where
    S: futures_core::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        let std::task::Poll::Ready(Some(Ok(bytes))) = polled else {
            return polled.map(|item| item.map(|r| r.map_err(std::io::Error::other)));
        };
        self.passed += bytes.len() as u64;
        let delivered = self.delivered.load(std::sync::atomic::Ordering::Relaxed);
        // What multer may hold now: what passed, less what went out as
        // data, less this chunk (it may be all data).
        let held = self.passed.saturating_sub(delivered + bytes.len() as u64);
        if held > MAX_UPLOAD_FRAMING {
            return std::task::Poll::Ready(Some(Err(std::io::Error::other(format!(
                "more than {MAX_UPLOAD_FRAMING} bytes of the upload are not files' data"
            )))));
        }
        std::task::Poll::Ready(Some(Ok(bytes)))
    }
}

/// Writes each file of a `multipart/form-data` upload into the sandbox
/// as its part arrives (multer reads the body; the server holds one chunk
/// at a time). A part goes to its `filename` when that is an absolute
/// path (the SDKs' multi-file form), else the first part to the `path`
/// query. Each file is capped at `[files] max_bytes`; a failure stops the
/// upload there, leaving the files written before it.
async fn write_files(
    e2b: &E2b,
    sandbox: &Sandbox,
    path: Option<String>,
    request: Request,
) -> Result<Response, E2bError> {
    let bad = |message: String| files_error(StatusCode::BAD_REQUEST, "invalid_input", message);
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let boundary = multer::parse_boundary(&content_type).map_err(|_| {
        bad(format!(
            "a body of type {content_type:?}: this server takes multipart/form-data uploads"
        ))
    })?;
    // A part's data past the file cap fails in `write_file` (413); the
    // rest of the body (boundaries, a part's headers), which multer holds
    // until it has read them whole, may not pass MAX_UPLOAD_FRAMING bytes
    // (`Framing`), so no body makes the server hold more.
    let per_part = e2b.airlock.config().files.max_bytes as u64 + 64 * 1024;
    let limits =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().per_field(per_part));
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let framing = Framing {
        inner: request.into_body().into_data_stream(),
        passed: 0,
        delivered: Arc::clone(&delivered),
    };
    let mut multipart = multer::Multipart::with_constraints(framing, boundary, limits);
    let mut written = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| bad(format!("the multipart body: {e}")))?
    {
        if written.len() == MAX_UPLOAD_FILES {
            return Err(bad(format!(
                "more than {MAX_UPLOAD_FILES} files in one upload: send them in several"
            )));
        }
        let target = match (field.file_name(), &path) {
            (Some(name), _) if name.starts_with('/') => name.to_owned(),
            (_, Some(path)) if written.is_empty() => path.clone(),
            (Some(name), _) => name.to_owned(),
            (None, _) => return Err(bad("a part without a filename, and no path".into())),
        };
        let rel = files_path(&target)?;
        super::wait_ready(sandbox)
            .await
            .map_err(|e| E2bError::server(Plane::Files, &e))?;
        let counted = Arc::clone(&delivered);
        let chunks = tokio_stream::StreamExt::map(field, move |chunk| {
            if let Ok(bytes) = &chunk {
                counted.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            chunk.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        });
        let mut source = tokio_util::io::StreamReader::new(chunks);
        e2b.airlock
            .write_file(&sandbox.session, &rel, None, &mut source)
            .await
            .map_err(|e| E2bError::server(Plane::Files, &e))?;
        let shown = to_e2b(&to_guest(&rel));
        let name = shown.rsplit('/').next().unwrap_or_default().to_owned();
        written.push(json!({"name": name, "type": "file", "path": shown}));
    }
    if written.is_empty() {
        return Err(bad("the upload holds no file".into()));
    }
    Ok(axum::Json(Value::Array(written)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bash_c_command_runs_as_is_and_others_are_quoted() {
        let config = |cmd: &str, args: &[&str], cwd: Option<&str>| ProcessConfig {
            cmd: cmd.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            envs: BTreeMap::new(),
            cwd: cwd.map(str::to_owned),
        };
        assert_eq!(
            config("/bin/bash", &["-l", "-c", "echo hi"], None).code(),
            "echo hi"
        );
        assert_eq!(config("ls", &["a b"], None).code(), "'ls' 'a b'");
        assert_eq!(
            config("/bin/bash", &["-c", "pwd"], Some("/home/user/d")).code(),
            "cd '/home/sandbox/d' || exit 1\npwd"
        );
    }

    #[test]
    fn a_find_line_is_an_entry_info_under_the_e2b_home() {
        let line = "f\t5\t644\t-rw-r--r--\tsandbox\tsandbox\t1765000000.5\t\t/home/sandbox/a.txt";
        let entry = entry_info(line).unwrap();
        assert_eq!(entry["name"], "a.txt");
        assert_eq!(entry["type"], "FILE_TYPE_FILE");
        assert_eq!(entry["path"], "/home/user/a.txt");
        assert_eq!(entry["size"], "5");
        assert_eq!(entry["mode"], 0o644);
        assert!(entry["modifiedTime"]
            .as_str()
            .unwrap()
            .starts_with("2025-12-06T"));
        assert!(entry.get("symlinkTarget").is_none());
        assert_eq!(
            (entry["owner"].as_str(), entry["group"].as_str()),
            (Some("user"), Some("user"))
        );
        let link = entry_info("d\t3\t777\tlrwxrwxrwx\ts\ts\t0\t/tmp\t/home/sandbox/t").unwrap();
        assert_eq!(
            link["type"], "FILE_TYPE_DIRECTORY",
            "a link is its target's type"
        );
        assert_eq!(link["symlinkTarget"], "/tmp");
        let relative =
            entry_info("f\t3\t777\tlrwxrwxrwx\ts\ts\t0\ta.txt\t/home/sandbox/d/t").unwrap();
        assert_eq!(relative["symlinkTarget"], "/home/user/d/a.txt");
        let dangling = entry_info("N\t3\t777\tlrwxrwxrwx\ts\ts\t0\tnope\t/home/sandbox/t").unwrap();
        assert_eq!(dangling["type"], "FILE_TYPE_SYMLINK");
        assert!(entry_info("garbage").is_none());
    }
}
