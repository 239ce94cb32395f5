//! The OpenAPI 3.1 document served at `GET /v1/openapi.json`: the paths
//! written here, the request schemas generated from the very types the
//! handlers parse (schemars), so the two cannot drift apart; so are the
//! schemas of a result (`ExecResult`) and a cell error (`CellError`) the
//! answers carry.

use crate::api::{ExecBody, PackagesBody, RunBody, SecretBody, SessionBody};
use crate::secrets::SecretInfo;
use airlock_protocol::{CellError, ExecResult};
use schemars::generate::SchemaSettings;
use schemars::SchemaGenerator;
use serde_json::{json, Value};

/// The events of a streamed run or cell (`Accept: text/event-stream`).
const EVENTS: &str = "With `Accept: text/event-stream`, events in the order the code made them: `stdout` and `stderr` (data `{\"text\"}` for a UTF-8 chunk, or `{\"b64\"}` with a whole chunk that is not), `result` per value the code showed (data: an `ExecResult`); past the stream's caps one `cut` (data `{\"reason\", \"max_events\", \"max_bytes\"}`) and no more of those; then `cell_error` (data: a `CellError`) when the code raised, and last one `done` with the whole answer (or one `error`).";

/// Every route of the REST API, as (method, path): what the document
/// describes and the router serves (a unit test holds them together).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/health"),
    ("get", "/v1/openapi.json"),
    ("get", "/metrics"),
    ("post", "/v1/runs"),
    ("post", "/v1/sessions"),
    ("get", "/v1/sessions"),
    ("get", "/v1/sessions/{id}"),
    ("delete", "/v1/sessions/{id}"),
    ("post", "/v1/sessions/{id}/exec"),
    ("post", "/v1/sessions/{id}/packages"),
    ("get", "/v1/sessions/{id}/files"),
    ("get", "/v1/sessions/{id}/files/{path}"),
    ("put", "/v1/sessions/{id}/files/{path}"),
    ("get", "/v1/secrets"),
    ("put", "/v1/secrets/{name}"),
    ("delete", "/v1/secrets/{name}"),
];

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
        "403": error_response("Keyless server: a Host that is not a loopback name, or a foreign Origin"),
        "413": error_response("Body over the limit"),
        "415": error_response("Keyless server: a body that is not application/json"),
        "429": error_response("Over a quota (the message names it)"),
        "503": error_response("Draining or no VM capacity"),
    })
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
    let _ = generator.subschema_for::<PackagesBody>();
    let _ = generator.subschema_for::<SecretBody>();
    let _ = generator.subschema_for::<SecretInfo>();
    // The types the answers carry.
    let _ = generator.subschema_for::<ExecResult>();
    let _ = generator.subschema_for::<CellError>();
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

fn session_paths(paths: &mut serde_json::Map<String, Value>) {
    let body = |name: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}}});
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let path = json!({"name": "path", "in": "path", "required": true, "schema": {"type": "string"}, "description": "relative to the session's home; may hold `/`"});
    let not_found = error_response("Unknown session, or another tenant's");
    let busy = error_response("The session runs something already");
    let ok = |d: &str| json!({"description": d});
    paths.insert("/v1/sessions".into(), json!({
        "post": {"summary": "Start a session", "requestBody": body("SessionBody"),
                 "responses": with_errors(json!({"201": ok("`{id, language, created_at, last_used}`")}))},
        "get": {"summary": "The caller's sessions", "responses": with_errors(json!({"200": ok("`{sessions: [..]}`")}))}
    }));
    paths.insert("/v1/sessions/{id}".into(), json!({
        "parameters": [id],
        "get": {"summary": "One session", "responses": with_errors(json!({"200": ok("`{id, language, created_at, last_used}`"), "404": not_found}))},
        "delete": {"summary": "Close a session (its VM is destroyed)", "responses": with_errors(json!({"204": ok("Closed"), "404": not_found}))}
    }));
    paths.insert("/v1/sessions/{id}/exec".into(), json!({
        "parameters": [id],
        "post": {"summary": "Run a cell (state is kept); SSE as for runs", "requestBody": body("ExecBody"),
                 "description": EVENTS,
                 "responses": with_errors(json!({"200": {"description": "The cell's result", "content": {
                     "application/json": {"schema": {"$ref": "#/components/schemas/CellResult"}},
                     "text/event-stream": {"schema": {"type": "string"}}
                 }}, "404": not_found, "409": busy}))}
    }));
    paths.insert("/v1/sessions/{id}/packages".into(), json!({
        "parameters": [id],
        "post": {"summary": "Install pinned packages", "requestBody": body("PackagesBody"),
                 "responses": with_errors(json!({"200": {"description": "The installer's result, as an exec's", "content": {
                     "application/json": {"schema": {"$ref": "#/components/schemas/CellResult"}}
                 }}, "404": not_found, "409": busy}))}
    }));
    paths.insert("/v1/sessions/{id}/files".into(), json!({
        "parameters": [id, {"name": "dir", "in": "query", "schema": {"type": "string"}}],
        "get": {"summary": "List a directory", "responses": with_errors(json!({"200": ok("`{entries: [{name, size, kind, mode}]}`"), "404": not_found}))}
    }));
    paths.insert("/v1/sessions/{id}/files/{path}".into(), json!({
        "parameters": [id, path],
        "get": {"summary": "Read a file: raw bytes, `x-sha256` header", "responses": with_errors(json!({"200": ok("The bytes"), "404": not_found}))},
        "put": {"summary": "Write a file: raw body", "requestBody": {"required": true, "content": {"application/octet-stream": {}}},
                "responses": with_errors(json!({"200": ok("`{path, size, sha256}`"), "404": not_found, "409": busy}))}
    }));
}

fn secret_paths(paths: &mut serde_json::Map<String, Value>) {
    let info = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SecretInfo"}}}});
    let name = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}, "description": "the variable the sandbox sees: `[A-Za-z_][A-Za-z0-9_]{0,127}`"});
    let disabled = error_response("The server was started without a secrets key");
    paths.insert("/v1/secrets".into(), json!({
        "get": {"summary": "The caller's secrets: names, hosts, dates (never values)",
                "responses": with_errors(json!({"200": {"description": "`{secrets: [SecretInfo]}`", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"secrets": {"type": "array", "items": {"$ref": "#/components/schemas/SecretInfo"}}}
                }}}}, "501": disabled}))}
    }));
    paths.insert("/v1/secrets/{name}".into(), json!({
        "parameters": [name],
        "put": {"summary": "Store a secret (encrypted at rest; the value is never shown again)",
                "description": "Runs and sessions name it in `secrets`: the sandbox gets a placeholder, and the egress proxy puts the value into HTTPS requests to its hosts (docs/secrets.md).",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SecretBody"}}}},
                "responses": with_errors(json!({"201": info("Stored"), "200": info("Replaced"), "501": disabled}))},
        "delete": {"summary": "Delete a secret",
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
                        "properties": {"kind": {"type": "string"}, "message": {"type": "string"}}}}
                },
                "RunResult": run_result,
                "CellResult": cell_result,
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/health": {"get": {
                "summary": "Liveness (no key needed)", "security": [],
                "responses": {"200": {"description": "`{\"status\": \"ok\" | \"draining\", \"version\"}`"}}
            }},
            "/v1/openapi.json": {"get": {
                "summary": "This document (no key needed)", "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1"}}
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (no key needed)", "security": [],
                "responses": {"200": {"description": "Prometheus text format"}}
            }},
            "/v1/runs": {"post": {
                "summary": "Run code once in a fresh VM",
                "description": EVENTS,
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunBody"}}}},
                "responses": with_errors(json!({
                    "200": {"description": "The run's result", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/RunResult"}},
                        "text/event-stream": {"schema": {"type": "string"}}
                    }}
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
