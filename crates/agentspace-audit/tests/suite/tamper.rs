//! The tamper cases of issue 4, each against a real SQLite file with the append-only
//! triggers dropped by hand. Verify must name the first bad sequence number.

use std::path::Path;

use agentspace_audit::{
    AuditLog, SignedCheckpoint, TrustedKeys, VerifyOptions, canonicalize, chain_hash,
    event_signing_input,
};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use pretty_assertions::assert_eq;

use super::support::{append_n, first_bad, http_event, open_small, tamper_conn, tenant, verify};

fn setup(n: u64) -> (tempfile::TempDir, AuditLog) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_small(dir.path());
    // One at a time, so checkpoints land at sizes 1 and 8 as well.
    for i in 0..n {
        log.append(http_event("acme", i)).unwrap();
    }
    append_n(&log, "globex", 3);
    verify(&log).unwrap();
    (dir, log)
}

#[test]
fn changing_one_field_is_detected_at_that_event() {
    let (dir, log) = setup(12);
    tamper_conn(dir.path())
        .execute("UPDATE audit_events SET event = replace(event, X'22474554', X'22505554') WHERE tenant = 'acme' AND seq = 5", [])
        .unwrap();
    let (seq, problem) = first_bad(&log, &VerifyOptions::default());
    assert_eq!(seq, Some(5));
    assert!(problem.contains("chain hash"), "{problem}");
}

#[test]
fn changing_an_index_column_is_detected() {
    let (dir, log) = setup(6);
    tamper_conn(dir.path())
        .execute(
            "UPDATE audit_events SET task = 'someone-else' WHERE tenant = 'acme' AND seq = 2",
            [],
        )
        .unwrap();
    let (seq, problem) = first_bad(&log, &VerifyOptions::default());
    assert_eq!(seq, Some(2));
    assert!(problem.contains("`task` column"), "{problem}");
}

#[test]
fn deleting_a_row_is_detected_as_a_gap() {
    let (dir, log) = setup(12);
    tamper_conn(dir.path())
        .execute(
            "DELETE FROM audit_events WHERE tenant = 'acme' AND seq = 4",
            [],
        )
        .unwrap();
    let (seq, problem) = first_bad(&log, &VerifyOptions::default());
    assert_eq!(seq, Some(4));
    assert!(problem.contains("missing"), "{problem}");
}

#[test]
fn swapping_two_rows_is_detected() {
    let (dir, log) = setup(12);
    let conn = tamper_conn(dir.path());
    // Move every column but the key from 6 to 7 and back, as one swap.
    conn.execute_batch(
        "CREATE TEMP TABLE a AS SELECT * FROM audit_events WHERE tenant = 'acme' AND seq IN (6, 7);
         DELETE FROM audit_events WHERE tenant = 'acme' AND seq IN (6, 7);
         INSERT INTO audit_events SELECT tenant, 13 - seq, time_ns, kind, task, event, hash, sig FROM a;",
    )
    .unwrap();
    let (seq, problem) = first_bad(&log, &VerifyOptions::default());
    assert_eq!(seq, Some(6));
    assert!(problem.contains("position"), "{problem}");
}

#[test]
fn truncating_the_tail_is_detected_against_an_exported_checkpoint() {
    let (dir, log) = setup(12);
    let exported = serde_json::to_string(&log.checkpoint(&tenant("acme")).unwrap()).unwrap();
    // The attacker removes the last events and every checkpoint that mentions them.
    let conn = tamper_conn(dir.path());
    conn.execute(
        "DELETE FROM audit_events WHERE tenant = 'acme' AND seq >= 9",
        [],
    )
    .unwrap();
    conn.execute(
        "DELETE FROM audit_checkpoints WHERE tenant = 'acme' AND size > 9",
        [],
    )
    .unwrap();
    // Without an outside checkpoint the shorter log is self-consistent...
    verify(&log).unwrap();
    // ...with the one an outside party kept, it is not.
    let kept: SignedCheckpoint = serde_json::from_str(&exported).unwrap();
    let options = VerifyOptions {
        checkpoint: Some(kept),
        ..VerifyOptions::default()
    };
    let (seq, problem) = first_bad(&log, &options);
    assert_eq!(seq, Some(9));
    assert!(problem.contains("removed from the tail"), "{problem}");
}

#[test]
fn a_forged_exported_checkpoint_is_rejected() {
    let (_dir, log) = setup(4);
    let mut cp = log.checkpoint(&tenant("acme")).unwrap();
    cp.checkpoint.size = 100;
    let (_, problem) = first_bad(
        &log,
        &VerifyOptions {
            checkpoint: Some(cp),
            ..VerifyOptions::default()
        },
    );
    assert!(problem.contains("signature does not verify"), "{problem}");
}

#[test]
fn replacing_a_signature_is_detected() {
    let (dir, log) = setup(12);
    tamper_conn(dir.path())
        .execute(
            "UPDATE audit_events SET sig = (SELECT sig FROM audit_events WHERE tenant = 'acme' AND seq = 2)
             WHERE tenant = 'acme' AND seq = 3",
            [],
        )
        .unwrap();
    let (seq, problem) = first_bad(&log, &VerifyOptions::default());
    assert_eq!(seq, Some(3));
    assert!(problem.contains("signature"), "{problem}");
}

fn signing_key_of(state: &Path, tenant_name: &str) -> (String, SigningKey) {
    let dir = state.join("audit/keys").join(tenant_name);
    let kid = std::fs::read_to_string(dir.join("current")).unwrap();
    let pem = std::fs::read_to_string(dir.join(format!("{kid}.key.pem"))).unwrap();
    (kid, SigningKey::from_pkcs8_pem(&pem).unwrap())
}

/// Rewrites acme's chain from event `from` on, re-hashed and re-signed with `key`,
/// naming `kid` in each event: what an attacker holding some key can do.
fn resign_chain(state: &Path, from: u64, kid: &str, key: &SigningKey) {
    let conn = tamper_conn(state);
    let mut prev: [u8; 32] = if from == 0 {
        [0; 32]
    } else {
        let h: Vec<u8> = conn
            .query_row(
                "SELECT hash FROM audit_events WHERE tenant='acme' AND seq=?1",
                [from - 1],
                |r| r.get(0),
            )
            .unwrap();
        h.try_into().unwrap()
    };
    let rows: Vec<(i64, Vec<u8>)> = conn
        .prepare(
            "SELECT seq, event FROM audit_events WHERE tenant='acme' AND seq >= ?1 ORDER BY seq",
        )
        .unwrap()
        .query_map([from], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (seq, event) in rows {
        let mut value: serde_json::Value = serde_json::from_slice(&event).unwrap();
        value["kid"] = kid.into();
        value["action"] = "POST".into();
        let bytes = canonicalize(&value).unwrap();
        let hash = chain_hash(&prev, &bytes);
        let sig = key.sign(&event_signing_input(&hash)).to_bytes();
        conn.execute(
            "UPDATE audit_events SET event = ?1, hash = ?2, sig = ?3 WHERE tenant = 'acme' AND seq = ?4",
            rusqlite::params![bytes, hash.to_vec(), sig.to_vec(), seq],
        )
        .unwrap();
        prev = hash;
    }
}

#[test]
fn re_signing_with_another_tenants_key_is_detected() {
    let (dir, log) = setup(12);
    let (kid, key) = signing_key_of(dir.path(), "globex");
    resign_chain(dir.path(), 5, &kid, &key);
    let (seq, problem) = first_bad(&log, &VerifyOptions::default());
    assert_eq!(seq, Some(5));
    assert!(
        problem.contains("not a trusted key of this tenant"),
        "{problem}"
    );
}

#[test]
fn re_signing_with_another_key_under_the_tenants_key_id_is_detected() {
    let (dir, log) = setup(12);
    let (acme_kid, _) = signing_key_of(dir.path(), "acme");
    let (_, globex_key) = signing_key_of(dir.path(), "globex");
    resign_chain(dir.path(), 7, &acme_kid, &globex_key);
    let (seq, problem) = first_bad(&log, &VerifyOptions::default());
    assert_eq!(seq, Some(7));
    assert!(problem.contains("signature does not verify"), "{problem}");
}

#[test]
fn a_verifier_with_only_the_published_jwks_still_catches_a_stolen_key_dir() {
    // The attacker replaces the local key directory with their own key and re-signs;
    // a verifier that pinned the JWKS published earlier is not fooled.
    let (dir, log) = setup(6);
    let published = serde_json::to_string(&log.public_jwks(&tenant("acme")).unwrap()).unwrap();
    let attacker = SigningKey::from_bytes(&[7u8; 32]);
    let kid = agentspace_audit::kid_of(&attacker.verifying_key());
    resign_chain(dir.path(), 0, &kid, &attacker);
    let pinned = TrustedKeys::from_jwks(&published).unwrap();
    let options = VerifyOptions {
        tenant: Some("acme".to_owned()),
        trusted_keys: Some(pinned),
        ..VerifyOptions::default()
    };
    let (seq, _) = first_bad(&log, &options);
    assert_eq!(seq, Some(0));
}

#[test]
fn altering_a_stored_checkpoint_is_detected() {
    let (dir, log) = setup(12);
    tamper_conn(dir.path())
        .execute("UPDATE audit_checkpoints SET frontier = zeroblob(length(frontier)) WHERE tenant = 'acme' AND size = 8", [])
        .unwrap();
    let (_, problem) = first_bad(&log, &VerifyOptions::default());
    assert!(problem.contains("checkpoint at size 8"), "{problem}");
}
