//! Verification: every hash, signature, sequence number, time order, index column and
//! checkpoint of a tenant's chain, stopping at the first bad event.

use std::sync::{Mutex, mpsc};

use agentspace_core::parse_audit_time;
use ed25519_dalek::{Signature, Verifier};
use serde_json::Value;

use crate::canonical::canonicalize;
use crate::chain::{Checkpoint, GENESIS, SignedCheckpoint, chain_hash, event_signing_input};
use crate::error::AuditError;
use crate::keys::TrustedKeys;
use crate::log::AuditLog;
use crate::merkle::{CompactRange, Hash, leaf_hash};
use crate::store::{CheckpointRow, Row};

/// Where verification failed and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tenant `{tenant}`: {}{problem}", seq.map(|s| format!("event {s}: ")).unwrap_or_default())]
pub struct VerifyFailure {
    /// The tenant whose chain is bad.
    pub tenant: String,
    /// The first bad sequence number, when the problem is at an event.
    pub seq: Option<u64>,
    /// What is wrong.
    pub problem: String,
}

/// What to verify and against which keys.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Only this tenant (default: every tenant in the store).
    pub tenant: Option<String>,
    /// A checkpoint kept outside the log; the log must still contain what it covers.
    pub checkpoint: Option<SignedCheckpoint>,
    /// The keys to trust (default: the public keys in the state directory).
    pub trusted_keys: Option<TrustedKeys>,
}

/// What a successful verification covered, per tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedTenant {
    /// The tenant.
    pub tenant: String,
    /// Number of events, all verified.
    pub events: u64,
    /// Number of stored checkpoints, all verified.
    pub checkpoints: u64,
    /// The chain hash of the last event, hex.
    pub head: String,
    /// The Merkle tree head over all events, hex.
    pub root: String,
}

/// Events are read and signature batches checked in chunks of this many.
const CHUNK: u64 = 2048;

impl AuditLog {
    /// Verifies the chains. Returns [`AuditError::Tampered`] with the first bad sequence
    /// number when anything does not check out.
    pub fn verify(&self, options: &VerifyOptions) -> Result<Vec<VerifiedTenant>, AuditError> {
        let trusted = match &options.trusted_keys {
            Some(k) => k.clone(),
            None => self.local_trusted_keys()?,
        };
        let mut tenants = match &options.tenant {
            Some(t) => vec![t.clone()],
            None => self.tenants()?,
        };
        if let Some(cp) = &options.checkpoint
            && !tenants.contains(&cp.checkpoint.tenant)
        {
            if options.tenant.is_some() {
                return Err(AuditError::Request(format!(
                    "the checkpoint is for tenant `{}`, not `{}`",
                    cp.checkpoint.tenant,
                    options.tenant.as_deref().unwrap_or_default()
                )));
            }
            tenants.push(cp.checkpoint.tenant.clone());
        }
        let mut out = Vec::new();
        for tenant in tenants {
            let external = options
                .checkpoint
                .as_ref()
                .filter(|c| c.checkpoint.tenant == tenant);
            out.push(self.verify_tenant(&tenant, &trusted, external)?);
        }
        Ok(out)
    }

    fn verify_tenant(
        &self,
        tenant: &str,
        trusted: &TrustedKeys,
        external: Option<&SignedCheckpoint>,
    ) -> Result<VerifiedTenant, AuditError> {
        let fail = |seq: Option<u64>, problem: String| {
            AuditError::Tampered(VerifyFailure {
                tenant: tenant.to_owned(),
                seq,
                problem,
            })
        };
        let stored = self.with_reader(|s| s.checkpoints(tenant))?;
        let mut checkpoints: Vec<(SignedCheckpoint, Option<CheckpointRow>)> = Vec::new();
        for row in stored {
            checkpoints.push((
                stored_checkpoint(&row).map_err(|p| fail(None, p))?,
                Some(row),
            ));
        }
        if let Some(cp) = external {
            checkpoints.push((cp.clone(), None));
        }
        for (cp, _) in &checkpoints {
            check_checkpoint_signature(tenant, cp, trusted).map_err(|p| fail(None, p))?;
        }
        checkpoints.sort_by_key(|(cp, _)| cp.checkpoint.size);

        let (sig_tx, sig_rx) = mpsc::channel::<Vec<Item>>();
        let sig_rx = Mutex::new(sig_rx);
        let first_bad_sig: Mutex<Option<(u64, String)>> = Mutex::new(None);
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 4);
        let scanned = std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| check_items(tenant, trusted, &sig_rx, &first_bad_sig));
            }
            let result = self.scan_chain(tenant, &checkpoints, &sig_tx, &first_bad_sig);
            drop(sig_tx);
            result
        });
        let bad_sig = first_bad_sig.into_inner().ok().flatten();
        let (scan_error, summary) = match scanned {
            Ok(summary) => (None, Some(summary)),
            Err(ScanError::Tampered(seq, problem)) => (Some((seq, problem)), None),
            Err(ScanError::Store(e)) => return Err(e),
            Err(ScanError::Stopped) => (None, None),
        };
        // Report whichever problem comes first in the chain.
        let first = match (scan_error, bad_sig) {
            (Some(a), Some(b)) => Some(if b.0 <= a.0.unwrap_or(u64::MAX) {
                (Some(b.0), b.1)
            } else {
                a
            }),
            (Some(a), None) => Some(a),
            (None, Some(b)) => Some((Some(b.0), b.1)),
            (None, None) => None,
        };
        if let Some((seq, problem)) = first {
            return Err(fail(seq, problem));
        }
        summary.ok_or_else(|| fail(None, "verification did not finish".to_owned()))
    }

    /// The sequential part: sequence numbers, time order, the hash chain, the Merkle
    /// tree and checkpoints. Everything that can run in parallel (parsing, field checks,
    /// signatures) goes to the workers in chunks.
    fn scan_chain(
        &self,
        tenant: &str,
        checkpoints: &[(SignedCheckpoint, Option<CheckpointRow>)],
        items: &mpsc::Sender<Vec<Item>>,
        worker_failed: &Mutex<Option<(u64, String)>>,
    ) -> Result<VerifiedTenant, ScanError> {
        let mut prev: Hash = GENESIS;
        let mut prev_time = 0u64;
        let mut range = CompactRange::default();
        let mut next_cp = checkpoints.iter().peekable();
        let mut expected: u64 = 0;
        loop {
            let rows = self
                .with_reader(|s| s.events(tenant, expected, CHUNK))
                .map_err(ScanError::Store)?;
            if rows.is_empty() {
                break;
            }
            let mut chunk = Vec::with_capacity(rows.len());
            let mut step = |row: Row, chunk: &mut Vec<Item>| -> Result<(), ScanError> {
                // Checkpoints covering exactly the events seen so far.
                while let Some((cp, stored)) =
                    next_cp.next_if(|(cp, _)| cp.checkpoint.size == expected)
                {
                    check_checkpoint(cp, stored.as_ref(), &range, &prev)
                        .map_err(|p| ScanError::Tampered(None, p))?;
                }
                let seq = expected;
                let bad = |p: &str| ScanError::Tampered(Some(seq), p.to_owned());
                if row.seq != seq {
                    return Err(bad(
                        "event is missing (the next stored event has a later sequence number)",
                    ));
                }
                if row.time_ns < prev_time {
                    return Err(bad("time is earlier than the previous event's"));
                }
                let hash = chain_hash(&prev, &row.event);
                if row.hash != hash {
                    // Say what is wrong with the event itself when that is visible.
                    let why = check_event(tenant, &row).err().unwrap_or_else(|| {
                        "chain hash does not match SHA-256(previous hash ‖ canonical event)"
                            .to_owned()
                    });
                    return Err(bad(&why));
                }
                range.push(leaf_hash(&row.event));
                prev = hash;
                prev_time = row.time_ns;
                expected += 1;
                chunk.push(Item { hash, row });
                Ok(())
            };
            let outcome = rows.into_iter().try_for_each(|row| step(row, &mut chunk));
            // Events before a chain problem still get their other checks, so the first
            // bad event is reported whatever is wrong with it. A closed channel means
            // the workers are gone; the scan result still stands.
            let _ = items.send(chunk);
            outcome?;
            if worker_failed.lock().map_or(true, |f| f.is_some()) {
                // A worker found a bad event already; it is earlier than anything
                // further on, so stop reading.
                return Err(ScanError::Stopped);
            }
        }
        for (cp, stored) in next_cp {
            if cp.checkpoint.size == expected {
                check_checkpoint(cp, stored.as_ref(), &range, &prev)
                    .map_err(|p| ScanError::Tampered(None, p))?;
            } else {
                return Err(ScanError::Tampered(
                    Some(expected),
                    format!(
                        "the log ends after {expected} events but a {} checkpoint covers {}: events were removed from the tail",
                        if stored.is_some() { "stored" } else { "given" },
                        cp.checkpoint.size
                    ),
                ));
            }
        }
        Ok(VerifiedTenant {
            tenant: tenant.to_owned(),
            events: expected,
            checkpoints: u64::try_from(checkpoints.iter().filter(|(_, s)| s.is_some()).count())
                .unwrap_or(0),
            head: hex::encode(prev),
            root: hex::encode(range.root()),
        })
    }
}

enum ScanError {
    Tampered(Option<u64>, String),
    Store(AuditError),
    /// Stopped early because a worker found a bad event.
    Stopped,
}

/// An event whose chain hash checked out, for a worker's checks.
struct Item {
    hash: Hash,
    row: Row,
}

/// Worker: per chunk, checks each event against its row (canonical form, fields,
/// index columns, trusted key id), then batch-verifies the chunk's signatures; on a
/// failed batch, finds the first bad signature. Records the earliest failure.
fn check_items(
    tenant: &str,
    trusted: &TrustedKeys,
    chunks: &Mutex<mpsc::Receiver<Vec<Item>>>,
    first_bad: &Mutex<Option<(u64, String)>>,
) {
    let record = |seq: u64, problem: String| {
        if let Ok(mut slot) = first_bad.lock()
            && slot.as_ref().is_none_or(|(s, _)| seq < *s)
        {
            *slot = Some((seq, problem));
        }
    };
    loop {
        let next = match chunks.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(items) = next else { return };
        let mut messages = Vec::with_capacity(items.len());
        let mut sigs = Vec::with_capacity(items.len());
        let mut keys = Vec::with_capacity(items.len());
        let mut seqs = Vec::with_capacity(items.len());
        for item in &items {
            let seq = item.row.seq;
            let checked = check_event(tenant, &item.row).and_then(|kid| {
                let key = trusted.get(tenant, &kid).ok_or_else(|| {
                    format!("signed with key `{kid}`, which is not a trusted key of this tenant")
                })?;
                let sig: [u8; 64] = item
                    .row
                    .sig
                    .as_slice()
                    .try_into()
                    .map_err(|_| "signature is not 64 bytes".to_owned())?;
                Ok((*key, Signature::from_bytes(&sig)))
            });
            match checked {
                Ok((key, sig)) => {
                    messages.push(event_signing_input(&item.hash));
                    sigs.push(sig);
                    keys.push(key);
                    seqs.push(seq);
                }
                Err(problem) => {
                    record(seq, problem);
                    break;
                }
            }
        }
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        if ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok() {
            continue;
        }
        let bad = (0..seqs.len()).find(|&i| match (keys.get(i), refs.get(i), sigs.get(i)) {
            (Some(k), Some(m), Some(s)) => k.verify(m, s).is_err(),
            _ => false,
        });
        if let Some(seq) = bad.and_then(|i| seqs.get(i)) {
            record(
                *seq,
                "signature does not verify with the event's key".to_owned(),
            );
        }
    }
}

/// Checks an event against its row; returns the id of the key that signed it.
fn check_event(tenant: &str, row: &Row) -> Result<String, String> {
    let value: Value =
        serde_json::from_slice(&row.event).map_err(|e| format!("stored event is not JSON: {e}"))?;
    let canonical =
        canonicalize(&value).map_err(|e| format!("stored event has no canonical form: {e}"))?;
    if canonical != row.event {
        return Err("stored event is not in RFC 8785 canonical form".to_owned());
    }
    let s = |name: &str| value.get(name).and_then(Value::as_str);
    if value.get("v").and_then(Value::as_u64) != Some(1) {
        return Err("event schema version `v` is not 1".to_owned());
    }
    if value.get("seq").and_then(Value::as_u64) != Some(row.seq) {
        return Err(
            "the event's `seq` is not its position in the chain (rows swapped or renumbered)"
                .to_owned(),
        );
    }
    if s("tenant") != Some(tenant) || row.tenant != tenant {
        return Err("the event belongs to another tenant".to_owned());
    }
    let time_ns = s("time")
        .and_then(parse_audit_time)
        .ok_or("the event's `time` is not a valid time")?;
    if time_ns != row.time_ns {
        return Err("the `time_ns` column does not match the event".to_owned());
    }
    if s("kind") != Some(row.kind.as_str()) {
        return Err("the `kind` column does not match the event".to_owned());
    }
    if s("task") != row.task.as_deref() {
        return Err("the `task` column does not match the event".to_owned());
    }
    Ok(s("kid").ok_or("the event has no `kid`")?.to_owned())
}

fn stored_checkpoint(row: &CheckpointRow) -> Result<SignedCheckpoint, String> {
    let checkpoint: Checkpoint = serde_json::from_slice(&row.body)
        .map_err(|e| format!("stored checkpoint at size {} is unreadable: {e}", row.size))?;
    if checkpoint.size != row.size {
        return Err(format!(
            "stored checkpoint at size {} claims size {}",
            row.size, checkpoint.size
        ));
    }
    Ok(SignedCheckpoint {
        checkpoint,
        sig: hex::encode(&row.sig),
    })
}

fn check_checkpoint_signature(
    tenant: &str,
    cp: &SignedCheckpoint,
    trusted: &TrustedKeys,
) -> Result<(), String> {
    let c = &cp.checkpoint;
    if c.tenant != tenant {
        return Err(format!(
            "checkpoint at size {} belongs to tenant `{}`",
            c.size, c.tenant
        ));
    }
    let key = trusted.get(tenant, &c.kid).ok_or_else(|| {
        format!(
            "checkpoint at size {} is signed with untrusted key `{}`",
            c.size, c.kid
        )
    })?;
    if !cp.verify_signature(key) {
        return Err(format!(
            "checkpoint at size {}: signature does not verify",
            c.size
        ));
    }
    Ok(())
}

/// Compares a checkpoint with the tree head and chain head computed from the events.
fn check_checkpoint(
    cp: &SignedCheckpoint,
    stored: Option<&CheckpointRow>,
    range: &CompactRange,
    head: &Hash,
) -> Result<(), String> {
    let c = &cp.checkpoint;
    if c.root != hex::encode(range.root()) {
        return Err(format!(
            "checkpoint at size {}: Merkle root does not match the events",
            c.size
        ));
    }
    if c.head != hex::encode(head) {
        return Err(format!(
            "checkpoint at size {}: chain head does not match the events",
            c.size
        ));
    }
    if let Some(row) = stored
        && (row.frontier != range.to_bytes() || Some(&row.body) != c.canonical().ok().as_ref())
    {
        return Err(format!(
            "stored checkpoint at size {} has been altered",
            c.size
        ));
    }
    Ok(())
}
