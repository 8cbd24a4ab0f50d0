//! Data-flow rules as taint: the labels a task's session has read, and whether a
//! destination is cleared for all of them.
//!
//! A tool server's `labels` taint the session once one of its results comes back
//! ([`crate::PolicyEngine::taint`]); the gateway may add labels it finds in a request's
//! own content (`context.labels`). From then on every MCP call and HTTP request of the
//! task goes only to destinations (tool servers, egress rules) cleared for every label:
//! named in `spec.flows[].mayFlowTo`, listed in the server's `clearedFor`, or the
//! server the label came from. Anything else is denied with reason `flow`. Taint never
//! decreases within a task: it is order-independent, not a trace of who read what.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use agentspace_core::{Principal, Tools};

use crate::decision::{Decision, DenyReason};
use crate::error::PolicyError;
use crate::evaluate::describe;
use crate::request::{Action, Request};

/// Most tasks whose taint is remembered at once. Past it new tasks are refused taint
/// (an error, so their calls are denied) rather than forgetting anyone's: forgetting
/// would let data flow.
const TAINT_MEMORY: usize = 65_536;

/// Per task (`tenant/task`): the labels its session carries.
#[derive(Debug, Default)]
pub(crate) struct Taint(Mutex<HashMap<String, BTreeSet<String>>>);

fn key(p: &Principal) -> String {
    format!("{}/{}", p.tenant(), p.current().task)
}

fn unavailable() -> PolicyError {
    PolicyError::Taint("a thread panicked while holding it".to_owned())
}

impl Taint {
    /// Adds `labels` to the session; returns those that were new.
    pub(crate) fn add(
        &self,
        principal: &Principal,
        labels: impl IntoIterator<Item = String>,
    ) -> Result<BTreeSet<String>, PolicyError> {
        let mut map = self.0.lock().map_err(|_| unavailable())?;
        let k = key(principal);
        if map.len() >= TAINT_MEMORY && !map.contains_key(&k) {
            return Err(PolicyError::Taint(format!(
                "the taint state holds {TAINT_MEMORY} tasks already"
            )));
        }
        let set = map.entry(k).or_default();
        Ok(labels
            .into_iter()
            .filter(|l| set.insert(l.clone()))
            .collect())
    }

    /// The labels of the session.
    pub(crate) fn labels(&self, principal: &Principal) -> Result<BTreeSet<String>, PolicyError> {
        let map = self.0.lock().map_err(|_| unavailable())?;
        Ok(map.get(&key(principal)).cloned().unwrap_or_default())
    }

    /// `request` with the session's labels added to `context.labels`; `None` when the
    /// session has none the request lacks.
    pub(crate) fn with_session_labels(
        &self,
        request: &Request,
    ) -> Result<Option<Request>, PolicyError> {
        let map = self.0.lock().map_err(|_| unavailable())?;
        let Some(session) = map.get(&key(&request.principal)) else {
            return Ok(None);
        };
        if session.is_subset(&request.context.labels) {
            return Ok(None);
        }
        let mut merged = request.clone();
        merged.context.labels.extend(session.iter().cloned());
        Ok(Some(merged))
    }
}

/// The flow check of an allowed request: every label in `context.labels` must be
/// cleared for each destination the request reaches (the tool server of an MCP call;
/// the capabilities an HTTP request was allowed under). DNS lookups and spawns carry no
/// data of the session and are not checked.
pub(crate) fn check(
    tools: &Tools,
    request: &Request,
    capabilities: &[String],
    approved: bool,
) -> Option<Decision> {
    let labels = &request.context.labels;
    if labels.is_empty() {
        return None;
    }
    let destinations: Vec<&str> = match &request.action {
        // A server's request: the client's answer goes to the server.
        Action::Mcp | Action::McpResource | Action::McpPrompt | Action::McpServerRequest { .. } => {
            vec![request.resource.server.as_deref().unwrap_or_default()]
        }
        Action::Dns | Action::Spawn => return None,
        _ => capabilities.iter().map(String::as_str).collect(),
    };
    let what = describe(request);
    if destinations.is_empty() {
        // Allowed by a policy that names no capability: nothing can clear it.
        return Some(Decision::deny(
            DenyReason::Flow,
            format!(
                "{what} is denied: the session carries {} and the destination is no egress rule or tool server a flow rule can clear",
                list(labels)
            ),
        ));
    }
    for dest in destinations {
        let uncleared: BTreeSet<String> = labels
            .iter()
            .filter(|l| !tools.cleared(dest, l))
            .cloned()
            .collect();
        if uncleared.is_empty() {
            continue;
        }
        // Every uncleared label's rule may send the request for approval instead: the
        // longest of their timeouts holds it; once a person approved, it goes on.
        let holds: Option<Vec<std::time::Duration>> = uncleared
            .iter()
            .map(|l| {
                tools
                    .flows
                    .iter()
                    .find(|f| &f.label == l)
                    .and_then(|f| f.approval)
            })
            .collect();
        if let Some(timeouts) = holds {
            if approved {
                continue;
            }
            let message = format!(
                "{what} needs approval: the session carries {} and `{dest}` is not cleared for it",
                list(&uncleared)
            );
            return Some(Decision::ApprovalRequired {
                policies: uncleared.iter().map(|l| format!("flow.{l}")).collect(),
                prompt: message.clone(),
                timeout: timeouts.into_iter().max().unwrap_or_default(),
                message,
            });
        }
        return Some(Decision::deny(
            DenyReason::Flow,
            format!(
                "{what} is denied: the session carries {} and `{dest}` is not cleared for it (spec.flows[].mayFlowTo, spec.tools[].clearedFor)",
                list(&uncleared)
            ),
        ));
    }
    None
}

fn list(labels: &BTreeSet<String>) -> String {
    let named: Vec<String> = labels.iter().map(|l| format!("`{l}`")).collect();
    format!("data labelled {}", named.join(", "))
}
