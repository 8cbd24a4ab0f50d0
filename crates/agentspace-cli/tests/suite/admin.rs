//! Decisions and audit through the `agentspace` command: task lifecycle, revocation and
//! key rotation land in the audit log, which verifies, and tampering is caught.

use super::support::{Ran, Sandbox, privileged, rewrite_audit_events};

fn cli(s: &Sandbox, args: &[&str]) -> Ran {
    s.command().args(args).output().unwrap().into()
}

fn events(s: &Sandbox) -> Vec<serde_json::Value> {
    let r = cli(
        s,
        &["audit", "query", "--tenant", "acme", "--format", "jsonl"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .collect()
}

#[test]
fn a_task_is_audited_before_and_after_and_the_log_verifies() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let mut c = s.command();
    c.args(["run", "--user", "alice", "-f"])
        .arg(s.path().join("hello.yaml"))
        .args(["--", "sh", "-c", "exit 4"]);
    let r: Ran = c.output().unwrap().into();
    assert_eq!(r.code, 4, "{r:?}");
    let task = s.last_manifest()["task"].as_str().unwrap().to_owned();
    let evs = events(&s);
    let kinds: Vec<&str> = evs
        .iter()
        .filter(|e| e["task"] == task.as_str())
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["task_start", "task_exit"], "{evs:?}");
    let exit = evs.iter().find(|e| e["kind"] == "task_exit").unwrap();
    assert_eq!(exit["user"], "alice");
    assert_eq!(exit["status"], 4);
    let verify = cli(&s, &["audit", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[test]
fn a_run_is_refused_when_the_audit_log_cannot_record_its_start() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let mut c = s.command();
    c.env(
        "AGENTSPACE_AUDIT_URL",
        "postgres://nobody:wrong@127.0.0.1:1/none",
    );
    c.args(["run", "-f"])
        .arg(s.path().join("hello.yaml"))
        .args(["--", "sh", "-c", "echo RAN"]);
    let r: Ran = c.output().unwrap().into();
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        !r.stdout.contains("RAN"),
        "the agent ran without an audit record: {r:?}"
    );
}

#[test]
fn revocations_and_key_rotations_are_audited() {
    let s = Sandbox::new();
    let r = cli(
        &s,
        &[
            "revoke",
            "agent",
            "credit-officer",
            "--tenant",
            "acme",
            "--reason",
            "leaked prompt",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let r = cli(
        &s,
        &[
            "revoke",
            "agent",
            "credit-officer",
            "--tenant",
            "acme",
            "--lift",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let r = cli(&s, &["keys", "rotate", "--tenant", "acme"]);
    assert_eq!(r.code, 0, "{r:?}");
    let evs = events(&s);
    let got: Vec<(&str, &str)> = evs
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("revocation", "revoke"),
            ("revocation", "lift"),
            ("key_rotation", "rotate")
        ]
    );
    assert_eq!(evs[0]["details"]["reason"], "leaked prompt");
    assert_eq!(cli(&s, &["audit", "verify"]).code, 0);
}

#[test]
fn tampering_with_a_stored_event_fails_verification_with_its_sequence_number() {
    let s = Sandbox::new();
    for _ in 0..3 {
        assert_eq!(
            cli(&s, &["revoke", "agent", "x", "--tenant", "acme"]).code,
            0
        );
    }
    // An attacker with write access to the database drops the append-only triggers and
    // rewrites history.
    assert_eq!(rewrite_audit_events(&s, "seq = 1", "revoke", "revokd"), 1);
    let r = cli(&s, &["audit", "verify"]);
    assert_eq!(r.code, 1, "{r:?}");
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(
        said.contains("seq 1") || said.contains("sequence 1") || said.contains("event 1"),
        "{r:?}"
    );
}
