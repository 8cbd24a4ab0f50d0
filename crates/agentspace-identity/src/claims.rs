//! The JWT claims set of task and per-call tokens: the wire format, in one place.

use agentspace_core::{Actor, Name, Principal, SpiffeId, UserId};
use serde::{Deserialize, Serialize};

/// What a token is for. A token is accepted only where its use is expected, so a per-call
/// token handed to a service cannot be replayed to the gateway as a task token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenUse {
    /// A task token: the boundary's credential for one agent task.
    Task,
    /// A per-call token: sent with one forwarded call to a service behind the gateway.
    Call,
}

/// An RFC 8693 `act` claim: the outermost names the current actor, each nested `act` the
/// actor that started it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActClaim {
    /// The acting agent task's SPIFFE id.
    pub sub: SpiffeId,
    /// The agent task this one acts for, if an agent started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<ActClaim>>,
}

/// The claims of every Agent Space token (documented in docs/identity.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Issuer: the tenant.
    pub iss: String,
    /// Subject: the user the agents act for.
    pub sub: String,
    /// Audience: who may accept the token (the gateway, or one service's origin).
    pub aud: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Not before (equal to `iat`).
    pub nbf: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// Unique token id (128 random bits, base64url).
    pub jti: String,
    /// The delegation chain, current actor outermost.
    pub act: ActClaim,
    /// What the token is for.
    pub token_use: TokenUse,
    /// A one-time token is accepted once (its `jti` is remembered until it expires).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_time: bool,
    /// Per-call tokens: the HTTP method of the one call (as in RFC 9449 `htm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htm: Option<String>,
    /// Per-call tokens: the URL of the one call without query or fragment (RFC 9449 `htu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htu: Option<String>,
}

/// Why a claims set does not describe a valid principal.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChainError {
    #[error("issuer `{0}` is not a tenant name")]
    Issuer(String),
    #[error("{0}")]
    Principal(#[from] agentspace_core::PrincipalError),
    #[error("actor `{actor}` is not in the issuing tenant `{tenant}`")]
    ForeignActor { tenant: String, actor: String },
}

impl ActClaim {
    /// The `act` claim for `principal`: current actor outermost, root innermost.
    pub(crate) fn from_principal(principal: &Principal) -> Self {
        let tenant = principal.tenant();
        let mut act: Option<Box<ActClaim>> = None;
        for actor in principal.actors() {
            act = Some(Box::new(ActClaim {
                sub: actor.spiffe_id(tenant),
                act,
            }));
        }
        // `actors()` always yields the current actor, so `act` is set; the fallback only
        // keeps this free of panics.
        act.map_or_else(
            || ActClaim {
                sub: principal.spiffe_id(),
                act: None,
            },
            |a| *a,
        )
    }
}

impl Claims {
    /// The principal these claims describe, checked: the issuer is a tenant name, the user
    /// id is valid, every actor belongs to the issuing tenant, and the chain is within the
    /// depth limit.
    pub(crate) fn principal(&self) -> Result<Principal, ChainError> {
        let tenant = Name::new(&self.iss).map_err(|_| ChainError::Issuer(self.iss.clone()))?;
        let user = UserId::new(&self.sub)?;
        let mut chain: Vec<Actor> = Vec::new();
        let mut next = Some(&self.act);
        while let Some(act) = next {
            if act.sub.tenant() != &tenant {
                return Err(ChainError::ForeignActor {
                    tenant: tenant.to_string(),
                    actor: act.sub.to_string(),
                });
            }
            chain.push(act.sub.actor().clone());
            if chain.len() > agentspace_core::MAX_DELEGATION_DEPTH {
                break; // from_chain reports the depth error
            }
            next = act.act.as_deref();
        }
        chain.reverse();
        Ok(Principal::from_chain(tenant, user, chain)?)
    }
}
