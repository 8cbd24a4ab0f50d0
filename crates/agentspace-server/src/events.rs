//! `GET /v1/events`: the tenant's audit events as server-sent events, as they are
//! appended — by this server, the gateway, or any `agentspace run` sharing the store.
//!
//! The stream polls the tenant's chain from the next sequence number (every 250 ms when
//! idle), so it sees writes from other processes too, and resumes after a reconnect
//! from `Last-Event-ID` (the sequence number) without losing or repeating an event.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

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

/// Which events to stream; the tenant is always the caller's.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Only this task.
    task: Option<String>,
    /// Only this agent.
    agent: Option<String>,
    /// Start after this sequence number (default: the current end, or `Last-Event-ID`).
    after: Option<u64>,
}

struct Cursor {
    app: AppState,
    tenant: Name,
    task: Option<String>,
    agent: Option<String>,
    next: u64,
    ready: VecDeque<Event>,
    fetched_once: bool,
    done: bool,
}

/// The next sequence number of `tenant`'s chain (its length).
fn end_of_chain(app: &crate::api::App, tenant: &str) -> Result<u64, ServerError> {
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
            let event = Event::default()
                .id(entry.event.seq.to_string())
                .event(entry.event.kind.as_str())
                .data(json.to_string());
            c.ready.push_back(event);
        }
    }
}

/// Streams the tenant's audit events (decisions, lifecycle, approvals, admin changes)
/// as they are appended; each event's id is its sequence number, its type its kind, its
/// data the event as exported (admin, approver, auditor).
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("bearer" = [])), params(EventsQuery),
    responses((status = 200, body = String, content_type = "text/event-stream"), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn events(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ServerError> {
    caller.require(&[Role::Admin, Role::Approver, Role::Auditor])?;
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let next = match q.after.or(last_id) {
        Some(seq) => seq.saturating_add(1),
        None => {
            let tenant = caller.tenant.to_string();
            blocking(&app, move |app| end_of_chain(app, &tenant)).await?
        }
    };
    let cursor = Cursor {
        app,
        tenant: caller.tenant,
        task: q.task,
        agent: q.agent,
        next,
        ready: VecDeque::new(),
        fetched_once: false,
        done: false,
    };
    let stream = futures_util::stream::unfold(cursor, next_event);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
