//! Holding approval-required requests for a human.
//!
//! When a task has an [`ApprovalDesk`] (the control plane's approval store, in the same
//! process or over the state directory), an approval-required decision does not end in a
//! 403: the request waits while the desk persists the approval, announces it and waits
//! for a person or the rule's timeout. Approved, the request is decided again without the
//! `@approval` policies (revocation, budgets and forbids still apply) and goes on; denied
//! or timed out, it gets the 403. Without a desk the request is refused at once with
//! reason `approval required`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agentspace_policy::{Decision, DenyReason, Request as PolicyRequest};
use serde_json::{Map, Value};

use crate::door::Task;

/// What the desk is asked to hold.
#[derive(Clone, Debug)]
pub struct HoldRequest {
    /// The tenant.
    pub tenant: String,
    /// The user the agent acts for (the requester, for four-eyes).
    pub user: String,
    /// The task.
    pub task: String,
    /// The agent.
    pub agent: String,
    /// The action (`POST`, `tools/call`).
    pub action: String,
    /// What it is on (a URL, `mcp://server/tool`).
    pub resource: String,
    /// The `@approval` policies that asked for it.
    pub policies: Vec<String>,
    /// What the approver is asked, in words.
    pub reason: String,
    /// The request summary (no secrets: header names, digests, the decided fields).
    pub summary: Map<String, Value>,
    /// How long to wait before denying.
    pub timeout: Duration,
    /// The request's digest (action, resource, arguments; hex): the same request
    /// retried after its connection was lost is matched to its approval by it.
    pub digest: String,
}

/// How a hold ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    /// A person approved.
    Approved {
        /// The approval's id.
        approval: String,
        /// Who approved.
        approver: String,
    },
    /// A person denied, or nobody decided in time.
    Denied {
        /// The approval's id.
        approval: String,
        /// Who denied and why, or that it timed out.
        reason: String,
    },
    /// The desk could not hold the request (its store failed); the request is denied.
    Unavailable(String),
}

/// Where approval-required requests wait for a person: implemented by the control
/// plane's approval store.
pub trait ApprovalDesk: Send + Sync {
    /// Persists `request` as a pending approval (audited) and waits until it is decided
    /// or its timeout passes.
    fn hold(&self, request: HoldRequest) -> Pin<Box<dyn Future<Output = Held> + Send + '_>>;
}

/// Decides `request` for `task` on a blocking thread, keeping the request for a hold
/// (`None` only if the decision point itself failed, which is a deny).
pub(crate) async fn decide(
    task: &Task,
    request: PolicyRequest,
) -> (Decision, Option<PolicyRequest>) {
    let policy = Arc::clone(&task.policy);
    tokio::task::spawn_blocking(move || {
        let decision = policy.decide(&request);
        (decision, Some(request))
    })
    .await
    .unwrap_or_else(|e| {
        let decision = Decision::Deny {
            reason: DenyReason::Error,
            policies: Vec::new(),
            message: format!("the decision point failed: {e}"),
        };
        (decision, None)
    })
}

/// Holds an approval-required `decision` (HTTP or MCP) at the task's desk, if it has
/// one: returns the decision the request proceeds with and the approval's id. Other
/// decisions, and tasks without a desk, pass through unchanged. `summary` (what the
/// approver is shown) is only built when the request is held.
pub(crate) async fn hold_for_approval(
    task: &Arc<Task>,
    decision: Decision,
    request: Option<PolicyRequest>,
    action: &str,
    resource: impl FnOnce() -> String,
    summary: impl FnOnce() -> Map<String, Value>,
) -> (Decision, Option<String>) {
    let (Some(desk), Some(request)) = (task.approvals.as_ref(), request) else {
        return (decision, None);
    };
    let Decision::ApprovalRequired {
        policies,
        prompt,
        timeout,
        message,
    } = decision
    else {
        return (decision, None);
    };
    let mut summary = summary();
    if let Some(body) = &request.context.body {
        // What the decision was made on (an amount, a recipient): what a person
        // needs to judge the request.
        summary.insert("body".into(), body.clone());
    }
    if let Some(arguments) = &request.context.arguments {
        summary.insert("arguments".into(), arguments.clone());
    }
    let p = &task.principal;
    let hold = HoldRequest {
        tenant: p.tenant().as_str().to_owned(),
        user: p.user().as_str().to_owned(),
        task: p.current().task.as_str().to_owned(),
        agent: p.current().agent.as_str().to_owned(),
        action: action.to_owned(),
        resource: resource(),
        policies: policies.clone(),
        reason: if prompt.is_empty() { message } else { prompt },
        summary,
        timeout,
        digest: hex::encode(request.digest()),
    };
    let held = tokio::select! {
        held = desk.hold(hold) => held,
        () = task.wait_closed() => Held::Unavailable("the task ended while the request was held".into()),
    };
    match held {
        Held::Approved { approval, approver } => {
            let policy = Arc::clone(&task.policy);
            let decision = tokio::task::spawn_blocking(move || policy.decide_approved(&request))
                .await
                .unwrap_or_else(|e| Decision::Deny {
                    reason: DenyReason::Error,
                    policies: Vec::new(),
                    message: format!("the decision point failed: {e}"),
                });
            let decision = match decision {
                Decision::Allow {
                    policies: mut allowed,
                    capabilities,
                    message,
                } => {
                    allowed.extend(policies);
                    Decision::Allow {
                        policies: allowed,
                        capabilities,
                        message: format!("{message}; approved by `{approver}`"),
                    }
                }
                other => other,
            };
            (decision, Some(approval))
        }
        Held::Denied { approval, reason } => (
            Decision::Deny {
                reason: DenyReason::Forbidden,
                policies,
                message: format!("approval `{approval}` denied: {reason}"),
            },
            Some(approval),
        ),
        Held::Unavailable(why) => (
            Decision::Deny {
                reason: DenyReason::Error,
                policies,
                message: format!("the request needs approval and cannot be held: {why}"),
            },
            None,
        ),
    }
}
