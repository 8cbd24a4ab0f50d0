//! Webhooks: the operator's hears every approval request once; a tenant's hears only its
//! own tenant's; and a tenant admin cannot aim the server at its loopback, the private
//! network or the metadata service, neither when setting the URL nor later.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agentspace_core::{AuditDecision, AuditKind};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

use super::approvals::context;
use super::harness::{Backend, Options, Place, TestServer};

/// A webhook receiver on loopback: every POST it gets, as (path, JSON body), answered 200.
struct Hook {
    port: u16,
    got: mpsc::Receiver<(String, Value)>,
}

impl Hook {
    fn new() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, got) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut reader = BufReader::new(conn);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
                let path = request_line.split(' ').nth(1).unwrap_or("").to_owned();
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if tx.send((path, body)).is_err() {
                    return;
                }
            }
        });
        Self { port, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The next announcement, waiting up to 20 s.
    fn next(&self) -> (String, Value) {
        self.got
            .recv_timeout(Duration::from_secs(20))
            .expect("no announcement arrived")
    }

    /// Announcements until every approval of `want` arrived (deliveries run side by
    /// side, so in any order); all that arrived meanwhile.
    fn until(&self, want: &[&String]) -> Vec<(String, Value)> {
        let mut seen: Vec<(String, Value)> = Vec::new();
        while !want
            .iter()
            .all(|id| seen.iter().any(|(_, b)| b["approval"]["id"] == id.as_str()))
        {
            seen.push(self.next());
        }
        seen
    }

    /// Whatever else arrived by now.
    fn rest(&self) -> Vec<(String, Value)> {
        self.got.try_iter().collect()
    }
}

/// The approval ids of announcements, sorted.
fn ids(got: &[(String, Value)]) -> Vec<String> {
    let mut ids: Vec<String> = got
        .iter()
        .map(|(_, b)| b["approval"]["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted<const N: usize>(ids: [&String; N]) -> Vec<String> {
    let mut ids: Vec<String> = ids.into_iter().cloned().collect();
    ids.sort();
    ids
}

fn the_operators_webhook_hears_each_approval_once(backend: Backend) {
    let hook = Hook::new();
    let server = TestServer::start_in(
        Place::new(backend),
        Options {
            webhook: Some(hook.url("/services/T000/B000")),
            ..Options::default()
        },
    );
    server.bootstrap("acme", "alice");
    let id = server
        .approvals
        .request(context("acme", "bob", true, 600))
        .unwrap();
    let (path, body) = hook.next();
    assert_eq!(path, "/services/T000/B000");
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains(
            "`bob` (agent `credit-officer`) wants POST https://payments.example.com/v1/transfers"
        ),
        "{text}"
    );
    assert!(text.contains(&id), "{text}");
    assert_eq!(body["approval"]["id"], id.as_str());

    // Delivered once: a later approval arrives, and nothing more of the first.
    let later = server
        .approvals
        .request(context("acme", "carol", true, 600))
        .unwrap();
    let got = hook.until(&[&later]);
    assert_eq!(ids(&got), [later]);
}

fn a_tenant_webhook_hears_only_its_tenants_approvals(backend: Backend) {
    let (operator, acme_hook, beta_hook) = (Hook::new(), Hook::new(), Hook::new());
    let server = TestServer::start_in(
        Place::new(backend),
        Options {
            webhook: Some(operator.url("/operator")),
            allow_private_webhooks: true,
            ..Options::default()
        },
    );
    let acme = server.bootstrap("acme", "alice");
    let beta = server.bootstrap("beta", "bea");
    let secret_path = "/services/T0/B0/acme-webhook-secret";
    let r = acme.put(
        "/v1/tenant/webhook",
        json!({"url": acme_hook.url(secret_path)}),
    );
    assert_eq!(r.status, 200, "{}", r.error_message());
    // The answer names the origin and a digest, never the URL's secret path.
    assert_eq!(
        r.json()["origin"],
        format!("http://127.0.0.1:{}", acme_hook.port)
    );
    assert!(!r.json().to_string().contains("acme-webhook-secret"));
    assert_eq!(acme.get("/v1/tenant/webhook").json(), r.json());
    let r = beta.put("/v1/tenant/webhook", json!({"url": beta_hook.url("/beta")}));
    assert_eq!(r.status, 200, "{}", r.error_message());
    // Only an admin sets it.
    let dev = acme.user(&server, "dave", &["developer", "approver", "auditor"]);
    assert_eq!(
        dev.put("/v1/tenant/webhook", json!({"url": acme_hook.url("/dave")}))
            .status,
        403
    );
    assert_eq!(dev.delete("/v1/tenant/webhook").status, 403);
    assert_eq!(dev.get("/v1/tenant/webhook").status, 403);

    let a1 = server
        .approvals
        .request(context("acme", "bob", true, 600))
        .unwrap();
    let b1 = server
        .approvals
        .request(context("beta", "bob", true, 600))
        .unwrap();
    let a2 = server
        .approvals
        .request(context("acme", "carol", true, 600))
        .unwrap();
    let acme_got = acme_hook.until(&[&a1, &a2]);
    assert_eq!(ids(&acme_got), sorted([&a1, &a2]));
    assert!(acme_got.iter().all(|(p, _)| p == secret_path));
    let beta_got = beta_hook.until(&[&b1]);
    assert_eq!(ids(&beta_got), sorted([&b1]));
    // The operator's hears all three, each once.
    let all = operator.until(&[&a1, &b1, &a2]);
    assert_eq!(ids(&all), sorted([&a1, &b1, &a2]));

    // Removed: nothing more reaches it; the operator's still hears.
    assert_eq!(acme.delete("/v1/tenant/webhook").status, 204);
    assert_eq!(acme.get("/v1/tenant/webhook").status, 404);
    assert_eq!(acme.delete("/v1/tenant/webhook").status, 404);
    let a3 = server
        .approvals
        .request(context("acme", "erin", true, 600))
        .unwrap();
    assert_eq!(ids(&operator.until(&[&a3])), sorted([&a3]));
    assert_eq!(ids(&acme_hook.rest()), Vec::<String>::new());
    assert_eq!(ids(&beta_hook.rest()), Vec::<String>::new());

    // Setting and removing are on record, without the secret path.
    let events: Vec<_> = server
        .audit_events("acme")
        .into_iter()
        .filter(|e| e.action.starts_with("webhook_"))
        .collect();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["webhook_set", "webhook_remove"]);
    assert_eq!(events[0].user.as_deref(), Some("alice"));
    assert_eq!(
        events[0].details["origin"],
        format!("http://127.0.0.1:{}", acme_hook.port)
    );
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains("acme-webhook-secret"), "{text}");
}

/// The attack: a tenant admin aims the webhook at the server's loopback, the private
/// network or the cloud metadata service, in every spelling. Each is refused with the
/// range it falls in and audited as a refused change; nothing is ever sent.
fn tenant_webhooks_to_special_addresses_are_refused_and_audited(backend: Backend) {
    let inside = Hook::new();
    let server = TestServer::start(backend);
    let acme = server.bootstrap("acme", "alice");
    let port = inside.port;
    let attempts = [
        (format!("http://127.0.0.1:{port}/steal"), "loopback"),
        (format!("http://localhost:{port}/steal"), "loopback"),
        (format!("http://127.1:{port}/steal"), "loopback"),
        (format!("http://2130706433:{port}/steal"), "loopback"),
        (format!("http://[::1]:{port}/steal"), "loopback"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/steal"),
            "loopback",
        ),
        (
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/".to_owned(),
            "link-local",
        ),
        (
            "http://[fd00:ec2::254]/latest/meta-data/".to_owned(),
            "unique local",
        ),
        (
            "http://100.100.100.200/latest/meta-data/".to_owned(),
            "shared address space",
        ),
        ("http://10.0.0.1/admin".to_owned(), "private"),
        ("https://192.168.1.1/".to_owned(), "private"),
        ("http://0.0.0.0:7171/v1/users".to_owned(), "this-network"),
        (
            format!("http://hooks.example.com@127.0.0.1:{port}/"),
            "no user name",
        ),
        (
            format!("http://127.0.0.1:{port}/x\r\nX-Injected: 1"),
            "no user name",
        ),
        ("ftp://files.example.com/".to_owned(), "not an `https://`"),
        ("file:///etc/passwd".to_owned(), "not an `https://`"),
    ];
    for (url, why) in &attempts {
        let r = acme.put("/v1/tenant/webhook", json!({"url": url}));
        assert_eq!(r.status, 400, "{url} was accepted: {}", r.error_message());
        let message = r.error_message();
        assert!(message.contains(why), "{url}: {message}");
        assert!(message.contains("--allow-private-webhooks"), "{message}");
    }
    assert_eq!(acme.get("/v1/tenant/webhook").status, 404);
    let refused: Vec<_> = server
        .audit_events("acme")
        .into_iter()
        .filter(|e| e.action == "webhook_set")
        .collect();
    assert_eq!(refused.len(), attempts.len());
    for e in &refused {
        assert_eq!(e.kind, AuditKind::PolicyChange);
        assert_eq!(e.decision, Some(AuditDecision::Deny));
        assert_eq!(e.user.as_deref(), Some("alice"));
        assert!(e.reason.is_some());
    }
    assert!(inside.rest().is_empty());
}

/// A webhook set while the operator allowed private addresses is checked again when it
/// is used: once the server runs without that permission, the loopback webhook is not
/// called, the refusal is audited once per approval, and the operator's webhook goes on.
fn a_stored_tenant_webhook_is_checked_again_at_delivery(backend: Backend) {
    let (inside, operator) = (Hook::new(), Hook::new());
    let place = Place::new(backend);
    let server = TestServer::start_in(
        place.clone(),
        Options {
            allow_private_webhooks: true,
            ..Options::default()
        },
    );
    let acme = server.bootstrap("acme", "alice");
    let r = acme.put("/v1/tenant/webhook", json!({"url": inside.url("/inside")}));
    assert_eq!(r.status, 200, "{}", r.error_message());
    drop(server);

    let server = TestServer::start_in(
        place,
        Options {
            webhook: Some(operator.url("/operator")),
            allow_private_webhooks: false,
            ..Options::default()
        },
    );
    let first = server
        .approvals
        .request(context("acme", "bob", true, 600))
        .unwrap();
    assert_eq!(ids(&operator.until(&[&first])), sorted([&first]));
    let refusal = |id: &str| {
        server
            .audit_events("acme")
            .into_iter()
            .filter(|e| {
                e.kind == AuditKind::HttpRequest
                    && e.details.get("approval").and_then(Value::as_str) == Some(id)
            })
            .collect::<Vec<_>>()
    };
    let start = Instant::now();
    while refusal(&first).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no refusal recorded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = server
        .approvals
        .request(context("acme", "carol", true, 600))
        .unwrap();
    assert_eq!(ids(&operator.until(&[&second])), sorted([&second]));
    while refusal(&second).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "no refusal recorded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let e = refusal(&first);
    assert_eq!(e.len(), 1, "refused more than once: {e:?}");
    assert_eq!(e[0].decision, Some(AuditDecision::Deny));
    let reason = e[0].reason.clone().unwrap();
    assert!(
        reason.contains("127.0.0.1") && reason.contains("loopback"),
        "{reason}"
    );
    assert_eq!(
        e[0].resource.as_deref(),
        Some(format!("http://127.0.0.1:{}", inside.port).as_str())
    );
    assert!(inside.rest().is_empty(), "the loopback webhook was called");
}

/// Two servers on one store (two hosts on one PostgreSQL, or two processes on one state
/// directory) announce every approval once between them.
fn two_servers_on_one_store_announce_once(backend: Backend) {
    let hook = Hook::new();
    let place = Place::new(backend);
    let options = Options {
        webhook: Some(hook.url("/ops")),
        ..Options::default()
    };
    let one = TestServer::start_in(place.clone(), options.clone());
    let two = TestServer::start_in(place, options);
    one.bootstrap("acme", "alice");
    let mut want = Vec::new();
    for (i, server) in [&one, &two, &one, &two, &one, &two].iter().enumerate() {
        want.push(
            server
                .approvals
                .request(context("acme", &format!("user{i}"), true, 600))
                .unwrap(),
        );
    }
    let mut got = hook.until(&want.iter().collect::<Vec<_>>());
    // A last one, announced after every earlier round of both servers had its chance.
    let last = two
        .approvals
        .request(context("acme", "last", true, 600))
        .unwrap();
    got.extend(hook.until(&[&last]));
    want.push(last);
    want.sort();
    assert_eq!(ids(&got), want);
}

on_both!(
    the_operators_webhook_hears_each_approval_once,
    a_tenant_webhook_hears_only_its_tenants_approvals,
    tenant_webhooks_to_special_addresses_are_refused_and_audited,
    a_stored_tenant_webhook_is_checked_again_at_delivery,
    two_servers_on_one_store_announce_once,
);
