//! `agentspace revoke task|agent|user|capability|list`: stop work on the next decision of
//! every process sharing the store: the state directory's, or the control plane's
//! PostgreSQL database when AGENTSPACE_DATABASE_URL names one (then on every host).

use std::process::ExitCode;

use agentspace_core::{Name, TaskRef, UserId};
use agentspace_policy::Revocation;
use anyhow::{Context, Result};

use crate::state::StateDir;

/// What to revoke, or `list`.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Revoke one task, and the work of every agent it started.
    Task {
        /// The task id.
        task: String,
        #[command(flatten)]
        common: Common,
    },
    /// Revoke every task of an agent definition in a tenant.
    Agent {
        /// The agent definition's name.
        agent: String,
        #[command(flatten)]
        common: Common,
    },
    /// Revoke one user's use of an agent.
    User {
        /// The user id.
        user: String,
        /// The agent.
        #[arg(long)]
        agent: String,
        #[command(flatten)]
        common: Common,
    },
    /// Revoke one capability (egress rule) of an agent.
    Capability {
        /// The capability's name.
        capability: String,
        /// The agent.
        #[arg(long)]
        agent: String,
        #[command(flatten)]
        common: Common,
    },
    /// List revocations in force.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Options every revocation takes.
#[derive(clap::Args)]
pub(crate) struct Common {
    /// The tenant.
    #[arg(long)]
    tenant: String,
    /// Why (kept with the revocation).
    #[arg(long, default_value = "")]
    reason: String,
    /// Lift the revocation instead.
    #[arg(long)]
    lift: bool,
}

pub(crate) fn run(state: &StateDir, cmd: Command) -> Result<ExitCode> {
    let store = agentspace_server::revocations(
        state.path(),
        crate::state::Stores::from_env().database_url.as_deref(),
    )?;
    let name = |what: &str, v: &str| Name::new(v).with_context(|| format!("invalid {what}"));
    let (what, common) = match cmd {
        Command::List { json } => {
            let list = store.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no revocations");
            } else {
                for r in list {
                    println!("{}  {}  {}", r.revoked_at, r.revocation, r.reason);
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Task { task, common } => (
            Revocation::Task {
                tenant: name("`--tenant`", &common.tenant)?,
                task: TaskRef::new(&task).context("invalid task id")?,
            },
            common,
        ),
        Command::Agent { agent, common } => (
            Revocation::Agent {
                tenant: name("`--tenant`", &common.tenant)?,
                agent: name("agent name", &agent)?,
            },
            common,
        ),
        Command::User {
            user,
            agent,
            common,
        } => (
            Revocation::UserAgent {
                tenant: name("`--tenant`", &common.tenant)?,
                user: UserId::new(&user).context("invalid user id")?,
                agent: name("`--agent`", &agent)?,
            },
            common,
        ),
        Command::Capability {
            capability,
            agent,
            common,
        } => (
            Revocation::Capability {
                tenant: name("`--tenant`", &common.tenant)?,
                agent: name("`--agent`", &agent)?,
                capability: name("capability name", &capability)?,
            },
            common,
        ),
    };
    // Every revocation and lift is recorded in the tenant's audit log (after it is in
    // force: a failing audit store never delays a revocation; it makes this command fail).
    let sink = crate::cmd_audit::RevocationSink {
        state,
        tenant: name("`--tenant`", &common.tenant)?,
    };
    if common.lift {
        if store.lift(&what, &sink)? {
            println!("lifted: {what}");
        } else {
            println!("{what} was not revoked");
        }
    } else {
        store.revoke(what.clone(), &common.reason, &sink)?;
        println!("revoked: {what} (effective on the next decision)");
    }
    Ok(ExitCode::SUCCESS)
}
