//! Operator settings of the gateway: where its state lives, which extra CAs the upstream
//! client trusts, resolve overrides, and the limits that protect it from its clients.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::GatewayError;

/// The gateway's settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The state directory (`$AGENTSPACE_HOME`); the CAs live in `<state>/gateway/ca/`.
    pub state_dir: PathBuf,
    /// PEM files of CAs the upstream client trusts besides the system roots
    /// (`--upstream-ca`).
    pub upstream_ca: Vec<PathBuf>,
    /// Whether to trust the system roots at all (tests turn this off so that only
    /// `upstream_ca` is trusted).
    pub system_roots: bool,
    /// Resolve overrides (`--resolve`).
    pub resolve: Vec<ResolveOverride>,
    /// Limits on what a client may send.
    pub limits: Limits,
}

impl GatewayConfig {
    /// Settings with the system roots, no overrides and the default limits.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            upstream_ca: Vec::new(),
            system_roots: true,
            resolve: Vec::new(),
            limits: Limits::default(),
        }
    }
}

/// Limits on what a client may send; past one, the request gets an HTTP error and the
/// gateway carries on.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of a request head (request line and headers); at least 8192.
    pub max_header_bytes: usize,
    /// Number of request headers.
    pub max_headers: usize,
    /// Time a client has to send a complete request head (slowloris).
    pub header_read_timeout: Duration,
    /// Time a client has to finish a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Bytes of one request body; longer bodies are cut off with an error.
    pub max_body_bytes: u64,
    /// Bytes of a JSON request body held for the decision; a longer body is decided
    /// without its fields.
    pub inspect_window: usize,
    /// Time to connect to an upstream.
    pub connect_timeout: Duration,
    /// Connections (tunnels included) one door serves at once; further clients wait in
    /// the listen backlog, so one task cannot exhaust the gateway's descriptors.
    pub max_connections_per_door: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024 * 1024,
            inspect_window: 64 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_connections_per_door: 256,
        }
    }
}

/// One resolve override, like curl's `--resolve HOST:PORT:ADDR`: connections for
/// `HOST:PORT` go to `ADDR` (optionally `ADDR:ADDR_PORT`, so a stand-in can listen on
/// an unprivileged port), and the SSRF guard lets them through since the operator named
/// the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveOverride {
    /// Host name, lowercase.
    pub host: String,
    /// Port the agent asks for.
    pub port: u16,
    /// Where to connect instead.
    pub addr: SocketAddr,
}

impl ResolveOverride {
    /// Parses `HOST:PORT:ADDR`, `HOST:PORT:ADDR:ADDR_PORT`, with `[v6]` for IPv6
    /// addresses.
    pub fn parse(entry: &str) -> Result<Self, GatewayError> {
        let bad = |detail: &str| GatewayError::Resolve {
            entry: entry.to_owned(),
            detail: detail.to_owned(),
        };
        let (host, rest) = entry
            .split_once(':')
            .ok_or_else(|| bad("missing `:PORT:ADDR`"))?;
        let (port, addr) = rest.split_once(':').ok_or_else(|| bad("missing `:ADDR`"))?;
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port is not a number 0-65535"))?;
        let addr = if let Ok(ip) = addr.trim_matches(['[', ']']).parse::<IpAddr>() {
            SocketAddr::new(ip, port)
        } else {
            addr.parse::<SocketAddr>()
                .or_else(|_| {
                    // v4:port
                    let (ip, p) = addr.rsplit_once(':').ok_or(())?;
                    let ip: IpAddr = ip.parse().map_err(|_| ())?;
                    let p: u16 = p.parse().map_err(|_| ())?;
                    Ok::<_, ()>(SocketAddr::new(ip, p))
                })
                .map_err(|()| bad("address is not an IP address"))?
        };
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            addr,
        })
    }
}

/// The overrides as a lookup table.
pub(crate) fn resolve_table(entries: &[ResolveOverride]) -> HashMap<(String, u16), SocketAddr> {
    entries
        .iter()
        .map(|e| ((e.host.clone(), e.port), e.addr))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_overrides_parse_like_curl_with_an_optional_port() {
        let r = ResolveOverride::parse("API.example.com:443:127.0.0.1").unwrap();
        assert_eq!(r.host, "api.example.com");
        assert_eq!(r.addr, "127.0.0.1:443".parse().unwrap());
        let r = ResolveOverride::parse("api.example.com:443:127.0.0.1:8443").unwrap();
        assert_eq!(r.addr, "127.0.0.1:8443".parse().unwrap());
        let r = ResolveOverride::parse("h:80:[::1]").unwrap();
        assert_eq!(r.addr, "[::1]:80".parse().unwrap());
        let r = ResolveOverride::parse("h:80:[::1]:81").unwrap();
        assert_eq!(r.addr, "[::1]:81".parse().unwrap());
        for bad in ["h", "h:80", ":80:1.2.3.4", "h:x:1.2.3.4", "h:80:nope"] {
            let e = ResolveOverride::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }
}
