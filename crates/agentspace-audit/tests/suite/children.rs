//! Code that runs in child processes started by the crash and multi-process tests.
//! As an ordinary test (no `AGENTSPACE_AUDIT_CHILD`), it does nothing.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use agentspace_audit::AuditLog;

use super::support::http_event;

#[test]
fn child_main() {
    let Ok(mode) = std::env::var("AGENTSPACE_AUDIT_CHILD") else {
        return;
    };
    let state = PathBuf::from(std::env::var("AGENTSPACE_AUDIT_CHILD_STATE").unwrap());
    let arg = std::env::var("AGENTSPACE_AUDIT_CHILD_ARG").unwrap_or_default();
    let log = AuditLog::open(&state).unwrap();
    let out = Mutex::new(std::io::stdout());
    match mode.as_str() {
        // Appends forever from four threads, printing each acknowledged event, until killed.
        "crash" => std::thread::scope(|s| {
            for t in 0..4u64 {
                let (log, out) = (&log, &out);
                s.spawn(move || {
                    for i in 0.. {
                        let mut e = http_event("acme", i);
                        e.task = Some(format!("w{t}-{i}"));
                        let r = log.append(e).unwrap();
                        let mut o = out.lock().unwrap();
                        writeln!(o, "ACK {} w{t}-{i}", r.seq).unwrap();
                        o.flush().unwrap();
                    }
                });
            }
        }),
        // Appends `arg` events from two threads, in batches of 1 and 7.
        "burst" => {
            let n: u64 = arg.parse().unwrap();
            std::thread::scope(|s| {
                let log = &log;
                s.spawn(move || {
                    for i in 0..n / 2 {
                        log.append(http_event("acme", i)).unwrap();
                    }
                });
                s.spawn(move || {
                    let mut left = n - n / 2;
                    while left > 0 {
                        let k = left.min(7);
                        log.append_batch((0..k).map(|i| http_event("acme", i)).collect())
                            .unwrap();
                        left -= k;
                    }
                });
            });
            writeln!(out.lock().unwrap(), "DONE").unwrap();
        }
        other => panic!("unknown child mode {other}"),
    }
}
