//! The PostgreSQL backend against a real server. The admin URL comes from
//! `AGENTSPACE_TEST_POSTGRES_URL` (`.ci/run` sets it); each test gets a fresh database.
//! Under CI (`CI=true`) a missing URL fails the tests instead of skipping them.

use agentspace_audit::{AuditError, AuditLog, VerifyOptions, WRITER_ROLE, migrate_postgres};
use agentspace_test_support::TestDatabase;
use postgres::Client;
use pretty_assertions::assert_eq;

use super::support::{http_event, verify};

/// A migrated database of one test (see `agentspace_test_support`).
struct TestDb(TestDatabase);

impl TestDb {
    fn new() -> Option<Self> {
        let db = TestDatabase::new("audit_test")?;
        migrate_postgres(&db.url()).unwrap();
        Some(Self(db))
    }

    /// A new login role that is a member of the writer role, and its URL.
    fn writer_url(&mut self) -> String {
        self.0.login(&[WRITER_ROLE])
    }

    fn admin(&self) -> Client {
        self.0.owner()
    }
}

#[test]
fn writer_role_appends_and_reads_but_cannot_update_delete_or_truncate() {
    let Some(mut db) = TestDb::new() else { return };
    let url = db.writer_url();
    let state = tempfile::tempdir().unwrap();
    let log = AuditLog::open_url(state.path(), &url).unwrap();
    for i in 0..5 {
        log.append(http_event("acme", i)).unwrap();
    }
    assert_eq!(verify(&log).unwrap()[0].events, 5);
    // A task's events by the index: events 1 and 4 are task-1's.
    let mut seqs = Vec::new();
    let filter = agentspace_audit::Filter {
        tenant: Some("acme".to_owned()),
        task: Some("task-1".to_owned()),
        ..Default::default()
    };
    log.query(&filter, |e| {
        seqs.push(e.event.seq);
        Ok(true)
    })
    .unwrap();
    assert_eq!(seqs, [1, 4]);

    let mut writer = Client::connect(&url, postgres::NoTls).unwrap();
    for sql in [
        "UPDATE audit_events SET kind = 'loop' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
        "TRUNCATE audit_events",
        "UPDATE audit_checkpoints SET size = 0",
        "DELETE FROM audit_checkpoints",
        "DROP TRIGGER audit_events_append_only ON audit_events",
    ] {
        let err = writer.batch_execute(sql).unwrap_err();
        let code = err.as_db_error().map(|d| d.code().code().to_owned());
        // 42501: insufficient_privilege; 42501 too for "must be owner" of the trigger's table.
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
    }
    // Even the owner hits the append-only triggers.
    let err = db
        .admin()
        .batch_execute("DELETE FROM audit_events")
        .unwrap_err();
    assert!(
        err.as_db_error().unwrap().message().contains("append-only"),
        "{err}"
    );
    assert_eq!(verify(&log).unwrap()[0].events, 5);
}

#[test]
fn concurrent_writers_on_separate_connections_keep_one_chain() {
    let Some(mut db) = TestDb::new() else { return };
    let url = db.writer_url();
    let state = tempfile::tempdir().unwrap();
    std::thread::scope(|s| {
        for w in 0..3 {
            let (url, state) = (&url, state.path());
            s.spawn(move || {
                // Each handle is its own connection, like a separate gateway process.
                let log = AuditLog::open_url(state, url).unwrap();
                for i in 0..40 {
                    if i % 10 == 0 {
                        log.append_batch(
                            (0..5)
                                .map(|j| http_event("acme", w * 100 + i + j))
                                .collect(),
                        )
                        .unwrap();
                    } else {
                        log.append(http_event("acme", w * 100 + i)).unwrap();
                    }
                }
                log.append(http_event("globex", w)).unwrap();
            });
        }
    });
    let log = AuditLog::open_url(state.path(), &url).unwrap();
    let report = verify(&log).unwrap();
    let counts: Vec<(String, u64)> = report
        .iter()
        .map(|t| (t.tenant.clone(), t.events))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("acme".to_owned(), 3 * (36 + 4 * 5)),
            ("globex".to_owned(), 3)
        ]
    );
    let p = log
        .prove_inclusion(&super::support::tenant("acme"), 17)
        .unwrap();
    assert_eq!(p.tree_size, 3 * 56);
    // Followers start at the end of each chain.
    assert_eq!(log.chain_len("acme").unwrap(), 3 * 56);
    assert_eq!(log.chain_len("globex").unwrap(), 3);
    assert_eq!(log.chain_len("initech").unwrap(), 0);
}

#[test]
fn tampering_in_postgres_is_detected() {
    let Some(mut db) = TestDb::new() else { return };
    let url = db.writer_url();
    let state = tempfile::tempdir().unwrap();
    let log = AuditLog::open_url(state.path(), &url).unwrap();
    for i in 0..6 {
        log.append(http_event("acme", i)).unwrap();
    }
    let mut admin = db.admin();
    admin
        .batch_execute(
            "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only;
             UPDATE audit_events SET event = convert_to(replace(convert_from(event, 'UTF8'), 'alice', 'mallory'), 'UTF8') WHERE seq = 4;",
        )
        .unwrap();
    match log.verify(&VerifyOptions::default()) {
        Err(AuditError::Tampered(f)) => assert_eq!(f.seq, Some(4), "{}", f.problem),
        other => panic!("expected tampering at 4, got {other:?}"),
    }
}

#[test]
fn open_url_without_migration_says_what_to_do() {
    let Some(fresh) = TestDatabase::new("audit_empty") else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let err = AuditLog::open_url(state.path(), &fresh.url())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("agentspace audit migrate"),
        "{err}"
    );
}
