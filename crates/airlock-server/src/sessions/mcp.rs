//! The session tools of the MCP server: create, exec, files, packages,
//! close, pause, resume, fork (each described for a language model, with
//! an example).

use crate::api::{ExecBody, SessionBody, SessionSpec};
use crate::json::Strict;
use crate::keys::Caller;
use crate::mcp::output::{answer, CellSummary, Closed, FileList, FileRead, Forked, ToolOutput};
use crate::mcp::McpTools;
use crate::sessions::table::SessionInfo;
use airlock::FileInfo;
use airlock::Session;
use base64::Engine;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::{schemars, tool, tool_router, ErrorData, RoleServer};
use serde::Deserialize;
use std::sync::Arc;

/// Input of `create_session`: the REST session's options
/// ([`SessionSpec`], flattened: `memory_mib`, `cpus`, `network`,
/// `packages`, `idle_timeout_s`, `max_lifetime_s`), with a default
/// language.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreateSessionParams {
    /// `python`, `javascript` or `raw` (bash). Default: the image's
    /// language, else python.
    #[serde(default)]
    pub language: Option<String>,
    /// The sandbox and its lifetime, as for REST.
    #[serde(flatten)]
    pub spec: SessionSpec,
}

/// Input of `exec_in_session`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    /// The id `create_session` returned.
    pub session_id: String,
    /// Code to run in the session's interpreter; variables, imports and
    /// files persist between calls.
    pub code: String,
    /// Seconds the code may run (default 30).
    #[serde(default)]
    pub timeout_s: Option<f64>,
}

/// Input of `write_file`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileParams {
    /// The session.
    pub session_id: String,
    /// Path relative to the session's home dir, e.g. `data/in.csv`.
    pub path: String,
    /// The content as text (give this or `content_b64`).
    #[serde(default)]
    pub content: Option<String>,
    /// The content as base64, for binary files.
    #[serde(default)]
    pub content_b64: Option<String>,
}

/// Input of `read_file`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathParams {
    /// The session.
    pub session_id: String,
    /// Path relative to the session's home dir.
    pub path: String,
}

/// Input of `list_files`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// The session.
    pub session_id: String,
    /// Directory relative to the home dir (default: the home dir).
    #[serde(default)]
    pub dir: Option<String>,
}

/// Input of `install_packages`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackagesParams {
    /// The session.
    pub session_id: String,
    /// Pinned packages: `name==version` for Python, `name@version` for
    /// JavaScript.
    pub packages: Vec<String>,
}

/// Input of `close_session`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionParams {
    /// The session.
    pub session_id: String,
}

/// Input of `fork_session`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkParams {
    /// The session to copy.
    pub session_id: String,
    /// How many copies (1..=8).
    pub count: usize,
}

impl McpTools {
    /// Runs `call` on the caller's session `id` and makes its answer; an
    /// unknown (or another tenant's) session is a tool error.
    async fn on_session<T, F, Fut>(
        &self,
        ctx: &RequestContext<RoleServer>,
        id: &str,
        call: F,
    ) -> Result<CallToolResult, ErrorData>
    where
        T: ToolOutput,
        F: FnOnce(Caller, Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = crate::Result<T>>,
    {
        let caller = self.caller(ctx)?;
        let result = match self.airlock().session(&caller, id) {
            Ok(session) => call(caller, session).await,
            Err(e) => Err(e),
        };
        Ok(answer(result))
    }
}

#[tool_router(router = session_tool_router, vis = "pub(crate)")]
impl McpTools {
    #[tool(
        name = "create_session",
        output_schema = schema_for_output::<SessionInfo>(),
        description = "Start a persistent sandbox: a Linux microVM whose interpreter keeps its state (variables, imports, files in its home dir) across exec_in_session calls. \
Returns {\"id\": ...}; pass it to the other session tools. Options as for run_code (image, memory_mib, cpus, network, packages, secrets; \"image\": \"python-data\" for pandas, numpy and matplotlib) and its lifetime: it closes after idle_timeout_s (600) without a call and max_lifetime_s (3600) after it started. Limits: a few sessions per user; no network unless `network` is given. Close it with close_session when done. \
Example: {\"language\": \"python\"}"
    )]
    async fn create_session(
        &self,
        Parameters(Strict(p)): Parameters<Strict<CreateSessionParams>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = self.caller(&ctx)?;
        let body = SessionBody {
            language: p.language,
            spec: p.spec,
        };
        Ok(answer(self.airlock().create_session(&caller, &body).await))
    }

    #[tool(
        name = "exec_in_session",
        output_schema = schema_for_output::<CellSummary>(),
        description = "Run code in a session made by create_session, as the next cell of its interpreter: earlier definitions are still there. \
Returns exit_code, stdout, stderr, timed_out, state_lost (true when the interpreter had to be restarted, e.g. after a timeout, so earlier state is gone), results and error. \
Results are the values the cell showed, as in Jupyter (python: its last expression, display(...), matplotlib figures; javascript: its last expression): each is a MIME bundle, and also comes as content to show, an image (a chart) as an image item, any other value as text. \
error is the cell's uncaught exception {name, value, traceback}. One call at a time per session. \
Example: {\"session_id\": \"...\", \"code\": \"import math\\nprint(math.pi)\"}"
    )]
    async fn exec_in_session(
        &self,
        Parameters(p): Parameters<ExecParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let body = ExecBody {
            code: p.code,
            timeout_s: p.timeout_s,
            env: None,
        };
        let airlock = self.airlock();
        self.on_session(&ctx, &p.session_id, |caller, session| async move {
            airlock
                .exec(&caller, &session, &body, &mut airlock::Discard)
                .await
                .map(CellSummary::from)
        })
        .await
    }

    #[tool(
        name = "write_file",
        output_schema = schema_for_output::<FileInfo>(),
        description = "Write a file into a session's home dir (created with its parent dirs; replaced if it exists), e.g. input data for the code. \
Give text in `content` or binary data in `content_b64`. Returns path, size and sha256. Limit: the server's file size limit (64 MiB by default). \
Example: {\"session_id\": \"...\", \"path\": \"data/in.csv\", \"content\": \"a,b\\n1,2\\n\"}"
    )]
    async fn write_file(
        &self,
        Parameters(p): Parameters<WriteFileParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let bytes = match (p.content, p.content_b64) {
            (Some(text), None) => Ok(text.into_bytes()),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| crate::ServerError::bad_request(format!("content_b64: {e}"))),
            _ => Err(crate::ServerError::bad_request(
                "give exactly one of content and content_b64",
            )),
        };
        let airlock = self.airlock();
        self.on_session(&ctx, &p.session_id, |_, session| async move {
            let bytes = bytes?;
            let mut source = &bytes[..];
            airlock
                .write_file(&session, &p.path, Some(bytes.len() as u64), &mut source)
                .await
        })
        .await
    }

    #[tool(
        name = "read_file",
        output_schema = schema_for_output::<FileRead>(),
        description = "Read a file from a session's home dir, e.g. a result the code wrote. Returns path, size, sha256 and `content` (text) or `content_b64` (when the file is not UTF-8). \
Limit: the server's MCP read limit (1 MiB by default); a larger file is an error (read it over REST). \
Example: {\"session_id\": \"...\", \"path\": \"out/result.json\"}"
    )]
    async fn read_file(
        &self,
        Parameters(p): Parameters<PathParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let airlock = self.airlock();
        let limit = airlock.config().mcp.max_read_file_bytes;
        self.on_session(&ctx, &p.session_id, |_, session| async move {
            let (bytes, info) = airlock.read_file_at_most(&session, &p.path, limit).await?;
            let (content, content_b64) = match String::from_utf8(bytes) {
                Ok(text) => (Some(text), None),
                Err(e) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
                ),
            };
            Ok(FileRead {
                path: info.path,
                size: info.size,
                sha256: info.sha256,
                content,
                content_b64,
            })
        })
        .await
    }

    #[tool(
        name = "list_files",
        output_schema = schema_for_output::<FileList>(),
        description = "List a directory of a session's home dir: {\"entries\": [..]} with the name, size, kind (file, dir, symlink) and mode of each entry. \
Example: {\"session_id\": \"...\", \"dir\": \"data\"}"
    )]
    async fn list_files(
        &self,
        Parameters(p): Parameters<ListParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.on_session(&ctx, &p.session_id, |_, session| async move {
            let entries = session.list_files(p.dir.as_deref().unwrap_or(".")).await?;
            Ok(FileList { entries })
        })
        .await
    }

    #[tool(
        name = "install_packages",
        output_schema = schema_for_output::<CellSummary>(),
        description = "Install pinned packages into a session with the language's package manager (pip for python, npm for javascript), through a proxy that reaches only the package registry. \
Versions must be pinned. Returns the installer's exit_code, stdout and stderr. \
Example: {\"session_id\": \"...\", \"packages\": [\"requests==2.32.3\"]}"
    )]
    async fn install_packages(
        &self,
        Parameters(p): Parameters<PackagesParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.on_session(&ctx, &p.session_id, |_, session| async move {
            Ok(CellSummary::from(
                session.install_packages(&p.packages).await?,
            ))
        })
        .await
    }

    #[tool(
        name = "close_session",
        output_schema = schema_for_output::<Closed>(),
        description = "Close a session made by create_session: its VM and every file in it are destroyed. Call it when the work is done. \
Example: {\"session_id\": \"...\"}"
    )]
    async fn close_session(
        &self,
        Parameters(p): Parameters<SessionParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = self.caller(&ctx)?;
        let result = self
            .airlock()
            .close_session(&caller, &p.session_id)
            .await
            .map(|()| Closed {
                closed: p.session_id,
            });
        Ok(answer(result))
    }

    #[tool(
        name = "pause_session",
        output_schema = schema_for_output::<SessionInfo>(),
        description = "Pause a session to disk: its whole VM (variables, imports, running threads, files) is saved and the VM freed, so it costs no memory or CPU until resume_session brings it back under the same id, also after a server restart. \
Paused sessions are kept 7 days by default and count against a per-user storage quota; the answer says state \"paused\" and its size in bytes. \
Not possible for a session with a network or host folders. \
Example: {\"session_id\": \"...\"}"
    )]
    async fn pause_session(
        &self,
        Parameters(p): Parameters<SessionParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = self.caller(&ctx)?;
        Ok(answer(
            self.airlock().pause_session(&caller, &p.session_id).await,
        ))
    }

    #[tool(
        name = "resume_session",
        output_schema = schema_for_output::<SessionInfo>(),
        description = "Resume a session paused with pause_session: everything is as it was (variables, files, running threads), under the same id; its clock is set to now. \
Example: {\"session_id\": \"...\"}"
    )]
    async fn resume_session(
        &self,
        Parameters(p): Parameters<SessionParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = self.caller(&ctx)?;
        Ok(answer(
            self.airlock().resume_session(&caller, &p.session_id).await,
        ))
    }

    #[tool(
        name = "fork_session",
        output_schema = schema_for_output::<Forked>(),
        description = "Copy a live session into `count` new sessions (1..=8) to try several things from the same state: each new session has the variables, files and running threads of the original, its own id and disk, and fresh randomness. The original goes on unchanged. Each copy counts as a session against the quotas. \
Example: {\"session_id\": \"...\", \"count\": 3}"
    )]
    async fn fork_session(
        &self,
        Parameters(p): Parameters<ForkParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = self.caller(&ctx)?;
        let forked = self
            .airlock()
            .fork_session(&caller, &p.session_id, p.count)
            .await
            .map(|sessions| Forked { sessions });
        Ok(answer(forked))
    }
}
