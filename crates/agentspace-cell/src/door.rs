//! The network door: the only way out of a cell.
//!
//! The launcher creates the cell's network namespace itself, in a dedicated thread (a
//! network namespace belongs to a thread), and sets it up so that every way out ends at
//! the gateway:
//!
//! - loopback up, and a `local` route for all of IPv4 over it, so a connection to any
//!   address stays inside the namespace instead of failing with "network unreachable";
//! - an nftables ruleset: TCP to any address but loopback is redirected to the
//!   transparent door (the kernel keeps the original destination for the gateway), DNS
//!   (UDP and TCP port 53) to any address is redirected to the cell's resolver, and
//!   everything else leaving the namespace — other UDP, ICMP, raw IP, IPv6 beyond `::1` —
//!   is dropped;
//! - the door's sockets, bound on the cell's `127.0.0.1`: the explicit proxy
//!   ([`DOOR_PORT`], which HTTP_PROXY names), the transparent door
//!   ([`TRANSPARENT_PORT`]), the MCP endpoint ([`MCP_PORT`]) and the resolver (port 53,
//!   UDP and TCP).
//!
//! The sockets stay with the launcher, where the gateway serves them, outside the cell;
//! the cell's init joins the namespace by path instead of creating an empty one. Nothing
//! else is in the namespace: no other interface and no route off the machine, so the
//! doors are the only places a connection can go, and every connection on them belongs
//! to this one task.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::launch::CellError;
use crate::sys;

/// The port of the explicit proxy inside the cell (HTTP_PROXY and HTTPS_PROXY name it).
pub const DOOR_PORT: u16 = 3128;
/// The port redirected connections arrive on inside the cell.
pub const TRANSPARENT_PORT: u16 = 3129;
/// The port of the cell's MCP endpoint (`http://127.0.0.1:3130/mcp`).
pub const MCP_PORT: u16 = 3130;
/// The port of the cell's resolver (UDP and TCP).
pub const DNS_PORT: u16 = 53;

/// The cell's firewall. Every chain is in the cell's own namespace, so nothing here
/// touches the host's rules.
fn ruleset() -> String {
    format!(
        "table inet agentspace_cell {{
  chain to_door {{
    type nat hook output priority -100; policy accept;
    ip daddr 127.0.0.0/8 return
    udp dport 53 redirect to :{DNS_PORT}
    tcp dport 53 redirect to :{DNS_PORT}
    meta l4proto tcp redirect to :{TRANSPARENT_PORT}
  }}
  chain only_door {{
    type filter hook output priority 0; policy drop;
    ct state established,related accept
    ct status dnat accept
    ip daddr 127.0.0.0/8 meta l4proto {{ tcp, udp }} accept
    ip6 daddr ::1 meta l4proto {{ tcp, udp }} accept
  }}
}}
"
    )
}

/// The sockets of one cell's door, bound inside its namespace.
#[derive(Debug)]
pub struct DoorSockets {
    /// The explicit proxy ([`DOOR_PORT`]).
    pub proxy: TcpListener,
    /// The transparent door ([`TRANSPARENT_PORT`]).
    pub transparent: TcpListener,
    /// The MCP endpoint ([`MCP_PORT`]).
    pub mcp: TcpListener,
    /// The resolver over UDP (port 53).
    pub dns_udp: UdpSocket,
    /// The resolver over TCP (port 53).
    pub dns_tcp: TcpListener,
}

/// A cell's network namespace with its door.
#[derive(Debug)]
pub struct NetworkDoor {
    sockets: Option<DoorSockets>,
    netns: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NetworkDoor {
    /// Creates the namespace, its routes and firewall, and binds the door. Needs root,
    /// `ip` (iproute2) and `nft` (nftables).
    pub fn create() -> Result<Self, CellError> {
        let ip = tool("ip", "iproute2")?;
        let nft = tool("nft", "nftables")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cell-netns".into())
            .spawn(move || {
                let made = (|| -> Result<(DoorSockets, PathBuf), String> {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("create a network namespace: {e}"))?;
                    sys::loopback_up().map_err(|e| format!("bring up loopback: {e}"))?;
                    // Children inherit this thread's namespace: both tools act on the cell's.
                    run(
                        &ip,
                        &[
                            "route",
                            "add",
                            "local",
                            "0.0.0.0/0",
                            "dev",
                            "lo",
                            "table",
                            "local",
                        ],
                        None,
                    )?;
                    run(&nft, &["-f", "-"], Some(&ruleset()))?;
                    let local = |port| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
                    let tcp = |port| {
                        TcpListener::bind(local(port))
                            .map_err(|e| format!("bind 127.0.0.1:{port}/tcp: {e}"))
                    };
                    let sockets = DoorSockets {
                        proxy: tcp(DOOR_PORT)?,
                        transparent: tcp(TRANSPARENT_PORT)?,
                        mcp: tcp(MCP_PORT)?,
                        dns_tcp: tcp(DNS_PORT)?,
                        dns_udp: UdpSocket::bind(local(DNS_PORT))
                            .map_err(|e| format!("bind 127.0.0.1:{DNS_PORT}/udp: {e}"))?,
                    };
                    let path = PathBuf::from(format!(
                        "/proc/{}/task/{}/ns/net",
                        std::process::id(),
                        nix::unistd::gettid()
                    ));
                    Ok((sockets, path))
                })();
                let ok = made.is_ok();
                let _ = ready_tx.send(made);
                if ok {
                    // Keep the namespace reachable by path until the cell's init joined it.
                    let _ = stop_rx.recv();
                }
            })
            .map_err(|e| CellError::Door(e.to_string()))?;
        let (sockets, netns) = ready_rx
            .recv()
            .map_err(|e| CellError::Door(e.to_string()))?
            .map_err(|e| CellError::Door(format!("set up the cell's network door: {e}")))?;
        Ok(Self {
            sockets: Some(sockets),
            netns,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The path the cell's init opens to join the namespace (valid while `self` lives).
    pub fn netns_path(&self) -> PathBuf {
        self.netns.clone()
    }

    /// The door's sockets, for the gateway (once).
    pub fn take_sockets(&mut self) -> Option<DoorSockets> {
        self.sockets.take()
    }
}

impl Drop for NetworkDoor {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The path of a system tool, or an error naming the Debian package to install.
fn tool(name: &str, package: &str) -> Result<PathBuf, CellError> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CellError::Door(format!(
                "`{name}` is not installed; the cell's network door needs it (Debian: apt-get install {package})"
            ))
        })
}

fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let shown = format!("{} {}", program.display(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run `{shown}`: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("write to `{shown}`: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for `{shown}`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
