//! Operator settings of the gateway: where its state lives, which extra CAs the upstream
//! client trusts, resolve overrides, and the limits that protect it from its clients.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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

impl GatewayConfig {
    /// Applies a gateway config file (YAML; docs/gateway.md): its resolve overrides and
    /// upstream CAs are added to those already set, its limits replace the defaults.
    /// Command-line flags are applied after the file, so their resolve overrides win for
    /// the same `HOST:PORT` and their CAs are trusted as well.
    pub fn load_file(&mut self, path: &Path) -> Result<(), GatewayError> {
        let text = std::fs::read_to_string(path).map_err(|source| GatewayError::State {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        let file = ConfigFile::parse(path, &text)?;
        self.resolve.extend(file.resolve);
        self.upstream_ca.extend(file.upstream_ca);
        self.limits = file.limits;
        Ok(())
    }
}

/// A gateway config file as written: every field optional, unknown fields refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfigFile {
    /// `HOST:PORT:ADDR[:ADDR_PORT]` entries, like `--resolve`.
    #[serde(default)]
    resolve: Vec<String>,
    /// PEM files of CAs the upstream client trusts, relative to the file.
    #[serde(default)]
    upstream_ca: Vec<PathBuf>,
    /// Limits on what clients may send.
    #[serde(default)]
    limits: RawLimits,
}

/// `limits` as written; each unset field keeps its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLimits {
    max_header_bytes: Option<agentspace_core::Size>,
    max_headers: Option<usize>,
    header_read_timeout: Option<agentspace_core::Duration>,
    tls_handshake_timeout: Option<agentspace_core::Duration>,
    max_body_bytes: Option<agentspace_core::Size>,
    inspect_window: Option<agentspace_core::Size>,
    connect_timeout: Option<agentspace_core::Duration>,
    max_connections_per_door: Option<usize>,
}

/// A validated gateway config file.
#[derive(Debug)]
struct ConfigFile {
    resolve: Vec<ResolveOverride>,
    upstream_ca: Vec<PathBuf>,
    limits: Limits,
}

/// Largest accepted `limits.inspectWindow` and `limits.maxHeaderBytes`: both are held in
/// memory per request.
const MAX_HELD: u64 = 16 * 1024 * 1024;

impl ConfigFile {
    fn parse(path: &Path, text: &str) -> Result<Self, GatewayError> {
        let error = |line: Option<usize>, column: Option<usize>, field: &str, message: String| {
            GatewayError::ConfigFile {
                path: path.to_owned(),
                line,
                column,
                field: field.to_owned(),
                message,
            }
        };
        // An empty file is an empty mapping, not an error.
        let raw: RawConfigFile = if text.trim().is_empty() {
            RawConfigFile::default()
        } else {
            serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text)).map_err(
                |e| {
                    let location = e.inner().location();
                    let mut message = e.inner().to_string();
                    if let Some(idx) = message.rfind(" at line ") {
                        message.truncate(idx);
                    }
                    if let Some((prefix, rest)) = message.split_once(": ")
                        && !prefix.contains(' ')
                    {
                        message = rest.to_owned();
                    }
                    error(
                        location.as_ref().map(serde_yaml_ng::Location::line),
                        location.as_ref().map(serde_yaml_ng::Location::column),
                        &e.path().to_string(),
                        message,
                    )
                },
            )?
        };
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).map(|i| i + 1);
        let mut resolve = Vec::new();
        for (i, entry) in raw.resolve.iter().enumerate() {
            resolve.push(ResolveOverride::parse(entry).map_err(|e| {
                error(
                    line_of(entry),
                    None,
                    &format!("resolve[{i}]"),
                    e.to_string(),
                )
            })?);
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let upstream_ca = raw.upstream_ca.iter().map(|p| base.join(p)).collect();
        let d = Limits::default();
        let l = &raw.limits;
        let field_error = |field: &str, message: &str| {
            let key = field.rsplit('.').next().unwrap_or(field);
            error(line_of(&format!("{key}:")), None, field, message.to_owned())
        };
        let size =
            |v: Option<agentspace_core::Size>, field: &str, min: u64, max: u64, default: u64| {
                let Some(v) = v else {
                    return Ok(default);
                };
                let b = v.bytes();
                if b < min || b > max {
                    return Err(field_error(
                        field,
                        &format!("must be between {min} and {max} bytes"),
                    ));
                }
                Ok(b)
            };
        let time = |v: Option<agentspace_core::Duration>, field: &str, default: Duration| {
            let Some(v) = v else {
                return Ok(default);
            };
            let t = v.get();
            if t.is_zero() || t > Duration::from_secs(3600) {
                return Err(field_error(
                    field,
                    "must be longer than zero and at most 1h",
                ));
            }
            Ok(t)
        };
        let count = |v: Option<usize>, field: &str, max: usize, default: usize| {
            let Some(v) = v else {
                return Ok(default);
            };
            if v == 0 || v > max {
                return Err(field_error(field, &format!("must be between 1 and {max}")));
            }
            Ok(v)
        };
        let as_usize = |b: u64| usize::try_from(b).unwrap_or(usize::MAX);
        let limits = Limits {
            max_header_bytes: as_usize(size(
                l.max_header_bytes,
                "limits.maxHeaderBytes",
                8192,
                MAX_HELD,
                d.max_header_bytes as u64,
            )?),
            max_headers: count(l.max_headers, "limits.maxHeaders", 10_000, d.max_headers)?,
            header_read_timeout: time(
                l.header_read_timeout,
                "limits.headerReadTimeout",
                d.header_read_timeout,
            )?,
            tls_handshake_timeout: time(
                l.tls_handshake_timeout,
                "limits.tlsHandshakeTimeout",
                d.tls_handshake_timeout,
            )?,
            max_body_bytes: size(
                l.max_body_bytes,
                "limits.maxBodyBytes",
                1,
                u64::MAX,
                d.max_body_bytes,
            )?,
            inspect_window: as_usize(size(
                l.inspect_window,
                "limits.inspectWindow",
                1,
                MAX_HELD,
                d.inspect_window as u64,
            )?),
            connect_timeout: time(
                l.connect_timeout,
                "limits.connectTimeout",
                d.connect_timeout,
            )?,
            max_connections_per_door: count(
                l.max_connections_per_door,
                "limits.maxConnectionsPerDoor",
                65_536,
                d.max_connections_per_door,
            )?,
        };
        Ok(Self {
            resolve,
            upstream_ca,
            limits,
        })
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

    fn parse(text: &str) -> Result<ConfigFile, String> {
        ConfigFile::parse(Path::new("/etc/agentspace/gateway.yaml"), text)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_config_file_sets_overrides_cas_and_limits() {
        let f = parse(
            "resolve:\n  - api.example.com:443:127.0.0.1:8443\nupstreamCa: [ca/stand-in.pem]\nlimits:\n  maxHeaderBytes: 32Ki\n  headerReadTimeout: 5s\n  maxBodyBytes: 10Mi\n  inspectWindow: 128Ki\n  maxConnectionsPerDoor: 64\n",
        )
        .unwrap();
        assert_eq!(f.resolve[0].addr, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(
            f.upstream_ca,
            [PathBuf::from("/etc/agentspace/ca/stand-in.pem")]
        );
        assert_eq!(f.limits.max_header_bytes, 32 * 1024);
        assert_eq!(f.limits.header_read_timeout, Duration::from_secs(5));
        assert_eq!(f.limits.max_body_bytes, 10 << 20);
        assert_eq!(f.limits.inspect_window, 128 << 10);
        assert_eq!(f.limits.max_connections_per_door, 64);
        // Unset limits keep their defaults; an empty file is fine.
        assert_eq!(f.limits.connect_timeout, Limits::default().connect_timeout);
        assert_eq!(parse("").unwrap().limits.max_headers, 100);
    }

    #[test]
    fn config_file_errors_name_the_file_field_and_line() {
        for (text, want) in [
            (
                "resolve: []\nlimits:\n  conectTimeout: 5s\n",
                "invalid gateway config `/etc/agentspace/gateway.yaml` at line 3 column 3: field `limits.conectTimeout`: unknown field `conectTimeout`, expected one of",
            ),
            (
                "limits:\n  connectTimeout: soon\n",
                "invalid gateway config `/etc/agentspace/gateway.yaml` at line 2 column 3: field `limits.connectTimeout`: expected a duration",
            ),
            (
                "resolve:\n  - api.example.com:443\n",
                "invalid gateway config `/etc/agentspace/gateway.yaml` at line 2: field `resolve[0]`: resolve override `api.example.com:443`",
            ),
            (
                "limits:\n  maxHeaderBytes: 100\n",
                "at line 2: field `limits.maxHeaderBytes`: must be between 8192",
            ),
            (
                "limits:\n  connectTimeout: 0s\n",
                "field `limits.connectTimeout`: must be longer than zero",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}\n  got:  {e}\n  want: {want}");
        }
    }
}
