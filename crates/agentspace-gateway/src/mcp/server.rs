//! The MCP endpoint a task's agent reaches (streamable HTTP) and the per-call pipeline.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use agentspace_audit::AuditLog;
use agentspace_core::{AuditDecision, AuditEvent, AuditKind, ToolServer, Tools};
use agentspace_identity::{CallTarget, Identity};
use agentspace_policy::{
    Action, Decision, DenyReason, Request as PolicyRequest, RequestContext, Resource,
};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::content;
use super::jsonrpc::{self, Message};
use super::relay::{self, Relayed};
use super::schema::Validator;
use super::upstream::{HttpLink, Messages, StdioSandbox, Upstream};
use crate::config::GatewayConfig;
use crate::door::Task;
use crate::error::GatewayError;
use crate::upstream::Upstream as HttpClient;
use agentspace_secrets::SecretStore;

/// The port of the MCP door inside a cell: the agent reaches its tools at
/// `http://127.0.0.1:3130/mcp`.
pub const MCP_DOOR_PORT: u16 = 3130;
/// The path of the MCP endpoint.
pub const MCP_PATH: &str = "/mcp";

/// Most bytes of one message from the agent.
const MAX_BODY: usize = 4 << 20;
/// Most MCP sessions open at once on one task's door.
const MAX_SESSIONS: usize = 64;
/// Most pages of `tools/list` read from one server.
const MAX_PAGES: usize = 32;
/// Revisions of the `initialize` handshake the endpoint speaks, newest first.
const PROTOCOLS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// The response header that carries the session id.
const SESSION_HEADER: &str = "mcp-session-id";
/// How long a stdio tool server has to exit once its input is closed at the task's end.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// How long the event of a plain result may wait for the next commit of its task.
const DEFER_RESULTS: std::time::Duration = std::time::Duration::from_millis(20);
/// Events queued on one SSE stream before the sender waits.
const STREAM_QUEUE: usize = 64;

/// A response body: a whole JSON message, or an SSE stream.
pub(super) type Body = BoxBody<Bytes, Infallible>;

/// The MCP gateway: serves one MCP endpoint per task, each on a listener that belongs
/// to that task. One per process; share it as `Arc`.
pub struct McpGateway {
    pub(super) audit: AuditLog,
    identity: Arc<Identity>,
    sandbox: Option<Arc<dyn StdioSandbox>>,
    /// The client HTTP tool servers are reached with (as HTTP egress upstreams are).
    client: Arc<HttpClient>,
    /// Where brokered credentials of HTTP tool servers are read.
    secrets: Option<SecretStore>,
}

impl std::fmt::Debug for McpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpGateway").finish_non_exhaustive()
    }
}

/// A tool the agent may see: where it lives and its compiled schemas.
struct Entry {
    server: String,
    /// The tool's own name at its server.
    tool: String,
    input: Result<Arc<Validator>, String>,
    output: Option<Result<Arc<Validator>, String>>,
}

/// What the agent sees: the allowed tools as their servers describe them.
#[derive(Default)]
struct Catalog {
    tools: Vec<Value>,
    entries: HashMap<String, Entry>,
    /// Servers that could not be listed, with why (audited with the listing).
    unavailable: BTreeMap<String, String>,
}

/// The MCP side of one task: its tool servers (started on demand, stopped when this is
/// dropped), the catalog and the sessions.
pub(super) struct TaskTools {
    pub(super) task: Arc<Task>,
    pub(super) tools: Tools,
    upstreams: tokio::sync::Mutex<HashMap<String, Arc<Upstream>>>,
    catalog: tokio::sync::Mutex<Option<Arc<Catalog>>>,
    /// Open sessions, oldest first; past [`MAX_SESSIONS`] the oldest is forgotten (its
    /// client gets 404 and initializes again, as the transport prescribes).
    pub(super) sessions: Mutex<VecDeque<Session>>,
    /// Calls in flight that answer on an SSE stream, oldest first: a tool server's
    /// requests and notifications during a call to it go on the newest one's stream.
    pub(super) in_flight: Mutex<Vec<InFlight>>,
    /// Requests relayed to the agent's client, waiting for its answer, by the id the
    /// client was given.
    pub(super) relayed: Mutex<HashMap<String, Relayed>>,
    /// Where tool servers' requests and notifications go.
    messages: Messages,
    /// Numbers calls in flight and relayed requests.
    next: AtomicU64,
    /// Result events of plain results, written with the next commit.
    deferred: Arc<Mutex<Vec<AuditEvent>>>,
    /// Whether a write of `deferred` is scheduled.
    flush_due: Arc<AtomicBool>,
    /// Held while a scheduled write of `deferred` runs.
    flushing: Arc<tokio::sync::Mutex<()>>,
}

impl TaskTools {
    /// Forgets the tool catalog: the next listing or call asks the servers again.
    pub(super) async fn forget_catalog(&self) {
        *self.catalog.lock().await = None;
    }

    /// A number not given out before in this task.
    pub(super) fn next_key(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// One MCP session of the agent.
pub(super) struct Session {
    pub(super) id: String,
    /// The client's capabilities, as its `initialize` said.
    pub(super) capabilities: Value,
    /// The stream the client opened with `GET`, if any: where messages unrelated to a
    /// call in flight go.
    pub(super) stream: Option<mpsc::Sender<Bytes>>,
}

/// A call in flight whose response is an SSE stream.
pub(super) struct InFlight {
    key: u64,
    pub(super) server: String,
    pub(super) session: String,
    pub(super) events: mpsc::Sender<Bytes>,
}

/// Who asked for a governed request: the session, and the SSE stream its answer goes
/// on when it is one.
#[derive(Clone)]
struct Caller {
    session: String,
    events: Option<mpsc::Sender<Bytes>>,
}

/// Keeps a call registered in [`TaskTools::in_flight`] while it runs.
struct InFlightGuard<'a> {
    state: &'a TaskTools,
    key: u64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.state.in_flight.lock() {
            calls.retain(|c| c.key != self.key);
        }
    }
}

/// A name the agent may not use, as [`McpGateway::unknown`] audits and answers it.
struct Unknown<'a> {
    action: &'static str,
    resource: String,
    arguments: &'a Value,
    /// The audit log's reason.
    reason: String,
    /// What the agent is told: what an SDK server says of a name it does not have.
    message: String,
    data: Option<Value>,
    /// Servers that could not be listed, with why.
    unavailable: &'a BTreeMap<String, String>,
}

/// A listing other than `tools/list`.
#[derive(Clone, Copy, Debug)]
enum Listing {
    Resources,
    Templates,
    Prompts,
}

/// What a governed request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tool,
    Resource,
    Prompt,
}

impl Kind {
    /// The policy action.
    fn action(self) -> Action {
        match self {
            Self::Tool => Action::Mcp,
            Self::Resource => Action::McpResource,
            Self::Prompt => Action::McpPrompt,
        }
    }

    /// The method forwarded to the server.
    fn method(self) -> &'static str {
        match self {
            Self::Tool => "tools/call",
            Self::Resource => "resources/read",
            Self::Prompt => "prompts/get",
        }
    }

    /// The audit actions of the decision and of the result.
    fn audit_actions(self) -> (&'static str, &'static str) {
        match self {
            Self::Tool => ("tools/call", "tools/result"),
            Self::Resource => ("resources/read", "resources/result"),
            Self::Prompt => ("prompts/get", "prompts/result"),
        }
    }
}

/// One request to a tool server, as [`McpGateway::govern`] decides, forwards and
/// audits it.
struct Governed {
    kind: Kind,
    /// The server's name.
    server: String,
    /// The policy resource.
    resource: Resource,
    /// The audit event's resource: `mcp://server/tool`, `mcp://server/resources/URI`,
    /// `mcp://server/prompts/NAME`.
    audit_resource: String,
    /// Tool or prompt arguments: content-checked and in the Cedar context.
    arguments: Option<Value>,
    /// What the audit event's `request` (and an approver) shows of it.
    request: Map<String, Value>,
    /// The parameters forwarded to the server.
    forward: Map<String, Value>,
    /// The tool's input schema (tools only).
    input: Option<Result<Arc<Validator>, String>>,
    /// The tool's output schema, when it declares one.
    output: Option<Result<Arc<Validator>, String>>,
}

/// What a refused call tells the agent.
struct Refusal {
    code: i64,
    message: String,
    data: Option<Value>,
}

impl McpGateway {
    /// A gateway writing every decision to `audit` and minting per-call identity tokens
    /// with `identity`; stdio tool servers run as plain child processes, HTTP ones are
    /// verified against the host's roots, and none may have a brokered credential (there
    /// is no secret store). For tests and embedding; `agentspace run` uses
    /// [`McpGateway::configured`].
    pub fn new(audit: AuditLog, identity: Arc<Identity>) -> Result<Arc<Self>, GatewayError> {
        let config = GatewayConfig::new(std::path::PathBuf::new());
        Ok(Arc::new(Self {
            audit,
            identity,
            sandbox: None,
            client: Arc::new(HttpClient::new(&config)?),
            secrets: None,
        }))
    }

    /// A gateway that reaches HTTP tool servers as the HTTP gateway reaches upstreams
    /// under `config` (its roots and upstream CAs, resolve overrides), reads their
    /// brokered credentials from the secret store of `config.state_dir`, and starts
    /// every stdio tool server through `sandbox` when given.
    pub fn configured(
        audit: AuditLog,
        identity: Arc<Identity>,
        config: &GatewayConfig,
        sandbox: Option<Arc<dyn StdioSandbox>>,
    ) -> Result<Arc<Self>, GatewayError> {
        Ok(Arc::new(Self {
            audit,
            identity,
            sandbox,
            client: Arc::new(HttpClient::new(config)?),
            secrets: Some(SecretStore::open(&config.state_dir)),
        }))
    }

    /// Serves the MCP endpoint of `task` on `listener` until the task is closed
    /// ([`Task::close`]); then its tool servers are stopped and its connections closed,
    /// and it returns once every audit event of the task is durable (await it before
    /// the runtime stops).
    /// Everything accepted on `listener` acts as the task, whatever the client sends.
    /// The tools are those of the task's definition (`spec.tools`).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, task: Arc<Task>) {
        let tools = task.policy.tools().clone();
        let (messages, mut incoming) = mpsc::unbounded_channel();
        let state = Arc::new(TaskTools {
            task: Arc::clone(&task),
            tools,
            upstreams: tokio::sync::Mutex::default(),
            catalog: tokio::sync::Mutex::default(),
            sessions: Mutex::default(),
            in_flight: Mutex::default(),
            relayed: Mutex::default(),
            messages,
            next: AtomicU64::new(1),
            deferred: Arc::default(),
            flush_due: Arc::default(),
            flushing: Arc::default(),
        });
        // The tool servers' requests and notifications, each handled on its own (a
        // relayed request waits for the client). Weak: the servers hold the sender, so
        // this must not keep them alive.
        let relay = {
            let me = Arc::clone(&self);
            let weak = Arc::downgrade(&state);
            tokio::spawn(async move {
                while let Some(message) = incoming.recv().await {
                    let Some(state) = weak.upgrade() else { break };
                    tokio::spawn(Arc::clone(&me).on_server_message(state, message));
                }
            })
        };
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = task.wait_closed() => break,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let me = Arc::clone(&self);
            let state = Arc::clone(&state);
            let task = Arc::clone(&task);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let me = Arc::clone(&me);
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(me.handle(state, req).await) }
                });
                let conn = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    () = task.wait_closed() => {}
                }
            });
        }
        relay.abort();
        // Result events still waiting for a commit are written now (after a scheduled
        // write that is running), before `serve` returns.
        {
            let _flushing = state.flushing.lock().await;
            let events: Vec<AuditEvent> = state
                .deferred
                .lock()
                .map(|mut d| std::mem::take(&mut *d))
                .unwrap_or_default();
            for e in events {
                let _ = self.append(e).await;
            }
        }
        // The task's stdio tool servers are asked to end (their input closed) and given
        // a moment to, so that a server's cell records its exit; then killed.
        let servers: Vec<Arc<Upstream>> = state
            .upstreams
            .lock()
            .await
            .drain()
            .map(|(_, up)| up)
            .collect();
        let stops: Vec<_> = servers
            .into_iter()
            .map(|up| tokio::spawn(async move { up.stop(STOP_GRACE).await }))
            .collect();
        for stop in stops {
            let _ = stop.await;
        }
        // Dropping the last reference to `state` stops what is left; open
        // connections hold one until they see the task closed, which they do at once.
        drop(state);
    }

    async fn handle(
        self: Arc<Self>,
        state: Arc<TaskTools>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        if req.uri().path() != MCP_PATH {
            return plain(StatusCode::NOT_FOUND, "the MCP endpoint is /mcp");
        }
        let session = req
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let accepts_sse = req
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/event-stream"));
        match *req.method() {
            Method::POST => {}
            Method::GET => return open_stream(&state, session.as_deref(), accepts_sse),
            Method::DELETE => {
                let removed = session.is_some_and(|s| {
                    state.sessions.lock().is_ok_and(|mut open| {
                        let before = open.len();
                        open.retain(|o| o.id != s);
                        open.len() < before
                    })
                });
                return if removed {
                    plain(StatusCode::OK, "")
                } else {
                    plain(StatusCode::NOT_FOUND, "no such session")
                };
            }
            _ => {
                let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "use POST, GET or DELETE");
                resp.headers_mut().insert(
                    header::ALLOW,
                    http::HeaderValue::from_static("POST, GET, DELETE"),
                );
                return resp;
            }
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return rpc_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &jsonrpc::error(
                        &Value::Null,
                        jsonrpc::INVALID_REQUEST,
                        "the message is larger than 4 MiB or could not be read",
                        None,
                    ),
                    None,
                );
            }
        };
        let value: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return rpc_response(
                    StatusCode::BAD_REQUEST,
                    &jsonrpc::error(
                        &Value::Null,
                        jsonrpc::PARSE_ERROR,
                        &format!("the body is not JSON: {e}"),
                        None,
                    ),
                    None,
                );
            }
        };
        let (id, method, params) = match jsonrpc::parse(value) {
            Ok(Message::Request { id, method, params }) => (id, method, params),
            Ok(Message::Response { id, body }) => {
                // The client's answer to a request relayed from a tool server.
                return if relay::answer(&state, session.as_deref(), &id, body) {
                    plain(StatusCode::ACCEPTED, "")
                } else {
                    rpc_response(
                        StatusCode::BAD_REQUEST,
                        &jsonrpc::error(
                            &Value::Null,
                            jsonrpc::INVALID_REQUEST,
                            "no request of this session waits for a response with this id",
                            None,
                        ),
                        None,
                    )
                };
            }
            Ok(Message::Notification { .. }) => {
                return plain(StatusCode::ACCEPTED, "");
            }
            Err((code, message)) => {
                return rpc_response(
                    StatusCode::BAD_REQUEST,
                    &jsonrpc::error(&Value::Null, code, &message, None),
                    None,
                );
            }
        };
        if method == "initialize" {
            return self.initialize(&state, &id, params.as_ref());
        }
        let known = session.as_ref().is_some_and(|s| {
            state
                .sessions
                .lock()
                .is_ok_and(|open| open.iter().any(|o| o.id == *s))
        });
        let session = match session {
            Some(s) if known => s,
            _ if method == "server/discover" => String::new(),
            None => {
                return rpc_response(
                    StatusCode::BAD_REQUEST,
                    &jsonrpc::error(
                        &id,
                        jsonrpc::INVALID_REQUEST,
                        "send the Mcp-Session-Id header of your session (from `initialize`)",
                        None,
                    ),
                    None,
                );
            }
            Some(_) => {
                return rpc_response(
                    StatusCode::NOT_FOUND,
                    &jsonrpc::error(
                        &id,
                        jsonrpc::INVALID_REQUEST,
                        "the session is unknown or was ended; initialize a new one",
                        None,
                    ),
                    None,
                );
            }
        };
        let params = params.unwrap_or_default();
        // A call that may meet a tool server's request or notification answers on an
        // SSE stream, where those go first; everything else is one JSON response.
        let governed = matches!(
            method.as_str(),
            "tools/call" | "resources/read" | "prompts/get"
        );
        if governed && accepts_sse && state.tools.servers.iter().any(|s| !s.relay.is_empty()) {
            let (events, rx) = mpsc::channel(STREAM_QUEUE);
            let caller = Caller {
                session,
                events: Some(events.clone()),
            };
            tokio::spawn(async move {
                let answer = self.dispatch(&state, &id, &method, params, &caller).await;
                let _ = events.send(sse_event(&answer)).await;
            });
            return sse_response(rx);
        }
        let caller = Caller {
            session,
            events: None,
        };
        let answer = self.dispatch(&state, &id, &method, params, &caller).await;
        rpc_response(StatusCode::OK, &answer, None)
    }

    /// Answers one request of a known session.
    async fn dispatch(
        &self,
        state: &TaskTools,
        id: &Value,
        method: &str,
        params: Map<String, Value>,
        caller: &Caller,
    ) -> Value {
        match method {
            "ping" => jsonrpc::result(id, json!({})),
            "tools/list" => self.list_tools(state, id).await,
            "tools/call" => self.call_tool(state, id, params, caller).await,
            "resources/list" => self.list(state, id, Listing::Resources).await,
            "resources/templates/list" => self.list(state, id, Listing::Templates).await,
            "resources/read" => self.read_resource(state, id, params, caller).await,
            "prompts/list" => self.list(state, id, Listing::Prompts).await,
            "prompts/get" => self.get_prompt(state, id, params, caller).await,
            "resources/subscribe" | "resources/unsubscribe" => {
                self.not_served(state, id, method, &params).await
            }
            other => jsonrpc::error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                &format!(
                    "method `{other}` is not served through the Agent Space boundary (tools, resources and prompts only)"
                ),
                None,
            ),
        }
    }

    fn initialize(
        &self,
        state: &TaskTools,
        id: &Value,
        params: Option<&Map<String, Value>>,
    ) -> Response<Body> {
        let asked = params
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let version = PROTOCOLS
            .iter()
            .find(|v| **v == asked)
            .or(PROTOCOLS.first())
            .copied()
            .unwrap_or("2025-11-25");
        let Ok(session) = new_session_id() else {
            return rpc_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &jsonrpc::error(
                    id,
                    jsonrpc::INTERNAL_ERROR,
                    "no randomness for a session id",
                    None,
                ),
                None,
            );
        };
        match state.sessions.lock() {
            Ok(mut open) => {
                while open.len() >= MAX_SESSIONS {
                    open.pop_front();
                }
                open.push_back(Session {
                    id: session.clone(),
                    capabilities: params
                        .and_then(|p| p.get("capabilities"))
                        .cloned()
                        .unwrap_or_else(|| json!({})),
                    stream: None,
                });
            }
            Err(_) => {
                return rpc_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &jsonrpc::error(
                        id,
                        jsonrpc::INTERNAL_ERROR,
                        "the session table is unavailable",
                        None,
                    ),
                    None,
                );
            }
        }
        // Resources and prompts only when the definition allows some; never
        // subscriptions (docs/tools.md says why).
        let mut capabilities = Map::new();
        capabilities.insert("tools".into(), json!({"listChanged": false}));
        if state.tools.servers.iter().any(|s| !s.resources.is_empty()) {
            capabilities.insert(
                "resources".into(),
                json!({"subscribe": false, "listChanged": false}),
            );
        }
        if state.tools.servers.iter().any(|s| !s.prompts.is_empty()) {
            capabilities.insert("prompts".into(), json!({"listChanged": false}));
        }
        let result = json!({
            "protocolVersion": version,
            "capabilities": capabilities,
            "serverInfo": {"name": "agentspace", "version": env!("CARGO_PKG_VERSION")},
            "instructions": "Tools, resources and prompts of this task, governed by Agent Space: every call is decided, audited and may be denied.",
        });
        rpc_response(StatusCode::OK, &jsonrpc::result(id, result), Some(&session))
    }

    /// The catalog of the task, listing the servers with allowed tools on first use.
    async fn catalog(&self, state: &TaskTools) -> Arc<Catalog> {
        let mut slot = state.catalog.lock().await;
        // A server that could not be listed is tried again on the next call.
        if let Some(c) = slot.as_ref()
            && c.unavailable.is_empty()
        {
            return Arc::clone(c);
        }
        let mut catalog = Catalog::default();
        for server in state.tools.servers.iter().filter(|s| !s.allow.is_empty()) {
            let name = server.name.as_str();
            let listed = match self.upstream(state, server).await {
                Ok(up) => list_all(&up).await,
                Err(e) => Err(e),
            };
            let tools = match listed {
                Ok(t) => t,
                Err(e) => {
                    catalog.unavailable.insert(name.to_owned(), e);
                    continue;
                }
            };
            for tool in tools {
                let Some(tool_name) = tool.get("name").and_then(Value::as_str) else {
                    continue;
                };
                if !server.allow.iter().any(|a| a == tool_name)
                    || catalog.entries.contains_key(tool_name)
                {
                    continue;
                }
                let input = tool
                    .get("inputSchema")
                    .ok_or_else(|| "the tool has no inputSchema".to_owned())
                    .and_then(Validator::compile)
                    .map(Arc::new);
                let output = tool
                    .get("outputSchema")
                    .map(|s| Validator::compile(s).map(Arc::new));
                catalog.entries.insert(
                    tool_name.to_owned(),
                    Entry {
                        server: name.to_owned(),
                        tool: tool_name.to_owned(),
                        input,
                        output,
                    },
                );
                catalog.tools.push(tool);
            }
        }
        let catalog = Arc::new(catalog);
        *slot = Some(Arc::clone(&catalog));
        catalog
    }

    /// The running session with `server`, started on first use.
    async fn upstream(
        &self,
        state: &TaskTools,
        server: &ToolServer,
    ) -> Result<Arc<Upstream>, String> {
        let mut ups = state.upstreams.lock().await;
        if let Some(u) = ups.get(server.name.as_str())
            && u.is_alive()
        {
            return Ok(Arc::clone(u));
        }
        if state.task.is_closed() {
            return Err("the task has ended".to_owned());
        }
        let up = Upstream::start(
            server,
            self.sandbox.as_deref(),
            state.messages.clone(),
            relay::client_capabilities(server),
            Arc::new(HttpLink {
                client: Arc::clone(&self.client),
                secrets: self.secrets.clone(),
                tenant: state.task.principal.tenant().clone(),
                credential: server
                    .credential
                    .as_ref()
                    .map(crate::broker::Credential::from),
            }),
        )
        .await
        .map(Arc::new)
        .map_err(|e| e.to_string())?;
        ups.insert(server.name.to_string(), Arc::clone(&up));
        Ok(up)
    }

    async fn list_tools(&self, state: &TaskTools, id: &Value) -> Value {
        let catalog = self.catalog(state).await;
        let mut event = base_event(&state.task, "tools/list", "mcp://*".to_owned());
        event.decision = Some(AuditDecision::Allow);
        let names: Vec<&str> = catalog.entries.keys().map(String::as_str).collect();
        event.details.insert("tools".into(), json!(names));
        if !catalog.unavailable.is_empty() {
            event
                .details
                .insert("unavailable".into(), json!(catalog.unavailable));
        }
        if let Err(e) = self.append(event).await {
            return jsonrpc::error(id, jsonrpc::INTERNAL_ERROR, &audit_failed(&e), None);
        }
        jsonrpc::result(id, json!({"tools": catalog.tools}))
    }

    /// `resources/list`, `resources/templates/list` or `prompts/list`: every server's
    /// listing, fresh each time (resources come and go), with only what the definition
    /// allows and that server would serve (the first server in the definition whose
    /// pattern or list covers an item serves it).
    async fn list(&self, state: &TaskTools, id: &Value, listing: Listing) -> Value {
        let (method, key, audit_key) = match listing {
            Listing::Resources => ("resources/list", "resources", "resources"),
            Listing::Templates => ("resources/templates/list", "resourceTemplates", "templates"),
            Listing::Prompts => ("prompts/list", "prompts", "prompts"),
        };
        let servers = &state.tools.servers;
        let mut items = Vec::new();
        let mut names = Vec::new();
        let mut unavailable = BTreeMap::new();
        for (i, server) in servers.iter().enumerate() {
            let wanted = match listing {
                Listing::Resources | Listing::Templates => !server.resources.is_empty(),
                Listing::Prompts => !server.prompts.is_empty(),
            };
            if !wanted {
                continue;
            }
            let earlier = servers.get(..i).unwrap_or_default();
            let listed = match self.upstream(state, server).await {
                Ok(up) => list_pages(&up, method, key).await,
                Err(e) => Err(e),
            };
            let listed = match listed {
                Ok(l) => l,
                Err(e) => {
                    unavailable.insert(server.name.to_string(), e);
                    continue;
                }
            };
            for item in listed {
                let field = match listing {
                    Listing::Resources => "uri",
                    Listing::Templates => "uriTemplate",
                    Listing::Prompts => "name",
                };
                let Some(name) = item.get(field).and_then(Value::as_str) else {
                    continue;
                };
                let serves = |s: &ToolServer| match listing {
                    Listing::Resources => s.allows_resource(name),
                    Listing::Templates => s.allows_template(name),
                    Listing::Prompts => s.allows_prompt(name),
                };
                if serves(server) && !earlier.iter().any(serves) {
                    names.push(name.to_owned());
                    items.push(item);
                }
            }
        }
        let mut event = base_event(&state.task, method, "mcp://*".to_owned());
        event.decision = Some(AuditDecision::Allow);
        event.details.insert(audit_key.into(), json!(names));
        if !unavailable.is_empty() {
            event
                .details
                .insert("unavailable".into(), json!(unavailable));
        }
        if let Err(e) = self.append(event).await {
            return jsonrpc::error(id, jsonrpc::INTERNAL_ERROR, &audit_failed(&e), None);
        }
        jsonrpc::result(id, json!({ key: items }))
    }

    /// Resource subscriptions are not served (docs/tools.md says why): audited as a
    /// denial and answered "method not found", as a server without them answers.
    async fn not_served(
        &self,
        state: &TaskTools,
        id: &Value,
        method: &str,
        params: &Map<String, Value>,
    ) -> Value {
        let uri = params.get("uri").and_then(Value::as_str).unwrap_or("?");
        let mut event = base_event(&state.task, method, format!("mcp://?/resources/{uri}"));
        event.decision = Some(AuditDecision::Deny);
        event.reason = Some(format!(
            "`{method}` is not served through the Agent Space boundary: read resources with `resources/read`, each read decided on its own"
        ));
        event
            .details
            .insert("code".into(), json!(DenyReason::NotPermitted.code()));
        if let Err(e) = self.append(event).await {
            return jsonrpc::error(id, jsonrpc::INTERNAL_ERROR, &audit_failed(&e), None);
        }
        jsonrpc::error(
            id,
            jsonrpc::METHOD_NOT_FOUND,
            &format!("method `{method}` is not served through the Agent Space boundary"),
            None,
        )
    }

    /// One `tools/call`: the tool must be in the catalog (allowed and offered by its
    /// server), then it is governed like every call ([`McpGateway::govern`]).
    async fn call_tool(
        &self,
        state: &TaskTools,
        id: &Value,
        params: Map<String, Value>,
        caller: &Caller,
    ) -> Value {
        let (name, arguments) = match name_and_arguments(&params) {
            Ok(v) => v,
            Err(message) => return jsonrpc::error(id, jsonrpc::INVALID_PARAMS, message, None),
        };
        let catalog = self.catalog(state).await;
        let Some(entry) = catalog.entries.get(&name) else {
            // Not allowed, or not there at all: the agent cannot tell the two apart.
            return self
                .unknown(
                    state,
                    id,
                    Unknown {
                        action: "tools/call",
                        resource: format!("mcp://?/{name}"),
                        arguments: &arguments,
                        reason: format!(
                        "`{name}` is not a tool this agent may use (its definition's `spec.tools[].allow` does not list it)"
                    ),
                        message: format!("Unknown tool: {name}"),
                        data: None,
                        unavailable: &catalog.unavailable,
                    },
                )
                .await;
        };
        let mut forward = params.clone();
        forward.insert("arguments".into(), arguments.clone());
        let mut request = Map::new();
        request.insert("server".into(), json!(entry.server));
        request.insert("tool".into(), json!(entry.tool));
        self.govern(
            state,
            id,
            caller,
            Governed {
                kind: Kind::Tool,
                server: entry.server.clone(),
                resource: Resource {
                    server: Some(entry.server.clone()),
                    tool: Some(entry.tool.clone()),
                    ..Resource::default()
                },
                audit_resource: format!("mcp://{}/{}", entry.server, entry.tool),
                arguments: Some(arguments),
                request,
                forward,
                input: Some(entry.input.clone()),
                output: entry.output.clone(),
            },
        )
        .await
    }

    /// One `resources/read`: the URI must match a `resources` pattern of a server
    /// (the first in the definition whose pattern matches serves it).
    async fn read_resource(
        &self,
        state: &TaskTools,
        id: &Value,
        params: Map<String, Value>,
        caller: &Caller,
    ) -> Value {
        let Some(uri) = params.get("uri").and_then(Value::as_str).map(str::to_owned) else {
            return jsonrpc::error(id, jsonrpc::INVALID_PARAMS, "`uri` must be a string", None);
        };
        let Some(server) = state.tools.servers.iter().find(|s| s.allows_resource(&uri)) else {
            return self
                .unknown(
                    state,
                    id,
                    Unknown {
                        action: "resources/read",
                        resource: format!("mcp://?/resources/{uri}"),
                        arguments: &json!({"uri": uri}),
                        reason: format!(
                        "`{uri}` is not a resource this agent may read (no `spec.tools[].resources` pattern matches it)"
                    ),
                        message: format!("Unknown resource: {uri}"),
                        data: Some(json!({"uri": uri})),
                        unavailable: &BTreeMap::new(),
                    },
                )
                .await;
        };
        let mut request = Map::new();
        request.insert("server".into(), json!(server.name));
        request.insert("uri".into(), json!(uri));
        self.govern(
            state,
            id,
            caller,
            Governed {
                kind: Kind::Resource,
                server: server.name.to_string(),
                resource: Resource {
                    server: Some(server.name.to_string()),
                    uri: Some(uri.clone()),
                    ..Resource::default()
                },
                audit_resource: format!("mcp://{}/resources/{uri}", server.name),
                arguments: None,
                request,
                forward: params,
                input: None,
                output: None,
            },
        )
        .await
    }

    /// One `prompts/get`: the name must be in a server's `prompts` (the first in the
    /// definition that lists it serves it).
    async fn get_prompt(
        &self,
        state: &TaskTools,
        id: &Value,
        params: Map<String, Value>,
        caller: &Caller,
    ) -> Value {
        let (name, arguments) = match name_and_arguments(&params) {
            Ok(v) => v,
            Err(message) => return jsonrpc::error(id, jsonrpc::INVALID_PARAMS, message, None),
        };
        let Some(server) = state.tools.servers.iter().find(|s| s.allows_prompt(&name)) else {
            return self
                .unknown(
                    state,
                    id,
                    Unknown {
                        action: "prompts/get",
                        resource: format!("mcp://?/prompts/{name}"),
                        arguments: &arguments,
                        reason: format!(
                        "`{name}` is not a prompt this agent may get (its definition's `spec.tools[].prompts` does not list it)"
                    ),
                        message: format!("Unknown prompt: {name}"),
                        data: None,
                        unavailable: &BTreeMap::new(),
                    },
                )
                .await;
        };
        let mut request = Map::new();
        request.insert("server".into(), json!(server.name));
        request.insert("prompt".into(), json!(name));
        self.govern(
            state,
            id,
            caller,
            Governed {
                kind: Kind::Prompt,
                server: server.name.to_string(),
                resource: Resource {
                    server: Some(server.name.to_string()),
                    prompt: Some(name.clone()),
                    ..Resource::default()
                },
                audit_resource: format!("mcp://{}/prompts/{name}", server.name),
                arguments: Some(arguments),
                request,
                forward: params,
                input: None,
                output: None,
            },
        )
        .await
    }

    /// The answer to a name the agent may not use: audited as a denial
    /// (`not-permitted`) and answered as the MCP SDKs answer a name that does not exist,
    /// so the agent cannot probe what exists.
    async fn unknown(&self, state: &TaskTools, id: &Value, u: Unknown<'_>) -> Value {
        let mut event = base_event(&state.task, u.action, u.resource);
        event.decision = Some(AuditDecision::Deny);
        event.reason = Some(u.reason);
        event
            .details
            .insert("code".into(), json!(DenyReason::NotPermitted.code()));
        if !u.unavailable.is_empty() {
            event
                .details
                .insert("unavailable".into(), json!(u.unavailable));
        }
        event.args_digest = Some(sha256(&serde_json::to_vec(u.arguments).unwrap_or_default()));
        if let Err(e) = self.append(event).await {
            return jsonrpc::error(id, jsonrpc::INTERNAL_ERROR, &audit_failed(&e), None);
        }
        jsonrpc::error(id, jsonrpc::INVALID_PARAMS, &u.message, u.data)
    }

    /// One governed request to a tool server (a tool call, a resource read, a prompt
    /// get): content checks on what goes out → policy (approvals, loop breaker, flow
    /// rules, budgets) → the tool's input schema → a per-call identity token → audit
    /// (durable before anything is forwarded) → forward → the tool's output schema →
    /// injection checks on the result → taint → audit.
    async fn govern(&self, state: &TaskTools, id: &Value, caller: &Caller, g: Governed) -> Value {
        let started = Instant::now();
        let task = &state.task;
        let (call_action, result_action) = g.kind.audit_actions();
        // What goes out: the arguments, or the URI of a read.
        let outgoing = g
            .arguments
            .clone()
            .unwrap_or_else(|| json!({"uri": g.resource.uri}));
        let args_digest = sha256(&serde_json::to_vec(&outgoing).unwrap_or_default());
        let findings = content::scan_arguments(&outgoing);
        let request = PolicyRequest {
            principal: task.principal.clone(),
            action: g.kind.action(),
            resource: g.resource.clone(),
            context: RequestContext {
                arguments: g.arguments.clone(),
                labels: findings.labels(),
                ..RequestContext::default()
            },
        };
        // The per-call identity token is minted while the policy decides (both on
        // blocking threads): unused when the call is refused, it never leaves the gateway.
        let ((decision, request), early_token) = tokio::join!(
            crate::approval::decide(task, request),
            self.call_token(state, &g.server)
        );
        // A call that needs approval waits here for a person when the task has a desk.
        let (decision, approval) = crate::approval::hold_for_approval(
            task,
            decision,
            request,
            call_action,
            || g.audit_resource.clone(),
            || g.request.clone(),
        )
        .await;
        let session_labels = task
            .policy
            .session_labels(&task.principal)
            .unwrap_or_default();

        let mut event = base_event(task, call_action, g.audit_resource.clone());
        if let Some(id) = &approval {
            event.details.insert("approval".into(), json!(id));
        }
        event.args_digest = Some(args_digest);
        event.request.extend(g.request.clone());
        if let Some(arguments) = &g.arguments {
            let argument_names: Vec<&String> = arguments
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            event
                .request
                .insert("arguments".into(), json!(argument_names));
        }
        if !findings.kinds.is_empty() {
            event
                .details
                .insert("detected".into(), json!(findings.kinds));
        }
        if !session_labels.is_empty() {
            event.details.insert("labels".into(), json!(session_labels));
        }
        event.policies = decision.policies().to_vec();
        let mut refusal = match &decision {
            Decision::Allow { .. } => None,
            Decision::Deny {
                reason, message, ..
            } => Some((reason.code().to_owned(), message.clone(), false)),
            Decision::ApprovalRequired { message, .. } => {
                Some(("approval-required".to_owned(), message.clone(), true))
            }
        };
        if refusal.is_none()
            && let (Some(input), Some(arguments)) = (&g.input, &g.arguments)
        {
            let checked = match input {
                Ok(v) => v
                    .validate(arguments)
                    .map_err(|e| format!("the arguments do not match the tool's inputSchema: {e}")),
                Err(e) => Err(format!(
                    "the tool's inputSchema cannot be used, so it cannot be called: {e}"
                )),
            };
            if let Err(message) = checked {
                refusal = Some(("invalid-arguments".to_owned(), message, false));
            }
        }
        // The identity the upstream receives: the user and agent chain, for this call
        // (minted again after a wait for approval, which may outlast the token).
        let token = if refusal.is_none() {
            let minted = match (approval.is_some(), early_token) {
                (false, early) => early,
                (true, _) => self.call_token(state, &g.server).await,
            };
            match minted {
                Ok(t) => Some(t),
                Err(message) => {
                    refusal = Some(("identity".to_owned(), message, false));
                    None
                }
            }
        } else {
            None
        };
        record_decision(
            &mut event,
            refusal.as_ref().map(|(c, m, _)| (c.as_str(), m.as_str())),
        );
        event.latency_us = u64::try_from(started.elapsed().as_micros()).ok();
        // Audit before action: the decision is durable before anything is forwarded.
        // Result events of earlier calls waiting to be written go in the same commit.
        let audit_id = match self.append_after_deferred(state, event).await {
            Ok(a) => a,
            Err(e) => {
                return jsonrpc::error(
                    id,
                    jsonrpc::DENIED,
                    &audit_failed(&e),
                    Some(json!({"decision": "deny", "code": "audit"})),
                );
            }
        };
        if let Some((code, message, approval)) = refusal {
            let r = refusal_of(&code, message, approval, decision.policies(), &audit_id);
            return jsonrpc::error(id, r.code, &r.message, r.data);
        }

        // Forward.
        let Some(server_def) = state.tools.server(&g.server) else {
            return jsonrpc::error(
                id,
                jsonrpc::INTERNAL_ERROR,
                "the tool's server is gone",
                None,
            );
        };
        // While it runs, the server's requests and notifications go on this call's
        // stream (when it has one).
        let _in_flight = caller.events.as_ref().map(|events| {
            let key = state.next_key();
            if let Ok(mut calls) = state.in_flight.lock() {
                calls.push(InFlight {
                    key,
                    server: g.server.clone(),
                    session: caller.session.clone(),
                    events: events.clone(),
                });
            }
            InFlightGuard { state, key }
        });
        let answer = match self.upstream(state, server_def).await {
            Ok(up) => up
                .request(g.kind.method(), Value::Object(g.forward), token.as_deref())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let mut result_event = base_event(task, result_action, g.audit_resource);
        result_event.details.insert("call".into(), json!(audit_id));
        let reply = match answer {
            Err(message) => {
                result_event.status = Some(jsonrpc::INTERNAL_ERROR);
                result_event.reason = Some(message.clone());
                jsonrpc::error(
                    id,
                    jsonrpc::INTERNAL_ERROR,
                    &message,
                    Some(json!({"audit_id": audit_id})),
                )
            }
            Ok(body) => {
                if let Some(error) = body.get("error") {
                    result_event.status = error.get("code").and_then(Value::as_i64);
                    json!({"jsonrpc": "2.0", "id": id, "error": error})
                } else {
                    let mut result = body.get("result").cloned().unwrap_or_else(|| json!({}));
                    result_event.status = Some(0);
                    let mut withheld = None;
                    // The result's structured content must match the declared schema.
                    if let (Some(out), Some(structured)) =
                        (&g.output, result.get("structuredContent"))
                    {
                        let checked = match out {
                            Ok(v) => v.validate(structured),
                            Err(e) => Err(e.clone()),
                        };
                        if let Err(e) = checked {
                            withheld = Some((
                                "invalid-result",
                                format!(
                                    "the tool's result does not match its outputSchema, so it is withheld: {e}"
                                ),
                            ));
                        }
                    }
                    let flags = content::scan_result(&result);
                    let blocked =
                        content::apply_injection(server_def.injection, &mut result, &flags);
                    if !flags.is_empty() {
                        result_event.details.insert("flags".into(), json!(flags));
                        result_event
                            .details
                            .insert("injection".into(), json!(server_def.injection));
                    }
                    if let Some(message) = blocked {
                        withheld = Some(("injection", message));
                    }
                    if !flags.is_empty()
                        && let Some(obj) = result.as_object_mut()
                    {
                        let meta = obj.entry("_meta").or_insert_with(|| json!({}));
                        if let Some(meta) = meta.as_object_mut() {
                            meta.insert("agentspace/flags".into(), json!(flags));
                        }
                    }
                    match withheld {
                        None => jsonrpc::result(id, result),
                        Some((code, message)) => {
                            result_event.decision = Some(AuditDecision::Deny);
                            result_event.reason = Some(message.clone());
                            result_event.details.insert("code".into(), json!(code));
                            if g.kind == Kind::Tool {
                                // A tool's failure is a result the model can read.
                                jsonrpc::result(
                                    id,
                                    json!({"content": [{"type": "text", "text": message}], "isError": true}),
                                )
                            } else {
                                jsonrpc::error(
                                    id,
                                    jsonrpc::DENIED,
                                    &message,
                                    Some(
                                        json!({"decision": "deny", "code": code, "reason": message, "audit_id": audit_id}),
                                    ),
                                )
                            }
                        }
                    }
                }
            }
        };
        // Whatever came back was read by the session: it carries the server's labels.
        // Labels only grow, so a session that has them all already needs no write.
        let mut labels = session_labels;
        let mut tainted = false;
        if !server_def.labels.is_subset(&labels) {
            match task
                .policy
                .taint(&task.principal, server_def.labels.iter().cloned())
            {
                Ok(new) => {
                    labels.extend(server_def.labels.iter().cloned());
                    if !new.is_empty() {
                        tainted = true;
                        result_event.details.insert("taint".into(), json!(new));
                    }
                }
                Err(e) => {
                    result_event.reason = Some(e.to_string());
                    let _ = self.append(result_event).await;
                    return jsonrpc::error(
                        id,
                        jsonrpc::DENIED,
                        &format!("the result is withheld: {e}"),
                        None,
                    );
                }
            }
        }
        if !labels.is_empty() {
            result_event.details.insert("labels".into(), json!(labels));
        }
        result_event.latency_us = u64::try_from(started.elapsed().as_micros()).ok();
        // A result that was withheld, looked like an injection or tainted the session is
        // on record before the agent has it (and is withheld if it cannot be). A plain
        // result's event is written with the next commit instead (the next decision's,
        // or within `DEFER_RESULTS`): its call's decision is durable already.
        let plain = result_event.decision.is_none()
            && !tainted
            && !result_event.details.contains_key("flags");
        if plain {
            self.defer(state, result_event);
        } else if let Err(e) = self.append(result_event).await {
            return jsonrpc::error(id, jsonrpc::DENIED, &audit_failed(&e), None);
        }
        reply
    }

    /// Mints the per-call token for a call to `server`.
    async fn call_token(&self, state: &TaskTools, server: &str) -> Result<String, String> {
        let url = match state.tools.server(server).map(|s| &s.transport) {
            Some(agentspace_core::ToolTransport::Http { url }) => url.clone(),
            _ => format!("http://{server}"),
        };
        let identity = Arc::clone(&self.identity);
        let principal = state.task.principal.clone();
        tokio::task::spawn_blocking(move || {
            let target = CallTarget::new("POST", &url).map_err(|e| e.to_string())?;
            identity
                .mint_call_token(&principal, &target)
                .map(|t| t.as_str().to_owned())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|e| {
            format!("the per-call identity token cannot be minted, so the call is refused: {e}")
        })
    }

    /// Appends `event` after the deferred result events of the task, in one batch (one
    /// transaction, one flush to disk); the id of `event` once it is durable.
    async fn append_after_deferred(
        &self,
        state: &TaskTools,
        event: AuditEvent,
    ) -> Result<String, String> {
        let mut batch: Vec<AuditEvent> = state
            .deferred
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        if batch.is_empty() {
            return self.append(event).await;
        }
        batch.push(event);
        // One job: the log's writer commits it whole (all or none); appended one by one,
        // the writer may wake for the first and flush twice.
        let audit = self.audit.clone();
        match tokio::task::spawn_blocking(move || audit.append_batch(batch)).await {
            Ok(Ok(receipts)) => receipts
                .last()
                .map(|r| format!("{}:{}", r.tenant, r.seq))
                .ok_or_else(|| "no receipt returned".to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Holds a plain result event for the next commit of the task (see
    /// [`McpGateway::append_after_deferred`]), or writes it within `DEFER_RESULTS`.
    fn defer(&self, state: &TaskTools, event: AuditEvent) {
        if let Ok(mut d) = state.deferred.lock() {
            d.push(event);
        }
        if state.flush_due.swap(true, Ordering::SeqCst) {
            return;
        }
        let audit = self.audit.clone();
        let deferred = Arc::clone(&state.deferred);
        let flush_due = Arc::clone(&state.flush_due);
        let flushing = Arc::clone(&state.flushing);
        tokio::spawn(async move {
            tokio::time::sleep(DEFER_RESULTS).await;
            // Held until the events are durable: the task's end waits for it.
            let _flushing = flushing.lock().await;
            flush_due.store(false, Ordering::SeqCst);
            let events: Vec<AuditEvent> = deferred
                .lock()
                .map(|mut d| std::mem::take(&mut *d))
                .unwrap_or_default();
            for e in events {
                let _ = audit.append_async(e).await;
            }
        });
    }

    /// Appends `event`; the id (`tenant:seq`) once it is durable.
    pub(super) async fn append(&self, event: AuditEvent) -> Result<String, String> {
        // Awaited, not on a blocking thread: the log's writer wakes this task once the
        // group commit holding the event is on disk.
        match self.audit.append_async(event).await {
            Ok(receipt) => Ok(format!("{}:{}", receipt.tenant, receipt.seq)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The `name` and `arguments` (an object; `{}` when absent) of a `tools/call` or
/// `prompts/get`.
fn name_and_arguments(params: &Map<String, Value>) -> Result<(String, Value), &'static str> {
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match params.get("arguments") {
        None | Some(Value::Null) => Ok((name, Value::Object(Map::new()))),
        Some(v @ Value::Object(_)) => Ok((name, v.clone())),
        Some(_) => Err("`arguments` must be an object"),
    }
}

/// Records on `event` the decision a request got: allowed, or refused with `code`
/// (`approval-required` for a request held for approval) and a message.
pub(super) fn record_decision(event: &mut AuditEvent, refusal: Option<(&str, &str)>) {
    match refusal {
        None => event.decision = Some(AuditDecision::Allow),
        Some((code, message)) => {
            event.decision = Some(if code == "approval-required" {
                AuditDecision::ApprovalRequired
            } else {
                AuditDecision::Deny
            });
            event.reason = Some(message.to_owned());
            event.details.insert("code".into(), json!(code));
        }
    }
}

/// Every page of a server's `tools/list`.
async fn list_all(up: &Upstream) -> Result<Vec<Value>, String> {
    list_pages(up, "tools/list", "tools").await
}

/// Every page of a server's listing `method`: the items under `key` of each page.
async fn list_pages(up: &Upstream, method: &str, key: &str) -> Result<Vec<Value>, String> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let body = up
            .request(method, params, None)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(e) = body.get("error") {
            return Err(format!("`{method}` failed: {e}"));
        }
        let result = body.get("result");
        if let Some(list) = result.and_then(|r| r.get(key)).and_then(Value::as_array) {
            items.extend(list.iter().cloned());
        }
        cursor = result
            .and_then(|r| r.get("nextCursor"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    Ok(items)
}

fn refusal_of(
    code: &str,
    message: String,
    approval: bool,
    policies: &[String],
    audit_id: &str,
) -> Refusal {
    if approval {
        Refusal {
            code: jsonrpc::APPROVAL_REQUIRED,
            data: Some(json!({
                "decision": "approval-required",
                "reason": "approval required",
                "message": message,
                "policy": policies.first(),
                "policies": policies,
                "audit_id": audit_id,
            })),
            message: format!("approval required: {message}"),
        }
    } else if code == "invalid-arguments" {
        Refusal {
            code: jsonrpc::INVALID_PARAMS,
            data: Some(
                json!({"decision": "deny", "code": code, "reason": message, "audit_id": audit_id}),
            ),
            message,
        }
    } else {
        Refusal {
            code: jsonrpc::DENIED,
            data: Some(json!({
                "decision": "deny",
                "reason": message,
                "code": code,
                "policy": policies.first(),
                "policies": policies,
                "audit_id": audit_id,
            })),
            message,
        }
    }
}

fn audit_failed(e: &str) -> String {
    format!("the decision could not be written to the audit log, so the call is refused: {e}")
}

pub(super) fn base_event(task: &Task, action: &str, resource: String) -> AuditEvent {
    let p = &task.principal;
    let mut event = AuditEvent::new(p.tenant(), AuditKind::McpCall, action);
    event.task = Some(p.current().task.as_str().to_owned());
    event.user = Some(p.user().as_str().to_owned());
    event.agent = Some(p.current().agent.as_str().to_owned());
    event.delegation = p
        .delegators()
        .iter()
        .map(|a| format!("{}/{}", a.agent.as_str(), a.task.as_str()))
        .collect();
    event.resource = Some(resource);
    event
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn new_session_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

pub(super) fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *resp.status_mut() = status;
    resp
}

fn rpc_response(status: StatusCode, body: &Value, session: Option<&str>) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(s) = session.and_then(|s| http::HeaderValue::from_str(s).ok()) {
        resp.headers_mut().insert(SESSION_HEADER, s);
    }
    resp
}

/// One SSE event carrying a JSON-RPC message.
pub(super) fn sse_event(message: &Value) -> Bytes {
    let mut out = b"event: message\ndata: ".to_vec();
    // Compact JSON has no line breaks, so one `data:` line carries it.
    out.extend(serde_json::to_vec(message).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A `text/event-stream` response whose events come from `rx`; it ends once every
/// sender is gone.
fn sse_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut resp = Response::new(BodyExt::boxed(EventStream(rx)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    resp
}

/// A response body fed by a channel.
struct EventStream(mpsc::Receiver<Bytes>);

impl http_body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|event| event.map(|bytes| Ok(http_body::Frame::data(bytes))))
    }
}

/// `GET /mcp`: the session's stream for messages unrelated to a call in flight (a
/// newer `GET` replaces an older stream).
fn open_stream(state: &TaskTools, session: Option<&str>, accepts_sse: bool) -> Response<Body> {
    if !accepts_sse {
        return plain(
            StatusCode::NOT_ACCEPTABLE,
            "the stream is text/event-stream; send Accept: text/event-stream",
        );
    }
    let Some(session) = session else {
        return plain(
            StatusCode::BAD_REQUEST,
            "send the Mcp-Session-Id header of your session (from `initialize`)",
        );
    };
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let opened = state.sessions.lock().is_ok_and(|mut open| {
        open.iter_mut()
            .find(|s| s.id == session)
            .map(|s| s.stream = Some(tx))
            .is_some()
    });
    if opened {
        sse_response(rx)
    } else {
        plain(
            StatusCode::NOT_FOUND,
            "the session is unknown or was ended; initialize a new one",
        )
    }
}
