//! Tenant isolation: every endpoint, called with a token of another tenant, neither
//! shows nor changes anything of the first tenant.

use std::collections::BTreeSet;
use std::time::Duration;

use pretty_assertions::assert_eq;
use serde_json::{Value, json};

use super::approvals::context;
use super::events::{open_stream, read_data};
use super::harness::{Backend, Options, Place, TestServer, definition, write_task};

fn every_endpoint_refuses_or_hides_another_tenants_things(backend: Backend) {
    // Private webhooks allowed, so acme's can point at a loopback port nobody serves.
    let server = TestServer::start_in(
        Place::new(backend),
        Options {
            allow_private_webhooks: true,
            ..Options::default()
        },
    );
    // Tenant acme, with one of everything.
    let acme = server.bootstrap("acme", "alice");
    let r = acme.put(
        "/v1/tenant/webhook",
        json!({"url": "http://127.0.0.1:9/acme-hook"}),
    );
    assert_eq!(r.status, 200, "{}", r.error_message());
    let acme_hook = r.json();
    let secret_token = acme.post("/v1/users", json!({"name": "bob", "roles": ["developer"]}));
    assert_eq!(secret_token.status, 201);
    let bob_token = acme.post("/v1/users/bob/tokens", json!({})).json();
    let token_id = bob_token["id"].as_str().unwrap().to_owned();
    let r = acme.post(
        "/v1/definitions",
        json!({"definition": definition("acme", "writer", "64Mi")}),
    );
    assert_eq!(r.status, 201);
    acme.post(
        "/v1/definitions",
        json!({"definition": definition("acme", "writer", "65Mi")}),
    );
    let task = write_task(server.state(), "acme", "writer", "bob");
    let approval = server
        .approvals
        .request(context("acme", "bob", false, 600))
        .unwrap();
    let r = acme.post(
        "/v1/revocations",
        json!({"kind": "agent", "agent": "writer", "reason": "acme-only"}),
    );
    assert_eq!(r.status, 201);
    agentspace_secrets::SecretStore::open(server.state())
        .set(
            &agentspace_core::Name::new("acme").unwrap(),
            "acme-secret",
            b"v",
        )
        .unwrap();

    // Tenant beta's admin (every role) tries everything.
    let beta = server.bootstrap("beta", "bea");
    let r = beta.put(
        "/v1/users/bea/roles",
        json!({"roles": ["admin", "approver", "auditor", "developer"]}),
    );
    assert_eq!(r.status, 200);

    // (method, path template, filled path, body); list endpoints answer 200 with none of
    // acme's things, everything else 403 or 404.
    let calls: Vec<(&str, &str, String, Option<Value>)> = vec![
        ("get", "/v1/me", "/v1/me".into(), None),
        ("get", "/v1/tenants", "/v1/tenants".into(), None),
        (
            "get",
            "/v1/tenant/webhook",
            "/v1/tenant/webhook".into(),
            None,
        ),
        (
            "delete",
            "/v1/tenant/webhook",
            "/v1/tenant/webhook".into(),
            None,
        ),
        (
            "put",
            "/v1/tenant/webhook",
            "/v1/tenant/webhook".into(),
            Some(json!({"url": "http://127.0.0.1:9/beta-hook"})),
        ),
        ("get", "/v1/users", "/v1/users".into(), None),
        ("post", "/v1/users", "/v1/users".into(), None),
        (
            "put",
            "/v1/users/{name}/roles",
            "/v1/users/bob/roles".into(),
            Some(json!({"roles": ["admin"]})),
        ),
        ("delete", "/v1/users/{name}", "/v1/users/bob".into(), None),
        (
            "get",
            "/v1/users/{name}/tokens",
            "/v1/users/bob/tokens".into(),
            None,
        ),
        (
            "post",
            "/v1/users/{name}/tokens",
            "/v1/users/bob/tokens".into(),
            Some(json!({})),
        ),
        (
            "delete",
            "/v1/tokens/{id}",
            format!("/v1/tokens/{token_id}"),
            None,
        ),
        ("get", "/v1/definitions", "/v1/definitions".into(), None),
        (
            "post",
            "/v1/definitions",
            "/v1/definitions".into(),
            Some(json!({"definition": definition("acme", "writer", "1Gi")})),
        ),
        (
            "get",
            "/v1/definitions/{name}",
            "/v1/definitions/writer".into(),
            None,
        ),
        (
            "get",
            "/v1/definitions/{name}/versions",
            "/v1/definitions/writer/versions".into(),
            None,
        ),
        (
            "get",
            "/v1/definitions/{name}/versions/{version}",
            "/v1/definitions/writer/versions/1".into(),
            None,
        ),
        (
            "get",
            "/v1/definitions/{name}/diff",
            "/v1/definitions/writer/diff?from=1&to=2".into(),
            None,
        ),
        ("get", "/v1/tasks", "/v1/tasks".into(), None),
        (
            "post",
            "/v1/tasks",
            "/v1/tasks".into(),
            Some(json!({"agent": "writer", "command": ["true"]})),
        ),
        ("get", "/v1/tasks/{id}", format!("/v1/tasks/{task}"), None),
        (
            "post",
            "/v1/tasks/{id}/stop",
            format!("/v1/tasks/{task}/stop"),
            Some(json!({})),
        ),
        (
            "get",
            "/v1/tasks/{id}/logs",
            format!("/v1/tasks/{task}/logs"),
            None,
        ),
        (
            "get",
            "/v1/tasks/{id}/logs",
            format!("/v1/tasks/{task}/logs?offset=0&wait=1"),
            None,
        ),
        (
            "get",
            "/v1/tasks/{id}/budget",
            format!("/v1/tasks/{task}/budget"),
            None,
        ),
        ("get", "/v1/budgets", "/v1/budgets".into(), None),
        (
            "get",
            "/v1/approvals",
            "/v1/approvals?state=all".into(),
            None,
        ),
        (
            "get",
            "/v1/approvals/{id}",
            format!("/v1/approvals/{approval}"),
            None,
        ),
        (
            "post",
            "/v1/approvals/{id}/approve",
            format!("/v1/approvals/{approval}/approve"),
            Some(json!({})),
        ),
        (
            "post",
            "/v1/approvals/{id}/deny",
            format!("/v1/approvals/{approval}/deny"),
            Some(json!({})),
        ),
        ("get", "/v1/audit/events", "/v1/audit/events".into(), None),
        ("get", "/v1/audit/verify", "/v1/audit/verify".into(), None),
        ("get", "/v1/audit/export", "/v1/audit/export".into(), None),
        ("get", "/v1/revocations", "/v1/revocations".into(), None),
        ("post", "/v1/revocations", "/v1/revocations".into(), None),
        (
            "post",
            "/v1/revocations/lift",
            "/v1/revocations/lift".into(),
            Some(json!({"kind": "agent", "agent": "writer"})),
        ),
        ("get", "/v1/secrets", "/v1/secrets".into(), None),
        ("get", "/v1/events", "/v1/events".into(), None),
    ];

    // Every endpoint of the OpenAPI document is in the table.
    let doc = server.anonymous().get("/openapi.json").json();
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let covered: BTreeSet<(String, String)> = calls
        .iter()
        .map(|(m, t, _, _)| ((*m).to_owned(), (*t).to_owned()))
        .collect();
    assert_eq!(
        covered, documented,
        "the isolation table must cover every endpoint"
    );

    // Strings that would betray acme's things in an answer.
    let acme_marks = [
        "acme",
        "alice",
        "bob",
        "writer",
        &task,
        &approval,
        &token_id,
        "acme-secret",
        "acme-only",
    ];
    for (method, template, path, body) in &calls {
        if *template == "/v1/events" {
            continue; // below: a stream
        }
        let r = match *method {
            "get" => beta.get(path),
            "delete" => beta.delete(path),
            // Setting beta's own webhook is no isolation failure; acme's is checked below.
            "put" if *template == "/v1/tenant/webhook" => continue,
            "put" => beta.put(path, body.clone().unwrap()),
            _ => match (template, body) {
                // Writes that create in beta's own tenant are not isolation failures;
                // check the ones that name acme's things instead.
                (&"/v1/users", _) | (&"/v1/revocations", _) => continue,
                (_, Some(b)) => beta.post(path, b.clone()),
                (_, None) => beta.post(path, json!({})),
            },
        };
        let text = String::from_utf8_lossy(&r.body).into_owned();
        match r.status {
            403 | 404 => {}
            200 if *method == "get" => {
                for mark in acme_marks {
                    assert!(
                        !text.contains(mark),
                        "{method} {path} shows `{mark}`: {text}"
                    );
                }
            }
            // A definition naming tenant acme is refused as belonging elsewhere.
            422 if *template == "/v1/definitions" => {}
            // Lifting acme's revocation from beta finds nothing of beta's to lift.
            200 if *template == "/v1/revocations/lift" => {
                assert_eq!(r.json()["lifted"], false, "{text}");
            }
            s => panic!("{method} {path} answered {s} to another tenant: {text}"),
        }
    }

    // The event stream of beta carries only beta's events.
    let bea_token = beta.post("/v1/users/bea/tokens", json!({})).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut stream = open_stream(&server, &bea_token, "?after=0");
    let events = read_data(&mut stream, 1000, Duration::from_secs(2));
    assert!(!events.is_empty());
    for e in &events {
        assert_eq!(e["event"]["tenant"], "beta", "{e}");
    }

    // And acme is exactly as it was.
    assert_eq!(acme.get("/v1/users").json().as_array().unwrap().len(), 2);
    assert_eq!(
        acme.get("/v1/users/bob/tokens")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(acme.get("/v1/definitions").json()[0]["version"], 2);
    assert_eq!(
        acme.get(&format!("/v1/approvals/{approval}")).json()["state"],
        "pending"
    );
    assert_eq!(
        acme.get("/v1/revocations").json().as_array().unwrap().len(),
        1
    );
    assert_eq!(acme.get("/v1/me").json()["user"], "alice");
    // Beta's webhook is beta's; acme's stays as acme set it.
    let r = beta.put(
        "/v1/tenant/webhook",
        json!({"url": "http://127.0.0.1:9/beta-hook"}),
    );
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_ne!(r.json()["digest"], acme_hook["digest"]);
    assert_eq!(acme.get("/v1/tenant/webhook").json(), acme_hook);
}

on_both!(every_endpoint_refuses_or_hides_another_tenants_things,);
