//! Allowed, denied and held requests end to end through the explicit proxy, over real
//! TLS interception, each decision audited before the request goes out.

use std::net::SocketAddr;
use std::sync::Arc;

use agentspace_gateway::{Arrival, DECISION_HEADER};
use pretty_assertions::assert_eq;
use tokio::net::TcpListener;

use super::helpers::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_https_request_reaches_the_named_host_over_http1_and_http2() {
    let h = Harness::start().await;
    for version in ["--http1.1", "--http2"] {
        let out = h
            .curl(&[version, "https://api.example.com/v1/items/42?color=red"])
            .await;
        assert_eq!(out.status, 200, "{version}: {}", out.body);
        let seen = out.json();
        assert_eq!(seen["method"], "GET");
        assert_eq!(seen["path"], "/v1/items/42");
        assert_eq!(seen["query"], "color=red");
        // The gateway speaks HTTP/2 to the upstream, whatever the agent speaks.
        assert_eq!(seen["version"], "HTTP/2.0");
        assert_eq!(seen["authority"], "api.example.com");
        // Proxy plumbing never reaches the upstream.
        assert!(seen["headers"].get("proxy-connection").is_none());
    }
    let events = h.events().await;
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(e["kind"], "http_request");
        assert_eq!(e["decision"], "allow");
        assert_eq!(e["task"], "t1");
        assert_eq!(e["user"], "alice@acme.example");
        assert_eq!(e["resource"], "https://api.example.com:443/v1/items/42");
        assert_eq!(e["details"]["capabilities"], serde_json::json!(["items"]));
        // The query is digested, not stored.
        assert!(
            e["request"]["query_digest"]
                .as_str()
                .unwrap()
                .starts_with("sha256:")
        );
    }
    assert_eq!(h.verified_events().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_through_the_proxy_is_decided_too() {
    let h = Harness::start().await;
    let out = h.curl(&["http://plain.example.com/hello"]).await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(out.json()["headers"]["host"], "plain.example.com");
    let out = h
        .curl(&["-X", "POST", "http://plain.example.com/hello"])
        .await;
    assert_eq!(out.status, 403, "{}", out.body);
    assert_eq!(out.header(DECISION_HEADER).as_deref(), Some("deny"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_path_method_and_host_get_the_documented_403() {
    let h = Harness::start().await;
    let cases = [
        vec!["https://api.example.com/v1/admin"],
        vec!["-X", "DELETE", "https://api.example.com/v1/items/1"],
        vec!["https://other.example.com/v1/items"],
    ];
    for args in &cases {
        let out = h.curl(args).await;
        assert_eq!(out.status, 403, "{args:?}: {}", out.body);
        assert_eq!(
            out.header(DECISION_HEADER).as_deref(),
            Some("deny"),
            "{args:?}"
        );
        assert_eq!(
            out.header("content-type").as_deref(),
            Some("application/json")
        );
        let body = out.json();
        assert_eq!(body["decision"], "deny", "{body}");
        assert_eq!(body["code"], "not-permitted", "{body}");
        assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()));
        assert!(body.get("policy").is_some(), "{body}");
        let id = body["audit_id"].as_str().unwrap();
        assert!(id.starts_with("acme:"), "{id}");
    }
    let events = h.events().await;
    assert_eq!(events.len(), 3);
    assert!(
        events
            .iter()
            .all(|e| e["decision"] == "deny" && e["reason"].is_string())
    );
    // The audit id names the event that recorded the decision.
    let out = h.curl(&["https://api.example.com/v1/nope"]).await;
    let seq: u64 = out.json()["audit_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("acme:")
        .parse()
        .unwrap();
    let events = h.events().await;
    let last = events.last().unwrap();
    assert_eq!(last["seq"], seq);
    assert_eq!(last["resource"], "https://api.example.com:443/v1/nope");
    assert_eq!(h.verified_events().await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_body_is_decided_and_still_reaches_the_upstream_whole() {
    let h = Harness::start().await;
    let small = r#"{"amount": 20, "currency": "eur"}"#;
    let out = h
        .curl(&[
            "-H",
            "content-type: application/json",
            "--data",
            small,
            "https://api.example.com/v1/charges",
        ])
        .await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(out.json()["body"], small);

    let big = r#"{"amount": 5000, "currency": "eur"}"#;
    let out = h
        .curl(&[
            "-H",
            "content-type: application/json",
            "--data",
            big,
            "https://api.example.com/v1/charges",
        ])
        .await;
    assert_eq!(out.status, 403, "{}", out.body);
    assert_eq!(
        out.header(DECISION_HEADER).as_deref(),
        Some("approval-required")
    );
    let body = out.json();
    assert_eq!(body["decision"], "approval-required");
    assert_eq!(body["reason"], "approval required");
    assert!(body["audit_id"].is_string());
    let events = h.events().await;
    assert_eq!(events.last().unwrap()["decision"], "approval_required");
    assert!(events.last().unwrap()["args_digest"].is_string());

    // A body larger than the inspection window is decided without its fields: a rule
    // with a body condition fails closed (held for approval) ...
    let large = format!(r#"{{"amount": 1, "pad": "{}"}}"#, "x".repeat(300_000));
    let file = h.dir.path().join("large.json");
    std::fs::write(&file, &large).unwrap();
    let data = format!("@{}", file.display());
    let post = |path: &'static str| {
        [
            "-H".to_owned(),
            "content-type: application/json".to_owned(),
            "--data-binary".to_owned(),
            data.clone(),
            format!("https://api.example.com{path}"),
        ]
    };
    let args = post("/v1/charges");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = h.curl(&args).await;
    assert_eq!(out.status, 403, "{}", out.body);
    assert_eq!(out.json()["decision"], "approval-required");
    // ... and one without streams through whole, never buffered beyond the window.
    let args = post("/v1/uploads");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = h.curl(&args).await;
    assert_eq!(out.status, 200, "{}", &out.body[..out.body.len().min(300)]);
    assert_eq!(out.json()["body"].as_str().unwrap().len(), large.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_connection_is_intercepted_and_decided_the_same_way() {
    let h = Harness::start().await;
    // A second listener standing for the transparent redirect: the original
    // destination is handed over out of band.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Arc::clone(&h.gateway);
    let task = Arc::clone(&h.task);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let original: SocketAddr = "203.0.113.7:443".parse().unwrap();
            tokio::spawn(Arc::clone(&gateway).serve_connection(
                stream,
                Arc::clone(&task),
                Arrival::Transparent { original },
            ));
        }
    });
    let connect_to = format!("api.example.com:443:127.0.0.1:{}", addr.port());
    let base = [
        "--noproxy".to_owned(),
        "*".to_owned(),
        "--connect-to".to_owned(),
        connect_to,
        "--cacert".to_owned(),
        h.tenant_ca.display().to_string(),
    ];
    let mut ok = base.to_vec();
    ok.push("https://api.example.com/v1/items".into());
    let out = h.curl_raw(ok).await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(out.json()["path"], "/v1/items");
    let mut denied = base.to_vec();
    denied.push("https://api.example.com/v1/secret".into());
    let out = h.curl_raw(denied).await;
    assert_eq!(out.status, 403, "{}", out.body);
    assert_eq!(out.json()["decision"], "deny");
    assert_eq!(h.verified_events().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_door_serves_its_task() {
    use agentspace_gateway::{Door, DoorListener, Task};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let h = Harness::start().await;
    let path = h.dir.path().join("door.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let door = Door::new(
        DoorListener::Unix(listener),
        Task::new(super::helpers::principal("t9"), Arc::clone(&h.task.policy)),
    );
    tokio::spawn(Arc::clone(&h.gateway).serve(door));
    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    stream
        .write_all(
            b"GET http://plain.example.com/via-unix HTTP/1.1\r\nHost: plain.example.com\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("/via-unix"), "{response}");
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["task"], "t9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_one_client_connection_share_an_upstream_connection_and_are_each_decided() {
    use std::sync::atomic::Ordering;

    let h = Harness::start().await;
    for version in ["--http1.1", "--http2"] {
        let before = h.upstream_connections.load(Ordering::SeqCst);
        let out = h
            .curl(&[
                version,
                "https://api.example.com/v1/items/1",
                "https://api.example.com/v1/items/2",
                "https://api.example.com/v1/admin",
                "https://api.example.com/v1/items/3",
            ])
            .await;
        // curl writes the last transfer's status; every request was decided on its own.
        assert_eq!(out.status, 200, "{version}: {}", out.body);
        assert_eq!(
            h.upstream_connections.load(Ordering::SeqCst) - before,
            1,
            "{version}: one upstream connection for the three allowed requests"
        );
    }
    let events = h.events().await;
    let decisions: Vec<&str> = events
        .iter()
        .map(|e| e["decision"].as_str().unwrap())
        .collect();
    assert_eq!(
        decisions,
        [
            "allow", "allow", "deny", "allow", "allow", "allow", "deny", "allow"
        ]
    );
    assert_eq!(h.verified_events().await, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_and_received_are_charged_until_the_budget_runs_out() {
    let h = Harness::start_with(
        r#"apiVersion: agentspace/v1
kind: Agent
metadata: {name: shopper, tenant: acme}
spec:
  egress:
    - name: items
      hosts: [api.example.com]
      methods: [GET]
  budgets: {bytes: 2k}
"#,
    )
    .await;
    let mut allowed = 0;
    let mut refused = None;
    for i in 0..60 {
        let out = h
            .curl(&[&format!("https://api.example.com/v1/items/{i}")])
            .await;
        if out.status == 200 {
            allowed += 1;
        } else {
            refused = Some(out);
            break;
        }
    }
    let out = refused.expect("the bytes budget must run out");
    assert_eq!(out.status, 403, "{}", out.body);
    assert_eq!(out.json()["code"], "budget", "{}", out.body);
    // Each echo is a few hundred bytes: the 2k budget allows a handful, not dozens.
    assert!((2..20).contains(&allowed), "{allowed} requests allowed");
    let usage = h.task.policy.task_usage(&h.task.principal).unwrap();
    assert!(usage.bytes >= 2000, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_to_an_allowed_host_carries_bytes_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let h = Harness::start().await;
    let mut stream = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    stream
        .write_all(
            b"GET http://plain.example.com/ws HTTP/1.1\r\nHost: plain.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    stream
        .write_all(b"hello through the boundary")
        .await
        .unwrap();
    let mut echoed = [0u8; 26];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"hello through the boundary");
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["decision"], "allow");
    assert_eq!(events[0]["resource"], "http://plain.example.com:80/ws");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_to_a_denied_path_is_refused_before_it_starts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let h = Harness::start().await;
    let mut stream = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    stream
        .write_all(
            b"POST http://plain.example.com/ws HTTP/1.1\r\nHost: plain.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    let response = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 403"), "{response}");
    assert!(
        response.contains("x-agentspace-decision: deny"),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_tokens_reported_by_json_and_streamed_responses_spend_the_token_budget() {
    let h = Harness::start_with(
        r#"apiVersion: agentspace/v1
kind: Agent
metadata: {name: shopper, tenant: acme}
spec:
  egress:
    - name: llm
      hosts: [api.example.com]
      paths: ["/v1/llm/*"]
  budgets: {tokens: 100}
"#,
    )
    .await;
    let out = h.curl(&["https://api.example.com/v1/llm/json"]).await;
    assert_eq!(out.status, 200, "{}", out.body);
    let out = h.curl(&["https://api.example.com/v1/llm/sse"]).await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(
        out.body.contains("message_delta"),
        "the stream reaches the agent"
    );
    // Usage is charged when each response ends; wait until both are recorded.
    let mut tokens = 0;
    for _ in 0..200 {
        tokens = h.task.policy.task_usage(&h.task.principal).unwrap().tokens;
        if tokens >= 120 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(tokens, 120);
    let out = h.curl(&["https://api.example.com/v1/llm/json"]).await;
    assert_eq!(out.status, 403, "{}", out.body);
    assert_eq!(out.json()["code"], "budget", "{}", out.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_durable_in_the_audit_log_before_the_upstream_sees_the_request() {
    let h = Harness::start().await;
    for (i, url) in [
        "https://api.example.com/v1/items/1",
        "https://api.example.com/v1/denied",
        "https://api.example.com/v1/items/2",
        "http://plain.example.com/x",
    ]
    .iter()
    .enumerate()
    {
        let out = h.curl(&[url]).await;
        assert!(out.status == 200 || out.status == 403, "{i}: {}", out.body);
    }
    let seen = h.upstream_seen.lock().unwrap().clone();
    // Three requests reached an upstream; when each arrived, its own decision (and every
    // earlier one, the denied one included) was already in the verified chain.
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[0].ends_with(" audited=1"), "{seen:?}");
    assert!(seen[1].ends_with(" audited=3"), "{seen:?}");
    assert!(seen[2].ends_with(" audited=4"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_task_closes_its_door_and_every_open_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let h = Harness::start().await;
    // A kept-alive plain connection and an open CONNECT tunnel.
    let mut plain = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    plain
        .write_all(b"GET http://plain.example.com/a HTTP/1.1\r\nHost: plain.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = plain.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut tunnel = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    tunnel
        .write_all(b"CONNECT plain.example.com:80 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let n = tunnel.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    h.task.close();
    // Both are closed by the gateway (read returns end of stream or a reset).
    for stream in [&mut plain, &mut tunnel] {
        let n = stream.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
    }
    // And the door accepts no more requests.
    let out = h.curl(&["http://plain.example.com/b"]).await;
    assert_ne!(out.status, 200, "{}", out.body);
}
