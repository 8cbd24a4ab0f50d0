//! Human approvals without a control-plane process: a request an `@approval` policy holds
//! waits in the state directory's queue while the agent's connection stays open; a
//! person approves (it goes on) or denies (403) with `agentspace approvals`, never the
//! user the agent acts for (four-eyes), and every step is in the audit log.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::boundary::upstream;
use super::support::{Ran, Sandbox, privileged};

/// An agent whose big payments to `api.example.test` wait for a person.
pub(super) const DEFINITION: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: payer, tenant: acme}
spec:
  workspace: ./workspace
  egress:
    - name: api
      hosts: [api.example.test]
      approval: {when: 'context has query && context.query like \"*big*\"', timeout: 1m}
  resources: {memory: 256Mi, pids: 64, cpu: 1.0, timeout: 60s}
";

fn pending(s: &Sandbox) -> Vec<serde_json::Value> {
    let out = s
        .command()
        .args(["approvals", "--tenant", "acme", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

fn wait_for_pending(s: &Sandbox) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(a) = pending(s).into_iter().next() {
            return a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no approval was requested"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn decide(s: &Sandbox, verb: &str, id: &str, who: &str) -> Ran {
    s.command()
        .args(["approvals", "--tenant", "acme", verb, id, "--as", who])
        .args(["--comment", &format!("{who} says {verb}")])
        .output()
        .unwrap()
        .into()
}

#[test]
fn a_held_request_goes_on_once_approved_and_gets_a_403_once_denied() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let up = upstream(&s);
    let def = s.definition("payer.yaml", DEFINITION);
    let script = "curl -sS https://api.example.test/v1/small; echo; \
                  curl -sS 'https://api.example.test/v1/pay?size=big-one'; echo; \
                  curl -sS 'https://api.example.test/v1/pay?size=big-two'; echo";
    let mut c = s.governed_run(&def, up.port);
    c.args(["--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let agent = c.spawn().unwrap();

    // The first big payment waits for a person; alice may not approve her own.
    let first = wait_for_pending(&s);
    let id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(first["context"]["user"], "alice");
    assert_eq!(
        first["context"]["resource"],
        "https://api.example.test:443/v1/pay"
    );
    let own = decide(&s, "approve", &id, "alice");
    assert_ne!(own.code, 0, "{own:?}");
    assert!(own.stderr.contains("four-eyes"), "{own:?}");
    let ok = decide(&s, "approve", &id, "bob");
    assert_eq!(ok.code, 0, "{ok:?}");

    // The second is denied by bob.
    let start = Instant::now();
    let second = loop {
        if let Some(a) = pending(&s).into_iter().find(|a| a["id"] != id.as_str()) {
            break a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no second approval"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let id2 = second["id"].as_str().unwrap().to_owned();
    let no = decide(&s, "deny", &id2, "bob");
    assert_eq!(no.code, 0, "{no:?}");

    let r: Ran = agent.wait_with_output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "upstream saw /v1/small", "{r:?}");
    assert_eq!(lines[1], "upstream saw /v1/pay?size=big-one", "{r:?}");
    let denied: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(denied["decision"], "deny", "{r:?}");
    assert!(
        denied["reason"].as_str().unwrap().contains("bob says deny"),
        "{r:?}"
    );
    let seen = std::fs::read_to_string(s.path().join("seen.log")).unwrap();
    assert_eq!(seen.matches("/v1/pay").count(), 1, "{seen}");

    // The record: requested, granted by bob, the allowed request citing its approval;
    // requested, denied by bob, the refused request; and it verifies.
    let events = s.audit_events(&[]);
    let kinds = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!(kinds("approval_requested"), 2, "{events:#?}");
    assert_eq!(kinds("approval_granted"), 1, "{events:#?}");
    assert_eq!(kinds("approval_denied"), 1, "{events:#?}");
    assert!(
        events.iter().any(|e| e["kind"] == "http_request"
            && e["decision"] == "allow"
            && e["details"]["approval"] == id.as_str()),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e["kind"] == "http_request"
            && e["decision"] == "deny"
            && e["details"]["approval"] == id2.as_str()),
        "{events:#?}"
    );
    assert!(s.audit_verifies());
}
