//! The small client over TLS, against a local server with a test CA.

use std::io::{Read, Write};
use std::sync::Arc;

use agentspace_server::client::Client;
use serde_json::json;

/// A one-shot HTTPS server for `localhost` on loopback; returns its port and the
/// certificate (DER) to trust.
fn https_once(answer: &'static [u8]) -> (u16, Vec<u8>, std::thread::JoinHandle<Vec<u8>>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = ck.cert.der().to_vec();
    let key = ck.signing_key.serialize_der();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.clone().into()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Arc::new(config);
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the head and a small body (the test's request fits in one record or two).
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tls.write_all(answer);
        tls.conn.send_close_notify();
        let _ = tls.flush();
        got
    });
    (port, cert, server)
}

#[test]
fn https_works_with_a_trusted_ca_and_fails_without() {
    let (port, cert, server) =
        https_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    let client = Client::new(&format!("https://localhost:{port}/hook"), None)
        .unwrap()
        .with_root_certificate(cert);
    let r = client.post("", &json!({"text": "hi"})).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    let request = String::from_utf8(server.join().unwrap()).unwrap();
    assert!(request.starts_with("POST /hook HTTP/1.1\r\n"), "{request}");

    // An untrusted certificate is refused.
    let (port, _, server) = https_once(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let client = Client::new(&format!("https://localhost:{port}/hook"), None).unwrap();
    let err = client.post("", &json!({})).unwrap_err();
    assert!(err.to_string().contains("cannot talk to"), "{err}");
    let _ = server.join();
}
