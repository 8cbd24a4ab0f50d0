//! Per-call tokens for services behind the gateway.

use agentspace_identity::{CALL_TOKEN_HEADER, CallTarget, Expected, NothingRevoked, Rejection};
use pretty_assertions::assert_eq;
use serde_json::json;

use super::support::{Fixture, T0, decode_part};

#[test]
fn a_call_token_names_one_call_for_the_user_and_chain() {
    let f = Fixture::new();
    let parent = f.principal("credit-officer", "42");
    let child = parent
        .delegate(super::support::actor("scorer", "43"))
        .unwrap();
    let target = CallTarget::new(
        "POST",
        "https://Scoring.internal.example:8443/v1/score?id=7#x",
    )
    .unwrap();
    assert_eq!(target.audience(), "https://scoring.internal.example:8443");
    assert_eq!(
        target.url(),
        "https://scoring.internal.example:8443/v1/score"
    );
    let token = f.identity.mint_call_token(&child, &target).unwrap();
    let claims = decode_part(token.as_str(), 1);
    let jti = claims["jti"].clone();
    assert_eq!(
        claims,
        json!({
            "iss": "acme",
            "sub": "alice@acme.example",
            "aud": "https://scoring.internal.example:8443",
            "iat": T0, "nbf": T0, "exp": T0 + 60,
            "jti": jti,
            "act": {
                "sub": "spiffe://acme/agent/scorer/task/43",
                "act": {"sub": "spiffe://acme/agent/credit-officer/task/42"}
            },
            "token_use": "call",
            "one_time": true,
            "htm": "POST",
            "htu": "https://scoring.internal.example:8443/v1/score",
        })
    );
    assert_eq!(CALL_TOKEN_HEADER, "Agentspace-Identity");

    let verified = f
        .identity
        .verify(
            token.as_str(),
            &Expected::call(&f.tenant, &target),
            &NothingRevoked,
        )
        .unwrap();
    assert_eq!(verified.principal(), &child);
    assert!(matches!(
        f.identity.verify(
            token.as_str(),
            &Expected::call(&f.tenant, &target),
            &NothingRevoked
        ),
        Err(Rejection::Replayed { .. })
    ));
}

#[test]
fn a_call_token_is_good_for_its_call_only() {
    let f = Fixture::new();
    let p = f.principal("a", "1");
    let target = CallTarget::new("GET", "https://svc.example/v1/a").unwrap();
    let token = f.identity.mint_call_token(&p, &target).unwrap();
    for other in [
        CallTarget::new("POST", "https://svc.example/v1/a").unwrap(),
        CallTarget::new("GET", "https://svc.example/v1/b").unwrap(),
    ] {
        assert!(matches!(
            f.identity.verify(
                token.as_str(),
                &Expected::call(&f.tenant, &other),
                &NothingRevoked
            ),
            Err(Rejection::WrongCall { .. })
        ));
    }
    let elsewhere = CallTarget::new("GET", "https://other.example/v1/a").unwrap();
    assert!(matches!(
        f.identity.verify(
            token.as_str(),
            &Expected::call(&f.tenant, &elsewhere),
            &NothingRevoked
        ),
        Err(Rejection::WrongAudience { .. })
    ));
}

#[test]
fn call_targets_are_checked() {
    for (method, url) in [
        ("get", "https://svc.example/"),
        ("", "https://svc.example/"),
        ("GET", "ftp://svc.example/"),
        ("GET", "https:///path"),
        ("GET", "https://user:pw@svc.example/"),
        ("GET", "svc.example/path"),
    ] {
        assert!(CallTarget::new(method, url).is_err(), "{method} {url}");
    }
    assert_eq!(
        CallTarget::new("GET", "http://svc.example").unwrap().url(),
        "http://svc.example/"
    );
}
