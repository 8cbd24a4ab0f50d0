//! AWS Signature Version 4, as a brokered credential: the gateway signs each request of
//! a capability with keys the agent never sees.
//!
//! Signed headers are `host`, `x-amz-content-sha256`, `x-amz-date` and, with temporary
//! credentials, `x-amz-security-token`. The payload hash is the body's SHA-256 when the
//! gateway holds the whole body (bodies up to the inspection window), and
//! `UNSIGNED-PAYLOAD` for longer ones, which S3 accepts and most other services do not.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use http::header::{self, HeaderValue};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Headers an agent may have signed itself: removed from every brokered request.
pub(crate) const AMZ_HEADERS: [&str; 4] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// The payload hash for a body the gateway does not hold whole.
pub(crate) const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Why a request cannot be signed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignError {
    /// The secret is not `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`.
    #[error(
        "secret `{0}` is not an AWS key: store it as ACCESS_KEY_ID:SECRET_ACCESS_KEY or ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN"
    )]
    Format(String),
}

/// Keys read from a secret, kept only as long as the signing takes.
struct Keys<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    session_token: Option<&'a str>,
}

fn keys<'a>(name: &str, secret: &'a [u8]) -> Result<Keys<'a>, SignError> {
    let bad = || SignError::Format(name.to_owned());
    let text = std::str::from_utf8(secret).map_err(|_| bad())?;
    let text = text.trim_end_matches(['\n', '\r']);
    let mut parts = text.splitn(3, ':');
    let (Some(id), Some(key)) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    let token = parts.next();
    let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !printable(id) || !printable(key) || token.is_some_and(|t| !printable(t)) {
        return Err(bad());
    }
    Ok(Keys {
        access_key_id: id,
        secret_access_key: key,
        session_token: token,
    })
}

/// Checks that a secret holds AWS keys in the documented form.
pub(crate) fn check_secret(name: &str, secret: &[u8]) -> Result<(), SignError> {
    keys(name, secret).map(|_| ())
}

/// What is signed about one request.
pub(crate) struct Signing<'a> {
    /// Uppercase method.
    pub(crate) method: &'a str,
    /// The `Host` (or `:authority`) value sent upstream.
    pub(crate) host: &'a str,
    /// Path and query as sent upstream.
    pub(crate) path_and_query: &'a str,
    /// Hex SHA-256 of the body, or [`UNSIGNED_PAYLOAD`].
    pub(crate) payload_hash: &'a str,
    pub(crate) region: &'a str,
    pub(crate) service: &'a str,
    /// Seconds since the Unix epoch.
    pub(crate) now: u64,
}

/// Signs a request: sets `x-amz-date`, `x-amz-content-sha256`, `x-amz-security-token`
/// (temporary credentials) and `authorization` in `headers`, after removing any the agent
/// sent. `secret_name` is only used in errors.
pub(crate) fn sign(
    headers: &mut HeaderMap,
    s: &Signing<'_>,
    secret_name: &str,
    secret: &[u8],
) -> Result<(), SignError> {
    let keys = keys(secret_name, secret)?;
    for name in AMZ_HEADERS {
        headers.remove(name);
    }
    let (date, stamp) = amz_dates(s.now);
    let (path, query) = s
        .path_and_query
        .split_once('?')
        .unwrap_or((s.path_and_query, ""));
    let mut signed: Vec<(&str, &str)> = vec![
        ("host", s.host),
        ("x-amz-content-sha256", s.payload_hash),
        ("x-amz-date", &stamp),
    ];
    if let Some(token) = keys.session_token {
        signed.push(("x-amz-security-token", token));
    }
    let scope = Scope {
        date: &date,
        region: s.region,
        service: s.service,
    };
    let authorization = authorization(
        &keys,
        &scope,
        &stamp,
        s.method,
        &canonical_uri(path, s.service),
        &canonical_query(query),
        &signed,
        s.payload_hash,
    );
    let value =
        |v: &str| HeaderValue::from_str(v).map_err(|_| SignError::Format(secret_name.to_owned()));
    headers.insert("x-amz-date", value(&stamp)?);
    headers.insert("x-amz-content-sha256", value(s.payload_hash)?);
    if let Some(token) = keys.session_token {
        let mut v = value(token)?;
        v.set_sensitive(true);
        headers.insert("x-amz-security-token", v);
    }
    let mut v = value(&authorization)?;
    v.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, v);
    Ok(())
}

/// The credential scope's parts.
struct Scope<'a> {
    date: &'a str,
    region: &'a str,
    service: &'a str,
}

/// The `Authorization` value for a request in canonical parts; `signed` holds lowercase
/// header names and their values.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of the canonical request, each named as in AWS's documentation"
)]
fn authorization(
    keys: &Keys<'_>,
    scope: &Scope<'_>,
    stamp: &str,
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    signed: &[(&str, &str)],
    payload_hash: &str,
) -> String {
    let mut headers: Vec<(String, String)> = signed
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), trim_value(v)))
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
    );
    let credential_scope = format!(
        "{}/{}/{}/aws4_request",
        scope.date, scope.region, scope.service
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{credential_scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = Zeroizing::new(format!("AWS4{}", keys.secret_access_key).into_bytes());
    for part in [scope.date, scope.region, scope.service, "aws4_request"] {
        key = Zeroizing::new(hmac(&key, part.as_bytes()));
    }
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
        keys.access_key_id
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// A header value with leading and trailing spaces removed and inner runs of spaces
/// collapsed to one.
fn trim_value(v: &str) -> String {
    v.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
}

/// The canonical URI of a path as sent on the wire (already percent-encoded): S3 takes it
/// as it is; every other service encodes it once more (AWS: "URI-encoded twice, except
/// for Amazon S3").
fn canonical_uri(path: &str, service: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    if service == "s3" {
        return path.to_owned();
    }
    encode(path.as_bytes(), false)
}

/// The canonical query: each name and value decoded and encoded again the way SigV4
/// wants, sorted by name then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(k), true), encode(&decode(v), true))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but `A-Za-z0-9-_.~` (and `/` unless `slash`), uppercase
/// hex, as SigV4 requires.
fn encode(bytes: &[u8], slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (b == b'/' && !slash) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decodes; a `%` not followed by two hex digits stays as it is.
fn decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ` for a Unix time.
fn amz_dates(now: u64) -> (String, String) {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(now).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let date = format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day());
    let stamp = format!("{date}T{:02}{:02}{:02}Z", t.hour(), t.minute(), t.second());
    (date, stamp)
}

/// Hex SHA-256 of a body.
pub(crate) fn payload_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;

    /// The credentials of AWS's SigV4 test suite.
    const SUITE_SECRET: &[u8] = b"AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    /// 2015-08-30T12:36:00Z, the suite's `X-Amz-Date`.
    const SUITE_TIME: u64 = 1_440_938_160;
    const EMPTY_HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// A suite request (host `example.amazonaws.com`, service `service`, signed headers
    /// `host;x-amz-date`, empty body), signed from its canonical URI and query.
    fn suite(method: &str, canonical_uri: &str, query: &str) -> String {
        let keys = keys("suite", SUITE_SECRET).unwrap();
        let (date, stamp) = amz_dates(SUITE_TIME);
        assert_eq!(stamp, "20150830T123600Z");
        let scope = Scope {
            date: &date,
            region: "us-east-1",
            service: "service",
        };
        authorization(
            &keys,
            &scope,
            &stamp,
            method,
            canonical_uri,
            &canonical_query(query),
            &[("Host", "example.amazonaws.com"), ("X-Amz-Date", &stamp)],
            EMPTY_HASH,
        )
    }

    fn signature(authorization: &str) -> &str {
        authorization.rsplit("Signature=").next().unwrap()
    }

    #[test]
    fn the_aws_test_suite_vectors_sign_as_published() {
        assert_eq!(
            suite("GET", "/", ""),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        for (name, method, uri, query, want) in [
            (
                "get-vanilla-query-order-key-case",
                "GET",
                "/",
                "Param2=value2&Param1=value1",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            (
                "get-utf8",
                "GET",
                "/%E1%88%B4",
                "",
                "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
            ),
            (
                "post-vanilla",
                "POST",
                "/",
                "",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
            (
                "post-vanilla-query",
                "POST",
                "/",
                "Param1=value1",
                "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
            ),
        ] {
            assert_eq!(signature(&suite(method, uri, query)), want, "{name}");
        }
    }

    #[test]
    fn canonical_forms() {
        // S3 signs the path as sent; other services encode it once more.
        assert_eq!(canonical_uri("/a%20b/c", "s3"), "/a%20b/c");
        assert_eq!(canonical_uri("/a%20b/c", "execute-api"), "/a%2520b/c");
        assert_eq!(canonical_uri("", "s3"), "/");
        assert_eq!(
            canonical_query("b=2&a=x+y&a=%7e&c&e=%2f"),
            "a=x%2By&a=~&b=2&c=&e=%2F"
        );
        assert_eq!(trim_value("  a   b  "), "a b");
    }

    #[test]
    fn signing_replaces_what_the_agent_sent_and_adds_the_session_token() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static("AWS4-HMAC-SHA256 forged"),
        );
        headers.insert("x-amz-date", HeaderValue::from_static("19990101T000000Z"));
        headers.insert("x-amz-security-token", HeaderValue::from_static("forged"));
        let s = Signing {
            method: "GET",
            host: "bucket.s3.amazonaws.com",
            path_and_query: "/key?list-type=2",
            payload_hash: UNSIGNED_PAYLOAD,
            region: "us-east-1",
            service: "s3",
            now: SUITE_TIME,
        };
        sign(&mut headers, &s, "aws-key", b"AKID:SECRET:TOKEN\n").unwrap();
        assert_eq!(headers["x-amz-date"], "20150830T123600Z");
        assert_eq!(headers["x-amz-content-sha256"], UNSIGNED_PAYLOAD);
        assert_eq!(headers["x-amz-security-token"], "TOKEN");
        let auth = headers["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature="),
            "{auth}"
        );
        for bad in [
            &b"no-colon"[..],
            b":SECRET",
            b"AKID:",
            b"AKID:SE CRET",
            b"\xff:x",
        ] {
            let e = sign(&mut headers, &s, "aws-key", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("ACCESS_KEY_ID:SECRET_ACCESS_KEY"), "{e}");
            assert!(!e.contains("SECRET ") || !e.contains("SE CRET"), "{e}");
        }
    }
}
