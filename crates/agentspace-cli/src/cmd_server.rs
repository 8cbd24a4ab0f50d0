//! `agentspace server migrate`: creates or updates the control plane's tables in
//! PostgreSQL, with the role `agentspace_control` the server logs in under, and the
//! audit tables with their writer role when the audit log is in PostgreSQL too. Run once
//! as the database owner before the first `agentspace serve --database-url`, and after
//! each upgrade. (SQLite in the state directory needs none of this: it is migrated when
//! opened.)

use std::process::ExitCode;

use anyhow::{Result, bail};

/// `agentspace server` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Create or update the control-plane tables (and the audit tables) in PostgreSQL.
    Migrate {
        /// The control-plane database, and the audit store when it is another one.
        #[command(flatten)]
        stores: crate::state::Stores,
    },
}

pub(crate) fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Migrate { stores } => {
            let Some(url) = stores.database_url.as_deref() else {
                bail!(
                    "`server migrate` needs `--database-url postgres://...` (or AGENTSPACE_DATABASE_URL); SQLite in the state directory is migrated when it is opened"
                );
            };
            let applied = agentspace_server::migrate(url, stores.audit_url.as_deref())?;
            if applied.is_empty() {
                println!("the control-plane schema is current");
            } else {
                let list: Vec<String> = applied.iter().map(i64::to_string).collect();
                println!("applied control-plane schema version {}", list.join(", "));
            }
            println!(
                "tables ready; the server logs in as a member of `{}`{}",
                agentspace_server::CONTROL_ROLE,
                match stores.audit() {
                    Some(a) if a.starts_with("postgres") =>
                        format!(" and of `{}`", agentspace_audit::WRITER_ROLE),
                    _ => String::new(),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
