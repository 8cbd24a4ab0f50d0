//! `policy test` tables.

use agentspace_policy::{CompiledPolicies, TestCases, run_cases};

use super::helpers::*;

const CASES: &str = r#"
principal: {tenant: acme, user: alice@acme.example, chain: [{agent: credit-officer, task: "42"}]}
cases:
  - name: scoring is allowed
    request: {action: {http: {method: POST}}, resource: {host: scoring.internal.example, path: /v1/score}, context: {time: 1767607200}}
    expect: allow
    policies: [egress.scoring]
  - name: big payments need approval
    request: {action: {http: {method: POST}}, resource: {host: api.stripe.com, path: /v1/charges}, context: {body: {amount: 5000}, time: 1767607200}}
    expect: approval-required
  - name: other hosts are denied
    request: {action: {http: {method: GET}}, resource: {host: evil.example, path: /}}
    expect: deny
    reason: not-permitted
"#;

#[test]
fn matching_cases_pass() {
    let f = Fixture::credit_officer();
    let c = CompiledPolicies::compile(&f.definition).unwrap();
    let cases: TestCases = serde_yaml_ng::from_str(CASES).unwrap();
    let report = run_cases(&c, &cases);
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(report.passed, 3);
}

#[test]
fn mismatches_are_reported_as_a_diff() {
    let f = Fixture::credit_officer();
    let c = CompiledPolicies::compile(&f.definition).unwrap();
    let text = CASES
        .replace("expect: approval-required", "expect: allow")
        .replace("reason: not-permitted", "reason: forbidden");
    let cases: TestCases = serde_yaml_ng::from_str(&text).unwrap();
    let report = run_cases(&c, &cases);
    assert_eq!(report.passed, 1);
    assert_eq!(report.failures.len(), 2);
    assert!(
        report.failures[0].contains(
            "FAIL big payments need approval\n  - decision: allow\n  + decision: approval-required"
        ),
        "{}",
        report.failures[0]
    );
    assert!(
        report.failures[1].contains("  - reason: forbidden\n  + reason: not-permitted"),
        "{}",
        report.failures[1]
    );
}
