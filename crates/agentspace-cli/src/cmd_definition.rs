//! `agentspace definition check|schema|register`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::state::StateDir;

/// `agentspace definition` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Validate a definition; print the resolved form.
    Check {
        /// The definition file.
        #[arg(short = 'f', long = "file", value_name = "DEFINITION")]
        definition: PathBuf,
    },
    /// Print the JSON Schema of the definition format.
    Schema,
    /// Register a definition with the control plane of this state directory, as the
    /// host's operator: the version may name host paths and host commands (workspace,
    /// read-only directories, policy files, stdio tool servers) and the control plane
    /// starts it with relative paths resolved against the file's directory. The text
    /// registered now is what runs; register again after changing the file.
    Register {
        /// The definition file.
        #[arg(short = 'f', long = "file", value_name = "DEFINITION")]
        definition: PathBuf,
        /// The tenant to register it in (it must match `metadata.tenant`).
        #[arg(long)]
        tenant: String,
        /// Who registers it, recorded in the audit log (default: the invoking user).
        #[arg(long = "as", value_name = "USER")]
        by: Option<String>,
        /// The control plane's database (`--database-url`) and audit store.
        #[command(flatten)]
        stores: crate::state::Stores,
    },
}

pub(crate) fn run(state: &StateDir, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Check { definition } => match crate::cmd_run::load_definition(&definition) {
            Ok(d) => {
                println!("{}", serde_json::to_string_pretty(&d)?);
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("agentspace: {e:#}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&agentspace_core::definition_json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Register {
            definition,
            tenant,
            by,
            stores,
        } => {
            let tenant = agentspace_core::Name::new(&tenant)
                .with_context(|| format!("invalid `--tenant {tenant}`"))?;
            let by = crate::state::default_user(by);
            match agentspace_server::register_on_host(
                state.path(),
                stores.database_url.as_deref(),
                stores.audit_url.as_deref(),
                &tenant,
                &by,
                &definition,
            ) {
                Ok(r) => {
                    let v = &r.version;
                    if r.created {
                        println!(
                            "registered `{}` version {} in tenant `{tenant}` as host-trusted ({})",
                            v.name, v.version, v.digest
                        );
                    } else {
                        println!(
                            "`{}` version {} in tenant `{tenant}` already has this text ({}); nothing changed",
                            v.name, v.version, v.digest
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(agentspace_server::ServerError::Definition(problems)) => {
                    for p in problems {
                        let at = match (p.line, p.field.as_deref()) {
                            (Some(line), Some(field)) => {
                                format!(" at line {line}: field `{field}`")
                            }
                            (Some(line), None) => format!(" at line {line}"),
                            (None, Some(field)) => format!(": field `{field}`"),
                            (None, None) => String::new(),
                        };
                        eprintln!(
                            "agentspace: invalid definition `{}`{at}: {}",
                            definition.display(),
                            p.message
                        );
                    }
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}
