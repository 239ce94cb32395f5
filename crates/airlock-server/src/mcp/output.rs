//! What the MCP tools answer. A tool's output is JSON: the result's
//! `structuredContent`, which the tool's `outputSchema` describes, and the
//! same JSON in a first text item for clients without structured content
//! (as the MCP specification asks). A run's or a cell's results (the
//! values the code showed, `docs/outputs.md`) also come as content a
//! client shows: an image as an image item, any other value as a text
//! item of its best text form. Their images are not repeated inside the
//! JSON, where a model would read them as text: a marker names each one.

use crate::error::ServerError;
use airlock::{CellResult, RunResult};
use airlock_protocol::{CellError, ExecResult};
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::schemars::{self, JsonSchema};
use serde::Serialize;

/// Image types MCP clients show, as image content.
const IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// Text forms of a value, the best first: the first one present is a
/// result's text item (HTML only when there is no plain text).
const TEXT_TYPES: [&str; 6] = [
    "text/plain",
    "text/markdown",
    "text/latex",
    "text/html",
    "image/svg+xml",
    "application/json",
];

/// A tool's successful output: its JSON (`structuredContent`) and the
/// content items after the JSON's text item.
pub(crate) trait ToolOutput: Serialize {
    /// The items after the JSON's text item (a run's results).
    fn items(&self) -> Vec<ContentBlock> {
        Vec::new()
    }
}

/// Largest tool answer given as pretty JSON text; a larger one is compact.
const PRETTY_TEXT_MAX_BYTES: usize = 64 * 1024;

/// A tool's answer: its output as structured content, JSON text and
/// items, or the error's message as a tool error (so the model can read
/// it and try again).
pub(crate) fn answer<T: ToolOutput>(result: Result<T, ServerError>) -> CallToolResult {
    let output = result.and_then(|output| {
        let value = serde_json::to_value(&output)
            .map_err(|e| ServerError::internal("encode the result", e))?;
        // Pretty for a model to read, unless large (a file's content):
        // then compact, not inflated further.
        let text = if serde_json::to_vec(&value).map_or(0, |v| v.len()) > PRETTY_TEXT_MAX_BYTES {
            serde_json::to_string(&value)
        } else {
            serde_json::to_string_pretty(&value)
        }
        .map_err(|e| ServerError::internal("encode the result", e))?;
        Ok((output, value, text))
    });
    match output {
        Ok((output, value, text)) => {
            let mut content = vec![ContentBlock::text(text)];
            content.extend(output.items());
            let mut result = CallToolResult::success(content);
            result.structured_content = Some(value);
            result
        }
        Err(e) => {
            let public = e.public();
            let mut message = format!("{} ({})", public.message, public.kind);
            if let Some(hint) = e.hint() {
                message.push_str("; hint: ");
                message.push_str(hint);
            }
            CallToolResult::error(vec![ContentBlock::text(message)])
        }
    }
}

/// Results as a model gets them: the bundles with every binary
/// representation replaced by a marker, and the content items that show
/// them, in order.
#[derive(Debug, Default)]
pub(crate) struct ShownResults {
    /// The bundles for the JSON.
    pub results: Vec<ExecResult>,
    /// The image and text items.
    pub items: Vec<ContentBlock>,
}

impl ShownResults {
    /// Splits `results` into their JSON form and their content items.
    pub fn new(results: Vec<ExecResult>) -> Self {
        let mut shown = Self::default();
        for mut result in results {
            // The image an MCP client shows: the first of IMAGE_TYPES the
            // bundle holds whose base64 decodes.
            let shown_image = IMAGE_TYPES
                .into_iter()
                .find(|mime| matches!(result.binary(mime), Some(Ok(_))));
            let mut item = None;
            let binary: Vec<String> = result
                .data
                .keys()
                .filter(|mime| airlock_protocol::is_binary_mime(mime))
                .cloned()
                .collect();
            for mime in binary {
                let marker = match result.binary(&mime) {
                    Some(Ok(bytes)) if shown_image == Some(mime.as_str()) => {
                        let b64 = result.data[&mime].as_str().unwrap_or_default().trim();
                        item = Some(ContentBlock::image(b64, mime.clone()));
                        format!("({} bytes, sent as an MCP image content item)", bytes.len())
                    }
                    Some(Ok(bytes)) => format!(
                        "({} bytes, not sent over MCP: save it to a file to read it)",
                        bytes.len()
                    ),
                    Some(Err(e)) => format!("(not sent: {e})"),
                    None => continue,
                };
                result.data.insert(mime, serde_json::Value::String(marker));
            }
            let item = item.or_else(|| text_form(&result).map(ContentBlock::text));
            shown.items.extend(item);
            shown.results.push(result);
        }
        shown
    }
}

/// A result's best text form, if it has one.
fn text_form(result: &ExecResult) -> Option<String> {
    TEXT_TYPES
        .iter()
        .find_map(|mime| match result.data.get(*mime)? {
            serde_json::Value::String(text) => Some(text.clone()),
            other => serde_json::to_string_pretty(other).ok(),
        })
}

/// What runs and cells have in common, as a model gets it: exit code,
/// output and results.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CodeOutput {
    /// The exit code (137 when killed at the timeout; python and
    /// javascript: 1 after an uncaught exception).
    pub exit_code: i32,
    /// Whether the code ran out of time.
    pub timed_out: bool,
    /// Its standard output (lossy UTF-8).
    pub stdout: String,
    /// Its standard error (lossy UTF-8).
    pub stderr: String,
    /// Whether stdout was cut at its cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at its cap.
    pub stderr_truncated: bool,
    /// The values the code showed, in order (its last expression,
    /// `display()`, matplotlib figures): MIME bundles. An image's base64
    /// is replaced here by a marker: the image itself follows as an image
    /// content item.
    pub results: Vec<ExecResult>,
    /// The uncaught exception, if any (its traceback is on stderr too).
    pub error: Option<CellError>,
    #[serde(skip)]
    #[schemars(skip)]
    items: Vec<ContentBlock>,
}

impl CodeOutput {
    /// The parts of a run's or a cell's result.
    fn new(
        exit_code: i32,
        timed_out: bool,
        (stdout, stdout_truncated): (&[u8], bool),
        (stderr, stderr_truncated): (&[u8], bool),
        results: Vec<ExecResult>,
        error: Option<CellError>,
    ) -> Self {
        let shown = ShownResults::new(results);
        Self {
            exit_code,
            timed_out,
            stdout: String::from_utf8_lossy(stdout).into_owned(),
            stderr: String::from_utf8_lossy(stderr).into_owned(),
            stdout_truncated,
            stderr_truncated,
            results: shown.results,
            error,
            items: shown.items,
        }
    }
}

/// `run_code`'s output: what a model needs of a run's result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunSummary {
    /// Exit code, output, results.
    #[serde(flatten)]
    pub output: CodeOutput,
    /// Wall time of the whole run, boot included, in milliseconds.
    pub duration_ms: u64,
}

impl From<RunResult> for RunSummary {
    fn from(r: RunResult) -> Self {
        Self {
            output: CodeOutput::new(
                r.exit_code,
                r.timed_out,
                (&r.stdout, r.stdout_truncated),
                (&r.stderr, r.stderr_truncated),
                r.results,
                r.error,
            ),
            duration_ms: r.timings.total_ms,
        }
    }
}

impl ToolOutput for RunSummary {
    fn items(&self) -> Vec<ContentBlock> {
        self.output.items.clone()
    }
}

/// `exec_in_session`'s and `install_packages`'s output: a cell's result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CellSummary {
    /// Exit code, output, results.
    #[serde(flatten)]
    pub output: CodeOutput,
    /// Whether the interpreter was restarted (after a timeout), so the
    /// session's earlier state is gone.
    pub state_lost: bool,
    /// Wall time of the call, in milliseconds.
    pub duration_ms: u64,
}

impl From<CellResult> for CellSummary {
    fn from(r: CellResult) -> Self {
        Self {
            output: CodeOutput::new(
                r.exit_code,
                r.timed_out,
                (&r.stdout, r.stdout_truncated),
                (&r.stderr, r.stderr_truncated),
                r.results,
                r.error,
            ),
            state_lost: r.state_lost,
            duration_ms: r.duration_ms,
        }
    }
}

impl ToolOutput for CellSummary {
    fn items(&self) -> Vec<ContentBlock> {
        self.output.items.clone()
    }
}

/// `read_file`'s output.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileRead {
    /// Path relative to the session's home.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex sha256 of the content.
    pub sha256: String,
    /// The content, when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The content as base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_b64: Option<String>,
}

impl ToolOutput for FileRead {}

/// `list_files`'s output (the JSON of `GET /v1/sessions/{id}/files`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileList {
    /// The directory's entries.
    pub entries: Vec<airlock_protocol::FileEntry>,
}

impl ToolOutput for FileList {}

/// `close_session`'s output.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Closed {
    /// The id of the session closed.
    pub closed: String,
}

impl ToolOutput for Closed {}

/// `fork_session`'s output.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Forked {
    /// The new sessions.
    pub sessions: Vec<crate::sessions::table::SessionInfo>,
}

impl ToolOutput for Forked {}

impl ToolOutput for crate::sessions::table::SessionInfo {}

impl ToolOutput for airlock::FileInfo {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle(data: serde_json::Value) -> ExecResult {
        serde_json::from_value(json!({ "data": data })).expect("a bundle")
    }

    fn kinds(items: &[ContentBlock]) -> Vec<serde_json::Value> {
        items
            .iter()
            .map(|item| serde_json::to_value(item).expect("an item"))
            .collect()
    }

    #[test]
    fn a_figure_is_one_image_item_and_a_marker_in_the_json() {
        let shown = ShownResults::new(vec![bundle(json!({
            "image/png": "iVBORw0KGgo=", "image/jpeg": "/9j/4A==",
            "text/plain": "<Figure size 640x480 with 1 Axes>"
        }))]);
        let items = kinds(&shown.items);
        assert_eq!(items.len(), 1, "one item per result: {items:?}");
        assert_eq!(items[0]["type"], "image");
        assert_eq!(items[0]["mimeType"], "image/png", "PNG first");
        let data = &shown.results[0].data;
        let png = data["image/png"].as_str().unwrap_or_default();
        assert!(png.contains("8 bytes, sent as an MCP image"), "{png}");
        let jpeg = data["image/jpeg"].as_str().unwrap_or_default();
        assert!(jpeg.contains("4 bytes, not sent over MCP"), "{jpeg}");
        assert_eq!(data["text/plain"], "<Figure size 640x480 with 1 Axes>");
    }

    #[test]
    fn plain_text_wins_over_html_and_json_is_pretty_text() {
        let shown = ShownResults::new(vec![
            bundle(json!({"text/html": "<table/>", "text/plain": "   a"})),
            bundle(json!({"text/html": "<table/>"})),
            bundle(json!({"application/json": {"a": 1}})),
        ]);
        let texts: Vec<String> = kinds(&shown.items)
            .iter()
            .map(|item| item["text"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(texts, ["   a", "<table/>", "{\n  \"a\": 1\n}"]);
        assert_eq!(
            shown.results[0].data["text/html"], "<table/>",
            "kept in the JSON"
        );
    }

    #[test]
    fn bad_base64_is_not_sent_and_says_why() {
        let shown = ShownResults::new(vec![bundle(json!({"image/png": "%%%"}))]);
        assert!(shown.items.is_empty());
        let marker = shown.results[0].data["image/png"]
            .as_str()
            .unwrap_or_default();
        assert!(
            marker.contains("not sent") && marker.contains("base64"),
            "{marker}"
        );
    }

    #[test]
    fn a_tool_error_has_no_structured_content() {
        let result = answer::<Closed>(Err(ServerError::bad_request("no")));
        assert_eq!(result.is_error, Some(true));
        assert!(result.structured_content.is_none());
        let ok = answer(Ok(Closed {
            closed: "s1".into(),
        }));
        assert_eq!(ok.structured_content, Some(json!({"closed": "s1"})));
    }
}
