//! Attacks on the boundary: server-side request forgery, host and SNI confusion,
//! ambiguous framing, and a flood of malformed requests the gateway must survive.

use std::sync::Arc;
use std::time::Duration;

use agentspace_gateway::DECISION_HEADER;
use pretty_assertions::assert_eq;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::helpers::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_to_loopback_and_cloud_metadata_is_refused_even_when_a_rule_allows_the_host() {
    let h = Harness::start().await;
    let port = h.upstream_tls.port();
    let loopback = format!("https://127.0.0.1:{port}/v1/items");
    let localhost = format!("https://localhost:{port}/");
    let plain_loopback = format!("http://127.0.0.1:{port}/");
    for url in [
        loopback.as_str(),
        localhost.as_str(),
        plain_loopback.as_str(),
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https://169.254.169.254/latest/meta-data/",
    ] {
        let out = h.curl(&[url]).await;
        assert_eq!(out.status, 403, "{url}: {}", out.body);
        assert_eq!(out.header(DECISION_HEADER).as_deref(), Some("deny"));
        let body = out.json();
        assert_eq!(body["code"], "ssrf", "{url}: {body}");
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .contains("internal addresses"),
            "{body}"
        );
    }
    let events = h.events().await;
    assert_eq!(events.len(), 5);
    assert!(
        events
            .iter()
            .all(|e| e["decision"] == "deny" && e["details"]["code"] == "ssrf")
    );
    assert_eq!(h.verified_events().await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_host_inside_a_tunnel_is_misdirected() {
    let h = Harness::start().await;
    let out = h
        .curl(&[
            "--http1.1",
            "-H",
            "Host: other.example.com",
            "https://api.example.com/v1/items",
        ])
        .await;
    assert_eq!(out.status, 421, "{}", out.body);
    assert_eq!(h.events().await.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_name_other_than_the_connect_host_is_refused_and_audited() {
    let h = Harness::start().await;
    let mut stream = TcpStream::connect(h.proxy).await.unwrap();
    stream
        .write_all(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&h.tenant_ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let result = connector
        .connect(ServerName::try_from("other.example.com").unwrap(), stream)
        .await;
    assert!(result.is_err(), "the handshake must not complete");
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["action"], "CONNECT");
    assert_eq!(events[0]["decision"], "deny");
    assert_eq!(events[0]["details"]["code"], "invalid-request");
}

/// Sends `payload` on a fresh connection and returns what came back (possibly nothing).
async fn send(h: &Harness, payload: Vec<u8>) -> String {
    let Ok(mut stream) = TcpStream::connect(h.proxy).await else {
        return String::new();
    };
    let _ = stream.write_all(&payload).await;
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_millis(250), stream.read(&mut buf))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn status_of(response: &str) -> Option<u16> {
    response.get(9..12)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_and_malformed_heads_get_http_errors() {
    let h = Harness::start().await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "content-length with transfer-encoding",
            b"POST http://plain.example.com/ HTTP/1.1\r\nHost: plain.example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "duplicate content-length",
            b"POST http://plain.example.com/ HTTP/1.1\r\nHost: plain.example.com\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            400,
        ),
        (
            "conflicting content-length",
            b"POST http://plain.example.com/ HTTP/1.1\r\nHost: plain.example.com\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        (
            "origin-form to a proxy",
            b"GET /v1/items HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_vec(),
            400,
        ),
        (
            "unknown scheme",
            b"GET ftp://plain.example.com/x HTTP/1.1\r\nHost: plain.example.com\r\n\r\n".to_vec(),
            400,
        ),
        (
            "connect without a port",
            b"CONNECT api.example.com HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_vec(),
            400,
        ),
        (
            "connect to an invalid host",
            b"CONNECT a..b:443 HTTP/1.1\r\nHost: a..b:443\r\n\r\n".to_vec(),
            400,
        ),
        (
            "oversized head",
            [
                b"GET http://plain.example.com/ HTTP/1.1\r\nX-Big: ".to_vec(),
                vec![b'a'; 100_000],
                b"\r\n\r\n".to_vec(),
            ]
            .concat(),
            431,
        ),
    ];
    for (name, payload, want) in cases {
        let response = send(&h, payload).await;
        assert_eq!(status_of(&response), Some(want), "{name}: {response}");
    }
    // None of these reached a decision.
    assert_eq!(h.events().await.len(), 0);
}

/// A small deterministic generator, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_malformed_requests_never_stop_the_gateway() {
    let h = Arc::new(Harness::start().await);
    let seeds: Vec<&[u8]> = vec![
        b"GET http://plain.example.com/hello HTTP/1.1\r\nHost: plain.example.com\r\n\r\n",
        b"POST http://plain.example.com/ HTTP/1.1\r\nHost: plain.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n",
        b"CONNECT api.example.com:443 HTTP/1.1\r\n\r\n\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
        b"CONNECT plain.example.com:80 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: plain.example.com\r\n\r\n",
        b"GET http://[::1 HTTP/1.1\r\n\r\n",
        b"GET http://plain.example.com/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked, identity\r\n\r\n",
        b"GET http://plain.example.com/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    let mut rng = XorShift(0x5eed_cafe_f00d_d00d);
    let mut payloads = Vec::new();
    for i in 0..3000 {
        let mut p = seeds[i % seeds.len()].to_vec();
        match rng.below(4) {
            0 => {
                // pure garbage
                p = (0..1 + rng.below(600)).map(|_| rng.next() as u8).collect();
            }
            1 => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(p.len());
                    p[at] = rng.next() as u8;
                }
            }
            2 => {
                let at = rng.below(p.len());
                p.truncate(at);
            }
            _ => {
                let at = rng.below(p.len());
                let junk: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                p.splice(at..at, junk);
            }
        }
        payloads.push(p);
    }
    let mut batch = Vec::new();
    for p in payloads {
        let h = Arc::clone(&h);
        batch.push(tokio::spawn(async move { send(&h, p).await }));
        if batch.len() == 128 {
            for t in batch.drain(..) {
                t.await.unwrap();
            }
        }
    }
    for t in batch {
        t.await.unwrap();
    }
    // Still serving, and every decision it made on the way is in a chain that verifies.
    let out = h.curl(&["https://api.example.com/v1/items"]).await;
    assert_eq!(out.status, 200, "{}", out.body);
    let events = h.events().await.len() as u64;
    assert!(events >= 1);
    assert_eq!(h.verified_events().await, events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_whose_certificate_does_not_verify_is_never_sent_the_request() {
    let h = Harness::start().await;
    // The stand-in answers for impostor.example.com with a certificate that does not
    // name it: the gateway's upstream client refuses it.
    let out = h.curl(&["https://impostor.example.com/v1/items"]).await;
    assert_eq!(out.status, 502, "{}", out.body);
    assert!(
        out.json()["error"].as_str().unwrap().contains("TLS"),
        "{}",
        out.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_audit_log_cannot_be_written_the_request_is_denied() {
    let h = Harness::start().await;
    // The tenant's signing key directory cannot be created: every append fails.
    let keys = h.dir.path().join("state/audit/keys");
    let _ = std::fs::remove_dir_all(&keys);
    std::fs::write(&keys, b"not a directory").unwrap();
    let out = h.curl(&["https://api.example.com/v1/items"]).await;
    assert_eq!(out.status, 403, "{}", out.body);
    assert_eq!(out.header(DECISION_HEADER).as_deref(), Some("deny"));
    let body = out.json();
    assert_eq!(body["code"], "audit", "{body}");
    assert!(body["audit_id"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_from_the_door_never_from_what_the_client_sends() {
    let h = Harness::start().await;
    let out = h
        .curl(&[
            "-H",
            "X-Agentspace-Task: t2",
            "-H",
            "X-Agentspace-User: mallory@evil.example",
            "--proxy-user",
            "t2:secret",
            "https://api.example.com/v1/items",
        ])
        .await;
    assert_eq!(out.status, 200, "{}", out.body);
    // The proxy credentials are not forwarded upstream.
    assert!(out.json()["headers"].get("proxy-authorization").is_none());
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["task"], "t1");
    assert_eq!(events[0]["user"], "alice@acme.example");
}

/// One A query for `name` to the resolver at `addr`; returns the reply's rcode and
/// answer count.
async fn dns_query(addr: std::net::SocketAddr, name: &str) -> (u8, u16) {
    let mut q = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&q, addr).await.unwrap();
    let mut reply = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut reply))
        .await
        .expect("the resolver did not answer")
        .unwrap();
    assert!(n >= 12);
    (reply[3] & 0x0f, u16::from_be_bytes([reply[6], reply[7]]))
}

/// The resolver fails closed too: when its decision cannot be recorded it answers
/// SERVFAIL, so no address (and no refusal) reaches the agent without an audit event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_audit_log_cannot_be_written_lookups_get_no_answer() {
    let h = Harness::start().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(Arc::clone(&h.gateway).serve_dns(socket, Arc::clone(&h.task)));
    // Working log: an allowed name gets its address, an unlisted one NXDOMAIN.
    assert_eq!(dns_query(addr, "api.example.com").await, (0, 1));
    assert_eq!(dns_query(addr, "unlisted.example.org").await, (3, 0));
    let before = h.events().await.len();
    assert_eq!(before, 2);

    // The signing keys become unreadable (kept aside, to be put back).
    let keys = h.dir.path().join("state/audit/keys");
    let aside = h.dir.path().join("keys-aside");
    std::fs::rename(&keys, &aside).unwrap();
    std::fs::write(&keys, b"not a directory").unwrap();
    // A new allowed name and a refused one: SERVFAIL (rcode 2), no address.
    assert_eq!(dns_query(addr, "plain.example.com").await, (2, 0));
    assert_eq!(dns_query(addr, "other.example.org").await, (2, 0));

    std::fs::remove_file(&keys).unwrap();
    std::fs::rename(&aside, &keys).unwrap();
    assert_eq!(
        h.events().await.len(),
        before,
        "nothing was recorded while failing"
    );
    // Once the log works again, the name is decided and answered normally.
    assert_eq!(dns_query(addr, "plain.example.com").await, (0, 1));
    assert_eq!(h.verified_events().await, 3);
}
