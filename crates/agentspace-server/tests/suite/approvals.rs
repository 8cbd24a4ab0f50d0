//! Human approvals: the store the gateway uses, decided through the API.

use std::time::Duration;

use agentspace_core::{AuditKind, Name};
use agentspace_server::{ApprovalContext, ApprovalState, Resolution};
use pretty_assertions::assert_eq;
use serde_json::json;

use super::harness::{Backend, Options, TestServer};

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

fn an_approver_approves_and_the_waiting_request_sees_it(backend: Backend) {
    let server = TestServer::start(backend);
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

    let events: Vec<_> = server
        .audit_events("acme")
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

fn deny_keeps_the_comment_and_four_eyes_stops_self_approval(backend: Backend) {
    let server = TestServer::start(backend);
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

    let denied = server
        .audit_events("acme")
        .into_iter()
        .find(|e| e.kind == AuditKind::ApprovalDenied)
        .unwrap();
    assert_eq!(denied.details["comment"], "no transfers on Fridays");
    assert_eq!(denied.details["approver"], "alice");
    assert_eq!(denied.decision, Some(agentspace_core::AuditDecision::Deny));
}

fn an_undecided_approval_times_out_as_a_deny(backend: Backend) {
    let server = TestServer::start(backend);
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
    let timeout = server
        .audit_events("acme")
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

fn a_restart_loses_no_pending_approval(backend: Backend) {
    let server = TestServer::start(backend);
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
    let place = server.stop();

    let server = TestServer::start_in(place, Options::default());
    let admin = server.api(&admin_token);
    let pending = admin.get("/v1/approvals").json();
    assert_eq!(pending[0]["id"], id.as_str());
    let r = admin.post(
        &format!("/v1/approvals/{id}/approve"),
        json!({"comment": "ok"}),
    );
    assert_eq!(r.status, 200);
}

pub fn held_request(digest: &str) -> agentspace_gateway::HoldRequest {
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

fn a_request_retried_after_its_connection_was_lost_goes_through_once(backend: Backend) {
    use agentspace_core::Name;
    use agentspace_gateway::{ApprovalDesk, Held};
    use agentspace_server::{ApprovalState, Outcome};

    let server = TestServer::start(backend);
    let store = server.approvals.clone();
    let tenant = Name::new("acme").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The store blocks (PostgreSQL's client may not run on an async worker): called from
    // async code through block_in_place, as the server does through spawn_blocking.
    let pending = || {
        tokio::task::block_in_place(|| {
            store
                .list(&tenant, Some(ApprovalState::Pending), 10)
                .unwrap()
        })
    };
    let decide = |id: &str, comment: &str| {
        tokio::task::block_in_place(|| {
            store
                .decide(&tenant, id, "bob", Outcome::Approve, comment)
                .unwrap()
        })
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
        decide(&id, "fine");
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
        decide(&id, "ok");
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

/// A decision made by another process (here the server, through its API) reaches a
/// request held by this one: nothing notifies it in-process, the store's re-read does.
fn a_decision_made_elsewhere_reaches_the_held_request(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    // The approval store of an `agentspace run`: its own connection, its own process state.
    let run = server.place().approval_store();
    let tenant = Name::new("acme").unwrap();
    let id = run.request(context("acme", "bob", true, 60)).unwrap();
    let waiter = {
        let (run, tenant, id) = (run.clone(), tenant.clone(), id.clone());
        std::thread::spawn(move || {
            runtime().block_on(run.wait(&tenant, &id, Duration::from_secs(30)))
        })
    };
    let r = admin.post(
        &format!("/v1/approvals/{id}/deny"),
        json!({"comment": "not today"}),
    );
    assert_eq!(r.status, 200, "{}", r.error_message());
    let Resolution::Decided(done) = waiter.join().unwrap().unwrap() else {
        panic!("the held request never saw the decision")
    };
    assert_eq!(done.state, ApprovalState::Denied);
    assert_eq!(done.comment.as_deref(), Some("not today"));
    // The other process cannot decide it again.
    let again = run.decide(
        &tenant,
        &id,
        "carol",
        agentspace_server::Outcome::Approve,
        "",
    );
    assert_eq!(again.unwrap_err().status(), 409);
}

/// Several `agentspace run` processes (each an approval store on its own connection)
/// retry the same held request at once after it was granted: exactly one goes through;
/// every other asks anew and, with nobody deciding, is denied at its deadline.
fn racing_retries_of_a_granted_request_go_through_exactly_once(backend: Backend) {
    use agentspace_gateway::{ApprovalDesk, Held};
    use agentspace_server::Outcome;

    let server = TestServer::start(backend);
    let tenant = Name::new("acme").unwrap();
    let place = server.place();
    let stores = [place.approval_store(), place.approval_store()];
    let mut asked = context("acme", "alice", true, 60);
    asked.request.insert("digest".into(), "d-race".into());
    let id = stores[0].request(asked).unwrap();
    server
        .approvals
        .decide(&tenant, &id, "bob", Outcome::Approve, "once")
        .unwrap();

    let racers = 6;
    let start = std::sync::Arc::new(std::sync::Barrier::new(racers));
    let results: Vec<Held> = (0..racers)
        .map(|i| {
            let store = stores[i % 2].clone();
            let start = std::sync::Arc::clone(&start);
            std::thread::spawn(move || {
                let mut request = held_request("d-race");
                request.timeout = Duration::from_secs(1);
                start.wait();
                runtime().block_on(store.hold(request))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let through: Vec<&Held> = results
        .iter()
        .filter(|h| matches!(h, Held::Approved { .. }))
        .collect();
    assert_eq!(
        through,
        [&Held::Approved {
            approval: id.clone(),
            approver: "bob".to_owned()
        }],
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .filter(|h| !matches!(h, Held::Approved { .. }))
            .all(|h| matches!(h, Held::Denied { approval, .. } if *approval != id)),
        "{results:?}"
    );
}

/// Whoever reads an `approval_requested` event can decide it: the approval is stored
/// (hidden) before its event is written and shown only once the event is durable. With
/// the control database's write lock held by someone else, a request neither shows its
/// event (whose id would be a 404) nor an approval; once the lock is free both appear
/// together, and the approval is pending.
#[test]
fn an_approval_is_decidable_as_soon_as_its_event_can_be_read() {
    let server = TestServer::start(Backend::Sqlite);
    let admin = server.bootstrap("acme", "alice");
    let approver = admin.user(&server, "apu", &["approver"]);
    let requested = |server: &TestServer| {
        server
            .audit_events("acme")
            .into_iter()
            .filter(|e| e.kind == AuditKind::ApprovalRequested)
            .count()
    };
    let blocker = rusqlite::Connection::open(server.state().join("server/control.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let store = server.approvals.clone();
    let request = std::thread::spawn(move || store.request(context("acme", "bob", false, 60)));
    // Long enough for the request to have written its event, had it gone first.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        requested(&server),
        0,
        "the event is readable before its approval"
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    let id = request.join().unwrap().unwrap();
    assert_eq!(requested(&server), 1);
    let r = approver.get(&format!("/v1/approvals/{id}"));
    assert_eq!(
        (r.status, r.json()["state"].clone()),
        (200, json!("pending"))
    );
    let r = approver.post(&format!("/v1/approvals/{id}/approve"), json!({}));
    assert_eq!(r.status, 200, "{}", r.error_message());
}

/// A request whose process died between storing its record and writing its event left
/// a hidden `opening` row: nobody sees or decides it, and the sweep removes it once
/// overdue, writing nothing to the audit log.
#[test]
fn a_request_never_put_on_record_is_invisible_and_swept() {
    let server = TestServer::start(Backend::Sqlite);
    let admin = server.bootstrap("acme", "alice");
    let approver = admin.user(&server, "apu", &["approver"]);
    let db = rusqlite::Connection::open(server.state().join("server/control.db")).unwrap();
    db.execute(
        "INSERT INTO approval (id, tenant, requester, task, agent, context, four_eyes, state, requested_at, expires_at)
         VALUES ('orphan', 'acme', 'bob', NULL, NULL, '{}', 0, 'opening', 0, 1)",
        [],
    )
    .unwrap();
    let before = server.audit_events("acme").len();
    assert_eq!(approver.get("/v1/approvals/orphan").status, 404);
    let all = approver.get("/v1/approvals?state=all").json();
    assert_eq!(all.as_array().unwrap().len(), 0, "{all}");
    assert_eq!(
        approver
            .post("/v1/approvals/orphan/approve", json!({}))
            .status,
        404
    );
    server.approvals.expire_overdue().unwrap();
    let left: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM approval WHERE id = 'orphan'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(server.audit_events("acme").len(), before);
}

on_both!(
    a_decision_made_elsewhere_reaches_the_held_request,
    racing_retries_of_a_granted_request_go_through_exactly_once,
    an_approver_approves_and_the_waiting_request_sees_it,
    deny_keeps_the_comment_and_four_eyes_stops_self_approval,
    an_undecided_approval_times_out_as_a_deny,
    a_restart_loses_no_pending_approval,
    a_request_retried_after_its_connection_was_lost_goes_through_once,
);
