//! Tasks, audit, revocations, secrets, budgets and the OpenAPI document.

use pretty_assertions::assert_eq;
use serde_json::json;

use super::harness::{Backend, TestServer, definition, write_task};

fn tasks_are_listed_from_the_state_directory(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let a = write_task(server.state(), "acme", "writer", "bob");
    let b = write_task(server.state(), "acme", "writer", "carol");
    write_task(server.state(), "other", "writer", "eve");
    let list = admin.get("/v1/tasks").json();
    let mut ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(ids, want);
    let one = admin.get(&format!("/v1/tasks/{a}"));
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["user"], "bob");
    assert_eq!(admin.get("/v1/tasks/not-a-task-id").status, 404);
    // Logs: the end of what the agent wrote.
    std::fs::write(
        server.state().join("tasks").join(&a).join("stdout.log"),
        "first line\nsecond line\n",
    )
    .unwrap();
    let log = admin.get(&format!("/v1/tasks/{a}/logs?tail_bytes=12"));
    assert_eq!(log.status, 200);
    assert_eq!(log.body, b"second line\n");
    let log = admin.get(&format!("/v1/tasks/{a}/logs?stream=stderr"));
    assert_eq!((log.status, log.body.len()), (200, 0));
    assert_eq!(
        admin
            .get(&format!("/v1/tasks/{a}/logs?stream=stdin"))
            .status,
        400
    );
    assert_eq!(admin.get("/v1/tasks/..%2F..%2Fetc").status, 404);

    // Budgets: the registered definition's limits and the task's use.
    let def = format!(
        "{}  budgets:\n    requests: 10\n",
        definition("acme", "writer", "64Mi")
    );
    let r = admin.post("/v1/definitions", json!({"definition": def}));
    assert_eq!(r.status, 201, "{}", r.error_message());
    let budgets = admin.get("/v1/budgets").json();
    assert_eq!(budgets[0]["agent"], "writer");
    assert_eq!(budgets[0]["budgets"]["task"]["requests"], 10, "{budgets}");
    let used = admin.get(&format!("/v1/tasks/{a}/budget"));
    assert_eq!(used.status, 200, "{}", used.error_message());
    assert_eq!(used.json()["usage"]["requests"], 0);

    // A definition naming a host file as an extra policy: the API never reads it.
    let secret = server.state().join("host-secret.cedar");
    std::fs::write(&secret, "TOP-SECRET host content").unwrap();
    let def = format!(
        "{}  policies: [{}]\n",
        definition("acme", "writer", "64Mi"),
        secret.display()
    );
    let r = admin.post("/v1/definitions", json!({"definition": def}));
    assert_eq!(r.status, 201, "{}", r.error_message());
    let used = admin.get(&format!("/v1/tasks/{a}/budget"));
    assert_eq!(used.status, 200, "{}", used.error_message());
    assert!(!String::from_utf8_lossy(&used.body).contains("TOP-SECRET"));
}

#[test]
fn a_running_tasks_log_is_followed_from_an_offset_until_it_is_complete() {
    // Logs are files of the state directory whatever the database.
    let server = TestServer::start(Backend::Sqlite);
    let admin = server.bootstrap("acme", "alice");
    let task = write_task(server.state(), "acme", "writer", "alice");
    let dir = server.state().join("tasks").join(&task);
    let manifest_path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["state"] = json!("running");
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let header = |r: &agentspace_server::client::Response, name: &str| {
        r.header_values(name).first().map(|v| v.to_string())
    };

    // Nothing written yet, the task runs: an empty piece that is not complete, after
    // the wait.
    let r = admin.get(&format!("/v1/tasks/{task}/logs?offset=0&wait=1"));
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(r.body, b"");
    assert_eq!(header(&r, "agentspace-log-next").as_deref(), Some("0"));
    assert_eq!(
        header(&r, "agentspace-log-complete").as_deref(),
        Some("false")
    );

    // More than one piece (1 MiB) of output: read in pieces, each from the last offset.
    let big: Vec<u8> = (0..(2 * 1024 * 1024 + 100))
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(dir.join("stdout.log"), &big).unwrap();
    let mut got = Vec::new();
    let mut offset = 0;
    loop {
        let r = admin.get(&format!("/v1/tasks/{task}/logs?offset={offset}&wait=1"));
        assert_eq!(r.status, 200, "{}", r.error_message());
        got.extend_from_slice(&r.body);
        offset = header(&r, "agentspace-log-next").unwrap().parse().unwrap();
        assert_eq!(offset as usize, got.len());
        assert_eq!(
            header(&r, "agentspace-log-complete").as_deref(),
            Some("false")
        );
        if got.len() == big.len() {
            break;
        }
        assert!(!r.body.is_empty(), "no progress at {offset}");
    }
    assert_eq!(got, big);

    // Once the task has ended, the log is complete at its end.
    manifest["state"] = json!("exited");
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let r = admin.get(&format!("/v1/tasks/{task}/logs?offset={offset}&wait=30"));
    assert_eq!(r.body, b"");
    assert_eq!(
        header(&r, "agentspace-log-complete").as_deref(),
        Some("true")
    );
    // An offset past the end reads nothing; tail and offset do not mix; wait needs an
    // offset.
    let r = admin.get(&format!("/v1/tasks/{task}/logs?offset=99999999"));
    assert_eq!((r.status, r.body.len()), (200, 0));
    let r = admin.get(&format!("/v1/tasks/{task}/logs?offset=0&tail_bytes=5"));
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("`offset` and `tail_bytes`"),
        "{}",
        r.error_message()
    );
    let r = admin.get(&format!("/v1/tasks/{task}/logs?wait=5"));
    assert_eq!(r.status, 400);
}

fn audit_is_queried_verified_and_exported(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let auditor = admin.user(&server, "audrey", &["auditor"]);
    admin.post(
        "/v1/definitions",
        json!({"definition": definition("acme", "w", "64Mi")}),
    );

    let all = auditor.get("/v1/audit/events").json();
    let kinds: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "policy_change",
            "policy_change",
            "policy_change",
            "definition_change"
        ]
    );
    assert!(all[0]["hash"].is_string() && all[0]["sig"].is_string());
    let some = auditor
        .get("/v1/audit/events?kind=definition_change&limit=5")
        .json();
    assert_eq!(some.as_array().unwrap().len(), 1);
    let r = auditor.get("/v1/audit/events?kind=nope");
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].as_str().unwrap().contains("task_start"));
    assert_eq!(auditor.get("/v1/audit/events?colour=red").status, 400);

    let v = auditor.get("/v1/audit/verify").json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["events"], 4);

    let export = auditor.get("/v1/audit/export?format=ocsf");
    assert_eq!(export.status, 200);
    let lines: Vec<&str> = std::str::from_utf8(&export.body).unwrap().lines().collect();
    assert_eq!(lines.len(), 4);
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert!(first.get("class_uid").is_some(), "{first}");
    let jsonl = auditor.get("/v1/audit/export");
    assert_eq!(std::str::from_utf8(&jsonl.body).unwrap().lines().count(), 4);
}

fn revocations_are_made_listed_lifted_and_audited(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let r = admin.post(
        "/v1/revocations",
        json!({"kind": "user-agent", "user": "bob", "agent": "writer", "reason": "left the team"}),
    );
    assert_eq!(r.status, 201, "{}", r.error_message());
    let list = admin.get("/v1/revocations").json();
    assert_eq!(list[0]["kind"], "user-agent");
    assert_eq!(list[0]["reason"], "left the team");
    // The policy engine sees it (same store as `agentspace revoke`).
    let store = server.place().revocations();
    assert_eq!(store.list().unwrap().len(), 1);
    let lifted = admin.post(
        "/v1/revocations/lift",
        json!({"kind": "user-agent", "user": "bob", "agent": "writer"}),
    );
    assert_eq!(lifted.json()["lifted"], true);
    assert_eq!(admin.get("/v1/revocations").json(), json!([]));
    let r = admin.post(
        "/v1/revocations",
        json!({"kind": "agent", "agent": "Not A Name"}),
    );
    assert_eq!(r.status, 400);

    let actions: Vec<(String, String)> = server
        .audit_events("acme")
        .into_iter()
        .filter(|e| e.kind == agentspace_core::AuditKind::Revocation)
        .map(|e| (e.action, e.user.unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("revoke".to_owned(), "alice".to_owned()),
            ("lift".to_owned(), "alice".to_owned())
        ]
    );
}

fn secrets_show_names_never_values(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let store = agentspace_secrets::SecretStore::open(server.state());
    let tenant = agentspace_core::Name::new("acme").unwrap();
    store
        .set(&tenant, "scoring-key", b"s3cr3t-value-123")
        .unwrap();
    let r = admin.get("/v1/secrets");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!(["scoring-key"]));
    assert!(!String::from_utf8_lossy(&r.body).contains("s3cr3t"));
}

#[test]
fn the_openapi_document_lists_every_endpoint_with_bearer_auth() {
    let server = TestServer::start(Backend::Sqlite);
    let r = server.anonymous().get("/openapi.json");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/approvals/{id}/approve",
        "/v1/definitions",
        "/v1/events",
        "/v1/audit/verify",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    assert_eq!(
        doc,
        serde_json::to_value(agentspace_server::openapi()).unwrap()
    );
    // Unknown paths answer JSON too.
    let r = server.anonymous().get("/v2/nothing");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no such endpoint");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use std::io::{Read, Write};
    let server = TestServer::start(Backend::Sqlite);
    let addr = server.url.trim_start_matches("http://");
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"GET /v1/me HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(9) && waited < std::time::Duration::from_secs(20),
        "closed after {waited:?}"
    );
    // Meanwhile and afterwards, others are served.
    assert_eq!(server.anonymous().get("/openapi.json").status, 200);
}

fn malformed_requests_get_errors_and_the_server_stays_up(backend: Backend) {
    use std::io::{Read, Write};
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let addr = server.url.trim_start_matches("http://");
    for garbage in [
        &b"\x00\x01\x02 nonsense\r\n\r\n"[..],
        b"GET /v1/me HTTP/9.9\r\n\r\n",
        b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\n{\"a\":",
    ] {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(15)))
            .unwrap();
        s.write_all(garbage).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
    }
    let r = admin
        .0
        .send(
            "POST",
            "/v1/users",
            &[("Content-Type", "application/json")],
            b"{not json",
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].is_string());
    assert_eq!(admin.get("/v1/me").status, 200);
}

/// A revocation made through the API is seen by the very next decision of a decision
/// point in another process on the same store (an `agentspace run` on this host, or on
/// another host sharing the PostgreSQL database); lifting it lets the next one through.
fn a_revocation_reaches_the_next_decision_of_another_process(backend: Backend) {
    use agentspace_core::{Actor, Principal, TaskRef, UserId};
    use agentspace_policy::{Action, DenyReason, PolicyEngine, Request, Resource};

    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let definition = agentspace_core::Definition::parse(
        std::path::Path::new("/defs/officer.yaml"),
        "apiVersion: agentspace/v1\nkind: Agent\nmetadata: {name: officer, tenant: acme}\nspec:\n  egress:\n    - name: scoring\n      hosts: [scoring.example]\n",
    )
    .unwrap();
    let engine = PolicyEngine::load_with_revocations(
        &definition,
        server.state(),
        server.place().revocations(),
    )
    .unwrap();
    let task = "01jabcdefghjkmnpqrstvwxyz0";
    let principal = Principal::new(
        agentspace_core::Name::new("acme").unwrap(),
        UserId::new("bob").unwrap(),
        Actor::new(
            agentspace_core::Name::new("officer").unwrap(),
            TaskRef::new(task).unwrap(),
        ),
    );
    let get = |n: u32| Request {
        principal: principal.clone(),
        action: Action::Http {
            method: "GET".to_owned(),
        },
        resource: Resource {
            host: Some("scoring.example".to_owned()),
            port: Some(443),
            path: Some(format!("/{n}")),
            ..Resource::default()
        },
        context: agentspace_policy::RequestContext::default(),
    };
    assert!(engine.decide(&get(1)).is_allow());
    let body = json!({"kind": "task", "task": task, "reason": "incident 7"});
    let r = admin.post("/v1/revocations", body.clone());
    assert_eq!(r.status, 201, "{}", r.error_message());
    let d = engine.decide(&get(2));
    assert_eq!(d.deny_reason(), Some(DenyReason::Revoked), "{d}");
    let r = admin.post("/v1/revocations/lift", body);
    assert_eq!(r.json()["lifted"], true, "{}", r.error_message());
    assert!(engine.decide(&get(3)).is_allow());
}

on_both!(
    a_revocation_reaches_the_next_decision_of_another_process,
    tasks_are_listed_from_the_state_directory,
    audit_is_queried_verified_and_exported,
    revocations_are_made_listed_lifted_and_audited,
    secrets_show_names_never_values,
    malformed_requests_get_errors_and_the_server_stays_up,
);
