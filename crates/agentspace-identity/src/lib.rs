//! Task identity for Agent Space: per-tenant Ed25519 keys, JWT (EdDSA) task tokens and
//! per-call tokens, their verification, replay protection and delegation.
//!
//! One [`Identity`] per state directory, held by the boundary (gateway, control plane):
//! the agent never sees a signing key and never refreshes its own token. The wire format
//! (claims, header, JWKS, key files) is documented in `docs/identity.md`.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use agentspace_core::{Actor, Name, Principal, TaskRef, UserId};
//! use agentspace_identity::{Expected, Identity, NothingRevoked, TaskTokenRequest};
//!
//! let identity = Identity::open(std::path::Path::new("/var/lib/agentspace"));
//! let tenant = Name::new("acme")?;
//! let actor = Actor::new(Name::new("credit-officer")?, TaskRef::new("42")?);
//! let principal = Principal::new(tenant.clone(), UserId::new("alice@acme.example")?, actor);
//! let token = identity.mint_task_token(&principal, &TaskTokenRequest::new("agentspace-gateway"))?;
//! let verified = identity
//!     .verify(token.as_str(), &Expected::task(&tenant, "agentspace-gateway"), &NothingRevoked)?;
//! assert_eq!(verified.principal(), &principal);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod claims;
mod clock;
mod error;
mod jws;
mod keys;
mod replay;
mod revocation;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentspace_core::{Principal, SpiffeId};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub use claims::{ActClaim, Claims, TokenUse};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{IdentityError, Rejection};
pub use keys::{Jwk, Jwks, Rotation};
pub use revocation::{NothingRevoked, RevocationCheck, RevocationCheckFailed};

/// The HTTP header that carries a per-call token to a service behind the gateway. Its
/// value is the bare compact JWT (no `Bearer ` prefix). A separate header, because the
/// gateway may put the upstream's own credential in `Authorization`.
pub const CALL_TOKEN_HEADER: &str = "Agentspace-Identity";

/// A task token lives this long unless asked otherwise.
pub const DEFAULT_TASK_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A per-call token lives this long.
pub const CALL_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// No token lives longer than this (seconds); a retired key verifies this long (plus the
/// largest clock skew) after rotation.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 15 * 60;

/// The default allowance for clock differences between issuer and verifier (seconds).
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 5;

/// The largest clock skew allowance that may be configured (seconds).
pub const MAX_CLOCK_SKEW_SECS: u64 = 30;

/// The identity authority of one state directory: keys under `<state>/identity/`, the
/// replay store, a clock and the clock skew allowance. Cheap to share behind an `Arc`;
/// safe to use from many threads and many processes at once.
pub struct Identity {
    keys: keys::KeyStore,
    replay: replay::ReplayStore,
    clock: Arc<dyn Clock>,
    skew: u64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("skew", &self.skew)
            .finish_non_exhaustive()
    }
}

/// What task token to mint: audience, lifetime, one-time or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskTokenRequest {
    audience: String,
    lifetime: u64,
    one_time: bool,
}

impl TaskTokenRequest {
    /// A reusable token for `audience` that lives [`DEFAULT_TASK_TOKEN_LIFETIME`].
    pub fn new(audience: impl Into<String>) -> Self {
        Self {
            audience: audience.into(),
            lifetime: DEFAULT_TASK_TOKEN_LIFETIME.as_secs(),
            one_time: false,
        }
    }

    /// Sets the lifetime (whole seconds; 1 s to [`MAX_TOKEN_LIFETIME_SECS`]).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime.as_secs();
        self
    }

    /// Makes the token one-time: verification accepts its `jti` once.
    pub fn one_time(mut self) -> Self {
        self.one_time = true;
        self
    }
}

/// The one call a per-call token is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallTarget {
    audience: String,
    method: String,
    url: String,
}

impl CallTarget {
    /// A call of `method` to `url` (`http://` or `https://`). The audience is the URL's
    /// origin (`https://scoring.internal.example`); the query and fragment are dropped
    /// from the `htu` claim, as in RFC 9449.
    pub fn new(method: &str, url: &str) -> Result<Self, IdentityError> {
        let bad = |why: &str| {
            IdentityError::InvalidCallTarget(format!("`{}`: {why}", jws::truncate(url)))
        };
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(IdentityError::InvalidCallTarget(format!(
                "method `{}` is not an upper-case HTTP method such as GET",
                jws::truncate(method)
            )));
        }
        let rest = url
            .strip_prefix("https://")
            .map(|r| ("https://", r))
            .or_else(|| url.strip_prefix("http://").map(|r| ("http://", r)));
        let Some((scheme, rest)) = rest else {
            return Err(bad("a per-call URL starts with `https://` or `http://`"));
        };
        let without_query = rest.split(['?', '#']).next().unwrap_or_default();
        let authority = without_query.split('/').next().unwrap_or_default();
        if authority.is_empty()
            || authority.contains('@')
            || authority
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad(
                "the URL has no host, or has user info or whitespace in it",
            ));
        }
        let path = without_query.get(authority.len()..).unwrap_or_default();
        let authority = authority.to_ascii_lowercase();
        let path = if path.is_empty() { "/" } else { path };
        Ok(Self {
            audience: format!("{scheme}{authority}"),
            method: method.to_owned(),
            url: format!("{scheme}{authority}{path}"),
        })
    }

    /// The token's audience: the service's origin.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The method (`htm`).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The URL without query or fragment (`htu`).
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A token the boundary minted. `Debug` hides the token: it is a bearer credential.
#[derive(Clone, PartialEq, Eq)]
pub struct MintedToken {
    token: String,
    claims: Claims,
    principal: Principal,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

impl MintedToken {
    /// The compact JWT.
    pub fn as_str(&self) -> &str {
        &self.token
    }

    /// Its claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// Who it is for.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// When it expires (seconds since the Unix epoch).
    pub fn expires_at(&self) -> u64 {
        self.claims.exp
    }

    /// Whether the boundary should refresh it now: less than a third of its life is left.
    pub fn needs_refresh(&self, now: u64) -> bool {
        let lifetime = self.claims.exp.saturating_sub(self.claims.iat);
        self.claims.exp.saturating_sub(now) < lifetime.div_ceil(3)
    }
}

/// What a verifier expects of a token. Built with [`Expected::task`] or [`Expected::call`].
#[derive(Clone, Debug)]
pub struct Expected<'a> {
    tenant: &'a agentspace_core::Name,
    audience: &'a str,
    token_use: TokenUse,
    actor: Option<&'a SpiffeId>,
    call: Option<&'a CallTarget>,
}

impl<'a> Expected<'a> {
    /// A task token of `tenant` for `audience`.
    pub fn task(tenant: &'a agentspace_core::Name, audience: &'a str) -> Self {
        Self {
            tenant,
            audience,
            token_use: TokenUse::Task,
            actor: None,
            call: None,
        }
    }

    /// A per-call token of `tenant` for exactly this call.
    pub fn call(tenant: &'a agentspace_core::Name, target: &'a CallTarget) -> Self {
        Self {
            tenant,
            audience: target.audience(),
            token_use: TokenUse::Call,
            actor: None,
            call: Some(target),
        }
    }

    /// Also require the current actor to be this agent task (the one presenting the
    /// token), so one task's token cannot be used as another's.
    pub fn acting_as(mut self, actor: &'a SpiffeId) -> Self {
        self.actor = Some(actor);
        self
    }
}

/// A token that passed verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    claims: Claims,
    principal: Principal,
    kid: String,
}

impl VerifiedToken {
    /// Who is acting: tenant, user and delegation chain (current actor last).
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The verified claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// The id of the key that signed it.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

fn new_jti() -> Result<String, IdentityError> {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 16];
    rand_core::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| IdentityError::Io {
            action: "get random bytes for a token id from",
            path: "the operating system".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

impl Identity {
    /// The identity authority over `<state_dir>/identity/`. Nothing is created until a key
    /// or the replay store is first needed.
    pub fn open(state_dir: &Path) -> Self {
        let dir = state_dir.join("identity");
        Self {
            replay: replay::ReplayStore::new(dir.join("replay.sqlite")),
            keys: keys::KeyStore::new(dir),
            clock: Arc::new(SystemClock),
            skew: DEFAULT_CLOCK_SKEW_SECS,
        }
    }

    /// Uses `clock` instead of the system clock (tests, simulations).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the clock skew allowance for `exp`, `nbf` and `iat` (at most
    /// [`MAX_CLOCK_SKEW_SECS`]).
    pub fn with_clock_skew(mut self, skew: Duration) -> Result<Self, IdentityError> {
        let requested = skew.as_secs();
        if requested > MAX_CLOCK_SKEW_SECS {
            return Err(IdentityError::ClockSkewTooLarge {
                requested,
                max: MAX_CLOCK_SKEW_SECS,
            });
        }
        self.skew = requested;
        Ok(self)
    }

    /// The current time of this authority's clock.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    fn mint(
        &self,
        principal: &Principal,
        audience: &str,
        lifetime: u64,
        token_use: TokenUse,
        one_time: bool,
        call: Option<&CallTarget>,
    ) -> Result<MintedToken, IdentityError> {
        if lifetime == 0 {
            return Err(IdentityError::LifetimeZero);
        }
        if lifetime > MAX_TOKEN_LIFETIME_SECS {
            return Err(IdentityError::LifetimeTooLong {
                requested: lifetime,
                max: MAX_TOKEN_LIFETIME_SECS,
            });
        }
        let now = self.clock.now();
        let key = self.keys.active_key(principal.tenant(), now)?;
        let claims = Claims {
            iss: principal.tenant().to_string(),
            sub: principal.user().to_string(),
            aud: audience.to_owned(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(lifetime),
            jti: new_jti()?,
            act: ActClaim::from_principal(principal),
            token_use,
            one_time,
            htm: call.map(|c| c.method.clone()),
            htu: call.map(|c| c.url.clone()),
        };
        let token = jws::sign(&key.header_b64, &claims, &key.key)?;
        Ok(MintedToken {
            token,
            claims,
            principal: principal.clone(),
        })
    }

    /// Mints a task token for `principal`: the boundary's credential for one agent task.
    /// For an agent started by another agent, pass `parent.delegate(child)?`: the token
    /// then names the child as the current actor, acting for the chain before it.
    pub fn mint_task_token(
        &self,
        principal: &Principal,
        request: &TaskTokenRequest,
    ) -> Result<MintedToken, IdentityError> {
        self.mint(
            principal,
            &request.audience,
            request.lifetime,
            TokenUse::Task,
            request.one_time,
            None,
        )
    }

    /// A fresh token (new `jti`, `iat`, `exp`) for the same principal, audience and
    /// lifetime, unless the principal is revoked. Only the boundary calls this: the agent
    /// never holds a key or a refresh credential.
    pub fn refresh(
        &self,
        token: &MintedToken,
        revocation: &dyn RevocationCheck,
    ) -> Result<MintedToken, IdentityError> {
        match revocation.revoked(&token.principal) {
            Ok(None) => {}
            Ok(Some(reason)) => {
                return Err(IdentityError::Revoked {
                    principal: token.principal.spiffe_id().to_string(),
                    reason,
                });
            }
            Err(e) => return Err(IdentityError::RevocationUnavailable(e.0)),
        }
        let lifetime = token.claims.exp.saturating_sub(token.claims.iat);
        let call = match (&token.claims.htm, &token.claims.htu) {
            (Some(method), Some(url)) => Some(CallTarget::new(method, url)?),
            _ => None,
        };
        self.mint(
            &token.principal,
            &token.claims.aud,
            lifetime,
            token.claims.token_use,
            token.claims.one_time,
            call.as_ref(),
        )
    }

    /// Mints the one-time, [`CALL_TOKEN_LIFETIME`] token that the gateway sends in the
    /// [`CALL_TOKEN_HEADER`] header with one forwarded call to a service behind it. Any JWT
    /// library verifies it against the tenant's JWKS.
    pub fn mint_call_token(
        &self,
        principal: &Principal,
        target: &CallTarget,
    ) -> Result<MintedToken, IdentityError> {
        self.mint(
            principal,
            &target.audience,
            CALL_TOKEN_LIFETIME.as_secs(),
            TokenUse::Call,
            true,
            Some(target),
        )
    }

    /// Verifies `token`: algorithm, key (of the expected tenant only), signature, issuer,
    /// use, audience, lifetime, expiry and not-before within the clock skew, principal and
    /// chain, the expected actor and call, revocation, and (last, so a refused token does
    /// not use up its id) replay of one-time tokens. Every failure is a [`Rejection`].
    pub fn verify(
        &self,
        token: &str,
        expected: &Expected<'_>,
        revocation: &dyn RevocationCheck,
    ) -> Result<VerifiedToken, Rejection> {
        let now = self.clock.now();
        let parsed = jws::parse(token)?;
        let key = self
            .keys
            .verifying_key(expected.tenant, &parsed.kid, now)
            .map_err(|e| Rejection::KeyStoreUnavailable(e.to_string()))?
            .ok_or_else(|| Rejection::UnknownKey {
                kid: jws::truncate(&parsed.kid),
                tenant: expected.tenant.to_string(),
            })?;
        key.verify_strict(parsed.signing_input, &parsed.signature)
            .map_err(|_| Rejection::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&parsed.payload)
            .map_err(|e| Rejection::Malformed(format!("claims: {e}")))?;
        if claims.iss != expected.tenant.as_str() {
            return Err(Rejection::WrongTenant {
                expected: expected.tenant.to_string(),
                found: jws::truncate(&claims.iss),
            });
        }
        if claims.token_use != expected.token_use {
            return Err(Rejection::WrongUse {
                expected: expected.token_use,
                found: claims.token_use,
            });
        }
        if claims.aud != expected.audience {
            return Err(Rejection::WrongAudience {
                expected: expected.audience.to_owned(),
                found: jws::truncate(&claims.aud),
            });
        }
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if claims.exp < claims.iat || lifetime > MAX_TOKEN_LIFETIME_SECS {
            return Err(Rejection::LifetimeTooLong(lifetime));
        }
        if now > claims.exp.saturating_add(self.skew) {
            return Err(Rejection::Expired {
                exp: claims.exp,
                now,
                leeway: self.skew,
            });
        }
        let not_before = claims.nbf.max(claims.iat);
        if not_before > now.saturating_add(self.skew) {
            return Err(Rejection::NotYetValid {
                nbf: not_before,
                now,
            });
        }
        let principal = claims
            .principal()
            .map_err(|e| Rejection::InvalidPrincipal(e.to_string()))?;
        if let Some(actor) = expected.actor {
            let found = principal.spiffe_id();
            if &found != actor {
                return Err(Rejection::ActorMismatch {
                    expected: actor.to_string(),
                    found: found.to_string(),
                });
            }
        }
        if let Some(call) = expected.call {
            let matches = claims.htm.as_deref() == Some(call.method())
                && claims.htu.as_deref() == Some(call.url());
            if !matches {
                return Err(Rejection::WrongCall {
                    expected: format!("{} {}", call.method(), call.url()),
                    found: format!(
                        "{} {}",
                        claims.htm.as_deref().unwrap_or("-"),
                        jws::truncate(claims.htu.as_deref().unwrap_or("-"))
                    ),
                });
            }
        }
        match revocation.revoked(&principal) {
            Ok(None) => {}
            Ok(Some(reason)) => {
                return Err(Rejection::Revoked {
                    principal: principal.spiffe_id().to_string(),
                    reason,
                });
            }
            Err(e) => return Err(Rejection::RevocationUnavailable(e.0)),
        }
        if claims.one_time {
            let forget_before = now.saturating_sub(self.skew);
            let first = self
                .replay
                .first_use(
                    &claims.iss,
                    &claims.jti,
                    claims.exp.saturating_add(self.skew),
                    forget_before,
                )
                .map_err(Rejection::ReplayStoreUnavailable)?;
            if !first {
                return Err(Rejection::Replayed {
                    jti: jws::truncate(&claims.jti),
                });
            }
        }
        Ok(VerifiedToken {
            claims,
            principal,
            kid: parsed.kid,
        })
    }

    /// The tenant's verification keys as a JWKS (creating its first key if it has none).
    pub fn jwks(&self, tenant: &agentspace_core::Name) -> Result<Jwks, IdentityError> {
        self.keys.jwks(tenant, self.clock.now())
    }

    /// Makes a new signing key for `tenant`. Tokens signed by the old key keep verifying
    /// until they expire; its private half is deleted now.
    pub fn rotate(&self, tenant: &agentspace_core::Name) -> Result<Rotation, IdentityError> {
        self.keys.rotate(tenant, self.clock.now())
    }
}
