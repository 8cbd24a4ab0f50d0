//! Budgets: counters in SQLite (`<state>/policy/budgets.db`), charged atomically so that
//! no two threads or processes can spend the same unit twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::PolicyError;
use crate::request::Usage;
use crate::store;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
  scope  TEXT NOT NULL,
  bucket INTEGER NOT NULL,
  metric TEXT NOT NULL,
  used   INTEGER NOT NULL,
  PRIMARY KEY (scope, bucket, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS task_start (
  scope   TEXT PRIMARY KEY NOT NULL,
  started INTEGER NOT NULL
) WITHOUT ROWID;
";

/// A counter: what is counted (`requests`, `bytes`, `tokens`), for which scope and
/// window bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Counter {
    /// `task/<tenant>/<task>`, `cap/<tenant>/<task>/<capability>` or
    /// `user/<tenant>/<agent>/<user>`.
    pub(crate) scope: String,
    /// The window number (0 for unwindowed scopes).
    pub(crate) bucket: i64,
    /// `requests`, `bytes` or `tokens`.
    pub(crate) metric: &'static str,
}

/// One conditional charge: add `amount` unless that takes the counter over `limit`.
#[derive(Clone, Debug)]
pub(crate) struct Charge {
    pub(crate) counter: Counter,
    pub(crate) amount: u64,
    pub(crate) limit: Option<u64>,
}

/// A counter that would go over its limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Exhausted {
    pub(crate) counter: Counter,
    pub(crate) used: u64,
    pub(crate) limit: u64,
}

/// Most task start times kept in memory; past this they are all forgotten (and read
/// again from the database).
const STARTED_MEMORY: usize = 65_536;

/// The budget database.
pub(crate) struct BudgetStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Charges from every process queue here before the write transaction.
    writers: store::WriterQueue,
    /// Task start times already recorded. A start time never changes once written, so
    /// a task's later decisions need no write transaction for it.
    started: Mutex<HashMap<String, i64>>,
}

impl BudgetStore {
    pub(crate) fn open(state_dir: &Path) -> Result<Self, PolicyError> {
        let path = store::policy_dir(state_dir)?.join("budgets.db");
        let conn = store::open(&path, SCHEMA)?;
        Ok(Self {
            writers: store::WriterQueue::for_db(&path),
            path,
            conn: Mutex::new(conn),
            started: Mutex::new(HashMap::new()),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, PolicyError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| PolicyError::state(&self.path, "a thread panicked while using it"))?;
        f(&mut conn).map_err(|e| PolicyError::state(&self.path, e))
    }

    /// Records the task's first decision time (once) and returns it, in Unix ms.
    pub(crate) fn task_started(&self, scope: &str, now_ms: i64) -> Result<i64, PolicyError> {
        let poisoned = || PolicyError::state(&self.path, "a thread panicked while using it");
        if let Some(&started) = self.started.lock().map_err(|_| poisoned())?.get(scope) {
            return Ok(started);
        }
        let started = self.with(|c| {
            c.prepare_cached("INSERT OR IGNORE INTO task_start (scope, started) VALUES (?1, ?2)")?
                .execute(params![scope, now_ms])?;
            c.prepare_cached("SELECT started FROM task_start WHERE scope = ?1")?
                .query_row([scope], |r| r.get(0))
        })?;
        let mut known = self.started.lock().map_err(|_| poisoned())?;
        if known.len() >= STARTED_MEMORY {
            known.clear();
        }
        known.insert(scope.to_owned(), started);
        Ok(started)
    }

    /// The current value of each counter.
    pub(crate) fn read(&self, counters: &[Counter]) -> Result<Vec<u64>, PolicyError> {
        self.with(|c| {
            let mut out = Vec::with_capacity(counters.len());
            let mut stmt = c.prepare_cached(
                "SELECT used FROM usage WHERE scope = ?1 AND bucket = ?2 AND metric = ?3",
            )?;
            for counter in counters {
                let used: Option<i64> = stmt
                    .query_row(
                        params![counter.scope, counter.bucket, counter.metric],
                        |r| r.get(0),
                    )
                    .optional()?;
                out.push(used.map_or(0, |u| u64::try_from(u).unwrap_or(0)));
            }
            Ok(out)
        })
    }

    /// Applies every charge or none: in one `BEGIN IMMEDIATE` transaction (which takes
    /// the database's write lock, across processes) each counter is read, compared with
    /// its limit and raised. Returns the first counter that would go over.
    pub(crate) fn charge(&self, charges: &[Charge]) -> Result<Option<Exhausted>, PolicyError> {
        let _turn = self.writers.turn();
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut read = tx.prepare_cached(
                    "SELECT used FROM usage WHERE scope = ?1 AND bucket = ?2 AND metric = ?3",
                )?;
                let mut write = tx.prepare_cached(
                    "INSERT INTO usage (scope, bucket, metric, used) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (scope, bucket, metric) DO UPDATE SET used = used + excluded.used",
                )?;
                for charge in charges {
                    let k = &charge.counter;
                    // Only a limited counter needs reading first.
                    if let Some(limit) = charge.limit {
                        let used: Option<i64> = read
                            .query_row(params![k.scope, k.bucket, k.metric], |r| r.get(0))
                            .optional()?;
                        let used = used.map_or(0, |u| u64::try_from(u).unwrap_or(u64::MAX));
                        if used.saturating_add(charge.amount) > limit {
                            return Ok(Some(Exhausted {
                                counter: k.clone(),
                                used,
                                limit,
                            }));
                        }
                    }
                    let amount = i64::try_from(charge.amount).unwrap_or(i64::MAX);
                    write.execute(params![k.scope, k.bucket, k.metric, amount])?;
                }
            }
            tx.commit()?;
            Ok(None)
        })
    }
}

/// Counter scopes, so that every caller names them the same way.
pub(crate) fn task_scope(tenant: &str, task: &str) -> String {
    format!("task/{tenant}/{task}")
}

pub(crate) fn capability_scope(tenant: &str, task: &str, capability: &str) -> String {
    format!("cap/{tenant}/{task}/{capability}")
}

pub(crate) fn user_scope(tenant: &str, agent: &str, user: &str) -> String {
    format!("user/{tenant}/{agent}/{user}")
}

/// Usage of a task as policies see it (`context.usage`).
pub(crate) fn usage_from(values: &[u64], seconds: u64) -> Usage {
    Usage {
        requests: values.first().copied().unwrap_or(0),
        bytes: values.get(1).copied().unwrap_or(0),
        tokens: values.get(2).copied().unwrap_or(0),
        seconds,
    }
}
