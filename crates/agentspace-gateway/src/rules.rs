//! What a task's egress rules say beyond the decision itself: which hosts are passed
//! through without TLS interception, and which may reach internal addresses. Read from
//! the definition the task's decision point was loaded from.

use std::net::IpAddr;

use agentspace_core::{EgressRule, TlsMode};

use crate::door::Task;
use crate::ssrf::Reach;

fn egress(task: &Task) -> &[EgressRule] {
    &task.policy.definition().governance.egress
}

/// Whether any rule of the task passes TLS through.
pub(crate) fn any_passthrough(task: &Task) -> bool {
    egress(task).iter().any(|r| r.tls == TlsMode::Passthrough)
}

/// Whether connections to `host` (as [`crate::proxy`] normalises it) are passed through.
pub(crate) fn passes_through(task: &Task, host: &str) -> bool {
    egress(task)
        .iter()
        .any(|r| r.tls == TlsMode::Passthrough && r.names_host(host))
}

/// How far a request to `host` allowed under `capabilities` may reach: internal
/// addresses only when an `internal: true` rule among them names the host exactly, and
/// link-local ones only when that name is the IP address itself.
pub(crate) fn reach(task: &Task, capabilities: &[String], host: &str) -> Reach {
    let named = egress(task).iter().any(|r| {
        r.internal
            && capabilities.iter().any(|c| c == r.name.as_str())
            && r.hosts.iter().any(|h| h == host)
    });
    match (named, host.parse::<IpAddr>().is_ok()) {
        (false, _) => Reach::Public,
        (true, false) => Reach::Internal,
        (true, true) => Reach::Literal,
    }
}

/// Whether a request allowed under `capabilities` carries a per-call identity token: when
/// any of those rules says so.
pub(crate) fn sends_identity(task: &Task, capabilities: &[String]) -> bool {
    egress(task)
        .iter()
        .any(|r| r.identity && capabilities.iter().any(|c| c == r.name.as_str()))
}
