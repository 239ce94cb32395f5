//! The MCP tools (rmcp): the same operations as the REST API, described
//! for a language model. Served over stdio by `airlock mcp` (the tenant is
//! the local user) and over streamable HTTP at `/mcp` (the tenant is the
//! bearer key's, checked by the same middleware as REST). Every tool
//! answers structured content with a declared output schema, and a run's
//! or a cell's results as image and text content ([`output`]).

pub mod endpoint;
pub mod output;

use crate::api::{RunBody, SandboxArgs};
use crate::error::ServerError;
use crate::json::Strict;
use crate::keys::Caller;
use crate::service::Airlock;
use airlock::Discard;
use output::{answer, RunSummary};
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use serde::Deserialize;

/// The MCP service mounted at `/mcp`: rmcp's, with each MCP session bound
/// to its tenant ([`endpoint`]).
pub type HttpService = endpoint::McpEndpoint;

/// Input of `run_code`: the REST run's options ([`SandboxArgs`],
/// flattened: `memory_mib`, `cpus`, `network`, `packages`), with a default
/// language.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RunCodeParams {
    /// `python`, `javascript` or `raw` (a bash script). Default: the
    /// image's language, else python.
    #[serde(default)]
    pub language: Option<String>,
    /// The program to run, whole. Print what you want to see.
    pub code: String,
    /// Seconds the code may run (default 30).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Memory, vCPUs, network and pinned packages, as for REST.
    #[serde(flatten)]
    pub sandbox: SandboxArgs,
    /// Names of your secrets the code may use (set by the operator or with
    /// `PUT /v1/secrets/{name}`): the code sees a placeholder in the
    /// variable of that name, and HTTPS requests to the secret's hosts
    /// carry the real value.
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// The tools.
#[derive(Debug, Clone)]
pub struct McpTools {
    airlock: Airlock,
    /// The caller over stdio; over HTTP the caller comes with each request.
    fixed_caller: Option<Caller>,
}

#[tool_router]
impl McpTools {
    /// Tools for `caller` (stdio), or for each HTTP request's caller.
    pub fn new(airlock: Airlock, fixed_caller: Option<Caller>) -> Self {
        Self {
            airlock,
            fixed_caller,
        }
    }

    /// The tools this server offers: runs, and sessions when built with
    /// them.
    fn tools() -> rmcp::handler::server::router::tool::ToolRouter<Self> {
        Self::tool_router() + Self::session_tool_router()
    }

    pub(crate) fn airlock(&self) -> &Airlock {
        &self.airlock
    }

    pub(crate) fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
        if let Some(caller) = &self.fixed_caller {
            return Ok(caller.clone());
        }
        ctx.extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| ErrorData::invalid_request("no authenticated caller", None))
    }

    #[tool(
        name = "run_code",
        output_schema = schema_for_output::<RunSummary>(),
        description = "Run a program once in a fresh, isolated Linux microVM and return its exit code, stdout, stderr and results as JSON. \
Results are the values the code showed (python: its last expression, display(...), matplotlib figures; javascript: its last expression): each is a MIME bundle, and also comes as content to show, an image (a chart) as an image item, any other value as text. \
Nothing persists: every call starts from a clean machine (use create_session to keep state between calls). \
Limits: no network access unless `network` is given ({} reaches the language's package registries, {\"allow_domains\": [..]} those names on ports 80 and 443); 512 MiB of memory (memory_mib) and 1 vCPU (cpus); 30 s by default (timeout_s, up to the server's limit); output is cut at a few MiB. \
Third-party packages: list pinned versions in `packages` (installed once, then cached). \
Secrets: `secrets` names stored secrets (e.g. [\"OPENAI_API_KEY\"]); the code reads a placeholder from the variable of that name and uses it as the real key: HTTPS requests to the secret's hosts carry the value, which the code never sees. \
Languages: python (Python 3 with its standard library), javascript (Node.js), raw (a bash script with common Unix tools). \
Data analysis: \"image\": \"python-data\" runs python with numpy, pandas, matplotlib, scipy, scikit-learn, seaborn, sympy and statsmodels installed; a chart drawn with matplotlib comes back as an image. \
Example: {\"language\": \"python\", \"code\": \"import sys; print(sys.version)\"}"
    )]
    async fn run_code(
        &self,
        Parameters(Strict(params)): Parameters<Strict<RunCodeParams>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = self.caller(&ctx)?;
        let body = RunBody {
            language: params.language,
            code: params.code,
            timeout_s: params.timeout_s,
            sandbox: params.sandbox,
            secrets: params.secrets,
            ..RunBody::default()
        };
        let result = self
            .airlock
            .run(&caller, &body, &mut Discard)
            .await
            .map(RunSummary::from);
        Ok(answer(result))
    }
}

#[tool_handler(router = Self::tools())]
impl ServerHandler for McpTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "Airlock runs untrusted code in throw-away microVMs. Use run_code for one-off programs, create_session and exec_in_session to keep state. \
What the code shows (a cell's last value, display(), a matplotlib chart) comes back in `results`, and as content: charts as images, other values as text.",
        )
    }
}

/// The streamable-HTTP MCP service for `/mcp`, ended when the server
/// drains.
pub fn http_service(airlock: &Airlock) -> HttpService {
    endpoint::McpEndpoint::new(airlock)
}

/// Serves the tools over stdio for the local user until stdin ends.
///
/// # Errors
/// [`ServerError::Internal`] when the MCP session cannot start or fails.
pub async fn serve_stdio(airlock: Airlock) -> Result<(), ServerError> {
    use rmcp::ServiceExt;
    let caller = airlock.local_caller().clone();
    let service = McpTools::new(airlock, Some(caller))
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| ServerError::internal("start MCP over stdio", e))?;
    service
        .waiting()
        .await
        .map_err(|e| ServerError::internal("serve MCP over stdio", e))?;
    Ok(())
}
