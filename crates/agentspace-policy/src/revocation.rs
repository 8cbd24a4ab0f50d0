//! Revocation: stop a task, an agent, a user's use of an agent, or one capability, on
//! the next decision of every process sharing the store.
//!
//! Revocations live in `<state>/policy/revocations.db` by default, or in another shared
//! store behind [`RevocationBackend`] (the control plane keeps them in its PostgreSQL
//! database, for several hosts). Each decision asks the store for its version, which
//! changes whenever any process changes a revocation (SQLite's `data_version`; a counter
//! in PostgreSQL); only then is the (small) revocation table re-read. So a revocation is
//! seen by the very next decision anywhere, without polling intervals or restarts.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use agentspace_core::{Name, Principal, TaskRef, UserId};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::store;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS revocation (
  kind       TEXT NOT NULL,
  tenant     TEXT NOT NULL,
  subject    TEXT NOT NULL,
  detail     TEXT NOT NULL,
  reason     TEXT NOT NULL,
  revoked_at INTEGER NOT NULL,
  PRIMARY KEY (kind, tenant, subject, detail)
) WITHOUT ROWID;
";

/// What is revoked.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Revocation {
    /// One task, and the work of every agent it started.
    Task {
        /// The tenant.
        tenant: Name,
        /// The task.
        task: TaskRef,
    },
    /// Every task of an agent definition in a tenant, and the agents they started.
    Agent {
        /// The tenant.
        tenant: Name,
        /// The agent definition.
        agent: Name,
    },
    /// One user's use of an agent (including through agents that start it).
    UserAgent {
        /// The tenant.
        tenant: Name,
        /// The user.
        user: UserId,
        /// The agent.
        agent: Name,
    },
    /// One capability (egress rule) of an agent.
    Capability {
        /// The tenant.
        tenant: Name,
        /// The agent.
        agent: Name,
        /// The capability's name.
        capability: Name,
    },
}

/// One revocation as a store keeps it: four strings that identify it (`kind`, `tenant`,
/// `subject`, `detail`; the primary key), why, and when (seconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRevocation {
    /// `task`, `agent`, `user-agent` or `capability`.
    pub kind: String,
    /// The tenant.
    pub tenant: String,
    /// The task, or the agent.
    pub subject: String,
    /// The user (`user-agent`), the capability (`capability`), or empty.
    pub detail: String,
    /// Why.
    pub reason: String,
    /// When, in seconds since the Unix epoch.
    pub revoked_at: i64,
}

/// Where revocations are kept, for a store other than the state directory's SQLite file.
/// Every method is called with no lock of the caller held; errors are messages, and a
/// failing store denies every decision that asks it.
pub trait RevocationBackend: Send + Sync {
    /// Where the store is, for messages (a path, or a URL without its password).
    fn describe(&self) -> String;
    /// Stores `revocation`, replacing the reason and time of the same one.
    fn put(&self, revocation: &StoredRevocation) -> Result<(), String>;
    /// Removes the revocation with the key of `revocation` (its reason and time are
    /// ignored); whether there was one.
    fn remove(&self, revocation: &StoredRevocation) -> Result<bool, String>;
    /// Every stored revocation, oldest first.
    fn all(&self) -> Result<Vec<StoredRevocation>, String>;
    /// A number that changes whenever any process changes the stored revocations.
    fn version(&self) -> Result<i64, String>;
}

impl Revocation {
    fn key(&self) -> (&'static str, String, String, String) {
        match self {
            Self::Task { tenant, task } => {
                ("task", tenant.to_string(), task.to_string(), String::new())
            }
            Self::Agent { tenant, agent } => (
                "agent",
                tenant.to_string(),
                agent.to_string(),
                String::new(),
            ),
            Self::UserAgent {
                tenant,
                user,
                agent,
            } => (
                "user-agent",
                tenant.to_string(),
                agent.to_string(),
                user.to_string(),
            ),
            Self::Capability {
                tenant,
                agent,
                capability,
            } => (
                "capability",
                tenant.to_string(),
                agent.to_string(),
                capability.to_string(),
            ),
        }
    }
}

impl fmt::Display for Revocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Task { tenant, task } => write!(f, "task `{task}` of tenant `{tenant}`"),
            Self::Agent { tenant, agent } => write!(f, "agent `{agent}` of tenant `{tenant}`"),
            Self::UserAgent {
                tenant,
                user,
                agent,
            } => {
                write!(
                    f,
                    "user `{user}`'s use of agent `{agent}` of tenant `{tenant}`"
                )
            }
            Self::Capability {
                tenant,
                agent,
                capability,
            } => {
                write!(
                    f,
                    "capability `{capability}` of agent `{agent}` of tenant `{tenant}`"
                )
            }
        }
    }
}

/// A stored revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RevocationRecord {
    /// What is revoked.
    #[serde(flatten)]
    pub revocation: Revocation,
    /// Why, as given by whoever revoked it.
    pub reason: String,
    /// When, in seconds since the Unix epoch.
    pub revoked_at: u64,
}

/// Where revocations are reported for the audit log. `agentspace-audit` implements this
/// (an audit event per revocation and lift); until then [`NoAudit`] is used. Called after
/// the revocation is committed, so a failing audit store never delays a revocation.
pub trait RevocationAudit {
    /// `record` was revoked (`lifted == false`) or lifted (`lifted == true`).
    fn revocation(&self, record: &RevocationRecord, lifted: bool) -> Result<(), String>;
}

/// A [`RevocationAudit`] that records nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAudit;

impl RevocationAudit for NoAudit {
    fn revocation(&self, _: &RevocationRecord, _: bool) -> Result<(), String> {
        Ok(())
    }
}

/// The state directory's revocations: `<state>/policy/revocations.db`.
struct Sqlite {
    path: std::path::PathBuf,
    conn: Mutex<Connection>,
}

impl Sqlite {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, String> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| "a thread panicked while using it".to_owned())?;
        f(&conn).map_err(|e| e.to_string())
    }
}

impl RevocationBackend for Sqlite {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn put(&self, r: &StoredRevocation) -> Result<(), String> {
        self.with(|c| {
            c.execute(
                "INSERT INTO revocation (kind, tenant, subject, detail, reason, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (kind, tenant, subject, detail)
                 DO UPDATE SET reason = excluded.reason, revoked_at = excluded.revoked_at",
                params![
                    r.kind,
                    r.tenant,
                    r.subject,
                    r.detail,
                    r.reason,
                    r.revoked_at
                ],
            )
            .map(|_| ())
        })
    }

    fn remove(&self, r: &StoredRevocation) -> Result<bool, String> {
        self.with(|c| {
            c.execute(
                "DELETE FROM revocation WHERE kind = ?1 AND tenant = ?2 AND subject = ?3 AND detail = ?4",
                params![r.kind, r.tenant, r.subject, r.detail],
            )
            .map(|n| n > 0)
        })
    }

    fn all(&self) -> Result<Vec<StoredRevocation>, String> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT kind, tenant, subject, detail, reason, revoked_at FROM revocation ORDER BY revoked_at, kind, tenant, subject, detail",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(StoredRevocation {
                    kind: r.get(0)?,
                    tenant: r.get(1)?,
                    subject: r.get(2)?,
                    detail: r.get(3)?,
                    reason: r.get(4)?,
                    revoked_at: r.get(5)?,
                })
            })?;
            rows.collect()
        })
    }

    fn version(&self) -> Result<i64, String> {
        // Changes whenever another connection commits to the file.
        self.with(|c| {
            c.prepare_cached("PRAGMA data_version")?
                .query_row([], |r| r.get(0))
        })
    }
}

/// A revocation store: the state directory's, or a shared one.
pub struct Revocations {
    backend: Box<dyn RevocationBackend>,
    /// The keys in force as last read, and the store's version then.
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// `None` before the first read.
    version: Option<i64>,
    keys: HashSet<(String, String, String, String)>,
}

impl Revocations {
    /// Opens (creating) `<state>/policy/revocations.db`.
    pub fn open(state_dir: &Path) -> Result<Self, PolicyError> {
        let path = store::policy_dir(state_dir)?.join("revocations.db");
        let conn = store::open(&path, SCHEMA)?;
        Ok(Self::with_backend(Box::new(Sqlite {
            path,
            conn: Mutex::new(conn),
        })))
    }

    /// Revocations kept in `backend` (a store shared beyond one state directory).
    pub fn with_backend(backend: Box<dyn RevocationBackend>) -> Self {
        Self {
            backend,
            cache: Mutex::new(Cache::default()),
        }
    }

    fn failed(&self, e: impl fmt::Display) -> PolicyError {
        PolicyError::Revocations {
            store: self.backend.describe(),
            message: e.to_string(),
        }
    }

    /// Revokes `what` (again, if it already is: the reason and time are updated) and
    /// reports it to `audit`.
    pub fn revoke(
        &self,
        what: Revocation,
        reason: &str,
        audit: &dyn RevocationAudit,
    ) -> Result<RevocationRecord, PolicyError> {
        let now = store::unix_now();
        self.backend
            .put(&stored(&what, reason, now))
            .map_err(|e| self.failed(e))?;
        let record = RevocationRecord {
            revocation: what,
            reason: reason.to_owned(),
            revoked_at: now,
        };
        // The revocation is in force already; an audit failure is reported, not undone.
        audit
            .revocation(&record, false)
            .map_err(|e| self.failed(format!("revoked, but the audit hook failed: {e}")))?;
        Ok(record)
    }

    /// Lifts a revocation; returns whether there was one.
    pub fn lift(
        &self,
        what: &Revocation,
        audit: &dyn RevocationAudit,
    ) -> Result<bool, PolicyError> {
        let lifted = self
            .backend
            .remove(&stored(what, "", 0))
            .map_err(|e| self.failed(e))?;
        if lifted {
            let record = RevocationRecord {
                revocation: what.clone(),
                reason: String::new(),
                revoked_at: store::unix_now(),
            };
            audit
                .revocation(&record, true)
                .map_err(|e| self.failed(format!("lifted, but the audit hook failed: {e}")))?;
        }
        Ok(lifted)
    }

    /// Every revocation, oldest first.
    pub fn list(&self) -> Result<Vec<RevocationRecord>, PolicyError> {
        let rows = self.backend.all().map_err(|e| self.failed(e))?;
        let mut out = Vec::new();
        for row in rows {
            let StoredRevocation {
                kind,
                tenant,
                subject,
                detail,
                reason,
                revoked_at: at,
            } = row;
            let bad = |e: &dyn fmt::Display| {
                self.failed(format!("a stored revocation is malformed: {e}"))
            };
            let tenant = Name::new(&tenant).map_err(|e| bad(&e))?;
            let revocation = match kind.as_str() {
                "task" => Revocation::Task {
                    tenant,
                    task: TaskRef::new(&subject).map_err(|e| bad(&e))?,
                },
                "agent" => Revocation::Agent {
                    tenant,
                    agent: Name::new(&subject).map_err(|e| bad(&e))?,
                },
                "user-agent" => Revocation::UserAgent {
                    tenant,
                    agent: Name::new(&subject).map_err(|e| bad(&e))?,
                    user: UserId::new(&detail).map_err(|e| bad(&e))?,
                },
                "capability" => Revocation::Capability {
                    tenant,
                    agent: Name::new(&subject).map_err(|e| bad(&e))?,
                    capability: Name::new(&detail).map_err(|e| bad(&e))?,
                },
                other => return Err(bad(&format!("unknown kind `{other}`"))),
            };
            out.push(RevocationRecord {
                revocation,
                reason,
                revoked_at: u64::try_from(at).unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// The first revocation that applies to `principal` (any actor in its chain: task,
    /// agent, or the user's use of that agent) or to one of `capabilities` of the acting
    /// agent, as a sentence. Re-reads the table only when another connection changed it.
    pub(crate) fn check(
        &self,
        principal: &Principal,
        capabilities: &[String],
    ) -> Result<Option<String>, PolicyError> {
        let version = self.backend.version().map_err(|e| self.failed(e))?;
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| self.failed("a thread panicked while using it"))?;
        if cache.version != Some(version) {
            let keys = self.backend.all().map_err(|e| self.failed(e))?;
            cache.keys = keys
                .into_iter()
                .map(|r| (r.kind, r.tenant, r.subject, r.detail))
                .collect();
            cache.version = Some(version);
        }
        let i = &*cache;
        if i.keys.is_empty() {
            return Ok(None);
        }
        let tenant = principal.tenant().to_string();
        let user = principal.user().to_string();
        let has = |kind: &str, subject: &str, detail: &str| {
            i.keys.contains(&(
                kind.to_owned(),
                tenant.clone(),
                subject.to_owned(),
                detail.to_owned(),
            ))
        };
        for actor in principal.actors() {
            let acting = actor == principal.current();
            let via = if acting {
                String::new()
            } else {
                " (which started this task)".to_string()
            };
            if has("task", actor.task.as_str(), "") {
                return Ok(Some(format!("task `{}`{via} was revoked", actor.task)));
            }
            if has("agent", actor.agent.as_str(), "") {
                return Ok(Some(format!(
                    "agent `{}`{via} was revoked in tenant `{tenant}`",
                    actor.agent
                )));
            }
            if has("user-agent", actor.agent.as_str(), &user) {
                return Ok(Some(format!(
                    "user `{user}`'s use of agent `{}`{via} was revoked",
                    actor.agent
                )));
            }
        }
        for cap in capabilities {
            if has("capability", principal.current().agent.as_str(), cap) {
                return Ok(Some(format!(
                    "capability `{cap}` of agent `{}` was revoked",
                    principal.current().agent
                )));
            }
        }
        Ok(None)
    }
}

/// `what` as stored, with `reason` and time `at`.
fn stored(what: &Revocation, reason: &str, at: u64) -> StoredRevocation {
    let (kind, tenant, subject, detail) = what.key();
    StoredRevocation {
        kind: kind.to_owned(),
        tenant,
        subject,
        detail,
        reason: reason.to_owned(),
        revoked_at: i64::try_from(at).unwrap_or(0),
    }
}
