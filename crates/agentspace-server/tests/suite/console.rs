//! The console's login, session cookie and CSRF checks (over HTTP; the browser suite is
//! still to come).

use agentspace_server::client::{Client, Response};
use pretty_assertions::assert_eq;
use serde_json::json;

use super::approvals::context;
use super::harness::{Backend, TestServer};

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
