//! Key storage, rotation and the JWKS.

use std::os::unix::fs::PermissionsExt as _;

use agentspace_identity::{
    Expected, IdentityError, MAX_CLOCK_SKEW_SECS, MAX_TOKEN_LIFETIME_SECS, NothingRevoked,
    Rejection, TaskTokenRequest,
};
use pretty_assertions::assert_eq;

use super::support::{Fixture, GATEWAY, T0, decode_part, name};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keys_are_created_on_first_use_private_to_the_user() {
    let f = Fixture::new();
    let dir = f.dir.path().join("identity/tenants/acme");
    assert!(
        !f.dir.path().join("identity").exists(),
        "opening creates nothing"
    );
    f.mint(&f.principal("a", "1"));
    assert_eq!(mode(&f.dir.path().join("identity")), 0o700);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("signing-key.pem")), 0o600);
    assert_eq!(mode(&dir.join("keyring.json")), 0o600);
    let pem = std::fs::read_to_string(dir.join("signing-key.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let ring = std::fs::read_to_string(dir.join("keyring.json")).unwrap();
    assert!(!ring.contains("PRIVATE"));
}

#[test]
fn the_jwks_lists_the_public_key_under_its_thumbprint() {
    let f = Fixture::new();
    let jwks = f.identity.jwks(&f.tenant).unwrap();
    assert_eq!(jwks.keys.len(), 1);
    let jwk = &jwks.keys[0];
    assert_eq!(
        (
            jwk.kty.as_str(),
            jwk.crv.as_str(),
            jwk.alg.as_str(),
            jwk.key_use.as_str()
        ),
        ("OKP", "Ed25519", "EdDSA", "sig")
    );
    assert_eq!(jwk.x.len(), 43, "32 bytes base64url");
    let json = serde_json::to_value(&jwks).unwrap();
    assert_eq!(
        json["keys"][0].as_object().unwrap().len(),
        6,
        "no private member such as `d`: {json}"
    );
    // The same key from a second process: stable across loads.
    assert_eq!(f.another_process().jwks(&f.tenant).unwrap(), jwks);
}

#[test]
fn tenants_have_separate_keys() {
    let f = Fixture::new();
    let acme = f.identity.jwks(&name("acme")).unwrap();
    let globex = f.identity.jwks(&name("globex")).unwrap();
    assert_ne!(acme.keys[0].kid, globex.keys[0].kid);
    assert!(
        f.dir
            .path()
            .join("identity/tenants/globex/signing-key.pem")
            .exists()
    );
}

#[test]
fn rotation_keeps_old_tokens_valid_until_they_expire() {
    let f = Fixture::new();
    let p = f.principal("a", "1");
    let expected = Expected::task(&f.tenant, GATEWAY);
    let long = TaskTokenRequest::new(GATEWAY)
        .lifetime(std::time::Duration::from_secs(MAX_TOKEN_LIFETIME_SECS));
    let old = f.identity.mint_task_token(&p, &long).unwrap();
    let old_kid = decode_part(old.as_str(), 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();

    let rotation = f.identity.rotate(&f.tenant).unwrap();
    assert_eq!(rotation.retired_kid, old_kid);
    assert_eq!(
        rotation.retired_verifies_until,
        T0 + MAX_TOKEN_LIFETIME_SECS + MAX_CLOCK_SKEW_SECS
    );
    let new = f.identity.mint_task_token(&p, &long).unwrap();
    assert_eq!(
        decode_part(new.as_str(), 0)["kid"],
        rotation.new_kid.as_str()
    );

    let kids: Vec<String> = f
        .identity
        .jwks(&f.tenant)
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(
        kids,
        vec![rotation.new_kid.clone(), old_kid.clone()],
        "active key first"
    );
    assert!(
        f.identity
            .verify(old.as_str(), &expected, &NothingRevoked)
            .is_ok()
    );
    assert!(
        f.identity
            .verify(new.as_str(), &expected, &NothingRevoked)
            .is_ok()
    );

    // The old private key is gone from disk; only the new one is there.
    let pem = std::fs::read_to_string(f.dir.path().join("identity/tenants/acme/signing-key.pem"))
        .unwrap();
    assert_eq!(pem.matches("BEGIN PRIVATE KEY").count(), 1);

    // After the grace period the old key is neither served nor accepted.
    f.clock.set(rotation.retired_verifies_until + 1);
    let kids: Vec<String> = f
        .identity
        .jwks(&f.tenant)
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, vec![rotation.new_kid.clone()]);
    assert!(matches!(
        f.identity.verify(old.as_str(), &expected, &NothingRevoked),
        Err(Rejection::UnknownKey { .. })
    ));
}

#[test]
fn a_rotation_by_another_process_is_picked_up_without_restart() {
    let f = Fixture::new();
    let p = f.principal("a", "1");
    let before = f.mint(&p);
    let verifier = f.another_process();
    assert!(
        verifier
            .verify(
                before.as_str(),
                &Expected::task(&f.tenant, GATEWAY),
                &NothingRevoked
            )
            .is_ok()
    );

    let rotation = f.another_process().rotate(&f.tenant).unwrap();
    let after = f.mint(&p);
    assert_eq!(
        decode_part(after.as_str(), 0)["kid"],
        rotation.new_kid.as_str(),
        "the minting process uses the new key"
    );
    assert!(
        verifier
            .verify(
                after.as_str(),
                &Expected::task(&f.tenant, GATEWAY),
                &NothingRevoked
            )
            .is_ok()
    );
    assert!(
        verifier
            .verify(
                before.as_str(),
                &Expected::task(&f.tenant, GATEWAY),
                &NothingRevoked
            )
            .is_ok()
    );
}

#[test]
fn a_key_file_open_to_others_is_refused() {
    let f = Fixture::new();
    f.identity.jwks(&f.tenant).unwrap();
    let pem = f.dir.path().join("identity/tenants/acme/signing-key.pem");
    std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = f
        .another_process()
        .mint_task_token(&f.principal("a", "1"), &TaskTokenRequest::new(GATEWAY))
        .unwrap_err();
    assert!(
        matches!(err, IdentityError::InsecureKeyFile { mode: 0o644, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn a_damaged_keyring_is_reported_and_verification_fails_closed() {
    let f = Fixture::new();
    let token = f.mint(&f.principal("a", "1"));
    std::fs::write(
        f.dir.path().join("identity/tenants/acme/keyring.json"),
        b"{not json",
    )
    .unwrap();
    let err = f.another_process().jwks(&f.tenant).unwrap_err();
    assert!(
        matches!(err, IdentityError::CorruptKeyStore { .. }),
        "{err}"
    );
    assert!(matches!(
        f.another_process().verify(
            token.as_str(),
            &Expected::task(&f.tenant, GATEWAY),
            &NothingRevoked
        ),
        Err(Rejection::KeyStoreUnavailable(_))
    ));
}

#[test]
fn verifying_for_a_tenant_without_keys_creates_nothing() {
    let f = Fixture::new();
    let token = f.mint(&f.principal("a", "1"));
    let nobody = name("nobody");
    assert!(matches!(
        f.identity.verify(
            token.as_str(),
            &Expected::task(&nobody, GATEWAY),
            &NothingRevoked
        ),
        Err(Rejection::UnknownKey { .. })
    ));
    assert!(!f.dir.path().join("identity/tenants/nobody").exists());
}
