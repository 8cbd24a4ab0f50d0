//! `agentspace definition check|schema`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

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
}

pub(crate) fn run(cmd: Command) -> Result<ExitCode> {
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
    }
}
