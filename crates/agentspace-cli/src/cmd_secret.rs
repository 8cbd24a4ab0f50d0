//! `agentspace secret set|list|rm --tenant T NAME`: the secrets the gateway injects into
//! brokered requests. A value is read from stdin or a file, never from the command line,
//! and never printed back.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use agentspace_core::Name;
use agentspace_secrets::SecretStore;
use anyhow::{Context, Result, bail};

use crate::state::StateDir;

/// `agentspace secret` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Store a secret (the value from stdin, or from `--from-file`).
    Set {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The secret's name, as credentials in definitions refer to it.
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// List the names of a tenant's secrets (never their values).
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Remove a secret.
    Rm {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The secret's name.
        name: String,
    },
}

pub(crate) fn run(state: &StateDir, cmd: Command) -> Result<ExitCode> {
    let store = SecretStore::open(state.path());
    let tenant = |t: &str| Name::new(t).context("invalid `--tenant`");
    match cmd {
        Command::Set {
            tenant: t,
            name,
            from_file,
        } => {
            let mut value = Vec::new();
            match from_file {
                Some(path) => {
                    value = std::fs::read(&path)
                        .with_context(|| format!("cannot read `{}`", path.display()))?;
                }
                None => {
                    std::io::stdin()
                        .read_to_end(&mut value)
                        .context("cannot read the value from stdin")?;
                }
            }
            // A trailing newline from `echo` or an editor is not part of the secret.
            while value.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                value.pop();
            }
            if value.is_empty() {
                bail!(
                    "the value is empty: pipe it on stdin (`agentspace secret set --tenant T NAME < file`) or give --from-file"
                );
            }
            store.set(&tenant(&t)?, &name, &value)?;
            println!("stored secret `{name}` for tenant `{t}`");
        }
        Command::List { tenant: t } => {
            for name in store.list(&tenant(&t)?)? {
                println!("{name}");
            }
        }
        Command::Rm { tenant: t, name } => {
            if store.remove(&tenant(&t)?, &name)? {
                println!("removed secret `{name}`");
            } else {
                bail!("tenant `{t}` has no secret `{name}`");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
