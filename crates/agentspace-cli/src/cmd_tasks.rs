//! `agentspace tasks list|show|budget`: from the state directory, or (`--server`) the
//! tasks of the token's tenant on a control plane, printed the same way. `budget` needs a
//! control plane (it reads the task's registered definition there).

use std::fs;
use std::process::ExitCode;

use agentspace_core::{TaskId, TaskManifest};
use anyhow::{Context, Result};

use crate::state::StateDir;

/// `agentspace tasks` and where the tasks are.
pub(crate) type Args = crate::remote::WithServer<Command>;

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
    /// What a task has used of its budgets, beside its definition's budgets (JSON;
    /// needs --server: the budgets are the registered definition's).
    Budget {
        /// The task id.
        id: String,
    },
}

pub(crate) fn run(state: &StateDir, args: Args) -> Result<ExitCode> {
    let remote = args.server.remote()?;
    match args.command {
        Command::List { json } => {
            let mut manifests = Vec::new();
            if let Some(remote) = &remote {
                let list = remote.get("/v1/tasks")?;
                for m in list.as_array().into_iter().flatten() {
                    manifests.push(serde_json::from_value::<TaskManifest>(m.clone()).context(
                        "the control plane sent a task manifest this version cannot read",
                    )?);
                }
            } else {
                let dir = state.path().join("tasks");
                if let Ok(entries) = fs::read_dir(&dir) {
                    for entry in entries.flatten() {
                        if let Ok(m) = read_manifest(&entry.path().join("manifest.json")) {
                            manifests.push(m);
                        }
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
            if let Some(remote) = &remote {
                let m: TaskManifest = serde_json::from_value(
                    remote.get(&format!("/v1/tasks/{id}"))?,
                )
                .context("the control plane sent a task manifest this version cannot read")?;
                println!("{}", serde_json::to_string_pretty(&m)?);
                return Ok(ExitCode::SUCCESS);
            }
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
        Command::Budget { id } => {
            let id = TaskId::parse(&id)?;
            let Some(remote) = &remote else {
                anyhow::bail!(
                    "a task's budget use is read through the control plane that knows its registered definition: give --server URL (or AGENTSPACE_SERVER)"
                );
            };
            let budget = remote.get(&format!("/v1/tasks/{id}/budget"))?;
            println!("{}", serde_json::to_string_pretty(&budget)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_manifest(path: &std::path::Path) -> Result<TaskManifest> {
    let bytes = fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("cannot parse `{}`", path.display()))
}
