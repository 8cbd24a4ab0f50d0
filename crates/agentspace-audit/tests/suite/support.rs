//! Helpers shared by the suite.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use agentspace_audit::{AuditError, AuditLog, AuditOptions, VerifyOptions};
use agentspace_core::{AuditDecision, AuditEvent, AuditKind, Name};

pub(crate) fn tenant(name: &str) -> Name {
    Name::new(name).unwrap()
}

/// A realistic gateway decision event.
pub(crate) fn http_event(tenant_name: &str, i: u64) -> AuditEvent {
    let mut e = AuditEvent::new(&tenant(tenant_name), AuditKind::HttpRequest, "GET");
    e.task = Some(format!("task-{}", i % 3));
    e.user = Some("alice@example.com".to_owned());
    e.agent = Some("credit-officer".to_owned());
    e.delegation = vec![
        "user:alice@example.com".to_owned(),
        "agent:credit-officer".to_owned(),
    ];
    e.resource = Some(format!("https://api.example.com/v1/items/{i}"));
    e.decision = Some(if i % 5 == 4 {
        AuditDecision::Deny
    } else {
        AuditDecision::Allow
    });
    e.policies = vec!["policy0".to_owned()];
    if i % 5 == 4 {
        e.reason = Some("egress to `api.example.com` is not allowed for DELETE".to_owned());
    }
    e.request.insert("method".to_owned(), "GET".into());
    e.request
        .insert("authorization".to_owned(), "[redacted]".into());
    e.args_digest = Some(format!("sha256:{:064x}", i));
    e.status = Some(200);
    e.bytes = Some(1000 + i);
    e.latency_us = Some(1500);
    e
}

pub(crate) fn db_path(state: &Path) -> PathBuf {
    state.join("audit").join("audit.db")
}

/// Opens the log with small checkpoint intervals so tests see several checkpoints.
pub(crate) fn open_small(state: &Path) -> AuditLog {
    AuditLog::open_with(
        state,
        None,
        AuditOptions {
            checkpoint_every: 8,
            ..AuditOptions::default()
        },
    )
    .unwrap()
}

pub(crate) fn append_n(log: &AuditLog, tenant_name: &str, n: u64) {
    let events = (0..n).map(|i| http_event(tenant_name, i)).collect();
    log.append_batch(events).unwrap();
}

/// Verifies everything with the state directory's keys.
pub(crate) fn verify(log: &AuditLog) -> Result<Vec<agentspace_audit::VerifiedTenant>, AuditError> {
    log.verify(&VerifyOptions::default())
}

/// The first bad sequence number verify reports, or panics if verify passes.
pub(crate) fn first_bad(log: &AuditLog, options: &VerifyOptions) -> (Option<u64>, String) {
    match log.verify(options) {
        Err(AuditError::Tampered(f)) => (f.seq, f.problem),
        other => panic!("verify should have failed, got {other:?}"),
    }
}

/// A raw connection for tampering, with the append-only triggers dropped by hand as an
/// attacker with file access would.
pub(crate) fn tamper_conn(state: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db_path(state)).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete;
         DROP TRIGGER audit_checkpoints_no_update; DROP TRIGGER audit_checkpoints_no_delete;",
    )
    .unwrap();
    conn
}

/// Runs this test binary again as a child that executes `children::child_main`
/// in `mode` against `state`.
pub(crate) fn child(mode: &str, state: &Path, arg: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "suite::children::child_main",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("AGENTSPACE_AUDIT_CHILD", mode)
    .env("AGENTSPACE_AUDIT_CHILD_STATE", state)
    .env("AGENTSPACE_AUDIT_CHILD_ARG", arg)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    cmd
}
