//! What the launcher hands the supervisor: everything needed to build one cell, resolved
//! to plain paths and numbers before any namespace exists.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The inside uid and gid the agent runs as (a normal user, not root).
pub const AGENT_ID: u32 = 1000;

/// A fully resolved cell.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    /// The task directory (state): holds the overlay's upper and work directories and the
    /// mount points used while building the root.
    pub task_dir: PathBuf,
    /// Hostname inside the cell (the agent's name).
    pub hostname: String,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// The complete environment of the agent.
    pub env: BTreeMap<String, String>,
    /// The host workspace directory (overlay lower layer), if any.
    pub workspace: Option<PathBuf>,
    /// Extra read-only binds: host path, path inside.
    pub read_only: Vec<(PathBuf, PathBuf)>,
    /// The host uid and gid the agent runs as (unprivileged on the host).
    pub host_id: u32,
    /// Size of the /tmp and /home/agent tmpfs, in bytes.
    pub tmp_bytes: u64,
    /// Cgroup directories to join (one per hierarchy).
    pub cgroup_procs: Vec<PathBuf>,
    /// Wall-clock limit in milliseconds.
    pub timeout_ms: u64,
    /// The network namespace to join (the door's), instead of a new empty one.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Whether the namespace is a network door's: TCP connections are then left to its
    /// firewall (every one ends at the gateway), and Landlock denies only binding.
    /// Without a door, Landlock denies TCP connect and bind outright.
    #[serde(default)]
    pub network_door: bool,
    /// PEM certificates appended to the cell's CA bundle (the tenant's interception CA).
    #[serde(default)]
    pub extra_ca: Option<PathBuf>,
}

/// What the supervisor reports back after the cell is gone.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CellReport {
    /// The exit code `agentspace run` should return.
    pub exit_code: i32,
    /// The agent's raw status: exit code, or the signal that killed it.
    pub agent_exit: Option<i32>,
    /// Signal that killed the agent or the cell's init, if any.
    pub signal: Option<i32>,
    /// The wall-clock limit passed and the cell was killed.
    pub timed_out: bool,
    /// The user interrupted twice and the cell was killed.
    pub interrupted: bool,
    /// Agent Space failed to build or run the cell; the message says why.
    pub error: Option<String>,
    /// The Landlock ABI enforced inside the cell.
    pub landlock_abi: Option<i32>,
    /// Which Landlock features were enforced.
    pub landlock: Option<String>,
}
