//! Registering definitions: versions, diffs and structured validation errors.

use pretty_assertions::assert_eq;
use serde_json::json;

use super::harness::{Backend, TestServer, definition};

fn registering_makes_versions_and_diffs(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let dev = admin.user(&server, "dave", &["developer"]);

    let v1 = definition("acme", "writer", "64Mi");
    let r = dev.post("/v1/definitions", json!({"definition": v1}));
    assert_eq!(r.status, 201, "{}", r.error_message());
    assert_eq!(r.json()["version"], 1);
    assert_eq!(r.json()["created"], true);
    // The same text again is no new version.
    let r = dev.post("/v1/definitions", json!({"definition": v1}));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], 1);
    assert_eq!(r.json()["created"], false);
    let v2 = definition("acme", "writer", "128Mi");
    let r = dev.post("/v1/definitions", json!({"definition": v2}));
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["version"], 2);

    let list = dev.get("/v1/definitions").json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "writer");
    assert_eq!(list[0]["version"], 2);
    assert_eq!(list[0]["registered_by"], "dave");

    let versions = dev.get("/v1/definitions/writer/versions").json();
    assert_eq!(versions.as_array().unwrap().len(), 2);
    assert_eq!(
        dev.get("/v1/definitions/writer").json()["text"],
        v2.as_str()
    );
    assert_eq!(
        dev.get("/v1/definitions/writer/versions/1").json()["text"],
        v1.as_str()
    );
    assert_eq!(dev.get("/v1/definitions/writer/versions/3").status, 404);

    let diff = dev.get("/v1/definitions/writer/diff?from=1&to=2");
    assert_eq!(diff.status, 200);
    let diff = String::from_utf8(diff.body).unwrap();
    assert!(
        diff.contains("-    memory: 64Mi\n+    memory: 128Mi\n"),
        "{diff}"
    );
    assert!(diff.starts_with("--- writer v1\n+++ writer v2\n"), "{diff}");
    let r = dev.get("/v1/definitions/writer/diff?from=1");
    assert_eq!(r.status, 400);

    let registered: Vec<_> = server
        .audit_events("acme")
        .into_iter()
        .filter(|e| e.kind == agentspace_core::AuditKind::DefinitionChange)
        .map(|e| (e.user.unwrap(), e.details["version"].clone()))
        .collect();
    assert_eq!(
        registered,
        [("dave".to_owned(), json!(1)), ("dave".to_owned(), json!(2))]
    );
}

fn a_bad_definition_gets_field_line_and_column(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let bad = definition("acme", "writer", "lots");
    let r = admin.post("/v1/definitions", json!({"definition": bad}));
    assert_eq!(r.status, 422);
    let body = r.json();
    assert_eq!(body["error"], "the definition was refused");
    let p = &body["problems"][0];
    assert_eq!(p["field"], "spec.resources.memory");
    assert_eq!(p["line"], 8);
    assert!(p["column"].is_u64(), "{body}");
    assert!(p["message"].as_str().unwrap().contains("lots"), "{body}");

    // Unknown fields too, and YAML syntax errors.
    let r = admin.post(
        "/v1/definitions",
        json!({"definition": format!("{}  colour: red\n", definition("acme", "w", "64Mi"))}),
    );
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["problems"][0]["field"], "spec.colour");
    let r = admin.post("/v1/definitions", json!({"definition": "a: [\n"}));
    assert_eq!(r.status, 422);
    assert!(r.json()["problems"][0]["line"].is_u64());

    // A definition of another tenant cannot be registered here.
    let r = admin.post(
        "/v1/definitions",
        json!({"definition": definition("other", "w", "64Mi")}),
    );
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["problems"][0]["field"], "metadata.tenant");
    assert_eq!(r.json()["problems"][0]["line"], 5);
    assert_eq!(admin.get("/v1/definitions").json(), json!([]));
    // Nothing refused was recorded as a change.
    assert!(
        server
            .audit_events("acme")
            .iter()
            .all(|e| e.kind != agentspace_core::AuditKind::DefinitionChange)
    );
}

on_both!(
    registering_makes_versions_and_diffs,
    a_bad_definition_gets_field_line_and_column,
);
