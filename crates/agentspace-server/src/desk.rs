//! The approval store as the gateway's approval desk: a held HTTP request or tool call
//! becomes a pending approval here, in the control plane's database, and waits for a
//! person (the API, the console, or `agentspace approvals` on the same state directory).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use agentspace_audit::AuditLog;
use agentspace_core::Name;
use agentspace_gateway::{ApprovalDesk, Held, HoldRequest};

use crate::approvals::{ApprovalContext, ApprovalState, ApprovalStore, Resolution};
use crate::error::ServerError;
use crate::store::{Conn, Db, now_ms};

impl ApprovalStore {
    /// The approval store of the state directory `state_dir` (its control database), or
    /// of the PostgreSQL database at `database_url`, recording to `audit`: for a task run
    /// by `agentspace run`, whose approvals are decided by a control plane on the same
    /// store or with `agentspace approvals`.
    pub fn open(
        state_dir: &Path,
        database_url: Option<&str>,
        audit: AuditLog,
    ) -> Result<Self, ServerError> {
        Ok(Self::new(
            Arc::new(Db::open(state_dir, database_url)?),
            audit,
        ))
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
        self.db().transaction(tenant.as_str(), |tx| {
            let row = tx.query_opt(
                "SELECT id, state, approver FROM approval
                 WHERE tenant = $1 AND task = $2 AND digest = $3 AND state IN ('pending', 'approved')
                   AND id NOT IN (SELECT id FROM approval_use)
                 ORDER BY requested_at DESC LIMIT 1",
                &[&tenant.as_str(), &task, &digest],
            )?;
            let Some(row) = row else { return Ok(None) };
            let id = row.text(0)?;
            if row.text(1)? == "pending" {
                return Ok(Some(Earlier::Pending(id)));
            }
            // A waiter of the first request (which takes no lock) may have used it since
            // this read; then it is used, and this request asks anew.
            if !use_approval(tx, &id)? {
                return Ok(None);
            }
            Ok(Some(Earlier::Granted {
                id,
                approver: row.opt_text(2)?.unwrap_or_default(),
            }))
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
                        store.db().run(|c| use_approval(c, &used))
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

/// Records that approval `id` let its request through; `false` if it already had. One
/// statement against the primary key: of any number of racing callers, in any number of
/// processes, exactly one gets `true`.
fn use_approval(c: &mut dyn Conn, id: &str) -> Result<bool, ServerError> {
    let n = c.execute(
        "INSERT INTO approval_use (id, used_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        &[&id, &now_ms()],
    )?;
    Ok(n == 1)
}
