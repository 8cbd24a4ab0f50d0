//! Decisions for Agent Space: agent definitions compiled to Cedar, the decision point
//! (allow, deny with a reason, or approval-required), budgets, the loop breaker and
//! revocation.
//!
//! The gateway loads one [`PolicyEngine`] per agent definition and asks it
//! [`PolicyEngine::decide`] for every outbound action; nothing here knows about sockets.
//! The Cedar schema ([`SCHEMA`]) and the request JSON ([`Request`]) are public contracts,
//! documented in docs/policy.md.
#![forbid(unsafe_code)]

mod budget;
mod cases;
mod compile;
mod decision;
mod engine;
mod error;
mod evaluate;
mod flow;
mod prefilter;
mod request;
mod revocation;
mod store;

pub use cases::{TestCase, TestCases, TestReport, run_cases};
pub use compile::{CompiledPolicies, SCHEMA};
pub use decision::{Decision, DenyReason};
pub use engine::PolicyEngine;
pub use error::PolicyError;
pub use request::{Action, Request, RequestContext, Resource, Usage};
pub use revocation::{
    NoAudit, Revocation, RevocationAudit, RevocationBackend, RevocationRecord, Revocations,
    StoredRevocation,
};
