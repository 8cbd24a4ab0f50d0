//! Announcing approval requests to a webhook with a Slack-compatible JSON body
//! (`{"text": ...}`, plus the approval itself under `approval`), so a team channel sees
//! what waits. Every pending approval is announced once, whichever process held it (the
//! server, or `agentspace run` on the same state directory); a failed delivery is tried
//! again on the next round.

use crate::approvals::{Approval, ApprovalStore};
use crate::client::Client;

/// The webhook body for `approval`.
pub(crate) fn body(approval: &Approval) -> serde_json::Value {
    let c = &approval.context;
    let text = format!(
        "Approval needed in tenant `{}`: `{}`{} wants {} {}{}. Until {}. Decide with `agentspace approvals approve|deny {}` or in the console.",
        c.tenant,
        c.user,
        c.agent
            .as_deref()
            .map(|a| format!(" (agent `{a}`)"))
            .unwrap_or_default(),
        c.action,
        c.resource,
        c.reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default(),
        approval.expires_at,
        approval.id
    );
    serde_json::json!({ "text": text, "approval": approval })
}

/// Announces every pending approval not yet announced; returns how many were delivered.
pub(crate) fn announce(store: &ApprovalStore, client: &Client) -> usize {
    let Ok(pending) = store.unannounced(100) else {
        return 0;
    };
    let mut delivered = 0;
    for approval in pending {
        let ok = client
            .post("", &body(&approval))
            .is_ok_and(|r| (200..300).contains(&r.status));
        if ok && store.announced(&approval.id).is_ok() {
            delivered += 1;
        }
    }
    delivered
}
