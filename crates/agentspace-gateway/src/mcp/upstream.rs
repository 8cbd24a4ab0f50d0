//! Tool servers behind the gateway: stdio programs the boundary starts outside the cell,
//! and streamable-HTTP endpoints. Each is an MCP client session of the gateway's own,
//! opened with `initialize` on first use.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentspace_core::{Name, ToolServer, ToolTransport};
use agentspace_secrets::SecretStore;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use super::jsonrpc;
use crate::broker::Credential;
use crate::ssrf::Reach;
use crate::upstream::{Pool, Pooled, Target, Upstream as HttpClient, checkin};

/// The MCP revision the gateway asks its tool servers for (the newest one negotiated
/// with `initialize`).
pub(crate) const UPSTREAM_PROTOCOL: &str = "2025-11-25";
/// Most bytes of one message from a tool server.
const MAX_MESSAGE: u64 = 16 << 20;
/// How long one call to a tool server may take, start-up included.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The `_meta` key that carries the per-call identity token to a stdio server (HTTP
/// servers get the `Agentspace-Identity` header).
pub(crate) const IDENTITY_META: &str = "agentspace/identity";
/// How long a server's next message waits for its notification to be handled.
const NOTIFICATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a tool server could not answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The program could not be started.
    #[error("cannot start tool server `{server}` (`{program}`): {source}")]
    Start {
        server: String,
        program: String,
        source: std::io::Error,
    },
    /// It exited or closed its output.
    #[error("tool server `{server}` closed the connection")]
    Closed { server: String },
    /// It did not answer in time.
    #[error("tool server `{server}` did not answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout { server: String },
    /// The HTTP exchange failed.
    #[error("tool server `{server}`: {message}")]
    Http { server: String, message: String },
    /// It answered something that is not MCP.
    #[error("tool server `{server}` broke the protocol: {message}")]
    Protocol { server: String, message: String },
}

/// A message a tool server sent to the client: a request (sampling, elicitation,
/// roots), which the gateway decides and relays or refuses, or a notification. A
/// server's `ping` is answered here and never reported.
#[derive(Debug)]
pub(crate) struct ServerMessage {
    /// The server's name.
    pub(crate) server: String,
    /// The method.
    pub(crate) method: String,
    /// The parameters, when given.
    pub(crate) params: Option<Map<String, Value>>,
    /// For a request: where its answer goes (`result` or `error`, as the answering side
    /// wrote it); the upstream adds the server's id. Dropped unanswered, the server is
    /// sent a refusal.
    pub(crate) reply: Option<oneshot::Sender<Map<String, Value>>>,
    /// For a notification: dropped once it has been handled, so that the server's next
    /// message (the response it precedes, say) is read only after it was relayed.
    pub(crate) handled: Option<oneshot::Sender<()>>,
}

/// Where a tool server's messages to the client go.
pub(crate) type Messages = mpsc::UnboundedSender<ServerMessage>;

/// One tool server session.
pub(crate) struct Upstream {
    name: String,
    conn: Conn,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

enum Conn {
    Stdio(Box<StdioConn>),
    Http(Arc<HttpConn>),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Map<String, Value>>>>>;

struct StdioConn {
    /// Stopped by [`Upstream::stop`], or killed when dropped: the server lives as long
    /// as the task's MCP door.
    child: tokio::sync::Mutex<Option<Child>>,
    /// `None` once closed (the server's cue to exit).
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    pending: Pending,
    /// Set by the reader once the server's output closed, before it fails the calls
    /// still waiting, so no later call is sent to a dead server.
    dead: Arc<AtomicBool>,
    reader: JoinHandle<()>,
    replier: JoinHandle<()>,
}

impl Drop for StdioConn {
    fn drop(&mut self) {
        self.reader.abort();
        self.replier.abort();
    }
}

struct HttpConn {
    server: String,
    /// Scheme, host and port.
    target: Target,
    /// `host[:port]` as the URL wrote it, for `Host`.
    authority: String,
    path: String,
    session: Mutex<Option<String>>,
    /// Where the server's requests and notifications on a response stream go.
    messages: Messages,
    link: Arc<HttpLink>,
    /// Idle connections to the server.
    pool: Pool,
}

/// How the gateway reaches HTTP tool servers: its upstream client (the host's roots
/// plus the operator's CAs, resolve overrides, the SSRF guard) and, for a server with a
/// credential, the secret store it is read from.
pub(crate) struct HttpLink {
    pub(crate) client: Arc<HttpClient>,
    pub(crate) secrets: Option<SecretStore>,
    pub(crate) tenant: Name,
    pub(crate) credential: Option<Credential>,
}

/// One POST on its way: the response, the connection it came on (back to the pool
/// once the body is read) and what must be redacted from what it carries.
struct Exchange {
    resp: http::Response<hyper::body::Incoming>,
    conn: Pooled,
    redact: Vec<Zeroizing<Vec<u8>>>,
}

/// Where stdio tool servers run. Given a stdio server of the definition, the command to
/// start instead: the server inside a sandbox of its own (`agentspace run` puts each in
/// a cell whose only network is what the server's `egress` rules allow, through a
/// gateway of its own), so a tool server never runs with the gateway's privileges.
pub trait StdioSandbox: Send + Sync {
    /// The program and arguments that run `server` (its `command`, in its working
    /// directory, with its `egress` rules) in its sandbox.
    fn wrap(&self, server: &ToolServer) -> Result<Vec<String>, String>;

    /// Variables the wrapped command is started with besides `PATH` and `LANG` (which
    /// never reach the server itself when the sandbox is a cell): where the sandbox
    /// finds its stores, say. None by default.
    fn environment(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

impl Upstream {
    /// Starts (stdio, in `sandbox` when given) or connects to (HTTP) server `name` and
    /// runs the `initialize` handshake, offering `capabilities` as the client's. The
    /// server's requests and notifications go to `messages`.
    pub(crate) async fn start(
        server: &ToolServer,
        sandbox: Option<&dyn StdioSandbox>,
        messages: Messages,
        capabilities: Value,
        link: Arc<HttpLink>,
    ) -> Result<Self, UpstreamError> {
        let name = server.name.as_str();
        let conn = match &server.transport {
            ToolTransport::Stdio { command, cwd } => {
                let refused = |e: String| UpstreamError::Start {
                    server: name.to_owned(),
                    program: command.first().cloned().unwrap_or_default(),
                    source: std::io::Error::other(e),
                };
                let env = sandbox.map(StdioSandbox::environment).unwrap_or_default();
                let command = match sandbox {
                    Some(s) => s.wrap(server).map_err(refused)?,
                    // Fail closed: a plain child process would have the host's network.
                    None if !server.egress.is_empty() => {
                        return Err(refused(
                            "the server has egress rules, which only a sandbox of its own can enforce (run it under `agentspace run`)".to_owned(),
                        ));
                    }
                    None => command.clone(),
                };
                Conn::Stdio(Box::new(spawn(name, &command, cwd, &env, messages)?))
            }
            ToolTransport::Http { url } => {
                Conn::Http(Arc::new(HttpConn::new(name, url, messages, link)?))
            }
        };
        let upstream = Self {
            name: name.to_owned(),
            conn,
            next_id: AtomicU64::new(1),
        };
        let init = json!({
            "protocolVersion": UPSTREAM_PROTOCOL,
            "capabilities": capabilities,
            "clientInfo": {"name": "agentspace-gateway", "version": env!("CARGO_PKG_VERSION")},
        });
        let response = upstream.request("initialize", init, None).await?;
        if let Some(e) = response.get("error") {
            return Err(upstream.protocol(format!("`initialize` failed: {e}")));
        }
        upstream
            .send(jsonrpc::notification("notifications/initialized"))
            .await?;
        Ok(upstream)
    }

    fn protocol(&self, message: String) -> UpstreamError {
        UpstreamError::Protocol {
            server: self.name.clone(),
            message,
        }
    }

    /// Whether the server can still answer: a stdio server whose output closed (it
    /// exited or crashed) cannot, and is started again on next use.
    pub(crate) fn is_alive(&self) -> bool {
        match &self.conn {
            Conn::Stdio(s) => !s.dead.load(Ordering::SeqCst),
            Conn::Http(_) => true,
        }
    }

    /// Sends a request and waits for its response (`result` or `error`, as sent).
    /// `identity` is the per-call token for this request.
    pub(crate) async fn request(
        &self,
        method: &str,
        mut params: Value,
        identity: Option<&str>,
    ) -> Result<Map<String, Value>, UpstreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let timeout = |_| UpstreamError::Timeout {
            server: self.name.clone(),
        };
        match &self.conn {
            Conn::Stdio(s) => {
                if let (Some(token), Some(obj)) = (identity, params.as_object_mut()) {
                    let meta = obj.entry("_meta").or_insert_with(|| json!({}));
                    if let Some(meta) = meta.as_object_mut() {
                        meta.insert(IDENTITY_META.to_owned(), json!(token));
                    }
                }
                let (tx, rx) = oneshot::channel();
                s.pending
                    .lock()
                    .map_err(|_| self.protocol("the pending-call table is poisoned".into()))?
                    .insert(id, tx);
                self.send(jsonrpc::request(id, method, params)).await?;
                let answer = tokio::time::timeout(CALL_TIMEOUT, rx)
                    .await
                    .map_err(timeout);
                if let Ok(mut pending) = s.pending.lock() {
                    pending.remove(&id);
                }
                answer?.map_err(|_| UpstreamError::Closed {
                    server: self.name.clone(),
                })
            }
            Conn::Http(h) => {
                let message = jsonrpc::request(id, method, params);
                tokio::time::timeout(CALL_TIMEOUT, h.post(&message, identity, Some(id)))
                    .await
                    .map_err(timeout)?
                    .and_then(|r| {
                        r.ok_or_else(|| self.protocol(format!("no response to `{method}`")))
                    })
            }
        }
    }

    /// Ends a stdio server the way it expects: its input is closed (an MCP server exits
    /// at the end of its input; a server in a cell then ends its cell, whose exit is
    /// recorded), and it is killed only if it has not exited within `grace`.
    pub(crate) async fn stop(&self, grace: Duration) {
        let Conn::Stdio(s) = &self.conn else {
            return;
        };
        s.stdin.lock().await.take();
        let Some(mut child) = s.child.lock().await.take() else {
            return;
        };
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }

    /// Sends a notification.
    async fn send(&self, message: Value) -> Result<(), UpstreamError> {
        match &self.conn {
            Conn::Stdio(s) => {
                let mut line =
                    serde_json::to_vec(&message).map_err(|e| self.protocol(e.to_string()))?;
                line.push(b'\n');
                let mut stdin = s.stdin.lock().await;
                let closed = || UpstreamError::Closed {
                    server: self.name.clone(),
                };
                let stdin = stdin.as_mut().ok_or_else(closed)?;
                stdin.write_all(&line).await.map_err(|_| closed())?;
                stdin.flush().await.map_err(|_| closed())
            }
            Conn::Http(h) => tokio::time::timeout(CALL_TIMEOUT, h.post(&message, None, None))
                .await
                .map_err(|_| UpstreamError::Timeout {
                    server: self.name.clone(),
                })?
                .map(|_| ()),
        }
    }
}

/// Starts a stdio server: its own process group, an empty environment but `PATH` and
/// `LANG`, stdin/stdout piped, stderr discarded (it could echo secrets into our logs).
fn spawn(
    name: &str,
    command: &[String],
    cwd: &std::path::Path,
    env: &[(String, String)],
    messages: Messages,
) -> Result<StdioConn, UpstreamError> {
    let (program, args) = command.split_first().ok_or_else(|| UpstreamError::Start {
        server: name.to_owned(),
        program: String::new(),
        source: std::io::Error::other("the command is empty"),
    })?;
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", path)
        .env("LANG", "C.UTF-8")
        .env("PYTHONUNBUFFERED", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(|source| UpstreamError::Start {
            server: name.to_owned(),
            program: program.clone(),
            source,
        })?;
    let closed = || UpstreamError::Closed {
        server: name.to_owned(),
    };
    let stdin = child.stdin.take().ok_or_else(closed)?;
    let stdout = child.stdout.take().ok_or_else(closed)?;
    let pending: Pending = Arc::default();
    let (replies_tx, mut replies_rx) = mpsc::unbounded_channel::<Value>();
    let dead = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_stdio(
        name.to_owned(),
        stdout,
        (Arc::clone(&pending), Arc::clone(&dead)),
        messages,
        replies_tx,
    ));
    let stdin = Arc::new(tokio::sync::Mutex::new(Some(stdin)));
    let writer = Arc::clone(&stdin);
    // Answers to the server's requests go back on stdin, which the reader does not
    // hold; this task writes them. It ends once the reader and every answer in flight
    // (its senders) are gone.
    let replier = tokio::spawn(async move {
        while let Some(reply) = replies_rx.recv().await {
            let Ok(mut line) = serde_json::to_vec(&reply) else {
                continue;
            };
            line.push(b'\n');
            let mut w = writer.lock().await;
            let Some(w) = w.as_mut() else { break };
            if w.write_all(&line).await.is_err() || w.flush().await.is_err() {
                break;
            }
        }
    });
    let conn = StdioConn {
        child: tokio::sync::Mutex::new(Some(child)),
        stdin,
        pending,
        dead,
        reader,
        replier,
    };
    Ok(conn)
}

/// Reads a stdio server's messages: responses complete their calls; its requests and
/// notifications go to `messages` (a request's answer is written back by `replies`).
async fn read_stdio(
    server: String,
    stdout: tokio::process::ChildStdout,
    (pending, dead): (Pending, Arc<AtomicBool>),
    messages: Messages,
    replies: mpsc::UnboundedSender<Value>,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_MESSAGE + 1)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) if n as u64 > MAX_MESSAGE => break,
            Ok(_) => {}
        }
        let Ok(value) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        match jsonrpc::parse(value) {
            Ok(jsonrpc::Message::Response { id, body }) => {
                let waiter = id
                    .as_u64()
                    .and_then(|id| pending.lock().ok().and_then(|mut p| p.remove(&id)));
                if let Some(tx) = waiter {
                    let _ = tx.send(body);
                }
            }
            Ok(message) => {
                let replies = replies.clone();
                hand_over(&server, message, &messages, move |answer| {
                    let _ = replies.send(answer);
                })
                .await;
            }
            Err(_) => {}
        }
    }
    // Whoever still waits learns the server is gone.
    dead.store(true, Ordering::SeqCst);
    if let Ok(mut p) = pending.lock() {
        p.clear();
    }
}

/// Hands a server's request or notification to the gateway (`messages`); `answer`
/// sends a request's response back to the server, once the gateway has one. A `ping`
/// is answered at once. Returns once a notification has been handled (a request is
/// answered later), so that messages keep their order.
async fn hand_over(
    server: &str,
    message: jsonrpc::Message,
    messages: &Messages,
    answer: impl FnOnce(Value) + Send + 'static,
) {
    match message {
        jsonrpc::Message::Request { id, method, .. } if method == "ping" => {
            answer(jsonrpc::result(&id, json!({})));
        }
        jsonrpc::Message::Request { id, method, params } => {
            let (tx, rx) = oneshot::channel();
            let sent = messages.send(ServerMessage {
                server: server.to_owned(),
                method,
                params,
                reply: Some(tx),
                handled: None,
            });
            if sent.is_err() {
                answer(refusal(&id));
                return;
            }
            tokio::spawn(async move {
                let reply = match rx.await {
                    Ok(body) => jsonrpc::response(&id, &body),
                    Err(_) => refusal(&id),
                };
                answer(reply);
            });
        }
        jsonrpc::Message::Notification { method, params } => {
            let (handled, done) = oneshot::channel();
            let sent = messages.send(ServerMessage {
                server: server.to_owned(),
                method,
                params,
                reply: None,
                handled: Some(handled),
            });
            if sent.is_ok() {
                let _ = tokio::time::timeout(NOTIFICATION_TIMEOUT, done).await;
            }
        }
        jsonrpc::Message::Response { .. } => {}
    }
}

/// The answer to a server-initiated request nobody answered.
pub(crate) fn refusal(id: &Value) -> Value {
    jsonrpc::error(
        id,
        jsonrpc::INTERNAL_ERROR,
        "the request could not be answered through the Agent Space boundary",
        None,
    )
}

impl HttpConn {
    fn new(
        server: &str,
        url: &str,
        messages: Messages,
        link: Arc<HttpLink>,
    ) -> Result<Self, UpstreamError> {
        let bad = |message: String| UpstreamError::Http {
            server: server.to_owned(),
            message,
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad(format!(
                "`{url}` is not an `http://` or `https://` URL"
            )));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (
                rest.get(..i).unwrap_or_default(),
                rest.get(i..).unwrap_or("/"),
            ),
            None => (rest, "/"),
        };
        let default_port = if tls { 443 } else { 80 };
        // `host`, `host:port`, `[v6]`, `[v6]:port`.
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or_else(|| bad(format!("`{url}` has an unclosed `[`")))?;
                let port = match after.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if after.is_empty() => None,
                    None => return Err(bad(format!("`{url}` has a malformed host"))),
                };
                (host, port)
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad(format!("`{url}` has a malformed port")))?,
        };
        if host.is_empty() {
            return Err(bad(format!("`{url}` has no host")));
        }
        Ok(Self {
            server: server.to_owned(),
            target: Target {
                host: host.to_ascii_lowercase(),
                port,
                tls,
            },
            authority: authority.to_owned(),
            path: path.to_owned(),
            session: Mutex::new(None),
            messages,
            link,
            pool: Pool::default(),
        })
    }

    /// POSTs one message; for a request (`id`), reads the response from a JSON body or
    /// an SSE stream. The server's own requests and notifications on that stream are
    /// handed to the gateway, and their answers POSTed back.
    async fn post(
        self: &Arc<Self>,
        message: &Value,
        identity: Option<&str>,
        id: Option<u64>,
    ) -> Result<Option<Map<String, Value>>, UpstreamError> {
        let Some(id) = id else {
            return self.post_only(message).await.map(|()| None);
        };
        let fail = |message: String| self.fail(message);
        let Exchange { resp, conn, redact } = self.exchange(message, identity).await?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(fail(format!("answered {status}")));
        }
        // A secret the server echoes never reaches the agent (nor the audit log).
        let clean = |mut v: Map<String, Value>| {
            for item in v.values_mut() {
                redact_value(item, &redact);
            }
            v
        };
        let sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| fail(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                buf.extend_from_slice(data);
            }
            if buf.len() as u64 > MAX_MESSAGE {
                return Err(fail("the response is larger than 16 MiB".into()));
            }
            if sse {
                let mut others = Vec::new();
                let found = sse_response(&mut buf, id, &mut |m| others.push(m));
                for m in others {
                    self.on_stream(redact_message(m, &redact)).await;
                }
                if let Some(found) = found {
                    // The server may keep the stream open: this connection is not reused.
                    return Ok(Some(clean(found)));
                }
            }
        }
        if sse {
            buf.extend_from_slice(b"\n\n");
            let mut others = Vec::new();
            let found = sse_response(&mut buf, id, &mut |m| others.push(m));
            for m in others {
                self.on_stream(redact_message(m, &redact)).await;
            }
            checkin(&self.pool, conn);
            return found
                .map(|f| Some(clean(f)))
                .ok_or_else(|| fail("the event stream ended without the response".into()));
        }
        checkin(&self.pool, conn);
        let value: Value =
            serde_json::from_slice(&buf).map_err(|e| fail(format!("the body is not JSON: {e}")))?;
        match jsonrpc::parse(value) {
            Ok(jsonrpc::Message::Response { body, .. }) => Ok(Some(clean(body))),
            _ => Err(fail("the body is not a JSON-RPC response".into())),
        }
    }
}

impl HttpConn {
    fn fail(&self, message: String) -> UpstreamError {
        UpstreamError::Http {
            server: self.server.clone(),
            message,
        }
    }

    /// POSTs a message that expects no response (a notification, an answer to the
    /// server's request).
    async fn post_only(&self, message: &Value) -> Result<(), UpstreamError> {
        let Exchange { resp, conn, .. } = self.exchange(message, None).await?;
        let status = resp.status();
        // Read to the end so the connection can be used again.
        if resp.into_body().collect().await.is_ok() {
            checkin(&self.pool, conn);
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(self.fail(format!("answered {status} to a notification")))
        }
    }

    /// Sends one POST in the server's session (keeping the session id it gives), over
    /// a connection of the pool or a new one: resolved (resolve overrides first) and
    /// checked like an `internal: true` egress host, TLS verified against the host's
    /// roots and the operator's CAs, the brokered credential added.
    async fn exchange(
        &self,
        message: &Value,
        identity: Option<&str>,
    ) -> Result<Exchange, UpstreamError> {
        let fail = |message: String| self.fail(message);
        let body = serde_json::to_vec(message).map_err(|e| fail(e.to_string()))?;
        let mut headers = http::HeaderMap::new();
        let mut path = self.path.clone();
        let mut redact = Vec::new();
        if let Some(credential) = &self.link.credential {
            let secret = self.secret(credential).await?;
            path = crate::broker::apply(credential, secret.expose(), &mut headers, &path)
                .map_err(|e| fail(format!("cannot apply the brokered credential: {e}")))?;
            redact = crate::broker::patterns(secret.expose(), &credential.apply);
        }
        let client = &self.link.client;
        let checked = client
            .resolve(&self.target, Reach::Internal)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut conn = client
            .checkout(&self.pool, &self.target, &checked)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let h2 = conn.sender.is_h2();
        let uri = if h2 {
            format!("{}{path}", self.target.origin())
        } else {
            path
        };
        let mut req = Request::builder().method(Method::POST).uri(uri);
        if !h2 {
            req = req.header(header::HOST, &self.authority);
        }
        req = req
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header("mcp-protocol-version", UPSTREAM_PROTOCOL);
        let session = self.session.lock().ok().and_then(|s| s.clone());
        if let Some(s) = &session {
            req = req.header("mcp-session-id", s);
        }
        if let Some(token) = identity {
            req = req.header("agentspace-identity", token);
        }
        let mut req = req
            .body(crate::body::full(body))
            .map_err(|e| fail(e.to_string()))?;
        req.headers_mut().extend(headers);
        let resp = conn
            .sender
            .send(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if let Some(s) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            && let Ok(mut slot) = self.session.lock()
        {
            *slot = Some(s.to_owned());
        }
        Ok(Exchange { resp, conn, redact })
    }

    /// The value of the server's brokered credential, read from the secret store.
    async fn secret(
        &self,
        credential: &Credential,
    ) -> Result<agentspace_secrets::SecretValue, UpstreamError> {
        let Some(secrets) = self.link.secrets.clone() else {
            return Err(self.fail(
                "the server has a credential but the gateway has no secret store".to_owned(),
            ));
        };
        let tenant = self.link.tenant.clone();
        let name = credential.secret.clone();
        tokio::task::spawn_blocking(move || secrets.get(&tenant, &name))
            .await
            .map_err(|e| self.fail(e.to_string()))?
            .map_err(|e| self.fail(format!("the brokered credential is unavailable: {e}")))
    }

    /// A request or notification the server sent on a response stream: handed to the
    /// gateway; a request's answer is POSTed back in the server's session.
    async fn on_stream(self: &Arc<Self>, message: jsonrpc::Message) {
        let me = Arc::clone(self);
        hand_over(&self.server, message, &self.messages, move |answer| {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CALL_TIMEOUT, me.post_only(&answer)).await;
            });
        })
        .await;
    }
}

/// Takes complete SSE events off the front of `buf`; returns the JSON-RPC response
/// with `id` once one has come. Other messages (the server's requests and
/// notifications) go to `other`.
fn sse_response(
    buf: &mut Vec<u8>,
    id: u64,
    other: &mut dyn FnMut(jsonrpc::Message),
) -> Option<Map<String, Value>> {
    loop {
        let text = String::from_utf8_lossy(buf).replace("\r\n", "\n");
        let end = text.find("\n\n")?;
        let event = text.get(..end).unwrap_or_default().to_owned();
        let consumed = text.get(..end + 2).map_or(0, str::len);
        // Map the consumed length back onto the raw bytes (CRLF shrank by one each).
        let raw_consumed = raw_len(buf, consumed);
        buf.drain(..raw_consumed.min(buf.len()));
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if data.is_empty() {
            continue;
        }
        let Ok(value) = serde_json::from_str::<Value>(&data.join("\n")) else {
            continue;
        };
        match jsonrpc::parse(value) {
            Ok(jsonrpc::Message::Response { id: got, body }) if got.as_u64() == Some(id) => {
                return Some(body);
            }
            Ok(m @ (jsonrpc::Message::Request { .. } | jsonrpc::Message::Notification { .. })) => {
                other(m);
            }
            _ => {}
        }
    }
}

/// Replaces every occurrence of a secret in the strings of `value` (the secret as the
/// server may echo it, and its encodings as sent).
fn redact_value(value: &mut Value, patterns: &[Zeroizing<Vec<u8>>]) {
    if patterns.is_empty() {
        return;
    }
    match value {
        Value::String(s) => {
            for p in patterns {
                if let Ok(p) = std::str::from_utf8(p)
                    && !p.is_empty()
                    && s.contains(p)
                {
                    *s = s.replace(p, "[REDACTED]");
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(v, patterns)),
        Value::Object(map) => map.values_mut().for_each(|v| redact_value(v, patterns)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `message` with its parameters redacted.
fn redact_message(message: jsonrpc::Message, patterns: &[Zeroizing<Vec<u8>>]) -> jsonrpc::Message {
    match message {
        jsonrpc::Message::Request {
            id,
            method,
            mut params,
        } => {
            if let Some(p) = params.as_mut() {
                p.values_mut().for_each(|v| redact_value(v, patterns));
            }
            jsonrpc::Message::Request { id, method, params }
        }
        jsonrpc::Message::Notification { method, mut params } => {
            if let Some(p) = params.as_mut() {
                p.values_mut().for_each(|v| redact_value(v, patterns));
            }
            jsonrpc::Message::Notification { method, params }
        }
        other @ jsonrpc::Message::Response { .. } => other,
    }
}

/// Reads `bytes` as an HTTP tool server's event stream (for the fuzz target).
pub(crate) fn fuzz_sse(bytes: &[u8]) {
    let mut buf = bytes.to_vec();
    let _ = sse_response(&mut buf, 1, &mut |_| {});
}

/// How many bytes of `raw` make `normalised` characters once CRLF is read as LF.
fn raw_len(raw: &[u8], normalised: usize) -> usize {
    let mut n = 0;
    let mut i = 0;
    while n < normalised && i < raw.len() {
        if raw.get(i) == Some(&b'\r') && raw.get(i + 1) == Some(&b'\n') {
            i += 2;
        } else {
            i += 1;
        }
        n += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_read_until_the_response() {
        let mut buf = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\r\n\r\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"ok\":true}}\n\n".to_vec();
        let mut others = Vec::new();
        let body = sse_response(&mut buf, 7, &mut |m| others.push(m)).unwrap();
        assert_eq!(body.get("result"), Some(&json!({"ok": true})));
        assert!(
            matches!(&others[..], [jsonrpc::Message::Notification { method, .. }] if method == "notifications/progress")
        );
        let mut partial = b"data: {\"jsonrpc\":\"2.0\",\"id\":7,".to_vec();
        assert!(sse_response(&mut partial, 7, &mut |_| {}).is_none());
    }

    #[test]
    fn urls_of_http_tool_servers() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let link = Arc::new(HttpLink {
            client: Arc::new(
                HttpClient::new(&crate::GatewayConfig::new(std::path::PathBuf::new())).unwrap(),
            ),
            secrets: None,
            tenant: Name::new("acme").unwrap(),
            credential: None,
        });
        let conn = |url: &str| HttpConn::new("hr", url, tx.clone(), Arc::clone(&link));
        let h = conn("http://127.0.0.1:8080/mcp").unwrap();
        assert_eq!(h.authority, "127.0.0.1:8080");
        assert_eq!(h.path, "/mcp");
        assert_eq!(
            (h.target.host.as_str(), h.target.port, h.target.tls),
            ("127.0.0.1", 8080, false)
        );
        let h = conn("https://HR.example/mcp").unwrap();
        assert_eq!(
            (h.target.host.as_str(), h.target.port, h.target.tls),
            ("hr.example", 443, true)
        );
        let h = conn("https://[::1]:8443").unwrap();
        assert_eq!(
            (h.target.host.as_str(), h.target.port, h.path.as_str()),
            ("::1", 8443, "/")
        );
        for bad in ["ftp://x/", "http://x:port/", "https://[::1/", "http:///mcp"] {
            assert!(conn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn echoed_secrets_are_redacted_from_every_string() {
        let patterns = vec![Zeroizing::new(b"s3cret".to_vec())];
        let mut v = json!({"content": [{"text": "token s3cret and s3cret"}], "n": 1});
        redact_value(&mut v, &patterns);
        assert_eq!(
            v,
            json!({"content": [{"text": "token [REDACTED] and [REDACTED]"}], "n": 1})
        );
    }
}
