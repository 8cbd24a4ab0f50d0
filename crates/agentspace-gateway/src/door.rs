//! The door: a listener that belongs to one task. Every connection accepted on it acts
//! for that task; nothing the client sends can change who it is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use agentspace_core::Principal;
use agentspace_policy::PolicyEngine;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::broker::Credential;

/// The task a door belongs to: who acts (from the verified task token, bound when the
/// cell was made), the decision point of its agent definition, and the credentials its
/// capabilities carry.
pub struct Task {
    /// The principal every request through the door is decided and audited as.
    pub principal: Principal,
    /// The decision point for the task's agent definition.
    pub policy: Arc<PolicyEngine>,
    /// Credentials by capability (egress rule name): a request allowed under that
    /// capability carries it.
    pub credentials: BTreeMap<String, Credential>,
    /// Set once the task has ended: every connection of the task closes.
    closed: watch::Sender<bool>,
    /// The names the task looked up through the cell's resolver, by synthetic address.
    pub(crate) names: crate::dns::Names,
    /// Where approval-required requests wait for a person; without one they are
    /// refused at once.
    pub(crate) approvals: Option<Arc<dyn crate::approval::ApprovalDesk>>,
    /// Mints the per-call identity tokens of capabilities with `identity`; without it,
    /// such requests are refused (they could not say who they are for).
    pub(crate) identity: Option<Arc<agentspace_identity::Identity>>,
}

impl Task {
    /// A task with no brokered credentials.
    pub fn new(principal: Principal, policy: Arc<PolicyEngine>) -> Self {
        Self {
            principal,
            policy,
            credentials: BTreeMap::new(),
            closed: watch::channel(false).0,
            names: crate::dns::Names::default(),
            approvals: None,
            identity: None,
        }
    }

    /// Ends the task at the boundary: its doors stop accepting and every open
    /// connection, tunnel and upgraded stream of the task is closed at once (task exit,
    /// revocation).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Whether [`Task::close`] was called.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves once the task is closed.
    pub(crate) async fn wait_closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Holds the task's approval-required requests at `desk` until a person decides.
    pub fn with_approvals(mut self, desk: Arc<dyn crate::approval::ApprovalDesk>) -> Self {
        self.approvals = Some(desk);
        self
    }

    /// Mints per-call identity tokens (`Agentspace-Identity`) with `identity` for the
    /// requests of capabilities that send them.
    pub fn with_identity(mut self, identity: Arc<agentspace_identity::Identity>) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Adds the credential that requests allowed under `capability` carry.
    pub fn with_credential(
        mut self,
        capability: impl Into<String>,
        credential: Credential,
    ) -> Self {
        self.credentials.insert(capability.into(), credential);
        self
    }
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

/// How a connection reached the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The client knows it talks to a proxy (HTTP_PROXY / HTTPS_PROXY): absolute-form
    /// requests and CONNECT.
    Proxy,
    /// The connection was redirected to the gateway and its original destination is
    /// known out of band. A TLS connection is intercepted with the SNI as host (the
    /// address when there is none); plain HTTP takes the host from `Host`.
    Transparent {
        /// Where the client was connecting to.
        original: SocketAddr,
    },
}

/// A listener bound to one task: TCP on loopback in tests, a unix socket inside the
/// cell's door in production.
#[derive(Debug)]
pub enum DoorListener {
    /// A TCP listener (explicit proxy).
    Tcp(TcpListener),
    /// A unix socket listener (explicit proxy).
    Unix(UnixListener),
    /// The target of a cell's redirect rule: each connection's original destination is
    /// read from the kernel (`SO_ORIGINAL_DST`) and served as [`Arrival::Transparent`].
    Transparent(TcpListener),
}

/// A task's door: its listener and the task every connection on it acts for.
#[derive(Debug)]
pub struct Door {
    pub(crate) listener: DoorListener,
    pub(crate) task: Arc<Task>,
}

impl Door {
    /// Binds `listener` to `task`, for good.
    pub fn new(listener: DoorListener, task: Task) -> Self {
        Self {
            listener,
            task: Arc::new(task),
        }
    }

    /// Binds `listener` to a task that already has a door (a cell's explicit proxy,
    /// transparent door and resolver all act for one task).
    pub fn for_task(listener: DoorListener, task: Arc<Task>) -> Self {
        Self { listener, task }
    }

    /// The task of this door.
    pub fn task(&self) -> &Arc<Task> {
        &self.task
    }
}
