//! Query filters and export formats.

use agentspace_audit::{AuditLog, Filter, canonicalize, chain_hash, to_jsonl, to_ocsf};
use agentspace_core::{AuditDecision, AuditKind};
use pretty_assertions::assert_eq;

use super::support::{append_n, http_event};

fn collect(log: &AuditLog, filter: &Filter) -> Vec<u64> {
    let mut out = Vec::new();
    log.query(filter, |e| {
        out.push(e.event.seq);
        Ok(true)
    })
    .unwrap();
    out
}

#[test]
fn filters_combine() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    append_n(&log, "acme", 10);
    append_n(&log, "globex", 4);
    let acme = |f: Filter| Filter {
        tenant: Some("acme".to_owned()),
        ..f
    };
    assert_eq!(collect(&log, &acme(Filter::default())).len(), 10);
    assert_eq!(collect(&log, &Filter::default()).len(), 14);
    assert_eq!(
        collect(
            &log,
            &acme(Filter {
                decision: Some(AuditDecision::Deny),
                ..Filter::default()
            })
        ),
        vec![4, 9]
    );
    assert_eq!(
        collect(
            &log,
            &acme(Filter {
                task: Some("task-1".to_owned()),
                ..Filter::default()
            })
        ),
        vec![1, 4, 7]
    );
    assert_eq!(
        collect(
            &log,
            &acme(Filter {
                resource_contains: Some("items/7".to_owned()),
                ..Filter::default()
            })
        ),
        vec![7]
    );
    assert!(
        collect(
            &log,
            &acme(Filter {
                kind: Some(AuditKind::DnsLookup),
                ..Filter::default()
            })
        )
        .is_empty()
    );
    assert!(
        collect(
            &log,
            &acme(Filter {
                user: Some("bob".to_owned()),
                ..Filter::default()
            })
        )
        .is_empty()
    );
    assert_eq!(
        collect(
            &log,
            &acme(Filter {
                agent: Some("credit-officer".to_owned()),
                ..Filter::default()
            })
        )
        .len(),
        10
    );
    let t5 =
        agentspace_core::parse_audit_time(&log.events_from("acme", 5, 1).unwrap()[0].event.time)
            .unwrap();
    let since = collect(
        &log,
        &acme(Filter {
            since_ns: Some(t5),
            ..Filter::default()
        }),
    );
    assert!(since.starts_with(&[5]) || since.contains(&5), "{since:?}");
    assert!(
        collect(
            &log,
            &acme(Filter {
                until_ns: Some(t5),
                ..Filter::default()
            })
        )
        .iter()
        .all(|s| *s <= 5)
    );
}

#[test]
fn chain_len_is_where_the_next_event_goes() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    assert_eq!(log.chain_len("acme").unwrap(), 0);
    append_n(&log, "acme", 7);
    append_n(&log, "globex", 2);
    assert_eq!(log.chain_len("acme").unwrap(), 7);
    assert_eq!(log.chain_len("globex").unwrap(), 2);
    let receipt = log.append(super::support::http_event("acme", 7)).unwrap();
    assert_eq!(receipt.seq, 7);
    assert_eq!(log.chain_len("acme").unwrap(), 8);
}

#[test]
fn jsonl_export_carries_the_exact_hashed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    append_n(&log, "acme", 3);
    let mut prev = [0u8; 32];
    for entry in log.events_from("acme", 0, 10).unwrap() {
        let line = serde_json::to_string(&to_jsonl(&entry)).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        let bytes = canonicalize(&parsed["event"]).unwrap();
        let hash = chain_hash(&prev, &bytes);
        assert_eq!(hex::encode(hash), parsed["hash"].as_str().unwrap());
        prev = hash;
    }
}

#[test]
fn ocsf_export_is_api_activity() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    let mut e = http_event("acme", 4);
    e.action = "DELETE".to_owned();
    log.append(e).unwrap();
    let entry = &log.events_from("acme", 0, 1).unwrap()[0];
    let o = to_ocsf(entry);
    assert_eq!(o["class_uid"], 6003);
    assert_eq!(o["category_uid"], 6);
    assert_eq!(o["activity_id"], 4);
    assert_eq!(o["type_uid"], 600_304);
    assert_eq!(o["status_id"], 2);
    assert_eq!(o["actor"]["user"]["name"], "alice@example.com");
    assert_eq!(
        o["resources"][0]["name"],
        "https://api.example.com/v1/items/4"
    );
    assert_eq!(o["metadata"]["uid"], "acme:0");
    assert!(o["time"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(o["unmapped"]["agentspace"]["hash"], entry.hash.as_str());
}
