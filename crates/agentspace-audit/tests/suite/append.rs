//! Appending: receipts, concurrency, checkpoints, key rotation and failing closed.

use agentspace_audit::{AuditError, AuditLog, AuditOptions, VerifyOptions};
use agentspace_core::{AuditEvent, AuditKind};
use pretty_assertions::assert_eq;

use super::support::{append_n, db_path, http_event, open_small, tenant, verify};

#[test]
fn receipts_number_each_tenant_from_zero_and_the_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    let a0 = log.append(http_event("acme", 0)).unwrap();
    let b0 = log.append(http_event("globex", 0)).unwrap();
    let a1 = log.append(http_event("acme", 1)).unwrap();
    assert_eq!((a0.seq, b0.seq, a1.seq), (0, 0, 1));
    assert_eq!(a0.tenant, "acme");
    assert!(a1.time >= a0.time);
    let report = verify(&log).unwrap();
    let summary: Vec<(String, u64)> = report
        .iter()
        .map(|t| (t.tenant.clone(), t.events))
        .collect();
    assert_eq!(
        summary,
        vec![("acme".to_owned(), 2), ("globex".to_owned(), 1)]
    );
    assert_eq!(report[0].head, a1.hash);
}

#[test]
fn many_threads_share_group_commits_and_keep_one_gap_free_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_small(dir.path());
    std::thread::scope(|s| {
        for t in 0..8 {
            let log = log.clone();
            s.spawn(move || {
                for i in 0..40 {
                    if i % 4 == 0 {
                        log.append_batch(
                            (0..3)
                                .map(|j| http_event("acme", t * 100 + i + j))
                                .collect(),
                        )
                        .unwrap();
                    } else {
                        log.append(http_event("acme", t * 100 + i)).unwrap();
                    }
                }
            });
        }
    });
    let report = verify(&log).unwrap();
    assert_eq!(report[0].events, 8 * (30 + 10 * 3));
    assert!(report[0].checkpoints >= 1);
}

/// Polls `future` on this thread, parking between wake-ups (the audit crate needs no
/// async runtime).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[test]
fn awaited_appends_are_durable_and_share_the_chain_with_blocking_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_small(dir.path());
    std::thread::scope(|s| {
        for t in 0..4 {
            let log = log.clone();
            s.spawn(move || {
                for i in 0..30 {
                    if t % 2 == 0 {
                        block_on(log.append_async(http_event("acme", t * 100 + i))).unwrap();
                    } else {
                        log.append(http_event("acme", t * 100 + i)).unwrap();
                    }
                }
            });
        }
    });
    // Several awaited at once on one thread, answered by one group commit or more.
    let pending: Vec<_> = (0..10)
        .map(|i| log.append_async(http_event("acme", 1000 + i)))
        .collect();
    let seqs: Vec<u64> = pending
        .into_iter()
        .map(|p| block_on(p).unwrap().seq)
        .collect();
    assert_eq!(seqs, (120..130).collect::<Vec<u64>>());
    let report = verify(&log).unwrap();
    assert_eq!(report[0].events, 130);
    // An invalid event fails at once, nothing recorded.
    let mut bad = http_event("acme", 0);
    bad.tenant = "not a tenant".to_owned();
    assert!(matches!(
        block_on(log.append_async(bad)),
        Err(AuditError::InvalidEvent(_))
    ));
    assert_eq!(verify(&log).unwrap()[0].events, 130);
}

#[test]
fn a_batch_is_sealed_in_order_with_consecutive_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    let receipts = log
        .append_batch((0..10).map(|i| http_event("acme", i)).collect())
        .unwrap();
    let seqs: Vec<u64> = receipts.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    let stored = log.events_from("acme", 0, 100).unwrap();
    assert_eq!(stored.len(), 10);
    assert_eq!(
        stored[3].event.resource.as_deref(),
        Some("https://api.example.com/v1/items/3")
    );
    assert_eq!(stored[3].hash, receipts[3].hash);
}

#[test]
fn checkpoints_are_written_every_n_events_and_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_small(dir.path());
    for i in 0..20 {
        log.append(http_event("acme", i)).unwrap();
    }
    let cp = log.checkpoint(&tenant("acme")).unwrap();
    assert_eq!(cp.checkpoint.size, 20);
    assert_eq!(cp.checkpoint.tenant, "acme");
    // Nothing new: the same checkpoint comes back.
    assert_eq!(log.checkpoint(&tenant("acme")).unwrap(), cp);
    let report = verify(&log).unwrap();
    assert_eq!(report[0].root, cp.checkpoint.root);
    assert!(
        report[0].checkpoints >= 3,
        "sizes 1, 8, 16 and 20 at least: {report:?}"
    );
}

#[test]
fn idle_tenants_get_a_checkpoint_after_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let options = AuditOptions {
        checkpoint_every: 1_000_000,
        checkpoint_interval: std::time::Duration::from_millis(50),
        ..AuditOptions::default()
    };
    let log = AuditLog::open_with(dir.path(), None, options).unwrap();
    log.append(http_event("acme", 0)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    log.append(http_event("acme", 1)).unwrap();
    // Wait (bounded) for the idle writer to cover event 1.
    let conn = rusqlite::Connection::open(db_path(dir.path())).unwrap();
    let mut covered = 0;
    for _ in 0..200 {
        covered = conn
            .query_row("SELECT max(size) FROM audit_checkpoints", [], |r| r.get(0))
            .unwrap();
        if covered == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert_eq!(covered, 2);
}

#[test]
fn database_triggers_refuse_update_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    append_n(&log, "acme", 3);
    log.checkpoint(&tenant("acme")).unwrap();
    let conn = rusqlite::Connection::open(db_path(dir.path())).unwrap();
    for sql in [
        "UPDATE audit_events SET kind = 'loop' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 2",
        "UPDATE audit_checkpoints SET size = 1",
        "DELETE FROM audit_checkpoints",
    ] {
        let err = conn.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    verify(&log).unwrap();
}

#[test]
fn key_rotation_is_recorded_and_both_keys_verify() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    append_n(&log, "acme", 3);
    let rotation = log.rotate_key(&tenant("acme")).unwrap();
    assert_eq!(rotation.seq, 3);
    append_n(&log, "acme", 2);
    let events = log.events_from("acme", 0, 10).unwrap();
    let rot = &events[3].event;
    assert_eq!(rot.kind, AuditKind::KeyRotation);
    assert_eq!(
        rot.kid, events[0].event.kid,
        "the rotation is signed by the old key"
    );
    assert_eq!(rot.details["new_kid"], events[4].event.kid.as_str());
    assert_ne!(events[4].event.kid, events[0].event.kid);
    let jwks = log.public_jwks(&tenant("acme")).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    verify(&log).unwrap();
}

#[test]
fn keys_are_private_files_in_the_tenant_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    let r = log.append(http_event("acme", 0)).unwrap();
    let kid = log.events_from("acme", r.seq, 1).unwrap()[0]
        .event
        .kid
        .clone();
    let key_dir = dir.path().join("audit/keys/acme");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key_dir), 0o700);
    assert_eq!(mode(&key_dir.join(format!("{kid}.key.pem"))), 0o600);
    assert_eq!(
        std::fs::read_to_string(key_dir.join("current")).unwrap(),
        kid
    );
}

#[test]
fn bad_events_fail_closed_and_do_not_consume_a_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    log.append(http_event("acme", 0)).unwrap();
    let mut bad = http_event("acme", 1);
    bad.request
        .insert("huge".to_owned(), serde_json::json!(u64::MAX));
    let err = log.append(bad).unwrap_err();
    assert!(matches!(err, AuditError::InvalidEvent(_)), "{err}");
    assert!(err.to_string().contains("would be rounded"), "{err}");
    // Fractions are fine: they have an RFC 8785 form.
    let mut ratio = http_event("acme", 1);
    ratio
        .details
        .insert("ratio".to_owned(), serde_json::json!(0.5));
    assert_eq!(log.append(ratio).unwrap().seq, 1);
    let mut bad_tenant = http_event("acme", 1);
    bad_tenant.tenant = "../etc".to_owned();
    assert!(matches!(
        log.append(bad_tenant),
        Err(AuditError::InvalidEvent(_))
    ));
    // The refused events took no sequence number.
    assert_eq!(log.append(http_event("acme", 2)).unwrap().seq, 2);
    verify(&log).unwrap();
}

#[test]
fn an_unwritable_store_is_an_error_not_a_silent_drop() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    log.append(http_event("acme", 0)).unwrap();
    // Break the store underneath the writer.
    let conn = rusqlite::Connection::open(db_path(dir.path())).unwrap();
    conn.execute_batch("DROP TABLE audit_events").unwrap();
    let err = log.append(http_event("acme", 1)).unwrap_err();
    assert!(matches!(err, AuditError::Store { .. }), "{err}");
    assert!(err.to_string().contains("audit_events"), "{err}");
}

#[test]
fn an_unreachable_postgres_fails_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let url = "postgres://nobody:secret@127.0.0.1:1/audit?connect_timeout=2";
    let err = AuditLog::open_url(dir.path(), url).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("cannot connect"), "{msg}");
    assert!(
        !msg.contains("secret"),
        "the password must not appear in errors: {msg}"
    );
}

#[test]
fn task_events_carry_lifecycle_details() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    let mut start = AuditEvent::new(&tenant("acme"), AuditKind::TaskStart, "start");
    start.task = Some("01jd0000000000000000000000".to_owned());
    start
        .details
        .insert("definition_digest".to_owned(), "sha256:ab".into());
    start.details.insert(
        "limits".to_owned(),
        serde_json::json!({"memory_bytes": 268435456, "pids": 64}),
    );
    let mut exit = AuditEvent::new(&tenant("acme"), AuditKind::TaskExit, "exit");
    exit.task = start.task.clone();
    exit.status = Some(137);
    exit.details
        .insert("limits_hit".to_owned(), serde_json::json!(["memory"]));
    log.append(start).unwrap();
    log.append(exit).unwrap();
    let kinds: Vec<_> = log
        .events_from("acme", 0, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind)
        .collect();
    assert_eq!(kinds, vec![AuditKind::TaskStart, AuditKind::TaskExit]);
    log.verify(&VerifyOptions {
        tenant: Some("acme".to_owned()),
        ..VerifyOptions::default()
    })
    .unwrap();
}

#[test]
fn the_log_handle_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + Clone>() {}
    shareable::<AuditLog>();
}
