//! The task manifest: what survives a task, written to `<state>/tasks/<id>/manifest.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// The cell is running (or its `agentspace run` died without finishing the manifest).
    Running,
    /// The agent exited (any exit code).
    Exited,
    /// Agent Space failed to run the task.
    Failed,
}

/// A limit the task ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitHit {
    /// The wall-clock limit passed and the cell was killed.
    Timeout,
    /// The out-of-memory killer killed a process in the cell.
    Memory,
    /// A fork failed because the process limit was reached.
    Pids,
    /// The user interrupted twice and the cell was killed.
    Interrupted,
}

/// The record of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskManifest {
    /// Format version of this file.
    pub version: u32,
    /// The task id.
    pub task: String,
    /// The tenant.
    pub tenant: String,
    /// The agent's name.
    pub agent: String,
    /// The user the task acts for.
    pub user: String,
    /// The definition file and its digest.
    pub definition: String,
    /// `sha256:<hex>` of the definition file.
    pub definition_digest: String,
    /// The command run in the cell.
    pub command: Vec<String>,
    /// Limits applied.
    pub limits: ManifestLimits,
    /// State.
    pub state: TaskState,
    /// Start time, RFC 3339 UTC.
    pub started_at: String,
    /// End time, RFC 3339 UTC.
    pub ended_at: Option<String>,
    /// Exit code `agentspace run` returned.
    pub exit_code: Option<i32>,
    /// Limits the task ran into.
    pub limits_hit: Vec<LimitHit>,
    /// Why Agent Space failed, when it did.
    pub error: Option<String>,
    /// The host uid/gid the agent ran as.
    pub host_uid: u32,
    /// Landlock enforcement inside the cell.
    pub landlock: Option<String>,
    /// Peak memory use in bytes.
    pub memory_peak_bytes: Option<u64>,
    /// Where the workspace's changes are kept (the overlay's upper layer).
    pub workspace_changes_dir: String,
    /// Counts of workspace changes by kind.
    pub workspace_changes: BTreeMap<String, u64>,
    /// Whether the changes were applied to the host workspace.
    pub workspace_committed: bool,
}

/// Limits as recorded in a manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Most processes.
    pub pids: u32,
    /// CPU cores.
    pub cpu: f64,
    /// Wall clock in seconds.
    pub timeout_secs: u64,
}
