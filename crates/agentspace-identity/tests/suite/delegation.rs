//! Delegation: agent A starts agent B for the same user. B's token names the user and B
//! acting for A; it carries none of A's authority and cannot be used as A's.

use agentspace_core::{MAX_DELEGATION_DEPTH, Principal, PrincipalError};
use agentspace_identity::{
    Expected, IdentityError, NothingRevoked, Rejection, RevocationCheckFailed,
};
use pretty_assertions::assert_eq;
use serde_json::json;

use super::support::{Fixture, GATEWAY, actor, decode_part, with_claims};

fn a_and_b(f: &Fixture) -> (Principal, Principal) {
    let a = f.principal("credit-officer", "42");
    let b = a.delegate(actor("scorer", "43")).unwrap();
    (a, b)
}

#[test]
fn b_acts_for_a_with_the_users_identity() {
    let f = Fixture::new();
    let (_, b) = a_and_b(&f);
    let token = f.mint(&b);
    let claims = decode_part(token.as_str(), 1);
    assert_eq!(claims["sub"], "alice@acme.example");
    assert_eq!(
        claims["act"],
        json!({
            "sub": "spiffe://acme/agent/scorer/task/43",
            "act": {"sub": "spiffe://acme/agent/credit-officer/task/42"}
        })
    );
    let verified = f.verify(token.as_str()).unwrap();
    assert_eq!(verified.principal().current(), &actor("scorer", "43"));
    assert_eq!(
        verified.principal().delegators(),
        &[actor("credit-officer", "42")]
    );
}

#[test]
fn bs_token_carries_no_authority_of_as() {
    // Authority comes from the current actor's own definition at decision time. The
    // token names who acts; it has no scope, role or capability claim to inherit.
    let f = Fixture::new();
    let (a, b) = a_and_b(&f);
    let a_token = f.mint(&a);
    let b_token = f.mint(&b);
    let keys = |t: &str| -> Vec<String> {
        let mut k: Vec<String> = decode_part(t, 1)
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(a_token.as_str()),
        keys(b_token.as_str()),
        "same claim set, nothing added for the parent"
    );
    assert_eq!(
        keys(b_token.as_str()),
        [
            "act",
            "aud",
            "exp",
            "iat",
            "iss",
            "jti",
            "nbf",
            "sub",
            "token_use"
        ]
    );
}

#[test]
fn a_b_token_cannot_be_used_as_a() {
    let f = Fixture::new();
    let (a, b) = a_and_b(&f);
    let b_token = f.mint(&b);
    let a_id = a.spiffe_id();
    assert_eq!(
        f.identity.verify(
            b_token.as_str(),
            &Expected::task(&f.tenant, GATEWAY).acting_as(&a_id),
            &NothingRevoked
        ),
        Err(Rejection::ActorMismatch {
            expected: "spiffe://acme/agent/credit-officer/task/42".into(),
            found: "spiffe://acme/agent/scorer/task/43".into(),
        })
    );
    let b_id = b.spiffe_id();
    assert!(
        f.identity
            .verify(
                b_token.as_str(),
                &Expected::task(&f.tenant, GATEWAY).acting_as(&b_id),
                &NothingRevoked
            )
            .is_ok()
    );
}

#[test]
fn b_cannot_drop_itself_from_the_chain_to_become_a() {
    let f = Fixture::new();
    let (_, b) = a_and_b(&f);
    let b_token = f.mint(&b);
    let mut claims = decode_part(b_token.as_str(), 1);
    claims["act"] = claims["act"]["act"].clone();
    assert_eq!(
        f.identity.verify(
            &with_claims(b_token.as_str(), &claims),
            &Expected::task(&f.tenant, GATEWAY),
            &NothingRevoked
        ),
        Err(Rejection::BadSignature)
    );
}

/// A revocation store like the policy crate's: task `credit-officer/42` is revoked.
/// `cascade` says whether revoking a task also stops the agents it started (the policy
/// decides; the hook sees the whole chain either way).
fn a_revoked(
    cascade: bool,
) -> impl Fn(&Principal) -> Result<Option<String>, RevocationCheckFailed> {
    move |p: &Principal| {
        let revoked = actor("credit-officer", "42");
        let hit = if cascade {
            p.actors().any(|a| a == &revoked)
        } else {
            p.current() == &revoked
        };
        Ok(hit.then(|| "task credit-officer/42 revoked".to_owned()))
    }
}

#[test]
fn revoking_a_stops_bs_chain_where_the_policy_says_so() {
    let f = Fixture::new();
    let (a, b) = a_and_b(&f);
    let expected = Expected::task(&f.tenant, GATEWAY);
    let a_token = f.mint(&a);
    let b_token = f.mint(&b);

    let cascading = a_revoked(true);
    assert!(matches!(
        f.identity.verify(a_token.as_str(), &expected, &cascading),
        Err(Rejection::Revoked { .. })
    ));
    assert_eq!(
        f.identity.verify(b_token.as_str(), &expected, &cascading),
        Err(Rejection::Revoked {
            principal: "spiffe://acme/agent/scorer/task/43".into(),
            reason: "task credit-officer/42 revoked".into(),
        })
    );
    assert!(matches!(
        f.identity.refresh(&b_token, &cascading),
        Err(IdentityError::Revoked { .. })
    ));

    let current_only = a_revoked(false);
    assert!(matches!(
        f.identity
            .verify(a_token.as_str(), &expected, &current_only),
        Err(Rejection::Revoked { .. })
    ));
    assert!(
        f.identity
            .verify(b_token.as_str(), &expected, &current_only)
            .is_ok()
    );
}

#[test]
fn revoking_b_never_touches_a() {
    let f = Fixture::new();
    let (a, _) = a_and_b(&f);
    let a_token = f.mint(&a);
    let b_revoked = |p: &Principal| {
        Ok(p.actors()
            .any(|x| x == &actor("scorer", "43"))
            .then(|| "scorer/43 revoked".to_owned()))
    };
    assert!(
        f.identity
            .verify(
                a_token.as_str(),
                &Expected::task(&f.tenant, GATEWAY),
                &b_revoked
            )
            .is_ok()
    );
}

#[test]
fn delegation_depth_is_bounded_on_the_token_side_too() {
    let f = Fixture::new();
    let mut p = f.principal("a", "0");
    for i in 1..MAX_DELEGATION_DEPTH {
        p = p.delegate(actor("a", &i.to_string())).unwrap();
    }
    let token = f.mint(&p);
    let verified = f.verify(token.as_str()).unwrap();
    assert_eq!(verified.principal(), &p);
    assert_eq!(
        p.delegate(actor("a", "x")),
        Err(PrincipalError::TooDeep(MAX_DELEGATION_DEPTH + 1))
    );
}
