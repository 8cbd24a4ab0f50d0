//! `agentspace revoke task|agent|user|capability|list`: stop work on the next decision of
//! every process sharing the store: the state directory's, or the control plane's
//! PostgreSQL database when AGENTSPACE_DATABASE_URL names one (then on every host); or
//! (`--server`) through a control plane, in the token's tenant.

use std::process::ExitCode;

use agentspace_core::{Name, TaskRef, UserId};
use agentspace_policy::Revocation;
use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::state::StateDir;

/// `agentspace revoke` and where.
pub(crate) type Args = crate::remote::WithServer<Command>;

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
    /// The tenant (with --server: the token's, which this must match if given).
    #[arg(long)]
    tenant: Option<String>,
    /// Why (kept with the revocation).
    #[arg(long, default_value = "")]
    reason: String,
    /// Lift the revocation instead.
    #[arg(long)]
    lift: bool,
}

pub(crate) fn run(state: &StateDir, args: Args) -> Result<ExitCode> {
    let remote = args.server.remote()?;
    // Through a control plane the tenant is the token's; `--tenant`, if given, must match.
    let tenant_of = |common: &Common| -> Result<Name> {
        let tenant = match (&remote, common.tenant.as_deref()) {
            (Some(remote), given) => remote.tenant(given)?,
            (None, Some(t)) => t.to_owned(),
            (None, None) => bail!(
                "name the tenant with --tenant T (or revoke through a control plane with --server URL, in the token's tenant)"
            ),
        };
        Name::new(&tenant).context("invalid `--tenant`")
    };
    let name = |what: &str, v: &str| Name::new(v).with_context(|| format!("invalid {what}"));
    let (what, common) = match args.command {
        Command::List { json } => return list(state, remote.as_ref(), json),
        Command::Task { task, common } => (
            Revocation::Task {
                tenant: tenant_of(&common)?,
                task: TaskRef::new(&task).context("invalid task id")?,
            },
            common,
        ),
        Command::Agent { agent, common } => (
            Revocation::Agent {
                tenant: tenant_of(&common)?,
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
                tenant: tenant_of(&common)?,
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
                tenant: tenant_of(&common)?,
                agent: name("`--agent`", &agent)?,
                capability: name("capability name", &capability)?,
            },
            common,
        ),
    };
    let lifted = match &remote {
        Some(remote) => {
            // The API's body is the revocation without its tenant (always the token's).
            let mut body = serde_json::to_value(&what)?;
            if let Some(fields) = body.as_object_mut() {
                fields.remove("tenant");
                if !common.lift {
                    fields.insert("reason".into(), common.reason.clone().into());
                }
            }
            if common.lift {
                Some(
                    remote
                        .post("/v1/revocations/lift", &body)?
                        .get("lifted")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                )
            } else {
                remote.post("/v1/revocations", &body)?;
                None
            }
        }
        None => {
            let store = local_store(state)?;
            // Every revocation and lift is recorded in the tenant's audit log (after it
            // is in force: a failing audit store never delays a revocation; it makes this
            // command fail).
            let sink = crate::cmd_audit::RevocationSink {
                state,
                tenant: tenant_of(&common)?,
            };
            if common.lift {
                Some(store.lift(&what, &sink)?)
            } else {
                store.revoke(what.clone(), &common.reason, &sink)?;
                None
            }
        }
    };
    match lifted {
        Some(true) => println!("lifted: {what}"),
        Some(false) => println!("{what} was not revoked"),
        None => println!("revoked: {what} (effective on the next decision)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `revoke list`: what is in force, as `revoked_at  revocation  reason`.
fn list(state: &StateDir, remote: Option<&crate::remote::Remote>, json: bool) -> Result<ExitCode> {
    let records: Vec<Value> = match remote {
        Some(remote) => serde_json::from_value(remote.get("/v1/revocations")?)?,
        None => local_store(state)?
            .list()?
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else if records.is_empty() {
        println!("no revocations");
    } else {
        for mut r in records {
            let at = r.get("revoked_at").and_then(Value::as_u64).unwrap_or(0);
            let reason = r
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if let Some(fields) = r.as_object_mut() {
                fields.remove("revoked_at");
                fields.remove("reason");
            }
            let what: Revocation =
                serde_json::from_value(r).context("a revocation this version cannot read")?;
            println!("{at}  {what}  {reason}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The revocations of the state directory, or of the control plane's PostgreSQL
/// database when AGENTSPACE_DATABASE_URL names one.
fn local_store(state: &StateDir) -> Result<agentspace_policy::Revocations> {
    Ok(agentspace_server::revocations(
        state.path(),
        crate::state::Stores::from_env().database_url.as_deref(),
    )?)
}
