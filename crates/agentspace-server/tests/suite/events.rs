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
    open_stream_at(
        server,
        &format!("/v1/events{query}"),
        &format!("Authorization: Bearer {token}\r\n{extra}"),
    )
}

/// Opens the event stream at `path` with the header lines `headers` (each ending in
/// CRLF); the answer must be 200.
pub fn open_stream_at(server: &TestServer, path: &str, headers: &str) -> BufReader<TcpStream> {
    let addr = server.url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    // The answer's head may take a while (a busy machine, a first database connection);
    // the events after it are read in short slices.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{headers}\r\n"
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

/// Reads raw lines until the stream ends or `for_at_most` passes; `true` when it ended.
pub fn read_until_end(
    r: &mut BufReader<TcpStream>,
    lines: &mut Vec<String>,
    for_at_most: Duration,
) -> bool {
    let end = Instant::now() + for_at_most;
    while Instant::now() < end {
        let mut line = String::new();
        match r.read_line(&mut line) {
            // The terminating chunk of a chunked body, or the connection closing.
            Ok(0) => return true,
            Ok(_) if line == "0\r\n" => return true,
            Ok(_) => lines.push(line),
            Err(_) => continue,
        }
    }
    false
}

/// A stream is no way around revocation: once its token is revoked it says so and ends
/// within seconds. And one caller cannot hold more than a few streams.
fn a_stream_ends_when_its_token_is_revoked_and_a_caller_holds_only_a_few(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let made = admin
        .post("/v1/users/alice/tokens", json!({"label": "watcher"}))
        .json();
    let (token, token_id) = (
        made["token"].as_str().unwrap().to_owned(),
        made["id"].as_str().unwrap().to_owned(),
    );
    let mut streams: Vec<_> = (0..8).map(|_| open_stream(&server, &token, "")).collect();
    // The ninth stream of the same token is refused with 429.
    let addr = server.url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut status = String::new();
    BufReader::new(s).read_line(&mut status).unwrap();
    assert!(status.contains(" 429 "), "{status}");
    // Another token of the same user is another caller.
    let other = admin.post("/v1/users/alice/tokens", json!({})).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let _other = open_stream(&server, &other, "");

    assert_eq!(admin.delete(&format!("/v1/tokens/{token_id}")).status, 204);
    let mut lines = Vec::new();
    let ended = read_until_end(&mut streams[0], &mut lines, Duration::from_secs(20));
    assert!(ended, "the stream went on after revocation: {lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("event: error")),
        "{lines:?}"
    );
    // Its places are given back: a live token may open streams again.
    drop(streams);
    let _again = open_stream(&server, &other, "");
}

on_both!(a_stream_ends_when_its_token_is_revoked_and_a_caller_holds_only_a_few,);

/// An approver follows decisions live and may resume after a reconnect, but the stream
/// is no way to read the tenant's history, which takes the admin or auditor role: a
/// start further back than the resume window is refused with the fix, by `after` and by
/// `Last-Event-ID` alike, while an auditor replays from the first event.
#[test]
fn an_approver_resumes_the_stream_but_cannot_replay_the_history() {
    let server = TestServer::start(Backend::Sqlite);
    let admin = server.bootstrap("acme", "alice");
    let token_of = |name: &str, role: &str| {
        let r = admin.post("/v1/users", json!({"name": name, "roles": [role]}));
        assert_eq!(r.status, 201, "{}", r.error_message());
        admin
            .post(&format!("/v1/users/{name}/tokens"), json!({}))
            .json()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let approver = token_of("bob", "approver");
    let auditor = token_of("carol", "auditor");
    // History: more events than the window.
    let audit = server.place().audit();
    let tenant = agentspace_core::Name::new("acme").unwrap();
    let events = (0..10_100)
        .map(|i| {
            let mut e = agentspace_core::AuditEvent::new(
                &tenant,
                agentspace_core::AuditKind::HttpRequest,
                "GET",
            );
            e.resource = Some(format!("https://api.example.com/{i}"));
            e
        })
        .collect();
    audit.append_batch(events).unwrap();
    let end = audit.chain_len("acme").unwrap();

    let client = agentspace_server::client::Client::new(&server.url, Some(&approver)).unwrap();
    for (path, headers) in [
        ("/v1/events?after=0", &[][..]),
        ("/v1/events", &[("Last-Event-ID", "0")][..]),
    ] {
        let r = client.send("GET", path, headers, b"").unwrap();
        assert_eq!(r.status, 403, "{path} {headers:?}: {}", r.error_message());
        assert!(
            r.error_message().contains("admin or auditor"),
            "{}",
            r.error_message()
        );
    }
    // Resuming a few events back is what reconnecting clients do: allowed.
    let mut resumed = open_stream(&server, &approver, &format!("?after={}", end - 3));
    let got = read_data(&mut resumed, 2, Duration::from_secs(10));
    let seqs: Vec<u64> = got
        .iter()
        .map(|e| e["event"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [end - 2, end - 1]);
    // An auditor reads the whole history.
    let mut history = open_stream(&server, &auditor, "?after=0");
    let got = read_data(&mut history, 1, Duration::from_secs(10));
    assert_eq!(got[0]["event"]["seq"], 1);
}
