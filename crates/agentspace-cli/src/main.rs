//! The `agentspace` command: argument parsing and wiring only. Each area's subcommands
//! live in their own `cmd_*.rs` module; the work itself lives in the library crates.

mod cmd_approvals;
mod cmd_audit;
mod cmd_definition;
mod cmd_doctor;
mod cmd_gateway;
mod cmd_keys;
mod cmd_policy;
mod cmd_revoke;
mod cmd_run;
mod cmd_run_remote;
mod cmd_secret;
mod cmd_serve;
mod cmd_server;
mod cmd_tasks;
mod remote;
mod state;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code when Agent Space itself failed (like `docker run`).
pub(crate) const EXIT_AGENTSPACE_FAILED: u8 = 125;

/// Agent Space: run AI agents in isolated cells behind a governed boundary.
#[derive(Parser)]
#[command(name = "agentspace", version, about)]
struct Cli {
    /// State directory (default: $AGENTSPACE_HOME or ~/.local/share/agentspace).
    #[arg(long, global = true, env = "AGENTSPACE_HOME", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one task: an agent program in a new cell.
    Run(cmd_run::Args),
    /// Verify, query, follow, export and prove the audit log.
    Audit(cmd_audit::Args),
    /// List and inspect tasks.
    Tasks(cmd_tasks::Args),
    /// Store, list and remove the secrets the gateway injects.
    #[command(subcommand)]
    Secret(cmd_secret::Command),
    /// Report what this host supports for cells.
    Doctor(cmd_doctor::Args),
    /// Validate agent definitions; print the definition JSON Schema; register one with
    /// the control plane as the host's operator.
    #[command(subcommand)]
    Definition(cmd_definition::Command),
    /// A tenant's token signing keys: JWKS export and rotation.
    #[command(subcommand)]
    Keys(cmd_keys::Command),
    /// Compile, validate and test policies; explain decisions.
    #[command(subcommand)]
    Policy(cmd_policy::Command),
    /// Revoke (or lift) a task, an agent, a user's use of an agent, or a capability.
    Revoke(cmd_revoke::Args),
    /// Serve the HTTP/HTTPS gateway for one task on a local listener (demos, benchmarks).
    Gateway(cmd_gateway::Args),
    /// List, approve and deny held actions on a running control plane.
    Approvals(cmd_approvals::Args),
    /// Run the control plane (REST API, approvals, event stream); bootstrap a tenant's admin.
    Serve(cmd_serve::Args),
    /// Manage the control plane's PostgreSQL database (`migrate`).
    #[command(subcommand)]
    Server(cmd_server::Command),
}

fn main() -> ExitCode {
    // The cell supervisor is this same binary re-executed: a fresh single-threaded process
    // that may fork safely. It never returns to argument parsing.
    if std::env::args_os().nth(1).as_deref() == Some(agentspace_cell::SUPERVISOR_ARG.as_ref()) {
        return ExitCode::from(agentspace_cell::supervisor_main());
    }
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // `agentspace audit query | head` should end quietly, like any Unix filter. `run`
        // keeps Rust's default (ignore SIGPIPE) so the cell outlives a closed terminal.
        let _ = agentspace_cell::reset_signal(nix::sys::signal::Signal::SIGPIPE);
    }
    let state = state::StateDir::resolve(cli.state_dir);
    let result = match cli.command {
        Command::Run(args) => cmd_run::run(&state, args),
        Command::Audit(args) => cmd_audit::run(&state, args),
        Command::Tasks(cmd) => cmd_tasks::run(&state, cmd),
        Command::Doctor(args) => cmd_doctor::run(args),
        Command::Secret(cmd) => cmd_secret::run(&state, cmd),
        Command::Keys(cmd) => cmd_keys::run(&state, cmd),
        Command::Policy(cmd) => cmd_policy::run(cmd),
        Command::Revoke(cmd) => cmd_revoke::run(&state, cmd),
        Command::Definition(cmd) => cmd_definition::run(&state, cmd),
        Command::Gateway(args) => cmd_gateway::run(&state, args),
        Command::Serve(args) => cmd_serve::run(&state, args),
        Command::Server(cmd) => cmd_server::run(cmd),
        Command::Approvals(args) => cmd_approvals::run(&state, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentspace: {e:#}");
            ExitCode::from(EXIT_AGENTSPACE_FAILED)
        }
    }
}
