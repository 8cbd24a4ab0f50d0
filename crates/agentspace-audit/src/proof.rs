//! Inclusion and consistency proofs for `agentspace audit prove`.

use serde::Serialize;

use crate::chain::SignedCheckpoint;
use crate::error::AuditError;
use crate::log::AuditLog;
use crate::merkle::{self, Hash, consistency_path, inclusion_path, leaf_hash};

/// Proof that event `seq` is leaf `seq` of the tree of `tree_size` events.
#[derive(Clone, Debug, Serialize)]
pub struct InclusionProof {
    /// The tenant.
    pub tenant: String,
    /// The event's sequence number (its leaf index).
    pub seq: u64,
    /// The tree size the proof is against.
    pub tree_size: u64,
    /// `SHA-256(0x00 ‖ canonical event)`, hex.
    pub leaf_hash: String,
    /// The audit path, bottom up, hex.
    pub path: Vec<String>,
    /// The tree head, hex.
    pub root: String,
    /// The signed checkpoint for that tree size.
    pub checkpoint: SignedCheckpoint,
}

/// Proof that the tree of `from` events is a prefix of the tree of `to` events.
#[derive(Clone, Debug, Serialize)]
pub struct ConsistencyProof {
    /// The tenant.
    pub tenant: String,
    /// The smaller tree size.
    pub from: u64,
    /// The larger tree size.
    pub to: u64,
    /// Tree head at `from`, hex.
    pub from_root: String,
    /// Tree head at `to`, hex.
    pub to_root: String,
    /// The proof nodes, hex.
    pub path: Vec<String>,
    /// Signed checkpoints stored for `from` and `to`, where there are.
    pub checkpoints: Vec<SignedCheckpoint>,
}

fn hexes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

impl AuditLog {
    fn leaves(&self, tenant: &str, size: u64) -> Result<Vec<Hash>, AuditError> {
        let mut out = Vec::new();
        while (out.len() as u64) < size {
            let from = out.len() as u64;
            let rows = self.with_reader(|s| s.events(tenant, from, (size - from).min(8192)))?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                if row.seq != out.len() as u64 {
                    return Err(AuditError::Request(format!(
                        "event {} of tenant `{tenant}` is missing; run `agentspace audit verify`",
                        out.len()
                    )));
                }
                out.push(leaf_hash(&row.event));
            }
        }
        if (out.len() as u64) < size {
            return Err(AuditError::Request(format!(
                "tenant `{tenant}` has {} events, fewer than {size}",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Proves event `seq` against a fresh signed checkpoint over the whole log.
    pub fn prove_inclusion(
        &self,
        tenant: &agentspace_core::Name,
        seq: u64,
    ) -> Result<InclusionProof, AuditError> {
        let checkpoint = self.checkpoint(tenant)?;
        let size = checkpoint.checkpoint.size;
        if seq >= size {
            return Err(AuditError::Request(format!(
                "tenant `{tenant}` has {size} events; there is no event {seq}"
            )));
        }
        let leaves = self.leaves(tenant.as_str(), size)?;
        let index =
            usize::try_from(seq).map_err(|_| AuditError::Request("seq too large".to_owned()))?;
        let leaf = leaves
            .get(index)
            .copied()
            .ok_or_else(|| AuditError::Request("no such event".to_owned()))?;
        Ok(InclusionProof {
            tenant: tenant.to_string(),
            seq,
            tree_size: size,
            leaf_hash: hex::encode(leaf),
            path: hexes(&inclusion_path(index, &leaves)),
            root: hex::encode(merkle::root(&leaves)),
            checkpoint,
        })
    }

    /// Proves that the log at `from` events is a prefix of the log at `to` events.
    pub fn prove_consistency(
        &self,
        tenant: &agentspace_core::Name,
        from: u64,
        to: u64,
    ) -> Result<ConsistencyProof, AuditError> {
        if from > to {
            return Err(AuditError::Request(format!(
                "--from {from} is larger than --to {to}"
            )));
        }
        let leaves = self.leaves(tenant.as_str(), to)?;
        let m =
            usize::try_from(from).map_err(|_| AuditError::Request("size too large".to_owned()))?;
        let stored = self.with_reader(|s| s.checkpoints(tenant.as_str()))?;
        let checkpoints = stored
            .iter()
            .filter(|c| c.size == from || c.size == to)
            .filter_map(|c| {
                let checkpoint = serde_json::from_slice(&c.body).ok()?;
                Some(SignedCheckpoint {
                    checkpoint,
                    sig: hex::encode(&c.sig),
                })
            })
            .collect();
        Ok(ConsistencyProof {
            tenant: tenant.to_string(),
            from,
            to,
            from_root: hex::encode(merkle::root(leaves.get(..m).unwrap_or_default())),
            to_root: hex::encode(merkle::root(&leaves)),
            path: hexes(&consistency_path(m, &leaves)),
            checkpoints,
        })
    }
}
