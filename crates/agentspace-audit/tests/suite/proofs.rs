//! Inclusion and consistency proofs from a real log, checked with the public checkers.

use agentspace_audit::{AuditLog, Hash, verify_consistency, verify_inclusion};

use super::support::{append_n, open_small, tenant};

fn h(s: &str) -> Hash {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn inclusion_proofs_check_against_the_signed_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_small(dir.path());
    append_n(&log, "acme", 21);
    let keys = log.local_trusted_keys().unwrap();
    let _ = keys;
    for seq in [0, 7, 8, 20] {
        let p = log.prove_inclusion(&tenant("acme"), seq).unwrap();
        assert_eq!(p.tree_size, 21);
        assert_eq!(p.root, p.checkpoint.checkpoint.root);
        let path: Vec<Hash> = p.path.iter().map(|x| h(x)).collect();
        assert!(verify_inclusion(
            seq,
            p.tree_size,
            &h(&p.leaf_hash),
            &path,
            &h(&p.root)
        ));
        assert!(!verify_inclusion(
            seq ^ 1,
            p.tree_size,
            &h(&p.leaf_hash),
            &path,
            &h(&p.root)
        ));
    }
    assert!(log.prove_inclusion(&tenant("acme"), 21).is_err());
}

#[test]
fn consistency_proofs_link_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    append_n(&log, "acme", 5);
    let old = log.checkpoint(&tenant("acme")).unwrap();
    append_n(&log, "acme", 12);
    let new = log.checkpoint(&tenant("acme")).unwrap();
    let p = log.prove_consistency(&tenant("acme"), 5, 17).unwrap();
    assert_eq!(p.from_root, old.checkpoint.root);
    assert_eq!(p.to_root, new.checkpoint.root);
    assert_eq!(p.checkpoints.len(), 2);
    let path: Vec<Hash> = p.path.iter().map(|x| h(x)).collect();
    assert!(verify_consistency(
        5,
        17,
        &h(&p.from_root),
        &h(&p.to_root),
        &path
    ));
    assert!(!verify_consistency(
        5,
        17,
        &h(&p.to_root),
        &h(&p.to_root),
        &path
    ));
    assert!(log.prove_consistency(&tenant("acme"), 9, 3).is_err());
}
