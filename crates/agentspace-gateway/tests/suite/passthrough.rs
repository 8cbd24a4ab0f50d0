//! `tls: passthrough`: a client that pins the upstream's certificate gets the upstream's
//! own TLS through the gateway, decided on the server name and port and audited.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentspace_gateway::Arrival;
use pretty_assertions::assert_eq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::helpers::{Harness, principal};

/// `other.example.com` (on the HTTPS stand-in's certificate) is passed through;
/// `api.example.com` (the same stand-in) is intercepted.
const PINNING: &str = r#"apiVersion: agentspace/v1
kind: Agent
metadata:
  name: shopper
  tenant: acme
spec:
  egress:
    - name: items
      hosts: [api.example.com]
      methods: [GET]
    - name: pinned
      hosts: [other.example.com]
      tls: passthrough
      budget: {requests: 4}
"#;

/// `curl` through the proxy trusting only the stand-in's own CA, as a pinning client.
async fn pinned_curl(h: &Harness, url: &str) -> super::helpers::Out {
    h.curl_raw(vec![
        "--proxy".into(),
        format!("http://{}", h.proxy),
        "--cacert".into(),
        h.upstream_ca.display().to_string(),
        url.into(),
    ])
    .await
}

/// Sends `CONNECT authority` and returns the proxy's answer head and body.
async fn raw_connect(proxy: SocketAddr, authority: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinning_client_reaches_a_passthrough_host_with_the_upstreams_own_certificate() {
    let h = Harness::start_with(PINNING).await;
    let out = pinned_curl(&h, "https://other.example.com/v1/pinned?q=1").await;
    assert_eq!(out.status, 200, "{}", out.body);
    let seen = out.json();
    assert_eq!(seen["path"], "/v1/pinned");
    assert_eq!(seen["authority"], "other.example.com");
    // Untouched: the gateway did not terminate TLS, so it strips nothing.
    let out = h
        .curl_raw(vec![
            "--proxy".into(),
            format!("http://{}", h.proxy),
            "--cacert".into(),
            h.upstream_ca.display().to_string(),
            "-H".into(),
            "Authorization: Bearer the-agents-own".into(),
            "https://other.example.com/v1/own".into(),
        ])
        .await;
    assert_eq!(
        out.json()["headers"]["authorization"],
        "Bearer the-agents-own"
    );
    // A client that trusts only the tenant CA is not served by the gateway there.
    let out = h.curl(&["https://other.example.com/v1/pinned"]).await;
    assert_eq!(
        out.status, 0,
        "the passthrough host was intercepted: {}",
        out.body
    );
    // Intercepted hosts still are.
    let out = h.curl(&["https://api.example.com/v1/items"]).await;
    assert_eq!(out.status, 200, "{}", out.body);

    let events = h.events().await;
    let tunnels: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["action"] == "TUNNEL").collect();
    assert_eq!(tunnels.len(), 3, "{events:#?}");
    for e in &tunnels {
        assert_eq!(e["decision"], "allow");
        assert_eq!(e["resource"], "tls://other.example.com:443");
        assert_eq!(e["details"]["tls"], "passthrough");
        assert_eq!(e["details"]["capabilities"], serde_json::json!(["pinned"]));
    }
    // Bytes both ways are charged to the task once the tunnels close.
    let mut bytes = 0;
    for _ in 0..50 {
        bytes = h.task.policy.task_usage(&principal("t1")).unwrap().bytes;
        if bytes > 2000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bytes > 2000, "tunnel bytes were not counted: {bytes}");
    assert_eq!(h.verified_events().await, events.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tunnel_gets_the_documented_403_before_any_tls() {
    let h = Harness::start_with(PINNING).await;
    for _ in 0..4 {
        assert!(
            raw_connect(h.proxy, "other.example.com:443")
                .await
                .starts_with("HTTP/1.1 200")
        );
    }
    let answer = raw_connect(h.proxy, "other.example.com:443").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-agentspace-decision: deny"),
        "{answer}"
    );
    let body: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "budget", "{body}");
    assert!(body["audit_id"].as_str().is_some());
    let last = h.events().await.pop().unwrap();
    assert_eq!(last["action"], "TUNNEL");
    assert_eq!(last["decision"], "deny");
    // The gateway connects only once a ClientHello has come and been checked: none
    // did here, so the upstream never saw a connection.
    assert_eq!(
        h.upstream_connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_name_other_than_the_connect_host_is_refused_and_audited() {
    let h = Harness::start_with(PINNING).await;
    // CONNECT to the passed-through host, then TLS naming the intercepted one.
    let script = r#"
import socket, ssl, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"CONNECT other.example.com:443 HTTP/1.1\r\nHost: other.example.com:443\r\n\r\n")
head = s.recv(4096)
assert head.startswith(b"HTTP/1.1 200"), head
ctx = ssl.create_default_context(cafile=sys.argv[2])
try:
    t = ctx.wrap_socket(s, server_hostname="api.example.com")
    t.sendall(b"GET /v1/items HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
    print("REACHED", t.recv(100))
except (ssl.SSLError, OSError) as e:
    print("REFUSED", type(e).__name__)
"#;
    let proxy = h.proxy.port().to_string();
    let ca = h.upstream_ca.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", script, &proxy, &ca])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("REFUSED"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = h.events().await;
    let last = events.last().unwrap();
    assert_eq!(last["decision"], "deny", "{events:#?}");
    assert_eq!(last["details"]["code"], "invalid-request");
    assert!(
        last["reason"].as_str().unwrap().contains("api.example.com"),
        "{last}"
    );
    assert_eq!(
        h.upstream_seen.lock().unwrap().len(),
        0,
        "the request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transparent_arrival_is_passed_through_by_its_server_name() {
    let h = Harness::start_with(PINNING).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Arc::clone(&h.gateway);
    let task = Arc::clone(&h.task);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            // Whatever address the client dialled, the name it sends is what counts.
            let original: SocketAddr = "203.0.113.7:443".parse().unwrap();
            tokio::spawn(Arc::clone(&gateway).serve_connection(
                stream,
                Arc::clone(&task),
                Arrival::Transparent { original },
            ));
        }
    });
    let via = |name: &str| format!("{name}:443:127.0.0.1:{}", addr.port());
    let out = h
        .curl_raw(vec![
            "--noproxy".into(),
            "*".into(),
            "--connect-to".into(),
            via("other.example.com"),
            "--cacert".into(),
            h.upstream_ca.display().to_string(),
            "https://other.example.com/v1/transparent".into(),
        ])
        .await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(out.json()["path"], "/v1/transparent");
    // An intercepted name on the same path is still intercepted.
    let out = h
        .curl_raw(vec![
            "--noproxy".into(),
            "*".into(),
            "--connect-to".into(),
            via("api.example.com"),
            "--cacert".into(),
            h.tenant_ca.display().to_string(),
            "https://api.example.com/v1/items".into(),
        ])
        .await;
    assert_eq!(out.status, 200, "{}", out.body);
    let events = h.events().await;
    assert_eq!(events[0]["action"], "TUNNEL");
    assert_eq!(events[0]["request"]["sni"], "other.example.com");
    assert_eq!(events[1]["action"], "GET");
}

/// An approval desk that approves (or denies) everything it is asked, and records what
/// it was asked.
struct Desk(std::sync::Mutex<Vec<agentspace_gateway::HoldRequest>>, bool);

impl agentspace_gateway::ApprovalDesk for Desk {
    fn hold(
        &self,
        request: agentspace_gateway::HoldRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = agentspace_gateway::Held> + Send + '_>>
    {
        self.0.lock().unwrap().push(request);
        let approve = self.1;
        Box::pin(async move {
            if approve {
                agentspace_gateway::Held::Approved {
                    approval: "ap-1".into(),
                    approver: "bob".into(),
                }
            } else {
                agentspace_gateway::Held::Denied {
                    approval: "ap-1".into(),
                    reason: "denied by bob".into(),
                }
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_required_tunnel_waits_at_the_desk_like_a_request() {
    let definition = PINNING.replace(
        "      budget: {requests: 4}\n",
        "      approval: {when: 'context.port == 443'}\n",
    );
    for approve in [true, false] {
        let h = Harness::start_with(&definition).await;
        let desk = Arc::new(Desk(std::sync::Mutex::default(), approve));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let door = agentspace_gateway::Door::new(
            agentspace_gateway::DoorListener::Tcp(listener),
            agentspace_gateway::Task::new(principal("t2"), Arc::clone(&h.task.policy))
                .with_approvals(Arc::clone(&desk) as Arc<dyn agentspace_gateway::ApprovalDesk>),
        );
        tokio::spawn(Arc::clone(&h.gateway).serve(door));
        let answer = raw_connect(proxy, "other.example.com:443").await;
        let asked = desk.0.lock().unwrap().clone();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].action, "TUNNEL");
        assert_eq!(asked[0].resource, "tls://other.example.com:443");
        // The decision that waited at the desk; the tunnel closing before a
        // ClientHello (the test never sends one) may be audited after it.
        let events = h.events().await;
        let decision = events
            .iter()
            .find(|e| e["details"]["approval"].is_string())
            .unwrap_or_else(|| panic!("no decision names the approval: {events:?}"))
            .clone();
        assert_eq!(decision["details"]["approval"], "ap-1", "{decision}");
        assert_eq!(decision["action"], "TUNNEL", "{decision}");
        if approve {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert_eq!(decision["decision"], "allow");
        } else {
            assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
            assert_eq!(decision["decision"], "deny");
        }
    }
}
