//! Credential brokering: the gateway adds a credential from the secret store to an
//! allowed request on its way out, removes any the agent sent, and redacts the secret
//! from the response on its way back. The agent never holds the secret.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use zeroize::Zeroizing;

use crate::body::BoxError;

/// What replaces a secret in a response.
pub(crate) const REDACTED: &[u8] = b"[REDACTED]";

/// Request headers that carry credentials: removed from every brokered request, so an
/// agent cannot send its own alongside (or instead of) the brokered one.
const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
];

/// How a credential is applied to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Apply {
    /// A header, its value written from `format` with `{}` replaced by the secret
    /// (`Authorization`, `Bearer {}`).
    Header {
        /// The header's name.
        name: String,
        /// The value, `{}` standing for the secret.
        format: String,
    },
    /// HTTP basic authentication with `username` and the secret as password.
    Basic {
        /// The user name.
        username: String,
    },
    /// A query parameter whose value is the secret.
    Query {
        /// The parameter's name.
        param: String,
    },
    /// AWS Signature Version 4: the secret is `ACCESS_KEY_ID:SECRET_ACCESS_KEY` or
    /// `ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN`, and every request is signed for
    /// `region` and `service`.
    AwsSigV4 {
        /// The region, e.g. `us-east-1`.
        region: String,
        /// The service's signing name, e.g. `s3`.
        service: String,
    },
}

/// A credential a capability's requests carry: which secret, applied how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// The secret's name in the tenant's secret store.
    pub secret: String,
    /// How it is applied.
    pub apply: Apply,
}

impl From<&agentspace_core::CredentialRef> for Credential {
    /// The credential an egress rule of a definition declares.
    fn from(c: &agentspace_core::CredentialRef) -> Self {
        use agentspace_core::CredentialApply;
        let apply = match &c.apply {
            CredentialApply::Header { name, format } => Apply::Header {
                name: name.clone(),
                format: format.clone(),
            },
            CredentialApply::Basic { username } => Apply::Basic {
                username: username.clone(),
            },
            CredentialApply::Query { param } => Apply::Query {
                param: param.clone(),
            },
            CredentialApply::AwsSigV4 { region, service } => Apply::AwsSigV4 {
                region: region.clone(),
                service: service.clone(),
            },
        };
        Self {
            secret: c.secret.clone(),
            apply,
        }
    }
}

/// Why a credential could not be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BrokerError {
    #[error("credential header name `{0}` is not a valid header name")]
    HeaderName(String),
    #[error("the value of secret `{0}` cannot be sent in a header (it holds control characters)")]
    HeaderValue(String),
}

/// The strings the response must not show: the secret and its encodings as sent.
pub(crate) fn patterns(secret: &[u8], apply: &Apply) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out = vec![Zeroizing::new(secret.to_vec())];
    if let Apply::Basic { username } = apply {
        let mut pair = Zeroizing::new(username.as_bytes().to_vec());
        pair.push(b':');
        pair.extend_from_slice(secret);
        out.push(Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .encode(&*pair)
                .into_bytes(),
        ));
    }
    if let Apply::Query { .. } = apply {
        let encoded = percent_encode(secret);
        if encoded.as_slice() != secret {
            out.push(Zeroizing::new(encoded));
        }
    }
    if let Apply::AwsSigV4 { .. } = apply {
        // The secret access key and the session token, each on its own (the access key
        // id names the key; it is not secret).
        let text = secret.strip_suffix(b"\n").unwrap_or(secret);
        for part in text.splitn(3, |&b| b == b':').skip(1) {
            out.push(Zeroizing::new(part.to_vec()));
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

fn percent_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Removes agent-supplied credentials and applies `credential` to a request's headers
/// and path-and-query; returns the new path-and-query.
pub(crate) fn apply(
    credential: &Credential,
    secret: &[u8],
    headers: &mut HeaderMap,
    path_and_query: &str,
) -> Result<String, BrokerError> {
    for name in CREDENTIAL_HEADERS {
        headers.remove(name);
    }
    // Compressed responses would hide the secret from redaction.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    match &credential.apply {
        Apply::Header { name, format } => {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| BrokerError::HeaderName(name.clone()))?;
            headers.remove(&name);
            let (before, after) = format.split_once("{}").unwrap_or((format.as_str(), ""));
            let mut value = Zeroizing::new(before.as_bytes().to_vec());
            value.extend_from_slice(secret);
            value.extend_from_slice(after.as_bytes());
            let mut value = HeaderValue::from_bytes(&value)
                .map_err(|_| BrokerError::HeaderValue(credential.secret.clone()))?;
            value.set_sensitive(true);
            headers.insert(name, value);
            Ok(path_and_query.to_owned())
        }
        Apply::Basic { username } => {
            let mut pair = Zeroizing::new(username.as_bytes().to_vec());
            pair.push(b':');
            pair.extend_from_slice(secret);
            let encoded = base64::engine::general_purpose::STANDARD.encode(&*pair);
            let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
                .map_err(|_| BrokerError::HeaderValue(credential.secret.clone()))?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
            Ok(path_and_query.to_owned())
        }
        // Signed once the request's final form is known (`crate::sigv4::sign`); here
        // only what the agent may have signed itself goes.
        Apply::AwsSigV4 { .. } => {
            for name in crate::sigv4::AMZ_HEADERS {
                headers.remove(name);
            }
            Ok(path_and_query.to_owned())
        }
        Apply::Query { param } => {
            let (path, query) = path_and_query
                .split_once('?')
                .unwrap_or((path_and_query, ""));
            let param_enc = String::from_utf8_lossy(&percent_encode(param.as_bytes())).into_owned();
            let mut kept: Vec<&str> = query
                .split('&')
                .filter(|kv| !kv.is_empty())
                .filter(|kv| kv.split('=').next() != Some(param_enc.as_str()))
                .collect();
            let secret_enc = String::from_utf8_lossy(&percent_encode(secret)).into_owned();
            let pair = format!("{param_enc}={secret_enc}");
            kept.push(&pair);
            Ok(format!("{path}?{}", kept.join("&")))
        }
    }
}

/// Replaces every pattern in response header values.
pub(crate) fn redact_headers(headers: &mut HeaderMap, patterns: &[Zeroizing<Vec<u8>>]) {
    for value in headers.values_mut() {
        let bytes = value.as_bytes();
        if patterns
            .iter()
            .any(|p| bytes.windows(p.len()).any(|w| w == p.as_slice()))
        {
            let mut r = Redactor::new(patterns.to_vec());
            let mut out = r.push(bytes);
            out.extend(r.finish());
            if let Ok(v) = HeaderValue::from_bytes(&out) {
                *value = v;
            }
        }
    }
}

/// Streaming replacement of patterns, holding back only as many bytes as a pattern
/// could still need.
pub(crate) struct Redactor {
    patterns: Vec<Zeroizing<Vec<u8>>>,
    carry: Zeroizing<Vec<u8>>,
    longest: usize,
}

impl Redactor {
    pub(crate) fn new(patterns: Vec<Zeroizing<Vec<u8>>>) -> Self {
        let longest = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        Self {
            patterns,
            carry: Zeroizing::new(Vec::new()),
            longest,
        }
    }

    /// Feeds `chunk`; returns what can be released.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.carry.extend_from_slice(chunk);
        self.scan(false)
    }

    /// The rest, at the end of the stream.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        self.scan(true)
    }

    fn scan(&mut self, end: bool) -> Vec<u8> {
        let buf = std::mem::take(&mut *self.carry);
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i < buf.len() {
            let rest = buf.get(i..).unwrap_or(&[]);
            if !end && rest.len() < self.longest {
                break;
            }
            if let Some(p) = self.patterns.iter().find(|p| rest.starts_with(p)) {
                out.extend_from_slice(REDACTED);
                i += p.len();
            } else {
                if let Some(&b) = rest.first() {
                    out.push(b);
                }
                i += 1;
            }
        }
        self.carry = Zeroizing::new(buf.get(i..).unwrap_or(&[]).to_vec());
        out
    }
}

/// A response body with the brokered secret redacted.
pub(crate) struct RedactBody<B> {
    inner: B,
    redactor: Redactor,
    finished: bool,
}

impl<B> RedactBody<B> {
    pub(crate) fn new(inner: B, patterns: Vec<Zeroizing<Vec<u8>>>) -> Self {
        Self {
            inner,
            redactor: Redactor::new(patterns),
            finished: false,
        }
    }
}

impl<B> Body for RedactBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are dropped on brokered routes: releasing them before the
                    // held bytes would reorder the stream.
                    if let Ok(data) = frame.into_data() {
                        let out = this.redactor.push(&data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                }
                Poll::Ready(None) => {
                    this.finished = true;
                    let out = this.redactor.finish();
                    if out.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact_split(input: &[u8], at: &[usize], patterns: &[&[u8]]) -> Vec<u8> {
        let mut r = Redactor::new(
            patterns
                .iter()
                .map(|p| Zeroizing::new(p.to_vec()))
                .collect(),
        );
        let mut out = Vec::new();
        let mut last = 0;
        for &cut in at {
            let cut = cut.min(input.len()).max(last);
            out.extend(r.push(&input[last..cut]));
            last = cut;
        }
        out.extend(r.push(&input[last..]));
        out.extend(r.finish());
        out
    }

    #[test]
    fn secrets_are_redacted_wherever_the_chunks_split_them() {
        let input = b"token=sk_live_ABC and again sk_live_ABC; almost sk_live_AB.";
        let want = b"token=[REDACTED] and again [REDACTED]; almost sk_live_AB.".to_vec();
        for a in 0..input.len() {
            for b in a..input.len() {
                assert_eq!(
                    redact_split(input, &[a, b], &[b"sk_live_ABC"]),
                    want,
                    "{a} {b}"
                );
            }
        }
    }

    #[test]
    fn credentials_replace_what_the_agent_sent() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer forged"));
        headers.insert("x-api-key", HeaderValue::from_static("forged"));
        let bearer = Credential {
            secret: "k".into(),
            apply: Apply::Header {
                name: "Authorization".into(),
                format: "Bearer {}".into(),
            },
        };
        let pq = apply(&bearer, b"s3cret", &mut headers, "/v1?a=1").unwrap();
        assert_eq!(pq, "/v1?a=1");
        assert_eq!(headers["authorization"], "Bearer s3cret");
        assert!(headers.get("x-api-key").is_none());

        let query = Credential {
            secret: "k".into(),
            apply: Apply::Query {
                param: "key".into(),
            },
        };
        let pq = apply(&query, b"a b", &mut headers, "/v1?key=forged&a=1").unwrap();
        assert_eq!(pq, "/v1?a=1&key=a%20b");

        let basic = Credential {
            secret: "k".into(),
            apply: Apply::Basic {
                username: "api".into(),
            },
        };
        apply(&basic, b"pw", &mut headers, "/").unwrap();
        assert_eq!(headers["authorization"], "Basic YXBpOnB3");
        let p = patterns(b"pw", &basic.apply);
        assert!(p.iter().any(|p| p.as_slice() == b"YXBpOnB3"));
    }
}
