//! The control plane's one error type, and how each error becomes an HTTP answer:
//! `{"error": <what went wrong>, "detail": <what to do>}` with a fitting status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One problem in a definition that was refused, as the API returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DefinitionProblem {
    /// Dotted path of the field (`spec.resources.memory`), when known.
    pub field: Option<String>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

/// What went wrong. Client errors carry the problem and the fix; server-side failures
/// (audit log, state database) fail closed: nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No valid credentials (401).
    #[error("{problem}")]
    Unauthenticated {
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// Valid credentials without the right role, or a rule such as four-eyes (403).
    #[error("{problem}")]
    Forbidden {
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// Nothing of that name in the caller's tenant (404).
    #[error("{problem}")]
    NotFound {
        /// What is missing.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// The request conflicts with the current state (409).
    #[error("{problem}")]
    Conflict {
        /// What conflicts.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// The request is malformed (400).
    #[error("{problem}")]
    BadRequest {
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// The caller holds too many of a limited resource (429).
    #[error("{problem}")]
    TooMany {
        /// What is exhausted.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// A definition was refused (422), with each problem located.
    #[error("invalid definition: {}", .0.first().map_or("", |p| p.message.as_str()))]
    Definition(Vec<DefinitionProblem>),
    /// The audit log refused the event: the action was not taken (503).
    #[error("the audit log is unavailable, so nothing was changed: {0}")]
    Audit(#[from] agentspace_audit::AuditError),
    /// The control plane's database failed (500).
    #[error("control-plane database `{path}` failed: {message}")]
    Store {
        /// The database: its file, or its PostgreSQL URL without the password.
        path: String,
        /// What the database said.
        message: String,
    },
    /// The policy state (revocations, budgets) failed (500).
    #[error("{0}")]
    Policy(#[from] agentspace_policy::PolicyError),
    /// The secret store failed (500).
    #[error("{0}")]
    Secrets(#[from] agentspace_secrets::SecretError),
    /// A file or socket failed (500).
    #[error("{0}")]
    Io(String),
}

/// The JSON body of every error answer.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// What to do about it.
    pub detail: String,
    /// For a refused definition: each problem with its field, line and column.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<DefinitionProblem>,
}

fn text(problem: impl Into<String>, fix: impl Into<String>) -> (String, String) {
    (problem.into(), fix.into())
}

impl ServerError {
    /// A 401 with its fix.
    pub(crate) fn unauthenticated(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        let (problem, fix) = text(problem, fix);
        Self::Unauthenticated { problem, fix }
    }
    /// A 403 with its fix.
    pub(crate) fn forbidden(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        let (problem, fix) = text(problem, fix);
        Self::Forbidden { problem, fix }
    }
    /// A 404 with its fix.
    pub(crate) fn not_found(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        let (problem, fix) = text(problem, fix);
        Self::NotFound { problem, fix }
    }
    /// A 409 with its fix.
    pub(crate) fn conflict(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        let (problem, fix) = text(problem, fix);
        Self::Conflict { problem, fix }
    }
    /// A 400 with its fix.
    pub(crate) fn bad_request(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        let (problem, fix) = text(problem, fix);
        Self::BadRequest { problem, fix }
    }
    /// A 429 with its fix.
    pub(crate) fn too_many(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        let (problem, fix) = text(problem, fix);
        Self::TooMany { problem, fix }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Definition(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Audit(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store { .. } | Self::Policy(_) | Self::Secrets(_) | Self::Io(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn body(self) -> ErrorBody {
        let (error, detail, problems) = match self {
            Self::Unauthenticated { problem, fix }
            | Self::Forbidden { problem, fix }
            | Self::NotFound { problem, fix }
            | Self::Conflict { problem, fix }
            | Self::BadRequest { problem, fix }
            | Self::TooMany { problem, fix } => (problem, fix, Vec::new()),
            Self::Definition(problems) => (
                "the definition was refused".to_owned(),
                "fix each problem listed (field, line, column) and register it again".to_owned(),
                problems,
            ),
            e @ Self::Audit(_) => (
                e.to_string(),
                "check the audit store (`agentspace audit verify`) and retry".to_owned(),
                Vec::new(),
            ),
            e => (
                e.to_string(),
                "check the server's state directory and its log; retry".to_owned(),
                Vec::new(),
            ),
        };
        ErrorBody {
            error,
            detail,
            problems,
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        (status, axum::Json(self.body())).into_response()
    }
}

impl From<agentspace_core::DefinitionError> for ServerError {
    fn from(e: agentspace_core::DefinitionError) -> Self {
        Self::Definition(vec![DefinitionProblem {
            field: e.field,
            line: e.line,
            column: e.column,
            message: e.message,
        }])
    }
}
