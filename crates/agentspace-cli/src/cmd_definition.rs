//! `agentspace definition check|schema|register|list|versions|show|diff`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::remote::{Remote, ServerArgs, encode};
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
    /// The current version of each definition registered with the control plane.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Every version of one registered definition, oldest first.
    Versions {
        /// The agent's name.
        name: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The text of a registered definition: its current version, or NAME@VERSION.
    Show {
        /// NAME or NAME@VERSION.
        agent: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A unified diff between two versions of a registered definition.
    Diff {
        /// The agent's name.
        name: String,
        /// The older version.
        from: u32,
        /// The newer version.
        to: u32,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// The registry lives in the control plane; these commands read it through its API.
fn registry(server: &ServerArgs) -> Result<Remote> {
    server.remote()?.ok_or_else(|| {
        anyhow::anyhow!(
            "registered definitions live in a control plane: give --server URL (or AGENTSPACE_SERVER) and its API token (AGENTSPACE_TOKEN or --token-file)"
        )
    })
}

/// Prints versions as a table (or JSON).
fn print_versions(versions: &Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(versions)?);
        return Ok(());
    }
    println!(
        "{:<24}  {:>7}  {:<6}  {:<16}  {:<24}  DIGEST",
        "NAME", "VERSION", "ORIGIN", "REGISTERED BY", "REGISTERED AT"
    );
    for v in versions.as_array().into_iter().flatten() {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-");
        let origin = if v.get("host").and_then(Value::as_bool) == Some(true) {
            "host"
        } else {
            "api"
        };
        println!(
            "{:<24}  {:>7}  {:<6}  {:<16}  {:<24}  {}",
            s("name"),
            v.get("version").and_then(Value::as_u64).unwrap_or_default(),
            origin,
            s("registered_by"),
            s("registered_at"),
            s("digest")
        );
    }
    Ok(())
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
        Command::List { json, server } => {
            print_versions(&registry(&server)?.get("/v1/definitions")?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Versions { name, json, server } => {
            let path = format!("/v1/definitions/{}/versions", encode(&name));
            print_versions(&registry(&server)?.get(&path)?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { agent, server } => {
            let path = match agent.split_once('@') {
                None => format!("/v1/definitions/{}", encode(&agent)),
                Some((name, version)) => {
                    let Ok(version) = version.parse::<u32>() else {
                        bail!(
                            "`{agent}`: the version after `@` must be a number, as in `{name}@2`"
                        );
                    };
                    format!("/v1/definitions/{}/versions/{version}", encode(name))
                }
            };
            let v = registry(&server)?.get(&path)?;
            print!(
                "{}",
                v.get("text").and_then(Value::as_str).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff {
            name,
            from,
            to,
            server,
        } => {
            let path = format!("/v1/definitions/{}/diff?from={from}&to={to}", encode(&name));
            let r = registry(&server)?.get_raw(&path)?;
            print!("{}", String::from_utf8_lossy(&r.body));
            Ok(ExitCode::SUCCESS)
        }
    }
}
