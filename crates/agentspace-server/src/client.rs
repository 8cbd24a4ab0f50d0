//! A small blocking client for the control plane's API over plain HTTP/1.1, for the CLI
//! (`agentspace approvals --server URL`). It speaks only `http://` and is meant for a
//! server on loopback or behind a local TLS-terminating proxy; it keeps the CLI free of
//! an HTTP client stack.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest answer read, in bytes.
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// Why a call failed before an HTTP answer was read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL is not `http(s)://HOST[:PORT]`.
    #[error(
        "server URL `{0}` is not `http://HOST[:PORT]` or `https://HOST[:PORT]`: use e.g. `http://127.0.0.1:7171`"
    )]
    Url(String),
    /// The connection failed.
    #[error(
        "cannot talk to the control plane at `{url}`: {message}; is `agentspace serve` running there?"
    )]
    Io {
        /// The server.
        url: String,
        /// What failed.
        message: String,
    },
    /// The answer is not HTTP as expected.
    #[error("the control plane at `{url}` answered something that is not HTTP/1.1: {message}")]
    Protocol {
        /// The server.
        url: String,
        /// What was wrong.
        message: String,
    },
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// Every value of header `name` (lowercase).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// For an error answer, `error: detail` from the body; the body text otherwise.
    pub fn error_message(&self) -> String {
        let v = self.json();
        match (
            v.get("error").and_then(|e| e.as_str()),
            v.get("detail").and_then(|d| d.as_str()),
        ) {
            (Some(e), Some(d)) => format!("{e} ({d})"),
            (Some(e), None) => e.to_owned(),
            _ => String::from_utf8_lossy(&self.body).into_owned(),
        }
    }
}

/// A client of one server, with one bearer token.
#[derive(Clone)]
pub struct Client {
    url: String,
    authority: String,
    /// The host name for TLS, when the URL is `https://`.
    tls_host: Option<String>,
    token: Option<String>,
    timeout: Duration,
    /// A path the URL named (webhooks); prefixed to every request's path.
    path_prefix: String,
    /// Roots trusted besides the host's (DER), for a server with a private CA.
    extra_roots: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the server at `url` (`http://HOST[:PORT]`), sending `token` (if any)
    /// as `Authorization: Bearer`.
    pub fn new(url: &str, token: Option<&str>) -> Result<Self, ClientError> {
        let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("http://") {
            (rest, false, 80)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (rest, true, 443)
        } else {
            return Err(ClientError::Url(url.to_owned()));
        };
        // Only the authority: a webhook URL may carry a path, kept in `path_prefix`.
        let (authority, path_prefix) = match rest.find('/') {
            Some(i) => (
                rest.get(..i).unwrap_or_default(),
                rest.get(i..).unwrap_or_default(),
            ),
            None => (rest, ""),
        };
        // Printable ASCII only: the URL goes into a request line and a Host header.
        if authority.is_empty()
            || authority.contains('@')
            || !url.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ClientError::Url(url.to_owned()));
        }
        let (host, authority) = match authority.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_owned(), authority.to_owned()),
            _ => (authority.to_owned(), format!("{authority}:{default_port}")),
        };
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            authority,
            tls_host: tls.then_some(host),
            path_prefix: path_prefix.trim_end_matches('/').to_owned(),
            extra_roots: Vec::new(),
            token: token.map(str::to_owned),
            timeout: Duration::from_secs(60),
        })
    }

    /// Trusts `der` (a CA certificate) for `https://` besides the host's roots.
    pub fn with_root_certificate(mut self, der: Vec<u8>) -> Self {
        self.extra_roots.push(der);
        self
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.request("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<Response, ClientError> {
        self.request("POST", path, Some(body))
    }

    /// Any method, with an optional JSON body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, ClientError> {
        let body = body.map(|b| b.to_string());
        let mut headers = vec![("Accept", "application/json")];
        if method != "GET" {
            headers.push(("Content-Type", "application/json"));
        }
        self.send(
            method,
            path,
            &headers,
            body.as_deref().unwrap_or_default().as_bytes(),
        )
    }

    /// Any method with the given extra headers and body (for forms and cookies).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, ClientError> {
        let addr = self
            .addresses()?
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Url(self.url.clone()))?;
        self.send_to(addr, method, path, headers, body)
    }

    /// Every address the URL's host resolves to now.
    pub fn addresses(&self) -> Result<Vec<SocketAddr>, ClientError> {
        self.authority
            .to_socket_addrs()
            .map(Iterator::collect)
            .map_err(|e| ClientError::Io {
                url: self.url.clone(),
                message: e.to_string(),
            })
    }

    /// The same client with another time limit for each read and write.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `POST path` with a JSON body to `addr` (one of [`Self::addresses`], already
    /// checked), without resolving the host again; the URL's host still names the
    /// server in `Host` and for TLS.
    pub fn post_to(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Response, ClientError> {
        let body = body.to_string();
        self.send_to(
            addr,
            "POST",
            path,
            &[
                ("Accept", "application/json"),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
    }

    fn send_to(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, ClientError> {
        let io = |e: std::io::Error| ClientError::Io {
            url: self.url.clone(),
            message: e.to_string(),
        };
        let connect = Duration::from_secs(10).min(self.timeout);
        let mut stream = TcpStream::connect_timeout(&addr, connect).map_err(io)?;
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let target = format!("{}{path}", self.path_prefix);
        let target = if target.is_empty() { "/" } else { &target };
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.authority
        );
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if method != "GET" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let raw = match &self.tls_host {
            None => exchange(&mut stream, head.as_bytes(), body).map_err(io)?,
            Some(host) => {
                let tls = |message: String| ClientError::Io {
                    url: self.url.clone(),
                    message,
                };
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| tls(format!("`{host}` is not a TLS server name: {e}")))?;
                let conn = rustls::ClientConnection::new(tls_config(&self.extra_roots)?, name)
                    .map_err(|e| tls(e.to_string()))?;
                let mut stream = rustls::StreamOwned::new(conn, stream);
                exchange(&mut stream, head.as_bytes(), body).map_err(io)?
            }
        };
        if raw.is_empty() {
            // The server closed the connection without answering (it stopped, or
            // dropped the connection): a connection failure the caller may retry.
            return Err(ClientError::Io {
                url: self.url.clone(),
                message: "the connection closed without an answer".to_owned(),
            });
        }
        parse_response(&raw).map_err(|message| ClientError::Protocol {
            url: self.url.clone(),
            message,
        })
    }
}

/// Writes the request and reads the answer to its end.
fn exchange<S: Read + Write>(s: &mut S, head: &[u8], body: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(head)?;
    s.write_all(body)?;
    s.flush()?;
    let mut raw = Vec::new();
    match s.take(MAX_RESPONSE).read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        // A TLS peer that closes without close_notify after a complete answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(e),
    }
}

/// TLS with the host's trusted roots (ring provider, as everywhere in Agent Space).
fn tls_config(extra: &[Vec<u8>]) -> Result<std::sync::Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for der in extra {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| ClientError::Io {
                url: String::new(),
                message: format!("cannot trust the given CA certificate: {e}"),
            })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Io {
        url: String::new(),
        message: format!("cannot set up TLS: {e}"),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(raw.get(..split).ok_or("short answer")?)
        .map_err(|_| "headers are not UTF-8")?;
    let body = raw.get(split + 4..).unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line `{status_line}`"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    // An answer cut short (the connection dropped, or past MAX_RESPONSE) is an error,
    // never a shorter body taken for the whole.
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    if let Some(length) = length
        && body.len() < length
    {
        return Err(format!(
            "the answer was cut short: {} of {length} bytes (at most {MAX_RESPONSE} bytes are read)",
            body.len()
        ));
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(data.get(..end).unwrap_or_default())
            .map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        data = data.get(end + 2..).unwrap_or_default();
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("truncated chunk")?);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn reads_chunked_and_plain_answers() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"{}"[..]));
        let cut = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nabc").unwrap_err();
        assert!(cut.contains("cut short: 3 of 5 bytes"), "{cut}");
    }
}
