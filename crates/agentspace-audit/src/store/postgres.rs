//! The scale-out backend: PostgreSQL. Migrations (run by an owner) create the tables,
//! triggers that abort UPDATE, DELETE and TRUNCATE, and the role
//! `agentspace_audit_writer`, which has INSERT and SELECT only. Writers log in as a role
//! that is a member of it. A transaction-scoped advisory lock per tenant serialises
//! writers of one chain across hosts; commits are durable with the server's default
//! `synchronous_commit = on`.

use postgres::{Client, NoTls};
use sha2::{Digest, Sha256};

use super::{CheckpointRow, Head, Row, Store, WriteTx, hash_from, to_i64, to_u64};
use crate::error::AuditError;

/// The role that may only INSERT and SELECT the audit tables.
pub const WRITER_ROLE: &str = "agentspace_audit_writer";

const MIGRATION: &str = "
CREATE TABLE IF NOT EXISTS audit_events (
    tenant  TEXT   NOT NULL,
    seq     BIGINT NOT NULL,
    time_ns BIGINT NOT NULL,
    kind    TEXT   NOT NULL,
    task    TEXT,
    event   BYTEA  NOT NULL,
    hash    BYTEA  NOT NULL,
    sig     BYTEA  NOT NULL,
    PRIMARY KEY (tenant, seq)
);
CREATE INDEX IF NOT EXISTS audit_events_task ON audit_events (tenant, task);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    tenant   TEXT   NOT NULL,
    size     BIGINT NOT NULL,
    body     BYTEA  NOT NULL,
    sig      BYTEA  NOT NULL,
    frontier BYTEA  NOT NULL,
    PRIMARY KEY (tenant, size)
);
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only: % is not allowed', TG_OP;
END $$;
CREATE OR REPLACE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE OR REPLACE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE OR REPLACE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE OR REPLACE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
DO $$ BEGIN
    CREATE ROLE agentspace_audit_writer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
REVOKE ALL ON audit_events, audit_checkpoints FROM PUBLIC;
REVOKE ALL ON audit_events, audit_checkpoints FROM agentspace_audit_writer;
GRANT SELECT, INSERT ON audit_events, audit_checkpoints TO agentspace_audit_writer;
";

/// Advisory lock key that serialises migrations in one database.
const MIGRATION_LOCK: i64 = 0x6167_656e_7473_7061;

pub(crate) struct PostgresStore {
    client: Client,
    display: String,
}

/// A PostgreSQL URL without its password (`postgres://USER@HOST/DB`), for messages and
/// logs.
pub fn display_url(url: &str) -> String {
    match url.parse::<postgres::Config>() {
        Ok(cfg) => {
            let host = cfg
                .get_hosts()
                .first()
                .map(|h| match h {
                    postgres::config::Host::Tcp(name) => name.clone(),
                    postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .unwrap_or_default();
            format!(
                "postgres://{}@{host}/{}",
                cfg.get_user().unwrap_or_default(),
                cfg.get_dbname().unwrap_or_default()
            )
        }
        Err(_) => "postgres://(unparsable url)".to_owned(),
    }
}

fn connect(url: &str) -> Result<Client, AuditError> {
    let display = display_url(url);
    let mut cfg: postgres::Config = url.parse().map_err(|e| AuditError::Store {
        store: display.clone(),
        message: format!("bad connection url: {e}"),
    })?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(std::time::Duration::from_secs(10));
    }
    cfg.connect(NoTls).map_err(|e| AuditError::Store {
        store: display,
        message: format!("cannot connect: {e}; check that the server runs and the url is right"),
    })
}

fn pg_error(store: &str, e: &postgres::Error) -> AuditError {
    let message = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    AuditError::Store {
        store: store.to_owned(),
        message,
    }
}

/// Creates or updates the audit tables, triggers and the writer role. Run it as a role
/// that owns the database; writers then log in as a member of [`WRITER_ROLE`].
pub fn migrate_postgres(url: &str) -> Result<(), AuditError> {
    let display = display_url(url);
    let mut client = connect(url)?;
    let mut tx = client.transaction().map_err(|e| pg_error(&display, &e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(|e| pg_error(&display, &e))?;
    tx.batch_execute(MIGRATION)
        .map_err(|e| pg_error(&display, &e))?;
    tx.commit().map_err(|e| pg_error(&display, &e))
}

impl PostgresStore {
    /// Connects; the tables must exist (see [`migrate_postgres`]).
    pub(crate) fn open(url: &str) -> Result<Self, AuditError> {
        let display = display_url(url);
        let mut client = connect(url)?;
        let exists: bool = client
            .query_one("SELECT to_regclass('audit_events') IS NOT NULL", &[])
            .and_then(|r| r.try_get(0))
            .map_err(|e| pg_error(&display, &e))?;
        if !exists {
            return Err(AuditError::Store {
                store: display,
                message: "the audit tables do not exist: run the migration once as the database owner (`agentspace audit migrate --audit-url URL`)".to_owned(),
            });
        }
        Ok(Self { client, display })
    }
}

fn tenant_lock_key(tenant: &str) -> i64 {
    let digest = Sha256::digest(tenant.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8).unwrap_or(&[0u8; 8]));
    i64::from_be_bytes(first)
}

struct Tx<'a, 'b> {
    tx: &'a mut postgres::Transaction<'b>,
    display: &'a str,
}

fn row_from(r: &postgres::Row) -> Result<Row, postgres::Error> {
    Ok(Row {
        tenant: r.try_get(0)?,
        seq: to_u64(r.try_get(1)?),
        time_ns: to_u64(r.try_get(2)?),
        kind: r.try_get(3)?,
        task: r.try_get(4)?,
        event: r.try_get(5)?,
        hash: r.try_get(6)?,
        sig: r.try_get(7)?,
    })
}

fn checkpoint_from(r: &postgres::Row) -> Result<CheckpointRow, postgres::Error> {
    Ok(CheckpointRow {
        tenant: r.try_get(0)?,
        size: to_u64(r.try_get(1)?),
        body: r.try_get(2)?,
        sig: r.try_get(3)?,
        frontier: r.try_get(4)?,
    })
}

impl WriteTx for Tx<'_, '_> {
    fn head(&mut self, tenant: &str) -> Result<Option<Head>, AuditError> {
        let row = self
            .tx
            .query_opt(
                "SELECT seq, hash, time_ns FROM audit_events WHERE tenant = $1 ORDER BY seq DESC LIMIT 1",
                &[&tenant],
            )
            .map_err(|e| pg_error(self.display, &e))?;
        let Some(row) = row else { return Ok(None) };
        let (seq, hash, time_ns): (i64, Vec<u8>, i64) =
            (|| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))()
                .map_err(|e: postgres::Error| pg_error(self.display, &e))?;
        Ok(Some(Head {
            seq: to_u64(seq),
            hash: hash_from(&hash, self.display)?,
            time_ns: to_u64(time_ns),
        }))
    }

    fn insert_events(&mut self, rows: &[&Row]) -> Result<(), AuditError> {
        // One round trip for the whole batch.
        let tenants: Vec<&str> = rows.iter().map(|r| r.tenant.as_str()).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| to_i64(r.seq)).collect();
        let times: Vec<i64> = rows.iter().map(|r| to_i64(r.time_ns)).collect();
        let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
        let tasks: Vec<Option<&str>> = rows.iter().map(|r| r.task.as_deref()).collect();
        let events: Vec<&[u8]> = rows.iter().map(|r| r.event.as_slice()).collect();
        let hashes: Vec<&[u8]> = rows.iter().map(|r| r.hash.as_slice()).collect();
        let sigs: Vec<&[u8]> = rows.iter().map(|r| r.sig.as_slice()).collect();
        self.tx
            .execute(
                "INSERT INTO audit_events (tenant, seq, time_ns, kind, task, event, hash, sig)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                                      $6::bytea[], $7::bytea[], $8::bytea[])",
                &[&tenants, &seqs, &times, &kinds, &tasks, &events, &hashes, &sigs],
            )
            .map(|_| ())
            .map_err(|e| pg_error(self.display, &e))
    }

    fn last_checkpoint(&mut self, tenant: &str) -> Result<Option<CheckpointRow>, AuditError> {
        let row = self
            .tx
            .query_opt(
                "SELECT tenant, size, body, sig, frontier FROM audit_checkpoints
                 WHERE tenant = $1 ORDER BY size DESC LIMIT 1",
                &[&tenant],
            )
            .map_err(|e| pg_error(self.display, &e))?;
        row.map(|r| checkpoint_from(&r))
            .transpose()
            .map_err(|e| pg_error(self.display, &e))
    }

    fn event_bytes(
        &mut self,
        tenant: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Vec<u8>>, AuditError> {
        let rows = self
            .tx
            .query(
                "SELECT event FROM audit_events WHERE tenant = $1 AND seq >= $2 AND seq < $3 ORDER BY seq",
                &[&tenant, &to_i64(from), &to_i64(to)],
            )
            .map_err(|e| pg_error(self.display, &e))?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(|e| pg_error(self.display, &e))
    }

    fn insert_checkpoint(&mut self, cp: &CheckpointRow) -> Result<(), AuditError> {
        self.tx
            .execute(
                "INSERT INTO audit_checkpoints (tenant, size, body, sig, frontier) VALUES ($1, $2, $3, $4, $5)",
                &[&cp.tenant, &to_i64(cp.size), &cp.body, &cp.sig, &cp.frontier],
            )
            .map(|_| ())
            .map_err(|e| pg_error(self.display, &e))
    }
}

impl Store for PostgresStore {
    fn write(
        &mut self,
        tenants: &[String],
        f: &mut dyn FnMut(&mut dyn WriteTx) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        let display = self.display.clone();
        let mut tx = self
            .client
            .transaction()
            .map_err(|e| pg_error(&display, &e))?;
        // Locks in a fixed order, so two writers with overlapping tenants cannot deadlock.
        let mut keys: Vec<i64> = tenants.iter().map(|t| tenant_lock_key(t)).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])
                .map_err(|e| pg_error(&display, &e))?;
        }
        f(&mut Tx {
            tx: &mut tx,
            display: &display,
        })?;
        tx.commit().map_err(|e| pg_error(&display, &e))
    }

    fn tenants(&mut self) -> Result<Vec<String>, AuditError> {
        let rows = self
            .client
            .query(
                "SELECT tenant FROM audit_events UNION SELECT tenant FROM audit_checkpoints ORDER BY tenant",
                &[],
            )
            .map_err(|e| pg_error(&self.display, &e))?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(|e| pg_error(&self.display, &e))
    }

    fn events(&mut self, tenant: &str, from: u64, limit: u64) -> Result<Vec<Row>, AuditError> {
        let rows = self
            .client
            .query(
                "SELECT tenant, seq, time_ns, kind, task, event, hash, sig FROM audit_events
                 WHERE tenant = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                &[&tenant, &to_i64(from), &to_i64(limit)],
            )
            .map_err(|e| pg_error(&self.display, &e))?;
        rows.iter()
            .map(row_from)
            .collect::<Result<_, _>>()
            .map_err(|e| pg_error(&self.display, &e))
    }

    fn task_events(
        &mut self,
        tenant: &str,
        task: &str,
        from: u64,
        limit: u64,
    ) -> Result<Vec<Row>, AuditError> {
        let rows = self
            .client
            .query(
                "SELECT tenant, seq, time_ns, kind, task, event, hash, sig FROM audit_events
                 WHERE tenant = $1 AND task = $2 AND seq >= $3 ORDER BY seq LIMIT $4",
                &[&tenant, &task, &to_i64(from), &to_i64(limit)],
            )
            .map_err(|e| pg_error(&self.display, &e))?;
        rows.iter()
            .map(row_from)
            .collect::<Result<_, _>>()
            .map_err(|e| pg_error(&self.display, &e))
    }

    fn chain_len(&mut self, tenant: &str) -> Result<u64, AuditError> {
        self.client
            .query_one(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_events WHERE tenant = $1",
                &[&tenant],
            )
            .and_then(|row| row.try_get::<_, i64>(0))
            .map(to_u64)
            .map_err(|e| pg_error(&self.display, &e))
    }

    fn checkpoints(&mut self, tenant: &str) -> Result<Vec<CheckpointRow>, AuditError> {
        let rows = self
            .client
            .query(
                "SELECT tenant, size, body, sig, frontier FROM audit_checkpoints WHERE tenant = $1 ORDER BY size",
                &[&tenant],
            )
            .map_err(|e| pg_error(&self.display, &e))?;
        rows.iter()
            .map(checkpoint_from)
            .collect::<Result<_, _>>()
            .map_err(|e| pg_error(&self.display, &e))
    }
}
