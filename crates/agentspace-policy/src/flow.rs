//! Data-flow rules as taint: the labels a task's session has read, and whether a
//! destination is cleared for all of them.
//!
//! A tool server's `labels` taint the session once one of its results comes back
//! ([`crate::PolicyEngine::taint`]); the gateway may add labels it finds in a request's
//! own content (`context.labels`). From then on every MCP call and HTTP request of the
//! task goes only to destinations (tool servers, egress rules) cleared for every label:
//! named in `spec.flows[].mayFlowTo`, listed in the server's `clearedFor`, or the
//! server the label came from. Anything else is denied with reason `flow`. Taint never
//! decreases within a task: it is order-independent, not a trace of who read what. It is
//! kept in SQLite (`<state>/policy/taint.db`), and a task inherits the taint of the
//! tasks that started it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use agentspace_core::{Principal, Tools};
use rusqlite::{Connection, params_from_iter};

use crate::decision::{Decision, DenyReason};
use crate::error::PolicyError;
use crate::evaluate::describe;
use crate::request::{Action, Request};
use crate::store;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS taint (
  tenant   TEXT NOT NULL,
  task     TEXT NOT NULL,
  label    TEXT NOT NULL,
  since_ms INTEGER NOT NULL,
  PRIMARY KEY (tenant, task, label)
) WITHOUT ROWID;
";

/// Per task: the labels its session has read, in `<state>/policy/taint.db`, so that a
/// gateway restarted, or a second gateway of the same task, knows them too. A task's
/// session carries its own labels and those of every task in its delegation chain: an
/// agent started by a tainted agent is tainted (what the parent read, it may pass on).
pub(crate) struct Taint {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Writes from every process queue here before the write transaction.
    writers: store::WriterQueue,
}

impl std::fmt::Debug for Taint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taint").field("path", &self.path).finish()
    }
}

fn unavailable() -> PolicyError {
    PolicyError::Taint("a thread panicked while holding it".to_owned())
}

impl Taint {
    pub(crate) fn open(state_dir: &Path) -> Result<Self, PolicyError> {
        let path = store::policy_dir(state_dir)?.join("taint.db");
        let conn = store::open(&path, SCHEMA)?;
        Ok(Self {
            writers: store::WriterQueue::for_db(&path),
            path,
            conn: Mutex::new(conn),
        })
    }

    /// Adds `labels` to the session of `principal`'s task (durably, before it returns);
    /// returns those that were new to the session.
    pub(crate) fn add(
        &self,
        principal: &Principal,
        labels: impl IntoIterator<Item = String>,
    ) -> Result<BTreeSet<String>, PolicyError> {
        let known = self.labels(principal)?;
        let new: BTreeSet<String> = labels.into_iter().filter(|l| !known.contains(l)).collect();
        if new.is_empty() {
            // Labels only grow: nothing to write (the common case, a source read again).
            return Ok(new);
        }
        let fail = |e: rusqlite::Error| PolicyError::state(&self.path, e);
        let _turn = self.writers.turn();
        let mut conn = self.conn.lock().map_err(|_| unavailable())?;
        let tx = conn.transaction().map_err(fail)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO taint (tenant, task, label, since_ms) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(fail)?;
            let now = store::unix_millis();
            for label in &new {
                insert
                    .execute(rusqlite::params![
                        principal.tenant().as_str(),
                        principal.current().task.as_str(),
                        label,
                        now
                    ])
                    .map_err(fail)?;
            }
        }
        tx.commit().map_err(fail)?;
        Ok(new)
    }

    /// The labels of the session: those of the task and of every task that started it.
    pub(crate) fn labels(&self, principal: &Principal) -> Result<BTreeSet<String>, PolicyError> {
        let fail = |e: rusqlite::Error| PolicyError::state(&self.path, e);
        let mut tasks: Vec<&str> = principal
            .delegators()
            .iter()
            .map(|a| a.task.as_str())
            .collect();
        tasks.push(principal.current().task.as_str());
        let marks = vec!["?"; tasks.len()].join(", ");
        let sql =
            format!("SELECT DISTINCT label FROM taint WHERE tenant = ? AND task IN ({marks})");
        let conn = self.conn.lock().map_err(|_| unavailable())?;
        let mut select = conn.prepare_cached(&sql).map_err(fail)?;
        let args = std::iter::once(principal.tenant().as_str()).chain(tasks);
        let rows = select
            .query_map(params_from_iter(args), |row| row.get::<_, String>(0))
            .map_err(fail)?;
        rows.collect::<Result<BTreeSet<String>, _>>().map_err(fail)
    }

    /// `request` with the session's labels added to `context.labels`; `None` when the
    /// session has none the request lacks.
    pub(crate) fn with_session_labels(
        &self,
        request: &Request,
    ) -> Result<Option<Request>, PolicyError> {
        let session = self.labels(&request.principal)?;
        if session.is_subset(&request.context.labels) {
            return Ok(None);
        }
        let mut merged = request.clone();
        merged.context.labels.extend(session);
        Ok(Some(merged))
    }
}

/// The flow check of an allowed request: every label in `context.labels` must be
/// cleared for each destination the request reaches (the tool server of an MCP call;
/// the capabilities an HTTP request was allowed under). DNS lookups and spawns carry no
/// data of the session and are not checked.
pub(crate) fn check(
    tools: &Tools,
    request: &Request,
    capabilities: &[String],
    approved: bool,
) -> Option<Decision> {
    let labels = &request.context.labels;
    if labels.is_empty() {
        return None;
    }
    let destinations: Vec<&str> = match &request.action {
        // A server's request: the client's answer goes to the server.
        Action::Mcp | Action::McpResource | Action::McpPrompt | Action::McpServerRequest { .. } => {
            vec![request.resource.server.as_deref().unwrap_or_default()]
        }
        Action::Dns | Action::Spawn => return None,
        _ => capabilities.iter().map(String::as_str).collect(),
    };
    let what = describe(request);
    if destinations.is_empty() {
        // Allowed by a policy that names no capability: nothing can clear it.
        return Some(Decision::deny(
            DenyReason::Flow,
            format!(
                "{what} is denied: the session carries {} and the destination is no egress rule or tool server a flow rule can clear",
                list(labels)
            ),
        ));
    }
    for dest in destinations {
        let uncleared: BTreeSet<String> = labels
            .iter()
            .filter(|l| !tools.cleared(dest, l))
            .cloned()
            .collect();
        if uncleared.is_empty() {
            continue;
        }
        // Every uncleared label's rule may send the request for approval instead: the
        // longest of their timeouts holds it; once a person approved, it goes on.
        let holds: Option<Vec<std::time::Duration>> = uncleared
            .iter()
            .map(|l| {
                tools
                    .flows
                    .iter()
                    .find(|f| &f.label == l)
                    .and_then(|f| f.approval)
            })
            .collect();
        if let Some(timeouts) = holds {
            if approved {
                continue;
            }
            let message = format!(
                "{what} needs approval: the session carries {} and `{dest}` is not cleared for it",
                list(&uncleared)
            );
            return Some(Decision::ApprovalRequired {
                policies: uncleared.iter().map(|l| format!("flow.{l}")).collect(),
                prompt: message.clone(),
                timeout: timeouts.into_iter().max().unwrap_or_default(),
                message,
            });
        }
        return Some(Decision::deny(
            DenyReason::Flow,
            format!(
                "{what} is denied: the session carries {} and `{dest}` is not cleared for it (spec.flows[].mayFlowTo, spec.tools[].clearedFor)",
                list(&uncleared)
            ),
        ));
    }
    None
}

fn list(labels: &BTreeSet<String>) -> String {
    let named: Vec<String> = labels.iter().map(|l| format!("`{l}`")).collect();
    format!("data labelled {}", named.join(", "))
}
