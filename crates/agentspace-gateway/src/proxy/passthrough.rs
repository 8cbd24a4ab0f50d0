//! `tls: passthrough`: TLS connections relayed without interception, for clients that pin
//! certificates. Such a connection is decided as the `tunnel` action on its server name
//! and port, checked by the SSRF guard and audited before the gateway connects; then the
//! bytes are relayed both ways, untouched, and counted for the budgets.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use agentspace_policy::{Action, Request as PolicyRequest, Resource};
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Map, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    Conn, Gateway, Verdict, annotate, audit_failed, base_event, full, refused_response, valid_host,
};
use crate::body::Meter;
use crate::client_hello::{self, ClientHello};
use crate::door::Task;
use crate::io::Counted;
use crate::upstream::{Checked, Target};
use crate::usage::UsageScanner;

/// A passed-through connection that was allowed and audited.
pub(super) struct Tunnel {
    target: Target,
    checked: Checked,
    capabilities: Vec<String>,
}

impl Gateway {
    /// Decides a passed-through connection to `host:port`, resolves and checks it, and
    /// records the decision; the refusal to send (403 with the JSON body) otherwise.
    async fn decide_tunnel(
        &self,
        task: &Arc<Task>,
        host: &str,
        port: u16,
        sni: Option<&str>,
    ) -> Result<Tunnel, Response<super::GwBody>> {
        let started = Instant::now();
        let request = PolicyRequest {
            principal: task.principal.clone(),
            action: Action::Tunnel,
            resource: Resource {
                host: Some(host.to_owned()),
                port: Some(port),
                ..Resource::default()
            },
            context: agentspace_policy::RequestContext::default(),
        };
        let target = Target {
            host: host.to_owned(),
            port,
            tls: true,
        };
        let resource = format!("tls://{}", authority(&target));
        let mut summary = Map::new();
        summary.insert("method".into(), json!("TUNNEL"));
        summary.insert("scheme".into(), json!("tls"));
        summary.insert("host".into(), json!(host));
        summary.insert("port".into(), json!(port));
        if let Some(sni) = sni {
            summary.insert("sni".into(), json!(sni));
        }
        // An approval-required tunnel waits at the task's desk like a request: the
        // CONNECT is answered, or the transparent connection relayed, only once approved.
        let (decision, request) = crate::approval::decide(task, request).await;
        let (decision, approval) = crate::approval::hold_for_approval(
            task,
            decision,
            request,
            "TUNNEL",
            || resource.clone(),
            || summary.clone(),
        )
        .await;
        let verdict = match self.verdict(task, decision, &target).await {
            // Nothing can be injected into a connection the gateway does not terminate.
            Verdict::Allow {
                broker: Some(_),
                policies,
                ..
            } => Verdict::Deny {
                code: "credential".into(),
                message: format!(
                    "a credential cannot be injected into a passed-through TLS connection to `{host}`; intercept the host to broker credentials"
                ),
                policies,
            },
            v => v,
        };
        let mut event = base_event(task, "TUNNEL", resource);
        if let Some(id) = approval {
            event.details.insert("approval".into(), json!(id));
        }
        event.request = summary;
        event.details.insert("tls".into(), json!("passthrough"));
        annotate(&mut event, &verdict);
        event.latency_us = u64::try_from(started.elapsed().as_micros()).ok();
        let audit_id = match self.append(event).await {
            Ok(id) => id,
            Err(e) => return Err(audit_failed(&e)),
        };
        match verdict {
            Verdict::Allow {
                checked,
                capabilities,
                ..
            } => Ok(Tunnel {
                target,
                checked,
                capabilities,
            }),
            refused => Err(refused_response(refused, &audit_id)),
        }
    }

    /// `CONNECT host:port` to a passed-through host: decided before the tunnel is
    /// answered, so a refusal is the usual 403. Once open, the client's ClientHello must
    /// be TLS and name the same host (or no host).
    pub(super) async fn connect_passthrough(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: &Conn,
        host: String,
        port: u16,
    ) -> Response<super::GwBody> {
        let task = Arc::clone(&conn.task);
        let tunnel = match self.decide_tunnel(&task, &host, port, None).await {
            Ok(t) => t,
            Err(refusal) => return refusal,
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let closing = Arc::clone(&task);
        tokio::spawn(async move {
            let relay = async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut held = BytesMut::new();
                let read = tokio::time::timeout(
                    self.config.limits.tls_handshake_timeout,
                    client_hello::read(&mut io, &mut held),
                );
                let problem = match read.await {
                    Err(_) => return,
                    Ok(Err(e)) => Some(format!(
                        "a passed-through tunnel to `{host}` must carry TLS: {e}"
                    )),
                    Ok(Ok(hello)) => hello_problem(&hello, &host),
                };
                if let Some(message) = problem {
                    let resource = format!("tls://{}", authority(&tunnel.target));
                    let _ = self
                        .audit_refusal(&task, "TUNNEL", resource, "invalid-request", message)
                        .await;
                    return;
                }
                self.splice(io, held.freeze(), tunnel, task).await;
            };
            tokio::select! {
                () = relay => {}
                () = closing.wait_closed() => {}
            }
        });
        Response::new(full(Bytes::new()))
    }

    /// A transparent arrival whose ClientHello names a passed-through host.
    pub(super) async fn transparent_passthrough<IO>(
        &self,
        io: IO,
        held: Bytes,
        task: Arc<Task>,
        host: String,
        hello: &ClientHello,
        port: u16,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if let Some(message) = hello_problem(hello, &host) {
            let target = Target {
                host: host.clone(),
                port,
                tls: true,
            };
            let resource = format!("tls://{}", authority(&target));
            let _ = self
                .audit_refusal(&task, "TUNNEL", resource, "invalid-request", message)
                .await;
            return;
        }
        // No HTTP answer is possible before TLS: a refusal closes the connection.
        if let Ok(tunnel) = self.decide_tunnel(&task, &host, port, Some(&host)).await {
            self.splice(io, held, tunnel, task).await;
        }
    }

    /// Connects to the checked address, sends the ClientHello already read, and relays
    /// both ways until either side closes or the task ends; the bytes are charged to the
    /// task's budgets.
    async fn splice<IO>(&self, client: IO, hello: Bytes, tunnel: Tunnel, task: Arc<Task>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Tunnel {
            target,
            checked,
            capabilities,
        } = tunnel;
        let Ok((upstream, _)) = self.upstream.connect_tcp(&target, &checked).await else {
            return;
        };
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let mut meter = Meter {
            task: Arc::clone(&task),
            capabilities,
            sent: Arc::clone(&sent),
            received: 0,
            usage: UsageScanner::Off,
        };
        let mut client = Counted::new(client, Arc::clone(&sent));
        let mut upstream = Counted::new(upstream, Arc::clone(&received));
        if upstream.write_all(&hello).await.is_ok() {
            sent.fetch_add(hello.len() as u64, std::sync::atomic::Ordering::Relaxed);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                () = task.wait_closed() => {}
            }
        }
        meter.received = received.load(std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a ClientHello may not be passed through to `host`, if it may not: it must name
/// `host` or nothing, and not hide the real name with Encrypted Client Hello.
fn hello_problem(hello: &ClientHello, host: &str) -> Option<String> {
    if let Some(sni) = &hello.sni
        && valid_host(sni).as_deref() != Some(host)
    {
        return Some(format!(
            "TLS server name `{sni}` does not match the tunnel's host `{host}`; connect to the host you name"
        ));
    }
    hello.ech.then(|| {
        format!(
            "the ClientHello to `{host}` offers Encrypted Client Hello, which would hide the server name the connection is decided on; disable ECH for passed-through hosts"
        )
    })
}

/// `host:port`, with brackets around an IPv6 address.
fn authority(target: &Target) -> String {
    if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_hello_must_name_the_decided_host_and_not_hide_it() {
        let hello = |sni: Option<&str>, ech| ClientHello {
            sni: sni.map(str::to_owned),
            ech,
        };
        assert_eq!(
            hello_problem(
                &hello(Some("pinned.example.com"), false),
                "pinned.example.com"
            ),
            None
        );
        assert_eq!(
            hello_problem(&hello(None, false), "pinned.example.com"),
            None
        );
        let other = hello_problem(&hello(Some("api.example.com"), false), "pinned.example.com");
        assert!(other.is_some_and(|m| m.contains("`api.example.com`")));
        let ech = hello_problem(
            &hello(Some("pinned.example.com"), true),
            "pinned.example.com",
        );
        assert!(ech.is_some_and(|m| m.contains("Encrypted Client Hello")));
    }
}
