//! The Agent Space cell: the Linux sandbox one task runs in.
//!
//! A cell is built from independent layers, so that the failure of one does not open the
//! boundary: user, pid, mount, network, ipc, uts and cgroup namespaces; a fresh root
//! filesystem with read-only system directories and a workspace overlay; an unprivileged
//! uid with no capabilities and `no_new_privs`; a Landlock ruleset; a seccomp filter; and
//! cgroup limits on memory, processes and CPU.
//!
//! Process tree: `agentspace run` (the launcher, [`Launcher`]) → the supervisor (this
//! binary re-executed, [`supervisor_main`]) → the cell's init (pid 1 inside) → the agent.
//! Each level dies with its parent, so a killed `agentspace` leaves no process behind.
#![deny(unsafe_code)]

mod cgroup;
mod doctor;
mod door;
mod init;
mod landlock;
mod launch;
mod rootfs;
mod seccomp;
mod spec;
mod supervisor;
mod sys;
mod workspace;

pub use cgroup::{CellCgroup, CgroupError, CgroupLimits, CgroupStats};
pub use doctor::{Check, HostReport, host_report};
pub use door::{DNS_PORT, DOOR_PORT, DoorSockets, MCP_PORT, NetworkDoor, TRANSPARENT_PORT};
pub use init::reset_signal;
pub use launch::{CellError, Launcher, RunningCell, SUPERVISOR_ARG, prepare_task_dir};
pub use spec::{AGENT_ID, CellReport, CellSpec};
pub use supervisor::supervisor_main;
pub use workspace::{Change, ChangeKind, WorkspaceError, apply_changes, workspace_changes};

/// The seccomp deny list with the reason for each entry, for documentation and `doctor`.
pub fn seccomp_denied() -> &'static [(&'static str, &'static str)] {
    seccomp::DENIED
}
