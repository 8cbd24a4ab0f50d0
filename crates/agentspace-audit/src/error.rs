//! The audit log's one error type. Every error from `append` means the event was NOT
//! recorded: callers on a decision path must treat it as a deny.

/// What went wrong. Messages name the problem and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The event cannot be encoded (bad tenant, a float, a number too large).
    #[error("cannot record audit event: {0}")]
    InvalidEvent(String),
    /// The store (SQLite file or PostgreSQL server) failed.
    #[error("audit store `{store}` failed: {message}")]
    Store {
        /// Where the store is (path or URL without password).
        store: String,
        /// What the database said, and what to check.
        message: String,
    },
    /// A key file could not be read or written.
    #[error("audit key for tenant `{tenant}`: {message}")]
    Key {
        /// The tenant whose key it is.
        tenant: String,
        /// What failed and what to check.
        message: String,
    },
    /// A file (checkpoint, JWKS, state directory) could not be read or written.
    #[error("{0}")]
    Io(String),
    /// The audit writer has stopped; nothing more can be recorded by this handle.
    #[error("audit writer has stopped ({0}); reopen the audit log")]
    WriterStopped(String),
    /// Verification found tampering, a gap or a bad signature.
    #[error("{0}")]
    Tampered(crate::verify::VerifyFailure),
    /// A request that cannot be answered (no such event, bad proof range).
    #[error("{0}")]
    Request(String),
}

impl AuditError {
    pub(crate) fn io(what: &str, path: &std::path::Path, e: &std::io::Error) -> Self {
        AuditError::Io(format!("cannot {what} `{}`: {e}", path.display()))
    }
}
