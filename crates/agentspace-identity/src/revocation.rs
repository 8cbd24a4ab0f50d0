//! The revocation hook. The revocation store lives in `agentspace-policy`; verification
//! and refresh only ask it, through this trait, so neither crate depends on the other.
//! The gateway passes a closure over the policy crate's store.

use agentspace_core::Principal;

/// The revocation store could not answer. Verification then refuses the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RevocationCheckFailed(pub String);

/// Answers whether a principal may still act. It sees the whole delegation chain, so the
/// policy decides whether revoking agent A (or A's task) also stops the agents A started.
pub trait RevocationCheck {
    /// `Ok(None)` when nothing revoked applies; `Ok(Some(reason))` when the principal is
    /// revoked; `Err` when the store cannot tell (the token is refused: fail closed).
    fn revoked(&self, principal: &Principal) -> Result<Option<String>, RevocationCheckFailed>;
}

impl<F> RevocationCheck for F
where
    F: Fn(&Principal) -> Result<Option<String>, RevocationCheckFailed>,
{
    fn revoked(&self, principal: &Principal) -> Result<Option<String>, RevocationCheckFailed> {
        self(principal)
    }
}

/// A revocation check that revokes nothing: for tools that only inspect tokens and for
/// tests. The gateway must pass the policy crate's revocation store instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct NothingRevoked;

impl RevocationCheck for NothingRevoked {
    fn revoked(&self, _: &Principal) -> Result<Option<String>, RevocationCheckFailed> {
        Ok(None)
    }
}
