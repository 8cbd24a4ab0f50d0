//! Domain types shared by every part of Agent Space: names and ids, the agent
//! definition format (`agentspace/v1`) and its validation.
//!
//! This crate does no I/O: callers read files and hand the text in, so the same
//! validation runs in the CLI, the control plane and tests.
#![forbid(unsafe_code)]

mod audit_event;
mod definition;
mod governance;
mod ids;
mod principal;
mod quantity;
mod task;
mod tools;

pub use audit_event::{
    AUDIT_SCHEMA_VERSION, AuditDecision, AuditEvent, AuditKind, format_audit_time, parse_audit_time,
};
pub use definition::{
    AgentDefinition, Definition, DefinitionError, Filesystem, Kind, Limits, Metadata, Resources,
    Spec, definition_json_schema,
};
pub use governance::{
    Approval, Budgets, CredentialApply, CredentialRef, DEFAULT_APPROVAL_TIMEOUT,
    DEFAULT_LOOP_LIMIT, EgressRule, Governance, HTTP_METHODS, Quota, RawApproval, RawAwsSigV4,
    RawBasicAuth, RawBudgets, RawCapabilityBudget, RawCredential, RawEgressRule, RawWindowBudget,
    TlsMode, WindowBudget, host_matches,
};
pub use ids::{InvalidName, Name, TaskId};
pub use principal::{
    Actor, MAX_DELEGATION_DEPTH, Principal, PrincipalError, SpiffeId, TaskRef, UserId,
};
pub use quantity::{Cpu, Duration, Size};
pub use task::{LimitHit, ManifestLimits, TaskManifest, TaskState};
pub use tools::{
    FlowRule, InjectionAction, RawFlowApproval, RawFlowRule, RawToolServer, Relay, ToolServer,
    ToolTransport, Tools, wildcard_match,
};
