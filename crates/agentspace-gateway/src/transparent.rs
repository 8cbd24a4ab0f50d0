//! The transparent door: connections the cell's firewall redirected to the gateway
//! because the program ignored the proxy settings (`curl --noproxy '*'`, a raw
//! `socket.create_connection`). The kernel keeps the original destination; the gateway
//! reads it (`SO_ORIGINAL_DST`) and serves the connection like a CONNECT tunnel to it.
//!
//! Which host a transparent connection is for:
//! - a synthetic address handed out by the cell's resolver ([`crate::dns`]) stands for
//!   the name that was looked up: the connection is fixed to that name, and a TLS server
//!   name or `Host` header naming anything else is refused;
//! - any other address (an IP literal in the agent's code): the TLS server name, else the
//!   `Host` header, else the address itself is decided, and the gateway connects to what
//!   it decided (it resolves a name itself; it never connects to the agent's address on
//!   the strength of a name the agent sent);
//! - a synthetic address no lookup handed out, or a loopback address (a connection made
//!   straight to the transparent listener, so with no redirect behind it), is refused and
//!   audited.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use nix::sys::socket::{getsockopt, sockopt::OriginalDst};
use tokio::net::TcpStream;

use crate::dns::is_synthetic;
use crate::door::Task;
use crate::proxy::Gateway;

impl Gateway {
    /// Audits a connection that reached the transparent door without a redirect behind
    /// it (made straight to the listener); the connection is then dropped.
    pub(crate) async fn refuse_unredirected(&self, task: &Arc<Task>) {
        let _ = self
            .audit_refusal(
                task,
                "CONNECT",
                "transparent door".to_owned(),
                "invalid-request",
                "a connection reached the transparent door without a redirected destination"
                    .to_owned(),
            )
            .await;
    }

    /// The host a transparent connection to `original` is fixed to: the looked-up name
    /// for a synthetic address, `None` (decided from SNI or `Host`) otherwise; `Err` when
    /// the connection is refused (and audited).
    pub(crate) async fn transparent_name(
        &self,
        task: &Arc<Task>,
        original: SocketAddr,
    ) -> Result<Option<String>, ()> {
        let refuse = |message: String| async move {
            let _ = self
                .audit_refusal(
                    task,
                    "CONNECT",
                    original.to_string(),
                    "invalid-request",
                    message,
                )
                .await;
            Err(())
        };
        match original.ip() {
            IpAddr::V4(v4) if is_synthetic(v4) => match task.names.name_of(v4) {
                Some(name) => Ok(Some(name)),
                None => {
                    refuse(format!(
                        "{v4} is not an address the cell's resolver handed out; look the host name up first"
                    ))
                    .await
                }
            },
            ip if ip.is_loopback() || ip.is_unspecified() => {
                refuse(format!(
                    "{original} is the gateway's own side of the door; connect to the host you mean"
                ))
                .await
            }
            _ => Ok(None),
        }
    }
}

/// Where a redirected connection was going, as the kernel recorded it.
pub(crate) fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let raw = getsockopt(stream, OriginalDst).ok()?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr));
    let addr = SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(raw.sin_port)));
    // Without a redirect the kernel reports the listener's own address.
    match stream.local_addr() {
        Ok(local) if local == addr => None,
        _ => Some(addr),
    }
}
