//! The MCP gateway benchmark (`bench/mcp.sh`): added latency per `tools/call` through
//! the gateway against calling the same tool server directly.
//!
//! The tool server is `examples/credit-officer/servers/scoring.py` (the Python SDK over
//! stdio). Both paths are driven from this program, alternating round by round:
//! - direct: this program starts the server and speaks MCP to it over stdio itself;
//! - gateway: an `McpGateway` on loopback (with a real policy engine, SQLite audit log
//!   and identity keys in a temporary state directory) starts its own copy of the
//!   server; this program calls it with JSON-RPC over one keep-alive HTTP connection.
//!
//! Every call scores a distinct customer (the loop breaker denies a call repeated past
//! its limit). Each call is timed from sending the request to having the whole response.
//! Prints one JSON object per path and round on stdout.
//!
//! ```text
//! mcp_bench [--rounds 3] [--calls 1000] [--warmup 100]
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentspace_audit::AuditLog;
use agentspace_core::{Actor, Definition, Name, Principal, TaskRef, UserId};
use agentspace_gateway::{McpGateway, Task};
use agentspace_identity::Identity;
use agentspace_policy::PolicyEngine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn score_args(i: usize) -> Value {
    json!({"customer_id": format!("c-{i:06}"), "income": 40_000 + i, "debts": 10_000})
}

/// The scoring server over stdio, spoken to directly.
struct Direct {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next: u64,
}

impl Direct {
    async fn start(script: &Path) -> Self {
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut me = Self {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            _child: child,
            next: 1,
        };
        me.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}),
        )
        .await;
        me.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        me
    }

    async fn send(&mut self, message: Value) {
        let mut line = serde_json::to_vec(&message).unwrap();
        line.push(b'\n');
        self.stdin.write_all(&line).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let mut line = String::new();
            assert!(self.stdout.read_line(&mut line).await.unwrap() > 0);
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{v}");
                return v;
            }
        }
    }
}

/// The gateway's endpoint, over one keep-alive HTTP connection.
struct Gateway {
    sender: SendRequest<Full<Bytes>>,
    session: String,
    next: u64,
}

impl Gateway {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let mut me = Self {
            sender,
            session: String::new(),
            next: 1,
        };
        let (resp, session) = me
            .post(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}))
            .await;
        assert!(resp.get("result").is_some(), "{resp}");
        me.session = session.unwrap();
        me.post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        me
    }

    async fn post(&mut self, message: Value) -> (Value, Option<String>) {
        let mut req = hyper::Request::post("/mcp")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if !self.session.is_empty() {
            req = req.header("mcp-session-id", &self.session);
        }
        let req = req
            .body(Full::new(Bytes::from(
                serde_json::to_vec(&message).unwrap(),
            )))
            .unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let session = resp
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        (value, session)
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let (v, _) = self
            .post(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        assert!(v.get("error").is_none(), "{v}");
        v
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn report(path: &str, round: usize, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{}",
        json!({
            "path": path,
            "round": round,
            "calls": times.len(),
            "p50_us": percentile(&times, 0.50),
            "p99_us": percentile(&times, 0.99),
        })
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = arg(&args, "--rounds", 3);
    let calls = arg(&args, "--calls", 1000);
    let warmup = arg(&args, "--warmup", 100);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let example = repo.join("examples/credit-officer").canonicalize().unwrap();
    let script = example.join("servers/scoring.py");

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let def_path: PathBuf = example.join("bench.yaml");
    let text = "apiVersion: agentspace/v1\nkind: Agent\nmetadata: {name: credit-officer, tenant: acme}\nspec:\n  tools:\n    - server: scoring\n      command: [python3, ./servers/scoring.py]\n      allow: [score]\n";
    let definition = Definition::parse(&def_path, text).unwrap();
    let policy = Arc::new(PolicyEngine::load(&definition, &state).unwrap());
    let audit = AuditLog::open(&state).unwrap();
    let identity = Arc::new(Identity::open(&state));
    let principal = Principal::new(
        Name::new("acme").unwrap(),
        UserId::new("alice@acme.example").unwrap(),
        Actor::new(
            Name::new("credit-officer").unwrap(),
            TaskRef::new("bench").unwrap(),
        ),
    );
    let task = Arc::new(Task::new(principal, policy));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let audit_reader = audit.clone();
    tokio::spawn(
        McpGateway::new(audit, identity)
            .unwrap()
            .serve(listener, Arc::clone(&task)),
    );

    let mut direct = Direct::start(&script).await;
    let mut gateway = Gateway::connect(addr).await;
    let mut n = 0;
    for _ in 0..warmup {
        n += 1;
        direct
            .request(
                "tools/call",
                json!({"name": "score", "arguments": score_args(n)}),
            )
            .await;
        gateway
            .request(
                "tools/call",
                json!({"name": "score", "arguments": score_args(n)}),
            )
            .await;
    }
    for round in 1..=rounds {
        for path in ["direct", "gateway"] {
            let mut times = Vec::with_capacity(calls);
            for _ in 0..calls {
                n += 1;
                let params = json!({"name": "score", "arguments": score_args(n)});
                let start = Instant::now();
                match path {
                    "direct" => {
                        direct.request("tools/call", params).await;
                    }
                    _ => {
                        gateway.request("tools/call", params).await;
                    }
                }
                times.push(start.elapsed());
            }
            report(path, round, times);
        }
    }
    task.close();
    breakdown(&audit_reader);
}

/// Where the gateway's time goes, from its own audit events (on stderr): the p50 of the
/// decision events' `latency_us` (content checks, policy, token, schema: everything
/// before the decision is written) and of the result events' (up to writing the
/// result, so including the decision's durable commit and the tool server's time).
fn breakdown(audit: &AuditLog) {
    let mut decided = Vec::new();
    let mut answered = Vec::new();
    audit
        .query(
            &agentspace_audit::Filter {
                tenant: Some("acme".into()),
                ..agentspace_audit::Filter::default()
            },
            |e| {
                let lat = e.event.latency_us.unwrap_or(0) as f64;
                match e.event.action.as_str() {
                    "tools/call" => decided.push(lat),
                    "tools/result" => answered.push(lat),
                    _ => {}
                }
                Ok(true)
            },
        )
        .unwrap();
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    eprintln!(
        "gateway breakdown, p50 over {} calls: decided {:.0} us, result ready {:.0} us (after the decision's commit and the tool server)",
        decided.len(),
        p50(&mut decided),
        p50(&mut answered)
    );
}
