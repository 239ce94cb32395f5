//! The OpenAPI 3.1 document served at `GET /v1/openapi.json`: the paths
//! written here, the request schemas generated from the very types the
//! handlers parse (schemars), so the two cannot drift apart; so are the
//! schemas of a result (`ExecResult`) and a cell error (`CellError`) the
//! answers carry.

use crate::api::{ExecBody, PackagesBody, RunBody, SecretBody, SessionBody};
use crate::secrets::SecretInfo;
use crate::sessions::table::SessionInfo;
use airlock::FileInfo;
use airlock_protocol::{CellError, ExecResult, FileEntry};
use schemars::generate::SchemaSettings;
use schemars::SchemaGenerator;
use serde_json::{json, Value};

/// The events of a streamed run or cell (`Accept: text/event-stream`).
const EVENTS: &str = "With `Accept: text/event-stream`, events in the order the code made them: `stdout` and `stderr` (data `{\"text\"}` for a UTF-8 chunk, or `{\"b64\"}` with a whole chunk that is not), `result` per value the code showed (data: an `ExecResult`); past the stream's caps one `cut` (data `{\"reason\", \"max_events\", \"max_bytes\"}`) and no more of those; then `cell_error` (data: a `CellError`) when the code raised, and last one `done` with the whole answer (or one `error`).";

/// Every route of the REST API, as (method, path): what the document
/// describes and the router serves (a unit test holds them together).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/health"),
    ("get", "/v1/health/ready"),
    ("get", "/v1/openapi.json"),
    ("get", "/metrics"),
    ("post", "/v1/runs"),
    ("post", "/v1/sessions"),
    ("get", "/v1/sessions"),
    ("get", "/v1/sessions/{id}"),
    ("delete", "/v1/sessions/{id}"),
    ("post", "/v1/sessions/{id}/exec"),
    ("post", "/v1/sessions/{id}/pause"),
    ("post", "/v1/sessions/{id}/resume"),
    ("post", "/v1/sessions/{id}/fork"),
    ("post", "/v1/sessions/{id}/packages"),
    ("get", "/v1/sessions/{id}/files"),
    ("get", "/v1/sessions/{id}/files/{path}"),
    ("put", "/v1/sessions/{id}/files/{path}"),
    ("get", "/v1/secrets"),
    ("put", "/v1/secrets/{name}"),
    ("delete", "/v1/secrets/{name}"),
];

/// `/v1/health/ready`'s answer, 200 or 503 alike.
fn ready_schema() -> Value {
    json!({
        "type": "object", "required": ["ready", "node", "draining", "free_slots", "slots"],
        "properties": {
            "ready": {"type": "boolean"}, "node": {"type": "string"}, "draining": {"type": "boolean"},
            "free_slots": {"type": "integer", "minimum": 0}, "slots": {"type": "integer", "minimum": 1}
        }
    })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn errors() -> Value {
    json!({
        "400": error_response("Bad input (malformed JSON, a bad field)"),
        "401": error_response("Missing or unknown API key"),
        "403": error_response("Keyless server: a Host that is not a loopback name, or a foreign Origin; `expose_disabled`: `network.expose` on a server whose operator has not enabled it; `egress_not_allowed`: an allowlisted domain outside the server's egress policy"),
        "413": error_response("Body over the limit; `uploads_too_large`: a run's files over `[uploads] max_bytes` together; `file_too_large`: a session file over the file cap"),
        "415": error_response("Keyless server: a body that is not application/json"),
        "429": too_many(),
        "500": error_response("The server failed (a VM that would not boot, an agent's unexpected error): never the caller's input"),
        "503": error_response("Draining, no VM capacity, or the VM was lost"),
    })
}

/// 429: a quota (`quota_exceeded`, the message names it) or no VM slot
/// within the queue time (`queue_timeout`, with `Retry-After`).
fn too_many() -> Value {
    let mut answer = error_response(
        "`quota_exceeded`: over a quota (the message names it: concurrent_runs, live_sessions, memory_mib, vcpus, vcpus_per_vm, timeout_s, requests_per_minute; an install VM that the memory quota cannot hold); `queue_timeout`: no VM slot of the tenant's fair share came within the queue time",
    );
    answer["headers"] = json!({"Retry-After": {
        "description": "With `queue_timeout`: seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1}
    }});
    answer
}

/// A generator whose references point into the document's
/// `components/schemas` (a type a body uses, such as `FileBody` or
/// `NetworkArgs`, lands there once, by name).
fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator()
}

/// The schemas of the request bodies and of every type they use, by name.
fn body_schemas() -> serde_json::Map<String, Value> {
    let mut generator = generator();
    // Each body referenced once puts itself among the definitions.
    let _ = generator.subschema_for::<RunBody>();
    let _ = generator.subschema_for::<SessionBody>();
    let _ = generator.subschema_for::<ExecBody>();
    let _ = generator.subschema_for::<crate::api::ForkBody>();
    let _ = generator.subschema_for::<PackagesBody>();
    let _ = generator.subschema_for::<SecretBody>();
    let _ = generator.subschema_for::<SecretInfo>();
    // The types the answers carry.
    let _ = generator.subschema_for::<ExecResult>();
    let _ = generator.subschema_for::<CellError>();
    let _ = generator.subschema_for::<SessionInfo>();
    let _ = generator.subschema_for::<FileInfo>();
    let _ = generator.subschema_for::<FileEntry>();
    generator.take_definitions(true)
}

/// The `results` of an answer.
fn results() -> Value {
    json!({
        "type": "array", "items": {"$ref": "#/components/schemas/ExecResult"},
        "description": "The values the code showed, in order (its last expression, `display()`, figures): MIME bundles, binary ones base64. Absent when none."
    })
}

/// The `error` of an answer.
fn cell_error() -> Value {
    json!({
        "$ref": "#/components/schemas/CellError",
        "description": "The code's uncaught exception (its traceback is on stderr too). Absent when none."
    })
}

fn with_errors(mut responses: Value) -> Value {
    if let (Some(map), Value::Object(errors)) = (responses.as_object_mut(), errors()) {
        map.extend(errors);
    }
    responses
}

/// The `operationId` of each session route a link can lead to, with its
/// method and path (a unit test checks every session route is one).
pub const SESSION_OPERATIONS: &[(&str, &str, &str)] = &[
    ("getSession", "get", "/v1/sessions/{id}"),
    ("closeSession", "delete", "/v1/sessions/{id}"),
    ("execCell", "post", "/v1/sessions/{id}/exec"),
    ("pauseSession", "post", "/v1/sessions/{id}/pause"),
    ("resumeSession", "post", "/v1/sessions/{id}/resume"),
    ("forkSession", "post", "/v1/sessions/{id}/fork"),
    ("installPackages", "post", "/v1/sessions/{id}/packages"),
    ("listFiles", "get", "/v1/sessions/{id}/files"),
    ("readFile", "get", "/v1/sessions/{id}/files/{path}"),
    ("writeFile", "put", "/v1/sessions/{id}/files/{path}"),
];

/// OpenAPI links from an answer carrying a session's `id` to every
/// session route: what lets a generated client, or a stateful fuzzer,
/// follow `POST /v1/sessions` into the session's routes.
fn session_links() -> Value {
    let links: serde_json::Map<String, Value> = SESSION_OPERATIONS
        .iter()
        .map(|(operation, _, _)| {
            (
                (*operation).to_owned(),
                json!({"operationId": operation, "parameters": {"id": "$response.body#/id"}}),
            )
        })
        .collect();
    Value::Object(links)
}

/// A JSON answer of schema `schema`, with `links` when not null.
fn json_answer(description: &str, schema: Value, links: Value) -> Value {
    let mut answer =
        json!({"description": description, "content": {"application/json": {"schema": schema}}});
    if !links.is_null() {
        answer["links"] = links;
    }
    answer
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn session_paths(paths: &mut serde_json::Map<String, Value>) {
    let body = |name: &str| json!({"required": true, "content": {"application/json": {"schema": schema_ref(name)}}});
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let path = json!({"name": "path", "in": "path", "required": true, "schema": {"type": "string"}, "description": "relative to the session's home; may hold `/`"});
    let not_found = error_response("Unknown session, or another tenant's");
    let busy = error_response("The session runs something already");
    let session = json_answer("The session", schema_ref("SessionInfo"), Value::Null);
    // A written file's links: read it back; its session.
    let written_links = json!({
        "readBack": {"operationId": "readFile", "parameters": {"id": "$request.path.id", "path": "$request.path.path"}},
        "getSession": {"operationId": "getSession", "parameters": {"id": "$request.path.id"}},
    });
    paths.insert("/v1/sessions".into(), json!({
        "post": {"summary": "Start a session", "operationId": "createSession", "requestBody": body("SessionBody"),
                 "responses": with_errors(json!({"201": json_answer("Started: the session (its `id` leads to every session route)", schema_ref("SessionInfo"), session_links())}))},
        "get": {"summary": "The caller's sessions", "operationId": "listSessions", "responses": with_errors(json!({"200": json_answer("`{sessions: [SessionInfo]}`", json!({
            "type": "object", "required": ["sessions"], "properties": {"sessions": {"type": "array", "items": schema_ref("SessionInfo")}}
        }), Value::Null)}))}
    }));
    paths.insert("/v1/sessions/{id}".into(), json!({
        "parameters": [id],
        "get": {"summary": "One session", "operationId": "getSession", "responses": with_errors(json!({"200": session, "404": not_found}))},
        "delete": {"summary": "Close a session (its VM is destroyed)", "operationId": "closeSession", "responses": with_errors(json!({"204": {"description": "Closed"}, "404": not_found}))}
    }));
    paths.insert("/v1/sessions/{id}/exec".into(), json!({
        "parameters": [id],
        "post": {"summary": "Run a cell (state is kept); SSE as for runs", "operationId": "execCell", "requestBody": body("ExecBody"),
                 "description": EVENTS,
                 "responses": with_errors(json!({"200": {"description": "The cell's result", "content": {
                     "application/json": {"schema": schema_ref("CellResult")},
                     "text/event-stream": {"schema": {"type": "string"}}
                 }}, "404": not_found, "409": busy}))}
    }));
    let conflict = error_response("The session is busy, has a network or host folders (it cannot be saved), or was paused on another host's QEMU or images");
    let over = error_response("Over the tenant's quota (`paused_mib` for a pause; live sessions or vCPUs for a resume or fork)");
    paths.insert("/v1/sessions/{id}/pause".into(), json!({
        "parameters": [id],
        "post": {"summary": "Pause the session to disk (its VM is freed); listed as `paused` with its size until resumed, deleted or expired", "operationId": "pauseSession",
                 "responses": with_errors(json!({"200": json_answer("The paused session (`state: paused`, `bytes`, `expires_at`)", schema_ref("SessionInfo"), Value::Null),
                     "404": not_found, "409": conflict, "429": over}))}
    }));
    paths.insert("/v1/sessions/{id}/resume".into(), json!({
        "parameters": [id],
        "post": {"summary": "Resume a paused session under the same id (memory, files and running threads as they were)", "operationId": "resumeSession",
                 "responses": with_errors(json!({"200": session.clone(), "404": not_found, "409": conflict, "429": over}))}
    }));
    paths.insert("/v1/sessions/{id}/fork".into(), json!({
        "parameters": [id],
        "post": {"summary": "Fork the session into `count` new sessions (1..=8) with its state, each reseeded; the session goes on", "operationId": "forkSession", "requestBody": body("ForkBody"),
                 "responses": with_errors(json!({"201": json_answer("`{sessions: [SessionInfo]}`", json!({
                     "type": "object", "required": ["sessions"], "properties": {"sessions": {"type": "array", "items": schema_ref("SessionInfo")}}
                 }), Value::Null), "404": not_found, "409": conflict, "429": over}))}
    }));
    paths.insert("/v1/sessions/{id}/packages".into(), json!({
        "parameters": [id],
        "post": {"summary": "Install pinned packages", "operationId": "installPackages", "requestBody": body("PackagesBody"),
                 "responses": with_errors(json!({"200": json_answer("The installer's result, as an exec's", schema_ref("CellResult"), Value::Null),
                     "404": not_found, "409": busy}))}
    }));
    paths.insert("/v1/sessions/{id}/files".into(), json!({
        "parameters": [id, {"name": "dir", "in": "query", "schema": {"type": "string"}}],
        "get": {"summary": "List a directory", "operationId": "listFiles", "responses": with_errors(json!({"200": json_answer("`{entries: [FileEntry]}`", json!({
            "type": "object", "required": ["entries"], "properties": {"entries": {"type": "array", "items": schema_ref("FileEntry")}}
        }), Value::Null), "404": not_found, "409": busy}))}
    }));
    paths.insert("/v1/sessions/{id}/files/{path}".into(), json!({
        "parameters": [id, path],
        "get": {"summary": "Read a file: raw bytes streamed from the VM; `x-sha256` header up to 256 KiB, trailer beyond", "operationId": "readFile", "responses": with_errors(json!({"200": {
                    "description": "The bytes", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    "headers": {"x-sha256": {"description": "The sha256 of the bytes, in hex (for a file over 256 KiB: an HTTP trailer, announced by `Trailer: x-sha256`)", "schema": {"type": "string"}}}
                }, "404": not_found, "409": busy}))},
        "put": {"summary": "Write a file: raw body", "operationId": "writeFile", "requestBody": {"required": false, "description": "The file's bytes; none (or an empty body) writes an empty file", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": with_errors(json!({"200": json_answer("Written: `{path, size, sha256}`", schema_ref("FileInfo"), written_links), "404": not_found, "409": busy}))}
    }));
}

fn secret_paths(paths: &mut serde_json::Map<String, Value>) {
    // A stored secret's name leads to its deletion.
    let delete = json!({"deleteSecret": {"operationId": "deleteSecret", "parameters": {"name": "$request.path.name"}}});
    let info = |d: &str| json_answer(d, schema_ref("SecretInfo"), delete.clone());
    let name = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$"}, "description": "the variable the sandbox sees: `[A-Za-z_][A-Za-z0-9_]{0,127}`"});
    let disabled = error_response("The server was started without a secrets key");
    paths.insert("/v1/secrets".into(), json!({
        "get": {"summary": "The caller's secrets: names, hosts, dates (never values)", "operationId": "listSecrets",
                "responses": with_errors(json!({"200": {"description": "`{secrets: [SecretInfo]}`", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["secrets"], "properties": {"secrets": {"type": "array", "items": {"$ref": "#/components/schemas/SecretInfo"}}}
                }}}}, "501": disabled}))}
    }));
    paths.insert("/v1/secrets/{name}".into(), json!({
        "parameters": [name],
        "put": {"summary": "Store a secret (encrypted at rest; the value is never shown again)", "operationId": "putSecret",
                "description": "Runs and sessions name it in `secrets`: the sandbox gets a placeholder, and the egress proxy puts the value into HTTPS requests to its hosts (docs/secrets.md).",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SecretBody"}}}},
                "responses": with_errors(json!({"201": info("Stored"), "200": info("Replaced"), "501": disabled}))},
        "delete": {"summary": "Delete a secret", "operationId": "deleteSecret",
                   "responses": with_errors(json!({"204": {"description": "Deleted"},
                       "404": error_response("No secret of this name for the caller's tenant"), "501": disabled}))}
    }));
}

/// The document.
pub fn openapi() -> Value {
    let run_result = json!({
        "type": "object",
        "description": "The same JSON as `airlock run --json`",
        "properties": {
            "vm_id": {"type": "string"},
            "stdout": {"type": "string"}, "stderr": {"type": "string"},
            "exit_code": {"type": "integer"}, "timed_out": {"type": "boolean"},
            "stdout_truncated": {"type": "boolean"}, "stderr_truncated": {"type": "boolean"},
            "timings": {"type": "object"}, "usage": {"type": "object"},
            "network": {"type": ["object", "null"]},
            "results": results(),
            "error": cell_error(),
        }
    });
    let cell_result = json!({
        "type": "object",
        "description": "What a cell did (the same JSON as `airlock session --json` prints per cell)",
        "properties": {
            "stdout": {"type": "string"}, "stderr": {"type": "string"},
            "exit_code": {"type": "integer"}, "timed_out": {"type": "boolean"},
            "state_lost": {"type": "boolean", "description": "The interpreter was restarted (after a timeout): earlier state is gone"},
            "stdout_truncated": {"type": "boolean"}, "stderr_truncated": {"type": "boolean"},
            "duration_ms": {"type": "integer"},
            "results": results(),
            "error": cell_error(),
        }
    });
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Airlock",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Run untrusted code in throw-away microVMs. Authenticate with `Authorization: Bearer KEY`."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["kind", "message"],
                        "properties": {"kind": {"type": "string"}, "message": {"type": "string"},
                            "request_id": {"type": "string", "description": "When the message leaves details out (the server's fault): the id of the server's log line that has them"}}}}
                },
                "RunResult": run_result,
                "CellResult": cell_result,
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/health": {"get": {
                "summary": "Liveness (no key needed)", "operationId": "health", "security": [],
                "responses": {"200": json_answer("`{\"status\": \"ok\" | \"draining\", \"version\"}`", json!({
                    "type": "object", "required": ["status", "version", "node"],
                    "properties": {"status": {"type": "string", "enum": ["ok", "draining"]}, "version": {"type": "string"}, "node": {"type": "string"}}
                }), Value::Null)}
            }},
            "/v1/health/ready": {"get": {
                "summary": "Readiness for a proxy or Kubernetes (no key needed): 503 while draining or, with `refuse_when_full`, full", "operationId": "ready", "security": [],
                "responses": {
                    "200": json_answer("The node takes new work", ready_schema(), Value::Null),
                    "503": json_answer("The node drains or has no free VM slot", ready_schema(), Value::Null)
                }
            }},
            "/v1/openapi.json": {"get": {
                "summary": "This document (no key needed)", "operationId": "openapi", "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1"}}
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (no key needed)", "operationId": "metrics", "security": [],
                "responses": {"200": {"description": "Prometheus text format"}}
            }},
            "/v1/runs": {"post": {
                "summary": "Run code once in a fresh VM", "operationId": "run",
                "description": EVENTS,
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunBody"}}}},
                "responses": with_errors(json!({
                    "200": {"description": "The run's result", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/RunResult"}},
                        "text/event-stream": {"schema": {"type": "string"}}
                    }},
                    "408": error_response("`upload_timeout`: the run's files were not written into its VM within `[uploads] timeout_s`")
                }))
            }},
        }
    });
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        schemas.extend(body_schemas());
    }
    if let Some(paths) = doc["paths"].as_object_mut() {
        session_paths(paths);
        secret_paths(paths);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_every_route_and_nothing_else() {
        let doc = openapi();
        let paths = doc["paths"].as_object().unwrap();
        let mut described: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .filter(|key| *key != "parameters")
                    .map(move |method| (method.clone(), path.clone()))
            })
            .collect();
        described.sort();
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        routes.sort();
        assert_eq!(described, routes);
    }

    /// Every `$ref` string anywhere in `value`.
    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_in_the_document_resolves() {
        let doc = openapi();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 10, "{all:?}");
        for reference in all {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{reference} is not local"));
            assert!(
                doc.pointer(pointer).is_some(),
                "{reference} does not resolve"
            );
        }
    }

    /// Every operation of the document: (operationId, method, path, the
    /// operation).
    fn operations(doc: &Value) -> Vec<(String, String, String, Value)> {
        let mut out = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
                out.push((id.to_owned(), method.clone(), path.clone(), op.clone()));
            }
        }
        out
    }

    /// The names of `{..}` parameters in `path`.
    fn path_parameters(path: &str) -> Vec<String> {
        path.split('{')
            .skip(1)
            .filter_map(|part| part.split_once('}'))
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    #[test]
    fn every_operation_has_a_unique_operation_id() {
        let doc = openapi();
        let mut ids: Vec<String> = operations(&doc).into_iter().map(|o| o.0).collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "{ids:?}");
        assert_eq!(count, ROUTES.len());
    }

    #[test]
    fn every_link_names_an_operation_and_only_its_path_parameters() {
        let doc = openapi();
        let ops = operations(&doc);
        let mut links = 0;
        for (_, method, path, op) in &ops {
            for (status, response) in op["responses"].as_object().unwrap() {
                for (name, link) in response["links"].as_object().into_iter().flatten() {
                    links += 1;
                    let target = link["operationId"].as_str().unwrap();
                    let (_, _, target_path, _) =
                        ops.iter().find(|o| o.0 == target).unwrap_or_else(|| {
                            panic!("{method} {path} {status} link {name}: no operation {target}")
                        });
                    // A link fills some of the target's path parameters
                    // (a file's `path` is the client's to choose).
                    let given = link["parameters"].as_object().unwrap();
                    let wanted = path_parameters(target_path);
                    assert!(!given.is_empty(), "{method} {path} {status} link {name}");
                    for parameter in given.keys() {
                        assert!(
                            wanted.contains(parameter),
                            "{method} {path} {status} link {name}: {target_path} has no {parameter}"
                        );
                    }
                }
            }
        }
        assert!(links >= SESSION_OPERATIONS.len(), "{links} links");
    }

    #[test]
    fn a_started_session_links_to_every_session_route() {
        let doc = openapi();
        let session_routes: Vec<(String, String)> = ROUTES
            .iter()
            .filter(|(_, path)| path.starts_with("/v1/sessions/{id}"))
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        assert_eq!(session_routes.len(), SESSION_OPERATIONS.len());
        let links = doc["paths"]["/v1/sessions"]["post"]["responses"]["201"]["links"]
            .as_object()
            .expect("links on 201");
        let ops = operations(&doc);
        for (method, path) in session_routes {
            let (id, ..) = ops
                .iter()
                .find(|o| o.1 == method && o.2 == path)
                .unwrap_or_else(|| panic!("{method} {path} is not described"));
            let link = links
                .values()
                .find(|link| link["operationId"] == id.as_str())
                .unwrap_or_else(|| panic!("no link from POST /v1/sessions to {method} {path}"));
            assert_eq!(link["parameters"]["id"], "$response.body#/id");
        }
        // The id the links read is in the answer's schema.
        let info = &doc["components"]["schemas"]["SessionInfo"];
        assert!(
            info["required"].as_array().unwrap().contains(&json!("id")),
            "{info}"
        );
    }

    #[test]
    fn every_json_answer_has_a_schema_and_every_error_the_error_schema() {
        let doc = openapi();
        for (_, method, path, op) in operations(&doc) {
            for (status, response) in op["responses"].as_object().unwrap() {
                let json = &response["content"]["application/json"];
                // Readiness's 503 is a state (draining, full), told in
                // the same shape as its 200.
                let is_state = op["operationId"] == "ready";
                if (status.starts_with('4') || status.starts_with('5')) && !is_state {
                    assert_eq!(
                        json["schema"]["$ref"], "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                } else if !json.is_null() {
                    assert!(json["schema"].is_object(), "{method} {path} {status}");
                }
            }
        }
    }

    #[test]
    fn every_429_documents_retry_after_and_runs_their_upload_timeout() {
        let doc = openapi();
        for (_, method, path, op) in operations(&doc) {
            let too_many = &op["responses"]["429"];
            if too_many.is_null() {
                continue;
            }
            assert_eq!(
                too_many["headers"]["Retry-After"]["schema"]["type"], "integer",
                "{method} {path}"
            );
        }
        let run = &doc["paths"]["/v1/runs"]["post"]["responses"];
        assert!(run["408"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("upload_timeout")));
    }

    #[test]
    fn every_request_body_schema_is_closed_as_the_parser_is() {
        let doc = openapi();
        let schemas = &doc["components"]["schemas"];
        for name in [
            "RunBody",
            "SessionBody",
            "ExecBody",
            "PackagesBody",
            "SecretBody",
            "FileBody",
        ] {
            let schema = &schemas[name];
            assert_eq!(schema["additionalProperties"], false, "{name}: {schema}");
            // Flattened options are merged into `properties`, not left in
            // an `allOf` that `additionalProperties` would not see.
            assert!(schema.get("allOf").is_none(), "{name}: {schema}");
        }
        // A body the parser accepts whole is valid against its schema's
        // property names.
        let run = &schemas["RunBody"]["properties"];
        for field in ["code", "memory_mib", "network", "files", "secrets", "env"] {
            assert!(run[field].is_object(), "{field} in {run}");
        }
        assert!(crate::json::parse::<crate::api::RunBody>(
            json!({"code": "1", "memory_mib": 256, "network": {}, "files": [], "env": {}})
        )
        .is_ok());
    }

    #[test]
    fn the_types_bodies_use_are_components_by_name() {
        let doc = openapi();
        let schemas = &doc["components"]["schemas"];
        for name in [
            "FileBody",
            "NetworkArgs",
            "SessionBody",
            "ExecBody",
            "PackagesBody",
        ] {
            assert!(schemas[name].is_object(), "{name} in {schemas}");
        }
        assert!(doc.pointer("/components/schemas/RunBody/$defs").is_none());
    }

    #[test]
    fn the_session_body_names_cpus_and_both_lifetimes() {
        let doc = openapi();
        let props = &doc["components"]["schemas"]["SessionBody"]["properties"];
        for field in [
            "language",
            "memory_mib",
            "cpus",
            "network",
            "packages",
            "idle_timeout_s",
            "max_lifetime_s",
        ] {
            assert!(props[field].is_object(), "{field} in {props}");
        }
    }

    #[test]
    fn the_run_body_schema_comes_from_the_type() {
        let doc = openapi();
        let props = &doc["components"]["schemas"]["RunBody"]["properties"];
        for field in [
            "language",
            "code",
            "timeout_s",
            "memory_mib",
            "cpus",
            "network",
            "files",
            "packages",
        ] {
            assert!(props[field].is_object(), "{field} in {props}");
        }
    }
}
