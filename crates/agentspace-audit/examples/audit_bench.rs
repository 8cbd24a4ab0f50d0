//! Audit log benchmark: durable appends per second (chain + Ed25519 + group commit) at
//! several batch sizes and writer counts, against plain SQLite inserts of the same rows
//! (same durability settings, no chain, no signature) in the same run; verify
//! throughput; and the raw cost of SHA-256, Ed25519 and canonical JSON alone.
//!
//! Run: `bench/audit.sh` (or `cargo run --release -p agentspace-audit --example audit_bench`).
//! Prints a Markdown report. `AUDIT_BENCH_SECS` sets the time per case (default 2).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use agentspace_audit::{
    AuditLog, AuditOptions, VerifyOptions, canonicalize, chain_hash, event_signing_input,
};
use agentspace_core::{AuditDecision, AuditEvent, AuditKind, Name};
use ed25519_dalek::{Signer, SigningKey, Verifier};

fn event(i: u64) -> AuditEvent {
    let tenant = Name::new("acme").unwrap();
    let mut e = AuditEvent::new(&tenant, AuditKind::HttpRequest, "GET");
    e.task = Some("01jgq3p8w2x6y9z0a1b2c3d4e5".to_owned());
    e.user = Some("alice@example.com".to_owned());
    e.agent = Some("credit-officer".to_owned());
    e.resource = Some(format!("https://api.example.com/v1/items/{i}"));
    e.decision = Some(AuditDecision::Allow);
    e.policies = vec!["policy0".to_owned()];
    e.request.insert("method".to_owned(), "GET".into());
    e.request
        .insert("host".to_owned(), "api.example.com".into());
    e.args_digest = Some(format!("sha256:{i:064x}"));
    e.status = Some(200);
    e.bytes = Some(512);
    e.latency_us = Some(1800);
    e
}

fn secs() -> Duration {
    let s: f64 = std::env::var("AUDIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(s)
}

/// Runs `writers` threads, each calling `step` (which writes `batch` events) until the
/// deadline; returns events per second.
fn run_writers(writers: usize, batch: usize, step: impl Fn(usize, u64) + Sync) -> f64 {
    let deadline = Instant::now() + secs();
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let step = &step;
                s.spawn(move || {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        step(w, n);
                        n += batch as u64;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

fn plain_sqlite(dir: &Path, writers: usize, batch: usize) -> f64 {
    let path = dir.join("plain.db");
    let _ = std::fs::remove_file(&path);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(
            "CREATE TABLE events (tenant TEXT NOT NULL, seq INTEGER NOT NULL, time_ns INTEGER NOT NULL,
             kind TEXT NOT NULL, task TEXT, event BLOB NOT NULL, PRIMARY KEY (tenant, seq)) WITHOUT ROWID;",
        )
        .unwrap();
    }
    // The same JSON bytes the audit log stores, without chain hash or signature.
    let bytes = serde_json::to_vec(&event(0)).unwrap();
    let conns: Vec<std::sync::Mutex<rusqlite::Connection>> = (0..writers)
        .map(|_| {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.busy_timeout(Duration::from_secs(30)).unwrap();
            c.pragma_update(None, "synchronous", "FULL").unwrap();
            std::sync::Mutex::new(c)
        })
        .collect();
    let seq = std::sync::atomic::AtomicI64::new(0);
    run_writers(writers, batch, |w, _| {
        let mut c = conns[w].lock().unwrap();
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO events (tenant, seq, time_ns, kind, task, event) VALUES ('acme', ?1, ?2, 'http_request', 't', ?3)")
                .unwrap();
            for _ in 0..batch {
                let s = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                stmt.execute(rusqlite::params![s, s, bytes]).unwrap();
            }
        }
        tx.commit().unwrap();
    })
}

fn audit(dir: &Path, writers: usize, batch: usize) -> (f64, AuditLog) {
    let state = dir.join(format!("audit-{writers}-{batch}"));
    let log = AuditLog::open_with(&state, None, AuditOptions::default()).unwrap();
    let events: Vec<AuditEvent> = (0..batch as u64).map(event).collect();
    let rate = run_writers(writers, batch, |_, _| {
        if batch == 1 {
            log.append(events[0].clone()).unwrap();
        } else {
            log.append_batch(events.clone()).unwrap();
        }
    });
    (rate, log)
}

fn per_sec(n: u64, f: impl FnMut(u64)) -> f64 {
    let mut f = f;
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("audit-bench")
        .tempdir_in(std::env::var("AUDIT_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".to_owned()))
        .unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("## Audit log\n");
    println!(
        "Machine: {cores} cores; store: SQLite (WAL, synchronous=FULL) on `{}`.\n",
        dir.path().display()
    );

    // Raw costs on one core.
    let canonical = canonicalize(&serde_json::to_value(event(7)).unwrap()).unwrap();
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let hash = chain_hash(&[0u8; 32], &canonical);
    let msg = event_signing_input(&hash);
    let sig = key.sign(&msg);
    let vk = key.verifying_key();
    let sha = per_sec(200_000, |_| {
        std::hint::black_box(chain_hash(&hash, std::hint::black_box(&canonical)));
    });
    let canon = per_sec(100_000, |i| {
        std::hint::black_box(canonicalize(&serde_json::to_value(event(i)).unwrap()).unwrap());
    });
    let sign = per_sec(20_000, |_| {
        std::hint::black_box(key.sign(std::hint::black_box(&msg)));
    });
    let verify1 = per_sec(20_000, |_| {
        vk.verify(std::hint::black_box(&msg), &sig).unwrap();
    });
    let msgs: Vec<&[u8]> = vec![msg.as_slice(); 256];
    let sigs = vec![sig; 256];
    let vks = vec![vk; 256];
    let vbatch = 256.0
        * per_sec(80, |_| {
            ed25519_dalek::verify_batch(&msgs, &sigs, &vks).unwrap()
        });
    println!(
        "Raw costs, one core, event of {} canonical bytes:\n",
        canonical.len()
    );
    println!("| operation | per second |\n| --- | ---: |");
    println!("| SHA-256 chain hash | {sha:.0} |");
    println!("| event → canonical JSON (RFC 8785) | {canon:.0} |");
    println!("| Ed25519 sign | {sign:.0} |");
    println!("| Ed25519 verify (one by one) | {verify1:.0} |");
    println!("| Ed25519 verify (batches of 256) | {vbatch:.0} |\n");

    println!("Durable appends (events/s; each call returns after fsync):\n");
    println!(
        "| writers | batch | plain SQLite | audit log | audit / plain |\n| ---: | ---: | ---: | ---: | ---: |"
    );
    let mut biggest: Option<(f64, AuditLog)> = None;
    // AUDIT_BENCH_ONLY=WRITERS:BATCH runs one case (for profiling).
    let only = std::env::var("AUDIT_BENCH_ONLY").ok();
    for &writers in &[1usize, 2, 4, 8] {
        for &batch in &[1usize, 10, 100, 1000] {
            if only
                .as_ref()
                .is_some_and(|o| *o != format!("{writers}:{batch}"))
            {
                continue;
            }
            let plain = plain_sqlite(dir.path(), writers, batch);
            let (rate, log) = audit(dir.path(), writers, batch);
            println!(
                "| {writers} | {batch} | {plain:.0} | {rate:.0} | {:.2} |",
                rate / plain
            );
            if (batch == 1000 && writers == 2) || only.is_some() {
                biggest = Some((rate, log));
            }
        }
    }
    let (_, log) = biggest.unwrap();
    let start = Instant::now();
    let report = log.verify(&VerifyOptions::default()).unwrap();
    let n: u64 = report.iter().map(|t| t.events).sum();
    let vrate = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "\nVerify (every hash, every signature, every checkpoint, {n} events): {vrate:.0} events/s."
    );
    let cpu_per_event_us = 1e6 / sha + 1e6 / canon + 1e6 / sign;
    println!(
        "\nCPU floor per appended event (hash + canonicalise + sign, one core): {cpu_per_event_us:.1} µs → {:.0} events/s on one core, {:.0} on {cores}.",
        1e6 / cpu_per_event_us,
        cores as f64 * 1e6 / cpu_per_event_us
    );
}
