//! SQLite under `<state>/policy/`: opening databases the same way for budgets and
//! revocations, so several processes can share them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use crate::error::PolicyError;

/// How long a writer waits for another process's transaction before giving up (and the
/// decision is denied with reason `error`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The policy state directory, `<state>/policy`, created when missing.
pub(crate) fn policy_dir(state_dir: &Path) -> Result<PathBuf, PolicyError> {
    let dir = state_dir.join("policy");
    std::fs::create_dir_all(&dir).map_err(|e| PolicyError::state(&dir, e))?;
    Ok(dir)
}

/// Opens (creating) a database in WAL mode with a busy timeout and runs `schema`.
pub(crate) fn open(path: &Path, schema: &str) -> Result<Connection, PolicyError> {
    let fail = |e: rusqlite::Error| PolicyError::state(path, e);
    let conn = Connection::open(path).map_err(fail)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    // WAL lets readers (revocation checks) run while a budget charge commits; NORMAL
    // synchronous is durable across process crashes, which is what budgets need.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(fail)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(fail)?;
    conn.execute_batch(schema).map_err(fail)?;
    Ok(conn)
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
