//! The approval store as the gateway's approval desk: a held HTTP request or tool call
//! becomes a pending approval here, in the control plane's database, and waits for a
//! person (the API, the console, or `agentspace approvals` on the same state directory).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use rusqlite::OptionalExtension;

use agentspace_audit::AuditLog;
use agentspace_core::Name;
use agentspace_gateway::{ApprovalDesk, Held, HoldRequest};

use crate::approvals::{ApprovalContext, ApprovalState, ApprovalStore, Resolution};
use crate::error::ServerError;
use crate::store::{Db, now_ms};

impl ApprovalStore {
    /// The approval store of the state directory `state_dir` (its control database),
    /// recording to `audit`: for a task run without a control-plane process, whose
    /// approvals are decided with `agentspace approvals` on the same state directory.
    pub fn open(state_dir: &Path, audit: AuditLog) -> Result<Self, ServerError> {
        Ok(Self::new(Arc::new(Db::open(state_dir)?), audit))
    }
}

impl ApprovalDesk for ApprovalStore {
    fn hold(&self, request: HoldRequest) -> Pin<Box<dyn Future<Output = Held> + Send + '_>> {
        Box::pin(async move {
            let Ok(tenant) = Name::new(&request.tenant) else {
                return Held::Unavailable(format!("invalid tenant `{}`", request.tenant));
            };
            // The same request again (its connection was lost while it was held): it
            // waits on the approval already asked for, or goes on with the one already
            // granted, once.
            let (store, t, task, digest) = (
                self.clone(),
                tenant.clone(),
                request.task.clone(),
                request.digest.clone(),
            );
            let earlier = tokio::task::spawn_blocking(move || store.earlier(&t, &task, &digest))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            match earlier {
                Ok(Some(Earlier::Granted { id, approver })) => {
                    return Held::Approved {
                        approval: id,
                        approver,
                    };
                }
                Ok(Some(Earlier::Pending(id))) => {
                    return self.finish(&tenant, id, request.timeout).await;
                }
                Ok(None) => {}
                Err(e) => return Held::Unavailable(e),
            }
            let mut summary = request.summary;
            summary.insert("digest".into(), request.digest.clone().into());
            let context = ApprovalContext {
                tenant: tenant.clone(),
                user: request.user,
                task: Some(request.task),
                agent: Some(request.agent),
                action: request.action,
                resource: request.resource,
                policies: request.policies,
                reason: Some(request.reason),
                request: summary,
                budget: None,
                four_eyes: true,
                timeout_secs: request.timeout.as_secs().max(1),
            };
            let store = self.clone();
            let id = match tokio::task::spawn_blocking(move || store.request(context)).await {
                Ok(Ok(id)) => id,
                Ok(Err(e)) => return Held::Unavailable(e.to_string()),
                Err(e) => return Held::Unavailable(e.to_string()),
            };
            self.finish(&tenant, id, request.timeout).await
        })
    }
}

/// An approval asked for the same request before.
enum Earlier {
    /// Still pending: wait on it.
    Pending(String),
    /// Granted and not used yet: used now.
    Granted { id: String, approver: String },
}

impl ApprovalStore {
    /// The pending, or granted and unused, approval of `task` for the request with
    /// `digest`. A granted one is marked used in the same transaction, so it lets exactly
    /// one request through.
    fn earlier(
        &self,
        tenant: &Name,
        task: &str,
        digest: &str,
    ) -> Result<Option<Earlier>, ServerError> {
        let db = self.db();
        db.with_tx(|c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| db.err(e))?;
            let row: Option<(String, String, Option<String>)> = tx
                .query_row(
                    "SELECT id, state, approver FROM approval
                     WHERE tenant = ?1 AND task = ?2 AND state IN ('pending', 'approved')
                       AND json_extract(context, '$.request.digest') = ?3
                       AND id NOT IN (SELECT id FROM approval_use)
                     ORDER BY requested_at DESC LIMIT 1",
                    rusqlite::params![tenant.as_str(), task, digest],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(|e| db.err(e))?;
            let earlier = match row {
                None => None,
                Some((id, state, _)) if state == "pending" => Some(Earlier::Pending(id)),
                Some((id, _, approver)) => {
                    use_approval(&tx, &id).map_err(|e| db.err(e))?;
                    Some(Earlier::Granted {
                        id,
                        approver: approver.unwrap_or_default(),
                    })
                }
            };
            tx.commit().map_err(|e| db.err(e))?;
            Ok(earlier)
        })
    }

    /// Waits for approval `id` and reports how it ended; a grant is used at once (if a
    /// retry of the same request used it first, this request is refused).
    async fn finish(&self, tenant: &Name, id: String, timeout: std::time::Duration) -> Held {
        // The store denies the approval itself once its deadline passes; a little slack
        // lets that happen before this wait gives up.
        let wait = timeout + std::time::Duration::from_secs(2);
        match self.wait(tenant, &id, wait).await {
            Ok(Resolution::Decided(a)) => match a.state {
                ApprovalState::Approved => {
                    let store = self.clone();
                    let used = id.clone();
                    let marked = tokio::task::spawn_blocking(move || {
                        store.db().with(|c| use_approval(c, &used))
                    })
                    .await;
                    match marked {
                        Ok(Ok(true)) => Held::Approved {
                            approval: id,
                            approver: a.approver.unwrap_or_default(),
                        },
                        Ok(Ok(false)) => Held::Denied {
                            approval: id,
                            reason: "the approval was used by a retry of the same request".into(),
                        },
                        Ok(Err(e)) => Held::Unavailable(e.to_string()),
                        Err(e) => Held::Unavailable(e.to_string()),
                    }
                }
                ApprovalState::TimedOut => Held::Denied {
                    approval: id,
                    reason: "nobody decided before the deadline".into(),
                },
                _ => Held::Denied {
                    approval: id,
                    reason: format!(
                        "denied by `{}`{}",
                        a.approver.unwrap_or_default(),
                        a.comment
                            .filter(|c| !c.is_empty())
                            .map(|c| format!(": {c}"))
                            .unwrap_or_default()
                    ),
                },
            },
            Ok(Resolution::Pending) => Held::Denied {
                approval: id,
                reason: "nobody decided before the deadline".into(),
            },
            Err(e) => Held::Unavailable(e.to_string()),
        }
    }
}

/// Records that approval `id` let its request through; `false` if it already had.
fn use_approval(c: &rusqlite::Connection, id: &str) -> rusqlite::Result<bool> {
    let n = c.execute(
        "INSERT OR IGNORE INTO approval_use (id, used_at) VALUES (?1, ?2)",
        rusqlite::params![id, now_ms()],
    )?;
    Ok(n == 1)
}
