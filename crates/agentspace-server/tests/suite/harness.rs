//! A control plane on loopback in its own runtime thread, on a temporary state directory.

use std::path::{Path, PathBuf};

use agentspace_core::Name;
use agentspace_server::client::{Client, Response};
use agentspace_server::{ApprovalStore, Server, ServerConfig};
use serde_json::{Value, json};

pub struct TestServer {
    pub url: String,
    pub approvals: ApprovalStore,
    state: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self::start_on(dir.path());
        s._dir = Some(dir);
        s
    }

    /// A server on an existing state directory (for restarts).
    pub fn start_on(state: &Path) -> Self {
        Self::start_with(state, None)
    }

    /// A server on `state` announcing approvals to `webhook`.
    pub fn start_with(state: &Path, webhook: Option<String>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state_dir = state.to_owned();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = Server::bind(ServerConfig {
                    state_dir,
                    listen: "127.0.0.1:0".parse().unwrap(),
                    audit_url: None,
                    runner: None,
                    gateway_config: None,
                    approval_webhook: webhook,
                })
                .await
                .unwrap();
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
            state: state.to_owned(),
            stop: Some(stop),
            thread: Some(thread),
            _dir: None,
        }
    }

    pub fn state(&self) -> &Path {
        &self.state
    }

    /// Stops the server and hands back its state directory (kept alive by the caller).
    pub fn stop(mut self) -> Option<tempfile::TempDir> {
        self.shutdown();
        self._dir.take()
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
            &self.state,
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

/// Audit events of `tenant` (read straight from the log on disk).
pub fn audit_events(state: &Path, tenant: &str) -> Vec<agentspace_core::AuditEvent> {
    let log = agentspace_audit::AuditLog::open(state).unwrap();
    log.events_from(tenant, 0, 100_000)
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}
