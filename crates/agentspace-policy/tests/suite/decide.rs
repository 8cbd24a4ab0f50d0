//! Decisions of the credit officer: allow, deny with reasons, approval.

use agentspace_policy::{CompiledPolicies, Decision, DenyReason, PolicyEngine, Request};
use pretty_assertions::assert_eq;
use serde_json::json;

use super::helpers::*;

fn officer() -> (Fixture, CompiledPolicies) {
    let f = Fixture::credit_officer();
    let c = CompiledPolicies::compile(&f.definition).unwrap();
    (f, c)
}

fn reason(d: &Decision) -> Option<DenyReason> {
    d.deny_reason()
}

#[test]
fn matching_rule_allows_and_names_policy_and_capability() {
    let (_f, c) = officer();
    let p = principal("credit-officer", "t1");
    let d = c.evaluate(&http(&p, "POST", "scoring.internal.example", "/v1/score"));
    let Decision::Allow {
        policies,
        capabilities,
        message,
    } = &d
    else {
        panic!("{d}")
    };
    assert_eq!(policies, &["egress.scoring"]);
    assert_eq!(capabilities, &["scoring"]);
    assert!(
        message.contains("`POST scoring.internal.example/v1/score` is allowed by `egress.scoring`"),
        "{message}"
    );
    assert!(
        c.evaluate(&http(
            &p,
            "POST",
            "scoring.internal.example",
            "/v1/score/batch/7"
        ))
        .is_allow()
    );
    // Host names compare case-insensitively.
    assert!(
        c.evaluate(&http(&p, "POST", "SCORING.internal.example", "/v1/score"))
            .is_allow()
    );
}

#[test]
fn everything_else_is_denied_by_default() {
    let (_f, c) = officer();
    let p = principal("credit-officer", "t1");
    for r in [
        http(&p, "GET", "scoring.internal.example", "/v1/score"),
        http(&p, "POST", "scoring.internal.example", "/v1/scoreboard"),
        http(&p, "POST", "scoring.internal.example", "/v2/score"),
        http(&p, "POST", "evil.example", "/v1/score"),
        http(&p, "DELETE", "api.stripe.com", "/v1/charges"),
    ] {
        let d = c.evaluate(&r);
        assert_eq!(reason(&d), Some(DenyReason::NotPermitted), "{d}");
        assert!(d.message().contains("default deny"), "{d}");
    }
}

#[test]
fn approval_is_required_when_the_condition_holds() {
    let (f, c) = officer();
    let p = principal("credit-officer", "t1");
    let big = with_body(
        http(&p, "POST", "api.stripe.com", "/v1/charges"),
        json!({"amount": 5000, "currency": "eur"}),
    );
    let d = c.evaluate(&big);
    let Decision::ApprovalRequired {
        policies,
        prompt,
        timeout,
        ..
    } = &d
    else {
        panic!("{d}")
    };
    assert_eq!(policies, &["egress.payments.approval"]);
    assert_eq!(
        prompt,
        "capability `payments` when context.body.amount > 1000"
    );
    assert_eq!(timeout.as_secs(), 600);

    let small = with_body(
        http(&p, "POST", "api.stripe.com", "/v1/charges"),
        json!({"amount": 10}),
    );
    assert!(c.evaluate(&small).is_allow());

    // A request the condition cannot be evaluated on (no body) is held, never allowed.
    let d = c.evaluate(&http(&p, "GET", "api.stripe.com", "/v1/charges"));
    assert_eq!(d.kind(), "approval-required", "{d}");
    assert!(d.message().contains("could not be evaluated"), "{d}");

    // Once approved, the same request is allowed and charged.
    let engine = PolicyEngine::with_policies(&f.definition, c, &f.state()).unwrap();
    assert_eq!(engine.decide(&big).kind(), "approval-required");
    assert!(engine.decide_approved(&big).is_allow());
    assert_eq!(engine.task_usage(&p).unwrap().requests, 1);
}

#[test]
fn forbid_overrides_permit_and_explains_itself() {
    let (_f, c) = officer();
    let p = principal("credit-officer", "t1");
    let mut r = http(&p, "POST", "scoring.internal.example", "/v1/score");
    r.context.labels.insert("pii".to_owned());
    let d = c.evaluate(&r);
    assert_eq!(reason(&d), Some(DenyReason::Forbidden), "{d}");
    assert_eq!(d.policies(), ["no-pii-to-scoring"]);
    assert!(
        d.message().contains("data labelled pii must not be sent"),
        "{d}"
    );

    let mut night = with_body(
        http(&p, "POST", "api.stripe.com", "/v1/charges"),
        json!({"amount": 1}),
    );
    night.context.time = Some(NIGHT);
    let d = c.evaluate(&night);
    assert_eq!(d.policies(), ["office-hours-only"], "{d}");
}

#[test]
fn dns_follows_the_egress_hosts() {
    let (_f, c) = officer();
    let p = principal("credit-officer", "t1");
    let mut r = http(&p, "GET", "api.stripe.com", "/");
    r.action = agentspace_policy::Action::Dns;
    r.resource.path = None;
    assert!(c.evaluate(&r).is_allow());
    r.resource.host = Some("evil.example".into());
    assert_eq!(reason(&c.evaluate(&r)), Some(DenyReason::NotPermitted));
}

#[test]
fn requests_for_another_agent_or_tenant_or_with_tricky_paths_are_invalid() {
    let (_f, c) = officer();
    let other = principal("summarizer", "t1");
    let d = c.evaluate(&http(
        &other,
        "POST",
        "scoring.internal.example",
        "/v1/score",
    ));
    assert_eq!(reason(&d), Some(DenyReason::InvalidRequest), "{d}");
    let p = principal("credit-officer", "t1");
    for path in [
        "/v1/score/../../admin",
        "/v1/score/%2e%2e/admin",
        "v1/score",
    ] {
        let d = c.evaluate(&http(&p, "POST", "scoring.internal.example", path));
        assert_eq!(reason(&d), Some(DenyReason::InvalidRequest), "{path}: {d}");
    }
    let d = c.evaluate(&http(&p, "TRACE", "scoring.internal.example", "/v1/score"));
    assert_eq!(reason(&d), Some(DenyReason::InvalidRequest), "{d}");
}

#[test]
fn a_forbid_that_cannot_be_evaluated_denies() {
    let f = Fixture::new(
        CREDIT_OFFICER,
        &[(
            "policies/credit-officer.cedar",
            "@id(\"big-scores\")\nforbid (principal, action in AgentSpace::Action::\"http\", resource) when { context.body.size > 10 };\n",
        )],
    );
    let c = CompiledPolicies::compile(&f.definition).unwrap();
    let p = principal("credit-officer", "t1");
    let d = c.evaluate(&http(&p, "POST", "scoring.internal.example", "/v1/score"));
    assert_eq!(reason(&d), Some(DenyReason::Error), "{d}");
    assert_eq!(d.policies(), ["big-scores"]);
    let ok = with_body(
        http(&p, "POST", "scoring.internal.example", "/v1/score"),
        json!({"size": 1}),
    );
    assert!(c.evaluate(&ok).is_allow());
}

#[test]
fn the_documented_request_json_parses() {
    let text = r#"{
      "principal": {"tenant": "acme", "user": "alice@acme.example",
                    "chain": [{"agent": "credit-officer", "task": "42"}]},
      "action": {"http": {"method": "POST"}},
      "resource": {"host": "api.stripe.com", "port": 443, "path": "/v1/charges"},
      "context": {"query": "expand=customer", "headers": {"content-type": "application/json"},
                  "body": {"amount": 5000, "currency": "eur"}, "labels": ["pii"],
                  "time": 1767607200}
    }"#;
    let r: Request = serde_json::from_str(text).unwrap();
    let (_f, c) = officer();
    assert_eq!(c.evaluate(&r).kind(), "approval-required");
    assert!(serde_json::from_str::<Request>(&text.replace("\"query\"", "\"qery\"")).is_err());
}

#[test]
fn decisions_serialize_with_stable_codes() {
    let (_f, c) = officer();
    let p = principal("credit-officer", "t1");
    let d = c.evaluate(&http(&p, "GET", "evil.example", "/"));
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["reason"], "not-permitted");
}
