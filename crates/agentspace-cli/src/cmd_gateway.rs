//! `agentspace gateway -f DEFINITION [--listen ADDR] [--user U] [--config FILE]
//! [--resolve HOST:PORT:ADDR]... [--upstream-ca FILE]...`: the HTTP/HTTPS gateway for
//! one task on a local listener, for demos, benchmarks and trying a definition against
//! real clients (`curl --proxy`).
//! Every request is decided by the definition's policies, carries the credentials its
//! egress rules broker, and is audited like a cell's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use agentspace_audit::AuditLog;
use agentspace_core::{Actor, Principal, TaskRef, UserId};
use agentspace_gateway::{
    Credential, Door, DoorListener, Gateway, GatewayConfig, ResolveOverride, Task,
};
use agentspace_policy::PolicyEngine;
use anyhow::{Context, Result};

use crate::state::StateDir;

/// Arguments of `agentspace gateway`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The agent definition whose policies decide every request.
    #[arg(short = 'f', long = "file", value_name = "DEFINITION")]
    definition: PathBuf,
    /// Where proxy clients connect (HTTP_PROXY / HTTPS_PROXY).
    #[arg(long, default_value = "127.0.0.1:3128", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// The user the requests are made for (default: $SUDO_USER, else $USER).
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    gateway: GatewayOptions,
}

/// The gateway's operator settings, shared by `agentspace gateway` and `agentspace run`:
/// a config file, and flags that add to it.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct GatewayOptions {
    /// A gateway config file (YAML: `resolve`, `upstreamCa`, `limits`); --resolve and
    /// --upstream-ca add to it, and a --resolve for the same HOST:PORT wins.
    #[arg(long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Send connections for HOST:PORT to ADDR (or ADDR:ADDR_PORT), like curl's --resolve.
    /// For local stand-ins of internet services.
    #[arg(long = "resolve", value_name = "HOST:PORT:ADDR")]
    resolve: Vec<String>,
    /// A PEM file of CAs the gateway's upstream client trusts besides the system roots.
    #[arg(long = "upstream-ca", value_name = "FILE")]
    upstream_ca: Vec<PathBuf>,
}

impl GatewayOptions {
    /// Whether any option was given.
    pub(crate) fn is_empty(&self) -> bool {
        self.config.is_none() && self.resolve.is_empty() && self.upstream_ca.is_empty()
    }

    /// The options as `agentspace run` arguments, paths made absolute (for the run of a
    /// tool server's cell, started in another directory).
    pub(crate) fn to_args(&self) -> Result<Vec<String>> {
        let absolute = |p: &Path| -> Result<String> {
            Ok(std::path::absolute(p)
                .with_context(|| format!("cannot resolve `{}`", p.display()))?
                .display()
                .to_string())
        };
        let mut args = Vec::new();
        if let Some(file) = &self.config {
            args.extend(["--config".to_owned(), absolute(file)?]);
        }
        for entry in &self.resolve {
            args.extend(["--resolve".to_owned(), entry.clone()]);
        }
        for ca in &self.upstream_ca {
            args.extend(["--upstream-ca".to_owned(), absolute(ca)?]);
        }
        Ok(args)
    }

    /// The gateway's settings: defaults, then the config file, then the flags.
    pub(crate) fn config(&self, state_dir: &Path) -> Result<GatewayConfig> {
        let mut config = GatewayConfig::new(state_dir);
        if let Some(file) = &self.config {
            config.load_file(file)?;
        }
        config.upstream_ca.extend(self.upstream_ca.iter().cloned());
        for entry in &self.resolve {
            config.resolve.push(ResolveOverride::parse(entry)?);
        }
        Ok(config)
    }
}

pub(crate) fn run(state: &StateDir, args: Args) -> Result<ExitCode> {
    let definition = crate::cmd_run::load_definition(&args.definition)?;
    let user = crate::state::default_user(args.user);
    let user = UserId::new(&user).with_context(|| format!("invalid --user `{user}`"))?;
    let (task_id, _) = crate::state::new_task_id(crate::state::unix_nanos())?;
    let principal = Principal::new(
        definition.tenant.clone(),
        user,
        Actor::new(definition.name.clone(), TaskRef::from(&task_id)),
    );
    let config = args.gateway.config(state.path())?;
    let policy = Arc::new(PolicyEngine::load(&definition, state.path())?);
    let audit = AuditLog::open(state.path())?;
    let gateway = Gateway::new(config, audit)?;
    let ca = gateway.tenant_ca(&definition.tenant)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the gateway's runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr().context("cannot read the listen address")?;
        eprintln!(
            "agentspace gateway: task {} of `{}` for {}\n  proxy:   http://{addr}  (HTTP_PROXY / HTTPS_PROXY)\n  trust:   {}  (curl --cacert, SSL_CERT_FILE)",
            task_id.as_str(),
            definition.name,
            principal.user().as_str(),
            ca.cert_path().display(),
        );
        let mut task = Task::new(principal, policy).with_identity(std::sync::Arc::new(
            agentspace_identity::Identity::open(state.path()),
        ));
        for rule in &definition.governance.egress {
            if let Some(credential) = &rule.credential {
                task = task.with_credential(rule.name.as_str(), Credential::from(credential));
            }
        }
        let door = Door::new(DoorListener::Tcp(listener), task);
        gateway.serve(door).await;
        Ok(ExitCode::SUCCESS)
    })
}
