//! Server-sent events.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use super::approvals::context;
use super::harness::{Backend, TestServer, definition};

/// Opens an event stream and returns a line reader positioned after the headers.
pub fn open_stream(server: &TestServer, token: &str, query: &str) -> BufReader<TcpStream> {
    open_stream_with(server, token, query, "")
}

/// Like [`open_stream`], with extra header lines.
pub fn open_stream_with(
    server: &TestServer,
    token: &str,
    query: &str,
    extra: &str,
) -> BufReader<TcpStream> {
    let addr = server.url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    // The answer's head may take a while (a busy machine, a first database connection);
    // the events after it are read in short slices.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /v1/events{query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n{extra}\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.contains(" 200 "), "{status}");
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    r.get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    r
}

/// Reads `data:` lines for `for_at_most`, until `enough` of them arrived.
pub fn read_data(
    r: &mut BufReader<TcpStream>,
    enough: usize,
    for_at_most: Duration,
) -> Vec<serde_json::Value> {
    let end = Instant::now() + for_at_most;
    let mut out = Vec::new();
    while Instant::now() < end && out.len() < enough {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {
                // Chunked framing: chunk-size lines and blank lines are skipped.
                if let Some(data) = line.trim_end().strip_prefix("data: ") {
                    out.push(serde_json::from_str(data).unwrap());
                }
            }
            Err(_) => continue,
        }
    }
    out
}

fn events_stream_as_they_are_appended_filtered_by_task(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let token = admin.post("/v1/users/alice/tokens", json!({})).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Everything from now on, and only the held task's events.
    let mut all = open_stream(&server, &token, "");
    let mut task = open_stream(&server, &token, "?task=01jabcdefghjkmnpqrstvwxyz0");

    admin.post(
        "/v1/definitions",
        json!({"definition": definition("acme", "w", "64Mi")}),
    );
    let id = server
        .approvals
        .request(context("acme", "bob", false, 60))
        .unwrap();

    let got = read_data(&mut all, 2, Duration::from_secs(10));
    let kinds: Vec<&str> = got
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["definition_change", "approval_requested"]);
    let got = read_data(&mut task, 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["event"]["details"]["approval"], id.as_str());

    // Resuming after a sequence number replays from there, by query or Last-Event-ID.
    let seq = got[0]["event"]["seq"].as_u64().unwrap();
    let mut again = open_stream(&server, &token, &format!("?after={}", seq - 1));
    let got = read_data(&mut again, 1, Duration::from_secs(10));
    assert_eq!(got[0]["event"]["seq"], seq);
    let mut resumed = open_stream_with(
        &server,
        &token,
        "",
        &format!("Last-Event-ID: {}\r\n", seq - 1),
    );
    let got = read_data(&mut resumed, 1, Duration::from_secs(10));
    assert_eq!(got[0]["event"]["seq"], seq);

    // The agent filter: only that agent's events, from the start.
    let mut by_agent = open_stream(&server, &token, "?agent=credit-officer&after=0");
    let got = read_data(&mut by_agent, 10, Duration::from_secs(2));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["event"]["agent"], "credit-officer");
}

on_both!(events_stream_as_they_are_appended_filtered_by_task,);
