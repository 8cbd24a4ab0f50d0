//! The default backend: one SQLite file, `<state>/audit/audit.db`, in WAL mode with
//! `synchronous=FULL` (a commit is on disk when it returns). Writers in several
//! processes serialise on SQLite's write lock (`BEGIN IMMEDIATE`), and read the chain
//! head inside that lock, so every tenant keeps one gap-free chain.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{CheckpointRow, Head, Row, Store, WriteTx, hash_from, to_i64, to_u64};
use crate::error::AuditError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_events (
    tenant  TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    task    TEXT,
    event   BLOB    NOT NULL,
    hash    BLOB    NOT NULL,
    sig     BLOB    NOT NULL,
    PRIMARY KEY (tenant, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_events_task ON audit_events (tenant, task);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    tenant   TEXT    NOT NULL,
    size     INTEGER NOT NULL,
    body     BLOB    NOT NULL,
    sig      BLOB    NOT NULL,
    frontier BLOB    NOT NULL,
    PRIMARY KEY (tenant, size)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: DELETE is not allowed'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: DELETE is not allowed'); END;
";

/// How long a writer waits for another process's write lock before failing (closed).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// `<db>.lock`, locked (flock) around every write transaction: see [`Self::write`].
    writers: Option<std::fs::File>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self, AuditError> {
        let err = |e: rusqlite::Error| store_error(path, &e);
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        // Schema creation takes the write lock, so concurrent first opens do not race.
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))
            .map_err(err)?;
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        // Without the lock file writers still serialise on SQLite's own lock, only less
        // fairly; a store in a read-only place can still be read.
        let writers = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(lock_path))
            .ok();
        Ok(Self {
            conn,
            path: path.to_owned(),
            writers,
        })
    }
}

/// Releases the writers' file lock when dropped.
struct Unlock<'a>(&'a std::fs::File);

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

fn store_error(path: &Path, e: &rusqlite::Error) -> AuditError {
    AuditError::Store {
        store: path.display().to_string(),
        message: e.to_string(),
    }
}

struct Tx<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    path: &'a Path,
}

impl Tx<'_> {
    fn err(&self, e: rusqlite::Error) -> AuditError {
        store_error(self.path, &e)
    }
}

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        tenant: r.get(0)?,
        seq: to_u64(r.get(1)?),
        time_ns: to_u64(r.get(2)?),
        kind: r.get(3)?,
        task: r.get(4)?,
        event: bytes(r, 5)?,
        hash: bytes(r, 6)?,
        sig: bytes(r, 7)?,
    })
}

/// A BLOB column's bytes; TEXT is accepted too, so that a value whose type was changed
/// by hand reaches verify (and fails there) instead of failing the read.
fn bytes(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<u8>> {
    let v = r.get_ref(i)?;
    v.as_bytes()
        .map(<[u8]>::to_vec)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), Box::new(e)))
}

fn checkpoint_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<CheckpointRow> {
    Ok(CheckpointRow {
        tenant: r.get(0)?,
        size: to_u64(r.get(1)?),
        body: bytes(r, 2)?,
        sig: bytes(r, 3)?,
        frontier: bytes(r, 4)?,
    })
}

impl WriteTx for Tx<'_> {
    fn head(&mut self, tenant: &str) -> Result<Option<Head>, AuditError> {
        let row: Option<(i64, Vec<u8>, i64)> = self
            .tx
            .prepare_cached(
                "SELECT seq, hash, time_ns FROM audit_events WHERE tenant = ?1 ORDER BY seq DESC LIMIT 1",
            )
            .and_then(|mut s| s.query_row([tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional())
            .map_err(|e| self.err(e))?;
        let store = self.path.display().to_string();
        row.map(|(seq, hash, time_ns)| {
            Ok(Head {
                seq: to_u64(seq),
                hash: hash_from(&hash, &store)?,
                time_ns: to_u64(time_ns),
            })
        })
        .transpose()
    }

    fn insert_events(&mut self, rows: &[&Row]) -> Result<(), AuditError> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO audit_events (tenant, seq, time_ns, kind, task, event, hash, sig)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(|e| self.err(e))?;
        for r in rows {
            stmt.execute(params![
                r.tenant,
                to_i64(r.seq),
                to_i64(r.time_ns),
                r.kind,
                r.task,
                r.event,
                r.hash,
                r.sig
            ])
            .map_err(|e| store_error(self.path, &e))?;
        }
        Ok(())
    }

    fn last_checkpoint(&mut self, tenant: &str) -> Result<Option<CheckpointRow>, AuditError> {
        self.tx
            .prepare_cached(
                "SELECT tenant, size, body, sig, frontier FROM audit_checkpoints
                 WHERE tenant = ?1 ORDER BY size DESC LIMIT 1",
            )
            .and_then(|mut s| s.query_row([tenant], checkpoint_from).optional())
            .map_err(|e| self.err(e))
    }

    fn event_bytes(
        &mut self,
        tenant: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Vec<u8>>, AuditError> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "SELECT event FROM audit_events WHERE tenant = ?1 AND seq >= ?2 AND seq < ?3 ORDER BY seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![tenant, to_i64(from), to_i64(to)], |r| bytes(r, 0))
            .and_then(|rows| rows.collect::<Result<Vec<Vec<u8>>, _>>())
            .map_err(|e| store_error(self.path, &e))?;
        Ok(rows)
    }

    fn insert_checkpoint(&mut self, cp: &CheckpointRow) -> Result<(), AuditError> {
        self.tx
            .prepare_cached(
                "INSERT INTO audit_checkpoints (tenant, size, body, sig, frontier) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| s.execute(params![cp.tenant, to_i64(cp.size), cp.body, cp.sig, cp.frontier]))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

impl Store for SqliteStore {
    fn write(
        &mut self,
        _tenants: &[String],
        f: &mut dyn FnMut(&mut dyn WriteTx) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        let path = self.path.clone();
        // Writers of many processes (a gateway per task) queue on a file lock before
        // SQLite's: the kernel hands it to the next waiter as soon as it is released,
        // where SQLite's busy handler sleeps and retries with back-off up to 100 ms, so
        // under contention some writers waited seconds. Meanwhile this process's next
        // events gather, and go in the same transaction (group commit across the wait).
        let _queued = self
            .writers
            .as_ref()
            .and_then(|f| f.lock().ok().map(|()| Unlock(f)));
        // IMMEDIATE takes the database's write lock up front, before the head is read.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| store_error(&path, &e))?;
        f(&mut Tx {
            tx: &tx,
            path: &path,
        })?;
        tx.commit().map_err(|e| store_error(&path, &e))
    }

    fn tenants(&mut self) -> Result<Vec<String>, AuditError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT tenant FROM (SELECT DISTINCT tenant FROM audit_events
                 UNION SELECT DISTINCT tenant FROM audit_checkpoints) ORDER BY tenant",
            )
            .map_err(|e| store_error(&self.path, &e))?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| store_error(&self.path, &e))
    }

    fn events(&mut self, tenant: &str, from: u64, limit: u64) -> Result<Vec<Row>, AuditError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT tenant, seq, time_ns, kind, task, event, hash, sig FROM audit_events
                 WHERE tenant = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(|e| store_error(&self.path, &e))?;
        stmt.query_map(params![tenant, to_i64(from), to_i64(limit)], row_from)
            .and_then(|rows| rows.collect())
            .map_err(|e| store_error(&self.path, &e))
    }

    fn task_events(
        &mut self,
        tenant: &str,
        task: &str,
        from: u64,
        limit: u64,
    ) -> Result<Vec<Row>, AuditError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT tenant, seq, time_ns, kind, task, event, hash, sig FROM audit_events
                 WHERE tenant = ?1 AND task = ?2 AND seq >= ?3 ORDER BY seq LIMIT ?4",
            )
            .map_err(|e| store_error(&self.path, &e))?;
        stmt.query_map(params![tenant, task, to_i64(from), to_i64(limit)], row_from)
            .and_then(|rows| rows.collect())
            .map_err(|e| store_error(&self.path, &e))
    }

    fn chain_len(&mut self, tenant: &str) -> Result<u64, AuditError> {
        self.conn
            .prepare_cached("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_events WHERE tenant = ?1")
            .and_then(|mut stmt| stmt.query_row([tenant], |r| r.get::<_, i64>(0)))
            .map(to_u64)
            .map_err(|e| store_error(&self.path, &e))
    }

    fn checkpoints(&mut self, tenant: &str) -> Result<Vec<CheckpointRow>, AuditError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT tenant, size, body, sig, frontier FROM audit_checkpoints
                 WHERE tenant = ?1 ORDER BY size",
            )
            .map_err(|e| store_error(&self.path, &e))?;
        stmt.query_map([tenant], checkpoint_from)
            .and_then(|rows| rows.collect())
            .map_err(|e| store_error(&self.path, &e))
    }
}
