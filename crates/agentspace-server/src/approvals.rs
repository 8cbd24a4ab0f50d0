//! Human approvals: a held action's record, persisted before anyone is asked, decided by
//! a person (with four-eyes when the definition says so) or by its timeout, every step in
//! the tenant's audit log.
//!
//! The gateway calls [`ApprovalStore::request`] when a decision is approval-required and
//! then [`ApprovalStore::wait`]; the API calls [`ApprovalStore::decide`]. Records live in
//! the control-plane database, so a restart loses nothing: a pending approval stays
//! pending until it is decided or its deadline passes.

use std::sync::Arc;
use std::time::Duration;

use agentspace_audit::AuditLog;
use agentspace_core::{AuditDecision, AuditEvent, AuditKind, Name};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::error::ServerError;
use crate::store::{Conn, Db, Row, format_ms, now_ms, random_hex};

/// Everything an approver needs to decide: who, what, which policy, the request summary
/// and the budget state. Kept with the approval and in its audit event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalContext {
    /// The tenant.
    #[schema(value_type = String)]
    pub tenant: Name,
    /// The user the agent acts for (the requester, for four-eyes).
    pub user: String,
    /// The task that is held.
    #[serde(default)]
    pub task: Option<String>,
    /// The agent (definition name).
    #[serde(default)]
    pub agent: Option<String>,
    /// The action (`GET`, `tools/call`, ...).
    pub action: String,
    /// What the action is on (a URL, an MCP tool).
    pub resource: String,
    /// The policies that asked for approval.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Why approval is needed, in words.
    #[serde(default)]
    pub reason: Option<String>,
    /// The request summary, secrets redacted.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub request: serde_json::Map<String, serde_json::Value>,
    /// The budget state when the request was held.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub budget: Option<serde_json::Value>,
    /// Whether the requesting user is barred from approving it.
    #[serde(default)]
    pub four_eyes: bool,
    /// How long the approval may wait before it is denied, in seconds.
    pub timeout_secs: u64,
}

/// Where an approval is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for a person.
    Pending,
    /// A person approved it.
    Approved,
    /// A person denied it.
    Denied,
    /// Nobody decided before the deadline: denied.
    TimedOut,
}

impl ApprovalState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::TimedOut => "timed_out",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "timed_out" => Self::TimedOut,
            // Anything unexpected is a deny (fail closed).
            _ => Self::Denied,
        }
    }
}

/// A person's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Let the held action proceed.
    Approve,
    /// Refuse it (the held request gets a 403).
    Deny,
}

/// One approval as stored.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Approval {
    /// The approval's id.
    pub id: String,
    /// Where it is.
    pub state: ApprovalState,
    /// What is held.
    pub context: ApprovalContext,
    /// Who decided, once decided by a person.
    pub approver: Option<String>,
    /// The approver's comment.
    pub comment: Option<String>,
    /// When it was requested.
    pub requested_at: String,
    /// When it is denied if nobody decides.
    pub expires_at: String,
    /// When it was decided.
    pub decided_at: Option<String>,
}

/// What [`ApprovalStore::wait`] saw.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// Decided (approved, denied or timed out).
    Decided(Box<Approval>),
    /// Still pending when the wait ended; the caller may wait again.
    Pending,
}

/// The approval store; cheap to clone, one per process.
#[derive(Clone)]
pub struct ApprovalStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Db>,
    audit: AuditLog,
    decided: Notify,
}

/// Longest comment kept.
const MAX_COMMENT: usize = 4096;

/// How often a waiter re-reads the database (decisions made by another process: the
/// control plane deciding for a task that `agentspace run` serves). At 500 ms this was
/// most of an approval's round trip under bench/serve.sh; one indexed read per held
/// request every 100 ms costs little next to what holding a request costs.
const POLL: Duration = Duration::from_millis(100);

/// The columns [`to_approval`] reads, in order.
pub(crate) const COLUMNS: &str =
    "id, context, state, approver, comment, requested_at, expires_at, decided_at";

/// An approval from a row of [`COLUMNS`].
pub(crate) fn to_approval(row: &Row) -> Result<Approval, ServerError> {
    let id = row.text(0)?;
    let context: ApprovalContext = serde_json::from_str(&row.text(1)?).map_err(|e| {
        ServerError::Io(format!(
            "approval `{id}` has a malformed stored context: {e}"
        ))
    })?;
    Ok(Approval {
        state: ApprovalState::parse(&row.text(2)?),
        context,
        approver: row.opt_text(3)?,
        comment: row.opt_text(4)?,
        requested_at: format_ms(row.int(5)?),
        expires_at: format_ms(row.int(6)?),
        decided_at: row.opt_int(7)?.map(format_ms),
        id,
    })
}

fn not_found(tenant: &Name, id: &str) -> ServerError {
    ServerError::not_found(
        format!("tenant `{tenant}` has no approval `{id}`"),
        "list pending approvals with GET /v1/approvals",
    )
}

impl ApprovalStore {
    pub(crate) fn new(db: Arc<Db>, audit: AuditLog) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                audit,
                decided: Notify::new(),
            }),
        }
    }

    /// The control database (for the gateway's desk).
    pub(crate) fn db(&self) -> &Arc<Db> {
        &self.inner.db
    }

    /// Persists a held action and records `approval_requested` in the audit log;
    /// returns the id. The record is stored first in state `opening`, which nothing
    /// lists, decides, announces or expires; it turns `pending` only once the event is
    /// durable. So whoever reads the event (an approver following the stream) finds the
    /// approval ready to decide, and no decision is made or announced before the
    /// request is on record. If the log refuses the event, the record is removed and
    /// the caller must deny.
    pub fn request(&self, context: ApprovalContext) -> Result<String, ServerError> {
        let id = random_hex::<16>()?;
        let now = now_ms();
        let timeout_ms =
            i64::try_from(context.timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let expires = now.saturating_add(timeout_ms);
        let mut event = base_event(&context, AuditKind::ApprovalRequested, "request");
        event.decision = Some(AuditDecision::ApprovalRequired);
        event.policies = context.policies.clone();
        event.reason = context.reason.clone();
        event.request = context.request.clone();
        event.details.insert("approval".into(), id.clone().into());
        event
            .details
            .insert("four_eyes".into(), context.four_eyes.into());
        event
            .details
            .insert("expires_at".into(), format_ms(expires).into());
        if let Some(budget) = &context.budget {
            event.details.insert("budget".into(), budget.clone());
        }
        let text = serde_json::to_string(&context)
            .map_err(|e| ServerError::Io(format!("cannot encode the approval context: {e}")))?;
        let digest = context
            .request
            .get("digest")
            .and_then(|d| d.as_str())
            .map(str::to_owned);
        self.inner.db.run(|c| {
            c.execute(
                "INSERT INTO approval (id, tenant, requester, task, agent, context, four_eyes, state, requested_at, expires_at, digest)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'opening', $8, $9, $10)",
                &[
                    &id,
                    &context.tenant.as_str(),
                    &context.user,
                    &context.task,
                    &context.agent,
                    &text,
                    &context.four_eyes,
                    &now,
                    &expires,
                    &digest,
                ],
            )
        })?;
        if let Err(e) = self.inner.audit.append(event) {
            // Not on record, so not held: the caller denies. A failure to remove the
            // row leaves it `opening`, invisible, and removed once overdue.
            let _ = self.inner.db.run(|c| {
                c.execute(
                    "DELETE FROM approval WHERE id = $1 AND state = 'opening'",
                    &[&id],
                )
            });
            return Err(e.into());
        }
        let opened = self.inner.db.run(|c| {
            c.execute(
                "UPDATE approval SET state = 'pending' WHERE id = $1 AND state = 'opening'",
                &[&id],
            )
        })?;
        if opened == 0 {
            // Its deadline passed while the event was being written, and the row was
            // cleared: nobody can decide it now.
            return Err(ServerError::conflict(
                format!("approval `{id}` expired before its request was on record"),
                "retry the request; if this recurs, the audit log is slower than the rule's approval timeout",
            ));
        }
        Ok(id)
    }

    /// One approval of `tenant`.
    pub fn get(&self, tenant: &Name, id: &str) -> Result<Approval, ServerError> {
        let row = self.inner.db.run(|c| select(c, tenant, id))?;
        to_approval(&row.ok_or_else(|| not_found(tenant, id))?)
    }

    /// `tenant`'s approvals in `state` (every state when `None`), oldest first, at most
    /// `limit`.
    pub fn list(
        &self,
        tenant: &Name,
        state: Option<ApprovalState>,
        limit: u32,
    ) -> Result<Vec<Approval>, ServerError> {
        let rows = self.inner.db.run(|c| {
            c.query(
                &format!(
                    "SELECT {COLUMNS} FROM approval WHERE tenant = $1 AND state <> 'opening' AND (CAST($2 AS TEXT) IS NULL OR state = $2)
                     ORDER BY requested_at, id LIMIT $3"
                ),
                &[
                    &tenant.as_str(),
                    &state.map(ApprovalState::as_str),
                    &i64::from(limit),
                ],
            )
        })?;
        rows.iter().map(to_approval).collect()
    }

    /// A person's decision. The outcome, approver and comment are recorded in the audit
    /// log before the decision is committed; a held request sees it at once.
    ///
    /// Refused (403) when four-eyes applies and `approver` is the requesting user;
    /// (409) when the approval was decided already or its deadline has passed.
    pub fn decide(
        &self,
        tenant: &Name,
        id: &str,
        approver: &str,
        outcome: Outcome,
        comment: &str,
    ) -> Result<Approval, ServerError> {
        if comment.len() > MAX_COMMENT {
            return Err(ServerError::bad_request(
                format!("the comment is longer than {MAX_COMMENT} bytes"),
                "shorten the comment",
            ));
        }
        let approval = self.inner.db.transaction(tenant.as_str(), |tx| {
            let row = select(tx, tenant, id)?.ok_or_else(|| not_found(tenant, id))?;
            let mut approval = to_approval(&row)?;
            let decided = |state: ApprovalState| {
                ServerError::conflict(
                    format!(
                        "approval `{id}` is {} already",
                        state.as_str().replace('_', " ")
                    ),
                    "nothing to do: a decided approval cannot be changed",
                )
            };
            if approval.state != ApprovalState::Pending {
                return Err(decided(approval.state));
            }
            let now = now_ms();
            if now >= row.int(6)? {
                return Err(ServerError::conflict(
                    format!("approval `{id}` passed its deadline and is denied"),
                    "the agent may retry the request, which asks for a new approval",
                ));
            }
            if approval.context.four_eyes && approval.context.user == approver {
                return Err(ServerError::forbidden(
                    format!(
                        "user `{approver}` requested approval `{id}` and cannot decide it: the definition requires a second person (four-eyes)"
                    ),
                    "ask another approver of the tenant",
                ));
            }
            let state = match outcome {
                Outcome::Approve => ApprovalState::Approved,
                Outcome::Deny => ApprovalState::Denied,
            };
            let changed = tx.execute(
                "UPDATE approval SET state = $2, approver = $3, comment = $4, decided_at = $5 WHERE id = $1 AND state = 'pending'",
                &[&id, &state.as_str(), &approver, &comment, &now],
            )?;
            if changed != 1 {
                // Only possible if a writer skipped the tenant's lock; refuse all the same.
                return Err(ServerError::conflict(
                    format!("approval `{id}` was decided by someone else just now"),
                    "nothing to do: a decided approval cannot be changed",
                ));
            }
            let (kind, action) = match outcome {
                Outcome::Approve => (AuditKind::ApprovalGranted, "approve"),
                Outcome::Deny => (AuditKind::ApprovalDenied, "deny"),
            };
            let mut event = base_event(&approval.context, kind, action);
            event.decision = Some(match outcome {
                Outcome::Approve => AuditDecision::Allow,
                Outcome::Deny => AuditDecision::Deny,
            });
            if outcome == Outcome::Deny {
                event.reason = Some(format!("denied by `{approver}`"));
            }
            event.details.insert("approval".into(), id.into());
            event.details.insert("approver".into(), approver.into());
            event.details.insert("comment".into(), comment.into());
            // Audit before the decision takes effect: if the log refuses, roll back.
            self.inner.audit.append(event)?;
            approval.state = state;
            approval.approver = Some(approver.to_owned());
            approval.comment = Some(comment.to_owned());
            approval.decided_at = Some(format_ms(now));
            Ok(approval)
        })?;
        self.inner.decided.notify_waiters();
        Ok(approval)
    }

    /// Denies every pending approval whose deadline has passed (audited as
    /// `approval_denied` with reason `timeout`); returns how many.
    pub fn expire_overdue(&self) -> Result<usize, ServerError> {
        let now = now_ms();
        // Requests whose event never became durable (their process died in between):
        // never held, never shown; only their rows remain. Looked for with a read, so
        // the sweep takes no write lock while there are none (almost always).
        let stale = self.inner.db.run(|c| {
            c.query(
                "SELECT id FROM approval WHERE state = 'opening' AND expires_at <= $1",
                &[&now],
            )
        })?;
        for row in stale {
            let id = row.text(0)?;
            self.inner.db.run(|c| {
                c.execute(
                    "DELETE FROM approval WHERE id = $1 AND state = 'opening'",
                    &[&id],
                )
            })?;
        }
        let overdue = self.inner.db.run(|c| {
            c.query(
                &format!(
                    "SELECT {COLUMNS} FROM approval WHERE state = 'pending' AND expires_at <= $1"
                ),
                &[&now],
            )
        })?;
        let mut n = 0;
        for row in overdue {
            let approval = to_approval(&row)?;
            if self.expire(&approval)? {
                n += 1;
            }
        }
        if n > 0 {
            self.inner.decided.notify_waiters();
        }
        Ok(n)
    }

    fn expire(&self, approval: &Approval) -> Result<bool, ServerError> {
        self.inner
            .db
            .transaction(approval.context.tenant.as_str(), |tx| {
                let n = tx.execute(
                    "UPDATE approval SET state = 'timed_out', decided_at = $2 WHERE id = $1 AND state = 'pending'",
                    &[&approval.id, &now_ms()],
                )?;
                if n == 0 {
                    return Ok(false);
                }
                let mut event =
                    base_event(&approval.context, AuditKind::ApprovalDenied, "timeout");
                event.decision = Some(AuditDecision::Deny);
                event.reason = Some("timeout: nobody decided before the deadline".into());
                event
                    .details
                    .insert("approval".into(), approval.id.clone().into());
                self.inner.audit.append(event)?;
                Ok(true)
            })
    }

    /// Waits until approval `id` of `tenant` is decided, its deadline passes (then it is
    /// denied as timed out), or `timeout` ends (then [`Resolution::Pending`]).
    pub async fn wait(
        &self,
        tenant: &Name,
        id: &str,
        timeout: Duration,
    ) -> Result<Resolution, ServerError> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before reading, so a decision in between is not missed.
            let notified = self.inner.decided.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let store = self.clone();
            let (t, i) = (tenant.clone(), id.to_owned());
            let approval = tokio::task::spawn_blocking(move || store.check(&t, &i))
                .await
                .map_err(|e| ServerError::Io(format!("approval check failed: {e}")))??;
            if approval.state != ApprovalState::Pending {
                return Ok(Resolution::Decided(Box::new(approval)));
            }
            let now = tokio::time::Instant::now();
            if now >= end {
                return Ok(Resolution::Pending);
            }
            let nap = POLL.min(end - now);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    /// The approval, expiring it first when its deadline has passed.
    fn check(&self, tenant: &Name, id: &str) -> Result<Approval, ServerError> {
        let row = self
            .inner
            .db
            .run(|c| select(c, tenant, id))?
            .ok_or_else(|| not_found(tenant, id))?;
        let approval = to_approval(&row)?;
        if approval.state == ApprovalState::Pending && now_ms() >= row.int(6)? {
            self.expire(&approval)?;
            return self.get(tenant, id);
        }
        Ok(approval)
    }
}

/// Approval `id` of `tenant`, as stored.
fn select(c: &mut dyn Conn, tenant: &Name, id: &str) -> Result<Option<Row>, ServerError> {
    c.query_opt(
        &format!(
            "SELECT {COLUMNS} FROM approval WHERE tenant = $1 AND id = $2 AND state <> 'opening'"
        ),
        &[&tenant.as_str(), &id],
    )
}

fn base_event(context: &ApprovalContext, kind: AuditKind, action: &str) -> AuditEvent {
    let mut event = AuditEvent::new(&context.tenant, kind, action);
    event.task = context.task.clone();
    event.user = Some(context.user.clone());
    event.agent = context.agent.clone();
    event.resource = Some(context.resource.clone());
    event
}
