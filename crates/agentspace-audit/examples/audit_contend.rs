//! Many processes appending to one SQLite audit log, as the gateways of many tasks on
//! one host do: each child process appends events one at a time (each durable before
//! the next), and the parent reports the latency of each append across all of them.
//!
//! Usage: `audit_contend PROCESSES EVENTS_EACH` (run by `bench/audit.sh contend`).
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a benchmark"
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use agentspace_audit::AuditLog;
use agentspace_core::{AuditDecision, AuditEvent, AuditKind, Name};

fn child(dir: &str, events: u64, id: u64) {
    let log = AuditLog::open(std::path::Path::new(dir)).unwrap();
    let tenant = Name::new("acme").unwrap();
    for i in 0..events {
        let mut e = AuditEvent::new(&tenant, AuditKind::HttpRequest, "GET");
        e.task = Some(format!("task-{id}"));
        e.resource = Some(format!("https://api.example.com/v1/items/{i}"));
        e.decision = Some(AuditDecision::Allow);
        let t = Instant::now();
        log.append(e).unwrap();
        println!("{}", t.elapsed().as_micros());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        child(&args[2], args[3].parse().unwrap(), args[4].parse().unwrap());
        return;
    }
    let processes: u64 = args.get(1).map_or(50, |a| a.parse().unwrap());
    let events: u64 = args.get(2).map_or(100, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_owned();
    // Create the log (and its keys) once, before the crowd arrives.
    drop(AuditLog::open(dir.path()).unwrap());
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let children: Vec<_> = (0..processes)
        .map(|id| {
            Command::new(&exe)
                .args(["child", &dir_s, &events.to_string(), &id.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut lat: Vec<u64> = Vec::new();
    for mut c in children {
        let out = c.stdout.take().unwrap();
        for line in BufReader::new(out).lines() {
            lat.push(line.unwrap().parse().unwrap());
        }
        assert!(c.wait().unwrap().success());
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "{processes} processes x {events}: {:.0} appends/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        lat.len() as f64 / secs,
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
}
