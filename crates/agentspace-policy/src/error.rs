//! Errors of loading policies and opening the policy state. Decisions never return
//! errors: on the decision path every failure is a [`crate::Decision::Deny`].

use std::path::PathBuf;

/// Why policies could not be loaded or the state could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A field of the definition cannot be compiled.
    #[error("invalid definition `{file}`: field `{field}`: {message}")]
    Field {
        /// The definition file.
        file: String,
        /// The dotted field path.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A policy file listed under `spec.policies` cannot be read.
    #[error(
        "cannot read policy file `{}` listed under `spec.policies`: {source}; check the path (relative to the definition file)",
        path.display()
    )]
    ReadPolicyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A policy does not parse or does not validate against the Agent Space schema.
    #[error("{file}:{line}:{column}: {message}")]
    Policy {
        /// The policy file (or the definition, for generated policies).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The policy state (budgets, revocations) under `<state>/policy/` cannot be used.
    #[error(
        "cannot use the policy state in `{}`: {message}; check that the state directory exists and is writable",
        path.display()
    )]
    State {
        /// The database file or directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The revocation store (the state directory's, or a shared one) cannot be used.
    #[error("cannot use the revocation store `{store}`: {message}")]
    Revocations {
        /// Where it is (a path, or a URL without its password).
        store: String,
        /// What failed, and what to check.
        message: String,
    },
    /// The per-task taint state (data labels a session has read) cannot be used.
    #[error("the data-flow taint state cannot be used: {0}; the action is denied")]
    Taint(String),
    /// The built-in schema is broken; a bug in Agent Space.
    #[error(
        "the built-in Agent Space Cedar schema is invalid: {0}; this is a bug, please report it"
    )]
    Schema(String),
}

impl PolicyError {
    pub(crate) fn state(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}
