//! `agentspace serve` starting and stopping real tasks in real cells, and
//! `agentspace approvals` against it.

use std::process::{Command, Stdio};

use agentspace_server::client::Client;
use serde_json::{Value, json};

use super::boundary::upstream;
use super::support::{
    Sandbox, agentspace_bin, bootstrap, bootstrap_with, privileged, register_on_host, serve,
    serve_with, until,
};

const AGENT: &str = "apiVersion: agentspace/v1
kind: Agent
metadata:
  name: hello
  tenant: acme
spec:
  resources:
    memory: 256Mi
    pids: 64
    cpu: 1.0
    timeout: 60s
";

/// Registers the `hello` agent through the API and starts it with `command`; the answer.
fn start_hello(api: &Client, command: &[&str]) -> Value {
    let r = api
        .post("/v1/definitions", &json!({"definition": AGENT}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.error_message());
    let r = api
        .post("/v1/tasks", &json!({"agent": "hello", "command": command}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.error_message());
    r.json()
}

#[test]
fn the_control_plane_starts_and_stops_a_task_for_the_caller() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let token = bootstrap(&s);
    let server = serve(&s);
    let api = Client::new(&server.url, Some(&token)).unwrap();

    let started = start_hello(
        &api,
        &["sh", "-c", "echo started as $(id -u); exec sleep 30"],
    );
    let task = started["task"].as_str().unwrap().to_owned();
    assert_eq!(started["user"], "alice");

    let log = until("the agent's output", || {
        let r = api.get(&format!("/v1/tasks/{task}/logs")).unwrap();
        let text = String::from_utf8_lossy(&r.body).into_owned();
        text.contains("started as").then_some(text)
    });
    assert!(log.starts_with("started as "), "{log}");
    let m = api.get(&format!("/v1/tasks/{task}")).unwrap().json();
    assert_eq!(
        (m["user"].as_str(), m["state"].as_str()),
        (Some("alice"), Some("running"))
    );

    let r = api
        .post(&format!("/v1/tasks/{task}/stop"), &json!({}))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(r.json(), json!({"revoked": true, "signalled": true}));
    let m: Value = until("the task's exit", || {
        let m = api.get(&format!("/v1/tasks/{task}")).unwrap().json();
        (m["state"] != "running").then_some(m)
    });
    assert_eq!(m["state"], "exited", "{m}");
    assert_eq!(m["exit_code"], 143, "{m}");

    // The task's own records, as the user it acted for, and the stop.
    let events = api
        .get(&format!("/v1/audit/events?task={task}"))
        .unwrap()
        .json();
    let kinds: Vec<(&str, &str)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"]["kind"].as_str().unwrap(),
                e["event"]["user"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(kinds, [("task_start", "alice"), ("task_exit", "alice")]);
    let revoked = api.get("/v1/revocations").unwrap().json();
    assert_eq!(revoked[0]["task"], task.as_str());

    // A definition that names a host directory is refused before anything runs.
    let with_workspace = AGENT
        .replace("spec:\n", "spec:\n  workspace: /etc\n")
        .replace("name: hello", "name: nosy");
    let r = api
        .post("/v1/definitions", &json!({"definition": with_workspace}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.error_message());
    let r = api
        .post(
            "/v1/tasks",
            &json!({"agent": "nosy", "command": ["cat", "/mnt/passwd"]}),
        )
        .unwrap();
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["problems"][0]["field"], "spec.workspace");
}

#[test]
fn approvals_cli_talks_to_the_server() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let token = bootstrap(&s);
    let server = serve(&s);
    let cli = |args: &[&str], token: &str| {
        let out = Command::new(agentspace_bin())
            .arg("approvals")
            .args(args)
            .env("AGENTSPACE_SERVER", &server.url)
            .env("AGENTSPACE_TOKEN", token)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = cli(&["list"], &token);
    assert_eq!((code, out.as_str()), (Some(0), "no pending approvals\n"));
    let (code, _, err) = cli(&["list"], "ast_wrong");
    assert_eq!(code, Some(125));
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = cli(&["approve", "0123456789abcdef0123456789abcdef"], &token);
    assert_eq!(code, Some(125));
    assert!(err.contains("has no approval"), "{err}");
    let (code, _, err) = cli(&["deny", "../users", "--comment", "x"], &token);
    assert_eq!(code, Some(125));
    assert!(err.contains("not an approval id"), "{err}");
}

/// The control plane on PostgreSQL (migrated with `agentspace server migrate`, served
/// under a role with the control and audit-writer privileges only): a task run on the
/// host against the same database holds its request there, the server lists it, a second
/// person approves it through the API, the agent's request completes, and the record
/// is in the database's audit log; nothing lands in the state directory's SQLite files.
#[test]
fn the_control_plane_on_postgres_decides_a_real_cells_held_request() {
    if !privileged() {
        return;
    }
    let Some(pg) = agentspace_test_support::TestDatabase::new("cli_cp") else {
        return;
    };
    let s = Sandbox::new();
    let out = s
        .command()
        .args(["server", "migrate"])
        .env("AGENTSPACE_DATABASE_URL", pg.url())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("applied control-plane schema version 1, 2, 3, 4"),
        "{said}"
    );
    // The login the server and its tasks use: the two roles and nothing else, as
    // docs/operations.md says to make it.
    let url = pg.login(&["agentspace_control", "agentspace_audit_writer"]);
    let env = [("AGENTSPACE_DATABASE_URL", url.as_str())];
    let token = bootstrap_with(&s, &env);
    let server = serve_with(&s, &[], &env);
    let alice = Client::new(&server.url, Some(&token)).unwrap();
    let r = alice
        .post("/v1/users", &json!({"name": "bob", "roles": ["approver"]}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.error_message());
    let r = alice.post("/v1/users/bob/tokens", &json!({})).unwrap();
    let bob = Client::new(&server.url, Some(r.json()["token"].as_str().unwrap())).unwrap();

    // A task the server starts gets the database from it: its records are there.
    let started = start_hello(&alice, &["sh", "-c", "echo hello"])["task"]
        .as_str()
        .unwrap()
        .to_owned();
    let kinds = until("the started task's records in the database", || {
        let events = alice
            .get(&format!("/v1/audit/events?task={started}"))
            .unwrap()
            .json();
        let kinds: Vec<String> = events
            .as_array()?
            .iter()
            .filter_map(|e| e["event"]["kind"].as_str().map(str::to_owned))
            .collect();
        kinds.contains(&"task_exit".to_owned()).then_some(kinds)
    });
    assert_eq!(kinds, ["task_start", "task_exit"]);

    let up = upstream(&s);
    let def = s.definition("payer.yaml", super::approvals::DEFINITION);
    // `agentspace run` of the payer on the same database, running `script`.
    let payer = |script: &str| {
        let mut c = s.governed_run(&def, up.port);
        c.envs(env).args(["--", "sh", "-c", script]);
        c
    };
    let agent = payer("curl -sS 'https://api.example.test/v1/pay?size=big'; echo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let held = until("the held request at the server", || {
        let list = bob.get("/v1/approvals").unwrap().json();
        list.as_array().and_then(|a| a.first().cloned())
    });
    let id = held["id"].as_str().unwrap().to_owned();
    assert_eq!(held["context"]["user"], "alice");
    assert_eq!(
        held["context"]["resource"],
        "https://api.example.test:443/v1/pay"
    );
    // The user the agent acts for may not approve it (four-eyes); bob does.
    let r = alice
        .post(&format!("/v1/approvals/{id}/approve"), &json!({}))
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.error_message());
    let r = bob
        .post(
            &format!("/v1/approvals/{id}/approve"),
            &json!({"comment": "checked"}),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.error_message());
    let out = agent.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        (out.status.code(), stdout.trim()),
        (Some(0), "upstream saw /v1/pay?size=big"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The server reads the task's own records from the database: the start, the hold,
    // bob's grant, and the request let through citing it.
    let events = alice.get("/v1/audit/events").unwrap().json();
    let events: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event"])
        .collect();
    let has =
        |kind: &str, f: &dyn Fn(&Value) -> bool| events.iter().any(|e| e["kind"] == kind && f(e));
    assert!(has("task_start", &|e| e["user"] == "alice"), "{events:#?}");
    assert!(
        has("approval_requested", &|e| e["details"]["approval"]
            == id.as_str()),
        "{events:#?}"
    );
    assert!(
        has("approval_granted", &|e| e["details"]["approver"] == "bob"),
        "{events:#?}"
    );
    assert!(
        has("http_request", &|e| e["decision"] == "allow"
            && e["details"]["approval"] == id.as_str()),
        "{events:#?}"
    );
    let verify = alice.get("/v1/audit/verify").unwrap().json();
    assert_eq!(verify["ok"], true, "{verify}");

    // A revocation made with `agentspace revoke` goes to the database: the server lists
    // it, and the next task's request is denied by it.
    let out = s
        .command()
        .args([
            "revoke",
            "agent",
            "payer",
            "--tenant",
            "acme",
            "--reason",
            "incident 7",
        ])
        .envs(env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = alice.get("/v1/revocations").unwrap().json();
    assert_eq!(listed[0]["agent"], "payer", "{listed}");
    let out = payer("curl -sS https://api.example.test/v1/small; echo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("was revoked"), "{stdout}");
    assert!(!stdout.contains("upstream saw"), "{stdout}");

    // Nothing of the control plane, the audit log or revocations went to SQLite files.
    for file in [
        "server/control.db",
        "audit/audit.db",
        "policy/revocations.db",
    ] {
        assert!(!s.state().join(file).exists(), "{file} was made");
    }
}

#[test]
fn a_host_registered_definition_runs_its_registered_text_with_host_paths() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let token = bootstrap(&s);
    let dir = s.path().join("officer");
    for (ws, marker) in [
        ("ws", "registered workspace"),
        ("other", "edited workspace"),
    ] {
        std::fs::create_dir_all(dir.join(ws)).unwrap();
        std::fs::write(dir.join(ws).join("marker"), marker).unwrap();
    }
    let file = dir.join("officer.yaml");
    let text = AGENT
        .replace("name: hello", "name: officer")
        .replace("spec:\n", "spec:\n  workspace: ./ws\n");
    std::fs::write(&file, &text).unwrap();
    register_on_host(&s, &file);
    let server = serve(&s);
    let api = Client::new(&server.url, Some(&token)).unwrap();
    let registered = api.get("/v1/definitions/officer").unwrap().json();
    assert_eq!(registered["host"], true, "{registered}");

    // The file changes on disk after registration; what runs is still the registered
    // text, its relative workspace resolved against the file's directory.
    std::fs::write(&file, text.replace("./ws", "./other")).unwrap();
    let r = api
        .post(
            "/v1/tasks",
            &json!({"agent": "officer", "command": ["cat", "/workspace/marker"]}),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.error_message());
    let task = r.json()["task"].as_str().unwrap().to_owned();
    let m: Value = until("the task's exit", || {
        let m = api.get(&format!("/v1/tasks/{task}")).unwrap().json();
        (m["state"] != "running").then_some(m)
    });
    assert_eq!(
        (m["state"].as_str(), m["exit_code"].as_i64()),
        (Some("exited"), Some(0)),
        "{m}"
    );
    assert_eq!(m["definition_digest"], registered["digest"], "{m}");
    let log = api.get(&format!("/v1/tasks/{task}/logs")).unwrap();
    assert_eq!(String::from_utf8_lossy(&log.body), "registered workspace");
}
