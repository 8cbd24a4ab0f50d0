//! The answer: allow, deny with a reason, or hold for a human's approval.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// The outcome of one decision. Deliberately exhaustive: a new kind of outcome must break
/// every caller at compile time, since each must decide what it means for traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// The action may proceed; its request has been charged to the budgets.
    Allow {
        /// The permit policies that allowed it.
        policies: Vec<String>,
        /// The capabilities (egress rule names) it was allowed under.
        capabilities: Vec<String>,
        /// A sentence for people.
        message: String,
    },
    /// The action must not proceed.
    Deny {
        /// Why, as a stable code.
        reason: DenyReason,
        /// The policies that decided it (forbids), if any.
        policies: Vec<String>,
        /// A sentence for people.
        message: String,
    },
    /// The action is permitted only if a human approves it within `timeout`; nothing has
    /// been charged yet. After approval the gateway asks again with
    /// [`crate::PolicyEngine::decide_approved`].
    ApprovalRequired {
        /// The `@approval` policies that require it.
        policies: Vec<String>,
        /// What the approver is asked (the `@approval` annotations).
        prompt: String,
        /// How long to hold the request before denying it.
        #[serde(with = "humantime_secs")]
        timeout: Duration,
        /// A sentence for people.
        message: String,
    },
}

/// Why an action was denied. Stable codes (`reason` in JSON and the audit log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenyReason {
    /// No policy permits it (default deny).
    NotPermitted,
    /// A forbid policy matched.
    Forbidden,
    /// The task, agent, user's use of the agent or capability was revoked.
    Revoked,
    /// The same request was repeated more than the loop limit in a row.
    Loop,
    /// A budget is spent.
    Budget,
    /// The task's session carries a data label the destination is not cleared for.
    Flow,
    /// The request could not be evaluated (policy evaluation error, store unavailable):
    /// fail closed.
    Error,
    /// The request itself is malformed or not for this definition.
    InvalidRequest,
}

impl DenyReason {
    /// The stable code (`not-permitted`, `forbidden`, `revoked`, `loop`, `budget`,
    /// `flow`, `error`, `invalid-request`).
    pub fn code(self) -> &'static str {
        match self {
            Self::NotPermitted => "not-permitted",
            Self::Forbidden => "forbidden",
            Self::Revoked => "revoked",
            Self::Loop => "loop",
            Self::Budget => "budget",
            Self::Flow => "flow",
            Self::Error => "error",
            Self::InvalidRequest => "invalid-request",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Decision {
    /// A denial with no deciding policy.
    pub(crate) fn deny(reason: DenyReason, message: impl Into<String>) -> Self {
        Self::Deny {
            reason,
            policies: Vec::new(),
            message: message.into(),
        }
    }

    /// Whether this is [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }

    /// `allow`, `deny` or `approval-required`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Allow { .. } => "allow",
            Self::Deny { .. } => "deny",
            Self::ApprovalRequired { .. } => "approval-required",
        }
    }

    /// The determining policies.
    pub fn policies(&self) -> &[String] {
        match self {
            Self::Allow { policies, .. }
            | Self::Deny { policies, .. }
            | Self::ApprovalRequired { policies, .. } => policies,
        }
    }

    /// The human-readable sentence.
    pub fn message(&self) -> &str {
        match self {
            Self::Allow { message, .. }
            | Self::Deny { message, .. }
            | Self::ApprovalRequired { message, .. } => message,
        }
    }

    /// The deny reason, if denied.
    pub fn deny_reason(&self) -> Option<DenyReason> {
        match self {
            Self::Deny { reason, .. } => Some(*reason),
            Self::Allow { .. } | Self::ApprovalRequired { .. } => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deny { reason, .. } => write!(f, "deny ({reason}): {}", self.message()),
            Self::Allow { .. } | Self::ApprovalRequired { .. } => {
                write!(f, "{}: {}", self.kind(), self.message())
            }
        }
    }
}

mod humantime_secs {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs()))
    }
}
