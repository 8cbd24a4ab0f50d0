//! The network door: the only way out of a cell.
//!
//! The launcher creates the cell's network namespace itself, in a dedicated thread (a
//! network namespace belongs to a thread), brings its loopback up and binds the door's
//! listener there: `127.0.0.1:<port>` inside the cell. The listener stays with the
//! launcher, where the gateway accepts on it, outside the cell; the cell's init joins the
//! namespace by path instead of creating an empty one. Nothing else is in the namespace:
//! no route, no other interface, so the door is the one place a connection can go, and
//! every connection on it belongs to this one task.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::launch::CellError;
use crate::sys;

/// The port of the door inside the cell (HTTP_PROXY and HTTPS_PROXY point at it).
pub const DOOR_PORT: u16 = 3128;

/// A cell's network namespace with its door listener.
#[derive(Debug)]
pub struct NetworkDoor {
    listener: Option<TcpListener>,
    netns: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NetworkDoor {
    /// Creates the namespace and binds the door. Needs root.
    pub fn create() -> Result<Self, CellError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cell-netns".into())
            .spawn(move || {
                let made = (|| -> std::io::Result<(TcpListener, PathBuf)> {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
                    sys::loopback_up()?;
                    let listener =
                        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, DOOR_PORT))?;
                    let path = PathBuf::from(format!(
                        "/proc/{}/task/{}/ns/net",
                        std::process::id(),
                        nix::unistd::gettid()
                    ));
                    Ok((listener, path))
                })();
                let ok = made.is_ok();
                let _ = ready_tx.send(made);
                if ok {
                    // Keep the namespace reachable by path until the cell's init joined it.
                    let _ = stop_rx.recv();
                }
            })
            .map_err(|e| CellError::Door(e.to_string()))?;
        let (listener, netns) = ready_rx
            .recv()
            .map_err(|e| CellError::Door(e.to_string()))?
            .map_err(|e| {
                CellError::Door(format!("create the cell's network namespace and door: {e}"))
            })?;
        Ok(Self {
            listener: Some(listener),
            netns,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The path the cell's init opens to join the namespace (valid while `self` lives).
    pub fn netns_path(&self) -> PathBuf {
        self.netns.clone()
    }

    /// The door's listener, for the gateway (once).
    pub fn take_listener(&mut self) -> Option<TcpListener> {
        self.listener.take()
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
