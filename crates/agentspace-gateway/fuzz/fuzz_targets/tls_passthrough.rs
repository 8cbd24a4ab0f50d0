//! Arbitrary bytes as the first flight of a TLS connection to a passed-through host:
//! the ClientHello reader (records, lengths, extensions, server names) behind both ways
//! in, a transparent arrival and `CONNECT pinned.example.com:443`. The gateway must
//! relay, refuse or close, never panic. Allowed tunnels go to a resolve override pointing
//! at a closed local port, so nothing leaves the machine.
#![no_main]

use std::net::SocketAddr;
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
    - name: pinned
      hosts: [pinned.example.com]
      tls: passthrough
    - name: api
      hosts: [api.example.com]
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
    for entry in ["pinned.example.com:443:127.0.0.1:9", "api.example.com:443:127.0.0.1:9"] {
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
    let Some((&mode, hello)) = data.split_first() else {
        return;
    };
    let env = ENV.get_or_init(setup);
    env.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let original: SocketAddr = "203.0.113.7:443".parse().unwrap();
        let arrival = if mode & 1 == 0 {
            Arrival::Transparent { original }
        } else {
            Arrival::Proxy
        };
        let serving = tokio::spawn(Arc::clone(&env.gateway).serve_connection(
            server,
            Arc::clone(&env.task),
            arrival,
        ));
        if mode & 1 == 1 {
            let _ = client
                .write_all(b"CONNECT pinned.example.com:443 HTTP/1.1\r\nHost: pinned.example.com:443\r\n\r\n")
                .await;
        }
        // Most inputs should reach the ClientHello reader: start them as a handshake
        // record unless they already do.
        if hello.first() != Some(&0x16) {
            let _ = client.write_all(&[0x16, 3, 1]).await;
        }
        let _ = client.write_all(hello).await;
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
