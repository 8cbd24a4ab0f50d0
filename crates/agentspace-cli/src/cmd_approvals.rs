//! `agentspace approvals list|approve|deny`: the approval queue of a running control
//! plane (`--server URL`, or AGENTSPACE_SERVER), as the user whose API token is in
//! AGENTSPACE_TOKEN (or `--token-file`). The token never goes on the command line.
//!
//! Without a server, the queue of the state directory itself (tasks run with
//! `agentspace run` hold their requests there): `--tenant` names the tenant, and the
//! approver is `--as NAME` (default: the invoking user), recorded in the audit log.
//! Whoever can write the state directory is its operator.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::state::StateDir;
use serde_json::{Value, json};

/// Where the server is and who we are.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    server: crate::remote::ServerArgs,
    /// Without --server: the tenant whose queue to use.
    #[arg(long, global = true)]
    tenant: Option<String>,
    /// Without --server: who decides (default: the invoking user, $SUDO_USER or $USER).
    #[arg(long = "as", value_name = "NAME", global = true)]
    approver: Option<String>,
    /// Without --server: the queue in this PostgreSQL database (as `agentspace serve
    /// --database-url`) instead of the state directory's.
    #[arg(
        long,
        env = "AGENTSPACE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true,
        global = true
    )]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List approvals (pending ones by default), oldest first.
    List {
        /// `pending`, `approved`, `denied`, `timed_out` or `all`.
        #[arg(long, default_value = "pending")]
        state: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a held action.
    Approve {
        /// The approval id.
        id: String,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Deny a held action.
    Deny {
        /// The approval id.
        id: String,
        /// Why (kept in the audit log; the agent's request gets a 403).
        #[arg(long)]
        comment: String,
    },
}

pub(crate) fn run(state_dir: &StateDir, args: Args) -> Result<ExitCode> {
    if let Command::Approve { id, .. } | Command::Deny { id, .. } = &args.command
        && !(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        bail!(
            "`{id}` is not an approval id (32 hex characters, as `agentspace approvals list` shows)"
        );
    }
    if let Command::List { state, .. } = &args.command
        && !["pending", "approved", "denied", "timed_out", "all"].contains(&state.as_str())
    {
        bail!("`--state {state}` is not a state: use pending, approved, denied, timed_out or all");
    }
    let Some(remote) = args.server.remote()? else {
        return local(state_dir, &args);
    };
    match &args.command {
        Command::List { state, json } => {
            let list = remote.get(&format!("/v1/approvals?state={state}"))?;
            print_list(list, state, *json)?;
        }
        Command::Approve { id, comment } | Command::Deny { id, comment } => {
            let verb = if matches!(args.command, Command::Approve { .. }) {
                "approve"
            } else {
                "deny"
            };
            let done = remote.post(
                &format!("/v1/approvals/{id}/{verb}"),
                &json!({ "comment": comment }),
            )?;
            println!(
                "approval `{id}` {} by `{}`",
                done.get("state")
                    .and_then(Value::as_str)
                    .unwrap_or("decided"),
                done.get("approver").and_then(Value::as_str).unwrap_or("-")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_list(list: Value, state: &str, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let items = list.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no {state} approvals");
        return Ok(());
    }
    println!(
        "{:<32}  {:<10}  {:<12}  {:<16}  {:<8}  {:<30}  RESOURCE",
        "ID", "STATE", "USER", "AGENT", "ACTION", "EXPIRES"
    );
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("-").to_owned();
    for a in items {
        let c = a.get("context");
        let cf = |k: &str| s(c.and_then(|c| c.get(k)));
        println!(
            "{:<32}  {:<10}  {:<12}  {:<16}  {:<8}  {:<30}  {}",
            s(a.get("id")),
            s(a.get("state")),
            cf("user"),
            cf("agent"),
            cf("action"),
            s(a.get("expires_at")),
            cf("resource")
        );
    }
    Ok(())
}

/// The queue of the state directory, without a control-plane process.
fn local(state_dir: &StateDir, args: &Args) -> Result<ExitCode> {
    use agentspace_server::{ApprovalState, ApprovalStore, Outcome};
    let Some(tenant) = args.tenant.as_deref() else {
        bail!(
            "without --server, name the tenant: `agentspace approvals --tenant T ...` (or give the control plane with --server URL)"
        );
    };
    let tenant = agentspace_core::Name::new(tenant)
        .map_err(|e| anyhow::anyhow!("invalid tenant `{tenant}`: {e}"))?;
    let stores = crate::state::Stores {
        database_url: args.database_url.clone(),
        ..crate::state::Stores::from_env()
    };
    let audit = crate::cmd_audit::open(state_dir, stores.audit().as_deref())?;
    let store = ApprovalStore::open(state_dir.path(), stores.database_url.as_deref(), audit)?;
    match &args.command {
        Command::List { state, json } => {
            let wanted = match state.as_str() {
                "pending" => Some(ApprovalState::Pending),
                "approved" => Some(ApprovalState::Approved),
                "denied" => Some(ApprovalState::Denied),
                "timed_out" => Some(ApprovalState::TimedOut),
                _ => None,
            };
            let list = store.list(&tenant, wanted, 1000)?;
            print_list(serde_json::to_value(list)?, state, *json)?;
        }
        Command::Approve { id, comment } | Command::Deny { id, comment } => {
            let outcome = if matches!(args.command, Command::Approve { .. }) {
                Outcome::Approve
            } else {
                Outcome::Deny
            };
            let approver = crate::state::default_user(args.approver.clone());
            let done = store.decide(&tenant, id, &approver, outcome, comment)?;
            println!(
                "approval `{id}` {} by `{approver}`",
                serde_json::to_value(done.state)?
                    .as_str()
                    .unwrap_or("decided")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
