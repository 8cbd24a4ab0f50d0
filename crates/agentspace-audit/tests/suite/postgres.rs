//! The PostgreSQL backend against a real server. The admin URL comes from
//! `AGENTSPACE_TEST_POSTGRES_URL` (`.ci/run` sets it); each test gets a fresh database.
//! Under CI (`CI=true`) a missing URL fails the tests instead of skipping them.

use agentspace_audit::{AuditError, AuditLog, VerifyOptions, WRITER_ROLE, migrate_postgres};
use postgres::{Client, NoTls};
use pretty_assertions::assert_eq;

use super::support::{http_event, verify};

struct TestDb {
    admin_url: String,
    name: String,
    roles: Vec<String>,
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// `url` with its database name replaced, and optionally its user and password.
fn with_db(url: &str, db: &str, login: Option<(&str, &str)>) -> String {
    let (base, _) = url.rsplit_once('/').unwrap();
    let base = match login {
        Some((user, pass)) => {
            let (scheme, rest) = base.split_once("://").unwrap();
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{user}:{pass}@{host}")
        }
        None => base.to_owned(),
    };
    format!("{base}/{db}")
}

impl TestDb {
    fn new() -> Option<Self> {
        let Ok(admin_url) = std::env::var("AGENTSPACE_TEST_POSTGRES_URL") else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "AGENTSPACE_TEST_POSTGRES_URL is not set: CI must start PostgreSQL and set it (`. scripts/services` does)"
                );
            }
            eprintln!(
                "skipping: set AGENTSPACE_TEST_POSTGRES_URL=postgres://USER:PASS@127.0.0.1/postgres to run PostgreSQL tests"
            );
            return None;
        };
        let name = unique("audit_test");
        let mut admin = Client::connect(&admin_url, NoTls).unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let db = Self {
            admin_url,
            name,
            roles: Vec::new(),
        };
        migrate_postgres(&db.url()).unwrap();
        Some(db)
    }

    /// The URL of the test database as the admin.
    fn url(&self) -> String {
        with_db(&self.admin_url, &self.name, None)
    }

    /// A new login role that is a member of the writer role, and its URL.
    fn writer_url(&mut self) -> String {
        let role = unique("audit_writer");
        let mut admin = Client::connect(&self.url(), NoTls).unwrap();
        admin
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN PASSWORD 'writer-pass' IN ROLE {WRITER_ROLE}"
            ))
            .unwrap();
        self.roles.push(role.clone());
        with_db(&self.admin_url, &self.name, Some((&role, "writer-pass")))
    }

    fn admin(&self) -> Client {
        Client::connect(&self.url(), NoTls).unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&self.admin_url, NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
            for role in &self.roles {
                let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}"));
            }
        }
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

    let mut writer = Client::connect(&url, NoTls).unwrap();
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
    let Some(db) = TestDb::new() else { return };
    let fresh = unique("audit_empty");
    db.admin()
        .batch_execute(&format!("CREATE DATABASE {fresh}"))
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let err = AuditLog::open_url(state.path(), &with_db(&db.admin_url, &fresh, None))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("agentspace audit migrate"),
        "{err}"
    );
    db.admin()
        .batch_execute(&format!("DROP DATABASE {fresh}"))
        .unwrap();
}
