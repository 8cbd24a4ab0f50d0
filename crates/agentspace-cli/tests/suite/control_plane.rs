//! `agentspace serve` starting and stopping real tasks in real cells, and
//! `agentspace approvals` against it.

use std::process::Command;

use agentspace_server::client::Client;
use serde_json::{Value, json};

use super::support::{
    Sandbox, agentspace_bin, bootstrap, privileged, register_on_host, serve, until,
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

#[test]
fn the_control_plane_starts_and_stops_a_task_for_the_caller() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let token = bootstrap(&s);
    let server = serve(&s);
    let api = Client::new(&server.url, Some(&token)).unwrap();

    let r = api
        .post("/v1/definitions", &json!({"definition": AGENT}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.error_message());
    let r = api
        .post(
            "/v1/tasks",
            &json!({"agent": "hello", "command": ["sh", "-c", "echo started as $(id -u); exec sleep 30"]}),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.error_message());
    let started = r.json();
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
