//! Errors: [`IdentityError`] for minting and key management, [`Rejection`] for a token
//! that verification refused.

use std::path::PathBuf;

/// Minting, refreshing or key management failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file or directory under `<state>/identity/` could not be read or written.
    #[error(
        "cannot {action} `{path}`: {source}; check that the state directory exists and is writable by this user"
    )]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A signing key file is readable or writable by other users.
    #[error(
        "signing key `{path}` has mode {mode:o}, open to other users: run `chmod 600 {path}` and rotate the key (`agentspace keys rotate`), since it may have been read"
    )]
    InsecureKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file or the key ring could not be parsed.
    #[error(
        "key store file `{path}` is damaged: {why}; restore it from a backup or remove the tenant's key directory to start with a new key (tokens already issued will stop verifying)"
    )]
    CorruptKeyStore {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The requested lifetime is longer than tokens may live.
    #[error(
        "token lifetime of {requested} s is longer than the limit of {max} s: ask for a shorter lifetime and refresh instead"
    )]
    LifetimeTooLong {
        /// Requested seconds.
        requested: u64,
        /// The limit.
        max: u64,
    },
    /// A lifetime of zero seconds was requested.
    #[error("token lifetime must be at least 1 s")]
    LifetimeZero,
    /// The clock skew allowance is larger than the limit.
    #[error(
        "clock skew allowance of {requested} s is more than the limit of {max} s: synchronise the hosts' clocks (NTP) instead"
    )]
    ClockSkewTooLarge {
        /// Requested seconds.
        requested: u64,
        /// The limit.
        max: u64,
    },
    /// A revoked principal's token was not refreshed.
    #[error("not refreshing the token of `{principal}`: revoked ({reason})")]
    Revoked {
        /// The current actor's SPIFFE id.
        principal: String,
        /// The revocation store's reason.
        reason: String,
    },
    /// The revocation store could not be asked, so nothing was refreshed (fail closed).
    #[error("not refreshing a token: the revocation check failed: {0}")]
    RevocationUnavailable(String),
    /// A per-call target is not usable.
    #[error("invalid per-call target: {0}")]
    InvalidCallTarget(String),
    /// The claims could not be encoded (a bug).
    #[error("cannot encode token claims: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Why a token was refused. Every variant is a refusal: the caller denies the request.
/// Exhaustive on purpose, so a new reason breaks callers at compile time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The token is not a compact JWS with a well-formed header and claims.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// The header names an algorithm other than EdDSA.
    #[error("token uses algorithm `{0}`: only EdDSA is accepted")]
    UnsupportedAlgorithm(String),
    /// No key of the expected tenant has this key id (or the key retired too long ago).
    #[error("token is signed with key `{kid}` which is not a current key of tenant `{tenant}`")]
    UnknownKey {
        /// The key id from the header.
        kid: String,
        /// The tenant whose keys were searched.
        tenant: String,
    },
    /// The signature does not match.
    #[error("token signature does not verify: the token was altered or signed by another key")]
    BadSignature,
    /// The token's issuer is not the expected tenant.
    #[error("token was issued by `{found}`, not by tenant `{expected}`")]
    WrongTenant {
        /// Expected tenant.
        expected: String,
        /// The `iss` claim.
        found: String,
    },
    /// The token is for another audience.
    #[error("token is for audience `{found}`, not `{expected}`")]
    WrongAudience {
        /// Expected audience.
        expected: String,
        /// The `aud` claim.
        found: String,
    },
    /// The token is a task token where a per-call token was expected, or the reverse.
    #[error("token is a {found:?} token where a {expected:?} token was expected")]
    WrongUse {
        /// Expected use.
        expected: crate::TokenUse,
        /// The token's `token_use`.
        found: crate::TokenUse,
    },
    /// The token expired (beyond the allowed clock skew).
    #[error(
        "token expired at {exp} (now {now}, skew allowance {leeway} s): the boundary refreshes tokens before they expire"
    )]
    Expired {
        /// The `exp` claim.
        exp: u64,
        /// The verifier's time.
        now: u64,
        /// Allowed skew.
        leeway: u64,
    },
    /// The token is not valid yet, or was issued in the future (beyond the skew).
    #[error("token is not valid before {nbf} (now {now}): the issuer's clock is ahead")]
    NotYetValid {
        /// The `nbf` claim.
        nbf: u64,
        /// The verifier's time.
        now: u64,
    },
    /// The token's lifetime is longer than tokens may live.
    #[error("token lifetime of {0} s is longer than any Agent Space token lives")]
    LifetimeTooLong(u64),
    /// The claims do not describe a valid principal (bad user, chain or tenant mix).
    #[error("token's principal is invalid: {0}")]
    InvalidPrincipal(String),
    /// The token's current actor is not the agent task that presented it.
    #[error(
        "token acts as `{found}`, not as `{expected}`: a token of one agent task cannot be used as another"
    )]
    ActorMismatch {
        /// The expected SPIFFE id.
        expected: String,
        /// The token's current actor.
        found: String,
    },
    /// A per-call token was presented for another call.
    #[error("per-call token is for `{found}`, not for `{expected}`")]
    WrongCall {
        /// The expected method and URL.
        expected: String,
        /// The token's `htm` and `htu`.
        found: String,
    },
    /// The revocation store says the principal (or one of its delegators) is revoked.
    #[error("token of `{principal}` is revoked: {reason}")]
    Revoked {
        /// The current actor's SPIFFE id.
        principal: String,
        /// The revocation store's reason.
        reason: String,
    },
    /// A one-time token was presented again.
    #[error("one-time token `{jti}` was already used")]
    Replayed {
        /// The token id.
        jti: String,
    },
    /// The revocation store could not be asked (fail closed).
    #[error("cannot check revocation, so the token is refused: {0}")]
    RevocationUnavailable(String),
    /// The replay store could not be used (fail closed).
    #[error("cannot record the one-time token, so it is refused: {0}")]
    ReplayStoreUnavailable(String),
    /// The key store could not be read (fail closed).
    #[error("cannot read the verification keys, so the token is refused: {0}")]
    KeyStoreUnavailable(String),
}
