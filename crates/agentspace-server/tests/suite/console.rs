//! The console over HTTP: login, session cookie and CSRF checks, tenant isolation, the
//! live pages' script policy and escaping, the session-authenticated event stream and
//! starting tasks. (The browser test, with real cells, is in the CLI's suite:
//! `suite::console`.)

use agentspace_core::{AuditDecision, AuditEvent, AuditKind, Name};
use agentspace_server::client::{Client, Response};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

use super::approvals::context;
use super::events::open_stream_at;
use super::harness::{Api, Backend, Options, Place, TestServer, write_task};

fn browser(server: &TestServer) -> Client {
    Client::new(&server.url, None).unwrap()
}

fn get(c: &Client, path: &str, cookie: &str) -> Response {
    c.send("GET", path, &[("Cookie", cookie)], b"").unwrap()
}

fn post_form(c: &Client, path: &str, cookie: &str, form: &str) -> Response {
    c.send(
        "POST",
        path,
        &[
            ("Cookie", cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        form.as_bytes(),
    )
    .unwrap()
}

/// `name=value` of the Set-Cookie for `name`, with its attributes.
fn set_cookie<'r>(r: &'r Response, name: &str) -> &'r str {
    r.header_values("set-cookie")
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no cookie {name}: {:?}", r.headers))
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

fn csrf_in(body: &[u8]) -> String {
    let html = String::from_utf8_lossy(body);
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    html[at..at + 64].to_owned()
}

fn login_makes_a_strict_session_and_forms_need_its_csrf_token(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let token = admin
        .post("/v1/users/alice/tokens", json!({"label": "console"}))
        .json();
    let (token, token_id) = (
        token["token"].as_str().unwrap().to_owned(),
        token["id"].as_str().unwrap().to_owned(),
    );
    let mut ctx = context("acme", "bob", false, 600);
    ctx.resource = "https://x.example/<script>alert(1)</script>".into();
    let id = server.approvals.request(ctx).unwrap();
    let b = browser(&server);

    // Not signed in: to the login page.
    let r = get(&b, "/console/", "");
    assert_eq!(r.status, 303);
    assert_eq!(r.header_values("location"), ["/console/login"]);

    // The login page: a double-submit CSRF cookie, no script allowed.
    let page = get(&b, "/console/login", "");
    assert_eq!(page.status, 200);
    let login_cookie = set_cookie(&page, "agentspace_login");
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));
    let csp = page.header_values("content-security-policy")[0];
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    let csrf = csrf_in(&page.body);
    let login_pair = cookie_pair(login_cookie);
    assert_eq!(login_pair, format!("agentspace_login={csrf}"));

    // A forged form (no matching cookie) and a bad token are refused.
    let r = post_form(
        &b,
        "/console/login",
        "",
        &format!("csrf={csrf}&token={token}"),
    );
    assert_eq!(r.status, 403);
    let r = post_form(
        &b,
        "/console/login",
        &login_pair,
        &format!("csrf={csrf}&token=ast_nope"),
    );
    assert_eq!(r.status, 401);

    let r = post_form(
        &b,
        "/console/login",
        &login_pair,
        &format!("csrf={csrf}&token={token}"),
    );
    assert_eq!(r.status, 303);
    assert_eq!(r.header_values("location"), ["/console/"]);
    let session = set_cookie(&r, "agentspace_session");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(session.contains(attr), "{session}");
    }
    // Plain HTTP by default (loopback): `Secure` would make the browser drop it.
    assert!(!session.contains("Secure"), "{session}");
    let session = cookie_pair(session);
    // The database keeps only a hash of the session id.
    let db = server.place().stored_bytes();
    let raw = session.split('=').nth(1).unwrap();
    assert!(!db.windows(raw.len()).any(|w| w == raw.as_bytes()));

    // The console: who, and the queue, with user input escaped.
    let home = get(&b, "/console/", &session);
    assert_eq!(home.status, 200);
    let html = String::from_utf8_lossy(&home.body).into_owned();
    assert!(
        html.contains("<b>alice</b> of tenant <b>acme</b>"),
        "{html}"
    );
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains("<script>"));
    let csrf = csrf_in(&home.body);

    // A decision without the session's CSRF token is refused and changes nothing.
    let r = post_form(
        &b,
        &format!("/console/approvals/{id}/approve"),
        &session,
        &format!("csrf={}", "0".repeat(64)),
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        admin.get(&format!("/v1/approvals/{id}")).json()["state"],
        "pending"
    );
    let r = post_form(
        &b,
        &format!("/console/approvals/{id}/approve"),
        &session,
        &format!("csrf={csrf}&comment=looks+fine"),
    );
    assert_eq!(r.status, 303);
    let a = admin.get(&format!("/v1/approvals/{id}")).json();
    assert_eq!(
        (
            a["state"].as_str(),
            a["approver"].as_str(),
            a["comment"].as_str()
        ),
        (Some("approved"), Some("alice"), Some("looks fine"))
    );

    // Signing out ends the session.
    let r = post_form(&b, "/console/logout", &session, &format!("csrf={csrf}"));
    assert_eq!(r.status, 303);
    assert_eq!(get(&b, "/console/", &session).status, 303);

    // Revoking the token a session came from ends the session too.
    let page = get(&b, "/console/login", "");
    let csrf = csrf_in(&page.body);
    let pair = cookie_pair(set_cookie(&page, "agentspace_login"));
    let r = post_form(
        &b,
        "/console/login",
        &pair,
        &format!("csrf={csrf}&token={token}"),
    );
    let session = cookie_pair(set_cookie(&r, "agentspace_session"));
    assert_eq!(get(&b, "/console/", &session).status, 200);
    assert_eq!(admin.delete(&format!("/v1/tokens/{token_id}")).status, 204);
    assert_eq!(get(&b, "/console/", &session).status, 303);
}

/// Signs `token` in through the login form; returns the session cookie pair and the
/// console page's CSRF token.
fn sign_in(server: &TestServer, token: &str) -> (String, String) {
    let b = browser(server);
    let page = get(&b, "/console/login", "");
    let csrf = csrf_in(&page.body);
    let pair = cookie_pair(set_cookie(&page, "agentspace_login"));
    let r = post_form(
        &b,
        "/console/login",
        &pair,
        &format!("csrf={csrf}&token={token}"),
    );
    assert_eq!(r.status, 303);
    let session = cookie_pair(set_cookie(&r, "agentspace_session"));
    let home = get(&b, "/console/", &session);
    (session, csrf_in(&home.body))
}

/// Behind a TLS-terminating proxy the operator sets `--secure-cookies`: every cookie the
/// console sets, the sign-in form's, the session's and the sign-out's, is `Secure`, so a
/// browser never sends the session over plain HTTP.
#[test]
fn with_secure_cookies_every_console_cookie_is_https_only() {
    let server = TestServer::start_in(
        Place::new(Backend::Sqlite),
        Options {
            secure_cookies: true,
            ..Options::default()
        },
    );
    let admin = server.bootstrap("acme", "alice");
    let token = admin.post("/v1/users/alice/tokens", json!({})).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = browser(&server);
    let page = get(&b, "/console/login", "");
    let login = set_cookie(&page, "agentspace_login");
    assert!(login.ends_with("; Secure"), "{login}");
    let r = post_form(
        &b,
        "/console/login",
        &cookie_pair(login),
        &format!("csrf={}&token={token}", csrf_in(&page.body)),
    );
    assert_eq!(r.status, 303);
    for name in ["agentspace_session", "agentspace_login"] {
        let c = set_cookie(&r, name);
        assert!(c.contains("HttpOnly") && c.ends_with("; Secure"), "{c}");
    }
    let session = cookie_pair(set_cookie(&r, "agentspace_session"));
    let home = get(&b, "/console/", &session);
    let out = post_form(
        &b,
        "/console/logout",
        &session,
        &format!("csrf={}", csrf_in(&home.body)),
    );
    let cleared = set_cookie(&out, "agentspace_session");
    assert!(
        cleared.contains("Max-Age=0") && cleared.ends_with("; Secure"),
        "{cleared}"
    );
}

fn a_console_session_sees_and_decides_only_its_own_tenant(backend: Backend) {
    let server = TestServer::start(backend);
    let acme = server.bootstrap("acme", "alice");
    let id = server
        .approvals
        .request(context("acme", "bob", false, 600))
        .unwrap();
    let beta = server.bootstrap("beta", "bea");
    let token = beta.post("/v1/users/bea/tokens", json!({})).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (session, csrf) = sign_in(&server, &token);
    let b = browser(&server);
    let home = String::from_utf8(get(&b, "/console/", &session).body).unwrap();
    assert!(home.contains("Nothing is waiting."), "{home}");
    assert!(!home.contains(&id) && !home.contains("payments.example.com"));
    let r = post_form(
        &b,
        &format!("/console/approvals/{id}/approve"),
        &session,
        &format!("csrf={csrf}"),
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        acme.get(&format!("/v1/approvals/{id}")).json()["state"],
        "pending"
    );
    // Another session's CSRF token is no good either.
    let alice = acme.post("/v1/users/alice/tokens", json!({})).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (alice_session, _) = sign_in(&server, &alice);
    let r = post_form(
        &b,
        &format!("/console/approvals/{id}/approve"),
        &alice_session,
        &format!("csrf={csrf}"),
    );
    assert_eq!(r.status, 403);
}

fn the_audit_page_searches_the_tenants_log_and_shows_the_verify_status(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let dev = admin.user(&server, "dave", &["developer"]);
    let def = super::harness::definition("acme", "writer", "64Mi");
    assert_eq!(
        dev.post("/v1/definitions", json!({"definition": def}))
            .status,
        201
    );
    let mut ctx = context("acme", "bob", false, 600);
    ctx.resource = "https://x.example/<b>bold</b>".into();
    server.approvals.request(ctx).unwrap();
    let token = admin.post("/v1/users/alice/tokens", json!({})).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (session, _) = sign_in(&server, &token);
    let b = browser(&server);

    let page = get(&b, "/console/audit", &session);
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("The chain verifies: "), "{html}");
    assert!(html.contains("definition_change") && html.contains("approval_requested"));
    assert!(html.contains("&lt;b&gt;bold&lt;/b&gt;") && !html.contains("<b>bold</b>"));

    let page = get(
        &b,
        "/console/audit?kind=definition_change&task=&user=dave",
        &session,
    );
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("1 events, newest first."), "{html}");
    assert!(!html.contains("approval_requested"));
    let page = get(&b, "/console/audit?kind=nonsense", &session);
    assert_eq!(page.status, 400);

    // A developer may not search the audit log.
    let dev_token = admin.post("/v1/users/dave/tokens", json!({})).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (dev_session, _) = sign_in(&server, &dev_token);
    assert_eq!(get(&b, "/console/audit", &dev_session).status, 403);
}

fn definitions_show_their_text_and_generated_policies_never_host_files(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let secret = server.state().join("host-secret.cedar");
    std::fs::write(&secret, "TOP-SECRET host content").unwrap();
    let def = format!(
        "{}  egress:\n    - name: scoring\n      hosts: [scoring.example.com]\n  policies: [{}]\n",
        super::harness::definition("acme", "writer", "64Mi"),
        secret.display()
    );
    let r = admin.post("/v1/definitions", json!({"definition": def}));
    assert_eq!(r.status, 201, "{}", r.error_message());
    let token = admin.post("/v1/users/alice/tokens", json!({})).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (session, _) = sign_in(&server, &token);
    let b = browser(&server);
    let list = String::from_utf8(get(&b, "/console/definitions", &session).body).unwrap();
    assert!(
        list.contains("<a href=\"/console/definitions/writer\">writer</a>"),
        "{list}"
    );
    let page = get(&b, "/console/definitions/writer", &session);
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("scoring.example.com"), "{html}");
    assert!(html.contains("permit"), "{html}");
    assert!(!html.contains("TOP-SECRET"), "{html}");
    assert_eq!(get(&b, "/console/definitions/nope", &session).status, 404);
}

on_both!(
    login_makes_a_strict_session_and_forms_need_its_csrf_token,
    a_console_session_sees_and_decides_only_its_own_tenant,
    the_audit_page_searches_the_tenants_log_and_shows_the_verify_status,
    definitions_show_their_text_and_generated_policies_never_host_files,
);

/// A fresh token of `user` (made by `admin`) signed in; returns the session cookie pair
/// and its CSRF token.
fn session_of(server: &TestServer, admin: &Api, user: &str) -> (String, String) {
    let token = admin
        .post(&format!("/v1/users/{user}/tokens"), json!({}))
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    sign_in(server, &token)
}

/// A task of `agent` that `agentspace run` would show as running, with the manifest
/// naming `digest` as its definition's.
fn running_task(
    server: &TestServer,
    tenant: &str,
    agent: &str,
    user: &str,
    digest: &str,
) -> String {
    let id = write_task(server.state(), tenant, agent, user);
    let path = server.state().join("tasks").join(&id).join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["state"] = json!("running");
    m["exit_code"] = Value::Null;
    m["definition_digest"] = json!(digest);
    std::fs::write(&path, m.to_string()).unwrap();
    id
}

/// Appends `event` to the tenant's chain as the gateway would.
fn append(server: &TestServer, event: AuditEvent) {
    server.place().audit().append(event).unwrap();
}

fn gateway_event(tenant: &str, task: &str, kind: AuditKind, resource: &str) -> AuditEvent {
    let mut e = AuditEvent::new(&Name::new(tenant).unwrap(), kind, "tools/call");
    e.task = Some(task.to_owned());
    e.user = Some("bob".into());
    e.agent = Some("officer".into());
    e.resource = Some(resource.to_owned());
    e
}

const OFFICER: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: officer, tenant: acme}
spec:
  resources: {memory: 64Mi}
  egress:
    - name: scoring-api
      hosts: [scoring.example.com]
      methods: [POST]
  tools:
    - server: customer-db
      url: http://customer-db.internal.example/mcp
      allow: [lookup_customer]
      labels: [pii]
    - server: hr
      url: http://hr.internal.example/mcp
      allow: []
  flows:
    - label: pii
      mayFlowTo: [scoring-api]
";

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn live_pages_run_only_the_consoles_own_script(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let (session, _) = session_of(&server, &admin, "alice");
    let b = browser(&server);
    let task = write_task(server.state(), "acme", "officer", "alice");

    for path in ["/console/".to_owned(), format!("/console/tasks/{task}")] {
        let r = get(&b, &path, &session);
        assert_eq!(r.status, 200, "{path}");
        let csp = r.header_values("content-security-policy")[0].to_owned();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
            "trusted-types 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        let html = text(&r);
        // One script element, the console's own, with nothing inline.
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert!(
            html.contains("<script src=\"/console/console.js\" defer></script>"),
            "{html}"
        );
    }
    // Pages that need no script allow none.
    for path in ["/console/audit", "/console/definitions"] {
        let r = get(&b, path, &session);
        let csp = r.header_values("content-security-policy")[0];
        assert!(!csp.contains("script-src"), "{path}: {csp}");
        assert!(!text(&r).contains("<script"), "{path}");
    }

    // The script and stylesheet come from the binary, typed, not sniffable.
    let js = get(&b, "/console/console.js", "");
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header_values("content-type"),
        ["text/javascript; charset=utf-8"]
    );
    assert_eq!(js.header_values("x-content-type-options"), ["nosniff"]);
    let source = text(&js);
    assert!(source.contains("new EventSource('/console/events?"));
    // It builds the page with DOM calls only: no HTML parsing from strings, no eval.
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "DOMParser",
        "createContextualFragment",
    ] {
        assert!(!source.contains(sink), "console.js uses `{sink}`");
    }
    let css = get(&b, "/console/console.css", "");
    assert_eq!(
        css.header_values("content-type"),
        ["text/css; charset=utf-8"]
    );
}

fn html_in_audit_data_shows_as_text_on_the_canvas_the_stream_and_the_task_page(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let r = admin.post("/v1/definitions", json!({"definition": OFFICER}));
    assert_eq!(r.status, 201, "{}", r.error_message());
    let digest = r.json()["digest"].as_str().unwrap().to_owned();
    let task = running_task(&server, "acme", "officer", "bob", &digest);

    // What an agent can choose: the tool it calls, the host it asks for, and (through
    // a tool server's labels) what its session is tainted with.
    let hostile_tool = "mcp://?/<img src=x onerror=alert(1)>";
    let mut denied = gateway_event("acme", &task, AuditKind::McpCall, hostile_tool);
    denied.decision = Some(AuditDecision::Deny);
    denied.reason = Some("`<img src=x onerror=alert(1)>` is not a tool this agent may use".into());
    denied.details.insert("code".into(), json!("not-permitted"));
    append(&server, denied);
    let mut host = gateway_event(
        "acme",
        &task,
        AuditKind::HttpRequest,
        "https://evil.example/<script>alert(2)</script>",
    );
    host.action = "GET".into();
    host.decision = Some(AuditDecision::Deny);
    host.details.insert("code".into(), json!("not-permitted"));
    append(&server, host);
    let mut result = gateway_event(
        "acme",
        &task,
        AuditKind::McpCall,
        "mcp://customer-db/lookup_customer",
    );
    result.action = "tools/result".into();
    result
        .details
        .insert("taint".into(), json!(["pii", "<b>label</b>"]));
    append(&server, result);

    let (session, _) = session_of(&server, &admin, "alice");
    let b = browser(&server);
    for path in ["/console/".to_owned(), format!("/console/tasks/{task}")] {
        let html = text(&get(&b, &path, &session));
        // The card: identity, boundary from the definition, denials and taint from the log.
        assert!(
            html.contains(&format!("officer:{task}")) && html.contains("for <b>bob</b>"),
            "{path}: {html}"
        );
        assert!(
            html.contains("<b>customer-db</b> <span class=\"kind\">tools</span> lookup_customer · results carry pii"),
            "{path}: {html}"
        );
        assert!(
            html.contains(
                "<b>scoring-api</b> <span class=\"kind\">egress</span> scoring.example.com · POST"
            ),
            "{path}: {html}"
        );
        assert!(
            html.contains("<b>hr</b> <span class=\"kind\">tools</span> no tool allowed"),
            "{path}: {html}"
        );
        assert!(
            html.contains(
                "<b>evil.example</b> <span class=\"kind\">host</span> denied: not-permitted"
            ),
            "{path}: {html}"
        );
        // Escaped wherever it appears: card, stream row, reason.
        assert!(
            html.contains("mcp://?/&lt;img src=x onerror=alert(1)&gt;"),
            "{path}: {html}"
        );
        assert!(
            html.contains("&lt;script&gt;alert(2)&lt;/script&gt;"),
            "{path}: {html}"
        );
        assert!(
            html.contains("<span class=\"label\">&lt;b&gt;label&lt;/b&gt;</span>"),
            "{path}: {html}"
        );
        for raw in ["<img", "<script>", "<b>label</b>"] {
            assert!(!html.contains(raw), "{path} carries `{raw}` unescaped");
        }
    }
    // The live data is JSON, never HTML.
    let r = get(&b, "/console/state", &session);
    assert_eq!(r.status, 200);
    assert_eq!(r.header_values("content-type"), ["application/json"]);
    assert_eq!(r.header_values("x-content-type-options"), ["nosniff"]);
    let state = r.json();
    let card = &state["cells"][0];
    assert_eq!(card["task"], task.as_str());
    assert_eq!(card["taint"], json!(["<b>label</b>", "pii"]));
    assert!(
        card["blocked"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == hostile_tool),
        "{card}"
    );
    assert!(
        card["budget"][0]
            .as_str()
            .unwrap()
            .starts_with("requests 0"),
        "{card}"
    );
}

fn the_console_stream_needs_a_session_and_a_role_and_shows_only_the_tenant(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    admin.user(&server, "bob", &["approver"]);
    admin.user(&server, "dave", &["developer"]);
    let beta = server.bootstrap("beta", "bea");
    let anonymous = browser(&server);

    // No session, a made-up one, or a bearer token: refused.
    for cookie in ["", &format!("agentspace_session={}", "a".repeat(64))] {
        let r = get(&anonymous, "/console/events", cookie);
        assert_eq!(r.status, 401, "{cookie}");
        assert!(!text(&r).contains("data:"));
    }
    let token = admin.post("/v1/users/alice/tokens", json!({})).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = anonymous
        .send(
            "GET",
            "/console/events",
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 401);
    for path in ["/console/state", "/console/tasks/x/log"] {
        assert_eq!(get(&anonymous, path, "").status, 401, "{path}");
    }
    // A developer may not follow the tenant's decisions.
    let (dave, _) = session_of(&server, &admin, "dave");
    assert_eq!(get(&anonymous, "/console/events", &dave).status, 403);

    // An approver follows them, from where the page left off, unnamed events with
    // their sequence numbers as ids; nothing of another tenant.
    let (bob, _) = session_of(&server, &admin, "bob");
    let after = server.audit_events("acme").last().unwrap().seq;
    let mut stream = open_stream_at(
        &server,
        &format!("/console/events?after={after}"),
        &format!("Cookie: {bob}\r\n"),
    );
    beta.post(
        "/v1/definitions",
        json!({"definition": super::harness::definition("beta", "secretive", "64Mi")}),
    );
    let id = server
        .approvals
        .request(context("acme", "carol", true, 600))
        .unwrap();
    let mut lines = Vec::new();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < end && !lines.iter().any(|l: &String| l.contains(&id)) {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stream, &mut line).is_ok() && !line.is_empty() {
            lines.push(line);
        }
    }
    let data: Vec<Value> = lines
        .iter()
        .filter_map(|l| l.trim_end().strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(data.len(), 1, "{lines:?}");
    assert_eq!(data[0]["event"]["kind"], "approval_requested");
    assert_eq!(data[0]["event"]["seq"], after + 1);
    assert!(
        lines
            .iter()
            .any(|l| l.trim_end() == format!("id: {}", after + 1))
    );
    assert!(!lines.iter().any(|l| l.starts_with("event:")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("secretive")), "{lines:?}");
}

fn starting_a_task_from_the_console_needs_csrf_a_role_and_a_startable_definition(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    admin.user(&server, "ann", &["auditor"]);
    let nosy = super::harness::definition("acme", "nosy", "64Mi") + "  workspace: /etc\n";
    let r = admin.post("/v1/definitions", json!({"definition": nosy}));
    assert_eq!(r.status, 201, "{}", r.error_message());
    let (session, csrf) = session_of(&server, &admin, "alice");
    let b = browser(&server);
    let start = |session: &str, form: &str| post_form(&b, "/console/tasks", session, form);
    let tasks = || admin.get("/v1/tasks").json().as_array().unwrap().len();

    // No CSRF token, or another one: refused, nothing started.
    for form in [
        "agent=nosy%401&command=true".to_owned(),
        format!("csrf={}&agent=nosy%401&command=true", "0".repeat(64)),
    ] {
        let r = start(&session, &form);
        assert_eq!(r.status, 403, "{form}");
        assert!(text(&r).contains("CSRF check failed"));
    }
    // No session: to the sign-in page.
    let r = start("", &format!("csrf={csrf}&agent=nosy%401&command=true"));
    assert_eq!(r.status, 303);
    // An auditor may read, not start.
    let (ann, ann_csrf) = session_of(&server, &admin, "ann");
    let r = start(
        &ann,
        &format!("csrf={ann_csrf}&agent=nosy%401&command=true"),
    );
    assert_eq!(r.status, 403);
    assert!(text(&r).contains("needs the admin or developer role"));
    // A definition registered through the API may not name host paths: 422, each field.
    let r = start(
        &session,
        &format!("csrf={csrf}&agent=nosy%401&command=cat+%2Fmnt%2Fpasswd"),
    );
    assert_eq!(r.status, 422);
    assert!(
        text(&r).contains("<code>spec.workspace</code>"),
        "{}",
        text(&r)
    );
    // Another tenant's definition does not exist here; a bad command line is named.
    let beta = server.bootstrap("beta", "bea");
    beta.post(
        "/v1/definitions",
        json!({"definition": super::harness::definition("beta", "theirs", "64Mi")}),
    );
    let r = start(
        &session,
        &format!("csrf={csrf}&agent=theirs%401&command=true"),
    );
    assert_eq!(r.status, 404);
    let r = start(
        &session,
        &format!("csrf={csrf}&agent=nosy%401&command=echo+%27open"),
    );
    assert_eq!(r.status, 400);
    assert!(text(&r).contains("unclosed quote"));
    assert_eq!(tasks(), 0);
}

fn another_tenants_task_is_not_found_on_any_console_page(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let r = admin.post("/v1/definitions", json!({"definition": OFFICER}));
    let digest = r.json()["digest"].as_str().unwrap().to_owned();
    let task = running_task(&server, "acme", "officer", "alice", &digest);
    std::fs::write(
        server.state().join("tasks").join(&task).join("stdout.log"),
        "acme's customer list\n",
    )
    .unwrap();
    let beta = server.bootstrap("beta", "bea");
    let (session, csrf) = session_of(&server, &beta, "bea");
    let b = browser(&server);
    // Nor can it be stopped from there.
    let r = post_form(
        &b,
        &format!("/console/tasks/{task}/stop"),
        &session,
        &format!("csrf={csrf}"),
    );
    assert_eq!(r.status, 404);
    for path in [
        format!("/console/tasks/{task}"),
        format!("/console/tasks/{task}/log"),
        format!("/console/state?task={task}"),
        "/console/tasks/..%2F..%2Fetc/log".to_owned(),
    ] {
        let r = get(&b, &path, &session);
        assert_eq!(r.status, 404, "{path}");
        assert!(!text(&r).contains("customer list"), "{path}");
    }
    let home = text(&get(&b, "/console/", &session));
    assert!(
        !home.contains(&task) && home.contains("No task is running."),
        "{home}"
    );
    let state = get(&b, "/console/state", &session).json();
    assert_eq!(state["cells"], json!([]));

    // The owner sees the card, the output and the same card live.
    let (alice, alice_csrf) = session_of(&server, &admin, "alice");
    let log = get(&b, &format!("/console/tasks/{task}/log"), &alice);
    assert_eq!(log.status, 200);
    assert_eq!(text(&log), "acme's customer list\n");
    let page = text(&get(&b, &format!("/console/tasks/{task}"), &alice));
    assert!(page.contains("acme&#39;s customer list"), "{page}");
    assert!(page.contains("Stop this task"), "{page}");

    // Stopping needs the session's CSRF token; with it, the task is revoked (audited).
    let stop = |form: &str| post_form(&b, &format!("/console/tasks/{task}/stop"), &alice, form);
    assert_eq!(stop("").status, 403);
    assert_eq!(admin.get("/v1/revocations").json(), json!([]));
    let r = stop(&format!("csrf={alice_csrf}"));
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header_values("location"),
        [format!("/console/tasks/{task}")]
    );
    assert_eq!(
        admin.get("/v1/revocations").json()[0]["task"],
        task.as_str()
    );
}

/// Signing out ends the console's event stream too (it is checked again while it runs).
fn signing_out_ends_the_console_stream(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let token = admin.post("/v1/users/alice/tokens", json!({})).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (session, csrf) = sign_in(&server, &token);
    let mut stream = open_stream_at(
        &server,
        "/console/events",
        &format!("Cookie: {session}\r\n"),
    );
    let b = browser(&server);
    let r = post_form(&b, "/console/logout", &session, &format!("csrf={csrf}"));
    assert_eq!(r.status, 303);
    let mut lines = Vec::new();
    assert!(
        super::events::read_until_end(&mut stream, &mut lines, std::time::Duration::from_secs(20)),
        "the stream went on after sign-out: {lines:?}"
    );
}

/// An agent cannot hide what it asks for behind padding: the queue shows the body first
/// and only counts header names; a summary that is still cut short offers no decision
/// in the queue, only a link to the approval's page, which shows the whole request
/// escaped, with direction-changing characters made visible. Another tenant's approval
/// is a 404 there.
fn an_approver_sees_the_whole_held_request_before_deciding(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    admin.post("/v1/users", json!({"name": "bob", "roles": ["approver"]}));
    let mut ctx = context("acme", "carol", true, 600);
    let padding: Vec<String> = (0..40).map(|i| format!("x-padding-header-{i}")).collect();
    ctx.resource = "https://pay.example/\u{202e}moc.evil".into();
    ctx.request = serde_json::from_value(json!({
        "method": "POST",
        "host": "pay.example",
        "headers": padding,
        "note": "n".repeat(500),
        "body": {"amount": 999_999, "to": "<b>mallory</b>"},
    }))
    .unwrap();
    let id = server.approvals.request(ctx).unwrap();
    let (bob, csrf) = session_of(&server, &admin, "bob");
    let b = browser(&server);

    // The queue: the body first, header names counted, no decision on a cut summary.
    let state = get(&b, "/console/state", &bob).json();
    let pending = &state["approvals"][0];
    assert_eq!(pending["id"], id.as_str());
    assert_eq!(pending["truncated"], true);
    let summary = pending["request"].as_str().unwrap();
    assert!(
        summary.starts_with("{\"body\":{\"amount\":999999"),
        "{summary}"
    );
    assert!(summary.contains("\"headers\":40"), "{summary}");
    let home = text(&get(&b, "/console/", &bob));
    let row = &home[home.find(&format!("data-id=\"{id}\"")).unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("review the whole request"), "{row}");
    assert!(
        !row.contains("/approve"),
        "a decision offered on a cut summary: {row}"
    );

    // The approval's page: all of it, escaped, the hidden character shown.
    let page = get(&b, &format!("/console/approvals/{id}"), &bob);
    assert_eq!(page.status, 200);
    let body = text(&page);
    assert!(body.contains("&lt;b&gt;mallory&lt;/b&gt;"), "{}", body);
    assert!(!body.contains("<b>mallory"));
    assert!(body.contains("999999"));
    assert!(body.contains("&lt;U+202E&gt;moc.evil"), "{}", body);
    assert!(body.contains(&format!("/console/approvals/{id}/approve")));
    // Deciding from it works (four-eyes: bob is not carol).
    let r = post_form(
        &b,
        &format!("/console/approvals/{id}/approve"),
        &bob,
        &format!("csrf={csrf}&comment=read+it+all"),
    );
    assert_eq!(r.status, 303);
    let after = text(&get(&b, &format!("/console/approvals/{id}"), &bob));
    assert!(after.contains("approved"), "{after}");
    assert!(!after.contains("/approve\""));

    // Another tenant's approver: as if it did not exist.
    let beta = server.bootstrap("beta", "bea");
    let (bea, _) = session_of(&server, &beta, "bea");
    assert_eq!(
        get(&b, &format!("/console/approvals/{id}"), &bea).status,
        404
    );
}

/// Every answer, errors and rejected queries included, forbids content sniffing and
/// cross-origin reads, so none can be loaded as script or style by another page.
fn every_answer_forbids_sniffing_and_cross_origin_reads(backend: Backend) {
    let server = TestServer::start(backend);
    let admin = server.bootstrap("acme", "alice");
    let (session, _) = session_of(&server, &admin, "alice");
    let b = browser(&server);
    for (path, cookie) in [
        ("/v1/nothing-here", ""),
        ("/console/audit?bogus=%3Cscript%3E", session.as_str()),
        ("/console/events", ""),
        ("/openapi.json", ""),
    ] {
        let r = get(&b, path, cookie);
        assert_eq!(
            r.header_values("x-content-type-options"),
            ["nosniff"],
            "{path}"
        );
        assert_eq!(
            r.header_values("cross-origin-resource-policy"),
            ["same-origin"],
            "{path}"
        );
    }
}

on_both!(
    live_pages_run_only_the_consoles_own_script,
    html_in_audit_data_shows_as_text_on_the_canvas_the_stream_and_the_task_page,
    the_console_stream_needs_a_session_and_a_role_and_shows_only_the_tenant,
    starting_a_task_from_the_console_needs_csrf_a_role_and_a_startable_definition,
    another_tenants_task_is_not_found_on_any_console_page,
    signing_out_ends_the_console_stream,
    an_approver_sees_the_whole_held_request_before_deciding,
    every_answer_forbids_sniffing_and_cross_origin_reads,
);
