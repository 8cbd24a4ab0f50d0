//! The live console: the canvas of the tenant's running cells, each with its identity
//! and boundary (what it may reach, what it was blocked from, its taint and its budget
//! use), the decision stream, the approval queue, budgets, and starting a task.
//!
//! Pages are rendered here, complete and escaped; `console.js` keeps them current from
//! two sources under `/console/` (the session cookie's path): `GET /console/events`,
//! the tenant's audit events as server-sent events, and `GET /console/state`, the canvas
//! and the approval queue as JSON, fetched when an event arrives.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use agentspace_core::{AuditDecision, AuditEvent, Definition, Name};
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{
    Session, esc, form_session, harden, page, refusal, render, see_other, session, to_login,
};
use crate::api::{App, AppState, blocking};
use crate::approvals::{Approval, ApprovalState};
use crate::auth::Role;
use crate::error::ServerError;
use crate::extract::{Path, Query};

/// The console's script and stylesheet, compiled in: no file is read at run time.
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// Roles that see approvals, and the audit log's view of a cell (its denials and taint):
/// those that may follow the event stream.
const WATCHERS: &[Role] = crate::events::EVENT_READERS;
const DECIDERS: &[Role] = &[Role::Admin, Role::Approver];
const STARTERS: &[Role] = &[Role::Admin, Role::Developer];
const LOG_READERS: &[Role] = &[Role::Admin, Role::Auditor, Role::Developer];

/// Most events the home page's stream shows (the script keeps as many).
const STREAM_ROWS: u64 = 50;
/// Most events a task page shows.
const TASK_ROWS: usize = 500;
/// Most bytes of a task's output a task page shows.
const LOG_TAIL: u64 = 64 * 1024;

fn has(s: &Session, roles: &[Role]) -> bool {
    roles.iter().any(|r| s.caller.roles.contains(r))
}

/// `GET /console/console.js`.
pub(crate) async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /console/console.css`.
pub(crate) async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

fn asset(text: &'static str, content_type: &'static str) -> Response {
    let mut r = text.into_response();
    let h = r.headers_mut();
    harden(h, super::CSP_STATIC);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated on every load, so a new binary's script is picked up at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

// ---------------------------------------------------------------- the canvas's data

/// One thing a cell may reach or was blocked from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct Reach {
    /// `egress`, `tools`, `host`, `tool`, `dns`, ...
    kind: String,
    /// The rule, server, host or tool.
    name: String,
    /// What exactly, and why.
    detail: String,
}

/// One task as the canvas shows it.
#[derive(Debug, Serialize)]
pub(crate) struct Cell {
    task: String,
    agent: String,
    user: String,
    /// `running`, `exited`, `failed`.
    state: String,
    started_at: String,
    /// The exit code, once exited.
    exit_code: Option<i64>,
    /// Which definition it runs, in words.
    definition: String,
    /// What it may reach: egress rules and tool servers with their allowed tools.
    allowed: Vec<Reach>,
    /// What it may not reach: tool servers with nothing allowed, and what the audit log
    /// shows it was denied.
    blocked: Vec<Reach>,
    /// Labels its session carries (from its tool results).
    taint: Vec<String>,
    /// Its budget use, one line per measure.
    budget: Vec<String>,
    /// The cells its stdio tool servers run in (`server:task`), while they run.
    servers: Vec<String>,
    /// Whether `blocked` and `taint` include what the audit log shows (roles that may
    /// follow the event stream only).
    audited: bool,
}

/// A pending approval as the queue shows it.
#[derive(Debug, Serialize)]
pub(crate) struct Pending {
    id: String,
    user: String,
    agent: String,
    task: String,
    action: String,
    resource: String,
    /// The request summary (secrets redacted), as compact JSON: what the agent sends
    /// (body, tool arguments) first, header names only counted.
    request: String,
    /// Whether `request` was cut short: then the queue offers no decision until the
    /// whole request was looked at on the approval's own page.
    truncated: bool,
    reason: String,
    expires_at: String,
}

/// Most characters of a request summary the queue shows.
const REQUEST_SHOWN: usize = 400;

impl From<Approval> for Pending {
    fn from(a: Approval) -> Self {
        let c = a.context;
        let request = summary_for_people(&c.request);
        let (request, truncated) = super::compact_json(&request, REQUEST_SHOWN);
        Self {
            request,
            truncated,
            id: a.id,
            user: c.user,
            agent: c.agent.unwrap_or_default(),
            task: c.task.unwrap_or_default(),
            action: c.action,
            resource: c.resource,
            reason: c.reason.unwrap_or_default(),
            expires_at: a.expires_at,
        }
    }
}

/// A held request's summary ordered for the person deciding: what the agent sends
/// (`body`, `arguments`) first, so that nothing the agent pads in front can push it out
/// of view; header names only counted (an agent could list dozens); the digest, which
/// only identifies retries, left out.
fn summary_for_people(
    request: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for key in ["body", "arguments"] {
        if let Some(v) = request.get(key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    for (key, value) in request {
        match key.as_str() {
            "body" | "arguments" | "digest" => {}
            "headers" => {
                let n = value.as_array().map_or(0, Vec::len);
                out.insert("headers".to_owned(), serde_json::json!(n));
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    out
}

/// What `GET /console/state` answers: the canvas and, for those who may see it, the
/// approval queue.
#[derive(Debug, Serialize)]
pub(crate) struct Snapshot {
    cells: Vec<Cell>,
    approvals: Option<Vec<Pending>>,
}

/// The definition a task ran: the registered version with the manifest's digest, or
/// the file `agentspace run` read if it still has that digest (tasks started on the
/// host, tool-server cells). `None` when neither is there any more.
fn definition_of(
    app: &App,
    tenant: &Name,
    agent: &str,
    digest: &str,
    file: &str,
) -> (Option<Definition>, String) {
    if let Ok(Some(stored)) = app.registry().by_digest(tenant, agent, digest)
        && let Ok(d) = stored.parse(&app.state_dir, tenant)
    {
        let how = if stored.version.host {
            "registered on the host"
        } else {
            "registered through the API"
        };
        return (
            Some(d),
            format!("version {}, {how}", stored.version.version),
        );
    }
    // Written by `agentspace run` on this host; used only if it is still what ran.
    if !file.is_empty()
        && let Ok(text) = std::fs::read_to_string(file)
        && let Ok(d) = Definition::parse(std::path::Path::new(file), &text)
        && d.digest == digest
        && d.tenant == *tenant
    {
        return (Some(d), "not registered: run on the host".to_owned());
    }
    (
        None,
        "not registered, and its file is gone: its boundary is not known here".to_owned(),
    )
}

/// What the definition lets the cell reach, and the tool servers it may not.
fn boundary(d: &Definition) -> (Vec<Reach>, Vec<Reach>) {
    let (mut allowed, mut blocked) = (Vec::new(), Vec::new());
    for rule in &d.governance.egress {
        let mut detail = rule.hosts.join(", ");
        if !rule.methods.is_empty() {
            let _ = write!(detail, " · {}", rule.methods.join(" "));
        }
        if !rule.paths.is_empty() {
            let _ = write!(detail, " · paths {}", rule.paths.join(" "));
        }
        if rule.approval.is_some() {
            detail.push_str(" · needs approval");
        }
        if rule.credential.is_some() {
            detail.push_str(" · credential brokered");
        }
        allowed.push(Reach {
            kind: "egress".into(),
            name: rule.name.to_string(),
            detail,
        });
    }
    let tools = &d.governance.tools;
    let flow_labels: BTreeSet<&str> = tools.flows.iter().map(|f| f.label.as_str()).collect();
    for server in &tools.servers {
        if server.allow.is_empty() {
            blocked.push(Reach {
                kind: "tools".into(),
                name: server.name.to_string(),
                detail: "no tool allowed: the agent never sees this server".into(),
            });
            continue;
        }
        let mut detail = server.allow.join(", ");
        if !server.labels.is_empty() {
            let labels: Vec<&str> = server.labels.iter().map(String::as_str).collect();
            let _ = write!(detail, " · results carry {}", labels.join(", "));
        }
        if server.approval.is_some() {
            detail.push_str(" · calls need approval");
        }
        let not_cleared: Vec<&str> = flow_labels
            .iter()
            .copied()
            .filter(|l| !tools.cleared(server.name.as_str(), l))
            .collect();
        if !not_cleared.is_empty() {
            let _ = write!(detail, " · not cleared for {}", not_cleared.join(", "));
        }
        allowed.push(Reach {
            kind: "tools".into(),
            name: server.name.to_string(),
            detail,
        });
    }
    if allowed.is_empty() {
        blocked.push(Reach {
            kind: "egress".into(),
            name: "everything".into(),
            detail: "the definition allows no egress and no tools".into(),
        });
    }
    (allowed, blocked)
}

/// The host of a URL (or the resource itself when it is not one).
fn host_of(resource: &str) -> &str {
    let rest = resource.split_once("://").map_or(resource, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest.get(..end).unwrap_or(rest)
}

/// What the audit log shows of a task: what it was denied (with how often) and the
/// labels its session picked up.
fn audited(app: &App, tenant: &Name, task: &str) -> Result<(Vec<Reach>, Vec<String>), ServerError> {
    let filter = agentspace_audit::Filter {
        tenant: Some(tenant.to_string()),
        task: Some(task.to_owned()),
        ..Default::default()
    };
    let mut denied: std::collections::BTreeMap<(String, String, String), u64> =
        std::collections::BTreeMap::new();
    let mut taint = BTreeSet::new();
    app.audit.query(&filter, |entry| {
        let e = &entry.event;
        for key in ["taint", "labels"] {
            if let Some(labels) = e.details.get(key).and_then(|v| v.as_array()) {
                taint.extend(labels.iter().filter_map(|l| l.as_str()).map(str::to_owned));
            }
        }
        if e.decision == Some(AuditDecision::Deny) {
            let resource = e.resource.clone().unwrap_or_else(|| e.action.clone());
            let (kind, name) = match e.kind {
                agentspace_core::AuditKind::HttpRequest => ("host", host_of(&resource).to_owned()),
                agentspace_core::AuditKind::DnsLookup => ("dns", resource),
                agentspace_core::AuditKind::McpCall => ("tool", resource),
                other => (other.as_str(), resource),
            };
            let why = e
                .details
                .get("code")
                .and_then(|c| c.as_str())
                .map_or_else(|| "denied".to_owned(), |c| format!("denied: {c}"));
            *denied.entry((kind.to_owned(), name, why)).or_default() += 1;
        }
        Ok(true)
    })?;
    let blocked = denied
        .into_iter()
        .map(|((kind, name, why), n)| Reach {
            kind,
            name,
            detail: if n == 1 {
                why
            } else {
                format!("{why} ({n}×)")
            },
        })
        .collect();
    Ok((blocked, taint.into_iter().collect()))
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let name = UNITS.get(unit).copied().unwrap_or("B");
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {name}")
    }
}

/// A task's use against its definition's per-task budgets, one line per measure.
fn budget_lines(usage: &agentspace_policy::Usage, d: &Definition) -> Vec<String> {
    let b = &d.governance.budgets;
    let of = |what: &str, used: String, limit: Option<String>| match limit {
        Some(l) => format!("{what} {used} of {l}"),
        None => format!("{what} {used} (no limit)"),
    };
    vec![
        of(
            "requests",
            usage.requests.to_string(),
            b.task.requests.map(|n| n.to_string()),
        ),
        of("bytes", size(usage.bytes), b.task.bytes.map(size)),
        of(
            "tokens",
            usage.tokens.to_string(),
            b.task.tokens.map(|n| n.to_string()),
        ),
        of(
            "time",
            format!("{} s", usage.seconds),
            b.task_time
                .or(Some(d.limits.timeout))
                .map(|t| format!("{} s", t.as_secs())),
        ),
    ]
}

/// The canvas's view of the task in manifest `m`.
fn cell(app: &App, tenant: &Name, m: &serde_json::Value, audit: bool) -> Cell {
    let field = |k: &str| {
        m.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (task, agent) = (field("task"), field("agent"));
    let (definition, how) = definition_of(
        app,
        tenant,
        &agent,
        &field("definition_digest"),
        &field("definition"),
    );
    let (mut allowed, mut blocked) = definition.as_ref().map(boundary).unwrap_or_default();
    let mut taint = Vec::new();
    if audit {
        match audited(app, tenant, &task) {
            Ok((denied, labels)) => {
                blocked.extend(denied);
                taint = labels;
            }
            Err(e) => blocked.push(Reach {
                kind: "audit".into(),
                name: "unknown".into(),
                detail: format!("the audit log cannot be read: {e}"),
            }),
        }
    }
    allowed.dedup();
    let budget = match &definition {
        Some(d) => match crate::api::task_usage(app, tenant, m, d) {
            Ok(usage) => budget_lines(&usage, d),
            Err(e) => vec![format!("unknown: {e}")],
        },
        None => vec!["unknown: the definition is not known here".to_owned()],
    };
    Cell {
        task,
        agent,
        user: field("user"),
        state: field("state"),
        started_at: field("started_at"),
        exit_code: m.get("exit_code").and_then(|c| c.as_i64()),
        definition: how,
        allowed,
        blocked,
        taint,
        budget,
        servers: Vec::new(),
        audited: audit,
    }
}

/// The task whose boundary started the cell of manifest `m` for a stdio tool server:
/// `agentspace run` writes such a cell's definition to `<state>/tasks/<parent>/tools/`.
fn tool_server_parent(m: &serde_json::Value) -> Option<String> {
    let file = std::path::Path::new(m.get("definition")?.as_str()?);
    let tools = file.parent()?;
    let parent = tools.parent()?;
    let tasks = parent.parent()?;
    let named = |p: &std::path::Path, name: &str| p.file_name().is_some_and(|n| n == name);
    if !named(tools, "tools") || !named(tasks, "tasks") {
        return None;
    }
    let id = parent.file_name()?.to_str()?;
    agentspace_core::TaskId::parse(id).ok()?;
    Some(id.to_owned())
}

/// The running cells of `tenant`, newest first; the cells of a task's stdio tool
/// servers are listed on that task's card.
fn running(app: &App, tenant: &Name, audit: bool) -> Vec<Cell> {
    let manifests: Vec<serde_json::Value> = crate::api::read_manifests(app, tenant)
        .into_iter()
        .filter(|m| m.get("state").and_then(|s| s.as_str()) == Some("running"))
        .collect();
    let id = |m: &serde_json::Value| m.get("task").and_then(|t| t.as_str()).map(str::to_owned);
    let ids: BTreeSet<String> = manifests.iter().filter_map(id).collect();
    let mut servers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut top = Vec::new();
    for m in &manifests {
        match tool_server_parent(m).filter(|p| ids.contains(p)) {
            Some(parent) => {
                let agent = m.get("agent").and_then(|a| a.as_str()).unwrap_or("-");
                servers
                    .entry(parent)
                    .or_default()
                    .push(format!("{agent}:{}", id(m).unwrap_or_default()));
            }
            None => top.push(m),
        }
    }
    top.into_iter()
        .map(|m| {
            let mut c = cell(app, tenant, m, audit);
            c.servers = servers.remove(&c.task).unwrap_or_default();
            c.servers.sort();
            c
        })
        .collect()
}

fn pending(app: &App, tenant: &Name) -> Result<Vec<Pending>, ServerError> {
    Ok(app
        .approvals
        .list(tenant, Some(ApprovalState::Pending), 200)?
        .into_iter()
        .map(Pending::from)
        .collect())
}

// ---------------------------------------------------------------- rendering

fn reach_list(items: &[Reach], empty: &str) -> String {
    if items.is_empty() {
        return format!("<p class=\"none\">{}</p>", esc(empty));
    }
    let mut out = String::from("<ul>");
    for r in items {
        let _ = write!(
            out,
            "<li><b>{}</b> <span class=\"kind\">{}</span> {}</li>",
            esc(&r.name),
            esc(&r.kind),
            esc(&r.detail)
        );
    }
    out.push_str("</ul>");
    out
}

/// One cell's card; `console.js` builds the same from `/console/state`.
fn cell_html(c: &Cell) -> String {
    let state = match (c.state.as_str(), c.exit_code) {
        ("running", _) => format!("running since {}", esc(&c.started_at)),
        (state, Some(code)) => format!("{} ({code})", esc(state)),
        (state, None) => esc(state),
    };
    let taint = if c.taint.is_empty() {
        "none".to_owned()
    } else {
        c.taint
            .iter()
            .map(|l| format!("<span class=\"label\">{}</span>", esc(l)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let taint = if c.audited {
        format!("<p class=\"taint\">Taint: {taint}</p>")
    } else {
        String::new()
    };
    format!(
        "<article class=\"cell\" data-task=\"{task}\"><h3><a href=\"/console/tasks/{task}\">{agent}:{task}</a></h3>\
<p class=\"who\">for <b>{user}</b> · {state} · {definition}</p>\
<div class=\"boundary\"><div class=\"allowed\"><h4>May reach</h4>{allowed}</div>\
<div class=\"blocked\"><h4>Blocked</h4>{blocked}</div></div>{taint}\
<p class=\"budget\">Budget used: {budget}</p>{servers}</article>",
        task = esc(&c.task),
        agent = esc(&c.agent),
        user = esc(&c.user),
        definition = esc(&c.definition),
        allowed = reach_list(&c.allowed, "nothing"),
        blocked = reach_list(&c.blocked, "nothing"),
        budget = esc(&c.budget.join(" · ")),
        servers = servers_html(&c.servers),
    )
}

/// The cells a task's tool servers run in, linked.
fn servers_html(servers: &[String]) -> String {
    if servers.is_empty() {
        return String::new();
    }
    let links: Vec<String> = servers
        .iter()
        .map(|s| {
            let (name, task) = s.split_once(':').unwrap_or((s, ""));
            format!("<a href=\"/console/tasks/{}\">{}</a>", esc(task), esc(name))
        })
        .collect();
    format!(
        "<p class=\"servers\">Tool servers, each in a cell of its own: {}</p>",
        links.join(", ")
    )
}

/// One pending approval's row, with approve and deny forms for those who may decide.
fn approval_row(a: &Pending, csrf: &str, decide: bool) -> String {
    let mut row = format!(
        "<tr data-id=\"{}\"><td>{}</td><td>{}</td><td><a href=\"/console/tasks/{task}\">{task}</a></td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>",
        esc(&a.id),
        esc(&a.user),
        esc(&a.agent),
        esc(&a.action),
        esc(&a.resource),
        esc(&a.request),
        esc(&a.reason),
        esc(&a.expires_at),
        task = esc(&a.task),
    );
    let _ = write!(
        row,
        "<a href=\"/console/approvals/{}\">{}</a> ",
        esc(&a.id),
        if a.truncated {
            "review the whole request"
        } else {
            "details"
        }
    );
    if decide && !a.truncated {
        for (verb, label) in [("approve", "Approve"), ("deny", "Deny")] {
            let _ = write!(
                row,
                "<form class=\"inline\" method=\"post\" action=\"/console/approvals/{}/{verb}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input name=\"comment\" placeholder=\"comment\" size=\"14\">\
<button>{label}</button></form> ",
                esc(&a.id),
                esc(csrf)
            );
        }
    }
    row.push_str("</td></tr>");
    row
}

/// The time of day of an event time (`2026-01-02T03:04:05.123456789Z` → `03:04:05.123`).
fn clock(time: &str) -> &str {
    time.get(11..23).unwrap_or(time)
}

/// One audit event's row in a decision stream; `console.js` builds the same from the
/// event stream.
fn event_row(e: &AuditEvent) -> String {
    let dash = |v: &Option<String>| esc(v.as_deref().unwrap_or("-"));
    let decision = e.decision.map_or("-", |d| d.as_str());
    let class = match e.decision {
        Some(AuditDecision::Allow) => "d-allow",
        Some(AuditDecision::Deny) => "d-deny",
        Some(AuditDecision::ApprovalRequired) => "d-approval",
        None => "d-none",
    };
    let task = match &e.task {
        Some(t) => format!("<a href=\"/console/tasks/{0}\">{0}</a>", esc(t)),
        None => "-".to_owned(),
    };
    format!(
        "<tr class=\"{class}\" data-seq=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{task}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        e.seq,
        e.seq,
        esc(clock(&e.time)),
        e.kind.as_str(),
        dash(&e.user),
        dash(&e.agent),
        esc(&e.action),
        dash(&e.resource),
        decision,
        dash(&e.reason),
    )
}

const STREAM_HEAD: &str = "<thead><tr><th>seq</th><th>time</th><th>kind</th><th>user</th><th>agent</th><th>task</th><th>action</th><th>resource</th><th>decision</th><th>reason</th></tr></thead>";

/// A decision stream table: `rows` newest first; the script follows the stream after
/// `after` (the last sequence number the page saw), for `task` only when given.
fn stream_table(rows: &[AuditEvent], after: Option<u64>, task: Option<&str>) -> String {
    let mut out = String::from(
        "<p class=\"live\">Live: <span id=\"live\">connecting…</span></p><table id=\"stream\" class=\"stream\"",
    );
    if let Some(after) = after {
        let _ = write!(out, " data-after=\"{after}\"");
    }
    if let Some(task) = task {
        let _ = write!(out, " data-task=\"{}\"", esc(task));
    }
    out.push('>');
    out.push_str(STREAM_HEAD);
    out.push_str("<tbody>");
    for e in rows.iter().rev() {
        out.push_str(&event_row(e));
    }
    out.push_str("</tbody></table>");
    out
}

/// The signed-in user, sign-out and the console's pages.
fn header(s: &Session) -> String {
    let roles: Vec<&str> = s.caller.roles.iter().map(|r| r.as_str()).collect();
    let mut out = format!(
        "<header><p>Signed in as <b>{}</b> of tenant <b>{}</b> ({}).</p>\
<form method=\"post\" action=\"/console/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Sign out</button></form></header>\
<nav><a href=\"/console/\">Console</a> · <a href=\"/console/definitions\">Definitions</a>",
        esc(&s.caller.user),
        esc(s.caller.tenant.as_str()),
        esc(&roles.join(", ")),
        esc(&s.csrf)
    );
    if has(s, &[Role::Admin, Role::Auditor]) {
        out.push_str(" · <a href=\"/console/audit\">Audit search</a>");
    }
    out.push_str("</nav>");
    out
}

fn budgets_table(list: &[(crate::definitions::DefinitionVersion, Option<Definition>)]) -> String {
    let mut out = String::from(
        "<table class=\"budgets\"><thead><tr><th>agent</th><th>version</th><th>per task</th><th>per user</th></tr></thead><tbody>",
    );
    for (v, d) in list {
        let (task, user) = match d {
            Some(d) => {
                let b = &d.governance.budgets;
                let quota = |q: &agentspace_core::Quota| {
                    let mut parts = Vec::new();
                    if let Some(n) = q.requests {
                        parts.push(format!("{n} requests"));
                    }
                    if let Some(n) = q.bytes {
                        parts.push(size(n));
                    }
                    if let Some(n) = q.tokens {
                        parts.push(format!("{n} tokens"));
                    }
                    parts
                };
                let mut task = quota(&b.task);
                task.push(format!(
                    "{} s",
                    b.task_time.unwrap_or(d.limits.timeout).as_secs()
                ));
                let user = b.per_user.as_ref().map_or_else(
                    || "no limit".to_owned(),
                    |w| {
                        format!(
                            "{} per {} s",
                            quota(&w.quota).join(", "),
                            w.window.as_secs()
                        )
                    },
                );
                (task.join(", "), user)
            }
            None => ("does not parse".to_owned(), String::new()),
        };
        let _ = write!(
            out,
            "<tr><td><a href=\"/console/definitions/{0}\">{0}</a></td><td>{1}</td><td>{2}</td><td>{3}</td></tr>",
            esc(&v.name),
            v.version,
            esc(&task),
            esc(&user)
        );
    }
    out.push_str("</tbody></table>");
    out
}

// ---------------------------------------------------------------- pages

/// `GET /console/`: the canvas of running cells, the approval queue, the decision
/// stream, budgets, and (admins, developers) a form to start a task.
pub(crate) async fn home(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    let Some(s) = session(&app, &headers).await? else {
        return Ok(to_login());
    };
    let watch = has(&s, WATCHERS);
    let tenant = s.caller.tenant.clone();
    let (cells, queue, events, end, definitions) = blocking(&app, move |app| {
        let end = crate::events::end_of_chain(app, tenant.as_str())?;
        let events = if watch {
            app.audit
                .events_from(
                    tenant.as_str(),
                    end.saturating_sub(STREAM_ROWS),
                    STREAM_ROWS,
                )?
                .into_iter()
                .map(|e| e.event)
                .filter(|e| e.seq < end)
                .collect()
        } else {
            Vec::new()
        };
        let queue = if watch {
            pending(app, &tenant)?
        } else {
            Vec::new()
        };
        let definitions = app
            .registry()
            .list(&tenant)?
            .into_iter()
            .map(|v| {
                let d = app
                    .registry()
                    .stored(&tenant, &v.name, Some(v.version))
                    .and_then(|st| st.parse(&app.state_dir, &tenant))
                    .ok();
                (v, d)
            })
            .collect::<Vec<_>>();
        Ok((
            running(app, &tenant, watch),
            queue,
            events,
            end,
            definitions,
        ))
    })
    .await?;

    let mut body = header(&s);
    if has(&s, STARTERS) && !definitions.is_empty() {
        body.push_str(
            "<section><h2>Start a task</h2><form method=\"post\" action=\"/console/tasks\" class=\"start\">",
        );
        let _ = write!(
            body,
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\"><label>Definition <select name=\"agent\">",
            esc(&s.csrf)
        );
        for (v, _) in &definitions {
            let _ = write!(
                body,
                "<option value=\"{0}@{1}\">{0} (version {1}{2})</option>",
                esc(&v.name),
                v.version,
                if v.host { ", host" } else { "" }
            );
        }
        body.push_str(
            "</select></label> <label>Command <input name=\"command\" size=\"50\" required placeholder=\"python3 /workspace/agent.py\"></label> \
<button>Start</button><p class=\"hint\">The command runs in a new cell, acting for you; quote arguments as in a shell.</p></form></section>",
        );
    }
    body.push_str("<section><h2>Running cells</h2><div id=\"canvas\" class=\"canvas\">");
    for c in &cells {
        body.push_str(&cell_html(c));
    }
    let _ = write!(
        body,
        "</div><p id=\"no-cells\" class=\"none\"{}>No task is running.</p></section>",
        if cells.is_empty() { "" } else { " hidden" }
    );
    if watch {
        let decide = has(&s, DECIDERS);
        let _ = write!(
            body,
            "<section><h2>Waiting for approval</h2><table id=\"approvals\" data-decide=\"{}\"><thead><tr><th>user</th><th>agent</th><th>task</th><th>action</th><th>resource</th><th>request</th><th>why</th><th>until</th><th></th></tr></thead><tbody>",
            u8::from(decide)
        );
        for a in &queue {
            body.push_str(&approval_row(a, &s.csrf, decide));
        }
        let _ = write!(
            body,
            "</tbody></table><p id=\"no-approvals\" class=\"none\"{}>Nothing is waiting.</p></section>",
            if queue.is_empty() { "" } else { " hidden" }
        );
        body.push_str("<section><h2>Decision stream</h2>");
        body.push_str(&stream_table(&events, end.checked_sub(1), None));
        body.push_str("</section>");
    }
    body.push_str("<section><h2>Budgets</h2>");
    body.push_str(&budgets_table(&definitions));
    body.push_str("</section>");
    Ok(render(
        StatusCode::OK,
        "Console",
        &body,
        Vec::new(),
        Some(&s.csrf),
    ))
}

/// `GET /console/tasks/{id}`: one task: its card, its decisions (live), its output.
pub(crate) async fn task_page(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ServerError> {
    let Some(s) = session(&app, &headers).await? else {
        return Ok(to_login());
    };
    let (watch, logs) = (has(&s, WATCHERS), has(&s, LOG_READERS));
    let tenant = s.caller.tenant.clone();
    let found = blocking(&app, move |app| {
        let m = crate::api::task_manifest(app, &tenant, &id)?;
        let end = crate::events::end_of_chain(app, tenant.as_str())?;
        let mut events = Vec::new();
        if watch {
            let filter = agentspace_audit::Filter {
                tenant: Some(tenant.to_string()),
                task: Some(id.clone()),
                ..Default::default()
            };
            app.audit.query(&filter, |entry| {
                if entry.event.seq < end {
                    events.push(entry.event);
                }
                Ok(events.len() < TASK_ROWS)
            })?;
        }
        let log = if logs {
            read_tail(app, &id, LOG_TAIL)?
        } else {
            Vec::new()
        };
        Ok((cell(app, &tenant, &m, watch), events, end, log))
    })
    .await;
    let (c, events, end, log) = match found {
        Ok(found) => found,
        Err(e) => {
            return Ok(refusal(e.status(), "Task", &e.to_string(), "/console/"));
        }
    };
    let mut body = header(&s);
    let _ = write!(
        body,
        "<h2>Task {agent}:{task}</h2><div id=\"canvas\" class=\"canvas\" data-task=\"{task}\">{card}</div>",
        agent = esc(&c.agent),
        task = esc(&c.task),
        card = cell_html(&c)
    );
    if c.state == "running" && (c.user == s.caller.user || has(&s, &[Role::Admin])) {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/console/tasks/{}/stop\" class=\"stop\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<button>Stop this task</button> <span class=\"hint\">revokes it (every further action is denied) and ends its cell</span></form>",
            esc(&c.task),
            esc(&s.csrf)
        );
    }
    if watch {
        body.push_str("<section><h2>Decisions</h2>");
        body.push_str(&stream_table(&events, end.checked_sub(1), Some(&c.task)));
        body.push_str("</section>");
    }
    if logs {
        let _ = write!(
            body,
            "<section><h2>Output</h2><pre id=\"log\" class=\"log\" data-task=\"{}\">{}</pre></section>",
            esc(&c.task),
            esc(&String::from_utf8_lossy(&log))
        );
    }
    Ok(render(
        StatusCode::OK,
        "Task",
        &body,
        Vec::new(),
        Some(&s.csrf),
    ))
}

/// The last `want` bytes of a task's stdout (its id checked by `task_manifest`).
fn read_tail(app: &App, id: &str, want: u64) -> Result<Vec<u8>, ServerError> {
    use std::io::{Read, Seek, SeekFrom};
    let path = app.state_dir.join("tasks").join(id).join("stdout.log");
    let Ok(mut f) = std::fs::File::open(&path) else {
        return Ok(Vec::new());
    };
    let io = |e: std::io::Error| ServerError::Io(format!("cannot read `{}`: {e}", path.display()));
    let len = f.metadata().map_err(io)?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(want)))
        .map_err(io)?;
    let mut out = Vec::new();
    f.take(want).read_to_end(&mut out).map_err(io)?;
    Ok(out)
}

// ---------------------------------------------------------------- live data

/// A refusal for the script: JSON with the problem (it goes to the sign-in page on 401).
fn refuse(status: StatusCode, problem: &str) -> Response {
    let mut r = (
        status,
        axum::Json(
            serde_json::json!({"error": problem, "detail": "sign in again at /console/login"}),
        ),
    )
        .into_response();
    harden(r.headers_mut(), super::CSP_STATIC);
    r
}

/// Which task a live request is about (none: the whole tenant).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateQuery {
    task: Option<String>,
}

/// `GET /console/state[?task=ID]`: the running cells (or that one task's card) and the
/// pending approvals, as JSON for the script.
pub(crate) async fn state(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<StateQuery>,
) -> Result<Response, ServerError> {
    let Some(s) = session(&app, &headers).await? else {
        return Ok(refuse(StatusCode::UNAUTHORIZED, "not signed in"));
    };
    let watch = has(&s, WATCHERS);
    let tenant = s.caller.tenant.clone();
    let snapshot = blocking(&app, move |app| {
        let cells = match &q.task {
            Some(id) => vec![cell(
                app,
                &tenant,
                &crate::api::task_manifest(app, &tenant, id)?,
                watch,
            )],
            None => running(app, &tenant, watch),
        };
        let approvals = if watch {
            Some(pending(app, &tenant)?)
        } else {
            None
        };
        Ok(Snapshot { cells, approvals })
    })
    .await?;
    let mut r = axum::Json(snapshot).into_response();
    harden(r.headers_mut(), super::CSP_STATIC);
    Ok(r)
}

/// `GET /console/tasks/{id}/log`: the end of a task's output, as text (admin, auditor,
/// developer).
pub(crate) async fn task_log(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ServerError> {
    let Some(s) = session(&app, &headers).await? else {
        return Ok(refuse(StatusCode::UNAUTHORIZED, "not signed in"));
    };
    s.caller.require(LOG_READERS)?;
    let tenant = s.caller.tenant.clone();
    let log = blocking(&app, move |app| {
        crate::api::task_manifest(app, &tenant, &id)?;
        read_tail(app, &id, LOG_TAIL)
    })
    .await?;
    let mut r = log.into_response();
    let h = r.headers_mut();
    harden(h, super::CSP_STATIC);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(r)
}

/// `GET /console/events[?task=ID&after=SEQ]`: the tenant's audit events as server-sent
/// events for the signed-in session (admin, approver, auditor), as `/v1/events` gives
/// them to API clients, but unnamed so one handler sees every kind.
pub(crate) async fn stream(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<crate::events::EventsQuery>,
) -> Result<Response, ServerError> {
    let Some(s) = session(&app, &headers).await? else {
        return Ok(refuse(StatusCode::UNAUTHORIZED, "not signed in"));
    };
    s.caller.require(WATCHERS)?;
    let key = format!("session:{}", s.hash);
    let follower = crate::events::Follower::Session(headers.clone());
    let mut r = crate::events::stream(app, s.caller, &headers, q, false, follower, &key)
        .await?
        .into_response();
    harden(r.headers_mut(), super::CSP_STATIC);
    Ok(r)
}

/// `GET /console/approvals/{id}`: one approval with everything it was held with — the
/// whole request (secrets redacted), the policies, the budget state — and, while it is
/// pending, approve and deny for those who may decide (admin, approver; four-eyes is
/// checked when deciding). Admins, approvers and auditors of its tenant only.
pub(crate) async fn approval_page(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ServerError> {
    let Some(s) = session(&app, &headers).await? else {
        return Ok(to_login());
    };
    if !has(&s, WATCHERS) {
        return Ok(refusal(
            StatusCode::FORBIDDEN,
            "Approval",
            "approvals are shown to admins, approvers and auditors",
            "/console/",
        ));
    }
    let tenant = s.caller.tenant.clone();
    let found = blocking(&app, move |app| app.approvals.get(&tenant, &id)).await;
    let a = match found {
        Ok(a) => a,
        Err(e) => return Ok(refusal(e.status(), "Approval", &e.to_string(), "/console/")),
    };
    let c = &a.context;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let mut body = header(&s);
    let _ = write!(
        body,
        "<h2>Approval {id}</h2><table class=\"detail\">\
<tr><th>state</th><td>{state}</td></tr><tr><th>user (the agent acts for)</th><td>{user}</td></tr>\
<tr><th>agent</th><td>{agent}</td></tr><tr><th>task</th><td><a href=\"/console/tasks/{task}\">{task}</a></td></tr>\
<tr><th>action</th><td>{action}</td></tr><tr><th>resource</th><td><code>{resource}</code></td></tr>\
<tr><th>why</th><td>{reason}</td></tr><tr><th>policies</th><td>{policies}</td></tr>\
<tr><th>until</th><td>{until}</td></tr></table>\
<h3>The whole request</h3><pre class=\"request\">{request}</pre>\
<h3>Budget when held</h3><pre>{budget}</pre>",
        id = esc(&a.id),
        state = esc(&format!("{:?}", a.state).to_lowercase()),
        user = esc(&c.user),
        agent = esc(c.agent.as_deref().unwrap_or("-")),
        task = esc(c.task.as_deref().unwrap_or("")),
        action = esc(&c.action),
        resource = esc(&visible(&c.resource)),
        reason = esc(c.reason.as_deref().unwrap_or("-")),
        policies = esc(&c.policies.join(", ")),
        until = esc(&a.expires_at),
        request = esc(&visible(&pretty(&serde_json::Value::Object(
            c.request.clone()
        )))),
        budget = esc(&c.budget.as_ref().map_or_else(|| "-".to_owned(), pretty)),
    );
    if a.state == ApprovalState::Pending && has(&s, DECIDERS) {
        for (verb, label) in [("approve", "Approve"), ("deny", "Deny")] {
            let _ = write!(
                body,
                "<form class=\"inline\" method=\"post\" action=\"/console/approvals/{}/{verb}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input name=\"comment\" placeholder=\"comment\" size=\"30\">\
<button>{label}</button></form> ",
                esc(&a.id),
                esc(&s.csrf)
            );
        }
    }
    Ok(render(
        StatusCode::OK,
        "Approval",
        &body,
        Vec::new(),
        Some(&s.csrf),
    ))
}

/// `text` with invisible and direction-changing characters shown as `<U+XXXX>`, so
/// that a name such as `evil\u{202e}moc.example` cannot pass for another.
fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hidden = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
            || (c.is_control() && c != '\n' && c != '\t');
        if hidden {
            let _ = write!(out, "<U+{:04X}>", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------- starting a task

/// The start form's fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartForm {
    /// Missing is refused like wrong (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
    /// `name@version`, as the form's options carry them.
    agent: String,
    /// The command line, split like a POSIX shell does (quotes and backslashes).
    command: String,
}

/// `POST /console/tasks`: starts a task of a registered definition acting for the
/// signed-in user (admin, developer), through the same runner as `POST /v1/tasks`.
pub(crate) async fn start_task(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<StartForm>,
) -> Result<Response, ServerError> {
    let s = match form_session(&app, &headers, &form.csrf).await? {
        Ok(s) => s,
        Err(answer) => return Ok(answer),
    };
    let refused =
        |status: StatusCode, message: &str| refusal(status, "Refused", message, "/console/");
    if s.caller.require(STARTERS).is_err() {
        return Ok(refused(
            StatusCode::FORBIDDEN,
            "starting a task needs the admin or developer role",
        ));
    }
    let (agent, version) = match form.agent.rsplit_once('@') {
        Some((name, v)) => match v.parse::<u32>() {
            Ok(v) => (name.to_owned(), Some(v)),
            Err(_) => {
                return Ok(refused(
                    StatusCode::BAD_REQUEST,
                    "the definition field is not `name@version`",
                ));
            }
        },
        None => (form.agent.clone(), None),
    };
    let Some(command) = shlex::split(&form.command) else {
        return Ok(refused(
            StatusCode::BAD_REQUEST,
            "the command has an unclosed quote; close it, or escape the quote with a backslash",
        ));
    };
    let caller = s.caller;
    let started = blocking(&app, move |app| {
        crate::api::start_registered(app, &caller, &agent, version, &command)
    })
    .await;
    match started {
        Ok(t) => Ok(see_other(&format!("/console/tasks/{}", t.task))),
        Err(ServerError::Definition(problems)) => {
            let mut body = String::from(
                "<p class=\"err\">The task was not started: its definition is refused here.</p><ul>",
            );
            for p in problems {
                let _ = write!(
                    body,
                    "<li><code>{}</code>: {}</li>",
                    esc(p.field.as_deref().unwrap_or("-")),
                    esc(&p.message)
                );
            }
            body.push_str("</ul><p><a href=\"/console/\">Back</a></p>");
            Ok(page(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Refused",
                &body,
                Vec::new(),
            ))
        }
        Err(e) => Ok(refused(e.status(), &e.to_string())),
    }
}

/// `POST /console/tasks/{id}/stop`: stops a task (admin, or the user it acts for), as
/// `POST /v1/tasks/{id}/stop` does.
pub(crate) async fn stop_task(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<super::ActionForm>,
) -> Result<Response, ServerError> {
    let s = match form_session(&app, &headers, &form.csrf).await? {
        Ok(s) => s,
        Err(answer) => return Ok(answer),
    };
    let caller = s.caller;
    let task = id.clone();
    match blocking(&app, move |app| crate::api::stop(app, &caller, &task)).await {
        Ok(_) => Ok(see_other(&format!("/console/tasks/{id}"))),
        Err(e) => Ok(refusal(e.status(), "Refused", &e.to_string(), "/console/")),
    }
}
