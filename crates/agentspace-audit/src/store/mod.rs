//! Storage backends. A store keeps rows; it knows nothing of hashing or signing. Both
//! backends enforce append-only in the database itself (triggers; in PostgreSQL also a
//! writer role with INSERT and SELECT only) and commit durably before returning.

pub(crate) mod postgres;
pub(crate) mod sqlite;

use crate::error::AuditError;
use crate::merkle::Hash;

/// One stored event. `event` holds the canonical JSON bytes that were hashed; the other
/// columns are copies for indexing, checked against `event` by verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) tenant: String,
    pub(crate) seq: u64,
    pub(crate) time_ns: u64,
    pub(crate) kind: String,
    pub(crate) task: Option<String>,
    pub(crate) event: Vec<u8>,
    pub(crate) hash: Vec<u8>,
    pub(crate) sig: Vec<u8>,
}

/// One stored checkpoint: its canonical body, signature and the compact range that
/// lets the next checkpoint be computed from the events after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CheckpointRow {
    pub(crate) tenant: String,
    pub(crate) size: u64,
    pub(crate) body: Vec<u8>,
    pub(crate) sig: Vec<u8>,
    pub(crate) frontier: Vec<u8>,
}

/// The last event of a tenant's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) hash: Hash,
    pub(crate) time_ns: u64,
}

/// Reads and writes inside one write transaction, which holds the tenant's chain lock.
pub(crate) trait WriteTx {
    fn head(&mut self, tenant: &str) -> Result<Option<Head>, AuditError>;
    fn insert_events(&mut self, rows: &[&Row]) -> Result<(), AuditError>;
    fn last_checkpoint(&mut self, tenant: &str) -> Result<Option<CheckpointRow>, AuditError>;
    /// The canonical event bytes of `tenant`'s events `from..to`, in order.
    fn event_bytes(&mut self, tenant: &str, from: u64, to: u64)
    -> Result<Vec<Vec<u8>>, AuditError>;
    fn insert_checkpoint(&mut self, cp: &CheckpointRow) -> Result<(), AuditError>;
}

/// A backend connection.
pub(crate) trait Store: Send {
    /// Runs `f` in one transaction that holds the chain lock of every tenant in
    /// `tenants` and commits durably; any error rolls everything back.
    fn write(
        &mut self,
        tenants: &[String],
        f: &mut dyn FnMut(&mut dyn WriteTx) -> Result<(), AuditError>,
    ) -> Result<(), AuditError>;

    /// Every tenant that has events or checkpoints.
    fn tenants(&mut self) -> Result<Vec<String>, AuditError>;

    /// Up to `limit` events of `tenant` with `seq >= from`, in sequence order.
    fn events(&mut self, tenant: &str, from: u64, limit: u64) -> Result<Vec<Row>, AuditError>;

    /// Every checkpoint of `tenant`, by size.
    fn checkpoints(&mut self, tenant: &str) -> Result<Vec<CheckpointRow>, AuditError>;

    /// Up to `limit` events of `tenant`'s task `task` with `seq >= from`, in sequence
    /// order (by the `(tenant, task)` index).
    fn task_events(
        &mut self,
        tenant: &str,
        task: &str,
        from: u64,
        limit: u64,
    ) -> Result<Vec<Row>, AuditError>;

    /// The number of events in `tenant`'s chain (its last sequence number plus one).
    fn chain_len(&mut self, tenant: &str) -> Result<u64, AuditError>;
}

pub(crate) fn hash_from(bytes: &[u8], store: &str) -> Result<Hash, AuditError> {
    Hash::try_from(bytes).map_err(|_| AuditError::Store {
        store: store.to_owned(),
        message: "a stored hash is not 32 bytes; run `agentspace audit verify`".to_owned(),
    })
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
