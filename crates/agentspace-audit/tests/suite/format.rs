//! The worked example in docs/audit-format.md, recomputed from scratch with plain
//! SHA-256 and Ed25519 (not the log's own code paths), and checked against the doc.

use agentspace_audit::{canonicalize, kid_of};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

/// The example key: the 32-byte seed 00 01 02 ... 1f. Never use it for anything real.
fn example_key() -> SigningKey {
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    SigningKey::from_bytes(&seed)
}

fn example_event(seq: u64, kid: &str) -> serde_json::Value {
    serde_json::json!({
        "v": 1, "seq": seq, "time": format!("2026-01-02T03:04:05.00000000{seq}Z"),
        "tenant": "acme", "kid": kid, "task": "01jgq3p8w2x6y9z0a1b2c3d4e5",
        "user": "alice@example.com", "agent": "credit-officer",
        "kind": "http_request", "action": "GET", "resource": "https://api.example.com/v1/rates",
        "decision": if seq == 0 { "allow" } else { "deny" },
        "policies": ["policy0"], "status": 200, "bytes": 512, "latency_us": 1800,
    })
}

/// Every value the doc's worked example shows, in order.
pub(crate) fn worked_example() -> Vec<(&'static str, String)> {
    let key = example_key();
    let public = key.verifying_key();
    let kid = kid_of(&public);
    let mut out = vec![
        ("public key", hex::encode(public.as_bytes())),
        ("kid", kid.clone()),
    ];
    let mut prev = [0u8; 32];
    let mut leaves = Vec::new();
    for seq in 0..2u64 {
        let canonical = canonicalize(&example_event(seq, &kid)).unwrap();
        let hash: [u8; 32] = Sha256::new()
            .chain_update(prev)
            .chain_update(&canonical)
            .finalize()
            .into();
        let mut input = b"agentspace.audit.v1.event\0".to_vec();
        input.extend_from_slice(&hash);
        let sig = key.sign(&input);
        let leaf: [u8; 32] = Sha256::new()
            .chain_update([0u8])
            .chain_update(&canonical)
            .finalize()
            .into();
        let name = |s: &'static str, t: &'static str| if seq == 0 { s } else { t };
        out.push((
            name("canonical 0", "canonical 1"),
            String::from_utf8(canonical).unwrap(),
        ));
        out.push((name("hash 0", "hash 1"), hex::encode(hash)));
        out.push((
            name("signature input 0", "signature input 1"),
            hex::encode(&input),
        ));
        out.push((
            name("signature 0", "signature 1"),
            hex::encode(sig.to_bytes()),
        ));
        out.push((name("leaf 0", "leaf 1"), hex::encode(leaf)));
        leaves.push(leaf);
        prev = hash;
    }
    let root: [u8; 32] = Sha256::new()
        .chain_update([1u8])
        .chain_update(leaves[0])
        .chain_update(leaves[1])
        .finalize()
        .into();
    out.push(("root 2", hex::encode(root)));
    out
}

#[test]
fn the_documented_worked_example_is_current() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/audit-format.md");
    let doc = std::fs::read_to_string(doc_path).unwrap();
    for (name, value) in worked_example() {
        assert!(
            doc.contains(&value),
            "docs/audit-format.md lacks the {name} of the worked example:\n{value}"
        );
    }
}

#[test]
#[ignore = "prints the worked example for docs/audit-format.md"]
fn print_worked_example() {
    for (name, value) in worked_example() {
        println!("{name}: {value}");
    }
}
