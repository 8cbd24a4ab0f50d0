//! Where Agent Space keeps its state.

use std::path::{Path, PathBuf};

/// The state directory: `--state-dir`, else `$AGENTSPACE_HOME`, else
/// `~/.local/share/agentspace`. Each area keeps its files in its own subdirectory
/// (`tasks/`, `audit/`, `policy/`, `identity/`, `secrets/`).
#[derive(Clone, Debug)]
pub(crate) struct StateDir(PathBuf);

impl StateDir {
    pub(crate) fn resolve(given: Option<PathBuf>) -> Self {
        let path = given.unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".local/share/agentspace")
        });
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl StateDir {
    /// `<state>/tasks`, created (with the state directory, mode 0700) if missing.
    pub(crate) fn tasks_dir(&self) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.0.join("tasks");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                anyhow::anyhow!("cannot create state directory `{}`: {e}", dir.display())
            })?;
        Ok(dir)
    }
}

/// Where the control plane keeps its state and its audit log, as `agentspace serve`,
/// `run` and `server migrate` take it: `--database-url` (AGENTSPACE_DATABASE_URL) names
/// the PostgreSQL database of the control-plane tables, which also holds the audit log
/// unless `--audit-url` (AGENTSPACE_AUDIT_URL) names another store; without either,
/// SQLite files in the state directory.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct Stores {
    /// The control plane's PostgreSQL database, `postgres://USER:PASS@HOST/DB` (default:
    /// SQLite in the state directory). The audit log goes there too unless `--audit-url`
    /// says otherwise.
    #[arg(
        long,
        env = "AGENTSPACE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) database_url: Option<String>,
    /// The audit store, `postgres://...` or `sqlite:PATH` (default: the database of
    /// `--database-url`, else SQLite in the state directory).
    #[arg(
        long,
        env = "AGENTSPACE_AUDIT_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) audit_url: Option<String>,
}

impl Stores {
    /// The audit store: `--audit-url`, else the control-plane database, else `None`
    /// (SQLite in the state directory).
    pub(crate) fn audit(&self) -> Option<String> {
        agentspace_server::audit_url(self.database_url.as_deref(), self.audit_url.as_deref())
    }

    /// The stores named by the environment alone (for commands without the flags).
    pub(crate) fn from_env() -> Self {
        Self {
            database_url: std::env::var("AGENTSPACE_DATABASE_URL").ok(),
            audit_url: std::env::var("AGENTSPACE_AUDIT_URL").ok(),
        }
    }

    /// The stores as the variables [`Stores::from_env`] and the flags read, for a child
    /// `agentspace` process.
    pub(crate) fn to_env(&self) -> Vec<(String, String)> {
        [
            ("AGENTSPACE_DATABASE_URL", &self.database_url),
            ("AGENTSPACE_AUDIT_URL", &self.audit_url),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.to_owned(), v)))
        .collect()
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub(crate) fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The user a task acts for: `--user`, else the user who ran `sudo`, else `$USER`, else
/// `root`. Callers validate it for their use.
pub(crate) fn default_user(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("SUDO_USER").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".to_owned())
}

/// A new task id for a task starting at `now_nanos`, with the random bytes it was made
/// from (the launcher also derives the task's host uid from them).
pub(crate) fn new_task_id(now_nanos: u64) -> anyhow::Result<(agentspace_core::TaskId, [u8; 16])> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random)
        .map_err(|e| anyhow::anyhow!("cannot read random bytes for the task id: {e}"))?;
    let id =
        agentspace_core::TaskId::from_parts(now_nanos / 1_000_000, u128::from_le_bytes(random));
    Ok((id, random))
}
