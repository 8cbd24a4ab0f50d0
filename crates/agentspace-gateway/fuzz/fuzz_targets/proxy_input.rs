//! Arbitrary bytes from an agent on one door connection: request lines, headers, framing,
//! CONNECT, TLS inside tunnels. The gateway must answer or close, never panic. Allowed
//! requests go to a resolve override pointing at a closed local port, so nothing leaves
//! the machine.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agentspace_audit::AuditLog;
use agentspace_core::{Actor, Definition, Name, Principal, TaskRef, UserId};
use agentspace_gateway::{Arrival, Gateway, GatewayConfig, ResolveOverride, Task};
use agentspace_policy::PolicyEngine;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AGENT: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: fuzz, tenant: acme}
spec:
  egress:
    - name: plain
      hosts: [plain.example.com, api.example.com]
";

struct Env {
    runtime: tokio::runtime::Runtime,
    gateway: Arc<Gateway>,
    task: Arc<Task>,
    _dir: tempfile::TempDir,
}

fn setup() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, AGENT).unwrap();
    let definition = Definition::parse(&path, AGENT).unwrap();
    let state = dir.path().join("state");
    let policy = Arc::new(PolicyEngine::load(&definition, &state).unwrap());
    let audit = AuditLog::open(&state).unwrap();
    let mut config = GatewayConfig::new(&state);
    config.system_roots = false;
    for entry in ["plain.example.com:80:127.0.0.1:9", "api.example.com:443:127.0.0.1:9"] {
        config.resolve.push(ResolveOverride::parse(entry).unwrap());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let gateway = runtime.block_on(async { Gateway::new(config, audit).unwrap() });
    let principal = Principal::new(
        Name::new("acme").unwrap(),
        UserId::new("fuzz@acme.example").unwrap(),
        Actor::new(Name::new("fuzz").unwrap(), TaskRef::new("t1").unwrap()),
    );
    Env {
        runtime,
        gateway,
        task: Arc::new(Task::new(principal, policy)),
        _dir: dir,
    }
}

static ENV: OnceLock<Env> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let env = ENV.get_or_init(setup);
    env.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(Arc::clone(&env.gateway).serve_connection(
            server,
            Arc::clone(&env.task),
            Arrival::Proxy,
        ));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(200), client.read_to_end(&mut sink)).await;
        serving.abort();
        // A panic in the connection task is a finding.
        if let Err(e) = serving.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    });
});
