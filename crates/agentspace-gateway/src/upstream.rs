//! The gateway's upstream client: resolution with the SSRF guard, a connection to exactly
//! the address that was checked, and TLS verified against the system roots plus the
//! operator's CAs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::GwBody;
use crate::config::{GatewayConfig, resolve_table};
use crate::error::GatewayError;
use crate::ssrf::{Reach, refused};

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// Host name or IP literal (without brackets), lowercase.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
}

impl Target {
    /// `https://host:port` (brackets around IPv6).
    pub(crate) fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Why an allowed request cannot go upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The SSRF guard refused the address.
    #[error(
        "`{host}` resolves to {addr}, a {kind} address; the gateway does not connect to internal addresses unless {hint}"
    )]
    Internal {
        host: String,
        addr: IpAddr,
        kind: &'static str,
        hint: &'static str,
    },
    #[error("cannot resolve `{host}`: {detail}")]
    Resolve { host: String, detail: String },
    #[error("cannot connect to `{host}` at {addr}: {detail}")]
    Connect {
        host: String,
        addr: String,
        detail: String,
    },
    #[error("TLS with `{host}` failed: {detail}")]
    Tls { host: String, detail: String },
    #[error("HTTP with `{host}` failed: {detail}")]
    Http { host: String, detail: String },
    #[error("cannot apply the brokered credential: {0}")]
    Credential(String),
}

impl UpstreamError {
    /// Whether this is the SSRF guard's refusal (a deny) rather than a failure (502).
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, Self::Internal { .. })
    }
}

/// An upstream HTTP/1.1 connection, kept for reuse by the downstream connection that
/// opened it (never shared between tasks).
pub(crate) struct Pooled {
    target: Target,
    addr: SocketAddr,
    pub(crate) sender: Sender,
}

/// The HTTP version spoken with an upstream, as its ALPN chose.
pub(crate) enum Sender {
    /// One request at a time; taken out of the pool while in use.
    H1(http1::SendRequest<GwBody>),
    /// Multiplexed; stays in the pool and is cloned for each request.
    H2(http2::SendRequest<GwBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Self::H1(s) => s.is_closed(),
            Self::H2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> bool {
        match self {
            Self::H1(s) => s.ready().await.is_ok(),
            Self::H2(s) => s.ready().await.is_ok(),
        }
    }

    /// Whether this connection speaks HTTP/2.
    pub(crate) fn is_h2(&self) -> bool {
        matches!(self, Self::H2(_))
    }

    /// Sends `req`: origin-form with `Host` for HTTP/1.1, absolute-form (which becomes
    /// `:authority`) without `Host` for HTTP/2.
    pub(crate) async fn send(
        &mut self,
        req: http::Request<GwBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Self::H1(s) => s.send_request(req).await,
            Self::H2(s) => s.send_request(req).await,
        }
    }
}

/// Idle upstream connections of one downstream connection.
pub(crate) type Pool = Arc<Mutex<Vec<Pooled>>>;

/// Idle connections kept per downstream connection.
const POOL_IDLE: usize = 4;

/// Puts `conn` back into `pool` once its response is complete.
pub(crate) fn checkin(pool: &Pool, conn: Pooled) {
    // An HTTP/2 connection never left the pool.
    if conn.sender.is_closed() || conn.sender.is_h2() {
        return;
    }
    if let Ok(mut idle) = pool.lock()
        && idle.len() < POOL_IDLE
    {
        idle.push(conn);
    }
}

/// Addresses checked by the SSRF guard, to be connected to as they are.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) addrs: Vec<SocketAddr>,
    /// Whether a resolve override named the service.
    pub(crate) overridden: bool,
    /// Whether an `internal: true` rule let an internal address through.
    pub(crate) internal: bool,
}

pub(crate) struct Upstream {
    tls: TlsConnector,
    resolve: HashMap<(String, u16), SocketAddr>,
    connect_timeout: Duration,
}

impl Upstream {
    pub(crate) fn new(config: &GatewayConfig) -> Result<Self, GatewayError> {
        let mut roots = RootCertStore::empty();
        if config.system_roots {
            // Missing or unreadable system certificates leave only the operator's CAs;
            // every other host then fails verification, which is the safe direction.
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
        for path in &config.upstream_ca {
            let bad = |detail: String| GatewayError::UpstreamCa {
                path: path.clone(),
                detail,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no certificate in the file".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| GatewayError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            tls: TlsConnector::from(Arc::new(tls)),
            resolve: resolve_table(&config.resolve),
            connect_timeout: config.limits.connect_timeout,
        })
    }

    /// Resolves `target` and checks every address against what the allowing rules may
    /// `reach`; a name with any refused address is refused as a whole.
    pub(crate) async fn resolve(
        &self,
        target: &Target,
        reach: Reach,
    ) -> Result<Checked, UpstreamError> {
        if let Some(addr) = self.resolve.get(&(target.host.clone(), target.port)) {
            return Ok(Checked {
                addrs: vec![*addr],
                overridden: true,
                internal: false,
            });
        }
        let addrs: Vec<SocketAddr> = if let Ok(ip) = target.host.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, target.port)]
        } else {
            tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .map_err(|e| UpstreamError::Resolve {
                    host: target.host.clone(),
                    detail: e.to_string(),
                })?
                .collect()
        };
        if addrs.is_empty() {
            return Err(UpstreamError::Resolve {
                host: target.host.clone(),
                detail: "no address".into(),
            });
        }
        for addr in &addrs {
            if let Some(kind) = refused(addr.ip(), reach) {
                return Err(UpstreamError::Internal {
                    host: target.host.clone(),
                    addr: addr.ip(),
                    kind,
                    hint: match reach {
                        Reach::Public => {
                            "an egress rule with `internal: true` names this host exactly, or the operator names the service (--resolve)"
                        }
                        Reach::Internal => {
                            "an `internal: true` rule names this very IP address (link-local and cloud metadata addresses are never reached by name)"
                        }
                        Reach::Literal => "never, for this kind of address",
                    },
                });
            }
        }
        Ok(Checked {
            internal: reach != Reach::Public
                && addrs
                    .iter()
                    .any(|a| refused(a.ip(), Reach::Public).is_some()),
            addrs,
            overridden: false,
        })
    }

    /// A TCP connection to the first reachable checked address.
    pub(crate) async fn connect_tcp(
        &self,
        target: &Target,
        checked: &Checked,
    ) -> Result<(TcpStream, SocketAddr), UpstreamError> {
        let mut last = None;
        for addr in &checked.addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, *addr));
                }
                Ok(Err(e)) => last = Some((addr, e.to_string())),
                Err(_) => last = Some((addr, "timed out".to_owned())),
            }
        }
        let (addr, detail) = last
            .map(|(a, d)| (a.to_string(), d))
            .unwrap_or_else(|| ("-".into(), "no address".into()));
        Err(UpstreamError::Connect {
            host: target.host.clone(),
            addr,
            detail,
        })
    }

    /// Connects to the first reachable checked address and starts HTTP/1.1 (over TLS for
    /// `https`).
    pub(crate) async fn connect(
        &self,
        target: &Target,
        checked: &Checked,
    ) -> Result<Pooled, UpstreamError> {
        let (stream, addr) = self.connect_tcp(target, checked).await?;
        let http_err = |e: hyper::Error| UpstreamError::Http {
            host: target.host.clone(),
            detail: e.to_string(),
        };
        if target.tls {
            let name =
                ServerName::try_from(target.host.clone()).map_err(|e| UpstreamError::Tls {
                    host: target.host.clone(),
                    detail: e.to_string(),
                })?;
            let tls = self
                .tls
                .connect(name, stream)
                .await
                .map_err(|e| UpstreamError::Tls {
                    host: target.host.clone(),
                    detail: e.to_string(),
                })?;
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(conn);
                return Ok(Pooled {
                    target: target.clone(),
                    addr,
                    sender: Sender::H2(sender),
                });
            }
            let (sender, conn) = http1::handshake(TokioIo::new(tls))
                .await
                .map_err(http_err)?;
            tokio::spawn(conn.with_upgrades());
            Ok(Pooled {
                target: target.clone(),
                addr,
                sender: Sender::H1(sender),
            })
        } else {
            let (sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(http_err)?;
            tokio::spawn(conn.with_upgrades());
            Ok(Pooled {
                target: target.clone(),
                addr,
                sender: Sender::H1(sender),
            })
        }
    }

    /// An idle connection of `pool` to `target` at one of the checked addresses, or a
    /// new one.
    pub(crate) async fn checkout(
        &self,
        pool: &Pool,
        target: &Target,
        checked: &Checked,
    ) -> Result<Pooled, UpstreamError> {
        loop {
            let idle = pool.lock().ok().and_then(|mut idle| {
                let at = idle
                    .iter()
                    .position(|p| p.target == *target && checked.addrs.contains(&p.addr))?;
                // HTTP/2 is shared: a clone goes out, the connection stays.
                if let Some(Pooled {
                    sender: Sender::H2(h2),
                    target,
                    addr,
                }) = idle.get(at)
                    && !h2.is_closed()
                {
                    return Some(Pooled {
                        target: target.clone(),
                        addr: *addr,
                        sender: Sender::H2(h2.clone()),
                    });
                }
                Some(idle.swap_remove(at))
            });
            let Some(mut conn) = idle else {
                let conn = self.connect(target, checked).await?;
                if let Sender::H2(h2) = &conn.sender
                    && let Ok(mut idle) = pool.lock()
                    && idle.len() < POOL_IDLE
                {
                    idle.push(Pooled {
                        target: conn.target.clone(),
                        addr: conn.addr,
                        sender: Sender::H2(h2.clone()),
                    });
                }
                return Ok(conn);
            };
            if !conn.sender.is_closed() && conn.sender.ready().await {
                return Ok(conn);
            }
        }
    }
}
