//! Token mint and verify throughput, and the same work done by the `jsonwebtoken` crate
//! (RustCrypto backend, same Ed25519 key, same claims) in the same run, as a ratio.
//!
//! Run with `bench/identity.sh` (or `cargo bench -p agentspace-identity --bench tokens`).
//! Single-threaded; each figure is the median of 5 rounds of about 1 s.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "bench tool"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use agentspace_core::{Actor, Name, Principal, TaskRef, UserId};
use agentspace_identity::{CallTarget, Expected, Identity, NothingRevoked, TaskTokenRequest};
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_millis(1000);

/// Operations per second of `op`: median of [`ROUNDS`] rounds.
fn rate(mut op: impl FnMut()) -> f64 {
    for _ in 0..200 {
        op();
    }
    let mut rates: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < ROUND {
                for _ in 0..64 {
                    op();
                }
                n += 64;
            }
            n as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[ROUNDS / 2]
}

fn line(what: &str, ours: f64, peer: Option<f64>) {
    match peer {
        Some(peer) => println!(
            "{what:<46} {ours:>10.0}/s   jsonwebtoken {peer:>10.0}/s   ratio {:.2}",
            ours / peer
        ),
        None => println!("{what:<46} {ours:>10.0}/s"),
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::open(dir.path());
    let tenant = Name::new("acme").unwrap();
    let user = UserId::new("alice@acme.example").unwrap();
    let parent = Principal::new(
        tenant.clone(),
        user,
        Actor::new(
            Name::new("credit-officer").unwrap(),
            TaskRef::new("01jb2x7k9m3q4r5s6t7v8w9x0y").unwrap(),
        ),
    );
    let principal = parent
        .delegate(Actor::new(
            Name::new("scorer").unwrap(),
            TaskRef::new("01jb2x7k9m3q4r5s6t7v8w9x0z").unwrap(),
        ))
        .unwrap();
    let request = TaskTokenRequest::new("agentspace-gateway");
    let expected = Expected::task(&tenant, "agentspace-gateway");

    // Ours.
    let mint = rate(|| {
        black_box(
            identity
                .mint_task_token(black_box(&principal), &request)
                .unwrap(),
        );
    });
    let token = identity.mint_task_token(&principal, &request).unwrap();
    let verify = rate(|| {
        black_box(
            identity
                .verify(black_box(token.as_str()), &expected, &NothingRevoked)
                .unwrap(),
        );
    });
    let target = CallTarget::new("POST", "https://scoring.internal.example/v1/score").unwrap();
    let mint_call = rate(|| {
        black_box(
            identity
                .mint_call_token(black_box(&principal), &target)
                .unwrap(),
        );
    });
    // One-time tokens: each verify records its jti in SQLite (synchronous=FULL). Tokens
    // are minted ahead so only the verify is timed.
    let one_time = TaskTokenRequest::new("agentspace-gateway").one_time();
    let pool: Vec<String> = (0..5_000)
        .map(|_| {
            identity
                .mint_task_token(&principal, &one_time)
                .unwrap()
                .as_str()
                .to_owned()
        })
        .collect();
    let start = Instant::now();
    for t in &pool {
        black_box(identity.verify(t, &expected, &NothingRevoked).unwrap());
    }
    let verify_once = pool.len() as f64 / start.elapsed().as_secs_f64();

    // jsonwebtoken: same key (PKCS#8 DER from our key file), same claims, JWKS-built key.
    let pem =
        std::fs::read_to_string(dir.path().join("identity/tenants/acme/signing-key.pem")).unwrap();
    let der = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
        .unwrap()
        .to_pkcs8_der()
        .unwrap();
    let encoding_key = EncodingKey::from_ed_der(der.as_bytes());
    let jwks: JwkSet =
        serde_json::from_str(&serde_json::to_string(&identity.jwks(&tenant).unwrap()).unwrap())
            .unwrap();
    let kid = jwks.keys[0].common.key_id.clone().unwrap();
    let decoding_key = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid);
    let claims = token.claims().clone();
    let jwt_mint = rate(|| {
        black_box(jsonwebtoken::encode(&header, black_box(&claims), &encoding_key).unwrap());
    });
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["agentspace-gateway"]);
    validation.set_issuer(&["acme"]);
    let jwt_verify = rate(|| {
        black_box(
            jsonwebtoken::decode::<agentspace_identity::Claims>(
                token.as_str(),
                &decoding_key,
                &validation,
            )
            .unwrap(),
        );
    });

    // The floor: the signature check alone on the same input.
    let vk = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
        .unwrap()
        .verifying_key();
    let (input, sig) = token.as_str().rsplit_once('.').unwrap();
    let sig = {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        ed25519_dalek::Signature::from_slice(&bytes).unwrap()
    };
    let raw_strict = rate(|| {
        black_box(vk.verify_strict(black_box(input.as_bytes()), &sig)).unwrap();
    });
    let raw = rate(|| {
        use ed25519_dalek::Verifier as _;
        black_box(vk.verify(black_box(input.as_bytes()), &sig)).unwrap();
    });
    let stat = rate(|| {
        black_box(
            std::fs::metadata(dir.path().join("identity/tenants/acme/keyring.json")).unwrap(),
        );
    });

    println!(
        "token throughput, one thread (median of {ROUNDS} x {} ms)",
        ROUND.as_millis()
    );
    line("mint task token (2-agent chain)", mint, Some(jwt_mint));
    line(
        "verify task token (sig, claims, chain, revocation hook)",
        verify,
        Some(jwt_verify),
    );
    line("mint per-call token", mint_call, None);
    line(
        "verify one-time token (+ SQLite replay record)",
        verify_once,
        None,
    );
    line("  floor: Ed25519 verify_strict alone", raw_strict, None);
    line("  floor: Ed25519 verify alone", raw, None);
    line("  stat() of keyring.json", stat, None);
    println!("token size: {} bytes", token.as_str().len());
}
