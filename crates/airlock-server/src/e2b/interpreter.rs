//! E2B's code-interpreter plane (port 49999): `POST /execute` streams a
//! cell's output as JSON lines (`stdout`, `stderr`, `result` with E2B's
//! MIME fields, `error`, `number_of_executions`, `end_of_execution`);
//! `/contexts` lists and makes the code contexts.
//!
//! A context is one language's persistent interpreter in the sandbox's
//! VM (the agent keeps one per language): the image's own language is
//! the default context, `create_code_context(language=...)` adds another
//! language's (bash in every image, javascript where node is). Restart
//! ends the context's interpreter (the next cell starts a fresh one);
//! delete does too and forgets a context made beside the default (the
//! default one stays, fresh). A second context of one language needs
//! more than one interpreter per language, which the agent does not
//! have: it answers 501 with the reason.

use super::sandboxes::Sandbox;
use super::stream::{spawn_body, Frames};
use super::{for_tenant, sandbox_of, streamed, E2b, E2bError, Plane, ACCESS_TOKEN, TRAFFIC_TOKEN};
use crate::http::sse::WholeUtf8;
use airlock::{CellRequest, OutputStream, RunObserver};
use airlock_protocol::{ExecResult, Language};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The code interpreter's routes.
pub(super) fn routes() -> Router<E2b> {
    Router::new()
        .route("/execute", post(execute))
        .route("/contexts", get(list_contexts).post(create_context))
        .route("/contexts/{id}/restart", post(restart_context))
        .route("/contexts/{id}", delete(delete_context))
        .route("/health", get(health))
        .fallback(not_found)
}

/// The sandbox of a request, by either token (`/contexts` carry only the
/// traffic token, `/execute` both).
fn sandbox(e2b: &E2b, headers: &HeaderMap) -> Result<Arc<Sandbox>, E2bError> {
    sandbox_of(
        e2b,
        headers,
        Plane::Code,
        |s| vec![s.traffic_token.as_str(), s.access_token.as_str()],
        &[TRAFFIC_TOKEN, ACCESS_TOKEN],
    )
}

async fn health() -> &'static str {
    "OK"
}

async fn not_found(request: axum::extract::Request) -> E2bError {
    E2bError::new(
        Plane::Code,
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

/// The language of the context `id` of `sandbox`.
fn context_named(sandbox: &Sandbox, id: &str) -> Result<Language, E2bError> {
    contexts(sandbox)
        .into_iter()
        .find(|language| e2b_name(*language) == id)
        .ok_or_else(|| {
            E2bError::new(
                Plane::Code,
                StatusCode::NOT_FOUND,
                "not_found",
                format!("this sandbox has no code context {id:?}"),
            )
        })
}

/// Ends the interpreter of context `id` (once the sandbox is free).
async fn reset_context(sandbox: &Sandbox, id: &str) -> Result<Language, E2bError> {
    let language = context_named(sandbox, id)?;
    super::wait_ready(sandbox)
        .await
        .map_err(|e| E2bError::server(Plane::Code, &e))?;
    sandbox
        .session
        .reset_interpreter(language)
        .await
        .map_err(|e| E2bError::server(Plane::Code, &e.into()))?;
    Ok(language)
}

async fn restart_context(
    State(e2b): State<E2b>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let sandbox = match sandbox(&e2b, &headers) {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    let answer = reset_context(&sandbox, &id)
        .await
        .map(|_| StatusCode::NO_CONTENT.into_response());
    for_tenant(
        answer.unwrap_or_else(IntoResponse::into_response),
        &sandbox.caller.tenant,
    )
}

async fn delete_context(
    State(e2b): State<E2b>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let sandbox = match sandbox(&e2b, &headers) {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    let answer = reset_context(&sandbox, &id).await.map(|language| {
        sandbox.remove_context(language);
        StatusCode::NO_CONTENT.into_response()
    });
    for_tenant(
        answer.unwrap_or_else(IntoResponse::into_response),
        &sandbox.caller.tenant,
    )
}

/// The language a context or `/execute` names.
fn language_named(name: &str) -> Result<Language, E2bError> {
    match name.to_ascii_lowercase().as_str() {
        "python" | "python3" => Ok(Language::Python),
        "javascript" | "js" => Ok(Language::Javascript),
        "bash" | "sh" => Ok(Language::Raw),
        other => Err(E2bError::bad_request(
            Plane::Code,
            format!("language {other:?} is not supported by this server: python, javascript, bash"),
        )),
    }
}

/// E2B's name of a language (and the context id of its interpreter).
fn e2b_name(language: Language) -> &'static str {
    match language {
        Language::Python => "python",
        Language::Javascript => "javascript",
        Language::Raw => "bash",
    }
}

fn context_json(language: Language) -> Value {
    json!({"id": e2b_name(language), "language": e2b_name(language), "cwd": super::paths::E2B_HOME})
}

/// The contexts a sandbox has: its image's language, then those made.
fn contexts(sandbox: &Sandbox) -> Vec<Language> {
    let mut out = vec![sandbox.image.language()];
    for language in sandbox.contexts() {
        if !out.contains(&language) {
            out.push(language);
        }
    }
    out
}

async fn list_contexts(State(e2b): State<E2b>, headers: HeaderMap) -> Response {
    let sandbox = match sandbox(&e2b, &headers) {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    let list: Vec<Value> = contexts(&sandbox).into_iter().map(context_json).collect();
    for_tenant(Json(list).into_response(), &sandbox.caller.tenant)
}

#[derive(Debug, Default, Deserialize)]
struct ContextBody {
    language: Option<String>,
    cwd: Option<String>,
}

async fn create_context(State(e2b): State<E2b>, headers: HeaderMap, body: Bytes) -> Response {
    let sandbox = match sandbox(&e2b, &headers) {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    let tenant = sandbox.caller.tenant.clone();
    let answer = (|| {
        let body: ContextBody = if body.iter().all(u8::is_ascii_whitespace) {
            ContextBody::default()
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| E2bError::bad_request(Plane::Code, format!("the request body: {e}")))?
        };
        if let Some(cwd) = body.cwd.as_deref() {
            if super::paths::home_relative(cwd).is_none_or(|rel| !rel.is_empty()) {
                return Err(E2bError::bad_request(
                    Plane::Code,
                    format!("cwd {cwd:?}: this server's contexts start in /home/user"),
                ));
            }
        }
        let language = language_named(body.language.as_deref().unwrap_or("python"))?;
        if contexts(&sandbox).contains(&language) {
            return Err(E2bError::new(
                Plane::Code,
                StatusCode::NOT_IMPLEMENTED,
                "not_supported",
                format!(
                    "this sandbox has a {name} context already (id {name:?}), and this server runs one interpreter per language: \
                     run code in it with context_id {name:?} or language {name:?}",
                    name = e2b_name(language)
                ),
            ));
        }
        sandbox.add_context(language);
        Ok(Json(context_json(language)).into_response())
    })();
    for_tenant(answer.unwrap_or_else(IntoResponse::into_response), &tenant)
}

/// `POST /execute`'s body. Python sends every field (null when unset),
/// JS only those set.
#[derive(Debug, Deserialize)]
struct ExecuteBody {
    code: String,
    context_id: Option<String>,
    language: Option<String>,
    env_vars: Option<BTreeMap<String, String>>,
}

async fn execute(State(e2b): State<E2b>, headers: HeaderMap, body: Bytes) -> Response {
    let sandbox = match sandbox(&e2b, &headers) {
        Ok(s) => s,
        Err(refused) => return refused.into_response(),
    };
    let tenant = sandbox.caller.tenant.clone();
    let response = match prepare(&sandbox, &body).await {
        Ok((language, request)) => {
            let max_bytes = e2b.airlock.config().streams.max_bytes;
            let session = Arc::clone(&sandbox.session);
            let airlock = e2b.airlock.clone();
            let keepalive = (
                Lines::line(&json!({"type": "keepalive"})),
                super::stream::KEEPALIVE_EVERY,
            );
            let body = spawn_body(
                max_bytes,
                session.canceller(),
                keepalive,
                move |frames| async move {
                    let mut lines = Lines::new(frames);
                    let result = session.exec_in(language, request, &mut lines).await;
                    if let Ok(done) = &result {
                        airlock
                            .metrics()
                            .exec_seconds
                            .observe(done.duration_ms as f64 / 1000.0);
                    }
                    let count = sandbox.executions.fetch_add(1, Ordering::Relaxed) + 1;
                    lines.finish(result, count);
                },
            );
            streamed("application/json", body)
        }
        Err(e) => e.into_response(),
    };
    for_tenant(response, &tenant)
}

/// The cell of an `/execute`, checked before the stream starts (a refusal
/// is a plain status, which the SDKs raise).
async fn prepare(sandbox: &Sandbox, body: &[u8]) -> Result<(Language, CellRequest), E2bError> {
    let body: ExecuteBody = serde_json::from_slice(body)
        .map_err(|e| E2bError::bad_request(Plane::Code, format!("the request body: {e}")))?;
    let language = match (&body.context_id, &body.language) {
        (Some(_), Some(_)) => {
            return Err(E2bError::bad_request(
                Plane::Code,
                "Only one of context_id or language can be provided",
            ))
        }
        (Some(id), None) => {
            let language = language_named(id)
                .ok()
                .filter(|l| contexts(sandbox).contains(l));
            language.ok_or_else(|| {
                E2bError::new(
                    Plane::Code,
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("Context {id} not found"),
                )
            })?
        }
        (None, Some(name)) => language_named(name)?,
        (None, None) => sandbox.image.language(),
    };
    super::wait_ready(sandbox)
        .await
        .map_err(|e| E2bError::server(Plane::Code, &e))?;
    let mut request = CellRequest::new(body.code);
    // E2B's cells run until the client's own timeout (300 s by default);
    // here the tenant's longest timeout bounds them.
    request.timeout = Duration::from_secs(sandbox.caller.quotas.timeout_s);
    request.env = sandbox.env_vars.clone();
    request.env.extend(body.env_vars.unwrap_or_default());
    Ok((language, request))
}

/// The JSON lines of one execution, as E2B's server writes them.
struct Lines {
    frames: Frames,
    /// An incomplete UTF-8 sequence held back per stream.
    pending: WholeUtf8,
}

impl Lines {
    fn new(frames: Frames) -> Self {
        Self {
            frames,
            pending: WholeUtf8::default(),
        }
    }

    fn line(value: &Value) -> Bytes {
        let mut text = value.to_string();
        text.push('\n');
        Bytes::from(text)
    }

    fn output_line(&mut self, value: &Value) {
        if self.frames.output(Self::line(value)) {
            let note = json!({
                "type": "stderr",
                "text": "[airlock: output cut at the stream's cap ([streams] max_bytes)]\n",
                "timestamp": super::control::rfc3339(SystemTime::now()),
            });
            self.frames.last(Self::line(&note));
        }
    }

    fn text(&mut self, index: usize, bytes: &[u8]) {
        let name = if index == 0 { "stdout" } else { "stderr" };
        let text = String::from_utf8_lossy(bytes);
        if text.is_empty() {
            return;
        }
        let value = json!({"type": name, "text": text, "timestamp": super::control::rfc3339(SystemTime::now())});
        self.output_line(&value);
    }

    fn flush(&mut self) {
        for (index, stream) in [(0, OutputStream::Stdout), (1, OutputStream::Stderr)] {
            let rest = self.pending.take(stream);
            self.text(index, &rest);
        }
    }

    /// The last lines: the error if any, the count, the end.
    fn finish(mut self, result: Result<airlock::CellResult, airlock::SessionError>, count: u64) {
        self.flush();
        let error = match &result {
            Ok(done) => match (&done.error, done.timed_out) {
                (Some(e), _) => Some(
                    json!({"type": "error", "name": e.name, "value": e.value, "traceback": e.traceback}),
                ),
                (None, true) => Some(json!({
                    "type": "error", "name": "TimeoutError",
                    "value": "the cell ran past the tenant's longest timeout and was interrupted",
                    "traceback": "",
                })),
                (None, false) => None,
            },
            Err(e) => Some(
                json!({"type": "error", "name": "SandboxError", "value": e.to_string(), "traceback": ""}),
            ),
        };
        if let Some(error) = error {
            self.frames.last(Self::line(&error));
        }
        if result.is_ok() {
            self.frames.last(Self::line(
                &json!({"type": "number_of_executions", "execution_count": count}),
            ));
        }
        self.frames
            .last(Self::line(&json!({"type": "end_of_execution"})));
    }
}

impl RunObserver for Lines {
    fn output(&mut self, stream: OutputStream, bytes: &[u8]) {
        let index = match stream {
            OutputStream::Stdout => 0,
            OutputStream::Stderr => 1,
        };
        if let Some(chunk) = self.pending.push(stream, bytes) {
            self.text(index, &chunk);
        }
    }

    fn result(&mut self, result: &ExecResult) {
        self.flush();
        let line = result_line(result);
        self.output_line(&line);
    }
}

/// E2B's `result` line of a value: each MIME type in its field
/// (`text/plain` -> `text` with one layer of quotes taken off, as E2B's
/// server does; `image/png` -> `png` in base64), the others in `extra`.
fn result_line(result: &ExecResult) -> Value {
    let mut line = Map::new();
    line.insert("type".into(), "result".into());
    let mut extra = Map::new();
    for (mime, value) in &result.data {
        let field = match mime.as_str() {
            "text/plain" => "text",
            "text/html" => "html",
            "text/markdown" => "markdown",
            "image/svg+xml" => "svg",
            "image/png" => "png",
            "image/jpeg" => "jpeg",
            "application/pdf" => "pdf",
            "text/latex" => "latex",
            "application/json" => "json",
            "application/javascript" => "javascript",
            _ => {
                extra.insert(mime.clone(), value.clone());
                continue;
            }
        };
        let value = match (field, value) {
            ("text", Value::String(text)) => Value::String(unquote(text).to_owned()),
            _ => value.clone(),
        };
        line.insert(field.into(), value);
    }
    line.insert("extra".into(), Value::Object(extra));
    line.insert("is_main_result".into(), result.is_main_result.into());
    Value::Object(line)
}

/// `text` without one layer of surrounding `'...'` or `"..."`.
fn unquote(text: &str) -> &str {
    for quote in ['\'', '"'] {
        if let Some(inner) = text.strip_prefix(quote).and_then(|t| t.strip_suffix(quote)) {
            return inner;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_puts_each_mime_type_in_e2b_s_field() {
        let mut data = airlock_protocol::MimeBundle::new();
        data.insert("text/plain".into(), json!("'hi'"));
        data.insert("image/png".into(), json!("iVBORw0KGgo="));
        data.insert("application/vnd.custom".into(), json!({"a": 1}));
        let line = result_line(&ExecResult {
            data,
            is_main_result: true,
            truncated: false,
        });
        assert_eq!(line["type"], "result");
        assert_eq!(line["text"], "hi");
        assert_eq!(line["png"], "iVBORw0KGgo=");
        assert_eq!(line["extra"]["application/vnd.custom"]["a"], 1);
        assert_eq!(line["is_main_result"], true);
    }

    #[test]
    fn one_layer_of_quotes_comes_off() {
        assert_eq!(unquote("'a'"), "a");
        assert_eq!(unquote("\"'a'\""), "'a'");
        assert_eq!(unquote("2"), "2");
        assert_eq!(unquote("'"), "'");
    }

    #[test]
    fn languages_have_e2b_s_names() {
        for name in ["python", "javascript", "bash"] {
            assert_eq!(e2b_name(language_named(name).unwrap()), name);
        }
        assert!(language_named("r").is_err());
    }
}
