//! The loop breaker.

use agentspace_policy::{DenyReason, PolicyEngine};
use pretty_assertions::assert_eq;

use super::helpers::*;

const AGENT: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: looper, tenant: acme}
spec:
  egress:
    - name: api
      hosts: [api.example]
";

#[test]
fn the_fourth_identical_request_in_a_row_is_a_loop() {
    let f = Fixture::new(AGENT, &[]);
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    let p = principal("looper", "t1");
    let same = http(&p, "GET", "api.example", "/status");
    for _ in 0..3 {
        assert!(e.decide(&same).is_allow());
    }
    let d = e.decide(&same);
    assert_eq!(d.deny_reason(), Some(DenyReason::Loop), "{d}");
    assert!(
        d.message()
            .contains("4 times in a row, more than the loop limit of 3"),
        "{d}"
    );
    // A different request breaks the run; the same one is then allowed again.
    assert!(
        e.decide(&http(&p, "GET", "api.example", "/other"))
            .is_allow()
    );
    assert!(e.decide(&same).is_allow());
    // Other tasks are not affected.
    assert!(
        e.decide(&http(
            &principal("looper", "t2"),
            "GET",
            "api.example",
            "/status"
        ))
        .is_allow()
    );
}

#[test]
fn arguments_are_part_of_the_request() {
    let f = Fixture::new(AGENT, &[]);
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    let p = principal("looper", "t1");
    for page in 0..10 {
        let mut r = http(&p, "GET", "api.example", "/items");
        r.context.query = format!("page={page}");
        assert!(e.decide(&r).is_allow(), "page {page}");
    }
    for n in 0..4 {
        let r = with_body(
            http(&p, "POST", "api.example", "/items"),
            serde_json::json!({"a": 1, "b": [1, 2]}),
        );
        let d = e.decide(&r);
        assert_eq!(d.is_allow(), n < 3, "{d}");
    }
}

#[test]
fn the_limit_is_set_in_the_definition() {
    let f = Fixture::new(&format!("{AGENT}  loopLimit: 1\n"), &[]);
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    let p = principal("looper", "t1");
    let same = http(&p, "GET", "api.example", "/status");
    assert!(e.decide(&same).is_allow());
    assert_eq!(e.decide(&same).deny_reason(), Some(DenyReason::Loop));
}
