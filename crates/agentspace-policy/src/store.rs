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

/// A file lock (`<db>.lock`, flock) that the writers of one database take before
/// SQLite's write lock. With many processes (a gateway per task) contending, the kernel
/// hands a released file lock to the next waiter at once, where SQLite's busy handler
/// sleeps and retries with back-off up to 100 ms, so that some writers waited seconds.
#[derive(Debug)]
pub(crate) struct WriterQueue(Option<std::fs::File>);

/// A place at the head of the [`WriterQueue`]; released when dropped.
pub(crate) struct Turn<'a>(Option<&'a std::fs::File>);

impl WriterQueue {
    /// The queue of the database at `path`. Without the lock file (a read-only place)
    /// writers still serialise on SQLite's own lock, only less fairly.
    pub(crate) fn for_db(path: &Path) -> Self {
        let mut lock = path.as_os_str().to_owned();
        lock.push(".lock");
        Self(
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(PathBuf::from(lock))
                .ok(),
        )
    }

    /// Waits for this process's turn to write.
    pub(crate) fn turn(&self) -> Turn<'_> {
        Turn(self.0.as_ref().filter(|f| f.lock().is_ok()))
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.0 {
            let _ = f.unlock();
        }
    }
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
