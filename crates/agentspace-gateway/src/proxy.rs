//! The proxy: connections from doors, CONNECT tunnels with TLS interception, and the
//! per-request path decide → resolve (SSRF guard) → audit → forward.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentspace_audit::AuditLog;
use agentspace_core::{AuditDecision, AuditEvent, AuditKind, Name};
use agentspace_identity::CallTarget;
use agentspace_policy::{Action, Decision, Request as PolicyRequest, RequestContext, Resource};
use agentspace_secrets::{SecretStore, SecretValue};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_rustls::LazyConfigAcceptor;

use crate::body::{GwBody, Meter, PooledBody, RequestBody, full};
use crate::broker::{self, Apply, Credential, RedactBody};
use crate::ca::{CaStore, TenantCa};
use crate::client_hello;
use crate::config::GatewayConfig;
use crate::door::{Arrival, Door, DoorListener, Task};
use crate::error::GatewayError;
use crate::framing::FramingGuard;
use crate::io::{Held, Rewind};
use crate::rules;
use crate::sigv4;
use crate::upstream::{Checked, Pool, Target, Upstream, UpstreamError};
use crate::usage::UsageScanner;

mod passthrough;

/// The response header that carries the gateway's decision on a refused request
/// (`deny` or `approval-required`).
pub const DECISION_HEADER: &str = "x-agentspace-decision";

/// [`agentspace_identity::CALL_TOKEN_HEADER`] as an HTTP/2 header name.
const CALL_TOKEN_HEADER_LOWER: &str = "agentspace-identity";

/// Request headers never shown to policies: they carry credentials.
const SECRET_HEADERS: [&str; 6] = [
    "authorization",
    "agentspace-identity",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
];
/// At most this many header values, each cut to this many bytes, go to the policy.
const CONTEXT_HEADERS: usize = 64;
const CONTEXT_HEADER_BYTES: usize = 1024;

/// The control boundary for HTTP and HTTPS. One per process; share it as `Arc`.
pub struct Gateway {
    config: GatewayConfig,
    cas: CaStore,
    upstream: Upstream,
    audit: AuditLog,
    secrets: SecretStore,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a connection is fixed to once it is inside a tunnel.
#[derive(Clone, Debug)]
struct Fixed {
    /// The host of the tunnel (CONNECT authority or SNI); `None` for transparent plain
    /// HTTP, where `Host` names it.
    host: Option<String>,
    port: u16,
    tls: bool,
}

struct Conn {
    task: Arc<Task>,
    fixed: Option<Fixed>,
    /// Set by the framing watch of an HTTP/1 connection once a head was ambiguous.
    ambiguous: Arc<AtomicBool>,
    /// Idle upstream connections opened for this connection's requests.
    pool: Pool,
}

/// The outcome of the request path, before it is audited.
enum Verdict {
    Allow {
        checked: Checked,
        policies: Vec<String>,
        capabilities: Vec<String>,
        broker: Option<(Credential, SecretValue)>,
        /// The per-call identity token the request carries upstream.
        identity: Option<CallIdentity>,
    },
    Deny {
        code: String,
        message: String,
        policies: Vec<String>,
    },
    Approval {
        message: String,
        policies: Vec<String>,
    },
    /// Allowed, but the upstream cannot be reached.
    Unreachable(UpstreamError),
}

/// A per-call identity token minted for one forwarded request.
struct CallIdentity {
    token: String,
    /// Its id, recorded in the audit event so a service's log can be matched to it.
    jti: String,
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Gateway {
    /// A gateway with `config`, writing decisions to `audit`. Loads the upstream trust
    /// store; tenant CAs are created on first use.
    pub fn new(config: GatewayConfig, audit: AuditLog) -> Result<Arc<Self>, GatewayError> {
        Ok(Arc::new(Self {
            cas: CaStore::new(&config.state_dir),
            upstream: Upstream::new(&config)?,
            secrets: SecretStore::open(&config.state_dir),
            config,
            audit,
        }))
    }

    /// The interception CA of `tenant` (created on first use), whose certificate the
    /// tenant's cells must trust.
    pub fn tenant_ca(&self, tenant: &Name) -> Result<Arc<TenantCa>, GatewayError> {
        self.cas.tenant(tenant)
    }

    /// Serves `door` until its task is closed ([`Task::close`]), which also closes every
    /// connection the door accepted; dropping the future only stops accepting. Accept
    /// errors (descriptor exhaustion, aborted handshakes) are waited out, never fatal.
    pub async fn serve(self: Arc<Self>, door: Door) {
        let Door { listener, task } = door;
        let permits = Arc::new(Semaphore::new(
            self.config.limits.max_connections_per_door.max(1),
        ));
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => permit,
                () = task.wait_closed() => return,
            };
            let Ok(permit) = permit else {
                return;
            };
            match &listener {
                DoorListener::Tcp(l) => tokio::select! {
                    accepted = l.accept() => match accepted {
                        Ok((stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(Arc::clone(&self).serve_connection(
                                Held::new(stream, permit),
                                Arc::clone(&task),
                                Arrival::Proxy,
                            ));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    },
                    () = task.wait_closed() => return,
                },
                DoorListener::Unix(l) => tokio::select! {
                    accepted = l.accept() => match accepted {
                        Ok((stream, _)) => {
                            tokio::spawn(Arc::clone(&self).serve_connection(
                                Held::new(stream, permit),
                                Arc::clone(&task),
                                Arrival::Proxy,
                            ));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    },
                    () = task.wait_closed() => return,
                },
                DoorListener::Transparent(l) => tokio::select! {
                    accepted = l.accept() => match accepted {
                        Ok((stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let gw = Arc::clone(&self);
                            let task = Arc::clone(&task);
                            tokio::spawn(async move {
                                match crate::transparent::original_destination(&stream) {
                                    Some(original) => {
                                        gw.serve_connection(
                                            Held::new(stream, permit),
                                            task,
                                            Arrival::Transparent { original },
                                        )
                                        .await;
                                    }
                                    None => gw.refuse_unredirected(&task).await,
                                }
                            });
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    },
                    () = task.wait_closed() => return,
                },
            }
        }
    }

    /// Serves one connection for `task`. Errors end the connection, never the gateway.
    pub async fn serve_connection<IO>(self: Arc<Self>, io: IO, task: Arc<Task>, arrival: Arrival)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if task.is_closed() {
            return;
        }
        match arrival {
            Arrival::Proxy => {
                self.serve_http1(
                    io,
                    Conn {
                        task,
                        fixed: None,
                        ambiguous: Arc::default(),
                        pool: Pool::default(),
                    },
                )
                .await
            }
            Arrival::Transparent { original } => {
                let Ok(name) = self.transparent_name(&task, original).await else {
                    return;
                };
                self.serve_tunnel(io, task, name, Some(original.ip()), original.port())
                    .await;
            }
        }
    }

    async fn serve_http1<IO>(self: Arc<Self>, io: IO, conn: Conn)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.config.limits;
        let io = FramingGuard::new(io, Arc::clone(&conn.ambiguous));
        let task = Arc::clone(&conn.task);
        let conn = Arc::new(conn);
        let gw = self;
        let svc = service_fn(move |req| {
            let gw = Arc::clone(&gw);
            let conn = Arc::clone(&conn);
            async move { Ok::<_, Infallible>(gw.handle(req, conn).await) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(limits.max_headers);
        let serving = builder
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        tokio::select! {
            _ = serving => {}
            () = task.wait_closed() => {}
        }
    }

    async fn serve_http2<IO>(self: Arc<Self>, io: IO, conn: Conn)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.config.limits;
        let task = Arc::clone(&conn.task);
        let conn = Arc::new(conn);
        let gw = self;
        let svc = service_fn(move |req| {
            let gw = Arc::clone(&gw);
            let conn = Arc::clone(&conn);
            async move { Ok::<_, Infallible>(gw.handle(req, conn).await) }
        });
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(128);
        let serving = builder.serve_connection(TokioIo::new(io), svc);
        tokio::select! {
            _ = serving => {}
            () = task.wait_closed() => {}
        }
    }

    /// A tunnel: TLS (intercepted) or plain HTTP, told apart by the first byte.
    fn serve_tunnel<IO>(
        self: Arc<Self>,
        mut io: IO,
        task: Arc<Task>,
        host: Option<String>,
        fallback: Option<IpAddr>,
        port: u16,
    ) -> BoxFuture
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The handshake phase is bounded by timeouts, and ends at once when the task
        // closes; once serving, the HTTP loops watch for the close themselves.
        let closing = Arc::clone(&task);
        let tunnel = async move {
            let limits = self.config.limits;
            let mut first = [0u8; 1];
            let read = tokio::time::timeout(limits.tls_handshake_timeout, io.read(&mut first));
            let Ok(Ok(1)) = read.await else {
                return;
            };
            let mut held = bytes::BytesMut::from(&first[..]);
            // A transparent arrival to a passed-through host (named already, or only in
            // its ClientHello): read the ClientHello to decide. Anything else goes on to
            // interception with the bytes read put back. (CONNECT to a passed-through
            // host never gets here: it is decided before the tunnel is answered.)
            let named = host.as_ref().filter(|h| rules::passes_through(&task, h));
            if first == [0x16]
                && (host.is_none() || named.is_some())
                && rules::any_passthrough(&task)
            {
                let hello = tokio::time::timeout(
                    limits.tls_handshake_timeout,
                    client_hello::read(&mut io, &mut held),
                );
                match hello.await {
                    Ok(Ok(hello)) => {
                        let name = named
                            .cloned()
                            .or_else(|| hello.sni.as_deref().and_then(valid_host))
                            .filter(|n| rules::passes_through(&task, n));
                        if let Some(name) = name {
                            self.transparent_passthrough(
                                io,
                                held.freeze(),
                                task,
                                name,
                                &hello,
                                port,
                            )
                            .await;
                            return;
                        }
                    }
                    // A passed-through host takes TLS only.
                    Ok(Err(_)) if named.is_some() => return,
                    Ok(Err(_)) => {}
                    Err(_) => return,
                }
            }
            let io = Rewind::new(held.freeze(), io);
            if first != [0x16] {
                let fixed = Fixed {
                    host,
                    port,
                    tls: false,
                };
                self.serve_http1(
                    io,
                    Conn {
                        task,
                        fixed: Some(fixed),
                        ambiguous: Arc::default(),
                        pool: Pool::default(),
                    },
                )
                .await;
                return;
            }
            let accept = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
            let Ok(Ok(start)) = tokio::time::timeout(limits.tls_handshake_timeout, accept).await
            else {
                return;
            };
            let sni = start
                .client_hello()
                .server_name()
                .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
            let host = match (host, sni) {
                (Some(h), Some(s)) if h != s => {
                    // The name the client verifies must be the name that was decided.
                    let resource = format!("https://{h}:{port}");
                    let message = format!(
                        "TLS server name `{s}` does not match the CONNECT host `{h}`; connect to the host you name"
                    );
                    let _ = self
                        .audit_refusal(&task, "CONNECT", resource, "invalid-request", message)
                        .await;
                    return;
                }
                (Some(h), _) => h,
                (None, Some(s)) => s,
                (None, None) => match fallback {
                    Some(ip) => ip.to_string(),
                    None => return,
                },
            };
            if valid_host(&host).is_none() {
                return;
            }
            let Ok(ca) = self.cas.tenant(task.principal.tenant()) else {
                return;
            };
            let Ok(config) = ca.server_config(&host) else {
                return;
            };
            let Ok(Ok(tls)) =
                tokio::time::timeout(limits.tls_handshake_timeout, start.into_stream(config)).await
            else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let conn = Conn {
                task,
                fixed: Some(Fixed {
                    host: Some(host),
                    port,
                    tls: true,
                }),
                ambiguous: Arc::default(),
                pool: Pool::default(),
            };
            if h2 {
                self.serve_http2(tls, conn).await;
            } else {
                self.serve_http1(tls, conn).await;
            }
        };
        Box::pin(async move {
            tokio::select! {
                () = tunnel => {}
                () = closing.wait_closed() => {}
            }
        })
    }

    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: Arc<Conn>,
    ) -> Response<GwBody> {
        if conn.ambiguous.load(Ordering::SeqCst) {
            let mut resp = error(
                StatusCode::BAD_REQUEST,
                "ambiguous message framing (Content-Length with Transfer-Encoding, or Content-Length repeated); send exactly one of them",
            );
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        if req.method() == Method::CONNECT {
            if conn.fixed.is_some() {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "CONNECT inside a tunnel is not supported; send the request itself",
                );
            }
            let Some((host, Some(port))) = req
                .uri()
                .authority()
                .and_then(|a| Some((valid_host(a.host())?, a.port_u16())))
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "CONNECT needs `host:port` with a valid host name or IP address",
                );
            };
            if rules::passes_through(&conn.task, &host) {
                return self.connect_passthrough(req, &conn, host, port).await;
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            let task = Arc::clone(&conn.task);
            let gw = Arc::clone(&self);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    gw.serve_tunnel(TokioIo::new(upgraded), task, Some(host), None, port)
                        .await;
                }
            });
            return Response::new(full(Bytes::new()));
        }
        let headers = req.headers();
        if headers.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
            return error(
                StatusCode::BAD_REQUEST,
                "more than one Content-Length header; send one",
            );
        }
        if headers.contains_key(header::CONTENT_LENGTH)
            && headers.contains_key(header::TRANSFER_ENCODING)
        {
            return error(
                StatusCode::BAD_REQUEST,
                "both Content-Length and Transfer-Encoding; send one of them",
            );
        }
        let head_bytes: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if head_bytes > self.config.limits.max_header_bytes {
            return error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &format!(
                    "request headers are larger than the gateway's limit of {} bytes",
                    self.config.limits.max_header_bytes
                ),
            );
        }
        let target = match target_of(&req, conn.fixed.as_ref()) {
            Ok(t) => t,
            Err(bad) => return error(bad.status, &bad.message),
        };
        self.decide_and_forward(req, &conn, target).await
    }

    async fn decide_and_forward(
        &self,
        req: Request<Incoming>,
        conn: &Conn,
        target: Target,
    ) -> Response<GwBody> {
        let task = &conn.task;
        let started = Instant::now();
        let limits = self.config.limits;
        let (parts, body) = req.into_parts();
        let method = parts.method.as_str().to_owned();
        let path = match parts.uri.path() {
            "" => "/".to_owned(),
            p => p.to_owned(),
        };
        let query = parts.uri.query().unwrap_or("").to_owned();
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
        let (body, window) = if is_json {
            let inspect = RequestBody::inspect(body, limits.inspect_window, limits.max_body_bytes);
            match tokio::time::timeout(limits.header_read_timeout, inspect).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(_)) => {
                    return error(StatusCode::BAD_REQUEST, "cannot read the request body");
                }
                Err(_) => {
                    return error(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body came too slowly for the decision; send it without pauses",
                    );
                }
            }
        } else {
            (RequestBody::stream(body, limits.max_body_bytes), None)
        };
        let json_body = window
            .as_ref()
            .and_then(|b| serde_json::from_slice::<Value>(b).ok());
        let request = PolicyRequest {
            principal: task.principal.clone(),
            action: Action::Http {
                method: method.clone(),
            },
            resource: Resource {
                host: Some(target.host.clone()),
                port: Some(target.port),
                path: Some(path.clone()),
                ..Resource::default()
            },
            context: RequestContext {
                query: query.clone(),
                headers: context_headers(&parts.headers),
                body: json_body,
                ..RequestContext::default()
            },
        };
        let (decision, request) = crate::approval::decide(task, request).await;
        let resource = format!("{}{}", target.origin(), path);
        let (decision, approval) = crate::approval::hold_for_approval(
            task,
            decision,
            request,
            &method,
            || resource.clone(),
            || approval_summary(&method, &target, &path, &parts.headers),
        )
        .await;
        let verdict = self.verdict(task, decision, &target).await;
        let verdict = with_call_identity(task, verdict, &method, &target, &path).await;
        let mut event = base_event(task, &method, resource);
        if let Some(id) = approval {
            event.details.insert("approval".into(), json!(id));
        }
        let mut summary = Map::new();
        summary.insert("method".into(), json!(method));
        summary.insert(
            "scheme".into(),
            json!(if target.tls { "https" } else { "http" }),
        );
        summary.insert("host".into(), json!(target.host));
        summary.insert("port".into(), json!(target.port));
        summary.insert("path".into(), json!(path));
        if !query.is_empty() {
            summary.insert("query_digest".into(), json!(sha256(query.as_bytes())));
        }
        let names: Vec<&str> = parts.headers.keys().map(HeaderName::as_str).collect();
        summary.insert("headers".into(), json!(names));
        event.request = summary;
        event.args_digest = window.as_deref().map(sha256);
        annotate(&mut event, &verdict);
        event.latency_us = u64::try_from(started.elapsed().as_micros()).ok();
        let audit_id = match self.append(event).await {
            Ok(id) => id,
            Err(e) => return audit_failed(&e),
        };
        match verdict {
            Verdict::Allow {
                checked,
                capabilities,
                broker,
                identity,
                ..
            } => {
                let meter = Meter {
                    task: Arc::clone(task),
                    capabilities,
                    sent: body.sent(),
                    received: 0,
                    usage: UsageScanner::Off,
                };
                let call = Call {
                    target: &target,
                    checked: &checked,
                    pool: &conn.pool,
                    broker,
                    identity,
                };
                self.forward(parts, body, call, meter)
                    .await
                    .unwrap_or_else(|e| error(StatusCode::BAD_GATEWAY, &e.to_string()))
            }
            refused => refused_response(refused, &audit_id),
        }
    }

    /// What becomes of a decision: an allowed request is resolved and checked by the
    /// SSRF guard (as far as the rules that allowed it may reach) and gets its brokered
    /// credential, either of which can still deny it.
    async fn verdict(&self, task: &Task, decision: Decision, target: &Target) -> Verdict {
        match decision {
            Decision::Allow {
                policies,
                capabilities,
                ..
            } => {
                let reach = rules::reach(task, &capabilities, &target.host);
                match self.upstream.resolve(target, reach).await {
                    Ok(checked) => match self.credential_for(task, &capabilities).await {
                        Ok(broker) => Verdict::Allow {
                            checked,
                            policies,
                            capabilities,
                            broker,
                            identity: None,
                        },
                        Err(message) => Verdict::Deny {
                            code: "credential".into(),
                            message,
                            policies,
                        },
                    },
                    Err(e) if e.is_refusal() => Verdict::Deny {
                        code: "ssrf".into(),
                        message: e.to_string(),
                        policies,
                    },
                    Err(e) => Verdict::Unreachable(e),
                }
            }
            Decision::Deny {
                reason,
                policies,
                message,
            } => Verdict::Deny {
                code: reason.code().into(),
                message,
                policies,
            },
            Decision::ApprovalRequired {
                policies, message, ..
            } => Verdict::Approval { message, policies },
        }
    }

    async fn forward(
        &self,
        mut parts: http::request::Parts,
        mut body: RequestBody,
        call: Call<'_>,
        mut meter: Meter,
    ) -> Result<Response<GwBody>, UpstreamError> {
        let Call {
            target,
            checked,
            pool,
            broker,
            identity,
        } = call;
        // Only the gateway says who a call is for: a token the agent sent is dropped.
        let call_header = HeaderName::from_static(CALL_TOKEN_HEADER_LOWER);
        parts.headers.remove(&call_header);
        if let Some(identity) = identity {
            let value = HeaderValue::from_str(&identity.token)
                .map_err(|e| UpstreamError::Credential(format!("the identity token: {e}")))?;
            parts.headers.insert(call_header, value);
        }
        let mut conn = self.upstream.checkout(pool, target, checked).await?;
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        // A brokered request carries no credential of the agent's, and is not upgraded
        // (an upgraded stream could not be redacted).
        let (path_and_query, redact) = match &broker {
            Some((credential, secret)) => {
                let pq = broker::apply(
                    credential,
                    secret.expose(),
                    &mut parts.headers,
                    &path_and_query,
                )
                .map_err(|e| UpstreamError::Credential(e.to_string()))?;
                parts.headers.remove(header::UPGRADE);
                (
                    pq,
                    Some(broker::patterns(secret.expose(), &credential.apply)),
                )
            }
            None => (path_and_query, None),
        };
        let h2 = conn.sender.is_h2();
        if h2 {
            // HTTP/1.1 upgrades do not exist over HTTP/2.
            parts.headers.remove(header::UPGRADE);
        }
        // An HTTP/1.1 upgrade (WebSocket) keeps its Upgrade header; the client's side of
        // the upgrade is taken now, before the request's parts are given away.
        let upgrade = upgrade_of(&parts.headers, parts.version);
        let client_upgrade = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        if let (Some(protocol), Some(_)) = (&upgrade, &client_upgrade) {
            headers.insert(header::UPGRADE, protocol.clone());
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let default_port = if target.tls { 443 } else { 80 };
        let host_value = match (target.host.contains(':'), target.port == default_port) {
            (true, true) => format!("[{}]", target.host),
            (true, false) => format!("[{}]:{}", target.host, target.port),
            (false, true) => target.host.clone(),
            (false, false) => format!("{}:{}", target.host, target.port),
        };
        if let Some((credential, secret)) = &broker
            && let Apply::AwsSigV4 { region, service } = &credential.apply
        {
            let payload_hash = self.payload_hash(&mut body).await?;
            let signing = sigv4::Signing {
                method: parts.method.as_str(),
                host: &host_value,
                path_and_query: &path_and_query,
                payload_hash: &payload_hash,
                region,
                service,
                now: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            };
            sigv4::sign(&mut headers, &signing, &credential.secret, secret.expose())
                .map_err(|e| UpstreamError::Credential(e.to_string()))?;
        }
        // HTTP/1.1: origin-form and Host. HTTP/2: absolute-form, which hyper sends as
        // `:scheme` and `:authority`, and no Host.
        let (uri, version) = if h2 {
            headers.remove(header::HOST);
            let scheme = if target.tls { "https" } else { "http" };
            (
                format!("{scheme}://{host_value}{path_and_query}"),
                Version::HTTP_2,
            )
        } else {
            if let Ok(v) = HeaderValue::from_str(&host_value) {
                headers.insert(header::HOST, v);
            }
            (path_and_query, Version::HTTP_11)
        };
        let uri: Uri = uri.parse().map_err(|_| UpstreamError::Http {
            host: target.host.clone(),
            detail: "the request target is not a valid URI".into(),
        })?;
        let mut upstream_req = Request::new(body.boxed_unsync());
        *upstream_req.method_mut() = parts.method;
        *upstream_req.uri_mut() = uri;
        *upstream_req.version_mut() = version;
        *upstream_req.headers_mut() = headers;
        let mut resp = conn
            .sender
            .send(upstream_req)
            .await
            .map_err(|e| UpstreamError::Http {
                host: target.host.clone(),
                detail: e.to_string(),
            })?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Err(UpstreamError::Http {
                    host: target.host.clone(),
                    detail: "the upstream switched protocols without being asked".into(),
                });
            };
            // The connection belongs to the upgraded stream now: it never goes back to
            // the pool.
            drop(conn);
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade)
                else {
                    return;
                };
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let task = Arc::clone(&meter.task);
                tokio::select! {
                    copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                        if let Ok((up, down)) = copied {
                            meter.received = up.saturating_add(down);
                        }
                    }
                    () = task.wait_closed() => {}
                }
                drop(meter);
            });
            let (mut parts, _) = resp.into_parts();
            let protocol = parts.headers.get(header::UPGRADE).cloned();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(protocol) = protocol {
                parts.headers.insert(header::UPGRADE, protocol);
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            return Ok(Response::from_parts(parts, full(Bytes::new())));
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        meter.usage = UsageScanner::for_content_type(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let body = PooledBody::new(body, Arc::clone(pool), conn, meter).boxed_unsync();
        let body = match redact {
            Some(patterns) => {
                broker::redact_headers(&mut parts.headers, &patterns);
                // Redaction changes the length.
                parts.headers.remove(header::CONTENT_LENGTH);
                RedactBody::new(body, patterns).boxed_unsync()
            }
            None => body,
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The SHA-256 a SigV4 signature covers: of the whole body when it fits in the
    /// inspection window (read now if it was not), else `UNSIGNED-PAYLOAD`.
    async fn payload_hash(&self, body: &mut RequestBody) -> Result<String, UpstreamError> {
        let limits = self.config.limits;
        match tokio::time::timeout(
            limits.header_read_timeout,
            body.whole(limits.inspect_window),
        )
        .await
        {
            Ok(Ok(Some(bytes))) => Ok(sigv4::payload_hash(&bytes)),
            Ok(Ok(None)) => Ok(sigv4::UNSIGNED_PAYLOAD.to_owned()),
            Ok(Err(e)) => Err(UpstreamError::Credential(format!(
                "cannot read the request body to sign it: {e}"
            ))),
            Err(_) => Err(UpstreamError::Credential(
                "the request body came too slowly to be signed; send it without pauses".into(),
            )),
        }
    }

    /// The credential the first brokered capability of an allowed request carries, with
    /// its secret; an error (a missing or unreadable secret) denies the request.
    async fn credential_for(
        &self,
        task: &Task,
        capabilities: &[String],
    ) -> Result<Option<(Credential, SecretValue)>, String> {
        let Some(credential) = capabilities
            .iter()
            .find_map(|c| task.credentials.get(c))
            .cloned()
        else {
            return Ok(None);
        };
        let secrets = self.secrets.clone();
        let tenant = task.principal.tenant().clone();
        let name = credential.secret.clone();
        match tokio::task::spawn_blocking(move || secrets.get(&tenant, &name)).await {
            Ok(Ok(secret)) => {
                if let Apply::AwsSigV4 { .. } = credential.apply {
                    sigv4::check_secret(&credential.secret, secret.expose())
                        .map_err(|e| e.to_string())?;
                }
                Ok(Some((credential, secret)))
            }
            Ok(Err(e)) => Err(format!("the brokered credential is unavailable: {e}")),
            Err(e) => Err(format!("the brokered credential is unavailable: {e}")),
        }
    }

    /// Appends `event`; the id (`tenant:seq`) once it is durable.
    pub(crate) async fn append(&self, event: AuditEvent) -> Result<String, String> {
        // Awaited, not on a blocking thread: the writer wakes this task once durable.
        match self.audit.append_async(event).await {
            Ok(receipt) => Ok(format!("{}:{}", receipt.tenant, receipt.seq)),
            Err(e) => Err(e.to_string()),
        }
    }

    pub(crate) async fn audit_refusal(
        &self,
        task: &Arc<Task>,
        action: &str,
        resource: String,
        code: &str,
        message: String,
    ) -> Result<String, String> {
        let mut event = base_event(task, action, resource);
        event.decision = Some(AuditDecision::Deny);
        event.reason = Some(message);
        event.details.insert("code".into(), json!(code));
        self.append(event).await
    }
}

/// What an approver is shown of a held request: no header values (the body fields the
/// decision read are added by the hold).
fn approval_summary(
    method: &str,
    target: &Target,
    path: &str,
    headers: &HeaderMap,
) -> Map<String, Value> {
    let mut summary = Map::new();
    summary.insert("method".into(), json!(method));
    summary.insert("host".into(), json!(target.host));
    summary.insert("port".into(), json!(target.port));
    summary.insert("path".into(), json!(path));
    let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    summary.insert("headers".into(), json!(names));
    summary
}

pub(crate) fn base_event(task: &Task, action: &str, resource: String) -> AuditEvent {
    let p = &task.principal;
    let mut event = AuditEvent::new(p.tenant(), AuditKind::HttpRequest, action);
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

/// What an allowed request is forwarded with.
struct Call<'a> {
    target: &'a Target,
    checked: &'a Checked,
    pool: &'a Pool,
    broker: Option<(Credential, SecretValue)>,
    identity: Option<CallIdentity>,
}

/// The URL a per-call token names: the request's origin (default port omitted, as a
/// service names itself) and path, without the query.
fn call_url(target: &Target, path: &str) -> String {
    let scheme = if target.tls { "https" } else { "http" };
    let default_port = if target.tls { 443 } else { 80 };
    let host = if target.host.contains(':') {
        format!("[{}]", target.host)
    } else {
        target.host.clone()
    };
    if target.port == default_port {
        format!("{scheme}://{host}{path}")
    } else {
        format!("{scheme}://{host}:{}{path}", target.port)
    }
}

/// Mints the per-call identity token of an allowed request whose capability sends one;
/// a request that should carry one and cannot is denied (it would reach the service
/// without saying who it is for).
async fn with_call_identity(
    task: &Task,
    verdict: Verdict,
    method: &str,
    target: &Target,
    path: &str,
) -> Verdict {
    let Verdict::Allow {
        checked,
        policies,
        capabilities,
        broker,
        identity: None,
    } = verdict
    else {
        return verdict;
    };
    if !rules::sends_identity(task, &capabilities) {
        return Verdict::Allow {
            checked,
            policies,
            capabilities,
            broker,
            identity: None,
        };
    }
    let minted = match &task.identity {
        None => Err("this gateway has no identity store to mint it with".to_owned()),
        Some(identity) => {
            let identity = Arc::clone(identity);
            let principal = task.principal.clone();
            let (method, url) = (method.to_owned(), call_url(target, path));
            tokio::task::spawn_blocking(move || {
                let target = CallTarget::new(&method, &url).map_err(|e| e.to_string())?;
                identity
                    .mint_call_token(&principal, &target)
                    .map(|t| CallIdentity {
                        token: t.as_str().to_owned(),
                        jti: t.claims().jti.clone(),
                    })
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        }
    };
    match minted {
        Ok(identity) => Verdict::Allow {
            checked,
            policies,
            capabilities,
            broker,
            identity: Some(identity),
        },
        Err(e) => Verdict::Deny {
            code: "identity".into(),
            message: format!(
                "the per-call identity token this capability sends cannot be minted, so the request is refused: {e}"
            ),
            policies,
        },
    }
}

/// Records a verdict in its audit event.
fn annotate(event: &mut AuditEvent, verdict: &Verdict) {
    match verdict {
        Verdict::Allow {
            policies,
            capabilities,
            checked,
            broker,
            identity,
        } => {
            if let Some(identity) = identity {
                event
                    .details
                    .insert("identity_jti".into(), json!(identity.jti));
            }
            if let Some((credential, _)) = broker {
                event
                    .details
                    .insert("credential".into(), json!(credential.secret));
            }
            event.decision = Some(AuditDecision::Allow);
            event.policies = policies.clone();
            event
                .details
                .insert("capabilities".into(), json!(capabilities));
            if checked.internal {
                event.details.insert("internal".into(), json!(true));
            }
            if checked.overridden {
                event.details.insert("resolve_override".into(), json!(true));
            }
        }
        Verdict::Deny {
            code,
            message,
            policies,
        } => {
            event.decision = Some(AuditDecision::Deny);
            event.policies = policies.clone();
            event.reason = Some(message.clone());
            event.details.insert("code".into(), json!(code));
        }
        Verdict::Approval { message, policies } => {
            event.decision = Some(AuditDecision::ApprovalRequired);
            event.policies = policies.clone();
            event.reason = Some(message.clone());
        }
        Verdict::Unreachable(e) => {
            event.decision = Some(AuditDecision::Deny);
            event.reason = Some(e.to_string());
            event.details.insert("code".into(), json!("upstream"));
        }
    }
}

/// The answer to a request that is not forwarded, naming its audit event.
fn refused_response(verdict: Verdict, audit_id: &str) -> Response<GwBody> {
    match verdict {
        Verdict::Deny {
            code,
            message,
            policies,
        } => refusal(
            "deny",
            json!({
                "decision": "deny",
                "reason": message,
                "code": code,
                "policy": policies.first(),
                "policies": policies,
                "audit_id": audit_id,
            }),
        ),
        Verdict::Approval { message, policies } => refusal(
            "approval-required",
            json!({
                "decision": "approval-required",
                "reason": "approval required",
                "message": message,
                "policy": policies.first(),
                "policies": policies,
                "audit_id": audit_id,
            }),
        ),
        Verdict::Unreachable(e) => {
            let mut resp = json_response(
                StatusCode::BAD_GATEWAY,
                json!({"error": e.to_string(), "audit_id": audit_id}),
            );
            resp.headers_mut()
                .insert(DECISION_HEADER, HeaderValue::from_static("deny"));
            resp
        }
        Verdict::Allow { .. } => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "an allowed request was refused; this is a bug",
        ),
    }
}

/// The answer when the decision could not be made durable: the request is refused.
fn audit_failed(e: &str) -> Response<GwBody> {
    refusal(
        "deny",
        json!({
            "decision": "deny",
            "reason": format!("the decision could not be written to the audit log, so the request is refused: {e}"),
            "code": "audit",
            "policy": null,
            "audit_id": null,
        }),
    )
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A host as the gateway decides on it: lowercase, one trailing dot removed, brackets
/// removed from IPv6; `None` unless it is an IP address or a DNS name.
fn valid_host(host: &str) -> Option<String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        // Canonical, as rules hold IP addresses (`::1`, never `0:0:0:0:0:0:0:1`).
        return Some(ip.to_string());
    }
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(host)
}

/// The host and port a request names in its URI or its `Host` header.
fn named_authority(req: &Request<Incoming>) -> Result<Option<(String, Option<u16>)>, Bad> {
    let bad = || Bad::new(StatusCode::BAD_REQUEST, "the request names an invalid host");
    if let Some(a) = req.uri().authority() {
        let host = valid_host(a.host()).ok_or_else(bad)?;
        return Ok(Some((host, a.port_u16())));
    }
    let mut values = req.headers().get_all(header::HOST).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Bad::new(
            StatusCode::BAD_REQUEST,
            "more than one Host header; send one",
        ));
    }
    let value = value.to_str().map_err(|_| bad())?;
    let a: http::uri::Authority = value.parse().map_err(|_| bad())?;
    let host = valid_host(a.host()).ok_or_else(bad)?;
    Ok(Some((host, a.port_u16())))
}

/// Where a request goes. Explicit proxy: the absolute-form URI. Inside a tunnel: the
/// tunnel's host and port; a request naming another host is misdirected (421).
fn target_of(req: &Request<Incoming>, fixed: Option<&Fixed>) -> Result<Target, Bad> {
    let Some(fixed) = fixed else {
        let tls = match req.uri().scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => {
                return Err(Bad::new(
                    StatusCode::BAD_REQUEST,
                    "only http and https URLs are proxied",
                ));
            }
            None => {
                return Err(Bad::new(
                    StatusCode::BAD_REQUEST,
                    "this is a proxy: send absolute-form requests (`GET http://host/path`) or CONNECT",
                ));
            }
        };
        let Some((host, port)) = named_authority(req)? else {
            return Err(Bad::new(StatusCode::BAD_REQUEST, "the URL names no host"));
        };
        let port = port.unwrap_or(if tls { 443 } else { 80 });
        return Ok(Target { host, port, tls });
    };
    let named = named_authority(req)?;
    let host = match (&fixed.host, named) {
        (Some(h), Some((n, port))) => {
            if *h != n || port.is_some_and(|p| p != fixed.port) {
                return Err(Bad::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    &format!(
                        "this connection is for `{h}:{}`; open another for `{n}`",
                        fixed.port
                    ),
                ));
            }
            h.clone()
        }
        (Some(h), None) => h.clone(),
        (None, Some((n, _))) => n,
        (None, None) => {
            return Err(Bad::new(
                StatusCode::BAD_REQUEST,
                "the request has no Host header",
            ));
        }
    };
    Ok(Target {
        host,
        port: fixed.port,
        tls: fixed.tls,
    })
}

/// A request the gateway cannot route, and the HTTP status that says why.
struct Bad {
    status: StatusCode,
    message: String,
}

impl Bad {
    fn new(status: StatusCode, message: &str) -> Self {
        Self {
            status,
            message: message.to_owned(),
        }
    }
}

fn context_headers(headers: &HeaderMap) -> std::collections::BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(name, _)| !SECRET_HEADERS.contains(&name.as_str()))
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            let mut cut = value.len().min(CONTEXT_HEADER_BYTES);
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            Some((name.as_str().to_owned(), value.get(..cut)?.to_owned()))
        })
        .take(CONTEXT_HEADERS)
        .collect()
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Upgrade` named in
/// `Connection`).
fn upgrade_of(headers: &HeaderMap, version: Version) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

fn json_response(status: StatusCode, body: Value) -> Response<GwBody> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A 403 for a refused request, with the decision in the header and the body.
fn refusal(decision: &'static str, body: Value) -> Response<GwBody> {
    let mut resp = json_response(StatusCode::FORBIDDEN, body);
    resp.headers_mut()
        .insert(DECISION_HEADER, HeaderValue::from_static(decision));
    resp
}

/// An error that is not a decision (malformed request, unreachable upstream).
fn error(status: StatusCode, message: &str) -> Response<GwBody> {
    json_response(status, json!({ "error": message }))
}
