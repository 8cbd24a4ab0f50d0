//! Durability and multi-process writers, with real child processes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};

use agentspace_audit::AuditLog;
use pretty_assertions::assert_eq;

use super::support::{child, http_event, verify};

#[test]
fn sigkill_during_a_burst_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let mut proc = child("crash", dir.path(), "").spawn().unwrap();
        let stdout = proc.stdout.take().unwrap();
        let mut acked: BTreeMap<u64, String> = BTreeMap::new();
        // The reader stays open until after the kill, so the child never sees a closed pipe.
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let (seq, task) = rest.split_once(' ').unwrap();
            acked.insert(seq.parse().unwrap(), task.to_owned());
            if acked.len() >= 300 {
                break;
            }
        }
        proc.kill().unwrap(); // SIGKILL, mid-burst: the four writers are still appending
        proc.wait().unwrap();
        drop(lines);
        assert!(
            acked.len() >= 300,
            "round {round}: the child acknowledged only {}",
            acked.len()
        );

        let log = AuditLog::open(dir.path()).unwrap();
        let report = verify(&log).unwrap();
        let last = *acked.keys().last().unwrap();
        assert!(
            report[0].events > last,
            "round {round}: acknowledged event {last} is gone"
        );
        for (seq, task) in &acked {
            let stored = log.events_from("acme", *seq, 1).unwrap();
            assert_eq!(
                stored[0].event.task.as_deref(),
                Some(task.as_str()),
                "round {round}, event {seq}"
            );
        }
        // Appending continues the same chain.
        let next = log.append(http_event("acme", 0)).unwrap();
        assert_eq!(next.seq, report[0].events);
        verify(&log).unwrap();
    }
}

#[test]
fn writers_in_several_processes_keep_one_gap_free_chain() {
    let dir = tempfile::tempdir().unwrap();
    let procs: Vec<_> = (0..3)
        .map(|_| child("burst", dir.path(), "150").spawn().unwrap())
        .collect();
    // And one writer in this process at the same time.
    let log = AuditLog::open(dir.path()).unwrap();
    for i in 0..50 {
        log.append(http_event("acme", i)).unwrap();
    }
    for p in procs {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("DONE"));
    }
    let report = verify(&log).unwrap();
    assert_eq!(report[0].events, 3 * 150 + 50);
}
