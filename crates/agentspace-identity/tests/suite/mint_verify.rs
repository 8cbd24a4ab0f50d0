//! Minting, verifying and refreshing task tokens.

use std::time::Duration;

use agentspace_identity::{
    Expected, IdentityError, MAX_TOKEN_LIFETIME_SECS, NothingRevoked, Rejection,
    RevocationCheckFailed, TaskTokenRequest, TokenUse,
};
use pretty_assertions::assert_eq;
use serde_json::json;

use super::support::{Fixture, GATEWAY, T0, decode_part, forge, name, with_claims};

#[test]
fn a_task_token_carries_the_documented_claims_and_verifies() {
    let f = Fixture::new();
    let principal = f.principal("credit-officer", "42");
    let token = f.mint(&principal);

    let header = decode_part(token.as_str(), 0);
    let kid = f.identity.jwks(&f.tenant).unwrap().keys[0].kid.clone();
    assert_eq!(header, json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}));
    let claims = decode_part(token.as_str(), 1);
    let jti = claims["jti"].as_str().unwrap().to_owned();
    assert_eq!(jti.len(), 22, "128 random bits, base64url");
    assert_eq!(
        claims,
        json!({
            "iss": "acme",
            "sub": "alice@acme.example",
            "aud": GATEWAY,
            "iat": T0,
            "nbf": T0,
            "exp": T0 + 60,
            "jti": jti,
            "act": {"sub": "spiffe://acme/agent/credit-officer/task/42"},
            "token_use": "task",
        })
    );

    let verified = f.verify(token.as_str()).unwrap();
    assert_eq!(verified.principal(), &principal);
    assert_eq!(verified.kid(), kid);
    assert_eq!(verified.claims().token_use, TokenUse::Task);
}

#[test]
fn expiry_is_enforced_with_the_bounded_clock_skew() {
    let f = Fixture::new();
    let token = f.mint(&f.principal("a", "1"));
    let expected = Expected::task(&f.tenant, GATEWAY);
    f.clock.set(T0 + 60 + 5);
    assert!(
        f.identity
            .verify(token.as_str(), &expected, &NothingRevoked)
            .is_ok(),
        "within the 5 s skew"
    );
    f.clock.set(T0 + 60 + 6);
    assert_eq!(
        f.identity
            .verify(token.as_str(), &expected, &NothingRevoked),
        Err(Rejection::Expired {
            exp: T0 + 60,
            now: T0 + 66,
            leeway: 5
        })
    );
}

#[test]
fn a_token_from_the_future_is_refused_beyond_the_skew() {
    let f = Fixture::new();
    let token = f.mint(&f.principal("a", "1"));
    let expected = Expected::task(&f.tenant, GATEWAY);
    f.clock.set(T0 - 5);
    assert!(
        f.identity
            .verify(token.as_str(), &expected, &NothingRevoked)
            .is_ok()
    );
    f.clock.set(T0 - 6);
    assert_eq!(
        f.identity
            .verify(token.as_str(), &expected, &NothingRevoked),
        Err(Rejection::NotYetValid {
            nbf: T0,
            now: T0 - 6
        })
    );
}

#[test]
fn the_clock_skew_allowance_is_bounded() {
    let f = Fixture::new();
    let err = f
        .another_process()
        .with_clock_skew(Duration::from_secs(31))
        .unwrap_err();
    assert!(
        matches!(
            err,
            IdentityError::ClockSkewTooLarge {
                requested: 31,
                max: 30
            }
        ),
        "{err}"
    );
    let strict = f.another_process().with_clock_skew(Duration::ZERO).unwrap();
    let token = strict
        .mint_task_token(&f.principal("a", "1"), &TaskTokenRequest::new(GATEWAY))
        .unwrap();
    f.clock.set(T0 + 61);
    assert!(matches!(
        strict.verify(
            token.as_str(),
            &Expected::task(&f.tenant, GATEWAY),
            &NothingRevoked
        ),
        Err(Rejection::Expired { .. })
    ));
}

#[test]
fn audience_tenant_and_use_must_match() {
    let f = Fixture::new();
    let token = f.mint(&f.principal("a", "1"));
    assert_eq!(
        f.identity.verify(
            token.as_str(),
            &Expected::task(&f.tenant, "other-service"),
            &NothingRevoked
        ),
        Err(Rejection::WrongAudience {
            expected: "other-service".into(),
            found: GATEWAY.into()
        })
    );
    // Another tenant's keys do not include this token's key, even once that tenant has keys.
    let globex = name("globex");
    f.identity.jwks(&globex).unwrap();
    assert!(matches!(
        f.identity.verify(
            token.as_str(),
            &Expected::task(&globex, GATEWAY),
            &NothingRevoked
        ),
        Err(Rejection::UnknownKey { .. })
    ));
    let target = agentspace_identity::CallTarget::new("GET", "https://svc.example/x").unwrap();
    let call = f
        .identity
        .mint_call_token(&f.principal("a", "1"), &target)
        .unwrap();
    assert_eq!(
        f.identity.verify(
            call.as_str(),
            &Expected::task(&f.tenant, "https://svc.example"),
            &NothingRevoked
        ),
        Err(Rejection::WrongUse {
            expected: TokenUse::Task,
            found: TokenUse::Call
        })
    );
}

#[test]
fn the_issuer_claim_must_be_the_expected_tenant_even_when_signed_with_its_key() {
    let f = Fixture::new();
    let token = f.mint(&f.principal("a", "1"));
    let mut claims = decode_part(token.as_str(), 1);
    claims["iss"] = json!("globex");
    let forged = forge(
        f.dir.path(),
        "acme",
        &decode_part(token.as_str(), 0),
        &claims,
    );
    assert_eq!(
        f.verify(&forged),
        Err(Rejection::WrongTenant {
            expected: "acme".into(),
            found: "globex".into()
        })
    );
}

#[test]
fn signed_claims_are_still_checked() {
    let f = Fixture::new();
    let token = f.mint(&f.principal("a", "1"));
    let header = decode_part(token.as_str(), 0);
    let claims = decode_part(token.as_str(), 1);
    let expected = Expected::task(&f.tenant, GATEWAY);
    type Case = (&'static str, serde_json::Value, fn(&Rejection) -> bool);
    let cases: Vec<Case> = vec![
        (
            "extra authority claim",
            {
                let mut c = claims.clone();
                c["scope"] = json!("admin");
                c
            },
            |r| matches!(r, Rejection::Malformed(_)),
        ),
        (
            "too long a life",
            {
                let mut c = claims.clone();
                c["exp"] = json!(T0 + MAX_TOKEN_LIFETIME_SECS + 1);
                c
            },
            |r| matches!(r, Rejection::LifetimeTooLong(_)),
        ),
        (
            "foreign actor",
            {
                let mut c = claims.clone();
                c["act"] = json!({"sub": "spiffe://globex/agent/a/task/1"});
                c
            },
            |r| matches!(r, Rejection::InvalidPrincipal(_)),
        ),
        (
            "actor is not a spiffe id",
            {
                let mut c = claims.clone();
                c["act"] = json!({"sub": "admin"});
                c
            },
            |r| matches!(r, Rejection::Malformed(_)),
        ),
        (
            "bad user",
            {
                let mut c = claims.clone();
                c["sub"] = json!("alice smith");
                c
            },
            |r| matches!(r, Rejection::InvalidPrincipal(_)),
        ),
        (
            "no act",
            {
                let mut c = claims.clone();
                c.as_object_mut().unwrap().remove("act");
                c
            },
            |r| matches!(r, Rejection::Malformed(_)),
        ),
    ];
    for (what, claims, ok) in cases {
        let forged = forge(f.dir.path(), "acme", &header, &claims);
        let result = f.identity.verify(&forged, &expected, &NothingRevoked);
        assert!(result.as_ref().is_err_and(ok), "{what}: {result:?}");
    }
    let mut deep = json!({"sub": "spiffe://acme/agent/a/task/0"});
    for i in 1..=agentspace_core::MAX_DELEGATION_DEPTH {
        deep = json!({"sub": format!("spiffe://acme/agent/a/task/{i}"), "act": deep});
    }
    let mut c = claims.clone();
    c["act"] = deep;
    let result = f.identity.verify(
        &forge(f.dir.path(), "acme", &header, &c),
        &expected,
        &NothingRevoked,
    );
    assert!(
        matches!(result, Err(Rejection::InvalidPrincipal(_))),
        "{result:?}"
    );
}

#[test]
fn other_algorithms_and_malformed_tokens_are_refused() {
    let f = Fixture::new();
    let token = f.mint(&f.principal("a", "1"));
    let expected = Expected::task(&f.tenant, GATEWAY);
    let claims = decode_part(token.as_str(), 1);
    let kid = decode_part(token.as_str(), 0)["kid"].clone();
    for alg in ["none", "HS256", "RS256", "ES256", "eddsa"] {
        let forged = forge(
            f.dir.path(),
            "acme",
            &json!({"alg": alg, "kid": kid}),
            &claims,
        );
        assert_eq!(
            f.identity.verify(&forged, &expected, &NothingRevoked),
            Err(Rejection::UnsupportedAlgorithm(alg.into()))
        );
    }
    let crit = forge(
        f.dir.path(),
        "acme",
        &json!({"alg": "EdDSA", "kid": kid, "crit": ["exp"]}),
        &claims,
    );
    assert!(matches!(
        f.identity.verify(&crit, &expected, &NothingRevoked),
        Err(Rejection::Malformed(_))
    ));
    let no_sig = format!("{}.", token.as_str().rsplit_once('.').unwrap().0);
    for bad in [
        "",
        "a.b",
        "a.b.c.d",
        &no_sig,
        &"a".repeat(9000),
        &format!("{}=", token.as_str()),
    ] {
        assert!(
            matches!(
                f.identity.verify(bad, &expected, &NothingRevoked),
                Err(Rejection::Malformed(_))
            ),
            "{}",
            &bad[..bad.len().min(40)]
        );
    }
}

#[test]
fn a_changed_claim_breaks_the_signature() {
    let f = Fixture::new();
    let token = f.mint(&f.principal("a", "1"));
    let mut claims = decode_part(token.as_str(), 1);
    claims["exp"] = json!(T0 + 600);
    let tampered = with_claims(token.as_str(), &claims);
    assert_eq!(f.verify(&tampered), Err(Rejection::BadSignature));
}

#[test]
fn lifetimes_are_bounded() {
    let f = Fixture::new();
    let p = f.principal("a", "1");
    let zero = TaskTokenRequest::new(GATEWAY).lifetime(Duration::ZERO);
    assert!(matches!(
        f.identity.mint_task_token(&p, &zero),
        Err(IdentityError::LifetimeZero)
    ));
    let long =
        TaskTokenRequest::new(GATEWAY).lifetime(Duration::from_secs(MAX_TOKEN_LIFETIME_SECS + 1));
    assert!(matches!(
        f.identity.mint_task_token(&p, &long),
        Err(IdentityError::LifetimeTooLong { .. })
    ));
    let five = TaskTokenRequest::new(GATEWAY).lifetime(Duration::from_secs(300));
    assert_eq!(
        f.identity.mint_task_token(&p, &five).unwrap().expires_at(),
        T0 + 300
    );
}

#[test]
fn the_boundary_refreshes_before_expiry_and_never_for_a_revoked_principal() {
    let f = Fixture::new();
    let token = f.mint(&f.principal("a", "1"));
    assert!(!token.needs_refresh(T0 + 39));
    assert!(token.needs_refresh(T0 + 41));
    f.clock.set(T0 + 41);
    let fresh = f.identity.refresh(&token, &NothingRevoked).unwrap();
    assert_ne!(fresh.claims().jti, token.claims().jti);
    assert_eq!(fresh.claims().iat, T0 + 41);
    assert_eq!(fresh.expires_at(), T0 + 41 + 60);
    assert_eq!(fresh.principal(), token.principal());
    assert_eq!(fresh.claims().aud, GATEWAY);
    f.clock.set(T0 + 90);
    assert!(f.verify(fresh.as_str()).is_ok());

    let revoked = |_: &agentspace_core::Principal| Ok(Some("task revoked by admin".to_owned()));
    assert!(matches!(
        f.identity.refresh(&fresh, &revoked),
        Err(IdentityError::Revoked { .. })
    ));
    let down =
        |_: &agentspace_core::Principal| Err(RevocationCheckFailed("database is locked".into()));
    assert!(matches!(
        f.identity.refresh(&fresh, &down),
        Err(IdentityError::RevocationUnavailable(_))
    ));
}

#[test]
fn verification_fails_closed_when_the_revocation_store_cannot_answer() {
    let f = Fixture::new();
    let token = f.mint(&f.principal("a", "1"));
    let down =
        |_: &agentspace_core::Principal| Err(RevocationCheckFailed("database is locked".into()));
    assert_eq!(
        f.identity
            .verify(token.as_str(), &Expected::task(&f.tenant, GATEWAY), &down),
        Err(Rejection::RevocationUnavailable(
            "database is locked".into()
        ))
    );
}

#[test]
fn debug_output_never_shows_a_token_or_key() {
    let f = Fixture::new();
    let token = f.mint(&f.principal("a", "1"));
    let shown = format!("{token:?} {:?}", f.identity);
    let signature = token.as_str().rsplit_once('.').unwrap().1;
    assert!(!shown.contains(signature) && !shown.contains(token.as_str()));
}
