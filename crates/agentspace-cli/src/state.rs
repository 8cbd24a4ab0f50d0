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
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".local/share/agentspace")
        });
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}
