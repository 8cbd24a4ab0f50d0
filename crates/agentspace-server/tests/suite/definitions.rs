//! Registering definitions: versions, diffs and structured validation errors.

use pretty_assertions::assert_eq;
use serde_json::json;

use super::harness::{Backend, Options, Place, TestServer, definition};

/// `agentspace definition register -f FILE --tenant TENANT --as root`, on the server's store.
fn register_on_host(
    server: &TestServer,
    tenant: &agentspace_core::Name,
    file: &std::path::Path,
) -> Result<agentspace_server::Registered, agentspace_server::ServerError> {
    agentspace_server::register_on_host(
        server.state(),
        server.place().database_url().as_deref(),
        None,
        tenant,
        "root",
        file,
    )
}

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

/// A definition that names things on the host: a workspace beside it and a tool server
/// started from a program beside it.
const HOST_BOUND: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: officer, tenant: acme}
spec:
  workspace: ./ws
  resources: {memory: 64Mi}
  tools:
    - server: scoring
      command: [python3, ./servers/scoring.py]
      allow: [score]
";

fn the_hosts_operator_registers_host_trusted_versions_the_api_cannot_make(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let dev = admin.user(&server, "dave", &["developer"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("officer.yaml");
    std::fs::write(&file, HOST_BOUND).unwrap();
    let acme = agentspace_core::Name::new("acme").unwrap();

    let r = register_on_host(&server, &acme, &file).unwrap();
    assert_eq!(
        (r.version.version, r.version.host, r.created),
        (1, true, true)
    );
    let v1 = dev.get("/v1/definitions/officer").json();
    assert_eq!(
        (v1["host"].as_bool(), v1["text"].as_str()),
        (Some(true), Some(HOST_BOUND))
    );
    let event = server.audit_events("acme").pop().unwrap();
    assert_eq!(event.kind.as_str(), "definition_change");
    assert_eq!(event.user.as_deref(), Some("root"));
    assert_eq!(event.details["via"], "host");
    assert_eq!(event.details["definition_digest"], v1["digest"]);
    // The same file again changes nothing.
    let again = register_on_host(&server, &acme, &file).unwrap();
    assert_eq!((again.version.version, again.created), (1, false));

    // The API cannot take the host-trusted name over: the attempt is refused, names the
    // fix, changes nothing and is audited.
    let r = dev.post("/v1/definitions", json!({"definition": HOST_BOUND}));
    assert_eq!(r.status, 409, "{}", r.error_message());
    assert!(
        r.error_message()
            .contains("registered on the server host by its operator"),
        "{}",
        r.error_message()
    );
    let current = dev.get("/v1/definitions/officer").json();
    assert_eq!(
        (current["version"].as_u64(), current["host"].as_bool()),
        (Some(1), Some(true))
    );
    let refused = server.audit_events("acme").pop().unwrap();
    assert_eq!(
        (
            refused.kind.as_str(),
            refused.decision.map(|d| d.as_str()),
            refused.resource.as_deref(),
            refused.user.as_deref()
        ),
        (
            "definition_change",
            Some("deny"),
            Some("definition/officer"),
            Some("dave")
        )
    );

    // The same text under a name of its own is a version of its own, not trusted;
    // starting it is refused for each host-bound field, while the host's version passes
    // that check (this server has no runner, so it gets as far as saying so).
    let copy = HOST_BOUND.replace("name: officer", "name: officer-copy");
    let r = dev.post("/v1/definitions", json!({"definition": copy}));
    assert_eq!(r.status, 201, "{}", r.error_message());
    assert_eq!(
        (r.json()["version"].as_u64(), r.json()["host"].as_bool()),
        (Some(1), Some(false))
    );
    let r = dev.post(
        "/v1/tasks",
        json!({"agent": "officer-copy", "command": ["true"]}),
    );
    assert_eq!(r.status, 422);
    let problems = r.json()["problems"].clone();
    let fields: Vec<&str> = problems
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["spec.workspace", "spec.tools[0].command"]);
    let r = dev.post(
        "/v1/tasks",
        json!({"agent": "officer", "command": ["true"]}),
    );
    assert_eq!(r.status, 409, "{}", r.error_message());
    assert!(
        r.error_message().contains("does not start tasks"),
        "{}",
        r.error_message()
    );

    // A changed file is not what version 1 runs: it takes a new registration.
    std::fs::write(&file, HOST_BOUND.replace("./ws", "/etc")).unwrap();
    let v1 = dev.get("/v1/definitions/officer/versions/1").json();
    assert_eq!(v1["text"], HOST_BOUND);
    let r = register_on_host(&server, &acme, &file).unwrap();
    assert_eq!((r.version.version, r.version.host), (2, true));

    // A tenant that does not exist, or a file of another tenant, is refused.
    let nope = agentspace_core::Name::new("nope").unwrap();
    std::fs::write(&file, HOST_BOUND.replace("tenant: acme", "tenant: nope")).unwrap();
    let e = register_on_host(&server, &nope, &file).unwrap_err();
    assert!(e.to_string().contains("there is no tenant `nope`"), "{e}");
    let e = register_on_host(&server, &acme, &file).unwrap_err();
    assert!(e.to_string().contains("belongs to tenant `nope`"), "{e}");
}

#[test]
fn a_database_from_before_host_trusted_versions_is_brought_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("server")).unwrap();
    {
        let c = rusqlite::Connection::open(dir.path().join("server/control.db")).unwrap();
        c.execute_batch(
            "CREATE TABLE tenant (name TEXT PRIMARY KEY NOT NULL, created_at INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE definition (tenant TEXT NOT NULL REFERENCES tenant(name), name TEXT NOT NULL,
               version INTEGER NOT NULL, digest TEXT NOT NULL, text TEXT NOT NULL,
               registered_by TEXT NOT NULL, registered_at INTEGER NOT NULL,
               PRIMARY KEY (tenant, name, version)) WITHOUT ROWID;
             INSERT INTO tenant VALUES ('acme', 0);",
        )
        .unwrap();
        c.execute(
            "INSERT INTO definition VALUES ('acme', 'writer', 1, 'sha256:x', ?1, 'dave', 0)",
            [definition("acme", "writer", "64Mi")],
        )
        .unwrap();
    }
    let server = TestServer::start_in(Place::sqlite_in(dir), Options::default());
    let acme = agentspace_core::Name::new("acme").unwrap();
    let file = server.state().join("writer.yaml");
    std::fs::write(&file, definition("acme", "writer", "128Mi")).unwrap();
    let r = register_on_host(&server, &acme, &file).unwrap();
    assert_eq!((r.version.version, r.version.host), (2, true));
}

/// A developer cannot reach the server host's own network through a definition
/// registered with the API: the gateway connects from the host, so `internal: true`
/// rules (the cloud's metadata service, the host's loopback) and tool servers (reached
/// as internal services) are refused when such a version is started.
fn an_api_definition_cannot_reach_the_hosts_own_network(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let text = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: prober, tenant: acme}
spec:
  egress:
    - {name: api, hosts: [api.example.com]}
    - {name: md, hosts: ['169.254.169.254'], internal: true}
    - {name: lo, hosts: ['127.0.0.1'], internal: true}
  tools:
    - {server: local, url: 'http://127.0.0.1:5432/mcp', allow: [t]}
";
    let r = admin.post("/v1/definitions", json!({"definition": text}));
    assert_eq!(r.status, 201, "{}", r.error_message());
    let r = admin.post("/v1/tasks", json!({"agent": "prober", "command": ["true"]}));
    assert_eq!(r.status, 422, "{}", r.error_message());
    let fields: Vec<String> = r.json()["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.egress[1].internal",
            "spec.egress[2].internal",
            "spec.tools[0].url"
        ]
    );
    // The same agent without them passes that check (this server starts no tasks).
    let plain = text
        .lines()
        .filter(|l| !l.contains("internal: true") && !l.contains("url:") && !l.contains("tools:"))
        .collect::<Vec<_>>()
        .join("\n");
    admin.post("/v1/definitions", json!({"definition": plain}));
    let r = admin.post("/v1/tasks", json!({"agent": "prober", "command": ["true"]}));
    assert_eq!(r.status, 409, "{}", r.error_message());
}

on_both!(
    the_hosts_operator_registers_host_trusted_versions_the_api_cannot_make,
    an_api_definition_cannot_reach_the_hosts_own_network,
);
