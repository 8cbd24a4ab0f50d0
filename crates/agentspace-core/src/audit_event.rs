//! The audit event schema, version 1 (documented field by field in docs/audit-format.md).
//!
//! An [`AuditEvent`] is what every part of Agent Space hands to the audit log: the gateway
//! for each decision, `agentspace run` for task start and exit, the policy and identity
//! areas for revocations, policy changes and key rotations. The log fills in the fields it
//! owns (`v`, `seq`, `time`, `kid`) when it seals the event into the tenant's chain.
//!
//! The wire form is JSON with absent optional fields omitted, canonicalised with RFC 8785
//! before it is hashed; numbers are integers only (no floats), so every value has one
//! exact canonical spelling.

use serde::{Deserialize, Serialize};

use crate::ids::Name;

/// The schema version written into every event's `v` field.
pub const AUDIT_SCHEMA_VERSION: u32 = 1;

/// What happened. Deliberately exhaustive: a new kind is a schema change that callers
/// and the docs must see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A task's cell is about to start (written before the cell starts).
    TaskStart,
    /// A task's cell exited (exit status and limits hit in `details`).
    TaskExit,
    /// An outbound HTTP(S) request through the gateway.
    HttpRequest,
    /// A DNS lookup through the gateway.
    DnsLookup,
    /// An MCP tool call through the gateway.
    McpCall,
    /// An action was held for human approval.
    ApprovalRequested,
    /// A held action was approved.
    ApprovalGranted,
    /// A held action was denied by a person or timed out.
    ApprovalDenied,
    /// A budget (tokens, money, requests) ran out.
    BudgetExhausted,
    /// The loop breaker stopped a repeating action.
    Loop,
    /// A token, task or credential was revoked.
    Revocation,
    /// A policy was added, changed or removed.
    PolicyChange,
    /// An agent definition was added, changed or removed.
    DefinitionChange,
    /// A signing key (audit or identity) was rotated.
    KeyRotation,
}

impl AuditKind {
    /// Every kind, in schema order.
    pub const ALL: [AuditKind; 14] = [
        AuditKind::TaskStart,
        AuditKind::TaskExit,
        AuditKind::HttpRequest,
        AuditKind::DnsLookup,
        AuditKind::McpCall,
        AuditKind::ApprovalRequested,
        AuditKind::ApprovalGranted,
        AuditKind::ApprovalDenied,
        AuditKind::BudgetExhausted,
        AuditKind::Loop,
        AuditKind::Revocation,
        AuditKind::PolicyChange,
        AuditKind::DefinitionChange,
        AuditKind::KeyRotation,
    ];

    /// The wire name (`task_start`, `http_request`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::TaskStart => "task_start",
            AuditKind::TaskExit => "task_exit",
            AuditKind::HttpRequest => "http_request",
            AuditKind::DnsLookup => "dns_lookup",
            AuditKind::McpCall => "mcp_call",
            AuditKind::ApprovalRequested => "approval_requested",
            AuditKind::ApprovalGranted => "approval_granted",
            AuditKind::ApprovalDenied => "approval_denied",
            AuditKind::BudgetExhausted => "budget_exhausted",
            AuditKind::Loop => "loop",
            AuditKind::Revocation => "revocation",
            AuditKind::PolicyChange => "policy_change",
            AuditKind::DefinitionChange => "definition_change",
            AuditKind::KeyRotation => "key_rotation",
        }
    }

    /// Parses a wire name; `None` when it names no kind.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }
}

/// The decision recorded with an event, when there was one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditDecision {
    /// The action was allowed.
    Allow,
    /// The action was denied (`reason` says why).
    Deny,
    /// The action was held until a person approves it.
    ApprovalRequired,
}

impl AuditDecision {
    /// The wire name (`allow`, `deny`, `approval_required`).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditDecision::Allow => "allow",
            AuditDecision::Deny => "deny",
            AuditDecision::ApprovalRequired => "approval_required",
        }
    }

    /// Parses a wire name; `None` when it names no decision.
    pub fn parse(value: &str) -> Option<Self> {
        [
            AuditDecision::Allow,
            AuditDecision::Deny,
            AuditDecision::ApprovalRequired,
        ]
        .into_iter()
        .find(|d| d.as_str() == value)
    }
}

/// One audit event (schema version 1). Optional fields are omitted from the wire form
/// when absent; empty lists and maps are omitted too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// Schema version; set by the log to [`AUDIT_SCHEMA_VERSION`].
    pub v: u32,
    /// Position in the tenant's chain, from 0, gap-free; set by the log.
    pub seq: u64,
    /// UTC time with nanoseconds, `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`; set by the log and
    /// never earlier than the previous event's time.
    pub time: String,
    /// The tenant whose chain holds the event.
    pub tenant: String,
    /// Id of the Ed25519 key that signs the event (RFC 7638 JWK thumbprint); set by the log.
    pub kid: String,
    /// The task the event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The user the agent acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The agent (definition name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The delegation chain, outermost first: who started whom on the user's behalf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delegation: Vec<String>,
    /// What happened.
    pub kind: AuditKind,
    /// The action, e.g. `GET`, `connect`, `tools/call`, `start`.
    pub action: String,
    /// What the action was on, e.g. a URL, host name or MCP tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The decision, for events that record one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<AuditDecision>,
    /// Ids of the policies that determined the decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// Why, in words (always set for a deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A summary of the request with secrets redacted (method, host, path, headers named).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub request: serde_json::Map<String, serde_json::Value>,
    /// `sha256:<hex>` of the request arguments or body, so they can be matched later
    /// without being stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_digest: Option<String>,
    /// The response status (HTTP status, DNS rcode, MCP error code, exit status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    /// Bytes transferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Latency in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// Kind-specific details (definition digest, limits, limits hit, key ids, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl AuditEvent {
    /// A new event for `tenant`; the log fills in `v`, `seq`, `time` and `kid`.
    pub fn new(tenant: &Name, kind: AuditKind, action: impl Into<String>) -> Self {
        Self {
            v: AUDIT_SCHEMA_VERSION,
            seq: 0,
            time: String::new(),
            tenant: tenant.as_str().to_owned(),
            kid: String::new(),
            task: None,
            user: None,
            agent: None,
            delegation: Vec::new(),
            kind,
            action: action.into(),
            resource: None,
            decision: None,
            policies: Vec::new(),
            reason: None,
            request: serde_json::Map::new(),
            args_digest: None,
            status: None,
            bytes: None,
            latency_us: None,
            details: serde_json::Map::new(),
        }
    }
}

/// Formats nanoseconds since the Unix epoch as the event time format,
/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (fixed width, so text order is time order).
pub fn format_audit_time(unix_nanos: u64) -> String {
    let secs = unix_nanos / 1_000_000_000;
    let nanos = unix_nanos % 1_000_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parses the event time format back into nanoseconds since the Unix epoch; `None` when
/// the text is not exactly that format.
pub fn parse_audit_time(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 30 {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u64> {
        let part = text.get(from..to)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let seps = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (29, b'Z'),
    ];
    if !seps.iter().all(|&(i, c)| b.get(i) == Some(&c)) {
        return None;
    }
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss, ns) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 29)?);
    if y < 1970 || !(1..=12).contains(&m) || d == 0 || d > 31 || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let days = days_from_civil(y, m, d)?;
    if civil_from_days(days) != (y, m, d) {
        return None;
    }
    let secs = days
        .checked_mul(86_400)?
        .checked_add(hh * 3600 + mm * 60 + ss)?;
    secs.checked_mul(1_000_000_000)?.checked_add(ns)
}

// Howard Hinnant's civil calendar algorithms, for days since 1970-01-01 (non-negative).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format_round_trips_and_sorts() {
        let t = 1_767_225_600_123_456_789; // 2026-01-01T00:00:00.123456789Z
        let s = format_audit_time(t);
        assert_eq!(s, "2026-01-01T00:00:00.123456789Z");
        assert_eq!(parse_audit_time(&s), Some(t));
        assert_eq!(format_audit_time(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            parse_audit_time("2024-02-29T23:59:59.000000001Z")
                .map(format_audit_time)
                .as_deref(),
            Some("2024-02-29T23:59:59.000000001Z")
        );
        assert_eq!(parse_audit_time("2023-02-29T00:00:00.000000000Z"), None);
        assert_eq!(parse_audit_time("2023-02-28T00:00:00Z"), None);
        assert!(format_audit_time(t) < format_audit_time(t + 1));
    }

    #[test]
    fn optional_fields_are_omitted_and_kinds_round_trip() {
        let tenant = Name::new("acme").unwrap();
        let e = AuditEvent::new(&tenant, AuditKind::TaskStart, "start");
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"v":1,"seq":0,"time":"","tenant":"acme","kid":"","kind":"task_start","action":"start"}"#
        );
        for k in AuditKind::ALL {
            assert_eq!(AuditKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert_eq!(
            AuditDecision::parse("approval_required"),
            Some(AuditDecision::ApprovalRequired)
        );
    }
}
