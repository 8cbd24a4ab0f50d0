//! Tokens, users and roles.

use pretty_assertions::assert_eq;
use serde_json::json;

use super::harness::{Backend, TestServer};

fn requests_without_a_valid_token_get_401_with_a_fix(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let r = server.anonymous().get("/v1/me");
    assert_eq!(r.status, 401);
    let body = r.json();
    assert_eq!(body["error"], "no bearer token");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
    // A token with a wrong secret, a malformed one, and a revoked one.
    let me = admin.get("/v1/me").json();
    let id = me["token_id"].as_str().unwrap();
    for bad in [
        format!("ast_{id}_{}", "0".repeat(64)),
        "ast_nonsense".to_owned(),
        "x".repeat(300),
    ] {
        assert_eq!(server.api(&bad).get("/v1/me").status, 401, "{bad}");
    }
    assert_eq!(me["user"], "alice");
    assert_eq!(me["tenant"], "acme");
    assert_eq!(me["roles"], json!(["admin"]));
}

fn bootstrap_refuses_an_existing_tenant(backend: Backend) {
    let server = TestServer::start(backend);
    server.bootstrap("acme", "alice");
    let err = agentspace_server::bootstrap_admin(
        server.state(),
        server.place().database_url().as_deref(),
        None,
        &agentspace_core::Name::new("acme").unwrap(),
        "mallory",
    )
    .unwrap_err();
    assert_eq!(err.status(), 409);
    assert!(err.to_string().contains("exists already"), "{err}");
}

fn roles_are_checked_per_endpoint(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let dev = admin.user(&server, "dave", &["developer"]);
    let auditor = admin.user(&server, "audrey", &["auditor"]);
    let approver = admin.user(&server, "apu", &["approver"]);

    // Only admins manage users.
    let r = dev.get("/v1/users");
    assert_eq!(r.status, 403);
    assert!(
        r.json()["error"].as_str().unwrap().contains("admin"),
        "{}",
        r.error_message()
    );
    assert_eq!(
        dev.post("/v1/users", json!({"name": "x", "roles": []}))
            .status,
        403
    );
    // Only admins and auditors read the audit log.
    assert_eq!(dev.get("/v1/audit/events").status, 403);
    assert_eq!(approver.get("/v1/audit/events").status, 403);
    assert_eq!(auditor.get("/v1/audit/events").status, 200);
    // Developers register definitions; auditors do not.
    let def = super::harness::definition("acme", "writer", "64Mi");
    assert_eq!(
        dev.post("/v1/definitions", json!({"definition": def}))
            .status,
        201
    );
    assert_eq!(
        auditor
            .post("/v1/definitions", json!({"definition": def}))
            .status,
        403
    );
    // Approvers decide; developers do not; auditors only read.
    assert_eq!(dev.get("/v1/approvals").status, 403);
    assert_eq!(auditor.get("/v1/approvals").status, 200);
    assert_eq!(approver.get("/v1/approvals").status, 200);
    // Only admins revoke.
    let body = json!({"kind": "agent", "agent": "writer"});
    assert_eq!(approver.post("/v1/revocations", body.clone()).status, 403);
    assert_eq!(admin.post("/v1/revocations", body).status, 201);
}

fn tokens_are_shown_once_stored_hashed_and_revocable(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let r = admin.post("/v1/users", json!({"name": "bob", "roles": ["developer"]}));
    assert_eq!(r.status, 201);
    let made = admin
        .post("/v1/users/bob/tokens", json!({"label": "laptop"}))
        .json();
    let token = made["token"].as_str().unwrap().to_owned();
    let id = made["id"].as_str().unwrap().to_owned();
    let bob = server.api(&token);
    assert_eq!(bob.get("/v1/me").json()["user"], "bob");

    // Listing shows metadata, never the secret; the database holds only a hash.
    let list = admin.get("/v1/users/bob/tokens");
    assert_eq!(list.status, 200);
    assert!(!String::from_utf8_lossy(&list.body).contains(&token[40..]));
    assert_eq!(list.json()[0]["label"], "laptop");
    let db = server.place().stored_bytes();
    let secret = token.rsplit('_').next().unwrap();
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));

    // Bob can list his own tokens but not alice's; he can revoke his own.
    assert_eq!(bob.get("/v1/users/bob/tokens").status, 200);
    assert_eq!(bob.get("/v1/users/alice/tokens").status, 403);
    assert_eq!(bob.delete(&format!("/v1/tokens/{id}")).status, 204);
    assert_eq!(bob.get("/v1/me").status, 401);

    let actions: Vec<String> = server
        .audit_events("acme")
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            "tenant_bootstrap",
            "user_add",
            "token_create",
            "token_revoke"
        ]
    );
}

fn roles_change_and_the_last_admin_stays(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let bob = admin.user(&server, "bob", &["developer"]);
    assert_eq!(bob.get("/v1/users").status, 403);
    let r = admin.put(
        "/v1/users/bob/roles",
        json!({"roles": ["admin", "auditor"]}),
    );
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(r.json()["roles"], json!(["admin", "auditor"]));
    // The new role holds at once for the existing token.
    assert_eq!(bob.get("/v1/users").status, 200);
    // Taking admin from both would leave no admin.
    assert_eq!(
        admin
            .put("/v1/users/bob/roles", json!({"roles": []}))
            .status,
        200
    );
    let r = admin.put("/v1/users/alice/roles", json!({"roles": ["auditor"]}));
    assert_eq!(r.status, 409);
    assert!(r.error_message().contains("without an admin"));
    // Removing a user removes their tokens.
    assert_eq!(admin.delete("/v1/users/bob").status, 204);
    assert_eq!(bob.get("/v1/me").status, 401);
    assert_eq!(admin.delete("/v1/users/bob").status, 404);
    assert_eq!(admin.delete("/v1/users/alice").status, 409);
    // Unknown roles and fields are refused with a clear error.
    let r = admin.post("/v1/users", json!({"name": "eve", "roles": ["root"]}));
    assert_eq!(r.status, 400);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("openapi.json")
    );
}

on_both!(
    requests_without_a_valid_token_get_401_with_a_fix,
    bootstrap_refuses_an_existing_tenant,
    roles_are_checked_per_endpoint,
    tokens_are_shown_once_stored_hashed_and_revocable,
    roles_change_and_the_last_admin_stays,
);
