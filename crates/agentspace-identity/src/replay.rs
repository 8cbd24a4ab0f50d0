//! Replay protection for one-time tokens: a `jti` is accepted once, across every process
//! sharing the state directory, by a primary key in SQLite (`<state>/identity/replay.sqlite`).

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

/// Every this many recorded tokens, expired entries are deleted.
const PURGE_EVERY: u64 = 1024;

/// The record of one-time token ids already accepted.
pub(crate) struct ReplayStore {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
    inserted: std::sync::atomic::AtomicU64,
}

impl ReplayStore {
    /// The store at `path`; the database is opened on first use.
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            conn: Mutex::new(None),
            inserted: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn open(path: &Path) -> Result<Connection, String> {
        if let Some(dir) = path.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        }
        let sql = |e: rusqlite::Error| format!("replay store `{}`: {e}", path.display());
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(sql)?;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        // WAL lets readers and one writer work at once across processes; FULL makes an
        // accepted jti durable before the token is accepted, even across a power loss.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS used_tokens (
                 tenant TEXT NOT NULL,
                 jti TEXT NOT NULL,
                 expires_at INTEGER NOT NULL,
                 PRIMARY KEY (tenant, jti)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS used_tokens_expiry ON used_tokens (expires_at);",
        )
        .map_err(sql)?;
        Ok(conn)
    }

    /// Records `jti` as used. `Ok(true)` the first time, `Ok(false)` on every later try
    /// from any process. `forget_before`: entries that expired before this time are purged
    /// now and then (their tokens are refused as expired anyway).
    pub(crate) fn first_use(
        &self,
        tenant: &str,
        jti: &str,
        expires_at: u64,
        forget_before: u64,
    ) -> Result<bool, String> {
        let mut guard = self
            .conn
            .lock()
            .map_err(|_| "replay store lock poisoned".to_owned())?;
        let conn = match guard.as_mut() {
            Some(conn) => conn,
            None => guard.insert(Self::open(&self.path)?),
        };
        let sql = |e: rusqlite::Error| format!("replay store `{}`: {e}", self.path.display());
        let expires = i64::try_from(expires_at).unwrap_or(i64::MAX);
        let added = conn
            .prepare_cached("INSERT INTO used_tokens (tenant, jti, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")
            .and_then(|mut stmt| stmt.execute(params![tenant, jti, expires]))
            .map_err(sql)?;
        let count = self
            .inserted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if count % PURGE_EVERY == PURGE_EVERY - 1 {
            let before = i64::try_from(forget_before).unwrap_or(i64::MAX);
            conn.execute(
                "DELETE FROM used_tokens WHERE expires_at < ?1",
                params![before],
            )
            .map_err(sql)?;
        }
        Ok(added == 1)
    }
}
