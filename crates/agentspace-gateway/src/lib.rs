//! The Agent Space control boundary for HTTP and HTTPS: a forward proxy that every
//! outbound request of a task passes through.
//!
//! A [`Gateway`] serves [`Door`]s. A door is a listener that belongs to one [`Task`]:
//! every connection accepted on it is decided and audited as that task, whatever the
//! client sends. On each connection the gateway accepts absolute-form HTTP requests and
//! CONNECT ([`Arrival::Proxy`]), or a connection whose original destination is already
//! known ([`Arrival::Transparent`]). TLS inside a tunnel is intercepted with a leaf
//! certificate minted from the tenant's CA ([`TenantCa`]).
//!
//! Each HTTP request (not each connection) is decided by the task's
//! [`agentspace_policy::PolicyEngine`]; the allowed upstream is resolved and checked
//! against the SSRF guard; the decision is written to the audit log, and only once it is
//! durable is the request forwarded. A deny is a 403 with a JSON body; any failure on
//! the way (policy, audit, resolution) refuses the request. See docs/gateway.md.
#![forbid(unsafe_code)]

mod approval;
mod body;
mod broker;
mod ca;
mod client_hello;
mod config;
mod dns;
mod door;
mod error;
mod framing;
mod io;
mod mcp;
mod proxy;
mod rules;
mod sigv4;
mod ssrf;
mod transparent;
mod upstream;
mod usage;

pub use approval::{ApprovalDesk, Held, HoldRequest};
pub use broker::{Apply, Credential};
pub use ca::{CaStore, TenantCa};
pub use config::{GatewayConfig, Limits, ResolveOverride};
pub use dns::{
    Query, QueryError, QueryKind, SYNTHETIC_NETWORK, SYNTHETIC_PREFIX, is_synthetic, parse_query,
    tunnelling,
};
pub use door::{Arrival, Door, DoorListener, Task};
pub use error::GatewayError;
pub use mcp::{MCP_DOOR_PORT, MCP_PATH, McpGateway, StdioSandbox, fuzz_message};
pub use proxy::{DECISION_HEADER, Gateway};
pub use ssrf::refused_address;
