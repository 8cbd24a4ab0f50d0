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
use crate::store::Db;

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
            let context = ApprovalContext {
                tenant: tenant.clone(),
                user: request.user,
                task: Some(request.task),
                agent: Some(request.agent),
                action: request.action,
                resource: request.resource,
                policies: request.policies,
                reason: Some(request.reason),
                request: request.summary,
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
            // The store denies the approval itself once its deadline passes; a little
            // slack lets that happen before this wait gives up.
            let wait = request.timeout + std::time::Duration::from_secs(2);
            match self.wait(&tenant, &id, wait).await {
                Ok(Resolution::Decided(a)) => match a.state {
                    ApprovalState::Approved => Held::Approved {
                        approval: id,
                        approver: a.approver.unwrap_or_default(),
                    },
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
        })
    }
}
