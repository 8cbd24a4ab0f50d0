//! `agentspace serve`: the control plane (REST API, approvals, event stream), and
//! `--bootstrap-admin` to create a tenant's first admin and print their token once.

use std::net::SocketAddr;
use std::process::ExitCode;

use agentspace_core::Name;
use agentspace_server::{Server, ServerConfig};
use anyhow::{Context, Result};

use crate::state::StateDir;

/// `agentspace serve` options.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Address to listen on. The API speaks plain HTTP: keep it on loopback, or put a
    /// TLS-terminating proxy in front.
    #[arg(long, default_value = "127.0.0.1:7171", value_name = "ADDR")]
    listen: SocketAddr,
    /// The control-plane tables in PostgreSQL (`--database-url postgres://...`, made
    /// once with `agentspace server migrate`) instead of SQLite in the state directory,
    /// and the audit store.
    #[command(flatten)]
    stores: crate::state::Stores,
    /// Announce each approval request to this webhook (`https://...`), with a
    /// Slack-compatible JSON body (`{"text": ...}`).
    #[arg(
        long,
        env = "AGENTSPACE_APPROVAL_WEBHOOK",
        value_name = "URL",
        hide_env_values = true
    )]
    approval_webhook: Option<String>,
    /// The gateway config file (`resolve`, `upstreamCa`, `limits`; docs/gateway.md) for
    /// the tasks this server starts whose definitions have `spec.egress` or `spec.tools`.
    #[arg(long, value_name = "FILE")]
    gateway_config: Option<std::path::PathBuf>,
    /// Let tenant admins point their tenant's webhook at loopback, private and
    /// link-local addresses (refused by default: the server would POST there for them).
    #[arg(long)]
    allow_private_webhooks: bool,
    /// Mark the console's cookies `Secure` (sent over HTTPS only): set this when
    /// browsers reach the console through a TLS-terminating proxy.
    #[arg(long)]
    secure_cookies: bool,
    /// Create tenant `--tenant` with this user as its first admin, print the admin's API
    /// token once, and exit (without serving).
    #[arg(long, value_name = "USER", requires = "tenant")]
    bootstrap_admin: Option<String>,
    /// The tenant to create with `--bootstrap-admin`.
    #[arg(long, requires = "bootstrap_admin")]
    tenant: Option<String>,
}

pub(crate) fn run(state: &StateDir, args: Args) -> Result<ExitCode> {
    if let (Some(admin), Some(tenant)) = (&args.bootstrap_admin, &args.tenant) {
        let tenant = Name::new(tenant).context("invalid `--tenant`")?;
        let token = agentspace_server::bootstrap_admin(
            state.path(),
            args.stores.database_url.as_deref(),
            args.stores.audit_url.as_deref(),
            &tenant,
            admin,
        )?;
        eprintln!(
            "created tenant `{tenant}` with admin `{admin}`; their API token (shown only now, keep it safe):"
        );
        println!("{}", token.token);
        return Ok(ExitCode::SUCCESS);
    }
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the control plane's runtime")?;
    // Checked now, so that a bad file stops the server here rather than every task.
    let gateway_config = match &args.gateway_config {
        Some(file) => {
            agentspace_gateway::GatewayConfig::new(state.path()).load_file(file)?;
            Some(
                std::path::absolute(file)
                    .with_context(|| format!("cannot resolve `{}`", file.display()))?,
            )
        }
        None => None,
    };
    let config = ServerConfig {
        state_dir: state.path().to_owned(),
        listen: args.listen,
        database_url: args.stores.database_url,
        audit_url: args.stores.audit_url,
        // Tasks started through the API run as `agentspace run` of this same binary.
        runner: Some(std::env::current_exe().context("cannot find this program's path")?),
        gateway_config,
        approval_webhook: args.approval_webhook,
        allow_private_webhooks: args.allow_private_webhooks,
        secure_cookies: args.secure_cookies,
    };
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "agentspace: warning: the control plane speaks plain HTTP and listens on `{}`, beyond loopback: bearer tokens and session cookies cross the network in clear unless a TLS-terminating proxy is in front (then add --secure-cookies)",
            args.listen
        );
    }
    runtime.block_on(async move {
        let server = Server::bind(config).await?;
        eprintln!(
            "agentspace: control plane on http://{} (state `{}`)",
            server.local_addr()?,
            state.path().display()
        );
        // Runs until the process is stopped: every acknowledged change is durable.
        server.serve(std::future::pending()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Raises the soft limit on open files to the hard limit. Every `agentspace run
/// --server` following a task holds a connection per stream, so the common default of
/// 1024 would stop the server from accepting at about 450 followed tasks (the tasks it
/// starts inherit the raised soft limit, which they could raise themselves anyway).
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        eprintln!(
            "agentspace: warning: cannot raise the open files limit from {soft} to {hard}: {e}; the server may refuse connections under load"
        );
    }
}
