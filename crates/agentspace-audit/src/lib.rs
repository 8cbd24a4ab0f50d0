//! The Agent Space audit log: append-only, hash-chained, Ed25519-signed, one chain per
//! tenant, with RFC 6962 Merkle checkpoints, inclusion and consistency proofs, and
//! verify, query and export. The format is specified in `docs/audit-format.md`, well
//! enough for an independent verifier.
//!
//! # Writing
//!
//! ```no_run
//! use agentspace_audit::AuditLog;
//! use agentspace_core::{AuditDecision, AuditEvent, AuditKind, Name};
//!
//! # fn main() -> Result<(), agentspace_audit::AuditError> {
//! let log = AuditLog::open(std::path::Path::new("/var/lib/agentspace"))?;
//! let tenant = Name::new("acme").map_err(|e| agentspace_audit::AuditError::InvalidEvent(e.to_string()))?;
//! let mut event = AuditEvent::new(&tenant, AuditKind::HttpRequest, "GET");
//! event.resource = Some("https://api.example.com/v1/items".into());
//! event.decision = Some(AuditDecision::Allow);
//! // Returns only once the event is durable; an error means it was NOT recorded, and a
//! // caller on a decision path must deny.
//! let receipt = log.append(event)?;
//! # let _ = receipt; Ok(()) }
//! ```
//!
//! - [`AuditLog::open`] uses SQLite at `<state>/audit/audit.db` (WAL, `synchronous=FULL`,
//!   triggers that abort UPDATE and DELETE). [`AuditLog::open_url`] takes
//!   `postgres://...` (tables made once by [`migrate_postgres`]) or `sqlite:PATH`.
//! - Signing keys live in `<state>/audit/keys/<tenant>/` (directory 0700, private keys
//!   0600), created on a tenant's first event; [`AuditLog::public_jwks`] publishes them.
//! - [`AuditLog`] is `Clone + Send + Sync`: share one per process. Appends from many
//!   threads are group-committed; several processes on one store keep one gap-free
//!   chain per tenant, because each transaction reads the head under the chain lock.
//! - A signed checkpoint (Merkle tree head) is written every
//!   [`AuditOptions::checkpoint_every`] events or [`AuditOptions::checkpoint_interval`];
//!   [`AuditLog::checkpoint`] writes one on demand for export.
//!
//! # Reading
//!
//! [`AuditLog::verify`], [`AuditLog::query`], [`AuditLog::events_from`] (for tail),
//! [`to_jsonl`], [`to_ocsf`], [`AuditLog::prove_inclusion`],
//! [`AuditLog::prove_consistency`], and the proof checkers [`verify_inclusion`] and
//! [`verify_consistency`].
#![forbid(unsafe_code)]

mod answer;
mod canonical;
mod chain;
mod error;
mod export;
mod keys;
mod log;
mod merkle;
mod proof;
mod query;
mod store;
mod verify;

pub use canonical::{CanonicalError, MAX_SAFE_INTEGER, canonicalize};
pub use chain::{
    CHECKPOINT_SIGNING_CONTEXT, Checkpoint, EVENT_SIGNING_CONTEXT, GENESIS, SignedCheckpoint,
    chain_hash, event_signing_input,
};
pub use error::AuditError;
pub use export::{to_jsonl, to_ocsf};
pub use keys::{TrustedKeys, jwks, kid_of};
pub use log::{AuditLog, AuditOptions, Receipt};
pub use merkle::{
    Hash, empty_root, leaf_hash, node_hash, root as merkle_root, verify_consistency,
    verify_inclusion,
};
pub use proof::{ConsistencyProof, InclusionProof};
pub use query::{Entry, Filter};
pub use store::postgres::{WRITER_ROLE, display_url as postgres_display_url, migrate_postgres};
pub use verify::{VerifiedTenant, VerifyFailure, VerifyOptions};
