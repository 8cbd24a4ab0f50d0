//! The control plane's SQLite database, `<state>/server/control.db`: tenants, users and
//! their roles, API tokens (hashed), registered definitions with their versions, and
//! approvals. One connection behind a mutex; callers run on blocking threads.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::Connection;

use crate::error::ServerError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenant (
  name       TEXT PRIMARY KEY NOT NULL,
  created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user (
  tenant     TEXT NOT NULL REFERENCES tenant(name),
  name       TEXT NOT NULL,
  roles      TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (tenant, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS token (
  id         TEXT PRIMARY KEY NOT NULL,
  tenant     TEXT NOT NULL,
  user       TEXT NOT NULL,
  hash       TEXT NOT NULL,
  label      TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  FOREIGN KEY (tenant, user) REFERENCES user(tenant, name) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS definition (
  tenant        TEXT NOT NULL REFERENCES tenant(name),
  name          TEXT NOT NULL,
  version       INTEGER NOT NULL,
  digest        TEXT NOT NULL,
  text          TEXT NOT NULL,
  registered_by TEXT NOT NULL,
  registered_at INTEGER NOT NULL,
  host_source   TEXT,
  PRIMARY KEY (tenant, name, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS approval (
  id           TEXT PRIMARY KEY NOT NULL,
  tenant       TEXT NOT NULL,
  requester    TEXT NOT NULL,
  task         TEXT,
  agent        TEXT,
  context      TEXT NOT NULL,
  four_eyes    INTEGER NOT NULL,
  state        TEXT NOT NULL,
  approver     TEXT,
  comment      TEXT,
  requested_at INTEGER NOT NULL,
  expires_at   INTEGER NOT NULL,
  decided_at   INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS approval_pending ON approval (tenant, state, requested_at);
CREATE TABLE IF NOT EXISTS approval_use (
  id      TEXT PRIMARY KEY NOT NULL,
  used_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS approval_announced (
  id TEXT PRIMARY KEY NOT NULL,
  at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS session (
  hash       TEXT PRIMARY KEY NOT NULL,
  token_id   TEXT NOT NULL REFERENCES token(id) ON DELETE CASCADE,
  csrf       TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The database handle, shared by the API and the approval store.
#[derive(Debug)]
pub(crate) struct Db {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Db {
    /// Opens (creating) `<state>/server/control.db`; the directory is made 0700.
    pub(crate) fn open(state_dir: &Path) -> Result<Self, ServerError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("server");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                ServerError::Io(format!(
                    "cannot create the control-plane directory `{}`: {e}",
                    dir.display()
                ))
            })?;
        let path = dir.join("control.db");
        let fail = |e: rusqlite::Error| ServerError::store(&path, e);
        let conn = Connection::open(&path).map_err(fail)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        // Approvals and tokens must survive a power cut once acknowledged.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(fail)?;
        conn.execute_batch(SCHEMA).map_err(fail)?;
        migrate(&conn).map_err(fail)?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// Runs `f` with the connection.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ServerError> {
        let mut conn = self.lock()?;
        f(&mut conn).map_err(|e| ServerError::store(&self.path, e))
    }

    /// Runs `f` with the connection; `f` maps its own errors (for transactions that
    /// also call the audit log).
    pub(crate) fn with_tx<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let mut conn = self.lock()?;
        f(&mut conn)
    }

    /// Maps a rusqlite error for this database.
    pub(crate) fn err(&self, e: rusqlite::Error) -> ServerError {
        ServerError::store(&self.path, e)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, ServerError> {
        self.conn
            .lock()
            .map_err(|_| ServerError::store(&self.path, "a thread panicked while using it"))
    }
}

/// Brings a database made by an older version up to the schema above.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    // `definition.host_source`: the file a host-trusted version was registered from
    // (NULL for versions registered through the API, which were all there were).
    let has_host_source: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM pragma_table_info('definition') WHERE name = 'host_source')",
        [],
        |r| r.get(0),
    )?;
    if !has_host_source {
        conn.execute("ALTER TABLE definition ADD COLUMN host_source TEXT", [])?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A stored time (milliseconds) in the audit log's time format.
pub(crate) fn format_ms(ms: i64) -> String {
    agentspace_core::format_audit_time(u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000))
}

/// 16 random bytes as 32 hex characters, for ids.
pub(crate) fn random_hex<const N: usize>() -> Result<String, ServerError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| ServerError::Io(format!("cannot read random bytes: {e}")))?;
    Ok(hex::encode(bytes))
}
