//! The Agent Space control plane: a REST API under `/v1` (definitions, tasks,
//! approvals, audit, revocations, secret names, budgets, tenants, users and roles), an
//! OpenAPI document at `/openapi.json`, server-sent events, and the approval store the
//! gateway holds requests with.
//!
//! State lives in `<state>/server/control.db` (SQLite) next to the audit log, the policy
//! state and the secrets of the same state directory, or in PostgreSQL
//! ([`ServerConfig::database_url`], its schema made by [`migrate`]). Every caller is a user of one
//! tenant, authenticated by a bearer token; nothing of another tenant is ever visible.
//! Every change is recorded in the tenant's audit log before it takes effect, and a
//! change the audit log refuses is not made. The API is documented in
//! docs/control-plane.md.
#![forbid(unsafe_code)]

mod api;
mod approvals;
mod audit;
mod auth;
pub mod client;
mod console;
mod definitions;
mod desk;
mod error;
mod events;
mod extract;
mod revocations;
mod runner;
mod server;
mod store;
mod webhook;

pub use approvals::{Approval, ApprovalContext, ApprovalState, ApprovalStore, Outcome, Resolution};
pub use auth::{NewToken, Role, TokenInfo, User};
pub use definitions::{DefinitionVersion, Registered};
pub use error::{DefinitionProblem, ErrorBody, ServerError};
pub use revocations::revocations;
pub use server::{
    Server, ServerConfig, audit_url, bootstrap_admin, migrate, openapi, register_on_host,
};
pub use store::CONTROL_ROLE;
pub use webhook::TenantWebhook;
