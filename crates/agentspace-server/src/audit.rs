//! Recording the control plane's own actions in the tenant's audit log.

use agentspace_audit::{AuditLog, Receipt};
use agentspace_core::{AuditEvent, AuditKind, Name};

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
    let mut e = AuditEvent::new(event.tenant, event.kind, event.action);
    e.resource = Some(event.resource);
    e.user = Some(event.by.to_owned());
    e.details = event.details;
    // The host's own commands say `via: host`; everything else came through the API.
    e.details
        .entry("via")
        .or_insert_with(|| serde_json::Value::from("control-plane"));
    Ok(log.append(e)?)
}

/// A JSON object from pairs, for event details.
pub(crate) fn details<const N: usize>(
    pairs: [(&str, serde_json::Value); N],
) -> serde_json::Map<String, serde_json::Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
