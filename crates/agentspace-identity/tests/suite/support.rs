//! Shared fixtures: a temporary state directory, a manual clock, principals, and a way to
//! sign arbitrary claims with a tenant's real key (to play a buggy or compromised issuer).

use std::path::Path;
use std::sync::Arc;

use agentspace_core::{Actor, Name, Principal, TaskRef, UserId};
use agentspace_identity::{
    Expected, Identity, ManualClock, MintedToken, NothingRevoked, Rejection, TaskTokenRequest,
    VerifiedToken,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;

pub(crate) const T0: u64 = 1_700_000_000;
pub(crate) const GATEWAY: &str = "agentspace-gateway";

pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) identity: Identity,
    pub(crate) tenant: Name,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let identity = Identity::open(dir.path()).with_clock(clock.clone());
        Self {
            dir,
            clock,
            identity,
            tenant: name("acme"),
        }
    }

    /// Another authority over the same state directory and clock: another process.
    pub(crate) fn another_process(&self) -> Identity {
        Identity::open(self.dir.path()).with_clock(self.clock.clone())
    }

    /// A reusable task token for the gateway audience.
    pub(crate) fn mint(&self, principal: &Principal) -> MintedToken {
        self.identity
            .mint_task_token(principal, &TaskTokenRequest::new(GATEWAY))
            .unwrap()
    }

    /// Verifies a task token for the gateway audience of this tenant, nothing revoked.
    pub(crate) fn verify(&self, token: &str) -> Result<VerifiedToken, Rejection> {
        self.identity.verify(
            token,
            &Expected::task(&self.tenant, GATEWAY),
            &NothingRevoked,
        )
    }

    pub(crate) fn principal(&self, agent: &str, task: &str) -> Principal {
        Principal::new(
            self.tenant.clone(),
            UserId::new("alice@acme.example").unwrap(),
            actor(agent, task),
        )
    }
}

pub(crate) fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

pub(crate) fn actor(agent: &str, task: &str) -> Actor {
    Actor::new(name(agent), TaskRef::new(task).unwrap())
}

pub(crate) fn decode_part(token: &str, index: usize) -> serde_json::Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Replaces the claims of `token`, keeping its header and signature (a tampering agent).
pub(crate) fn with_claims(token: &str, claims: &serde_json::Value) -> String {
    let mut parts = token.split('.');
    let header = parts.next().unwrap();
    parts.next();
    let signature = parts.next().unwrap();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    format!("{header}.{payload}.{signature}")
}

/// Signs `claims` under `header` with the tenant's real active key read from disk, as a
/// buggy issuer would: tests that verification does not trust claims just for being signed.
pub(crate) fn forge(
    state: &Path,
    tenant: &str,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> String {
    let pem = std::fs::read_to_string(
        state
            .join("identity/tenants")
            .join(tenant)
            .join("signing-key.pem"),
    )
    .unwrap();
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}
