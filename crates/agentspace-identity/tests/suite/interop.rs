//! Services behind the gateway verify our tokens with an ordinary JWT library (here the
//! `jsonwebtoken` crate, which shares no code with ours) against the tenant's JWKS.

use agentspace_identity::CallTarget;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

use super::support::{Fixture, GATEWAY, T0, actor};

/// What a service does: fetch the JWKS (here, its JSON), pick the key by `kid`, verify.
fn verify_like_a_service(
    jwks_json: &str,
    token: &str,
    issuer: &str,
    audience: &str,
    now: u64,
) -> Result<Value, String> {
    let set: JwkSet = serde_json::from_str(jwks_json).map_err(|e| e.to_string())?;
    let header = decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set.find(&kid).ok_or("unknown kid")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    // jsonwebtoken checks expiry against the real clock; our tokens are minted at T0 by the
    // manual clock, so shift: validate_exp is checked here by hand with the same rule.
    validation.validate_exp = false;
    let data = decode::<Value>(token, &key, &validation).map_err(|e| e.to_string())?;
    let exp = data.claims["exp"].as_u64().ok_or("no exp")?;
    if now > exp {
        return Err("expired".into());
    }
    Ok(data.claims)
}

#[test]
fn a_per_call_token_verifies_with_jsonwebtoken_against_the_jwks() {
    let f = Fixture::new();
    let principal = f
        .principal("credit-officer", "42")
        .delegate(actor("scorer", "43"))
        .unwrap();
    let target = CallTarget::new("POST", "https://scoring.internal.example/v1/score").unwrap();
    let token = f.identity.mint_call_token(&principal, &target).unwrap();
    let jwks = serde_json::to_string(&f.identity.jwks(&f.tenant).unwrap()).unwrap();

    let claims = verify_like_a_service(
        &jwks,
        token.as_str(),
        "acme",
        "https://scoring.internal.example",
        T0,
    )
    .unwrap();
    assert_eq!(claims["sub"], "alice@acme.example");
    assert_eq!(claims["act"]["sub"], "spiffe://acme/agent/scorer/task/43");
    assert_eq!(
        claims["act"]["act"]["sub"],
        "spiffe://acme/agent/credit-officer/task/42"
    );
    assert_eq!(claims["htm"], "POST");

    assert!(
        verify_like_a_service(&jwks, token.as_str(), "acme", "https://other.example", T0).is_err()
    );
    assert!(
        verify_like_a_service(
            &jwks,
            token.as_str(),
            "globex",
            "https://scoring.internal.example",
            T0
        )
        .is_err()
    );
    let mut bytes = token.as_str().as_bytes().to_vec();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    assert!(
        verify_like_a_service(
            &jwks,
            &String::from_utf8(bytes).unwrap(),
            "acme",
            "https://scoring.internal.example",
            T0
        )
        .is_err()
    );
}

#[test]
fn task_tokens_and_tokens_of_a_rotated_key_verify_with_jsonwebtoken() {
    let f = Fixture::new();
    let p = f.principal("a", "1");
    let old = f.mint(&p);
    f.identity.rotate(&f.tenant).unwrap();
    let new = f.mint(&p);
    let jwks = serde_json::to_string(&f.identity.jwks(&f.tenant).unwrap()).unwrap();
    for token in [&old, &new] {
        let claims = verify_like_a_service(&jwks, token.as_str(), "acme", GATEWAY, T0).unwrap();
        assert_eq!(claims["act"]["sub"], "spiffe://acme/agent/a/task/1");
    }
}
