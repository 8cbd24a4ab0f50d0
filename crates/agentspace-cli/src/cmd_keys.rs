//! `agentspace keys jwks|rotate`: a tenant's token signing keys.

use std::process::ExitCode;

use agentspace_core::Name;
use agentspace_identity::Identity;
use anyhow::{Context, Result};

use crate::state::StateDir;

/// `agentspace keys` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Print the tenant's token verification keys as a JWKS (creates its first key if needed).
    Jwks {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Make a new signing key; the old one keeps verifying until its tokens have expired.
    Rotate {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

pub(crate) fn run(state: &StateDir, cmd: Command) -> Result<ExitCode> {
    let identity = Identity::open(state.path());
    match cmd {
        Command::Jwks { tenant } => {
            let tenant = Name::new(&tenant).context("invalid `--tenant`")?;
            let jwks = identity.jwks(&tenant)?;
            println!("{}", serde_json::to_string_pretty(&jwks)?);
        }
        Command::Rotate { tenant } => {
            let tenant = Name::new(&tenant).context("invalid `--tenant`")?;
            let rotation = identity.rotate(&tenant)?;
            let mut details = serde_json::Map::new();
            details.insert("new_kid".into(), rotation.new_kid.clone().into());
            details.insert("retired_kid".into(), rotation.retired_kid.clone().into());
            details.insert(
                "retired_verifies_until".into(),
                rotation.retired_verifies_until.into(),
            );
            crate::cmd_audit::record_admin_event(
                state,
                &tenant,
                agentspace_core::AuditKind::KeyRotation,
                "rotate",
                "identity signing key".to_owned(),
                details,
            )
            .context("the key was rotated, but the audit log could not record it")?;
            println!("tenant `{tenant}`: new signing key `{}`", rotation.new_kid);
            println!(
                "retired key `{}` verifies until {} (Unix time), then leaves the JWKS",
                rotation.retired_kid, rotation.retired_verifies_until
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
