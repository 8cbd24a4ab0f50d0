//! Property: any single-byte change to any stored event, hash or signature is detected.

use std::path::Path;

use agentspace_audit::AuditLog;
use proptest::prelude::*;

use super::support::{append_n, db_path, open_small, tamper_conn, verify};

const EVENTS: u64 = 10;

/// One pristine log, copied for every case (building it per case would be slow).
fn pristine() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open_small(dir.path());
            append_n(&log, "acme", EVENTS);
            verify(&log).unwrap();
        }
        let conn = rusqlite::Connection::open(db_path(dir.path())).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        dir
    })
    .path()
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_single_byte_change_is_detected(
        seq in 0..EVENTS,
        column in prop::sample::select(vec!["event", "hash", "sig"]),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine(), dir.path());
        let conn = tamper_conn(dir.path());
        let mut bytes: Vec<u8> = conn
            .query_row(&format!("SELECT {column} FROM audit_events WHERE tenant='acme' AND seq=?1"), [seq], |r| r.get(0))
            .unwrap();
        let i = position.index(bytes.len());
        bytes[i] ^= flip;
        conn.execute(&format!("UPDATE audit_events SET {column} = ?1 WHERE tenant='acme' AND seq=?2"), rusqlite::params![bytes, seq])
            .unwrap();
        drop(conn);
        let log = AuditLog::open(dir.path()).unwrap();
        match verify(&log) {
            Err(agentspace_audit::AuditError::Tampered(f)) => prop_assert_eq!(f.seq, Some(seq), "{}", f.problem),
            other => prop_assert!(false, "byte {} of {} at event {} changed, verify said {:?}", i, column, seq, other),
        }
    }
}
