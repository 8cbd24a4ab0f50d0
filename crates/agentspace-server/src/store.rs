//! The control plane's database: SQLite at `<state>/server/control.db` (the embedded
//! default) or PostgreSQL (`--database-url postgres://...`, for several hosts sharing one
//! control plane). Tables: tenants, users and their roles, API tokens (hashed), registered
//! definitions with their versions, approvals, their use and announcements, console
//! sessions and tenant webhooks.
//!
//! Every statement is written once, in the SQL both databases speak, with `$1`-style
//! parameters (rewritten to SQLite's `?1`); only the schema (the migrations in
//! [`MIGRATIONS`]) is written per backend. A caller gets a [`Conn`] from [`Db::run`]
//! (each statement commits on its own) or [`Db::transaction`], which holds the scope's
//! write lock until it commits: SQLite's database write lock (`BEGIN IMMEDIATE`), or on
//! PostgreSQL a transaction-scoped advisory lock per scope (a tenant), so that the
//! read-check-write sequences of one tenant (the last admin, one decision per approval,
//! one use per grant) run one at a time on both, also across processes and hosts.
//! Callers run on blocking threads.

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::ServerError;

/// One schema version: the statements that bring a database from the version before to
/// this one, per backend. Versions only ever get added.
struct Migration {
    version: i64,
    what: &'static str,
    /// Columns SQLite gets if it lacks them, as (table, column, declaration), before
    /// `sqlite` runs: some were added by builds from before schema versions.
    sqlite_columns: &'static [(&'static str, &'static str, &'static str)],
    sqlite: &'static str,
    postgres: &'static str,
}

/// The schema history. Version 1 is the schema from before versioning (its SQLite
/// statements are `IF NOT EXISTS`, so a database made then is taken up as it is).
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite_columns: &[],
        what: "tenants, users, tokens, definitions, approvals, approval use and announcements, console sessions",
        sqlite: "
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
",
        postgres: r#"
CREATE TABLE tenant (
  name       TEXT PRIMARY KEY,
  created_at BIGINT NOT NULL
);
CREATE TABLE "user" (
  tenant     TEXT NOT NULL REFERENCES tenant(name),
  name       TEXT NOT NULL,
  roles      TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (tenant, name)
);
CREATE TABLE token (
  id         TEXT PRIMARY KEY,
  tenant     TEXT NOT NULL,
  "user"     TEXT NOT NULL,
  hash       TEXT NOT NULL,
  label      TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  FOREIGN KEY (tenant, "user") REFERENCES "user"(tenant, name) ON DELETE CASCADE
);
CREATE TABLE definition (
  tenant        TEXT NOT NULL REFERENCES tenant(name),
  name          TEXT NOT NULL,
  version       BIGINT NOT NULL,
  digest        TEXT NOT NULL,
  text          TEXT NOT NULL,
  registered_by TEXT NOT NULL,
  registered_at BIGINT NOT NULL,
  PRIMARY KEY (tenant, name, version)
);
CREATE TABLE approval (
  id           TEXT PRIMARY KEY,
  tenant       TEXT NOT NULL,
  requester    TEXT NOT NULL,
  task         TEXT,
  agent        TEXT,
  context      TEXT NOT NULL,
  four_eyes    BOOLEAN NOT NULL,
  state        TEXT NOT NULL,
  approver     TEXT,
  comment      TEXT,
  requested_at BIGINT NOT NULL,
  expires_at   BIGINT NOT NULL,
  decided_at   BIGINT
);
CREATE INDEX approval_pending ON approval (tenant, state, requested_at);
CREATE TABLE approval_use (
  id      TEXT PRIMARY KEY,
  used_at BIGINT NOT NULL
);
CREATE TABLE approval_announced (
  id TEXT PRIMARY KEY,
  at BIGINT NOT NULL
);
CREATE TABLE session (
  hash       TEXT PRIMARY KEY,
  token_id   TEXT NOT NULL REFERENCES token(id) ON DELETE CASCADE,
  csrf       TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL
);
"#,
    },
    Migration {
        version: 2,
        sqlite_columns: &[],
        what: "the request digest as a column of approval; announcements per webhook with delivery state; tenant webhooks",
        sqlite: "
ALTER TABLE approval ADD COLUMN digest TEXT;
UPDATE approval SET digest = json_extract(context, '$.request.digest');
CREATE INDEX approval_request ON approval (tenant, task, digest);
CREATE TABLE approval_notice (
  id    TEXT NOT NULL,
  hook  TEXT NOT NULL,
  state TEXT NOT NULL,
  at    INTEGER NOT NULL,
  PRIMARY KEY (id, hook)
) WITHOUT ROWID;
INSERT INTO approval_notice (id, hook, state, at) SELECT id, 'server', 'delivered', at FROM approval_announced;
DROP TABLE approval_announced;
CREATE TABLE tenant_webhook (
  tenant TEXT PRIMARY KEY NOT NULL REFERENCES tenant(name),
  url    TEXT NOT NULL,
  set_by TEXT NOT NULL,
  set_at INTEGER NOT NULL
) WITHOUT ROWID;
",
        postgres: "
ALTER TABLE approval ADD COLUMN digest TEXT;
UPDATE approval SET digest = context::jsonb -> 'request' ->> 'digest';
CREATE INDEX approval_request ON approval (tenant, task, digest);
CREATE TABLE approval_notice (
  id    TEXT NOT NULL,
  hook  TEXT NOT NULL,
  state TEXT NOT NULL,
  at    BIGINT NOT NULL,
  PRIMARY KEY (id, hook)
);
INSERT INTO approval_notice (id, hook, state, at) SELECT id, 'server', 'delivered', at FROM approval_announced;
DROP TABLE approval_announced;
CREATE TABLE tenant_webhook (
  tenant TEXT PRIMARY KEY REFERENCES tenant(name),
  url    TEXT NOT NULL,
  set_by TEXT NOT NULL,
  set_at BIGINT NOT NULL
);
",
    },
    Migration {
        version: 3,
        sqlite_columns: &[],
        what: "revocations in the shared database (PostgreSQL only: SQLite keeps them in <state>/policy/revocations.db)",
        sqlite: "",
        postgres: "
CREATE TABLE revocation (
  kind       TEXT NOT NULL,
  tenant     TEXT NOT NULL,
  subject    TEXT NOT NULL,
  detail     TEXT NOT NULL,
  reason     TEXT NOT NULL,
  revoked_at BIGINT NOT NULL,
  PRIMARY KEY (kind, tenant, subject, detail)
);
CREATE TABLE revocation_version (
  id      INTEGER PRIMARY KEY CHECK (id = 1),
  version BIGINT NOT NULL
);
INSERT INTO revocation_version (id, version) VALUES (1, 0);
",
    },
    Migration {
        version: 4,
        what: "definition.host_source: the file a host-trusted version was registered from (NULL for versions registered through the API)",
        sqlite_columns: &[("definition", "host_source", "TEXT")],
        sqlite: "",
        postgres: "ALTER TABLE definition ADD COLUMN host_source TEXT;",
    },
];

/// The schema version this build works with.
pub(crate) fn schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The role that may read and write the control-plane tables (and do nothing else): the
/// server and `agentspace run` log in as a member of it.
pub const CONTROL_ROLE: &str = "agentspace_control";

/// Run after every PostgreSQL migration: the control role's privileges, table by table,
/// no more than the code uses (approvals and definitions are never deleted, definitions
/// and tenants never changed, the revocation version only counted up).
const PG_GRANTS: &str = r#"
DO $$ BEGIN
  CREATE ROLE agentspace_control NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
REVOKE ALL ON control_schema, tenant, "user", token, definition, approval, approval_use,
  approval_notice, session, tenant_webhook, revocation, revocation_version
  FROM PUBLIC, agentspace_control;
GRANT SELECT ON control_schema TO agentspace_control;
GRANT SELECT, INSERT ON tenant, definition, approval_use TO agentspace_control;
GRANT SELECT, INSERT, UPDATE ON approval TO agentspace_control;
GRANT SELECT, INSERT, DELETE ON token, session TO agentspace_control;
GRANT SELECT, INSERT, UPDATE, DELETE ON "user", approval_notice, tenant_webhook, revocation TO agentspace_control;
GRANT SELECT, UPDATE ON revocation_version TO agentspace_control;
"#;

const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS control_schema (
  version    BIGINT PRIMARY KEY NOT NULL,
  what       TEXT NOT NULL,
  applied_at BIGINT NOT NULL
)";

/// Advisory lock key that serialises control-plane migrations in one PostgreSQL
/// database (distinct from the audit log's).
const MIGRATION_LOCK: i64 = 0x6167_656e_7463_746c;

/// Most PostgreSQL connections one process keeps open.
const MAX_CONNECTIONS: usize = 16;

/// How long a caller waits for a free connection before failing.
const CONNECTION_WAIT: Duration = Duration::from_secs(30);

/// A value bound to a statement parameter: anything both drivers can encode (`&str`,
/// `String`, `i64`, `bool` and their `Option`s).
pub(crate) trait Arg: Sync {
    /// As SQLite encodes it.
    fn sqlite(&self) -> &dyn rusqlite::ToSql;
    /// As PostgreSQL encodes it.
    fn pg(&self) -> &(dyn postgres::types::ToSql + Sync);
}

impl<T: rusqlite::ToSql + postgres::types::ToSql + Sync> Arg for T {
    fn sqlite(&self) -> &dyn rusqlite::ToSql {
        self
    }
    fn pg(&self) -> &(dyn postgres::types::ToSql + Sync) {
        self
    }
}

/// A column value as read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
}

/// One result row, read out of the driver.
#[derive(Clone, Debug)]
pub(crate) struct Row(Vec<Value>);

fn bad_column(i: usize, want: &str, got: &Value) -> ServerError {
    ServerError::Store {
        path: "control-plane database".to_owned(),
        message: format!(
            "column {i} holds {got:?} where {want} was expected; is the schema current (`agentspace server migrate`)?"
        ),
    }
}

impl Row {
    fn at(&self, i: usize) -> &Value {
        self.0.get(i).unwrap_or(&Value::Null)
    }

    /// Column `i` as text.
    pub(crate) fn text(&self, i: usize) -> Result<String, ServerError> {
        self.opt_text(i)?
            .ok_or_else(|| bad_column(i, "text", &Value::Null))
    }

    /// Column `i` as text or NULL.
    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, ServerError> {
        match self.at(i) {
            Value::Null => Ok(None),
            Value::Text(t) => Ok(Some(t.clone())),
            other => Err(bad_column(i, "text", other)),
        }
    }

    /// Column `i` as an integer.
    pub(crate) fn int(&self, i: usize) -> Result<i64, ServerError> {
        self.opt_int(i)?
            .ok_or_else(|| bad_column(i, "an integer", &Value::Null))
    }

    /// Column `i` as an integer or NULL.
    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, ServerError> {
        match self.at(i) {
            Value::Null => Ok(None),
            Value::Int(n) => Ok(Some(*n)),
            other => Err(bad_column(i, "an integer", other)),
        }
    }

    /// Column `i` as a boolean (SQLite keeps them as 0 and 1).
    pub(crate) fn bool(&self, i: usize) -> Result<bool, ServerError> {
        match self.at(i) {
            Value::Bool(b) => Ok(*b),
            Value::Int(n) => Ok(*n != 0),
            other => Err(bad_column(i, "a boolean", other)),
        }
    }
}

/// A connection (or an open transaction) statements run on.
pub(crate) trait Conn {
    /// Runs a statement; returns how many rows it changed.
    fn execute(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<u64, ServerError>;

    /// Runs a query; returns every row.
    fn query(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<Vec<Row>, ServerError>;

    /// The first row of a query, if any.
    fn query_opt(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<Option<Row>, ServerError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first row of a query that always has one (`SELECT EXISTS ...`).
    fn query_one(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<Row, ServerError> {
        self.query_opt(sql, args)?
            .ok_or_else(|| ServerError::Store {
                path: "control-plane database".to_owned(),
                message: "a query that always answers returned no row".to_owned(),
            })
    }
}

/// `sql` with PostgreSQL's `$N` parameters as SQLite's `?N`. (SQLite reads `$N` as a
/// *named* parameter numbered by first appearance, which would bind `$2` first in
/// `SET a = $2 WHERE id = $1`.) Quoted text and identifiers are left alone.
fn sqlite_sql(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('?');
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    Cow::Owned(out)
}

struct Lite<'a> {
    conn: &'a rusqlite::Connection,
    display: &'a str,
}

impl Lite<'_> {
    fn err(&self, e: rusqlite::Error) -> ServerError {
        store_error(self.display, e)
    }
}

impl Conn for Lite<'_> {
    fn execute(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<u64, ServerError> {
        let mut stmt = self
            .conn
            .prepare_cached(&sqlite_sql(sql))
            .map_err(|e| self.err(e))?;
        let n = stmt
            .execute(rusqlite::params_from_iter(args.iter().map(|a| a.sqlite())))
            .map_err(|e| self.err(e))?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    fn query(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<Vec<Row>, ServerError> {
        use rusqlite::types::ValueRef;
        let mut stmt = self
            .conn
            .prepare_cached(&sqlite_sql(sql))
            .map_err(|e| self.err(e))?;
        let width = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args.iter().map(|a| a.sqlite())))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(match r.get_ref(i).map_err(|e| self.err(e))? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::Int(n),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Real(_) | ValueRef::Blob(_) => {
                        return Err(store_error(
                            self.display,
                            format!("column {i} holds a real number or blob"),
                        ));
                    }
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}

struct Pg<'a, C: postgres::GenericClient> {
    client: &'a mut C,
    display: &'a str,
}

fn pg_error(display: &str, e: &postgres::Error) -> ServerError {
    let message = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    store_error(display, message)
}

impl<C: postgres::GenericClient> Conn for Pg<'_, C> {
    fn execute(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<u64, ServerError> {
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            args.iter().map(|a| a.pg()).collect();
        self.client
            .execute(sql, &params)
            .map_err(|e| pg_error(self.display, &e))
    }

    fn query(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<Vec<Row>, ServerError> {
        use postgres::types::Type;
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            args.iter().map(|a| a.pg()).collect();
        let rows = self
            .client
            .query(sql, &params)
            .map_err(|e| pg_error(self.display, &e))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut values = Vec::with_capacity(r.len());
            for (i, column) in r.columns().iter().enumerate() {
                let e = |e: postgres::Error| pg_error(self.display, &e);
                let ty = column.type_();
                let value = if *ty == Type::INT8 {
                    r.try_get::<_, Option<i64>>(i).map_err(e)?.map(Value::Int)
                } else if *ty == Type::INT4 {
                    r.try_get::<_, Option<i32>>(i)
                        .map_err(e)?
                        .map(|n| Value::Int(n.into()))
                } else if *ty == Type::INT2 {
                    r.try_get::<_, Option<i16>>(i)
                        .map_err(e)?
                        .map(|n| Value::Int(n.into()))
                } else if *ty == Type::BOOL {
                    r.try_get::<_, Option<bool>>(i).map_err(e)?.map(Value::Bool)
                } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty) {
                    r.try_get::<_, Option<String>>(i)
                        .map_err(e)?
                        .map(Value::Text)
                } else {
                    return Err(store_error(
                        self.display,
                        format!(
                            "column `{}` has type {ty}, which is not read",
                            column.name()
                        ),
                    ));
                };
                values.push(value.unwrap_or(Value::Null));
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}

fn store_error(display: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Store {
        path: display.to_owned(),
        message: e.to_string(),
    }
}

/// A few PostgreSQL connections, opened on demand and kept for reuse.
struct Pool {
    config: postgres::Config,
    display: String,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    idle: Vec<postgres::Client>,
    open: usize,
}

/// A connection taken from the pool; back in it when dropped (unless it broke).
struct Pooled<'a> {
    pool: &'a Pool,
    client: Option<postgres::Client>,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state is two counters and a list: still consistent after a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self) -> Result<Pooled<'_>, ServerError> {
        let mut state = self.lock();
        loop {
            if let Some(client) = state.idle.pop() {
                if client.is_closed() {
                    state.open = state.open.saturating_sub(1);
                    continue;
                }
                return Ok(Pooled {
                    pool: self,
                    client: Some(client),
                });
            }
            if state.open < MAX_CONNECTIONS {
                state.open += 1;
                drop(state);
                return match connect(&self.config, &self.display) {
                    Ok(client) => Ok(Pooled {
                        pool: self,
                        client: Some(client),
                    }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let (next, waited) = self
                .freed
                .wait_timeout(state, CONNECTION_WAIT)
                .unwrap_or_else(PoisonError::into_inner);
            state = next;
            if waited.timed_out() && state.idle.is_empty() && state.open >= MAX_CONNECTIONS {
                return Err(store_error(
                    &self.display,
                    format!(
                        "all {MAX_CONNECTIONS} connections stayed busy for {} s",
                        CONNECTION_WAIT.as_secs()
                    ),
                ));
            }
        }
    }
}

impl Pooled<'_> {
    fn client(&mut self) -> Result<&mut postgres::Client, ServerError> {
        self.client
            .as_mut()
            .ok_or_else(|| store_error(&self.pool.display, "the connection was returned"))
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let mut state = self.pool.lock();
            if client.is_closed() {
                state.open = state.open.saturating_sub(1);
            } else {
                state.idle.push(client);
            }
            drop(state);
            self.pool.freed.notify_one();
        }
    }
}

fn connect(config: &postgres::Config, display: &str) -> Result<postgres::Client, ServerError> {
    config.connect(postgres::NoTls).map_err(|e| {
        store_error(
            display,
            format!("cannot connect: {e}; check that the server runs and the url is right"),
        )
    })
}

fn pg_config(url: &str) -> Result<(postgres::Config, String), ServerError> {
    let display = agentspace_audit::postgres_display_url(url);
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| store_error(&display, format!("bad connection url: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    Ok((config, display))
}

/// Whether `url` names a PostgreSQL database.
pub(crate) fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn check_url(url: &str) -> Result<(), ServerError> {
    if is_postgres_url(url) {
        Ok(())
    } else {
        // Only the scheme: the rest may hold a password.
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        Err(ServerError::bad_request(
            format!("database url `{scheme}://...` is not `postgres://...`"),
            "give `--database-url postgres://USER:PASSWORD@HOST/DB`, or leave it out for SQLite in the state directory",
        ))
    }
}

/// The key of `scope`'s write lock (never one the audit log uses).
fn lock_key(scope: &str) -> i64 {
    let mut hasher = Sha256::new();
    hasher.update(b"agentspace-control\0");
    hasher.update(scope.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8).unwrap_or(&[0u8; 8]));
    i64::from_be_bytes(first)
}

enum Backend {
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres(Box<Pool>),
}

/// The database handle, shared by the API and the approval store.
pub(crate) struct Db {
    /// The file, or the URL without its password, for messages.
    display: String,
    backend: Backend,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("display", &self.display)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// The state directory's SQLite database, or the PostgreSQL database at
    /// `database_url` (which must be migrated: [`migrate`]).
    pub(crate) fn open(state_dir: &Path, database_url: Option<&str>) -> Result<Self, ServerError> {
        match database_url {
            Some(url) => Self::open_postgres(url),
            None => Self::open_sqlite(state_dir),
        }
    }

    /// Opens (creating and migrating) `<state>/server/control.db`; the directory is 0700.
    fn open_sqlite(state_dir: &Path) -> Result<Self, ServerError> {
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
        let display = path.display().to_string();
        let fail = |e: rusqlite::Error| store_error(&display, e);
        let mut conn = rusqlite::Connection::open(&path).map_err(fail)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        // Approvals and tokens must survive a power cut once acknowledged.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(fail)?;
        // The embedded database belongs to whoever owns the state directory: it is
        // brought up to date on open, as it always was.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(fail)?;
        tx.execute_batch(SCHEMA_TABLE).map_err(fail)?;
        let current = stored_version(&mut Lite {
            conn: &tx,
            display: &display,
        })?;
        for m in pending(current, &display)? {
            for (table, column, declaration) in m.sqlite_columns {
                let has: bool = tx
                    .query_row(
                        "SELECT EXISTS(SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
                        [table, column],
                        |r| r.get(0),
                    )
                    .map_err(fail)?;
                if !has {
                    tx.execute_batch(&format!(
                        "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
                    ))
                    .map_err(fail)?;
                }
            }
            if !m.sqlite.is_empty() {
                tx.execute_batch(m.sqlite).map_err(fail)?;
            }
            record_version(
                &mut Lite {
                    conn: &tx,
                    display: &display,
                },
                m,
            )?;
        }
        tx.commit().map_err(fail)?;
        Ok(Self {
            display,
            backend: Backend::Sqlite(Mutex::new(conn)),
        })
    }

    /// Connects to PostgreSQL; refuses a database whose schema is not this build's.
    pub(crate) fn open_postgres(url: &str) -> Result<Self, ServerError> {
        check_url(url)?;
        let (config, display) = pg_config(url)?;
        let db = Self {
            display: display.clone(),
            backend: Backend::Postgres(Box::new(Pool {
                config,
                display,
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
            })),
        };
        let version = db.run(|c| {
            let exists = c
                .query_one("SELECT to_regclass('control_schema') IS NOT NULL", &[])?
                .bool(0)?;
            if exists { stored_version(c) } else { Ok(0) }
        })?;
        let want = schema_version();
        if version < want {
            return Err(store_error(
                &db.display,
                format!(
                    "the control-plane schema is at version {version}, this build needs {want}: run `agentspace server migrate --database-url URL` once, as the database owner"
                ),
            ));
        }
        if version > want {
            return Err(newer(&db.display, version));
        }
        Ok(db)
    }

    /// The file, or the URL without its password, for messages.
    pub(crate) fn display(&self) -> &str {
        &self.display
    }

    /// Runs `f` on a connection; each statement commits on its own.
    pub(crate) fn run<T>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        match &self.backend {
            Backend::Sqlite(conn) => {
                let conn = self.lock(conn)?;
                f(&mut Lite {
                    conn: &conn,
                    display: &self.display,
                })
            }
            Backend::Postgres(pool) => {
                let mut pooled = pool.get()?;
                f(&mut Pg {
                    client: pooled.client()?,
                    display: &self.display,
                })
            }
        }
    }

    /// Runs `f` in one transaction holding `scope`'s write lock (a tenant's name, for
    /// everything that reads, checks and then writes that tenant's records), and commits
    /// when `f` succeeds; an error rolls everything back. A transaction that records its
    /// change in the audit log appends inside `f`, so that only a change the log accepted
    /// is committed.
    pub(crate) fn transaction<T>(
        &self,
        scope: &str,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        match &self.backend {
            Backend::Sqlite(conn) => {
                let mut conn = self.lock(conn)?;
                let fail = |e| store_error(&self.display, e);
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(fail)?;
                let out = f(&mut Lite {
                    conn: &tx,
                    display: &self.display,
                })?;
                tx.commit().map_err(fail)?;
                Ok(out)
            }
            Backend::Postgres(pool) => {
                let mut pooled = pool.get()?;
                let fail = |e: postgres::Error| pg_error(&self.display, &e);
                let mut tx = pooled.client()?.transaction().map_err(fail)?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(scope)])
                    .map_err(fail)?;
                let out = f(&mut Pg {
                    client: &mut tx,
                    display: &self.display,
                })?;
                tx.commit().map_err(fail)?;
                Ok(out)
            }
        }
    }

    fn lock<'a>(
        &self,
        conn: &'a Mutex<rusqlite::Connection>,
    ) -> Result<MutexGuard<'a, rusqlite::Connection>, ServerError> {
        conn.lock()
            .map_err(|_| store_error(&self.display, "a thread panicked while using it"))
    }
}

fn newer(display: &str, version: i64) -> ServerError {
    store_error(
        display,
        format!(
            "the control-plane schema is at version {version}, newer than this build's {}: run the agentspace that migrated it",
            schema_version()
        ),
    )
}

fn stored_version(c: &mut dyn Conn) -> Result<i64, ServerError> {
    Ok(c.query_one("SELECT MAX(version) FROM control_schema", &[])?
        .opt_int(0)?
        .unwrap_or(0))
}

fn pending(
    current: i64,
    display: &str,
) -> Result<impl Iterator<Item = &'static Migration>, ServerError> {
    if current > schema_version() {
        return Err(newer(display, current));
    }
    Ok(MIGRATIONS.iter().filter(move |m| m.version > current))
}

fn record_version(c: &mut dyn Conn, m: &Migration) -> Result<(), ServerError> {
    c.execute(
        "INSERT INTO control_schema (version, what, applied_at) VALUES ($1, $2, $3)",
        &[&m.version, &m.what, &now_ms()],
    )?;
    Ok(())
}

/// Creates or updates the control-plane tables in the PostgreSQL database at `url` and
/// the role [`CONTROL_ROLE`] with the privileges the server needs; returns the schema
/// versions it applied. Run it as the database's owner, before the first `agentspace
/// serve` and after every upgrade; it is idempotent and safe to run from several hosts
/// at once.
pub(crate) fn migrate(url: &str) -> Result<Vec<i64>, ServerError> {
    check_url(url)?;
    let (config, display) = pg_config(url)?;
    let mut client = connect(&config, &display)?;
    let fail = |e: postgres::Error| pg_error(&display, &e);
    let mut tx = client.transaction().map_err(fail)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(fail)?;
    tx.batch_execute(SCHEMA_TABLE).map_err(fail)?;
    let mut conn = Pg {
        client: &mut tx,
        display: &display,
    };
    let current = stored_version(&mut conn)?;
    let mut applied = Vec::new();
    for m in pending(current, &display)? {
        conn.client.batch_execute(m.postgres).map_err(fail)?;
        record_version(&mut conn, m)?;
        applied.push(m.version);
    }
    conn.client.batch_execute(PG_GRANTS).map_err(fail)?;
    tx.commit().map_err(fail)?;
    Ok(applied)
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

#[cfg(test)]
mod tests {
    use super::sqlite_sql;

    #[test]
    fn dollar_parameters_become_numbered_question_marks_outside_quotes() {
        assert_eq!(
            sqlite_sql(
                "UPDATE approval SET state = $2 WHERE id = $1 AND note = '$3' AND \"$4\" = $10"
            ),
            "UPDATE approval SET state = ?2 WHERE id = ?1 AND note = '$3' AND \"$4\" = ?10"
        );
        assert_eq!(sqlite_sql("SELECT 1"), "SELECT 1");
        assert_eq!(sqlite_sql("SELECT '$.a' || $1"), "SELECT '$.a' || ?1");
    }
}
