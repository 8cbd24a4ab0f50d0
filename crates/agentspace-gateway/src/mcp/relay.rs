//! What tool servers send the agent's client: their requests (`sampling/createMessage`,
//! `elicitation/create`, `roots/list`) and notifications (progress, log messages, list
//! changes). Nothing passes unless the server's `relay` names it; a request is also a
//! Cedar decision (`mcp_server_request`), audited before it is relayed, checked for
//! injections like a tool result, and the client's answer is checked against the flow
//! rules before it goes back to the server.
//!
//! A message goes to the SSE stream of the newest call in flight to that server (the
//! agent's POST, answered as a stream), else to the `GET` stream of the newest session
//! that opened one; with neither, it cannot be relayed and a request is refused.

use std::sync::Arc;
use std::time::Instant;

use agentspace_core::{AuditDecision, Relay, ToolServer};
use agentspace_policy::{Action, Decision, Request as PolicyRequest, RequestContext, Resource};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use super::content;
use super::jsonrpc;
use super::server::{McpGateway, TaskTools, base_event, record_decision, sse_event};
use super::upstream::{CALL_TIMEOUT, ServerMessage};

/// A request relayed to the agent's client, waiting for its answer.
pub(super) struct Relayed {
    /// The session it was sent to: only that session may answer it.
    session: String,
    answer: oneshot::Sender<Map<String, Value>>,
}

/// The capabilities the gateway offers `server` as its client: those its `relay` lets
/// through.
pub(super) fn client_capabilities(server: &ToolServer) -> Value {
    let mut caps = Map::new();
    if server.relay.contains(&Relay::Sampling) {
        caps.insert("sampling".into(), json!({}));
    }
    if server.relay.contains(&Relay::Elicitation) {
        caps.insert("elicitation".into(), json!({}));
    }
    if server.relay.contains(&Relay::Roots) {
        caps.insert("roots".into(), json!({"listChanged": false}));
    }
    Value::Object(caps)
}

/// Delivers the client's answer (`result` or `error`) to the relayed request `id` of
/// `session`; `false` when no such request waits.
pub(super) fn answer(
    state: &TaskTools,
    session: Option<&str>,
    id: &Value,
    body: Map<String, Value>,
) -> bool {
    let (Some(key), Some(session)) = (id.as_str(), session) else {
        return false;
    };
    let Ok(mut relayed) = state.relayed.lock() else {
        return false;
    };
    if relayed.get(key).is_none_or(|r| r.session != session) {
        return false;
    }
    relayed
        .remove(key)
        .is_some_and(|r| r.answer.send(body).is_ok())
}

/// Where a message of `server` goes: the stream of the newest call in flight to it,
/// else the `GET` stream of the newest session that has one; with the session's id and
/// capabilities.
fn target(state: &TaskTools, server: &str) -> Option<(String, mpsc::Sender<Bytes>)> {
    let call = state.in_flight.lock().ok().and_then(|calls| {
        calls
            .iter()
            .rev()
            .find(|c| c.server == server && !c.events.is_closed())
            .map(|c| (c.session.clone(), c.events.clone()))
    });
    if call.is_some() {
        return call;
    }
    let sessions = state.sessions.lock().ok()?;
    sessions.iter().rev().find_map(|s| {
        s.stream
            .as_ref()
            .filter(|t| !t.is_closed())
            .map(|t| (s.id.clone(), t.clone()))
    })
}

/// Every open `GET` stream.
fn streams(state: &TaskTools) -> Vec<mpsc::Sender<Bytes>> {
    state
        .sessions
        .lock()
        .map(|sessions| {
            sessions
                .iter()
                .filter_map(|s| s.stream.clone().filter(|t| !t.is_closed()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `session`'s client declared the capability a request of `method` needs.
fn client_offers(state: &TaskTools, session: &str, method: &str) -> bool {
    let capability = match method {
        "sampling/createMessage" => "sampling",
        "elicitation/create" => "elicitation",
        "roots/list" => "roots",
        _ => return false,
    };
    state.sessions.lock().is_ok_and(|sessions| {
        sessions
            .iter()
            .any(|s| s.id == session && s.capabilities.get(capability).is_some())
    })
}

fn error_body(code: i64, message: &str, data: Option<Value>) -> Map<String, Value> {
    let mut error = Map::new();
    error.insert("code".into(), json!(code));
    error.insert("message".into(), json!(message));
    if let Some(data) = data {
        error.insert("data".into(), data);
    }
    let mut body = Map::new();
    body.insert("error".into(), Value::Object(error));
    body
}

impl McpGateway {
    /// Handles one message of a tool server: a request is answered through `reply`.
    pub(super) async fn on_server_message(
        self: Arc<Self>,
        state: Arc<TaskTools>,
        m: ServerMessage,
    ) {
        match m.reply {
            Some(reply) => {
                let body = self
                    .server_request(&state, &m.server, &m.method, m.params.unwrap_or_default())
                    .await;
                let _ = reply.send(body);
            }
            None => {
                self.server_notification(&state, &m.server, &m.method, m.params)
                    .await;
                drop(m.handled);
            }
        }
    }

    /// A server's request: decided, audited, relayed to the agent's client, and the
    /// answer (checked against the flow rules) returned for the server.
    async fn server_request(
        &self,
        state: &TaskTools,
        server: &str,
        method: &str,
        params: Map<String, Value>,
    ) -> Map<String, Value> {
        let started = Instant::now();
        let task = &state.task;
        let resource = format!("mcp://{server}");
        let request = PolicyRequest {
            principal: task.principal.clone(),
            action: Action::McpServerRequest {
                method: method.to_owned(),
            },
            resource: Resource {
                server: Some(server.to_owned()),
                ..Resource::default()
            },
            context: RequestContext {
                arguments: Some(Value::Object(params.clone())),
                ..RequestContext::default()
            },
        };
        let (decision, request) = crate::approval::decide(task, request).await;
        let (decision, approval) = crate::approval::hold_for_approval(
            task,
            decision,
            request,
            "server-request",
            || resource.clone(),
            || {
                let mut summary = Map::new();
                summary.insert("server".into(), json!(server));
                summary.insert("method".into(), json!(method));
                summary
            },
        )
        .await;
        let mut event = base_event(task, "server-request", resource.clone());
        event.request.insert("server".into(), json!(server));
        event.request.insert("method".into(), json!(method));
        if let Some(id) = approval {
            event.details.insert("approval".into(), json!(id));
        }
        event.policies = decision.policies().to_vec();
        let mut refusal: Option<(String, String)> = match &decision {
            Decision::Allow { .. } => None,
            Decision::Deny {
                reason, message, ..
            } => Some((reason.code().to_owned(), message.clone())),
            Decision::ApprovalRequired { message, .. } => {
                Some(("approval-required".to_owned(), message.clone()))
            }
        };
        let injection = state
            .tools
            .server(server)
            .map(|s| s.injection)
            .unwrap_or_default();
        // What the server sends reaches the model or the user: checked like a result.
        let mut outgoing = Value::Object(params);
        let flags = content::scan_result(&outgoing);
        if !flags.is_empty() {
            event.details.insert("flags".into(), json!(flags));
            event.details.insert("injection".into(), json!(injection));
            if let Some(message) = content::apply_injection(injection, &mut outgoing, &flags) {
                refusal.get_or_insert(("injection".to_owned(), message));
            }
            if let Some(obj) = outgoing.as_object_mut() {
                let meta = obj.entry("_meta").or_insert_with(|| json!({}));
                if let Some(meta) = meta.as_object_mut() {
                    meta.insert("agentspace/flags".into(), json!(flags));
                }
            }
        }
        let target = match refusal {
            Some(_) => None,
            None => match target(state, server) {
                Some((session, events)) if client_offers(state, &session, method) => {
                    Some((session, events))
                }
                Some(_) => {
                    refusal = Some((
                        "client".to_owned(),
                        format!("the agent's client does not offer `{method}`"),
                    ));
                    None
                }
                None => {
                    refusal = Some((
                        "client".to_owned(),
                        "no stream of the agent's client is open to relay it on (a call in flight to this server, or a `GET` stream)".to_owned(),
                    ));
                    None
                }
            },
        };
        let labels = task
            .policy
            .session_labels(&task.principal)
            .unwrap_or_default();
        if !labels.is_empty() {
            event.details.insert("labels".into(), json!(labels));
        }
        record_decision(
            &mut event,
            refusal.as_ref().map(|(c, m)| (c.as_str(), m.as_str())),
        );
        event.latency_us = u64::try_from(started.elapsed().as_micros()).ok();
        // Audit before action: nothing is relayed unless the decision is on record.
        let audit_id = match self.append(event).await {
            Ok(id) => id,
            Err(e) => {
                return error_body(
                    jsonrpc::DENIED,
                    &format!("the decision could not be written to the audit log: {e}"),
                    None,
                );
            }
        };
        let (Some((session, events)), None) = (target, &refusal) else {
            let (code, message) = refusal.unwrap_or_default();
            // Not permitted looks like a client without the capability.
            let rpc = if code == "not-permitted" {
                jsonrpc::METHOD_NOT_FOUND
            } else {
                jsonrpc::DENIED
            };
            return error_body(
                rpc,
                &message,
                Some(json!({"decision": "deny", "code": code, "audit_id": audit_id})),
            );
        };

        let key = format!("agentspace-{}", state.next_key());
        let (tx, rx) = oneshot::channel();
        if let Ok(mut relayed) = state.relayed.lock() {
            relayed.insert(
                key.clone(),
                Relayed {
                    session,
                    answer: tx,
                },
            );
        }
        let message = jsonrpc::message(Some(&json!(key)), method, outgoing.as_object());
        let mut result_event = base_event(task, "server-response", resource);
        result_event.details.insert("call".into(), json!(audit_id));
        let answer = if events.send(sse_event(&message)).await.is_err() {
            Err("the client's stream closed before the request could be relayed".to_owned())
        } else {
            match tokio::time::timeout(CALL_TIMEOUT, rx).await {
                Ok(Ok(body)) => Ok(body),
                Ok(Err(_)) => Err("the request was dropped".to_owned()),
                Err(_) => Err(format!(
                    "the agent's client did not answer within {}s",
                    CALL_TIMEOUT.as_secs()
                )),
            }
        };
        if let Ok(mut relayed) = state.relayed.lock() {
            relayed.remove(&key);
        }
        // What the server sent reached the agent: it carries the server's labels.
        if let Some(def) = state.tools.server(server)
            && !def.labels.is_empty()
            && let Ok(new) = task
                .policy
                .taint(&task.principal, def.labels.iter().cloned())
            && !new.is_empty()
        {
            result_event.details.insert("taint".into(), json!(new));
        }
        let body = match answer {
            Err(message) => {
                result_event.decision = Some(AuditDecision::Deny);
                result_event.reason = Some(message.clone());
                result_event.details.insert("code".into(), json!("client"));
                error_body(jsonrpc::INTERNAL_ERROR, &message, None)
            }
            Ok(body) => {
                // The answer goes to the server: what it carries must be cleared for it.
                let findings = content::scan_arguments(&Value::Object(body.clone()));
                if !findings.kinds.is_empty() {
                    result_event
                        .details
                        .insert("detected".into(), json!(findings.kinds));
                }
                let uncleared: Vec<String> = findings
                    .labels()
                    .into_iter()
                    .filter(|l| !state.tools.cleared(server, l))
                    .collect();
                if uncleared.is_empty() {
                    result_event.decision = Some(AuditDecision::Allow);
                    result_event.status = Some(
                        body.get("error")
                            .and_then(|e| e.get("code"))
                            .and_then(Value::as_i64)
                            .unwrap_or(0),
                    );
                    body
                } else {
                    let message = format!(
                        "the client's answer carries data labelled {} and `{server}` is not cleared for it (spec.flows[].mayFlowTo, spec.tools[].clearedFor); it is withheld",
                        uncleared
                            .iter()
                            .map(|l| format!("`{l}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    result_event.decision = Some(AuditDecision::Deny);
                    result_event.reason = Some(message.clone());
                    result_event.details.insert("code".into(), json!("flow"));
                    error_body(
                        jsonrpc::DENIED,
                        &message,
                        Some(json!({"decision": "deny", "code": "flow"})),
                    )
                }
            }
        };
        result_event.latency_us = u64::try_from(started.elapsed().as_micros()).ok();
        if let Err(e) = self.append(result_event).await {
            return error_body(
                jsonrpc::DENIED,
                &format!("the answer could not be written to the audit log: {e}"),
                None,
            );
        }
        body
    }

    /// A server's notification: relayed when its `relay` names the kind (a tools list
    /// change also makes the gateway list the tools again), audited either way.
    async fn server_notification(
        &self,
        state: &TaskTools,
        server: &str,
        method: &str,
        params: Option<Map<String, Value>>,
    ) {
        let kind = Relay::of_method(method);
        if method == "notifications/tools/list_changed" {
            state.forget_catalog().await;
        }
        let def = state.tools.server(server);
        let mut event = base_event(
            &state.task,
            "server-notification",
            format!("mcp://{server}"),
        );
        event.request.insert("server".into(), json!(server));
        event.request.insert("method".into(), json!(method));
        let mut refusal = match (kind, def) {
            (Some(k), Some(d)) if d.relay.contains(&k) => None,
            _ => Some((
                "not-permitted",
                format!(
                    "tool server `{server}` sent `{method}`, which its `spec.tools[].relay` does not let through"
                ),
            )),
        };
        let mut message = jsonrpc::message(None, method, params.as_ref());
        let flags = content::scan_result(&message);
        if !flags.is_empty() {
            let injection = def.map(|d| d.injection).unwrap_or_default();
            event.details.insert("flags".into(), json!(flags));
            event.details.insert("injection".into(), json!(injection));
            if let Some(blocked) = content::apply_injection(injection, &mut message, &flags) {
                refusal.get_or_insert(("injection", blocked));
            }
        }
        let targets = match (&refusal, kind) {
            (Some(_), _) => Vec::new(),
            (None, Some(Relay::ListChanged)) => streams(state),
            (None, _) => target(state, server)
                .map(|(_, events)| vec![events])
                .unwrap_or_default(),
        };
        match &refusal {
            None => {
                event.decision = Some(AuditDecision::Allow);
                event.details.insert("relayed".into(), json!(targets.len()));
            }
            Some((code, reason)) => {
                event.decision = Some(AuditDecision::Deny);
                event.reason = Some(reason.clone());
                event.details.insert("code".into(), json!(code));
            }
        }
        if self.append(event).await.is_err() {
            return;
        }
        let event = sse_event(&message);
        for events in targets {
            // A client that does not read its stream loses notifications, never stalls
            // the server.
            let _ = events.try_send(event.clone());
        }
    }
}
