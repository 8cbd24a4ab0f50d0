//! The exact bytes that are hashed and signed: the chain hash, the event signature
//! input and signed checkpoints. docs/audit-format.md describes the same bytes for
//! people who write their own verifier; keep the two in step.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::canonical::canonicalize;
use crate::error::AuditError;
use crate::merkle::Hash;

/// The chain value before a tenant's first event (32 zero bytes).
pub const GENESIS: Hash = [0u8; 32];

/// Domain separation prefix of an event signature's input.
pub const EVENT_SIGNING_CONTEXT: &[u8] = b"agentspace.audit.v1.event\0";
/// Domain separation prefix of a checkpoint signature's input.
pub const CHECKPOINT_SIGNING_CONTEXT: &[u8] = b"agentspace.audit.v1.checkpoint\0";

/// `hash_n = SHA-256(hash_{n-1} ‖ canonical(event_n))`.
pub fn chain_hash(prev: &Hash, canonical_event: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical_event);
    h.finalize().into()
}

/// The bytes an event's signature covers: the context string, then `hash_n`.
pub fn event_signing_input(hash: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(EVENT_SIGNING_CONTEXT.len() + 32);
    m.extend_from_slice(EVENT_SIGNING_CONTEXT);
    m.extend_from_slice(hash);
    m
}

pub(crate) fn sign_event(key: &SigningKey, hash: &Hash) -> [u8; 64] {
    key.sign(&event_signing_input(hash)).to_bytes()
}

/// A Merkle tree head over the first `size` events of a tenant's chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Format version, 1.
    pub v: u32,
    /// The tenant.
    pub tenant: String,
    /// Number of events covered (events `0..size`).
    pub size: u64,
    /// RFC 6962 tree head over those events, hex.
    pub root: String,
    /// The chain hash of event `size - 1` (64 zeros when `size` is 0), hex.
    pub head: String,
    /// When the checkpoint was made (event time format).
    pub time: String,
    /// The signing key's id.
    pub kid: String,
}

/// A checkpoint and its signature: what `agentspace audit checkpoint` exports for an
/// outside party to keep, and what `verify --checkpoint` reads back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCheckpoint {
    /// The signed tree head.
    pub checkpoint: Checkpoint,
    /// Ed25519 signature over the context string and the canonical checkpoint, hex.
    pub sig: String,
}

impl Checkpoint {
    /// The canonical JSON of the checkpoint.
    pub fn canonical(&self) -> Result<Vec<u8>, AuditError> {
        let value =
            serde_json::to_value(self).map_err(|e| AuditError::InvalidEvent(e.to_string()))?;
        canonicalize(&value).map_err(|e| AuditError::InvalidEvent(e.to_string()))
    }

    /// The bytes the checkpoint signature covers.
    pub fn signing_input(&self) -> Result<Vec<u8>, AuditError> {
        let mut m = CHECKPOINT_SIGNING_CONTEXT.to_vec();
        m.extend_from_slice(&self.canonical()?);
        Ok(m)
    }

    pub(crate) fn sign(self, key: &SigningKey) -> Result<SignedCheckpoint, AuditError> {
        let sig = key.sign(&self.signing_input()?);
        Ok(SignedCheckpoint {
            checkpoint: self,
            sig: hex::encode(sig.to_bytes()),
        })
    }
}

impl SignedCheckpoint {
    /// Checks the signature with `key`.
    pub fn verify_signature(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = hex::decode(&self.sig) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        let Ok(input) = self.checkpoint.signing_input() else {
            return false;
        };
        key.verify(&input, &sig).is_ok()
    }
}
