//! The store itself: versioned migrations on both backends, and on PostgreSQL the
//! control role that may do no more than the server needs.

use std::time::Duration;

use agentspace_core::Name;
use agentspace_server::ApprovalState;
use pretty_assertions::assert_eq;
use serde_json::json;

use super::approvals::context;
use super::harness::{Backend, Options, Place, TestServer, postgres_available};

/// A control database as the server made it before schema versions (its tables as they
/// were, with a pending approval and an announced one) is taken up and migrated on open.
#[test]
fn a_sqlite_database_from_before_versions_is_migrated_on_open() {
    let place = Place::new(Backend::Sqlite);
    let dir = place.state().join("server");
    std::fs::create_dir_all(&dir).unwrap();
    let old = rusqlite::Connection::open(dir.join("control.db")).unwrap();
    old.execute_batch(
        "CREATE TABLE tenant (name TEXT PRIMARY KEY NOT NULL, created_at INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE user (tenant TEXT NOT NULL REFERENCES tenant(name), name TEXT NOT NULL, roles TEXT NOT NULL,
           created_at INTEGER NOT NULL, PRIMARY KEY (tenant, name)) WITHOUT ROWID;
         CREATE TABLE token (id TEXT PRIMARY KEY NOT NULL, tenant TEXT NOT NULL, user TEXT NOT NULL, hash TEXT NOT NULL,
           label TEXT NOT NULL, created_at INTEGER NOT NULL,
           FOREIGN KEY (tenant, user) REFERENCES user(tenant, name) ON DELETE CASCADE) WITHOUT ROWID;
         CREATE TABLE definition (tenant TEXT NOT NULL REFERENCES tenant(name), name TEXT NOT NULL, version INTEGER NOT NULL,
           digest TEXT NOT NULL, text TEXT NOT NULL, registered_by TEXT NOT NULL, registered_at INTEGER NOT NULL,
           PRIMARY KEY (tenant, name, version)) WITHOUT ROWID;
         CREATE TABLE approval (id TEXT PRIMARY KEY NOT NULL, tenant TEXT NOT NULL, requester TEXT NOT NULL, task TEXT,
           agent TEXT, context TEXT NOT NULL, four_eyes INTEGER NOT NULL, state TEXT NOT NULL, approver TEXT,
           comment TEXT, requested_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, decided_at INTEGER) WITHOUT ROWID;
         CREATE INDEX approval_pending ON approval (tenant, state, requested_at);
         CREATE TABLE approval_use (id TEXT PRIMARY KEY NOT NULL, used_at INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE approval_announced (id TEXT PRIMARY KEY NOT NULL, at INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE session (hash TEXT PRIMARY KEY NOT NULL, token_id TEXT NOT NULL REFERENCES token(id) ON DELETE CASCADE,
           csrf TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL) WITHOUT ROWID;",
    )
    .unwrap();
    let mut held = context("acme", "bob", true, 600);
    held.request.insert("digest".into(), "d-old".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    old.execute(
        "INSERT INTO approval (id, tenant, requester, task, agent, context, four_eyes, state, requested_at, expires_at)
         VALUES ('0123456789abcdef0123456789abcdef', 'acme', 'bob', ?1, 'credit-officer', ?2, 1, 'pending', ?3, ?4)",
        rusqlite::params![held.task, serde_json::to_string(&held).unwrap(), now, now + 600_000],
    )
    .unwrap();
    old.execute(
        "INSERT INTO approval_announced (id, at) VALUES ('0123456789abcdef0123456789abcdef', ?1)",
        [now],
    )
    .unwrap();
    drop(old);

    let server = TestServer::start_in(place, Options::default());
    let admin = server.bootstrap("acme", "alice");
    let pending = admin.get("/v1/approvals").json();
    assert_eq!(pending[0]["id"], "0123456789abcdef0123456789abcdef");
    // The digest moved into its own column: a retry of the held request finds it.
    use agentspace_gateway::{ApprovalDesk, Held};
    let r = admin.post(
        "/v1/approvals/0123456789abcdef0123456789abcdef/approve",
        json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.error_message());
    let mut retry = super::approvals::held_request("d-old");
    retry.user = "bob".to_owned();
    let held = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(10), server.approvals.hold(retry)).await
        })
        .unwrap();
    assert_eq!(
        held,
        Held::Approved {
            approval: "0123456789abcdef0123456789abcdef".to_owned(),
            approver: "alice".to_owned()
        }
    );
    let db = rusqlite::Connection::open(server.state().join("server/control.db")).unwrap();
    let versions: Vec<i64> = db
        .prepare("SELECT version FROM control_schema ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, [1, 2, 3, 4]);
    let notice: (String, String) = db
        .query_row("SELECT hook, state FROM approval_notice", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(notice, ("server".to_owned(), "delivered".to_owned()));
}

#[test]
fn postgres_needs_the_migration_and_it_is_idempotent() {
    let Some(db) = agentspace_test_support::TestDatabase::new("ctl_unmigrated") else {
        return;
    };
    let url = db.url();
    let state = tempfile::tempdir().unwrap();
    let tenant = Name::new("acme").unwrap();
    let err = agentspace_server::bootstrap_admin(state.path(), Some(&url), None, &tenant, "alice")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("run `agentspace server migrate --database-url URL`"),
        "{err}"
    );
    assert_eq!(
        agentspace_server::migrate(&url, None).unwrap(),
        [1, 2, 3, 4]
    );
    assert_eq!(
        agentspace_server::migrate(&url, None).unwrap(),
        Vec::<i64>::new()
    );
    agentspace_server::bootstrap_admin(state.path(), Some(&url), None, &tenant, "alice").unwrap();
    // A database url that is not PostgreSQL is refused with the fix.
    let err = agentspace_server::bootstrap_admin(
        state.path(),
        Some("mysql://root@localhost/x"),
        None,
        &tenant,
        "alice",
    )
    .unwrap_err();
    assert!(err.to_string().contains("is not `postgres://...`"), "{err}");
}

/// The server's login role holds the control role and the audit writer role, and with
/// them it cannot erase an approval, rewrite a definition, change the schema or touch the
/// audit log except by appending.
#[test]
fn the_control_role_cannot_erase_rewrite_or_alter() {
    if !postgres_available() {
        return;
    }
    let server = TestServer::start(Backend::Postgres);
    let admin = server.bootstrap("acme", "alice");
    let r = admin.post(
        "/v1/definitions",
        json!({"definition": super::harness::definition("acme", "writer", "64Mi")}),
    );
    assert_eq!(r.status, 201);
    let id = server
        .approvals
        .request(context("acme", "bob", true, 600))
        .unwrap();
    let place = server.place();
    let mut role =
        postgres::Client::connect(&place.database_url().unwrap(), postgres::NoTls).unwrap();
    for sql in [
        "DELETE FROM approval",
        "UPDATE definition SET text = 'rewritten'",
        "DELETE FROM definition",
        "UPDATE tenant SET name = 'other'",
        "DELETE FROM approval_use",
        "UPDATE control_schema SET version = 99",
        "DROP TABLE approval",
        "ALTER TABLE approval ADD COLUMN x TEXT",
        "TRUNCATE token",
        "UPDATE audit_events SET kind = 'loop'",
        "DELETE FROM audit_events",
    ] {
        let err = role.batch_execute(sql).unwrap_err();
        let code = err.as_db_error().map(|d| d.code().code().to_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
    }
    // What it may do, it does through the server; the records stand.
    let mut owner = place.pg().unwrap().owner();
    let n: i64 = owner
        .query_one("SELECT count(*) FROM approval WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let a = server
        .approvals
        .get(&Name::new("acme").unwrap(), &id)
        .unwrap();
    assert_eq!(a.state, ApprovalState::Pending);
    assert_eq!(admin.get("/v1/definitions").json()[0]["version"], 1);
}
