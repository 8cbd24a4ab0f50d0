//! Recording the control plane's own actions in the tenant's audit log.

use agentspace_audit::{AuditLog, Receipt};
use agentspace_core::{AuditDecision, AuditEvent, AuditKind, Name};

use crate::error::ServerError;

/// One administrative event: who did what to which resource.
pub(crate) struct AdminEvent<'a> {
    pub(crate) tenant: &'a Name,
    pub(crate) kind: AuditKind,
    pub(crate) action: &'a str,
    pub(crate) resource: String,
    /// The control-plane user who acted.
    pub(crate) by: &'a str,
    pub(crate) details: serde_json::Map<String, serde_json::Value>,
}

/// Appends `event`; returns only once it is durable. An error means it was NOT
/// recorded, and the caller must not make (or must undo) the change.
pub(crate) fn record(log: &AuditLog, event: AdminEvent<'_>) -> Result<Receipt, ServerError> {
    Ok(log.append(to_event(event))?)
}

/// Appends `event` as a refused attempt (decision `deny`, with `reason`): an attack on
/// record, though nothing changed.
pub(crate) fn record_refusal(
    log: &AuditLog,
    event: AdminEvent<'_>,
    reason: &str,
) -> Result<Receipt, ServerError> {
    let mut e = to_event(event);
    e.decision = Some(AuditDecision::Deny);
    e.reason = Some(reason.to_owned());
    Ok(log.append(e)?)
}

fn to_event(event: AdminEvent<'_>) -> AuditEvent {
    let mut e = AuditEvent::new(event.tenant, event.kind, event.action);
    e.resource = Some(event.resource);
    e.user = Some(event.by.to_owned());
    e.details = event.details;
    // The host's own commands say `via: host`; everything else came through the API.
    e.details
        .entry("via")
        .or_insert_with(|| serde_json::Value::from("control-plane"));
    e
}

/// A JSON object from pairs, for event details.
pub(crate) fn details<const N: usize>(
    pairs: [(&str, serde_json::Value); N],
) -> serde_json::Map<String, serde_json::Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
