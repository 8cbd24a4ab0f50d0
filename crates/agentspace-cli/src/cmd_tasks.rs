//! `agentspace tasks list|show`.

use std::fs;
use std::process::ExitCode;

use agentspace_core::{TaskId, TaskManifest};
use anyhow::{Context, Result};

use crate::state::StateDir;

/// `agentspace tasks` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// List tasks, newest first.
    List {
        /// Print JSON Lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one task's manifest.
    Show {
        /// The task id.
        id: String,
    },
}

pub(crate) fn run(state: &StateDir, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::List { json } => {
            let mut manifests = Vec::new();
            let dir = state.path().join("tasks");
            if let Ok(entries) = fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if let Ok(m) = read_manifest(&entry.path().join("manifest.json")) {
                        manifests.push(m);
                    }
                }
            }
            manifests.sort_by(|a, b| b.task.cmp(&a.task));
            if !json {
                println!(
                    "{:<26}  {:<8}  {:<16}  {:<12}  {:>4}  STARTED",
                    "TASK", "TENANT", "AGENT", "USER", "EXIT"
                );
            }
            for m in manifests {
                if json {
                    println!("{}", serde_json::to_string(&m)?);
                } else {
                    let exit = m.exit_code.map_or("-".to_owned(), |c| c.to_string());
                    println!(
                        "{:<26}  {:<8}  {:<16}  {:<12}  {:>4}  {}",
                        m.task, m.tenant, m.agent, m.user, exit, m.started_at
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { id } => {
            let id = TaskId::parse(&id)?;
            let path = state
                .path()
                .join("tasks")
                .join(id.as_str())
                .join("manifest.json");
            let m = read_manifest(&path)
                .with_context(|| format!("no task `{id}` in {}", state.path().display()))?;
            println!("{}", serde_json::to_string_pretty(&m)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_manifest(path: &std::path::Path) -> Result<TaskManifest> {
    let bytes = fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("cannot parse `{}`", path.display()))
}
