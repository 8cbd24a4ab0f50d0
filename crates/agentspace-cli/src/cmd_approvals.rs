//! `agentspace approvals list|approve|deny`: the approval queue of a running control
//! plane (`--server URL`, or AGENTSPACE_SERVER), as the user whose API token is in
//! AGENTSPACE_TOKEN (or `--token-file`). The token never goes on the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use agentspace_server::client::Client;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Where the server is and who we are.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The control plane, e.g. `http://127.0.0.1:7171`.
    #[arg(long, env = "AGENTSPACE_SERVER", value_name = "URL", global = true)]
    server: Option<String>,
    /// Read the API token from this file instead of AGENTSPACE_TOKEN.
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
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

fn token(args: &Args) -> Result<String> {
    let token = match &args.token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file `{}`", path.display()))?,
        None => std::env::var("AGENTSPACE_TOKEN").map_err(|_| {
            anyhow::anyhow!(
                "no API token: set AGENTSPACE_TOKEN or give --token-file (an admin makes tokens with POST /v1/users/NAME/tokens)"
            )
        })?,
    };
    Ok(token.trim().to_owned())
}

fn check(r: &agentspace_server::client::Response) -> Result<Value> {
    if (200..300).contains(&r.status) {
        Ok(r.json())
    } else {
        bail!(
            "the control plane refused ({}): {}",
            r.status,
            r.error_message()
        )
    }
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let Some(server) = args.server.as_deref() else {
        bail!(
            "give the control plane with --server URL or AGENTSPACE_SERVER (start one with `agentspace serve`)"
        );
    };
    let client = Client::new(server, Some(&token(&args)?))?;
    if let Command::Approve { id, .. } | Command::Deny { id, .. } = &args.command
        && !(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        bail!(
            "`{id}` is not an approval id (32 hex characters, as `agentspace approvals list` shows)"
        );
    }
    match &args.command {
        Command::List { state, json } => {
            if !["pending", "approved", "denied", "timed_out", "all"].contains(&state.as_str()) {
                bail!(
                    "`--state {state}` is not a state: use pending, approved, denied, timed_out or all"
                );
            }
            let list = check(&client.get(&format!("/v1/approvals?state={state}"))?)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            let items = list.as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                println!("no {state} approvals");
                return Ok(ExitCode::SUCCESS);
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
        }
        Command::Approve { id, comment } | Command::Deny { id, comment } => {
            let verb = if matches!(args.command, Command::Approve { .. }) {
                "approve"
            } else {
                "deny"
            };
            let done = check(&client.post(
                &format!("/v1/approvals/{id}/{verb}"),
                &json!({ "comment": comment }),
            )?)?;
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
