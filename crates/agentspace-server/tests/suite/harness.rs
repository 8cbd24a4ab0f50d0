//! A control plane on loopback in its own runtime thread, on a temporary state directory
//! and either backend: SQLite in the state directory, or a PostgreSQL database of its own
//! (made per test on the server `AGENTSPACE_TEST_POSTGRES_URL` names, migrated, and
//! used through a login role that holds only the control and audit-writer roles).

use std::path::Path;
use std::sync::Arc;

use agentspace_core::Name;
use agentspace_server::client::{Client, Response};
use agentspace_server::{ApprovalStore, Server, ServerConfig};
use serde_json::{Value, json};

/// Runs each named test function, `fn name(backend: Backend)`, on both backends: the
/// tests `name::sqlite` and `name::postgres`. Without `AGENTSPACE_TEST_POSTGRES_URL` the
/// PostgreSQL one skips with a message, except under CI (`CI=true`), where it fails.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::suite::harness::Backend::Sqlite);
            }
            #[test]
            fn postgres() {
                if $crate::suite::harness::postgres_available() {
                    super::$name($crate::suite::harness::Backend::Postgres);
                }
            }
        }
    )*};
}

/// Where a test server keeps its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `<state>/server/control.db` and the audit log in the state directory.
    Sqlite,
    /// A fresh PostgreSQL database for the control-plane tables and the audit log.
    Postgres,
}

use agentspace_test_support::TestDatabase;
pub use agentspace_test_support::postgres_available;

/// A PostgreSQL database of one test, migrated by its owner, with a login for the server
/// that holds only the control and audit-writer roles.
pub struct PgDb {
    db: TestDatabase,
    url: String,
}

impl PgDb {
    fn new() -> Self {
        let db = TestDatabase::new("ctl_test").expect("PostgreSQL tests cannot run here");
        agentspace_server::migrate(&db.url(), None).unwrap();
        let url = db.login(&[
            agentspace_server::CONTROL_ROLE,
            agentspace_audit::WRITER_ROLE,
        ]);
        Self { db, url }
    }

    /// The URL as the server's login (control and audit-writer privileges only).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// A connection as the owner.
    pub fn owner(&self) -> postgres::Client {
        self.db.owner()
    }
}

/// A state directory and, for PostgreSQL, a database: what survives a server restart.
pub struct Place {
    dir: tempfile::TempDir,
    pg: Option<PgDb>,
}

impl Place {
    /// A fresh place on `backend`.
    pub fn new(backend: Backend) -> Arc<Self> {
        Arc::new(Self {
            dir: tempfile::tempdir().unwrap(),
            pg: (backend == Backend::Postgres).then(PgDb::new),
        })
    }

    /// A SQLite place on an existing state directory (one a test prepared).
    pub fn sqlite_in(dir: tempfile::TempDir) -> Arc<Self> {
        Arc::new(Self { dir, pg: None })
    }

    /// The state directory.
    pub fn state(&self) -> &Path {
        self.dir.path()
    }

    /// The database URL the server and `agentspace run` get (`None`: SQLite).
    pub fn database_url(&self) -> Option<String> {
        self.pg.as_ref().map(PgDb::url)
    }

    /// The PostgreSQL database, if this place has one.
    pub fn pg(&self) -> Option<&PgDb> {
        self.pg.as_ref()
    }

    /// The audit log the server writes (the same database, or the state directory).
    pub fn audit(&self) -> agentspace_audit::AuditLog {
        match self.database_url() {
            Some(url) => agentspace_audit::AuditLog::open_url(self.state(), &url).unwrap(),
            None => agentspace_audit::AuditLog::open(self.state()).unwrap(),
        }
    }

    /// The revocation store, on its own connection, as another process (`agentspace run`,
    /// `agentspace revoke`) would open it.
    pub fn revocations(&self) -> agentspace_policy::Revocations {
        agentspace_server::revocations(self.state(), self.database_url().as_deref()).unwrap()
    }

    /// An approval store on its own connection, as another process (`agentspace run`)
    /// would open it.
    pub fn approval_store(&self) -> ApprovalStore {
        ApprovalStore::open(self.state(), self.database_url().as_deref(), self.audit()).unwrap()
    }

    /// Everything the control-plane database holds, as bytes (the SQLite file and its
    /// write-ahead log, or every row of every table as text), to search for secrets.
    pub fn stored_bytes(&self) -> Vec<u8> {
        match &self.pg {
            Some(pg) => {
                let mut owner = pg.owner();
                let mut out = Vec::new();
                for table in [
                    "tenant",
                    "\"user\"",
                    "token",
                    "session",
                    "definition",
                    "approval",
                    "tenant_webhook",
                ] {
                    for row in owner
                        .query(&format!("SELECT t::text FROM {table} t"), &[])
                        .unwrap()
                    {
                        out.extend_from_slice(row.get::<_, String>(0).as_bytes());
                        out.push(b'\n');
                    }
                }
                out
            }
            None => {
                let dir = self.state().join("server");
                let mut out = std::fs::read(dir.join("control.db")).unwrap();
                if let Ok(wal) = std::fs::read(dir.join("control.db-wal")) {
                    out.extend(wal);
                }
                out
            }
        }
    }
}

/// How a test server runs, beyond its place.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The operator's approval webhook.
    pub webhook: Option<String>,
    /// `--allow-private-webhooks`.
    pub allow_private_webhooks: bool,
    /// `--secure-cookies`.
    pub secure_cookies: bool,
}

pub struct TestServer {
    pub url: String,
    pub approvals: ApprovalStore,
    place: Arc<Place>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// A server on a fresh place on `backend`.
    pub fn start(backend: Backend) -> Self {
        Self::start_in(Place::new(backend), Options::default())
    }

    /// A server on `place` (for restarts) with `options`.
    pub fn start_in(place: Arc<Place>, options: Options) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = ServerConfig {
            state_dir: place.state().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: place.database_url(),
            audit_url: None,
            runner: None,
            gateway_config: None,
            approval_webhook: options.webhook,
            allow_private_webhooks: options.allow_private_webhooks,
            secure_cookies: options.secure_cookies,
        };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = Server::bind(config).await.unwrap();
                tx.send((server.local_addr().unwrap(), server.approvals()))
                    .unwrap();
                server
                    .serve(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let (addr, approvals) = rx.recv().unwrap();
        Self {
            url: format!("http://{addr}"),
            approvals,
            place,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn state(&self) -> &Path {
        self.place.state()
    }

    pub fn place(&self) -> Arc<Place> {
        Arc::clone(&self.place)
    }

    /// Stops the server and hands back its place, to start another on.
    pub fn stop(mut self) -> Arc<Place> {
        self.shutdown();
        Arc::clone(&self.place)
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Creates `tenant` with admin `admin`; returns the admin's client.
    pub fn bootstrap(&self, tenant: &str, admin: &str) -> Api {
        let token = agentspace_server::bootstrap_admin(
            self.state(),
            self.place.database_url().as_deref(),
            None,
            &Name::new(tenant).unwrap(),
            admin,
        )
        .unwrap();
        self.api(&token.token)
    }

    pub fn api(&self, token: &str) -> Api {
        Api(Client::new(&self.url, Some(token)).unwrap())
    }

    pub fn anonymous(&self) -> Api {
        Api(Client::new(&self.url, None).unwrap())
    }

    /// Audit events of `tenant`, read straight from the log the server writes.
    pub fn audit_events(&self, tenant: &str) -> Vec<agentspace_core::AuditEvent> {
        self.place
            .audit()
            .events_from(tenant, 0, 100_000)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A client with one user's token.
pub struct Api(pub Client);

impl Api {
    pub fn get(&self, path: &str) -> Response {
        self.0.get(path).unwrap()
    }
    pub fn post(&self, path: &str, body: Value) -> Response {
        self.0.post(path, &body).unwrap()
    }
    pub fn put(&self, path: &str, body: Value) -> Response {
        self.0.request("PUT", path, Some(&body)).unwrap()
    }
    pub fn delete(&self, path: &str) -> Response {
        self.0.request("DELETE", path, None).unwrap()
    }

    /// Adds a user with `roles` and returns a client with a fresh token of theirs.
    pub fn user(&self, server: &TestServer, name: &str, roles: &[&str]) -> Api {
        let r = self.post("/v1/users", json!({"name": name, "roles": roles}));
        assert_eq!(r.status, 201, "{}", r.error_message());
        let r = self.post(
            &format!("/v1/users/{name}/tokens"),
            json!({"label": "test"}),
        );
        assert_eq!(r.status, 201, "{}", r.error_message());
        server.api(r.json()["token"].as_str().unwrap())
    }
}

/// A minimal valid definition of `name` in `tenant`.
pub fn definition(tenant: &str, name: &str, memory: &str) -> String {
    format!(
        "apiVersion: agentspace/v1\nkind: Agent\nmetadata:\n  name: {name}\n  tenant: {tenant}\nspec:\n  resources:\n    memory: {memory}\n"
    )
}

/// Writes a task manifest as `agentspace run` does, under the server's state directory.
pub fn write_task(state: &Path, tenant: &str, agent: &str, user: &str) -> String {
    let id = agentspace_core::TaskId::from_parts(1_760_000_000_000, rand_bits()).to_string();
    let dir = state.join("tasks").join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = json!({
        "version": 1, "task": id, "tenant": tenant, "agent": agent, "user": user,
        "definition": "/defs/agent.yaml", "definition_digest": "sha256:00",
        "command": ["sh", "-c", "true"],
        "limits": {"memory_bytes": 268435456, "pids": 64, "cpu": 1.0, "timeout_secs": 60},
        "state": "exited", "started_at": "2026-01-01T00:00:00Z", "ended_at": "2026-01-01T00:00:01Z",
        "exit_code": 0, "limits_hit": [], "error": null, "host_uid": 100000, "landlock": null,
        "memory_peak_bytes": null, "workspace_changes_dir": "", "workspace_changes": {},
        "workspace_committed": false
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    id
}

fn rand_bits() -> u128 {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    u128::from_le_bytes(b)
}
