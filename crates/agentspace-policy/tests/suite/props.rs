//! Properties: default deny, forbids only ever take away, errors never allow.

use agentspace_policy::{CompiledPolicies, Request};
use proptest::prelude::*;

use super::helpers::*;

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

fn compile(extra: &str) -> (Fixture, CompiledPolicies) {
    let f = Fixture::new(CREDIT_OFFICER, &[("policies/credit-officer.cedar", extra)]);
    let c = CompiledPolicies::compile(&f.definition).unwrap();
    (f, c)
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("scoring.internal.example".to_owned()),
        Just("api.stripe.com".to_owned()),
        "[a-z]{1,8}\\.(com|net|example)",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/v1/score".to_owned()),
        Just("/v1/charges".to_owned()),
        "/v1/(score|charges)[a-z0-9/]{0,12}",
        "/[a-z0-9]{0,6}(/[a-z0-9]{1,6}){0,3}",
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (
        host(),
        prop::sample::select(METHODS),
        path(),
        prop::option::of(0i64..5000),
        prop::option::of(0i64..3),
        0u64..7 * 86_400,
        any::<bool>(),
    )
        .prop_map(|(host, method, path, amount, y, secs, pii)| {
            let p = principal("credit-officer", "t1");
            let mut r = http(&p, method, &host, &path);
            let mut body = serde_json::Map::new();
            if let Some(a) = amount {
                body.insert("amount".into(), a.into());
            }
            if let Some(y) = y {
                body.insert("y".into(), y.into());
            }
            r.context.body = Some(body.into());
            r.context.time = Some(OFFICE_HOURS + secs);
            if pii {
                r.context.labels.insert("pii".into());
            }
            r
        })
}

/// Forbid policies of many shapes, some of which cannot be evaluated on some requests.
fn forbid() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z/*]{1,10}".prop_map(|p| format!("forbid (principal, action in AgentSpace::Action::\"http\", resource) when {{ context.path like \"/{p}\" }};")),
        prop::sample::select(METHODS).prop_map(|m| format!("forbid (principal, action == AgentSpace::Action::\"{m}\", resource);")),
        host().prop_map(|h| format!("forbid (principal, action, resource == AgentSpace::Host::\"{h}\");")),
        (0i64..5000).prop_map(|n| format!("forbid (principal, action in AgentSpace::Action::\"http\", resource) when {{ context.body has amount && context.body.amount > {n} }};")),
        (0i64..24).prop_map(|h| format!("forbid (principal, action, resource) when {{ context.time.hour == {h} }};")),
        (0i64..3).prop_map(|n| format!("forbid (principal, action in AgentSpace::Action::\"http\", resource) when {{ context.body.y == {n} }};")),
        Just("forbid (principal, action, resource) when { context.labels.contains(\"pii\") };".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn requests_no_rule_matches_are_denied(
        host in "[a-z]{1,8}\\.(com|net|org)",
        method in prop::sample::select(METHODS),
        path in "/[a-z0-9/]{0,20}",
    ) {
        let (_f, c) = compile("");
        let p = principal("credit-officer", "t1");
        let d = c.evaluate(&http(&p, method, &host, &path));
        prop_assert_eq!(d.kind(), "deny", "{}", d);
    }

    #[test]
    fn adding_a_forbid_never_turns_a_deny_into_an_allow(
        forbids in prop::collection::vec(forbid(), 1..4),
        requests in prop::collection::vec(request(), 1..8),
    ) {
        let (_f, base) = compile("");
        let (_g, stricter) = compile(&forbids.join("\n"));
        for r in &requests {
            let before = base.evaluate(r);
            let after = stricter.evaluate(r);
            if after.is_allow() {
                prop_assert!(before.is_allow(), "{} became {}", before, after);
            }
            if !before.is_allow() {
                prop_assert!(!after.is_allow());
            }
        }
    }

    #[test]
    fn an_evaluation_error_is_never_an_allow(request in request()) {
        // `context.body.y` is missing on some requests: this forbid then errors, and so
        // does the permit that would otherwise allow everything.
        let (_f, c) = compile(
            "forbid (principal, action in AgentSpace::Action::\"http\", resource) when { context.body.y == 7 };\n\
             permit (principal, action in AgentSpace::Action::\"http\", resource) when { context.body.y >= 0 };",
        );
        let lacks_y = request.context.body.as_ref().and_then(|b| b.get("y")).is_none();
        let d = c.evaluate(&request);
        if lacks_y {
            prop_assert!(!d.is_allow(), "{}", d);
        }
    }
}
