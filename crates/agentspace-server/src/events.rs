//! `GET /v1/events`: the tenant's audit events as server-sent events, as they are
//! appended — by this server, the gateway, or any `agentspace run` sharing the store.
//!
//! The stream polls the tenant's chain from the next sequence number (every 250 ms when
//! idle), so it sees writes from other processes too, and resumes after a reconnect
//! from `Last-Event-ID` (the sequence number) without losing or repeating an event.
//!
//! A stream is not a way around signing out or revoking: the caller's token or session
//! is checked again every few seconds and the stream ends once it no longer holds (or
//! lost its role); every stream ends after ten minutes anyway (clients reconnect with
//! `Last-Event-ID`, losing nothing), and a caller may hold only a few at once, so
//! streams cannot use up the server's connections.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentspace_core::Name;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::{AppState, blocking};
use crate::auth::{Caller, Role};
use crate::error::ServerError;
use crate::extract::Query;

const IDLE: Duration = Duration::from_millis(250);
const PAGE: u64 = 512;
/// How often a stream checks that its caller may still follow it.
const RECHECK: Duration = Duration::from_secs(5);
/// The longest a stream lives before the client must reconnect (and be checked anew).
const MAX_LIFE: Duration = Duration::from_secs(600);
/// Streams one token or console session may hold at once.
const PER_CALLER: usize = 8;
/// Streams the server holds at once (well below its connection limit).
const IN_ALL: usize = 256;

/// Who follows a stream: checked again while it runs.
pub(crate) enum Follower {
    /// An API caller with this bearer token.
    Token(String),
    /// A console session, by the request's headers (its cookie).
    Session(HeaderMap),
}

impl Follower {
    /// Whether the token or session still authenticates a user who may follow streams.
    async fn still_allowed(&self, app: &AppState) -> bool {
        match self {
            Self::Token(token) => {
                let token = token.clone();
                blocking(app, move |app| app.accounts().authenticate(&token))
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|c| c.require(EVENT_READERS).is_ok())
            }
            Self::Session(headers) => crate::console::session(app, headers)
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.caller.require(EVENT_READERS).is_ok()),
        }
    }
}

/// The streams open now, by caller (a token id or a session's hash).
#[derive(Debug, Default)]
pub(crate) struct StreamSlots {
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream's place; given back when the stream ends.
struct Slot {
    slots: Arc<StreamSlots>,
    key: String,
}

impl StreamSlots {
    fn take(self: &Arc<Self>, key: &str) -> Result<Slot, ServerError> {
        let busy = || {
            ServerError::too_many(
                "too many event streams are open",
                format!(
                    "close another stream of this caller (at most {PER_CALLER}) and reconnect; the server holds at most {IN_ALL} in all"
                ),
            )
        };
        let mut open = self.open.lock().map_err(|_| busy())?;
        let total: usize = open.values().sum();
        let mine = open.entry(key.to_owned()).or_default();
        if *mine >= PER_CALLER || total >= IN_ALL {
            return Err(busy());
        }
        *mine += 1;
        Ok(Slot {
            slots: Arc::clone(self),
            key: key.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.open.lock()
            && let Some(n) = open.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Which events to stream; the tenant is always the caller's.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Only this task.
    task: Option<String>,
    /// Only this agent.
    agent: Option<String>,
    /// Start after this sequence number (default: the current end). A `Last-Event-ID`
    /// header (a reconnecting client) takes precedence.
    after: Option<u64>,
}

struct Cursor {
    app: AppState,
    tenant: Name,
    task: Option<String>,
    agent: Option<String>,
    named: bool,
    next: u64,
    ready: VecDeque<Event>,
    fetched_once: bool,
    done: bool,
    follower: Follower,
    started: Instant,
    checked: Instant,
    _slot: Slot,
}

/// The next sequence number of `tenant`'s chain (its length).
pub(crate) fn end_of_chain(app: &crate::api::App, tenant: &str) -> Result<u64, ServerError> {
    Ok(app.audit.chain_len(tenant)?)
}

async fn next_event(mut c: Cursor) -> Option<(Result<Event, Infallible>, Cursor)> {
    loop {
        if c.done {
            return None;
        }
        if let Some(event) = c.ready.pop_front() {
            return Some((Ok(event), c));
        }
        if c.fetched_once {
            tokio::time::sleep(IDLE).await;
        }
        c.fetched_once = true;
        if c.started.elapsed() >= MAX_LIFE {
            // The client reconnects with Last-Event-ID and is authenticated anew.
            return None;
        }
        if c.checked.elapsed() >= RECHECK {
            if !c.follower.still_allowed(&c.app).await {
                c.done = true;
                return Some((
                    Ok(Event::default()
                        .event("error")
                        .data("the session or token ended, or lost the role; sign in again")),
                    c,
                ));
            }
            c.checked = Instant::now();
        }
        let (tenant, from) = (c.tenant.to_string(), c.next);
        let page = blocking(&c.app, move |app| {
            Ok(app.audit.events_from(&tenant, from, PAGE)?)
        })
        .await;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                // Tell the client, then end the stream; it reconnects with Last-Event-ID.
                c.done = true;
                return Some((Ok(Event::default().event("error").data(e.to_string())), c));
            }
        };
        for entry in page {
            c.next = entry.event.seq + 1;
            let wanted = c
                .task
                .as_ref()
                .is_none_or(|t| entry.event.task.as_ref() == Some(t))
                && c.agent
                    .as_ref()
                    .is_none_or(|a| entry.event.agent.as_ref() == Some(a));
            if !wanted {
                continue;
            }
            let json = agentspace_audit::to_jsonl(&entry);
            let mut event = Event::default()
                .id(entry.event.seq.to_string())
                .data(json.to_string());
            if c.named {
                event = event.event(entry.event.kind.as_str());
            }
            c.ready.push_back(event);
        }
    }
}

/// Streams the tenant's audit events (decisions, lifecycle, approvals, admin changes)
/// as they are appended; each event's id is its sequence number, its type its kind, its
/// data the event as exported (admin, approver, auditor).
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("bearer" = [])), params(EventsQuery),
    responses((status = 200, body = String, content_type = "text/event-stream"), (status = 403, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody)))]
pub(crate) async fn events(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ServerError> {
    caller.require(EVENT_READERS)?;
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let key = format!("token:{}", caller.token_id);
    stream(app, caller, &headers, q, true, Follower::Token(token), &key).await
}

/// The roles that may follow the event stream (API and console alike).
pub(crate) const EVENT_READERS: &[Role] = &[Role::Admin, Role::Approver, Role::Auditor];

/// How far back from the end of the chain a caller who may not read the audit log
/// (an approver) may start a stream: enough to resume after a reconnect or a stream's
/// ten-minute end (10 s of a tenant deciding 1,000 requests a second), not a way to
/// read the tenant's history, which takes admin or auditor (`GET /v1/audit/events`).
pub(crate) const RESUME_WINDOW: u64 = 10_000;

/// The stream of `tenant`'s events for a caller already authenticated and allowed;
/// each SSE event is named by the audit event's kind when `named` (the API), else
/// unnamed, so a browser's one `message` handler sees every kind (the console).
pub(crate) async fn stream(
    app: AppState,
    caller: Caller,
    headers: &HeaderMap,
    q: EventsQuery,
    named: bool,
    follower: Follower,
    key: &str,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, ServerError> {
    let slot = app.streams.take(key)?;
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // A reconnecting EventSource repeats its URL (with any `after=`) and adds the id it
    // saw last: that one is the newer position.
    let tenant = caller.tenant.clone();
    let end = || {
        let tenant = tenant.to_string();
        blocking(&app, move |app| end_of_chain(app, &tenant))
    };
    let next = match last_id.or(q.after) {
        None => end().await?,
        Some(seq) => {
            let next = seq.saturating_add(1);
            if caller.require(crate::api::AUDIT_READERS).is_err() {
                let end = end().await?;
                if end.saturating_sub(next) > RESUME_WINDOW {
                    return Err(ServerError::forbidden(
                        format!(
                            "a stream may start at most {RESUME_WINDOW} events before the end of the log (event {end}) for a caller without the admin or auditor role; event {next} is further back"
                        ),
                        "reconnect without `after` (or Last-Event-ID) to follow from now on; reading the log's history takes the admin or auditor role (GET /v1/audit/events)",
                    ));
                }
            }
            next
        }
    };
    let cursor = Cursor {
        app,
        tenant,
        task: q.task,
        agent: q.agent,
        named,
        next,
        ready: VecDeque::new(),
        fetched_once: false,
        done: false,
        follower,
        started: Instant::now(),
        checked: Instant::now(),
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(cursor, next_event);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
