//! Export formats: JSON Lines (the events exactly as hashed, with hash and signature)
//! and OCSF API Activity events (class 6003) for SIEMs.

use agentspace_core::{AuditDecision, AuditKind, parse_audit_time};
use serde_json::{Value, json};

use crate::query::Entry;

/// One JSON Lines record: `{"event": <the event>, "hash": hex, "sig": hex}`.
/// Canonicalising `event` with RFC 8785 gives back the exact bytes that were hashed.
pub fn to_jsonl(entry: &Entry) -> Value {
    json!({ "event": entry.event, "hash": entry.hash, "sig": entry.sig })
}

/// OCSF 1.1 API Activity (class_uid 6003), with the whole event under `unmapped`.
pub fn to_ocsf(entry: &Entry) -> Value {
    let e = &entry.event;
    let activity_id = match e.action.to_ascii_uppercase().as_str() {
        "POST" | "CREATE" | "START" => 1,
        "GET" | "HEAD" | "READ" | "QUERY" | "LOOKUP" => 2,
        "PUT" | "PATCH" | "UPDATE" | "ROTATE" => 3,
        "DELETE" | "REVOKE" => 4,
        _ => 99,
    };
    let (status_id, status) = match e.decision {
        Some(AuditDecision::Deny) => (2, "Failure"),
        Some(AuditDecision::Allow) => (1, "Success"),
        Some(AuditDecision::ApprovalRequired) | None => (0, "Unknown"),
    };
    let severity_id = match (e.decision, e.kind) {
        (Some(AuditDecision::Deny), _) => 3,
        (_, AuditKind::BudgetExhausted | AuditKind::Loop | AuditKind::Revocation) => 3,
        (_, AuditKind::KeyRotation | AuditKind::PolicyChange | AuditKind::DefinitionChange) => 2,
        _ => 1,
    };
    let time_ms = parse_audit_time(&e.time).map_or(0, |ns| ns / 1_000_000);
    let mut out = json!({
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "type_uid": 600_300 + activity_id,
        "time": time_ms,
        "severity_id": severity_id,
        "status_id": status_id,
        "status": status,
        "message": e.reason.clone().unwrap_or_else(|| format!("{} {}", e.kind.as_str(), e.action)),
        "metadata": {
            "version": "1.1.0",
            "product": { "name": "Agent Space", "vendor_name": "Agent Space" },
            "uid": format!("{}:{}", e.tenant, e.seq),
            "correlation_uid": e.task,
            "tenant_uid": e.tenant,
            "log_name": "agentspace-audit",
        },
        "actor": {
            "user": { "name": e.user, "uid": e.user },
            "app_name": e.agent,
            "session": { "uid": e.task },
        },
        "api": { "operation": e.action, "service": { "name": e.kind.as_str() } },
        "resources": e.resource.as_ref().map(|r| vec![json!({ "name": r })]).unwrap_or_default(),
        "unmapped": { "agentspace": { "event": e, "hash": entry.hash, "sig": entry.sig } },
    });
    if let Some(code) = e.status
        && let Some(obj) = out.as_object_mut()
    {
        obj.insert("status_code".to_owned(), json!(code.to_string()));
    }
    strip_nulls(&mut out);
    out
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}
