//! The web console, served by the same binary: a login page that turns an API token into
//! a session cookie; the live canvas of running cells, the decision stream, the approval
//! queue and starting tasks (in [`live`]); audit search and definitions.
//!
//! - The session cookie is `HttpOnly; SameSite=Strict; Path=/console` (and `Secure` with
//!   `agentspace serve --secure-cookies`, for a console behind a TLS-terminating proxy),
//!   256 random bits, stored as SHA-256 only, tied to the token it was made from (revoking the token ends
//!   the session) and valid for 12 hours.
//! - Every state-changing form carries a CSRF token that must equal the session's
//!   (compared in constant time); the login form uses a double-submit cookie.
//! - Pages are rendered here with every value HTML-escaped. The canvas and task pages
//!   load one script, `/console/console.js`, compiled into the binary; their
//!   Content-Security-Policy allows only that (`script-src 'self'`, no inline script, no
//!   eval), fetches and the event stream to this origin (`connect-src 'self'`), and
//!   Trusted Types with no policy, so the browser itself refuses any HTML string put
//!   into the page by script (`innerHTML`): the script builds the page with DOM calls
//!   and `textContent` only, because audit data is chosen in part by agents. Every other
//!   page allows no script at all. No page can be framed.

mod live;

pub(crate) use live::{
    approval_page, home, script, start_task, state, stop_task, stream, style, task_log, task_page,
};

use std::fmt::Write as _;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::{App, AppState, blocking};
use crate::approvals::Outcome;
use crate::auth::{Caller, Role};
use crate::error::ServerError;
use crate::extract::Path;
use crate::store::{now_ms, random_hex};

const SESSION_COOKIE: &str = "agentspace_session";
const LOGIN_COOKIE: &str = "agentspace_login";
const SESSION_MS: i64 = 12 * 3600 * 1000;

fn hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// HTML-escapes `text`.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; HttpOnly; SameSite=Strict; Path=/console; Max-Age={max_age_secs}{secure}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Pages without script: nothing runs, nothing is fetched but the stylesheet.
const CSP_STATIC: &str = "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Pages with live updates: the console's own script only, fetches and the event stream
/// to this origin, and Trusted Types with no policy, so assigning an HTML string to the
/// DOM (`innerHTML` and the like) throws instead of parsing it.
const CSP_LIVE: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

/// The security headers every console answer carries, with `csp`.
fn harden(h: &mut HeaderMap, csp: &'static str) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// A page with the console's headers and no script.
fn page(status: StatusCode, title: &str, body: &str, cookies: Vec<HeaderValue>) -> Response {
    render(status, title, body, cookies, None)
}

/// Renders a page; with `live` (the session's CSRF token) it loads the console's
/// script, which reads the token from `body[data-csrf]` for the forms it builds.
fn render(
    status: StatusCode,
    title: &str,
    body: &str,
    cookies: Vec<HeaderValue>,
    live: Option<&str>,
) -> Response {
    let (script, body_attrs) = match live {
        Some(csrf) => (
            "<script src=\"/console/console.js\" defer></script>",
            format!(" data-csrf=\"{}\"", esc(csrf)),
        ),
        None => ("", String::new()),
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · Agent Space</title>\
<link rel=\"stylesheet\" href=\"/console/console.css\">{script}</head><body{body_attrs}><h1>Agent Space</h1>{body}</body></html>",
        esc(title)
    );
    let mut response = (status, axum::response::Html(html)).into_response();
    let h = response.headers_mut();
    harden(h, if live.is_some() { CSP_LIVE } else { CSP_STATIC });
    for c in cookies {
        h.append(header::SET_COOKIE, c);
    }
    response
}

fn login_page(app: &App, status: StatusCode, error: Option<&str>) -> Result<Response, ServerError> {
    let csrf = random_hex::<32>()?;
    let error = error
        .map(|e| format!("<p class=\"err\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<h2>Sign in</h2>{error}<form method=\"post\" action=\"/console/login\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<p><label>API token <input type=\"password\" name=\"token\" autocomplete=\"off\" size=\"60\" required></label></p>\
<p><button type=\"submit\">Sign in</button></p></form>\
<p>An admin makes tokens with <code>POST /v1/users/NAME/tokens</code>; the first comes from \
<code>agentspace serve --bootstrap-admin</code>.</p>"
    );
    Ok(page(
        status,
        "Sign in",
        &body,
        vec![set_cookie(LOGIN_COOKIE, &csrf, 600, app.secure_cookies)],
    ))
}

/// `GET /console/login`.
pub(crate) async fn login_form(State(app): State<AppState>) -> Result<Response, ServerError> {
    login_page(&app, StatusCode::OK, None)
}

/// The login form's fields.
#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    csrf: String,
}

/// `POST /console/login`: checks the double-submit token and the API token, makes a
/// session and sends the browser to the console.
pub(crate) async fn login(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, ServerError> {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.len() != 64 || !same(&expected, &form.csrf) {
        return login_page(
            &app,
            StatusCode::FORBIDDEN,
            Some("the sign-in form expired or did not come from this page; try again"),
        );
    }
    let token = form.token.trim().to_owned();
    let session = blocking(&app, move |app| {
        let Some(caller) = app.accounts().authenticate(&token)? else {
            return Ok(None);
        };
        let id = random_hex::<32>()?;
        let csrf = random_hex::<32>()?;
        let now = now_ms();
        app.db.run(|c| {
            c.execute("DELETE FROM session WHERE expires_at <= $1", &[&now])?;
            c.execute(
                "INSERT INTO session (hash, token_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                &[&hash(&id), &caller.token_id, &csrf, &now, &now.saturating_add(SESSION_MS)],
            )
        })?;
        Ok(Some(id))
    })
    .await?;
    let Some(id) = session else {
        return login_page(
            &app,
            StatusCode::UNAUTHORIZED,
            Some("that token is not valid (unknown, revoked or mistyped)"),
        );
    };
    let mut response = Redirect::to("/console/").into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &id, SESSION_MS / 1000, app.secure_cookies),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", 0, app.secure_cookies),
    );
    Ok(response)
}

/// The signed-in user and the session's CSRF token.
pub(crate) struct Session {
    pub(crate) caller: Caller,
    csrf: String,
    pub(crate) hash: String,
}

/// The signed-in session of a request, if any (expired and revoked ones are none).
pub(crate) async fn session(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Session>, ServerError> {
    let Some(id) = cookie(headers, SESSION_COOKIE).filter(|v| v.len() == 64) else {
        return Ok(None);
    };
    blocking(app, move |app| {
        let h = hash(&id);
        let row = app.db.run(|c| {
            c.query_opt(
                r#"SELECT s.csrf, t.tenant, t."user", u.roles FROM session s
                   JOIN token t ON t.id = s.token_id
                   JOIN "user" u ON u.tenant = t.tenant AND u.name = t."user"
                   WHERE s.hash = $1 AND s.expires_at > $2"#,
                &[&h, &now_ms()],
            )
        })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (csrf, tenant, user, roles) = (row.text(0)?, row.text(1)?, row.text(2)?, row.text(3)?);
        let Ok(tenant) = agentspace_core::Name::new(&tenant) else {
            return Ok(None);
        };
        Ok(Some(Session {
            caller: Caller {
                tenant,
                user,
                roles: crate::auth::roles_parse(&roles),
                token_id: String::new(),
            },
            csrf,
            hash: h,
        }))
    })
    .await
}

/// A page that says what was refused (escaped), with a link back to `back`.
fn refusal(status: StatusCode, title: &str, problem: &str, back: &str) -> Response {
    page(
        status,
        title,
        &format!(
            "<p class=\"err\">{}</p><p><a href=\"{}\">Back</a></p>",
            esc(problem),
            esc(back)
        ),
        Vec::new(),
    )
}

/// Sends the browser on to `to` with a GET, after a form's POST.
fn see_other(to: &str) -> Response {
    let mut r = Redirect::to(to).into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

/// The session a state-changing form came from, or the answer to give instead: the
/// sign-in page without a session, a 403 when the form's CSRF token is not the
/// session's (missing counts as wrong).
async fn form_session(
    app: &AppState,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<Result<Session, Response>, ServerError> {
    let Some(s) = session(app, headers).await? else {
        return Ok(Err(to_login()));
    };
    if !same(&s.csrf, csrf) {
        return Ok(Err(bad_csrf()));
    }
    Ok(Ok(s))
}

fn to_login() -> Response {
    see_other("/console/login")
}

/// A state-changing form's CSRF field (and, for decisions, the comment).
#[derive(Deserialize)]
pub(crate) struct ActionForm {
    /// Missing is refused like wrong (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    comment: String,
}

fn bad_csrf() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Refused",
        "<p class=\"err\">The form did not come from this console session (CSRF check failed); reload the console and try again.</p>",
        Vec::new(),
    )
}

/// `POST /console/logout`.
pub(crate) async fn logout(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<Response, ServerError> {
    let s = match form_session(&app, &headers, &form.csrf).await? {
        Ok(s) => s,
        Err(answer) => return Ok(answer),
    };
    blocking(&app, move |app| {
        app.db
            .run(|c| c.execute("DELETE FROM session WHERE hash = $1", &[&s.hash]))
    })
    .await?;
    let mut r = to_login();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", 0, app.secure_cookies),
    );
    Ok(r)
}

/// `POST /console/approvals/{id}/approve|deny`.
pub(crate) async fn decide(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, ServerError> {
    let s = match form_session(&app, &headers, &form.csrf).await? {
        Ok(s) => s,
        Err(answer) => return Ok(answer),
    };
    let outcome = match verb.as_str() {
        "approve" => Outcome::Approve,
        "deny" => Outcome::Deny,
        _ => return Err(crate::api::not_found().await),
    };
    let caller = s.caller;
    caller.require(&[Role::Admin, Role::Approver])?;
    let result = blocking(&app, move |app| {
        app.approvals
            .decide(&caller.tenant, &id, &caller.user, outcome, &form.comment)
    })
    .await;
    match result {
        Ok(_) => Ok(see_other("/console/")),
        Err(e) => Ok(refusal(e.status(), "Refused", &e.to_string(), "/console/")),
    }
}

/// The audit search form's fields; empty fields do not filter.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditForm {
    #[serde(default)]
    task: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    resource: String,
}

/// Most events the audit page shows (the newest that match).
const AUDIT_PAGE: usize = 200;

/// `GET /console/audit`: the tenant's audit log, searched, newest first, with the
/// chain's verify status (admin, auditor).
pub(crate) async fn audit(
    State(app): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(form): axum::extract::Query<AuditForm>,
) -> Result<Response, ServerError> {
    let Some(s) = session(&app, &headers).await? else {
        return Ok(to_login());
    };
    if s.caller.require(&[Role::Admin, Role::Auditor]).is_err() {
        return Ok(page(
            StatusCode::FORBIDDEN,
            "Refused",
            "<p class=\"err\">Audit search needs the admin or auditor role.</p><p><a href=\"/console/\">Back</a></p>",
            Vec::new(),
        ));
    }
    let some = |v: &str| (!v.trim().is_empty()).then(|| v.trim().to_owned());
    let query = crate::api::AuditQuery {
        task: some(&form.task),
        user: some(&form.user),
        agent: some(&form.agent),
        kind: some(&form.kind),
        decision: some(&form.decision),
        resource: some(&form.resource),
        ..Default::default()
    };
    let tenant = s.caller.tenant.clone();
    let filter = match query.filter(&tenant) {
        Ok(f) => f,
        Err(e) => {
            return Ok(refusal(
                StatusCode::BAD_REQUEST,
                "Audit",
                &e.to_string(),
                "/console/audit",
            ));
        }
    };
    let (events, verified) = blocking(&app, move |app| {
        let mut newest = std::collections::VecDeque::new();
        app.audit.query(&filter, |entry| {
            if newest.len() == AUDIT_PAGE {
                newest.pop_front();
            }
            newest.push_back(entry.event);
            Ok(true)
        })?;
        let verified = match app.audit.verify(&agentspace_audit::VerifyOptions {
            tenant: Some(tenant.to_string()),
            ..Default::default()
        }) {
            Ok(report) => Ok(report.first().map_or(0, |t| t.events)),
            Err(agentspace_audit::AuditError::Tampered(f)) => Err(f.to_string()),
            Err(e) => return Err(e.into()),
        };
        Ok((newest, verified))
    })
    .await?;
    let mut body = String::from("<p><a href=\"/console/\">Console</a></p><h2>Audit</h2>");
    match verified {
        Ok(n) => {
            let _ = write!(
                body,
                "<p>The chain verifies: {n} events, every hash and signature.</p>"
            );
        }
        Err(problem) => {
            let _ = write!(
                body,
                "<p class=\"err\">The chain does NOT verify: {}</p>",
                esc(&problem)
            );
        }
    }
    body.push_str("<form method=\"get\" action=\"/console/audit\">");
    for (name, value) in [
        ("task", &form.task),
        ("user", &form.user),
        ("agent", &form.agent),
        ("kind", &form.kind),
        ("decision", &form.decision),
        ("resource", &form.resource),
    ] {
        let _ = write!(
            body,
            "<label>{name} <input name=\"{name}\" value=\"{}\" size=\"12\"></label> ",
            esc(value)
        );
    }
    body.push_str("<button>Search</button></form>");
    let _ = write!(body, "<p>{} events, newest first.</p>", events.len());
    body.push_str("<table><tr><th>seq</th><th>time</th><th>kind</th><th>user</th><th>agent</th><th>task</th><th>action</th><th>resource</th><th>decision</th><th>reason</th><th>details</th></tr>");
    let dash = |v: &Option<String>| esc(v.as_deref().unwrap_or("-"));
    for e in events.iter().rev() {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            e.seq,
            esc(&e.time),
            e.kind.as_str(),
            dash(&e.user),
            dash(&e.agent),
            dash(&e.task),
            esc(&e.action),
            dash(&e.resource),
            e.decision.map_or("-", |d| d.as_str()),
            dash(&e.reason),
            esc(&details_text(&e.details))
        );
    }
    body.push_str("</table>");
    Ok(page(StatusCode::OK, "Audit", &body, Vec::new()))
}

/// `GET /console/definitions`: the tenant's registered definitions (any role).
pub(crate) async fn definitions(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    let Some(s) = session(&app, &headers).await? else {
        return Ok(to_login());
    };
    let tenant = s.caller.tenant.clone();
    let list = blocking(&app, move |app| app.registry().list(&tenant)).await?;
    let mut body = String::from(
        "<p><a href=\"/console/\">Console</a></p><h2>Definitions</h2><table><tr><th>agent</th><th>version</th><th>registered</th><th>digest</th><th>by</th><th>at</th></tr>",
    );
    for d in list {
        let _ = write!(
            body,
            "<tr><td><a href=\"/console/definitions/{0}\">{0}</a></td><td>{1}</td><td>{2}</td><td><code>{3}</code></td><td>{4}</td><td>{5}</td></tr>",
            esc(&d.name),
            d.version,
            origin(d.host),
            esc(&d.digest),
            esc(&d.registered_by),
            esc(&d.registered_at)
        );
    }
    body.push_str("</table>");
    Ok(page(StatusCode::OK, "Definitions", &body, Vec::new()))
}

/// `GET /console/definitions/{name}`: the current version's text and the Cedar
/// policies it compiles to.
pub(crate) async fn definition(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ServerError> {
    let Some(s) = session(&app, &headers).await? else {
        return Ok(to_login());
    };
    let tenant = s.caller.tenant.clone();
    let found = blocking(&app, move |app| {
        let stored = app.registry().stored(&tenant, &name, None)?;
        let cedar = stored
            .parse(&app.state_dir, &tenant)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                // Generated policies only: `spec.policies` names host files, never read here.
                agentspace_policy::CompiledPolicies::compile_with_files(&d, Vec::new())
                    .map(|p| p.cedar_text())
                    .map_err(|e| e.to_string())
            });
        Ok((stored.version, stored.text, cedar))
    })
    .await;
    let (v, text, cedar) = match found {
        Ok(found) => found,
        Err(e) => {
            return Ok(refusal(
                e.status(),
                "Definitions",
                &e.to_string(),
                "/console/definitions",
            ));
        }
    };
    let cedar = match cedar {
        Ok(text) => format!("<pre>{}</pre>", esc(&text)),
        Err(e) => format!("<p class=\"err\">It does not compile: {}</p>", esc(&e)),
    };
    let body = format!(
        "<p><a href=\"/console/definitions\">Definitions</a></p><h2>{} v{}</h2>\
<p><code>{}</code>, {}, by {} at {}</p><h3>Definition</h3><pre>{}</pre>\
<h3>Generated policies (Cedar)</h3>{cedar}",
        esc(&v.name),
        v.version,
        esc(&v.digest),
        origin(v.host),
        esc(&v.registered_by),
        esc(&v.registered_at),
        esc(&text)
    );
    Ok(page(StatusCode::OK, "Definitions", &body, Vec::new()))
}

/// How a version was registered, in words.
fn origin(host: bool) -> &'static str {
    if host {
        "registered on the host by its operator (may name host paths and commands)"
    } else {
        "registered through the API"
    }
}

/// Most characters of an event's details the audit page shows.
const DETAILS_SHOWN: usize = 300;

/// An event's details as compact JSON, cut short (the export has them whole).
fn details_text(details: &serde_json::Map<String, serde_json::Value>) -> String {
    if details.is_empty() {
        return "-".to_owned();
    }
    compact_json(details, DETAILS_SHOWN).0
}

/// `map` as compact JSON of at most `max` characters (and an ellipsis when cut), and
/// whether it was cut.
fn compact_json(map: &serde_json::Map<String, serde_json::Value>, max: usize) -> (String, bool) {
    let text = serde_json::Value::Object(map.clone()).to_string();
    if text.chars().count() > max {
        (text.chars().take(max).collect::<String>() + "…", true)
    } else {
        (text, false)
    }
}
