//! Human approvals: the store the gateway uses, decided through the API.

use std::time::Duration;

use agentspace_core::{AuditKind, Name};
use agentspace_server::{ApprovalContext, ApprovalState, Resolution};
use pretty_assertions::assert_eq;
use serde_json::json;

use super::harness::{TestServer, audit_events};

pub fn context(tenant: &str, user: &str, four_eyes: bool, timeout_secs: u64) -> ApprovalContext {
    ApprovalContext {
        tenant: Name::new(tenant).unwrap(),
        user: user.to_owned(),
        task: Some("01jabcdefghjkmnpqrstvwxyz0".to_owned()),
        agent: Some("credit-officer".to_owned()),
        action: "POST".to_owned(),
        resource: "https://payments.example.com/v1/transfers".to_owned(),
        policies: vec!["approval-payments".to_owned()],
        reason: Some("payments over 1000 need approval".to_owned()),
        request: serde_json::from_value(json!({"method": "POST", "host": "payments.example.com"}))
            .unwrap(),
        budget: Some(json!({"requests": 3})),
        four_eyes,
        timeout_secs,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn an_approver_approves_and_the_waiting_request_sees_it() {
    let server = TestServer::start();
    let admin = server.bootstrap("acme", "alice");
    let approver = admin.user(&server, "apu", &["approver"]);
    let store = server.approvals.clone();
    let tenant = Name::new("acme").unwrap();
    let id = store.request(context("acme", "bob", true, 60)).unwrap();

    let pending = approver.get("/v1/approvals").json();
    assert_eq!(pending.as_array().unwrap().len(), 1);
    assert_eq!(pending[0]["id"], id.as_str());
    assert_eq!(pending[0]["state"], "pending");
    assert_eq!(
        pending[0]["context"]["resource"],
        "https://payments.example.com/v1/transfers"
    );
    assert_eq!(pending[0]["context"]["budget"], json!({"requests": 3}));

    // The gateway waits; the approver decides in the meantime.
    let waiter = {
        let (store, tenant, id) = (store.clone(), tenant.clone(), id.clone());
        std::thread::spawn(move || {
            runtime().block_on(store.wait(&tenant, &id, Duration::from_secs(30)))
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let r = approver.post(
        &format!("/v1/approvals/{id}/approve"),
        json!({"comment": "checked the invoice"}),
    );
    assert_eq!(r.status, 200, "{}", r.error_message());
    let started = std::time::Instant::now();
    let Resolution::Decided(done) = waiter.join().unwrap().unwrap() else {
        panic!("still pending")
    };
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(done.state, ApprovalState::Approved);
    assert_eq!(done.approver.as_deref(), Some("apu"));
    assert_eq!(done.comment.as_deref(), Some("checked the invoice"));

    // Decided once: a second decision conflicts; nothing is pending any more.
    let r = approver.post(&format!("/v1/approvals/{id}/deny"), json!({}));
    assert_eq!(r.status, 409);
    assert_eq!(approver.get("/v1/approvals").json(), json!([]));
    assert_eq!(
        approver.get("/v1/approvals?state=approved").json()[0]["id"],
        id.as_str()
    );

    let events: Vec<_> = audit_events(server.state(), "acme")
        .into_iter()
        .filter(|e| e.details.get("approval").and_then(|a| a.as_str()) == Some(id.as_str()))
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, AuditKind::ApprovalRequested);
    assert_eq!(events[0].user.as_deref(), Some("bob"));
    assert_eq!(events[0].policies, ["approval-payments"]);
    assert_eq!(events[1].kind, AuditKind::ApprovalGranted);
    assert_eq!(events[1].details["approver"], "apu");
    assert_eq!(events[1].details["comment"], "checked the invoice");
}

#[test]
fn deny_keeps_the_comment_and_four_eyes_stops_self_approval() {
    let server = TestServer::start();
    let admin = server.bootstrap("acme", "alice");
    let bob = admin.user(&server, "bob", &["approver"]);
    let store = &server.approvals;

    // Bob's own task asks; four-eyes bars him.
    let id = store.request(context("acme", "bob", true, 60)).unwrap();
    let r = bob.post(&format!("/v1/approvals/{id}/approve"), json!({}));
    assert_eq!(r.status, 403);
    assert!(
        r.error_message().contains("four-eyes"),
        "{}",
        r.error_message()
    );
    let r = admin.post(
        &format!("/v1/approvals/{id}/deny"),
        json!({"comment": "no transfers on Fridays"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "denied");
    assert_eq!(r.json()["comment"], "no transfers on Fridays");

    // Without four-eyes the requester may decide.
    let id = store.request(context("acme", "bob", false, 60)).unwrap();
    let r = bob.post(&format!("/v1/approvals/{id}/approve"), json!({}));
    assert_eq!(r.status, 200, "{}", r.error_message());

    let denied = audit_events(server.state(), "acme")
        .into_iter()
        .find(|e| e.kind == AuditKind::ApprovalDenied)
        .unwrap();
    assert_eq!(denied.details["comment"], "no transfers on Fridays");
    assert_eq!(denied.details["approver"], "alice");
    assert_eq!(denied.decision, Some(agentspace_core::AuditDecision::Deny));
}

#[test]
fn an_undecided_approval_times_out_as_a_deny() {
    let server = TestServer::start();
    let admin = server.bootstrap("acme", "alice");
    let store = server.approvals.clone();
    let tenant = Name::new("acme").unwrap();
    let id = store.request(context("acme", "bob", false, 1)).unwrap();
    let Resolution::Decided(a) = runtime()
        .block_on(store.wait(&tenant, &id, Duration::from_secs(10)))
        .unwrap()
    else {
        panic!("not decided")
    };
    assert_eq!(a.state, ApprovalState::TimedOut);
    let r = admin.post(&format!("/v1/approvals/{id}/approve"), json!({}));
    assert_eq!(r.status, 409);
    let timeout = audit_events(server.state(), "acme")
        .into_iter()
        .find(|e| e.kind == AuditKind::ApprovalDenied)
        .unwrap();
    assert_eq!(timeout.action, "timeout");

    // A short wait on a long approval ends pending.
    let id = store.request(context("acme", "bob", false, 600)).unwrap();
    let r = runtime()
        .block_on(store.wait(&tenant, &id, Duration::from_millis(100)))
        .unwrap();
    assert_eq!(r, Resolution::Pending);
}

#[test]
fn a_restart_loses_no_pending_approval() {
    let server = TestServer::start();
    server.bootstrap("acme", "alice");
    let admin_token = {
        let admin = server.bootstrap("beta", "bea");
        admin.post("/v1/users/bea/tokens", json!({})).json()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let id = server
        .approvals
        .request(context("beta", "bob", true, 600))
        .unwrap();
    let dir = server.stop().unwrap();

    let server = TestServer::start_on(dir.path());
    let admin = server.api(&admin_token);
    let pending = admin.get("/v1/approvals").json();
    assert_eq!(pending[0]["id"], id.as_str());
    let r = admin.post(
        &format!("/v1/approvals/{id}/approve"),
        json!({"comment": "ok"}),
    );
    assert_eq!(r.status, 200);
    drop(server);
    drop(dir);
}

#[test]
fn each_approval_request_is_announced_once_to_the_webhook() {
    use std::io::{BufRead, BufReader, Read, Write};
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/services/T000/B000", hook.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), Some(url));
    server.bootstrap("acme", "alice");
    let id = server
        .approvals
        .request(context("acme", "bob", true, 600))
        .unwrap();

    hook.set_nonblocking(false).unwrap();
    let (conn, _) = hook.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    assert_eq!(request_line, "POST /services/T000/B000 HTTP/1.1\r\n");
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    reader
        .get_mut()
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        .unwrap();
    drop(reader);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains(
            "`bob` (agent `credit-officer`) wants POST https://payments.example.com/v1/transfers"
        ),
        "{text}"
    );
    assert!(text.contains(&id), "{text}");
    assert_eq!(body["approval"]["id"], id.as_str());

    // Delivered once: nothing more arrives.
    hook.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(hook.accept().is_err(), "announced twice");
}

fn held_request(digest: &str) -> agentspace_gateway::HoldRequest {
    agentspace_gateway::HoldRequest {
        tenant: "acme".to_owned(),
        user: "alice".to_owned(),
        task: "01jabcdefghjkmnpqrstvwxyz0".to_owned(),
        agent: "credit-officer".to_owned(),
        action: "POST".to_owned(),
        resource: "https://payments.example.com/v1/transfers".to_owned(),
        policies: vec!["approval-payments".to_owned()],
        reason: "payments over 1000 need approval".to_owned(),
        summary: serde_json::Map::new(),
        timeout: Duration::from_secs(60),
        digest: digest.to_owned(),
    }
}

#[test]
fn a_request_retried_after_its_connection_was_lost_goes_through_once() {
    use agentspace_core::Name;
    use agentspace_gateway::{ApprovalDesk, Held};
    use agentspace_server::{ApprovalState, Outcome};

    let server = TestServer::start();
    let store = server.approvals.clone();
    let tenant = Name::new("acme").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let pending = || {
        store
            .list(&tenant, Some(ApprovalState::Pending), 10)
            .unwrap()
    };
    rt.block_on(async {
        // Held, then the agent's connection is lost: the hold is dropped.
        let lost =
            tokio::time::timeout(Duration::from_millis(700), store.hold(held_request("d1"))).await;
        assert!(lost.is_err(), "the request was not held");
        let asked = pending();
        assert_eq!(asked.len(), 1);
        let id = asked[0].id.clone();
        // A retry while it is pending waits on the same approval; a person approves.
        let retry = {
            let store = store.clone();
            tokio::spawn(async move { store.hold(held_request("d1")).await })
        };
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(pending().len(), 1, "the retry asked again");
        store
            .decide(&tenant, &id, "bob", Outcome::Approve, "fine")
            .unwrap();
        assert_eq!(
            retry.await.unwrap(),
            Held::Approved {
                approval: id.clone(),
                approver: "bob".to_owned()
            }
        );
        // The approval let one request through; the same request again asks anew, and a
        // different request never matches it.
        let again =
            tokio::time::timeout(Duration::from_millis(700), store.hold(held_request("d1"))).await;
        assert!(
            again.is_err(),
            "a used approval let a second request through"
        );
        let other =
            tokio::time::timeout(Duration::from_millis(700), store.hold(held_request("d2"))).await;
        assert!(other.is_err());
        let asked = pending();
        assert_eq!(asked.len(), 2);
        assert!(asked.iter().all(|a| a.id != id));
    });

    // Granted while nobody waits (the connection was lost before the decision): the
    // retry goes through at once, and only one retry.
    rt.block_on(async {
        let id = pending()
            .into_iter()
            .find(|a| a.context.request.get("digest").and_then(|d| d.as_str()) == Some("d2"))
            .unwrap()
            .id;
        store
            .decide(&tenant, &id, "bob", Outcome::Approve, "ok")
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), store.hold(held_request("d2")))
            .await
            .unwrap();
        assert_eq!(
            first,
            Held::Approved {
                approval: id.clone(),
                approver: "bob".to_owned()
            }
        );
        let second =
            tokio::time::timeout(Duration::from_millis(700), store.hold(held_request("d2"))).await;
        assert!(second.is_err(), "the grant was used twice");
    });
}
