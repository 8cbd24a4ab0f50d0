//! Revocation takes effect on the next decision, across processes.

use std::process::Command;

use agentspace_core::{TaskRef, UserId};
use agentspace_policy::{
    DenyReason, NoAudit, PolicyEngine, Revocation, RevocationAudit, RevocationRecord, Revocations,
};
use pretty_assertions::assert_eq;

use super::helpers::*;

const AGENT: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: officer, tenant: acme}
spec:
  egress:
    - name: scoring
      hosts: [scoring.example]
    - name: payments
      hosts: [pay.example]
";

fn setup() -> (Fixture, PolicyEngine) {
    let f = Fixture::new(AGENT, &[]);
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    (f, e)
}

fn get(task: &str, host: &str, n: usize) -> agentspace_policy::Request {
    http(&principal("officer", task), "GET", host, &format!("/{n}"))
}

#[test]
fn each_kind_of_revocation_applies_and_can_be_lifted() {
    let (f, e) = setup();
    // A separate handle: another connection, as the CLI would have.
    let admin = Revocations::open(&f.state()).unwrap();
    let cases = [
        Revocation::Task {
            tenant: name("acme"),
            task: TaskRef::new("t1").unwrap(),
        },
        Revocation::Agent {
            tenant: name("acme"),
            agent: name("officer"),
        },
        Revocation::UserAgent {
            tenant: name("acme"),
            user: UserId::new("alice@acme.example").unwrap(),
            agent: name("officer"),
        },
    ];
    for (i, what) in cases.into_iter().enumerate() {
        assert!(e.decide(&get("t1", "scoring.example", i * 10)).is_allow());
        admin.revoke(what.clone(), "incident 7", &NoAudit).unwrap();
        let d = e.decide(&get("t1", "scoring.example", i * 10 + 1));
        assert_eq!(d.deny_reason(), Some(DenyReason::Revoked), "{what}: {d}");
        assert!(admin.lift(&what, &NoAudit).unwrap());
        assert!(
            e.decide(&get("t1", "scoring.example", i * 10 + 2))
                .is_allow(),
            "{what}"
        );
    }
    // Another tenant's revocation of an agent with the same name does not apply.
    admin
        .revoke(
            Revocation::Agent {
                tenant: name("globex"),
                agent: name("officer"),
            },
            "",
            &NoAudit,
        )
        .unwrap();
    assert!(e.decide(&get("t1", "scoring.example", 99)).is_allow());
}

#[test]
fn revoking_a_capability_leaves_the_others() {
    let (f, e) = setup();
    let admin = Revocations::open(&f.state()).unwrap();
    admin
        .revoke(
            Revocation::Capability {
                tenant: name("acme"),
                agent: name("officer"),
                capability: name("payments"),
            },
            "fraud",
            &NoAudit,
        )
        .unwrap();
    let d = e.decide(&get("t1", "pay.example", 1));
    assert_eq!(d.deny_reason(), Some(DenyReason::Revoked), "{d}");
    assert!(
        d.message()
            .contains("capability `payments` of agent `officer` was revoked"),
        "{d}"
    );
    assert!(e.decide(&get("t1", "scoring.example", 1)).is_allow());
    let listed = admin.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reason, "fraud");
}

struct Recorder(std::sync::Mutex<Vec<(String, bool)>>);
impl RevocationAudit for Recorder {
    fn revocation(&self, record: &RevocationRecord, lifted: bool) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .push((record.revocation.to_string(), lifted));
        Ok(())
    }
}

#[test]
fn the_audit_hook_sees_revocations_and_lifts() {
    let (f, _e) = setup();
    let admin = Revocations::open(&f.state()).unwrap();
    let rec = Recorder(std::sync::Mutex::new(Vec::new()));
    let what = Revocation::Task {
        tenant: name("acme"),
        task: TaskRef::new("t9").unwrap(),
    };
    admin.revoke(what.clone(), "why", &rec).unwrap();
    admin.lift(&what, &rec).unwrap();
    assert!(!admin.lift(&what, &rec).unwrap(), "nothing left to lift");
    assert_eq!(
        *rec.0.lock().unwrap(),
        vec![
            ("task `t9` of tenant `acme`".to_owned(), false),
            ("task `t9` of tenant `acme`".to_owned(), true)
        ]
    );
}

const CHILD_ENV: &str = "AGENTSPACE_POLICY_TEST_REVOKER";

/// Not a test by itself: run by `revocation_from_another_process_applies_to_the_next_decision`.
#[test]
fn child_revokes() {
    let Ok(state) = std::env::var(CHILD_ENV) else {
        return;
    };
    let admin = Revocations::open(std::path::Path::new(&state)).unwrap();
    admin
        .revoke(
            Revocation::Task {
                tenant: name("acme"),
                task: TaskRef::new("t1").unwrap(),
            },
            "from a child",
            &NoAudit,
        )
        .unwrap();
}

#[test]
fn revocation_from_another_process_applies_to_the_next_decision() {
    let (f, e) = setup();
    for n in 0..3 {
        assert!(e.decide(&get("t1", "scoring.example", n)).is_allow());
    }
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "suite::revocation::child_revokes",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, f.state())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // The very next decision, with no reload or wait.
    let d = e.decide(&get("t1", "scoring.example", 3));
    assert_eq!(d.deny_reason(), Some(DenyReason::Revoked), "{d}");
    assert!(
        e.decide(&get("t2", "scoring.example", 3)).is_allow(),
        "other tasks go on"
    );
}
