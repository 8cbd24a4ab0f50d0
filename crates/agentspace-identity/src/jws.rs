//! Compact JWS (RFC 7515) with EdDSA (RFC 8037) over Ed25519: the only algorithm signed
//! or accepted. Hand-written because it is thirty lines over ed25519-dalek, base64 and
//! serde_json, and it lets the parser reject everything but the one form we issue.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use serde::{Deserialize, Serialize};

use crate::Rejection;
use crate::claims::Claims;

/// Tokens longer than this are refused before any parsing: ours are well under 2 KiB even
/// at the maximum delegation depth.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Serialize)]
struct HeaderOut<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderIn {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    kid: String,
}

/// The base64url header for tokens signed with `kid`, computed once per key.
pub(crate) fn encoded_header(kid: &str) -> String {
    let header = HeaderOut {
        alg: "EdDSA",
        typ: "JWT",
        kid,
    };
    // Serialising three string fields cannot fail; an empty header would only produce
    // tokens that no verifier accepts.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default())
}

/// Signs `claims` under a precomputed header.
pub(crate) fn sign(
    header_b64: &str,
    claims: &Claims,
    key: &SigningKey,
) -> Result<String, serde_json::Error> {
    let payload = serde_json::to_vec(claims)?;
    let mut token = String::with_capacity(header_b64.len() + payload.len() * 4 / 3 + 90);
    token.push_str(header_b64);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
    let signature = key.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
    Ok(token)
}

/// A token split and decoded, signature not yet checked.
pub(crate) struct Parsed<'a> {
    pub(crate) kid: String,
    pub(crate) signing_input: &'a [u8],
    pub(crate) payload: Vec<u8>,
    pub(crate) signature: Signature,
}

fn malformed(why: &str) -> Rejection {
    Rejection::Malformed(why.to_owned())
}

/// Splits and decodes a compact JWS, checking the header. The payload is returned raw: it
/// is parsed only after the signature verifies.
pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, Rejection> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed("longer than 8 KiB"));
    }
    let shape = || malformed("not three base64url parts separated by `.`");
    let (signing_input, signature) = token.rsplit_once('.').ok_or_else(shape)?;
    let (header, payload) = signing_input.split_once('.').ok_or_else(shape)?;
    if payload.contains('.') {
        return Err(shape());
    }
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    let header: HeaderIn = serde_json::from_slice(&header)
        .map_err(|e| Rejection::Malformed(format!("header: {e}")))?;
    if header.alg != "EdDSA" {
        return Err(Rejection::UnsupportedAlgorithm(truncate(&header.alg)));
    }
    if header
        .typ
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("JWT"))
    {
        return Err(malformed("header `typ` is not `JWT`"));
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| malformed("payload is not base64url"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| malformed("signature is not base64url"))?;
    let signature =
        Signature::from_slice(&signature).map_err(|_| malformed("signature is not 64 bytes"))?;
    Ok(Parsed {
        kid: header.kid,
        signing_input: signing_input.as_bytes(),
        payload,
        signature,
    })
}

/// Keeps attacker-chosen text in error messages short.
pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
