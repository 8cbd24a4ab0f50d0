//! `agentspace run -f DEFINITION [--user U] -- COMMAND ARGS...`; with `--server URL`
//! the task runs on a control plane instead (`cmd_run_remote`).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;

use agentspace_cell::{
    CellCgroup, CellSpec, CgroupLimits, ChangeKind, Launcher, apply_changes, prepare_task_dir,
    workspace_changes,
};
use agentspace_core::{Definition, LimitHit, ManifestLimits, TaskId, TaskManifest, TaskState};
use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::unistd::Pid;

use crate::state::StateDir;

/// Arguments of `agentspace run`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The agent definition (YAML, apiVersion agentspace/v1); with --server it is
    /// registered there (a new version when its text changed).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "DEFINITION",
        required_unless_present = "agent"
    )]
    definition: Option<PathBuf>,
    /// With --server: run this registered definition (its current version, or NAME@VERSION).
    #[arg(long, value_name = "NAME[@VERSION]", conflicts_with = "definition")]
    agent: Option<String>,
    /// The user the agent acts for (default: $SUDO_USER, else $USER; with --server, the
    /// API token's user, which this must match if given).
    #[arg(long)]
    user: Option<String>,
    /// Run the task on a control plane (`--server URL`, AGENTSPACE_SERVER) as the user of
    /// the API token in AGENTSPACE_TOKEN (or --token-file).
    #[command(flatten)]
    server: crate::remote::ServerArgs,
    /// After the run, apply the task's workspace changes to the host workspace.
    #[arg(long)]
    commit_workspace: bool,
    /// Resolve the definition's relative paths against DIR instead of the file's own
    /// directory. The control plane runs a host-registered definition's text (copied
    /// into its run directory) with the directory of the file it was registered from.
    #[arg(long, value_name = "DIR", hide = true)]
    base_dir: Option<PathBuf>,
    /// The gateway's operator settings (--config, --resolve, --upstream-ca).
    #[command(flatten)]
    gateway: crate::cmd_gateway::GatewayOptions,
    /// Where approvals wait and the audit log is kept (--database-url, --audit-url).
    #[command(flatten)]
    stores: crate::state::Stores,
    /// The program to run in the cell and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Most bytes of each stream kept in the task's log files; the terminal gets everything.
const LOG_LIMIT: u64 = 64 << 20;

pub(crate) fn run(state: &StateDir, args: Args) -> Result<ExitCode> {
    if let Some(remote) = args.server.remote()? {
        if args.commit_workspace || args.base_dir.is_some() || !args.gateway.is_empty() {
            bail!(
                "--commit-workspace, --config, --resolve and --upstream-ca are the host's choices, not a control plane client's: a task on a control plane has no host workspace, and its gateway runs with the server's `--gateway-config`"
            );
        }
        return crate::cmd_run_remote::run(
            remote,
            crate::cmd_run_remote::RemoteRun {
                definition: args.definition.as_deref(),
                agent: args.agent.as_deref(),
                user: args.user.as_deref(),
                command: &args.command,
            },
        );
    }
    let Some(definition_path) = args.definition.as_deref() else {
        bail!(
            "--agent NAME runs a definition registered on a control plane: give --server URL (or AGENTSPACE_SERVER) too, or run a definition file with -f FILE"
        );
    };
    // Ctrl-C and friends are taken by a forwarding thread, not by default handlers: the
    // first SIGINT reaches the agent, a second kills the cell (the supervisor counts).
    // Blocked first thing, so every thread started later (the audit log's) inherits it.
    let forwarded = block_forwarded_signals()?;
    let definition = load_definition_at(definition_path, args.base_dir.as_deref())?;
    let user = resolve_user(args.user.clone())?;
    let now = crate::state::unix_nanos();
    let (task, random) = crate::state::new_task_id(now)?;
    // A host uid no host account uses; distinct per task so two cells never share one.
    let host_id = 0x4000_0000
        + (u32::from_le_bytes([random[0], random[1], random[2], random[3]]) % 0x3000_0000);

    let task_dir = state.tasks_dir()?.join(task.as_str());
    prepare_task_dir(&task_dir, host_id)?;
    let limits = definition.limits;
    let mut manifest = TaskManifest {
        version: 1,
        task: task.to_string(),
        tenant: definition.tenant.to_string(),
        agent: definition.name.to_string(),
        user: user.clone(),
        definition: definition.source.display().to_string(),
        definition_digest: definition.digest.clone(),
        command: args.command.clone(),
        limits: ManifestLimits {
            memory_bytes: limits.memory_bytes,
            pids: limits.pids,
            cpu: limits.cpu,
            timeout_secs: limits.timeout.as_secs(),
        },
        state: TaskState::Running,
        started_at: agentspace_core::format_audit_time(now),
        ended_at: None,
        exit_code: None,
        limits_hit: Vec::new(),
        error: None,
        host_uid: host_id,
        landlock: None,
        memory_peak_bytes: None,
        workspace_changes_dir: task_dir.join("upper").display().to_string(),
        workspace_changes: BTreeMap::new(),
        workspace_committed: false,
    };
    write_manifest(&task_dir, &manifest)?;

    // Audit before action: the start is durable before the cell starts; no record, no run.
    let audit_url = args.stores.audit();
    let audit = match crate::cmd_audit::TaskAudit::start(
        state,
        audit_url.as_deref(),
        &serde_json::to_value(&manifest)?,
    ) {
        Ok(audit) => audit,
        Err(e) => {
            eprintln!("agentspace: refusing to run: {e:#}");
            manifest.state = TaskState::Failed;
            manifest.error = Some(format!("{e:#}"));
            manifest.exit_code = Some(125);
            write_manifest(&task_dir, &manifest)?;
            cleanup(&task_dir);
            return Ok(ExitCode::from(crate::EXIT_AGENTSPACE_FAILED));
        }
    };
    let boundary = match Boundary::start(state, &definition, &task, &user, &args) {
        Ok(b) => b,
        Err(e) => {
            let code = finish(&mut manifest, &definition, &task_dir, Err(e), false);
            write_manifest(&task_dir, &manifest)?;
            cleanup(&task_dir);
            return Ok(ExitCode::from(
                u8::try_from(code).unwrap_or(crate::EXIT_AGENTSPACE_FAILED),
            ));
        }
    };
    let outcome = run_cell(
        Task {
            definition: &definition,
            id: &task,
            user: &user,
            host_id,
            dir: &task_dir,
            command: &args.command,
        },
        boundary.as_ref(),
        forwarded,
    );
    let mut code = finish(
        &mut manifest,
        &definition,
        &task_dir,
        outcome,
        args.commit_workspace,
    );
    if let Err(e) = audit.exit(&serde_json::to_value(&manifest)?) {
        eprintln!("agentspace: {e:#}");
        code = 125;
    }
    write_manifest(&task_dir, &manifest)?;
    cleanup(&task_dir);
    Ok(ExitCode::from(
        u8::try_from(code).unwrap_or(crate::EXIT_AGENTSPACE_FAILED),
    ))
}

pub(crate) fn load_definition(path: &Path) -> Result<Definition> {
    load_definition_at(path, None)
}

/// Reads and validates the definition in `path`; its relative paths resolve against
/// `base_dir` when given, else against the file's directory. `source` is the file read
/// either way (the manifest names what ran).
fn load_definition_at(path: &Path, base_dir: Option<&Path>) -> Result<Definition> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read definition `{}`", path.display()))?;
    let abs = std::path::absolute(path)
        .with_context(|| format!("cannot resolve `{}`", path.display()))?;
    let anchor = match base_dir {
        Some(dir) => std::path::absolute(dir)
            .with_context(|| format!("cannot resolve `--base-dir {}`", dir.display()))?
            .join(abs.file_name().unwrap_or_default()),
        None => abs.clone(),
    };
    let mut definition = Definition::parse(&anchor, &text)?;
    definition.source = abs;
    Ok(definition)
}

fn resolve_user(given: Option<String>) -> Result<String> {
    let user = crate::state::default_user(given);
    let valid = !user.is_empty()
        && user.len() <= 128
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if !valid {
        bail!("invalid --user `{user}`: use 1-128 letters, digits and `._@-`");
    }
    Ok(user)
}

struct Outcome {
    report: agentspace_cell::CellReport,
    stats: agentspace_cell::CgroupStats,
}

fn block_forwarded_signals() -> Result<SigSet> {
    let mut forwarded = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        forwarded.add(s);
    }
    // An inherited "ignore" (a background job of a non-interactive shell ignores SIGINT)
    // would discard the signal even while blocked: restore the default first.
    for s in forwarded.iter() {
        agentspace_cell::reset_signal(s).with_context(|| format!("cannot reset {s}"))?;
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), None).context("cannot block signals")?;
    Ok(forwarded)
}

/// The control boundary of one task: the cell's network namespace with its door, and the
/// gateway serving the door from outside the cell. Started only for definitions with
/// egress rules; a cell without them has no network at all.
struct Boundary {
    door: agentspace_cell::NetworkDoor,
    ca: PathBuf,
    /// Runs the gateway serving the door; held so it lives as long as the cell.
    runtime: tokio::runtime::Runtime,
    task: std::sync::Arc<agentspace_gateway::Task>,
    /// The MCP endpoint: it ends once the task's last audit events are durable.
    tools: Option<tokio::task::JoinHandle<()>>,
}

impl Boundary {
    fn start(
        state: &StateDir,
        definition: &Definition,
        task: &TaskId,
        user: &str,
        args: &Args,
    ) -> Result<Option<Self>> {
        use agentspace_core::{Actor, Principal, TaskRef, UserId};
        use agentspace_gateway::{Door, DoorListener, Gateway};
        let options = &args.gateway;
        if definition.governance.egress.is_empty() && definition.governance.tools.servers.is_empty()
        {
            if !options.is_empty() {
                bail!(
                    "--config, --resolve and --upstream-ca configure the gateway, which runs only for definitions with `spec.egress` or `spec.tools`"
                );
            }
            return Ok(None);
        }
        let config = options.config(state.path())?;
        // Decisions go to the same audit store as the task's start and exit.
        // One handle (one writer, one connection) shared by the gateway, the MCP gateway
        // and the approval desk.
        let audit = crate::cmd_audit::open(state, args.stores.audit().as_deref())?;
        let user = UserId::new(user).with_context(|| format!("invalid user `{user}`"))?;
        let principal = Principal::new(
            definition.tenant.clone(),
            user,
            Actor::new(definition.name.clone(), TaskRef::from(task)),
        );
        // Revocations from the control plane's database when there is one, so that a
        // revocation made on any host sharing it stops this task's next decision.
        let policy = match args.stores.database_url.as_deref() {
            Some(url) => agentspace_policy::PolicyEngine::load_with_revocations(
                definition,
                state.path(),
                agentspace_server::revocations(state.path(), Some(url))?,
            )?,
            None => agentspace_policy::PolicyEngine::load(definition, state.path())?,
        };
        let policy = std::sync::Arc::new(policy);
        let gateway = Gateway::new(config.clone(), audit.clone())?;
        let ca = gateway
            .tenant_ca(&definition.tenant)?
            .cert_path()
            .to_path_buf();
        let identity = std::sync::Arc::new(agentspace_identity::Identity::open(state.path()));
        // HTTP tool servers are reached like HTTP egress upstreams (the same roots,
        // --upstream-ca and --resolve); stdio ones run in cells of their own.
        let mcp_gateway = agentspace_gateway::McpGateway::configured(
            audit.clone(),
            std::sync::Arc::clone(&identity),
            &config,
            Some(std::sync::Arc::new(ToolCells {
                exe: std::env::current_exe().context("cannot find the agentspace binary")?,
                state: state.path().to_path_buf(),
                dir: state.tasks_dir()?.join(task.as_str()).join("tools"),
                tenant: definition.tenant.to_string(),
                user: principal.user().as_str().to_owned(),
                timeout_secs: definition.limits.timeout.as_secs().max(1),
                gateway_args: options.to_args()?,
                stores: args.stores.to_env(),
            })),
        )?;
        let mut door = agentspace_cell::NetworkDoor::create()?;
        let sockets = door.take_sockets().context("the door has no sockets")?;
        for nonblocking in [
            sockets.proxy.set_nonblocking(true),
            sockets.transparent.set_nonblocking(true),
            sockets.dns_tcp.set_nonblocking(true),
            sockets.dns_udp.set_nonblocking(true),
            sockets.mcp.set_nonblocking(true),
        ] {
            nonblocking.context("cannot make the door non-blocking")?;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the gateway's runtime")?;
        // Approval-required requests wait in the control plane's approval queue (the
        // state directory's, or the PostgreSQL database of --database-url) for
        // `agentspace approvals approve|deny` or a control plane on the same store.
        let desk = agentspace_server::ApprovalStore::open(
            state.path(),
            args.stores.database_url.as_deref(),
            audit,
        )?;
        let mut gw_task = agentspace_gateway::Task::new(principal, policy)
            .with_approvals(std::sync::Arc::new(desk))
            .with_identity(identity);
        for rule in &definition.governance.egress {
            if let Some(c) = &rule.credential {
                gw_task = gw_task
                    .with_credential(rule.name.as_str(), agentspace_gateway::Credential::from(c));
            }
        }
        // The explicit proxy, the transparent door and the resolver all serve the same
        // task: however a connection leaves the cell, it is decided as this task.
        let task = runtime.block_on(async {
            let serve = || "cannot serve the door";
            let proxy = tokio::net::TcpListener::from_std(sockets.proxy).context(serve())?;
            let transparent =
                tokio::net::TcpListener::from_std(sockets.transparent).context(serve())?;
            let dns_udp = tokio::net::UdpSocket::from_std(sockets.dns_udp).context(serve())?;
            let dns_tcp = tokio::net::TcpListener::from_std(sockets.dns_tcp).context(serve())?;
            let mcp = tokio::net::TcpListener::from_std(sockets.mcp).context(serve())?;
            let door = Door::new(DoorListener::Tcp(proxy), gw_task);
            let task = std::sync::Arc::clone(door.task());
            tokio::spawn(std::sync::Arc::clone(&gateway).serve(door));
            tokio::spawn(std::sync::Arc::clone(&gateway).serve(Door::for_task(
                DoorListener::Transparent(transparent),
                std::sync::Arc::clone(&task),
            )));
            tokio::spawn(
                std::sync::Arc::clone(&gateway).serve_dns(dns_udp, std::sync::Arc::clone(&task)),
            );
            tokio::spawn(gateway.serve_dns_tcp(dns_tcp, std::sync::Arc::clone(&task)));
            // The tools of `spec.tools`, at http://127.0.0.1:3130/mcp in the cell; with
            // none, the endpoint lists no tools and every call is refused and audited.
            let tools = tokio::spawn(mcp_gateway.serve(mcp, std::sync::Arc::clone(&task)));
            anyhow::Ok((task, tools))
        })?;
        let (task, tools) = task;
        Ok(Some(Self {
            door,
            ca,
            runtime,
            task,
            tools: Some(tools),
        }))
    }
}

/// Runs each stdio tool server of a task in a cell of its own: `agentspace run` of a
/// definition made for it, with the agent definition's directory as its workspace (an
/// overlay: the server's writes never reach the host), the task's user, and as network
/// only what the server's own `egress` rules allow (none: no network at all), through
/// a gateway of its own that adds the rules' brokered credentials. A tool server so
/// never runs with the launcher's privileges, sees only its own directory and the
/// system, never holds a secret, and its start, exit and requests are in the audit log.
struct ToolCells {
    exe: PathBuf,
    state: PathBuf,
    dir: PathBuf,
    tenant: String,
    user: String,
    timeout_secs: u64,
    /// The operator's gateway options (`--config`, `--resolve`, `--upstream-ca`), for
    /// the gateways of servers with egress rules.
    gateway_args: Vec<String>,
    /// The task's stores (`--database-url`, `--audit-url`) as the variables `run` reads,
    /// so that the servers' cells record where the task does; in the environment, not
    /// the arguments, where other users of the host could read the password.
    stores: Vec<(String, String)>,
}

impl agentspace_gateway::StdioSandbox for ToolCells {
    fn wrap(
        &self,
        server: &agentspace_core::ToolServer,
    ) -> std::result::Result<Vec<String>, String> {
        let agentspace_core::ToolTransport::Stdio { command, cwd } = &server.transport else {
            return Err("only stdio servers run in a cell".to_owned());
        };
        let name = server.name.as_str();
        // JSON is YAML: names, the path and the rules need no further quoting.
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        let mut text = format!(
            "apiVersion: agentspace/v1\nkind: Agent\nmetadata:\n  name: {}\n  tenant: {}\nspec:\n  workspace: {}\n  resources: {{memory: 256Mi, pids: 64, cpu: 1.0, timeout: {}s}}\n",
            quote(name),
            quote(&self.tenant),
            quote(&cwd.display().to_string()),
            self.timeout_secs
        );
        if !server.egress.is_empty() {
            let rules = serde_json::to_string(&server.egress)
                .map_err(|e| format!("cannot write the tool server's egress rules: {e}"))?;
            text.push_str(&format!("  egress: {rules}\n"));
        }
        let file = self.dir.join(format!("{name}.yaml"));
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&file, text))
            .map_err(|e| format!("cannot write the tool server's cell definition: {e}"))?;
        let mut argv = vec![
            self.exe.display().to_string(),
            "--state-dir".to_owned(),
            self.state.display().to_string(),
            "run".to_owned(),
            "--user".to_owned(),
            self.user.clone(),
            "-f".to_owned(),
            file.display().to_string(),
        ];
        // The gateway options configure the gateway, which only a cell with egress
        // rules has (`run` refuses them otherwise).
        if !server.egress.is_empty() {
            argv.extend(self.gateway_args.iter().cloned());
        }
        argv.push("--".to_owned());
        argv.extend(command.iter().cloned());
        Ok(argv)
    }

    fn environment(&self) -> Vec<(String, String)> {
        self.stores.clone()
    }
}

impl Drop for Boundary {
    fn drop(&mut self) {
        // The task is over: its door stops accepting and every connection closes. The
        // MCP endpoint writes the audit events it still holds before the runtime stops.
        self.task.close();
        if let Some(tools) = self.tools.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), tools).await
            });
        }
    }
}

/// One task, as the cell needs it.
struct Task<'a> {
    definition: &'a Definition,
    id: &'a TaskId,
    user: &'a str,
    host_id: u32,
    dir: &'a Path,
    command: &'a [String],
}

fn run_cell(t: Task<'_>, boundary: Option<&Boundary>, forwarded: SigSet) -> Result<Outcome> {
    let Task {
        definition,
        id: task,
        user,
        host_id,
        dir: task_dir,
        command,
    } = t;
    let limits = definition.limits;
    let cgroup = CellCgroup::create(
        task.as_str(),
        CgroupLimits {
            memory_bytes: limits.memory_bytes,
            pids: limits.pids,
            cpu: limits.cpu,
        },
    )?;
    let spec = CellSpec {
        task_dir: task_dir.to_path_buf(),
        hostname: definition.name.to_string(),
        argv: command.to_vec(),
        env: cell_env(definition, task, user, boundary.is_some()),
        workspace: definition.workspace.clone(),
        read_only: definition.read_only.clone(),
        host_id,
        tmp_bytes: (limits.memory_bytes / 4).max(16 << 20),
        cgroup_procs: cgroup.procs_files(),
        timeout_ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
        netns: boundary.map(|b| b.door.netns_path()),
        network_door: boundary.is_some(),
        extra_ca: boundary.map(|b| b.ca.clone()),
    };

    let mut cell = Launcher::current_exe().start(&spec)?;
    let supervisor = Pid::from_raw(i32::try_from(cell.supervisor_pid()).unwrap_or(0));
    thread::spawn(move || {
        while let Ok(sig) = forwarded.wait() {
            let _ = kill(supervisor, sig);
        }
    });
    let out = cell
        .take_stdout()
        .map(|s| tee(s, std::io::stdout(), task_dir.join("stdout.log")));
    let err = cell
        .take_stderr()
        .map(|s| tee(s, std::io::stderr(), task_dir.join("stderr.log")));
    let report = cell.wait()?;
    for t in [out, err].into_iter().flatten() {
        let _ = t.join();
    }
    let stats = cgroup.stats();
    drop(cgroup);
    Ok(Outcome { report, stats })
}

/// The agent's environment: nothing from the host but TERM; the definition's `env` last.
fn cell_env(
    definition: &Definition,
    task: &TaskId,
    user: &str,
    door: bool,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if door {
        // Every usual way for programs to find the proxy and trust its CA.
        let proxy = format!("http://127.0.0.1:{}", agentspace_cell::DOOR_PORT);
        for name in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            env.insert(name.into(), proxy.clone());
        }
        env.insert("NO_PROXY".into(), "localhost,127.0.0.1".into());
        env.insert("no_proxy".into(), "localhost,127.0.0.1".into());
        env.insert(
            "AGENTSPACE_MCP_URL".into(),
            format!(
                "http://127.0.0.1:{}{}",
                agentspace_cell::MCP_PORT,
                agentspace_gateway::MCP_PATH
            ),
        );
        let bundle = "/etc/ssl/certs/ca-certificates.crt".to_owned();
        for name in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO",
        ] {
            env.insert(name.into(), bundle.clone());
        }
    }
    env.insert(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    );
    env.insert("HOME".into(), "/home/agent".into());
    env.insert("USER".into(), "agent".into());
    env.insert("LOGNAME".into(), "agent".into());
    env.insert("HOSTNAME".into(), definition.name.to_string());
    env.insert("LANG".into(), "C.UTF-8".into());
    env.insert("AGENTSPACE_TASK_ID".into(), task.to_string());
    env.insert("AGENTSPACE_AGENT".into(), definition.name.to_string());
    env.insert("AGENTSPACE_USER".into(), user.to_owned());
    if let Ok(term) = std::env::var("TERM") {
        env.insert("TERM".into(), term);
    }
    env.extend(definition.env.clone());
    env
}

/// Copies a stream to the terminal as it arrives and to a log file (up to LOG_LIMIT).
fn tee<R: Read + Send + 'static, W: Write + Send + 'static>(
    mut from: R,
    mut to: W,
    log: PathBuf,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut file = fs::File::create(&log).ok();
        let mut logged = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut terminal_ok = true;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = buf.get(..n).unwrap_or_default();
            if terminal_ok {
                terminal_ok = to.write_all(chunk).and_then(|()| to.flush()).is_ok();
            }
            if let Some(f) = file.as_mut() {
                let room = LOG_LIMIT.saturating_sub(logged) as usize;
                let part = chunk.get(..n.min(room)).unwrap_or_default();
                if f.write_all(part).is_err() || part.len() < n {
                    let _ = f.write_all(b"\n[agentspace: log truncated]\n");
                    file = None;
                }
                logged += part.len() as u64;
            }
        }
    })
}

fn finish(
    manifest: &mut TaskManifest,
    definition: &Definition,
    task_dir: &Path,
    outcome: Result<Outcome>,
    commit: bool,
) -> i32 {
    manifest.ended_at = Some(agentspace_core::format_audit_time(
        crate::state::unix_nanos(),
    ));
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("agentspace: {e:#}");
            manifest.state = TaskState::Failed;
            manifest.error = Some(format!("{e:#}"));
            manifest.exit_code = Some(125);
            return 125;
        }
    };
    let report = outcome.report;
    manifest.landlock = report.landlock.clone();
    manifest.memory_peak_bytes = outcome.stats.memory_peak_bytes;
    if report.timed_out {
        manifest.limits_hit.push(LimitHit::Timeout);
        eprintln!(
            "agentspace: task {} timed out after {}; the cell was killed",
            manifest.task,
            humantime(definition.limits.timeout)
        );
    }
    if outcome.stats.oom_kills > 0 {
        manifest.limits_hit.push(LimitHit::Memory);
        eprintln!(
            "agentspace: task {}: out of memory (limit {} bytes); the kernel killed a process in the cell",
            manifest.task, definition.limits.memory_bytes
        );
    }
    if outcome.stats.pids_max_hits > 0 {
        manifest.limits_hit.push(LimitHit::Pids);
        eprintln!(
            "agentspace: task {}: reached the limit of {} processes",
            manifest.task, definition.limits.pids
        );
    }
    if report.interrupted {
        manifest.limits_hit.push(LimitHit::Interrupted);
    }
    if let Some(error) = &report.error {
        eprintln!("agentspace: cannot run the cell: {error}");
        manifest.state = TaskState::Failed;
        manifest.error = Some(error.clone());
    } else {
        manifest.state = TaskState::Exited;
    }
    manifest.exit_code = Some(report.exit_code);

    let upper = task_dir.join("upper");
    match workspace_changes(&upper, definition.workspace.as_deref()) {
        Ok(changes) if !changes.is_empty() => {
            for kind in [ChangeKind::Added, ChangeKind::Modified, ChangeKind::Deleted] {
                let n = changes.iter().filter(|c| c.kind == kind).count() as u64;
                manifest
                    .workspace_changes
                    .insert(format!("{kind:?}").to_lowercase(), n);
            }
            let summary: Vec<String> = manifest
                .workspace_changes
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            match (&definition.workspace, commit) {
                (Some(lower), true) => match apply_changes(&upper, lower) {
                    Ok(_) => {
                        manifest.workspace_committed = true;
                        eprintln!(
                            "agentspace: workspace changes ({}) applied to {}",
                            summary.join(", "),
                            lower.display()
                        );
                    }
                    Err(e) => eprintln!(
                        "agentspace: workspace changes were NOT applied: {e}; they remain in {}",
                        upper.display()
                    ),
                },
                _ => eprintln!(
                    "agentspace: workspace changes ({}) kept in {}{}",
                    summary.join(", "),
                    upper.display(),
                    if definition.workspace.is_some() {
                        " (apply them with --commit-workspace)"
                    } else {
                        ""
                    }
                ),
            }
        }
        Ok(_) => {}
        Err(e) => eprintln!("agentspace: cannot list workspace changes: {e}"),
    }
    report.exit_code
}

fn humantime(d: std::time::Duration) -> String {
    agentspace_core::Duration::from_std(d).to_string()
}

fn write_manifest(task_dir: &Path, manifest: &TaskManifest) -> Result<()> {
    let path = task_dir.join("manifest.json");
    let tmp = task_dir.join("manifest.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(manifest)?)
        .with_context(|| format!("cannot write `{}`", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write `{}`", path.display()))
}

/// Removes the mount points and overlay scratch; keeps the manifest, logs and changes.
fn cleanup(task_dir: &Path) {
    for sub in ["rootfs", "lower", "work"] {
        let _ = fs::remove_dir_all(task_dir.join(sub));
    }
}
