//! Property tests: a tampered, expired, replayed, wrong-audience or other-tenant token is
//! always rejected.

use std::sync::OnceLock;

use agentspace_identity::{Expected, NothingRevoked, TaskTokenRequest};
use proptest::prelude::*;

use super::support::{Fixture, GATEWAY, T0, name};

/// One fixture for all cases: keys are created once; each case mints its own token.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let f = Fixture::new();
        // A second tenant with keys of its own, so "other tenant" means a real other key set.
        f.identity.jwks(&name("globex")).unwrap();
        f
    })
}

fn task_token(one_time: bool) -> String {
    let f = fixture();
    f.clock.set(T0);
    let request = if one_time {
        TaskTokenRequest::new(GATEWAY).one_time()
    } else {
        TaskTokenRequest::new(GATEWAY)
    };
    f.identity
        .mint_task_token(&f.principal("a", "1"), &request)
        .unwrap()
        .as_str()
        .to_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_tampered_token_is_rejected(position in any::<prop::sample::Index>(), replacement in prop::sample::select(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ".to_vec()
    )) {
        let f = fixture();
        let token = task_token(false);
        let mut bytes = token.clone().into_bytes();
        let i = position.index(bytes.len());
        prop_assume!(bytes[i] != replacement);
        bytes[i] = replacement;
        let tampered = String::from_utf8(bytes).unwrap();
        prop_assert!(f.verify(&tampered).is_err());
    }

    #[test]
    fn a_truncated_or_extended_token_is_rejected(cut in 1usize..200, extra in "[A-Za-z0-9_.-]{1,8}") {
        let f = fixture();
        let token = task_token(false);
        let expected = Expected::task(&f.tenant, GATEWAY);
        let cut = cut.min(token.len());
        prop_assert!(f.identity.verify(&token[..token.len() - cut], &expected, &NothingRevoked).is_err());
        let extended = format!("{token}{extra}");
        prop_assert!(f.identity.verify(&extended, &expected, &NothingRevoked).is_err());
    }

    #[test]
    fn an_expired_token_is_rejected(late in 66u64..10_000_000) {
        let f = fixture();
        let token = task_token(false);
        f.clock.set(T0 + late);
        let result = f.verify(&token);
        f.clock.set(T0);
        prop_assert!(result.is_err());
    }

    #[test]
    fn a_replayed_one_time_token_is_rejected(extra_tries in 1usize..4) {
        let f = fixture();
        let token = task_token(true);
        let expected = Expected::task(&f.tenant, GATEWAY);
        prop_assert!(f.identity.verify(&token, &expected, &NothingRevoked).is_ok());
        for _ in 0..extra_tries {
            prop_assert!(f.identity.verify(&token, &expected, &NothingRevoked).is_err());
        }
    }

    #[test]
    fn a_wrong_audience_token_is_rejected(audience in "[ -~]{0,40}") {
        prop_assume!(audience != GATEWAY);
        let f = fixture();
        let token = task_token(false);
        prop_assert!(f.identity.verify(&token, &Expected::task(&f.tenant, &audience), &NothingRevoked).is_err());
    }

    #[test]
    fn an_other_tenant_token_is_rejected(tenant in "[a-z][a-z0-9-]{0,20}[a-z0-9]") {
        prop_assume!(tenant != "acme");
        let f = fixture();
        let token = task_token(false);
        let other = name(&tenant);
        prop_assert!(f.identity.verify(&token, &Expected::task(&other, GATEWAY), &NothingRevoked).is_err());
        prop_assert!(f.identity.verify(&token, &Expected::task(&name("globex"), GATEWAY), &NothingRevoked).is_err());
    }
}
