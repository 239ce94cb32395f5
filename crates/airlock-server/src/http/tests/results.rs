//! Rich results (`docs/outputs.md`) through every front end of the
//! server: `results` and `error` in the JSON of runs and cells, `result`
//! and `cell_error` events in their streams, the OpenAPI schemas that
//! describe them, and MCP's image and text content. The fake VM's
//! `show`/`result`/`raise` scripts make the results.

use super::{body, Harness, Mcp, KEY_A};
use crate::http::openapi;
use axum::http::StatusCode;
use serde_json::{json, Value};

/// The PNG signature, base64: a binary representation that decodes.
const PNG_B64: &str = "iVBORw0KGgo=";

/// A main result, a displayed PNG, then an exception.
fn script() -> String {
    format!("show 42\nresult image/png {PNG_B64}\nraise ValueError bad value")
}

/// `script()` as a cell of session `id`, answered whole or as events.
async fn exec_script(h: &Harness, id: &str, events: bool) -> super::Reply {
    let path = format!("/v1/sessions/{id}/exec");
    let body = json!({"code": script()});
    if events {
        h.post_events(KEY_A, &path, &body).await
    } else {
        h.post(KEY_A, &path, &body).await
    }
}

/// Checks the results and error `script()` makes, as REST answers them.
fn assert_scripts_results(answer: &Value) {
    assert_eq!(
        answer["results"],
        json!([
            {"data": {"text/plain": "42"}, "is_main_result": true},
            {"data": {"image/png": PNG_B64}}
        ]),
        "{answer}"
    );
    assert_eq!(answer["error"]["name"], "ValueError", "{answer}");
    assert_eq!(answer["error"]["value"], "bad value", "{answer}");
    assert!(
        answer["error"]["traceback"]
            .as_str()
            .is_some_and(|t| t.contains("ValueError: bad value")),
        "{answer}"
    );
    assert_eq!(answer["exit_code"], 1, "{answer}");
}

#[tokio::test]
async fn a_runs_json_carries_its_results_and_its_error() {
    let h = Harness::new();
    let answer = h.run(KEY_A, &script(), json!({})).await.ok(StatusCode::OK);
    assert_scripts_results(&answer);
    let plain = h.run(KEY_A, "hello", json!({})).await.ok(StatusCode::OK);
    assert!(plain.get("results").is_none(), "{plain}");
    assert!(plain.get("error").is_none(), "{plain}");
}

#[tokio::test]
async fn a_cells_json_carries_its_results_and_its_error() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let answer = exec_script(&h, &id, false).await.ok(StatusCode::OK);
    assert_scripts_results(&answer);
    assert_eq!(answer["state_lost"], false);
}

/// The events' names, and the data of each.
fn names_and_data(events: &[(String, Value)]) -> (Vec<&str>, Vec<&Value>) {
    events.iter().map(|(n, d)| (n.as_str(), d)).unzip()
}

/// Checks the events of `script()`: each result in order, the stderr
/// traceback, the cell error, then `done` with the whole answer.
fn assert_scripts_events(reply: &super::Reply) {
    assert_eq!(reply.status, StatusCode::OK);
    let events = reply.events();
    let (names, data) = names_and_data(&events);
    assert_eq!(
        names,
        ["result", "result", "stderr", "cell_error", "done"],
        "{events:?}"
    );
    assert_eq!(
        *data[0],
        json!({"data": {"text/plain": "42"}, "is_main_result": true})
    );
    assert_eq!(*data[1], json!({"data": {"image/png": PNG_B64}}));
    assert_eq!(data[3]["name"], "ValueError");
    assert_eq!(*data[3], data[4]["error"], "the cell error is the answer's");
    assert_scripts_results(data[4]);
}

#[tokio::test]
async fn a_streamed_run_sends_each_result_in_order_then_the_cell_error_then_done() {
    let h = Harness::new();
    let reply = h
        .post_events(KEY_A, "/v1/runs", &body("python", &script(), json!({})))
        .await;
    assert_scripts_events(&reply);
}

#[tokio::test]
async fn a_streamed_cell_sends_its_results_and_cell_error_as_a_run_does() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    assert_scripts_events(&exec_script(&h, &id, true).await);
}

#[tokio::test]
async fn a_stream_without_results_has_no_result_or_cell_error_event() {
    let h = Harness::new();
    let reply = h
        .post_events(KEY_A, "/v1/runs", &body("python", "hello", json!({})))
        .await;
    let events = reply.events();
    let (names, _) = names_and_data(&events);
    assert_eq!(names, ["stdout", "done"], "{events:?}");
}

/// Every key of `value` (an object) is a property of the document's
/// schema `name`; `$ref`s followed one level into the item schemas.
fn assert_described(doc: &Value, name: &str, value: &Value) {
    let schema = &doc["components"]["schemas"][name];
    let properties = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has properties: {schema}"));
    for key in value.as_object().expect("an object").keys() {
        assert!(properties.contains_key(key), "{name} lacks `{key}`");
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_field_of_the_answers() {
    let h = Harness::new();
    let doc = openapi();
    let run = h.run(KEY_A, &script(), json!({})).await.ok(StatusCode::OK);
    assert_described(&doc, "RunResult", &run);
    let id = h.session(KEY_A).await;
    let cell = exec_script(&h, &id, false).await.ok(StatusCode::OK);
    assert_described(&doc, "CellResult", &cell);
    for result in run["results"].as_array().expect("results") {
        assert_described(&doc, "ExecResult", result);
    }
    assert_described(&doc, "CellError", &run["error"]);
    let exec_result = &doc["components"]["schemas"]["ExecResult"];
    assert_eq!(exec_result["required"], json!(["data"]), "{exec_result}");
    let cell_error = &doc["components"]["schemas"]["CellError"];
    assert_eq!(
        cell_error["required"],
        json!(["name", "value", "traceback"]),
        "{cell_error}"
    );
    for name in ["RunResult", "CellResult"] {
        let items = &doc["components"]["schemas"][name]["properties"]["results"]["items"];
        assert_eq!(items["$ref"], "#/components/schemas/ExecResult", "{name}");
    }
    let exec = &doc["paths"]["/v1/sessions/{id}/exec"]["post"];
    assert_eq!(
        exec["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CellResult"
    );
    for path in ["/v1/runs", "/v1/sessions/{id}/exec"] {
        let description = doc["paths"][path]["post"]["description"]
            .as_str()
            .unwrap_or_default();
        for event in ["`result`", "`cell_error`", "`done`"] {
            assert!(description.contains(event), "{path}: {description}");
        }
    }
}

/// A tool's content items after the JSON text: (type, text or data,
/// mimeType).
fn items(result: &Value) -> Vec<(String, String, String)> {
    let content = result["content"].as_array().expect("content");
    content[1..]
        .iter()
        .map(|item| {
            let field = |name: &str| item[name].as_str().unwrap_or_default().to_owned();
            let payload = if item["type"] == "image" {
                field("data")
            } else {
                field("text")
            };
            (field("type"), payload, field("mimeType"))
        })
        .collect()
}

/// `tools/call` of `tool`: the whole result.
async fn call(mcp: &mut Mcp<'_>, tool: &str, arguments: Value) -> Value {
    let (_, answer) = mcp
        .rpc("tools/call", json!({"name": tool, "arguments": arguments}))
        .await;
    answer["result"].clone()
}

/// Checks the MCP answer of `script()`: the main result as text, the
/// PNG as an image item, the JSON without the base64.
fn assert_mcp_content(result: &Value) {
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(
        items(result),
        [
            ("text".to_owned(), "42".to_owned(), String::new()),
            (
                "image".to_owned(),
                PNG_B64.to_owned(),
                "image/png".to_owned()
            ),
        ],
        "{result}"
    );
    let structured = &result["structuredContent"];
    let results = &structured["results"];
    assert_eq!(results[0]["data"]["text/plain"], "42", "{structured}");
    let marker = results[1]["data"]["image/png"].as_str().unwrap_or_default();
    assert!(
        marker.contains("8 bytes") && marker.contains("image content"),
        "the base64 is not repeated in the JSON: {marker}"
    );
    assert_eq!(structured["error"]["name"], "ValueError", "{structured}");
}

#[tokio::test]
async fn run_code_answers_images_as_image_content_and_values_as_text() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let result = call(&mut mcp, "run_code", json!({"code": script()})).await;
    assert_mcp_content(&result);
}

#[tokio::test]
async fn exec_in_session_answers_images_as_image_content_and_values_as_text() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let id = mcp.session().await;
    let result = call(
        &mut mcp,
        "exec_in_session",
        json!({"session_id": id, "code": script()}),
    )
    .await;
    assert_mcp_content(&result);
    assert_eq!(result["structuredContent"]["state_lost"], false);
}

#[tokio::test]
async fn html_is_a_text_item_only_without_plain_text_and_pdf_is_not_sent() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let code = "result text/html <b>x</b>\nresult application/pdf JVBERi0=";
    let result = call(&mut mcp, "run_code", json!({"code": code})).await;
    assert_eq!(
        items(&result),
        [("text".to_owned(), "<b>x</b>".to_owned(), String::new())],
        "{result}"
    );
    let pdf = result["structuredContent"]["results"][1]["data"]["application/pdf"]
        .as_str()
        .unwrap_or_default();
    assert!(pdf.contains("not sent over MCP"), "{pdf}");
}

#[tokio::test]
async fn every_tool_declares_an_object_output_schema() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let (_, answer) = mcp.rpc("tools/list", json!({})).await;
    for tool in answer["result"]["tools"].as_array().expect("tools") {
        let schema = &tool["outputSchema"];
        assert_eq!(schema["type"], "object", "{tool}");
        assert!(
            schema["properties"]
                .as_object()
                .is_some_and(|p| !p.is_empty()),
            "{tool}"
        );
    }
    let run = answer["result"]["tools"]
        .as_array()
        .and_then(|tools| tools.iter().find(|t| t["name"] == "run_code"))
        .expect("run_code");
    for field in ["results", "error", "exit_code", "stdout"] {
        assert!(
            run["outputSchema"]["properties"][field].is_object(),
            "{field}: {run}"
        );
    }
}

#[tokio::test]
async fn an_image_in_a_run_or_session_body_picks_the_vms_root_disk() {
    let h = Harness::new();
    h.run(KEY_A, "1", json!({"image": "python-data"}))
        .await
        .ok(StatusCode::OK);
    h.post(
        KEY_A,
        "/v1/sessions",
        &json!({"language": "python", "image": "python-data"}),
    )
    .await
    .ok(StatusCode::CREATED);
    h.run(KEY_A, "1", json!({})).await.ok(StatusCode::OK);
    let images: Vec<airlock::Image> = h
        .fakes
        .cold
        .acquired()
        .iter()
        .map(airlock::VmOptions::image)
        .collect();
    assert_eq!(
        images,
        [
            airlock::Image::PythonData,
            airlock::Image::PythonData,
            airlock::Image::Python
        ]
    );
}

#[tokio::test]
async fn a_body_without_a_language_takes_its_images_else_python() {
    let h = Harness::new();
    h.post(
        KEY_A,
        "/v1/runs",
        &json!({"code": "1", "image": "python-data"}),
    )
    .await
    .ok(StatusCode::OK);
    h.post(KEY_A, "/v1/sessions", &json!({"image": "python-data"}))
        .await
        .ok(StatusCode::CREATED);
    h.post(KEY_A, "/v1/runs", &json!({"code": "1"}))
        .await
        .ok(StatusCode::OK);
    let shapes: Vec<(airlock::Language, airlock::Image)> = h
        .fakes
        .cold
        .acquired()
        .iter()
        .map(|o| (o.language, o.image()))
        .collect();
    assert_eq!(
        shapes,
        [
            (airlock::Language::Python, airlock::Image::PythonData),
            (airlock::Language::Python, airlock::Image::PythonData),
            (airlock::Language::Python, airlock::Image::Python),
        ]
    );
}

#[tokio::test]
async fn an_unknown_image_or_one_of_another_language_is_400() {
    let h = Harness::new();
    let unknown = h
        .run(KEY_A, "1", json!({"image": "python-gpu"}))
        .await
        .error(400, "invalid_input");
    assert!(
        unknown.contains("python-data"),
        "names the images: {unknown}"
    );
    h.post(
        KEY_A,
        "/v1/runs",
        &body("javascript", "1", json!({"image": "python-data"})),
    )
    .await
    .error(400, "invalid_input");
    h.post(
        KEY_A,
        "/v1/sessions",
        &json!({"language": "raw", "image": "python-data"}),
    )
    .await
    .error(400, "invalid_input");
    assert_eq!(h.fakes.cold.acquired().len(), 0, "no VM for a refusal");
}

#[tokio::test]
async fn mcp_tools_take_an_image_whose_language_is_the_default() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    mcp.call_ok("run_code", json!({"code": "1", "image": "python-data"}))
        .await;
    let created = mcp
        .call_ok("create_session", json!({"image": "python-data"}))
        .await;
    assert_eq!(created["language"], "python");
    mcp.call_err(
        "run_code",
        json!({"code": "1", "language": "raw", "image": "python-data"}),
        "invalid_input",
    )
    .await;
    let acquired = h.fakes.cold.acquired();
    assert_eq!(acquired.len(), 2, "no VM for the refusal");
    for vm in acquired {
        assert_eq!(
            (vm.image(), vm.language),
            (airlock::Image::PythonData, airlock::Language::Python)
        );
    }
}

#[tokio::test]
async fn the_documents_name_the_image_option() {
    let doc = openapi::openapi();
    for body in ["RunBody", "SessionBody"] {
        let image = &doc["components"]["schemas"][body]["properties"]["image"];
        assert!(image.is_object(), "{body}: {image}");
    }
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let (_, answer) = mcp.rpc("tools/list", json!({})).await;
    for name in ["run_code", "create_session"] {
        let tool = answer["result"]["tools"]
            .as_array()
            .and_then(|tools| tools.iter().find(|t| t["name"] == name))
            .expect("the tool");
        assert!(
            tool["inputSchema"]["properties"]["image"].is_object(),
            "{tool}"
        );
        assert!(
            tool["description"]
                .as_str()
                .is_some_and(|d| d.contains("python-data")),
            "{tool}"
        );
    }
}
