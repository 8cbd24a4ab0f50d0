//! The MCP gateway end to end: the credit officer of examples/credit-officer/ (its
//! definition and its Python MCP servers, started by the gateway as stdio programs),
//! and the official MCP Python SDK as the agent, on loopback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentspace_audit::{AuditLog, Filter, VerifyOptions};
use agentspace_core::{Actor, Definition, Name, Principal, TaskRef, UserId};
use agentspace_gateway::{McpGateway, Task};
use agentspace_identity::Identity;
use agentspace_policy::PolicyEngine;
use serde_json::Value;
use tokio::net::TcpListener;

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/credit-officer")
        .canonicalize()
        .unwrap()
}

/// The Python SDK must be installed (scripts/install-deps does it).
fn require_python_mcp() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import mcp.client, mcp.server.mcpserver"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the MCP Python SDK is missing: run scripts/install-deps (pip install of `mcp`)"
    );
}

struct Scenario {
    _dir: tempfile::TempDir,
    audit: AuditLog,
    task: Arc<Task>,
    url: String,
    serving: tokio::task::JoinHandle<()>,
}

impl Scenario {
    /// Ends the task and waits for the endpoint to finish: every event it holds is then
    /// in the log (the state directory lives as long as the returned guard).
    async fn finish(self) -> (AuditLog, tempfile::TempDir) {
        self.task.close();
        self.serving.await.unwrap();
        (self.audit, self._dir)
    }
}

async fn start(definition_text: Option<String>) -> Scenario {
    require_python_mcp();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let def_path = example_dir().join("credit-officer.yaml");
    let text = definition_text.unwrap_or_else(|| std::fs::read_to_string(&def_path).unwrap());
    let definition = Definition::parse(&def_path, &text).unwrap();
    let policy = Arc::new(PolicyEngine::load(&definition, &state).unwrap());
    let audit = AuditLog::open(&state).unwrap();
    let identity = Arc::new(Identity::open(&state));
    let principal = Principal::new(
        Name::new("acme").unwrap(),
        UserId::new("alice@acme.example").unwrap(),
        Actor::new(
            Name::new("credit-officer").unwrap(),
            TaskRef::new("t-mcp").unwrap(),
        ),
    );
    let task = Arc::new(Task::new(principal, policy));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let serving = tokio::spawn(
        McpGateway::new(audit.clone(), identity)
            .unwrap()
            .serve(listener, Arc::clone(&task)),
    );
    Scenario {
        _dir: dir,
        audit,
        task,
        url,
        serving,
    }
}

/// Runs examples/credit-officer/agent.py against `url`: its steps by name.
async fn run_agent(url: &str) -> BTreeMap<String, Value> {
    let script = example_dir().join("agent.py");
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new("python3")
            .arg(&script)
            .arg(url)
            .output(),
    )
    .await
    .expect("the agent did not finish in 120 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the agent failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (v["step"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

async fn events(audit: &AuditLog) -> Vec<Value> {
    let audit = audit.clone();
    tokio::task::spawn_blocking(move || {
        let mut events = Vec::new();
        audit
            .query(
                &Filter {
                    tenant: Some("acme".into()),
                    ..Filter::default()
                },
                |e| {
                    events.push(serde_json::to_value(&e.event).unwrap());
                    Ok(true)
                },
            )
            .unwrap();
        events
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_credit_officer_scenario_end_to_end() {
    let s = start(None).await;
    let steps = run_agent(&s.url).await;
    let step = |name: &str| -> &Value {
        steps
            .get(name)
            .unwrap_or_else(|| panic!("no step `{name}` in {steps:#?}"))
    };

    // Only allowed tools are listed: never HR, medical or delete_customer.
    assert_eq!(
        step("list")["tools"],
        serde_json::json!(["lookup_customer", "render_letter", "score", "send_mail"])
    );
    // Mail outside needs approval (the HTTP gateway's `approval required`).
    assert_eq!(step("mail-external")["ok"], false);
    assert_eq!(step("mail-external")["reason"], "approval required");
    // The lookup is allowed and returns the customer.
    assert_eq!(step("lookup")["ok"], true, "{}", step("lookup"));
    assert_eq!(step("lookup")["structured"]["name"], "Jane Doe");
    // Tools not allowed look exactly like tools that do not exist.
    for (name, tool) in [
        ("hr", "list_salaries"),
        ("medical", "get_record"),
        ("delete", "delete_customer"),
    ] {
        assert_eq!(step(name)["ok"], false);
        assert_eq!(step(name)["error"], -32602, "{}", step(name));
        assert_eq!(step(name)["message"], format!("Unknown tool: {tool}"));
    }
    // After the lookup the session carries pii: mail is not cleared for it.
    assert_eq!(step("mail-after-lookup")["ok"], false);
    assert_eq!(
        step("mail-after-lookup")["code"],
        "flow",
        "{}",
        step("mail-after-lookup")
    );
    // Scoring is cleared for pii; the fourth identical call in a row is a loop.
    for n in 1..=3 {
        let s = step(&format!("score-{n}"));
        assert_eq!(s["ok"], true, "{s}");
        assert_eq!(s["structured"]["customer_id"], "c-001");
    }
    assert_eq!(step("score-4")["code"], "loop", "{}", step("score-4"));
    assert_eq!(step("score-bad-arguments")["code"], "invalid-arguments");
    // The tampered record is delivered, flagged.
    let tampered = step("lookup-tampered");
    assert_eq!(tampered["ok"], true);
    assert_eq!(tampered["flags"], serde_json::json!(["instruction"]));
    // Resources and prompts: only what `resources` and `prompts` allow is listed; the
    // rest does not exist; a read is checked for injections like a tool result.
    assert_eq!(
        step("resources")["uris"],
        serde_json::json!(["customer://index"])
    );
    assert_eq!(
        step("templates")["templates"],
        serde_json::json!(["customer://{customer_id}"])
    );
    assert_eq!(step("read-record")["ok"], true, "{}", step("read-record"));
    assert!(
        step("read-record")["text"]
            .as_str()
            .unwrap()
            .contains("Jane Doe")
    );
    assert_eq!(
        step("read-tampered")["flags"],
        serde_json::json!(["instruction"])
    );
    assert!(
        !step("read-tampered")["text"]
            .as_str()
            .unwrap()
            .contains("IGNORE PREVIOUS"),
        "{}",
        step("read-tampered")
    );
    assert_eq!(step("read-hidden")["ok"], false);
    assert_eq!(
        step("read-hidden")["error"],
        -32602,
        "{}",
        step("read-hidden")
    );
    assert_eq!(
        step("read-hidden")["message"],
        "Unknown resource: internal://audit-notes"
    );
    assert_eq!(
        step("prompts")["prompts"],
        serde_json::json!(["credit_brief"])
    );
    assert_eq!(step("brief")["ok"], true, "{}", step("brief"));
    assert!(step("brief")["text"].as_str().unwrap().contains("c-001"));
    assert_eq!(step("prompt-hidden")["error"], -32602);
    assert_eq!(
        step("prompt-hidden")["message"],
        "Unknown prompt: collections_script"
    );
    assert_eq!(step("letter")["ok"], true);
    assert!(
        step("letter")["text"]
            .as_str()
            .unwrap()
            .contains("Jane Doe")
    );

    // Every step is in the audit log, which verifies, once the task has ended (plain
    // results are written with the next commit, the last ones when the task ends).
    let (audit, _state) = s.finish().await;
    let events = events(&audit).await;
    let find = |action: &str, resource: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["action"] == action && e["resource"] == resource)
            .collect()
    };
    let lookups = find("tools/call", "mcp://customer-db/lookup_customer");
    assert_eq!(lookups.len(), 2);
    assert_eq!(lookups[0]["decision"], "allow");
    assert_eq!(lookups[0]["kind"], "mcp_call");
    assert_eq!(lookups[0]["user"], "alice@acme.example");
    assert!(
        lookups[0]["args_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let results = find("tools/result", "mcp://customer-db/lookup_customer");
    assert_eq!(results[0]["details"]["taint"], serde_json::json!(["pii"]));
    assert_eq!(
        results[1]["details"]["flags"],
        serde_json::json!(["instruction"])
    );
    for tool in ["list_salaries", "get_record", "delete_customer"] {
        let denied = find("tools/call", &format!("mcp://?/{tool}"));
        assert_eq!(denied.len(), 1, "{tool}");
        assert_eq!(denied[0]["decision"], "deny");
        assert_eq!(denied[0]["details"]["code"], "not-permitted");
    }
    let reads = find(
        "resources/read",
        "mcp://customer-db/resources/customer://c-001",
    );
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0]["decision"], "allow");
    assert_eq!(
        reads[0]["policies"],
        serde_json::json!(["resources.customer-db"])
    );
    let hidden = find("resources/read", "mcp://?/resources/internal://audit-notes");
    assert_eq!(hidden[0]["decision"], "deny");
    assert_eq!(hidden[0]["details"]["code"], "not-permitted");
    let tampered = find(
        "resources/result",
        "mcp://customer-db/resources/customer://c-002",
    );
    assert_eq!(
        tampered[0]["details"]["flags"],
        serde_json::json!(["instruction"])
    );
    assert_eq!(tampered[0]["details"]["labels"], serde_json::json!(["pii"]));
    let briefs = find("prompts/get", "mcp://customer-db/prompts/credit_brief");
    assert_eq!(briefs[0]["decision"], "allow");
    assert_eq!(
        briefs[0]["request"]["arguments"],
        serde_json::json!(["customer_id"])
    );
    assert_eq!(
        find("prompts/result", "mcp://customer-db/prompts/credit_brief").len(),
        1
    );
    assert_eq!(
        find("prompts/get", "mcp://?/prompts/collections_script")[0]["decision"],
        "deny"
    );
    let subscribe = find("resources/subscribe", "mcp://?/resources/customer://c-001");
    assert_eq!(subscribe[0]["decision"], "deny");
    let listing = find("resources/list", "mcp://*");
    assert_eq!(
        listing[0]["details"]["resources"],
        serde_json::json!(["customer://index"])
    );
    let mails = find("tools/call", "mcp://mail/send_mail");
    assert_eq!(mails[0]["decision"], "approval_required");
    assert_eq!(mails[1]["decision"], "deny");
    assert_eq!(mails[1]["details"]["code"], "flow");
    assert_eq!(mails[1]["details"]["labels"], serde_json::json!(["pii"]));
    let scores = find("tools/call", "mcp://scoring/score");
    let codes: Vec<&Value> = scores.iter().map(|e| &e["details"]["code"]).collect();
    assert_eq!(
        codes,
        [
            &Value::Null,
            &Value::Null,
            &Value::Null,
            &serde_json::json!("loop"),
            &serde_json::json!("invalid-arguments")
        ]
    );
    // No result is audited for a refused call, and every allowed call has one after it,
    // the last call of the task included.
    assert_eq!(find("tools/result", "mcp://scoring/score").len(), 3);
    let decided: Vec<String> = events
        .iter()
        .filter(|e| {
            ["tools/call", "resources/read", "prompts/get"].contains(&e["action"].as_str().unwrap())
                && e["decision"] == "allow"
        })
        .map(|e| format!("acme:{}", e["seq"]))
        .collect();
    let answered: Vec<String> = events
        .iter()
        .filter_map(|e| e["details"]["call"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(decided, answered);
    let last = events
        .iter()
        .rev()
        .find(|e| e["action"] == "tools/result")
        .unwrap();
    assert_eq!(last["resource"], "mcp://templates/render_letter", "{last}");
    // Nothing of HR or medical was ever started or asked.
    assert!(!events.iter().any(|e| {
        e["resource"]
            .as_str()
            .is_some_and(|r| r.starts_with("mcp://hr") || r.starts_with("mcp://medical"))
    }));
    let verified = tokio::task::spawn_blocking(move || {
        audit.verify(&VerifyOptions {
            tenant: Some("acme".into()),
            ..VerifyOptions::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        verified.iter().map(|t| t.events).sum::<u64>(),
        events.len() as u64
    );
}

/// A streamable-HTTP tool server (the scoring server of the example, served by the
/// Python SDK over HTTP with SSE responses) behind the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_streamable_http_tool_server() {
    require_python_mcp();
    let (mut server, port) = http_server(example_dir().join("servers/scoring.py"), |c, port| {
        c.args(["--http", &port.to_string()]);
    })
    .await;
    let text = std::fs::read_to_string(example_dir().join("credit-officer.yaml"))
        .unwrap()
        .replace(
            "command: [python3, ./servers/scoring.py]",
            &format!("url: http://127.0.0.1:{port}/mcp"),
        );
    assert!(text.contains("url: http://127.0.0.1:"));
    let s = start(Some(text)).await;
    let steps = run_agent(&s.url).await;
    for n in 1..=3 {
        let step = &steps[&format!("score-{n}")];
        assert_eq!(step["ok"], true, "{step}");
        assert_eq!(step["structured"]["band"], "A", "{step}");
    }
    assert_eq!(steps["score-4"]["code"], "loop");
    assert_eq!(steps["mail-after-lookup"]["code"], "flow");
    s.task.close();
    let _ = server.kill().await;
}

fn servers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers")
}

/// Runs tests/servers/call.py: each `(tool, arguments)` in turn, one JSON line each.
async fn call(url: &str, calls: &[(&str, &str)]) -> Vec<Value> {
    run_client("call.py", url, calls).await
}

/// Runs the client `script` of tests/servers/ against `url` with `calls`; its JSON lines.
async fn run_client(script: &str, url: &str, calls: &[(&str, &str)]) -> Vec<Value> {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(servers_dir().join(script)).arg(url);
    for (tool, args) in calls {
        cmd.args([tool, args]);
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(90), cmd.output())
        .await
        .expect("the client did not finish in 90 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The upstream receives the per-call identity token (over stdio in `_meta`, over HTTP
/// in the `Agentspace-Identity` header): a one-time token for the user and the agent,
/// for exactly that server, that verifies against the tenant's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_upstreams_receive_the_per_call_identity() {
    require_python_mcp();
    let script = servers_dir().join("whoami.py");
    let (mut http_server, port) = http_server(script.clone(), |c, port| {
        c.args(["--http", &port.to_string()]);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let url = format!("http://127.0.0.1:{port}/mcp");
    let text = format!(
        "apiVersion: agentspace/v1
kind: Agent
metadata: {{name: credit-officer, tenant: acme}}
spec:
  tools:
    - server: local
      command: [python3, {script}]
      allow: [whoami]
    - server: remote
      url: {url}
      allow: [whoami]
",
        script = script.display()
    );
    let def_path = dir.path().join("agent.yaml");
    let definition = Definition::parse(&def_path, &text).unwrap();
    let policy = Arc::new(PolicyEngine::load(&definition, &state).unwrap());
    let audit = AuditLog::open(&state).unwrap();
    let identity = Arc::new(Identity::open(&state));
    let principal = Principal::new(
        Name::new("acme").unwrap(),
        UserId::new("alice@acme.example").unwrap(),
        Actor::new(
            Name::new("credit-officer").unwrap(),
            TaskRef::new("t-id").unwrap(),
        ),
    );
    let task = Arc::new(Task::new(principal.clone(), policy));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mcp = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(
        McpGateway::new(audit, Arc::clone(&identity))
            .unwrap()
            .serve(listener, Arc::clone(&task)),
    );
    // Both servers offer `whoami`: the first in the definition (stdio) serves it.
    let out = call(&mcp, &[("whoami", "{}")]).await;
    let stdio_token = out[0]["text"].as_str().unwrap().to_owned();
    let tenant = Name::new("acme").unwrap();
    let target = agentspace_identity::CallTarget::new("POST", "http://local").unwrap();
    let verified = identity
        .verify(
            &stdio_token,
            &agentspace_identity::Expected::call(&tenant, &target),
            &agentspace_identity::NothingRevoked,
        )
        .unwrap_or_else(|e| panic!("{e}: {stdio_token}"));
    assert_eq!(verified.principal(), &principal);
    // Once only.
    assert!(
        identity
            .verify(
                &stdio_token,
                &agentspace_identity::Expected::call(&tenant, &target),
                &agentspace_identity::NothingRevoked,
            )
            .is_err()
    );
    task.close();

    // The HTTP server alone: the stdio one allows nothing now.
    let text = text.replacen("      allow: [whoami]\n", "      allow: []\n", 1);
    let definition = Definition::parse(&def_path, &text).unwrap();
    let policy = Arc::new(PolicyEngine::load(&definition, &state).unwrap());
    let task = Arc::new(Task::new(principal.clone(), policy));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mcp = format!("http://{}/mcp", listener.local_addr().unwrap());
    let audit = AuditLog::open(&state).unwrap();
    tokio::spawn(
        McpGateway::new(audit, Arc::clone(&identity))
            .unwrap()
            .serve(listener, Arc::clone(&task)),
    );
    let out = call(&mcp, &[("whoami", "{}")]).await;
    let http_token = out[0]["text"].as_str().unwrap().to_owned();
    let target = agentspace_identity::CallTarget::new("POST", &url).unwrap();
    let verified = identity
        .verify(
            &http_token,
            &agentspace_identity::Expected::call(&tenant, &target),
            &agentspace_identity::NothingRevoked,
        )
        .unwrap_or_else(|e| panic!("{e}: {http_token}"));
    assert_eq!(verified.principal(), &principal);
    task.close();
    let _ = http_server.kill().await;
}

/// The taint a tool result leaves stops the task's HTTP egress too: the HTTP gateway and
/// the MCP gateway of a task share its policy engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_taint_stops_http_egress_of_the_same_task() {
    let text = std::fs::read_to_string(example_dir().join("credit-officer.yaml"))
        .unwrap()
        .replace(
            "spec:\n",
            "spec:\n  egress:\n    - name: public-web\n      hosts: [www.example.org]\n",
        );
    let s = start(Some(text)).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = agentspace_gateway::Gateway::new(
        agentspace_gateway::GatewayConfig::new(dir.path().join("gw")),
        s.audit.clone(),
    )
    .unwrap();
    let door = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = door.local_addr().unwrap();
    let task = Arc::clone(&s.task);
    tokio::spawn(async move {
        while let Ok((stream, _)) = door.accept().await {
            tokio::spawn(Arc::clone(&gateway).serve_connection(
                stream,
                Arc::clone(&task),
                agentspace_gateway::Arrival::Proxy,
            ));
        }
    });

    let out = call(
        &s.url,
        &[("lookup_customer", r#"{"customer_id": "c-001"}"#)],
    )
    .await;
    assert_eq!(out[0]["ok"], true, "{}", out[0]);
    let curl = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "30",
            "-x",
        ])
        .arg(format!("http://{proxy}"))
        .arg("http://www.example.org/")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&curl.stdout);
    let (body, status) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(status, "403", "{stdout}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["code"], "flow", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("`public-web` is not cleared"),
        "{body}"
    );
    let events = events(&s.audit).await;
    let http = events.iter().find(|e| e["kind"] == "http_request").unwrap();
    assert_eq!(http["decision"], "deny");
    assert_eq!(http["details"]["code"], "flow");
    s.task.close();
}

/// A stdio server that dies in the middle of a call fails that call (audited) and is
/// started again for the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_a_crashed_stdio_server_is_started_again() {
    require_python_mcp();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let text = format!(
        "apiVersion: agentspace/v1
kind: Agent
metadata: {{name: credit-officer, tenant: acme}}
spec:
  tools:
    - server: local
      command: [python3, {}]
      allow: [whoami, crash]
",
        servers_dir().join("whoami.py").display()
    );
    let definition = Definition::parse(&dir.path().join("agent.yaml"), &text).unwrap();
    let policy = Arc::new(PolicyEngine::load(&definition, &state).unwrap());
    let audit = AuditLog::open(&state).unwrap();
    let principal = Principal::new(
        Name::new("acme").unwrap(),
        UserId::new("alice@acme.example").unwrap(),
        Actor::new(
            Name::new("credit-officer").unwrap(),
            TaskRef::new("t-crash").unwrap(),
        ),
    );
    let task = Arc::new(Task::new(principal, policy));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mcp = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(
        McpGateway::new(audit.clone(), Arc::new(Identity::open(&state)))
            .unwrap()
            .serve(listener, Arc::clone(&task)),
    );
    let out = call(&mcp, &[("crash", "{}"), ("whoami", "{}")]).await;
    assert_eq!(out[0]["ok"], false, "{}", out[0]);
    assert_eq!(out[0]["error"], -32603, "{}", out[0]);
    assert_eq!(out[1]["ok"], true, "{}", out[1]);
    let events = events(&audit).await;
    let crash = events
        .iter()
        .find(|e| e["action"] == "tools/result" && e["resource"] == "mcp://local/crash")
        .unwrap();
    assert!(
        crash["reason"].as_str().unwrap().contains("closed"),
        "{crash}"
    );
    task.close();
}

/// A real published tool server behind the gateway: the reference filesystem server
/// (`@modelcontextprotocol/server-filesystem` from npm, installed by
/// scripts/install-deps), only its read tools allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_published_filesystem_server() {
    require_python_mcp();
    let ok = std::process::Command::new("sh")
        .args(["-c", "command -v mcp-server-filesystem"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "mcp-server-filesystem is missing: run scripts/install-deps (npm install -g @modelcontextprotocol/server-filesystem)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    let files = dir.path().join("files").canonicalize().unwrap();
    std::fs::write(files.join("rates.txt"), "base rate 3.1%\n").unwrap();
    let state = dir.path().join("state");
    let text = format!(
        "apiVersion: agentspace/v1
kind: Agent
metadata: {{name: credit-officer, tenant: acme}}
spec:
  tools:
    - server: files
      command: [mcp-server-filesystem, {}]
      allow: [read_text_file, list_allowed_directories]
      labels: [confidential]
",
        files.display()
    );
    let definition = Definition::parse(&dir.path().join("agent.yaml"), &text).unwrap();
    let policy = Arc::new(PolicyEngine::load(&definition, &state).unwrap());
    let audit = AuditLog::open(&state).unwrap();
    let principal = Principal::new(
        Name::new("acme").unwrap(),
        UserId::new("alice@acme.example").unwrap(),
        Actor::new(
            Name::new("credit-officer").unwrap(),
            TaskRef::new("t-fs").unwrap(),
        ),
    );
    let task = Arc::new(Task::new(principal.clone(), Arc::clone(&policy)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mcp = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(
        McpGateway::new(audit.clone(), Arc::new(Identity::open(&state)))
            .unwrap()
            .serve(listener, Arc::clone(&task)),
    );
    let rates = files.join("rates.txt").display().to_string();
    let read = serde_json::json!({ "path": rates }).to_string();
    let out = call(
        &mcp,
        &[
            ("read_text_file", read.as_str()),
            ("write_file", r#"{"path": "/tmp/x", "content": "x"}"#),
            ("read_text_file", r#"{"head": 1}"#),
            ("read_text_file", r#"{"path": "/etc/passwd"}"#),
        ],
    )
    .await;
    assert_eq!(out[0]["ok"], true, "{}", out[0]);
    assert!(out[0]["text"].as_str().unwrap().contains("base rate 3.1%"));
    // Not allowed: as if it did not exist.
    assert_eq!(out[1]["error"], -32602, "{}", out[1]);
    // The server's own schema is enforced before anything reaches it.
    assert_eq!(out[2]["code"], "invalid-arguments", "{}", out[2]);
    // Allowed by policy, refused by the server itself (outside its directory).
    assert_eq!(out[3]["ok"], false, "{}", out[3]);
    // The read tainted the session.
    assert!(
        policy
            .session_labels(&principal)
            .unwrap()
            .contains("confidential")
    );
    task.close();
}

/// Runs tests/servers/relay_client.py: like `call`, with the SDK client's sampling,
/// elicitation, roots and logging callbacks answering what tool servers ask.
async fn call_answering(url: &str, calls: &[(&str, &str)]) -> Vec<Value> {
    run_client("relay_client.py", url, calls).await
}

/// A gateway for a definition of `tools` (the `spec.tools` YAML list) on loopback.
async fn gateway_for(dir: &Path, tools: &str, task: &str) -> (AuditLog, Arc<Task>, String) {
    let state = dir.join("state");
    let text = format!(
        "apiVersion: agentspace/v1\nkind: Agent\nmetadata: {{name: credit-officer, tenant: acme}}\nspec:\n  tools:\n{tools}"
    );
    let definition = Definition::parse(&dir.join("agent.yaml"), &text).unwrap();
    let policy = Arc::new(PolicyEngine::load(&definition, &state).unwrap());
    let audit = AuditLog::open(&state).unwrap();
    let principal = Principal::new(
        Name::new("acme").unwrap(),
        UserId::new("alice@acme.example").unwrap(),
        Actor::new(
            Name::new("credit-officer").unwrap(),
            TaskRef::new(task).unwrap(),
        ),
    );
    let task = Arc::new(Task::new(principal, policy));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(
        McpGateway::new(audit.clone(), Arc::new(Identity::open(&state)))
            .unwrap()
            .serve(listener, Arc::clone(&task)),
    );
    (audit, task, url)
}

/// A tool server asks the agent's client in the middle of a call (sampling,
/// elicitation, roots, progress, a log line): what the server's `relay` lets through is
/// decided, audited and relayed to the SDK client's callbacks, and their answers go
/// back; the rest is refused and audited; an answer carrying data the server is not
/// cleared for is withheld.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_server_requests_are_relayed_when_allowed_and_refused_otherwise() {
    require_python_mcp();
    let dir = tempfile::tempdir().unwrap();
    let tools = format!(
        "    - server: asks\n      command: [python3, {}]\n      allow: [ask_model, ask_user, ask_roots, progress]\n      relay: [sampling, elicitation, progress]\n",
        servers_dir().join("asks.py").display()
    );
    let (audit, task, url) = gateway_for(dir.path(), &tools, "t-relay").await;
    let out = call_answering(
        &url,
        &[
            ("ask_model", r#"{"question": "which band?"}"#),
            ("ask_user", "{}"),
            ("ask_roots", "{}"),
            ("ask_model", r#"{"question": "a card number please"}"#),
            ("progress", "{}"),
        ],
    )
    .await;
    // Sampling: the client's model was asked and its answer reached the server.
    assert_eq!(out[0]["text"], "model said: band A", "{}", out[0]);
    assert_eq!(out[0]["seen"][0]["sampling"], "which band?", "{}", out[0]);
    // Elicitation: the user (the client's callback) accepted.
    assert_eq!(out[1]["text"], "user: accept True", "{}", out[1]);
    assert_eq!(out[1]["seen"][0]["elicitation"], "Approve the credit line?");
    // Roots are not in `relay`: the client is never asked, the server is refused.
    assert!(
        out[2]["text"].as_str().unwrap().starts_with("refused"),
        "{}",
        out[2]
    );
    assert_eq!(out[2]["seen"], serde_json::json!([]), "{}", out[2]);
    // The model answered with a card number: `asks` is not cleared for pii.
    assert_eq!(out[3]["seen"][0]["sampling"], "a card number please");
    let refused = out[3]["text"].as_str().unwrap();
    assert!(refused.starts_with("refused"), "{}", out[3]);
    assert!(!refused.contains("4111"), "{}", out[3]);
    // Progress is relayed; the log line (with an injection) is not in `relay`.
    assert_eq!(out[4]["text"], "done", "{}", out[4]);
    assert_eq!(
        out[4]["progress"],
        serde_json::json!(["halfway", "done"]),
        "{}",
        out[4]
    );
    assert_eq!(out[4]["seen"], serde_json::json!([]), "{}", out[4]);

    let events = events(&audit).await;
    let of = |action: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["action"] == action && e["resource"] == "mcp://asks")
            .collect()
    };
    let requests = of("server-request");
    let summary: Vec<(String, String, String)> = requests
        .iter()
        .map(|e| {
            (
                e["request"]["method"].as_str().unwrap().to_owned(),
                e["decision"].as_str().unwrap().to_owned(),
                e["details"]["code"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "sampling/createMessage".into(),
                "allow".into(),
                String::new()
            ),
            ("elicitation/create".into(), "allow".into(), String::new()),
            ("roots/list".into(), "deny".into(), "not-permitted".into()),
            (
                "sampling/createMessage".into(),
                "allow".into(),
                String::new()
            ),
        ]
    );
    assert_eq!(requests[0]["policies"], serde_json::json!(["relay.asks"]));
    let responses = of("server-response");
    assert_eq!(responses.len(), 3);
    assert_eq!(responses[0]["decision"], "allow");
    assert_eq!(responses[2]["decision"], "deny");
    assert_eq!(responses[2]["details"]["code"], "flow");
    assert_eq!(
        responses[2]["details"]["detected"],
        serde_json::json!(["card-number"])
    );
    let notes = of("server-notification");
    let progress: Vec<&&Value> = notes
        .iter()
        .filter(|e| e["request"]["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 2);
    assert!(
        progress
            .iter()
            .all(|e| e["decision"] == "allow" && e["details"]["relayed"] == 1)
    );
    let log = notes
        .iter()
        .find(|e| e["request"]["method"] == "notifications/message")
        .unwrap();
    assert_eq!(log["decision"], "deny");
    assert_eq!(log["details"]["flags"], serde_json::json!(["instruction"]));
    task.close();
}

/// A tool server's notification that its tools changed is relayed on the session's
/// `GET` stream when `relay` has `listChanged`, and the gateway lists the tools again:
/// a tool that appeared can be called (if allowed); without `listChanged` the client is
/// not told, and the refusal is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_a_changed_tool_list_is_relayed_and_listed_again() {
    require_python_mcp();
    for relayed in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let relay = if relayed { "[listChanged]" } else { "[]" };
        let tools = format!(
            "    - server: asks\n      command: [python3, {}]\n      allow: [add_tool, bonus]\n      relay: {relay}\n",
            servers_dir().join("asks.py").display()
        );
        let (audit, task, url) = gateway_for(dir.path(), &tools, "t-changed").await;
        let out = call_answering(&url, &[("add_tool", "{}"), ("bonus", "{}")]).await;
        assert_eq!(out[0]["text"], "added", "{}", out[0]);
        // Listed again either way: the new tool is allowed, so it can be called.
        assert_eq!(out[1]["text"], "bonus", "{}", out[1]);
        let told = out[0]["notified"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("notifications/tools/list_changed"));
        assert_eq!(told, relayed, "{}", out[0]);
        let events = events(&audit).await;
        let note = events
            .iter()
            .find(|e| e["action"] == "server-notification")
            .unwrap();
        assert_eq!(
            note["request"]["method"],
            "notifications/tools/list_changed"
        );
        assert_eq!(note["decision"], if relayed { "allow" } else { "deny" });
        task.close();
    }
}

/// The same over a streamable-HTTP tool server: its requests arrive on the SSE stream of
/// the gateway's call and their answers are POSTed back in its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_server_requests_of_an_http_tool_server_are_relayed() {
    require_python_mcp();
    let (mut server, port) = http_server(servers_dir().join("asks.py"), |c, port| {
        c.args(["--http", &port.to_string()]);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tools = format!(
        "    - server: asks\n      url: http://127.0.0.1:{port}/mcp\n      allow: [ask_model, ask_user, ask_roots]\n      relay: [sampling, elicitation]\n"
    );
    let (audit, task, url) = gateway_for(dir.path(), &tools, "t-relay-http").await;
    let out = call_answering(
        &url,
        &[
            ("ask_model", r#"{"question": "which band?"}"#),
            ("ask_user", "{}"),
            ("ask_roots", "{}"),
        ],
    )
    .await;
    assert_eq!(out[0]["text"], "model said: band A", "{}", out[0]);
    assert_eq!(out[1]["text"], "user: accept True", "{}", out[1]);
    assert!(
        out[2]["text"].as_str().unwrap().starts_with("refused"),
        "{}",
        out[2]
    );
    let events = events(&audit).await;
    let denied = events
        .iter()
        .find(|e| e["action"] == "server-request" && e["request"]["method"] == "roots/list")
        .unwrap();
    assert_eq!(denied["decision"], "deny");
    task.close();
    let _ = server.kill().await;
}

/// Starts the Python MCP server `script` on a free loopback port (`args` adds its
/// arguments and environment, given the port) and waits until it accepts connections
/// (readiness, not timing).
async fn http_server(
    script: PathBuf,
    args: impl FnOnce(&mut tokio::process::Command, u16),
) -> (tokio::process::Child, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut command = tokio::process::Command::new("python3");
    command.arg(&script);
    args(&mut command, port);
    let child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (child, port);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{} did not start", script.display());
}

/// A test CA and a certificate for `names` signed by it, as PEM files in `dir`:
/// `(ca.pem, cert.pem, key.pem)`.
fn tls_files(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let (issuer, ca_pem) = super::helpers::test_ca();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
    let files = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&files.0, ca_pem).unwrap();
    std::fs::write(&files.1, cert.pem()).unwrap();
    std::fs::write(&files.2, key.serialize_pem()).unwrap();
    files
}

/// An `https://` tool server, verified like an HTTP egress upstream (here against the
/// test CA given as an upstream CA, reached by name through a resolve override), gets
/// the credential the gateway brokers from the secret store; the agent never sees it,
/// not even when the server echoes it, and neither does the audit log. Without the CA
/// the server is not reached at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_https_tool_server_with_a_brokered_credential() {
    require_python_mcp();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path(), &["mcp.internal.example"]);
    const SECRET: &str = "tok-s3cret-4242";
    let (mut server, port) = http_server(servers_dir().join("whoami.py"), |c, port| {
        c.args(["--https", &port.to_string()]);
        c.arg(&cert);
        c.arg(&key);
        c.env("EXPECTED_AUTHORIZATION", format!("Bearer {SECRET}"));
    })
    .await;

    let state = dir.path().join("state");
    let tenant = Name::new("acme").unwrap();
    agentspace_secrets::SecretStore::open(&state)
        .set(&tenant, "hr-token", SECRET.as_bytes())
        .unwrap();
    let url = format!("https://mcp.internal.example:{port}/mcp");
    let text = format!(
        "apiVersion: agentspace/v1
kind: Agent
metadata: {{name: credit-officer, tenant: acme}}
spec:
  tools:
    - server: hr
      url: {url}
      allow: [authorized, authorization, whoami]
      credential: {{secret: hr-token, header: Authorization, format: 'Bearer {{}}'}}
"
    );
    let definition = Definition::parse(&dir.path().join("agent.yaml"), &text).unwrap();
    let principal = Principal::new(
        tenant.clone(),
        UserId::new("alice@acme.example").unwrap(),
        Actor::new(
            Name::new("credit-officer").unwrap(),
            TaskRef::new("t-https").unwrap(),
        ),
    );
    let identity = Arc::new(Identity::open(&state));
    let start = |trust_ca: bool| {
        let definition = definition.clone();
        let principal = principal.clone();
        let identity = Arc::clone(&identity);
        let state = state.clone();
        let ca = ca.clone();
        async move {
            let mut config = agentspace_gateway::GatewayConfig::new(&state);
            config.system_roots = false;
            if trust_ca {
                config.upstream_ca.push(ca);
            }
            config.resolve.push(
                agentspace_gateway::ResolveOverride::parse(&format!(
                    "mcp.internal.example:{port}:127.0.0.1"
                ))
                .unwrap(),
            );
            let policy = Arc::new(PolicyEngine::load(&definition, &state).unwrap());
            let audit = AuditLog::open(&state).unwrap();
            let task = Arc::new(Task::new(principal, policy));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mcp = format!("http://{}/mcp", listener.local_addr().unwrap());
            let gateway = McpGateway::configured(audit.clone(), identity, &config, None).unwrap();
            tokio::spawn(gateway.serve(listener, Arc::clone(&task)));
            (audit, task, mcp)
        }
    };

    let (audit, task, mcp) = start(true).await;
    let out = call(
        &mcp,
        &[
            ("authorized", "{}"),
            ("authorization", "{}"),
            ("whoami", "{}"),
        ],
    )
    .await;
    // The server got the brokered credential.
    assert_eq!(out[0]["text"], "yes", "{}", out[0]);
    // It echoed it: the agent sees it redacted.
    assert_eq!(out[1]["text"], "Bearer [REDACTED]", "{}", out[1]);
    // And the per-call identity, for exactly this server's origin.
    let token = out[2]["text"].as_str().unwrap();
    let target = agentspace_identity::CallTarget::new("POST", &url).unwrap();
    identity
        .verify(
            token,
            &agentspace_identity::Expected::call(&tenant, &target),
            &agentspace_identity::NothingRevoked,
        )
        .unwrap_or_else(|e| panic!("{e}: {token}"));
    let logged = events(&audit).await;
    assert!(
        !serde_json::to_string(&logged).unwrap().contains(SECRET),
        "the secret is in the audit log"
    );
    task.close();

    // Without the test CA, the server's certificate is not trusted: it is never called,
    // and the refusal says why.
    let (audit, task, mcp) = start(false).await;
    let out = call(&mcp, &[("authorized", "{}")]).await;
    assert_eq!(out[0]["ok"], false, "{}", out[0]);
    let events = events(&audit).await;
    let refused = events
        .iter()
        .rev()
        .find(|e| e["action"] == "tools/call")
        .unwrap();
    assert_eq!(refused["decision"], "deny", "{refused}");
    let why = refused["details"]["unavailable"]["hr"].as_str().unwrap();
    assert!(why.contains("certificate"), "{why}");
    task.close();
    let _ = server.kill().await;
}

/// A stdio server with egress rules is never started without a sandbox that enforces
/// them: as a plain child process it would have the host's network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_a_stdio_server_with_egress_rules_needs_a_sandbox() {
    require_python_mcp();
    let dir = tempfile::tempdir().unwrap();
    let tools = format!(
        "    - server: local\n      command: [python3, {}]\n      allow: [whoami]\n      egress: [{{name: api, hosts: [api.example.test]}}]\n",
        servers_dir().join("whoami.py").display()
    );
    let (audit, task, url) = gateway_for(dir.path(), &tools, "t-nosandbox").await;
    let out = call(&url, &[("whoami", "{}")]).await;
    assert_eq!(out[0]["error"], -32602, "{}", out[0]);
    let events = events(&audit).await;
    let refused = events.iter().find(|e| e["action"] == "tools/call").unwrap();
    let why = refused["details"]["unavailable"]["local"].as_str().unwrap();
    assert!(why.contains("sandbox"), "{why}");
    task.close();
}
