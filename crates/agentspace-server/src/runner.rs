//! Starting and stopping tasks from registered definitions: the server runs
//! `agentspace run` as its child, exactly as a user on the host would, acting for the
//! calling user (never for the server).
//!
//! A registered definition is refused here when it names anything on the host: a
//! workspace or read-only directory, extra policy files, or a tool server started as a
//! host command. Those are choices of whoever controls the host, not of an API caller:
//! only versions the host's operator registered (`agentspace definition register`) may
//! name them, and those run with their relative paths resolved against the directory of
//! the file they were registered from. Either way the registered text is what runs (its
//! copy in the run's directory), never the file on disk as it is now.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentspace_core::{Definition, Name};

use crate::error::{DefinitionProblem, ServerError};
use crate::store::random_hex;

/// The most of each of `agentspace run`'s output streams kept in a run's `run.log`.
const RUN_LOG_BYTES: u64 = 256 * 1024;

/// Copies the first `limit` bytes of `from` into `to` and reads (discards) the rest
/// until it ends, so the writer never blocks on a full pipe.
fn keep_head(mut from: impl std::io::Read, mut to: std::fs::File, limit: u64) {
    use std::io::Write as _;
    let mut buf = [0u8; 16 * 1024];
    let mut kept = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let room = usize::try_from(limit.saturating_sub(kept)).unwrap_or(usize::MAX);
        let take = n.min(room);
        if take > 0 {
            if let Some(head) = buf.get(..take) {
                // A failing log write loses only the log, never the task.
                let _ = to.write_all(head);
            }
            kept = kept.saturating_add(take as u64);
        }
    }
}

/// How long a start waits for the task's manifest before giving up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Most arguments and bytes of a command.
const MAX_ARGS: usize = 256;
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// The tasks this server started and that still run.
pub(crate) struct Runner {
    /// The `agentspace` binary; `None` when this server cannot start tasks.
    program: Option<PathBuf>,
    /// The control-plane database URL to hand to children (their approvals are held
    /// there, for this server to list and decide).
    database_url: Option<String>,
    /// The audit store URL to hand to children.
    audit_url: Option<String>,
    /// The gateway config file handed to tasks with a boundary (`--config`).
    gateway_config: Option<PathBuf>,
    children: Mutex<HashMap<String, Arc<Mutex<Child>>>>,
    /// Tasks whose `agentspace run` this server started and saw exit (the newest
    /// `MAX_ENDED`): a run that died before recording its end still counts as ended.
    ended: Mutex<BTreeSet<String>>,
}

/// How many ended tasks the runner remembers (task ids sort by start time).
const MAX_ENDED: usize = 10_000;

/// What to start.
pub(crate) struct Start<'a> {
    /// The registered text (what runs).
    pub(crate) text: &'a str,
    /// For a host-trusted version, the file it was registered from: its relative paths
    /// resolve against this file's directory.
    pub(crate) host_source: Option<&'a Path>,
    /// The user the task acts for.
    pub(crate) user: &'a str,
    /// The program to run in the cell and its arguments.
    pub(crate) command: &'a [String],
    /// The definition has egress rules or tools: its task runs a gateway (with the
    /// operator's gateway config).
    pub(crate) boundary: bool,
}

/// Why a definition cannot be started through the API: each host-bound field.
pub(crate) fn host_bound(definition: &Definition) -> Vec<DefinitionProblem> {
    let mut out = Vec::new();
    let mut refuse = |field: &str, what: &str| {
        out.push(DefinitionProblem {
            field: Some(field.to_owned()),
            line: None,
            column: None,
            message: format!(
                "{what} on the server host; a definition registered through the API may not name host paths or host commands: remove the field, or have the host's operator register it with `agentspace definition register` (or run it with `agentspace run` on the host)"
            ),
        });
    };
    if definition.workspace.is_some() {
        refuse("spec.workspace", "the workspace is a directory");
    }
    if !definition.read_only.is_empty() {
        refuse(
            "spec.filesystem.readOnly",
            "read-only directories are directories",
        );
    }
    if !definition.governance.policies.is_empty() {
        refuse("spec.policies", "extra policies are files");
    }
    // The gateway connects from the server host: an internal address it may reach is on
    // the host's own network (its loopback, its private range, the cloud's metadata
    // service). Only the host's operator names those.
    for (i, rule) in definition.governance.egress.iter().enumerate() {
        if rule.internal {
            refuse(
                &format!("spec.egress[{i}].internal"),
                "an `internal: true` rule reaches loopback, private or metadata addresses as seen",
            );
        }
    }
    for (i, server) in definition.governance.tools.servers.iter().enumerate() {
        match server.transport {
            agentspace_core::ToolTransport::Stdio { .. } => refuse(
                &format!("spec.tools[{i}].command"),
                "a stdio tool server is a program started",
            ),
            // Tool servers are reached as internal services (they usually are).
            _ => refuse(
                &format!("spec.tools[{i}].url"),
                "a tool server is reached as an internal service, at an address as resolved",
            ),
        }
    }
    out
}

impl Runner {
    /// A runner that starts tasks with `program` (none when `None`).
    pub(crate) fn new(
        program: Option<PathBuf>,
        database_url: Option<String>,
        audit_url: Option<String>,
        gateway_config: Option<PathBuf>,
    ) -> Self {
        Self {
            program,
            database_url,
            audit_url,
            gateway_config,
            children: Mutex::new(HashMap::new()),
            ended: Mutex::new(BTreeSet::new()),
        }
    }

    /// Starts `agentspace run` for `start.user` with the registered text and command;
    /// returns the task id once its manifest exists.
    pub(crate) fn start(
        &self,
        state_dir: &Path,
        tenant: &Name,
        start: Start<'_>,
    ) -> Result<String, ServerError> {
        let Start {
            text,
            host_source,
            user,
            command,
            boundary,
        } = start;
        let Some(program) = &self.program else {
            return Err(ServerError::conflict(
                "this server does not start tasks",
                "run the control plane with `agentspace serve`, which starts tasks with its own binary",
            ));
        };
        if command.is_empty()
            || command.len() > MAX_ARGS
            || command.iter().map(String::len).sum::<usize>() > MAX_COMMAND_BYTES
            || command.iter().any(|a| a.contains('\0'))
        {
            return Err(ServerError::bad_request(
                "the command is empty, too long, or has a NUL byte",
                format!("give 1 to {MAX_ARGS} arguments, {MAX_COMMAND_BYTES} bytes in all"),
            ));
        }
        let run = random_hex::<16>()?;
        let dir = state_dir
            .join("server")
            .join("runs")
            .join(tenant.as_str())
            .join(&run);
        let io = |what: &str, e: std::io::Error| {
            ServerError::Io(format!("cannot {what} `{}`: {e}", dir.display()))
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| io("create", e))?;
        }
        let file =
            std::path::absolute(dir.join("definition.yaml")).map_err(|e| io("resolve", e))?;
        std::fs::write(&file, text).map_err(|e| io("write into", e))?;
        let log = std::fs::File::create(dir.join("run.log")).map_err(|e| io("write into", e))?;
        let mut cmd = Command::new(program);
        cmd.arg("--state-dir")
            .arg(state_dir)
            .arg("run")
            .arg("-f")
            .arg(&file)
            // One argument, so that no user name can pass for an option.
            .arg(format!("--user={user}"));
        if let (true, Some(config)) = (boundary, &self.gateway_config) {
            cmd.arg("--config").arg(config);
        }
        if let Some(dir) = host_source.and_then(Path::parent) {
            // The registered text runs, resolved as if it were the host's file.
            cmd.arg("--base-dir").arg(dir);
        }
        cmd.arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A clean environment: nothing of the server's reaches the task.
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        // In the environment rather than on the command line, where any local user could
        // read a password in them; `agentspace run` gives the agent none of its own.
        if let Some(url) = &self.audit_url {
            cmd.env("AGENTSPACE_AUDIT_URL", url);
        }
        if let Some(url) = &self.database_url {
            cmd.env("AGENTSPACE_DATABASE_URL", url);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| ServerError::Io(format!("cannot start `{}`: {e}", program.display())))?;
        // What `agentspace run` prints (the agent's output among it; the task keeps its
        // own capped logs) goes to `run.log` up to a limit and is drained past it, so an
        // agent that prints without end cannot fill the server's disk.
        let streams = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            let log = log.try_clone().map_err(|e| io("write into", e))?;
            std::thread::spawn(move || keep_head(stream, log, RUN_LOG_BYTES));
        }
        let child = Arc::new(Mutex::new(child));
        // The task id: the manifest whose definition is this run's file.
        let started = Instant::now();
        let file_text = file.display().to_string();
        loop {
            if let Some(task) = find_task(state_dir, &file_text) {
                self.track(task.clone(), child);
                return Ok(task);
            }
            let exited = child
                .lock()
                .ok()
                .and_then(|mut c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let log = std::fs::read_to_string(dir.join("run.log")).unwrap_or_default();
                let last = log.lines().last().unwrap_or("no output").to_owned();
                return Err(ServerError::conflict(
                    format!("the task did not start ({status}): {last}"),
                    "fix the cause named above (`agentspace doctor` checks the host) and start it again",
                ));
            }
            if started.elapsed() > START_TIMEOUT {
                if let Ok(mut c) = child.lock() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(ServerError::Io(format!(
                    "the task did not start within {} s; see `{}`",
                    START_TIMEOUT.as_secs(),
                    dir.join("run.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Keeps `child` until it exits (reaped by a thread of its own).
    fn track(&self, task: String, child: Arc<Mutex<Child>>) {
        if let Ok(mut children) = self.children.lock() {
            // Forget children that have exited (their reaper collected them).
            let mut gone = Vec::new();
            children.retain(|task, c| {
                let running = c
                    .lock()
                    .map(|mut c| matches!(c.try_wait(), Ok(None)))
                    .unwrap_or(false);
                if !running {
                    gone.push(task.clone());
                }
                running
            });
            children.insert(task, Arc::clone(&child));
            if let Ok(mut ended) = self.ended.lock() {
                ended.extend(gone);
                while ended.len() > MAX_ENDED {
                    ended.pop_first();
                }
            }
        }
        let reaper = Arc::clone(&child);
        std::thread::spawn(move || {
            loop {
                let done = reaper
                    .lock()
                    .map(|mut c| !matches!(c.try_wait(), Ok(None)))
                    .unwrap_or(true);
                if done {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    }

    /// Sends SIGTERM to the `agentspace run` of `task` if this server started it and it
    /// still runs (it forwards the signal to the agent and records the exit); returns
    /// whether it did.
    pub(crate) fn stop(&self, task: &str) -> bool {
        let child = self
            .children
            .lock()
            .ok()
            .and_then(|c| c.get(task).map(Arc::clone));
        let Some(child) = child else {
            return false;
        };
        let Ok(mut c) = child.lock() else {
            return false;
        };
        // Not yet reaped, so the pid is still this child's.
        if !matches!(c.try_wait(), Ok(None)) {
            return false;
        }
        let Ok(pid) = i32::try_from(c.id()) else {
            return false;
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .is_ok()
    }
}

impl Runner {
    /// For a task this server started: whether its `agentspace run` has exited (it
    /// records the task's end, logs complete, before it exits). `None` for other tasks.
    pub(crate) fn ended(&self, task: &str) -> Option<bool> {
        if self.ended.lock().is_ok_and(|e| e.contains(task)) {
            return Some(true);
        }
        let child = self
            .children
            .lock()
            .ok()
            .and_then(|c| c.get(task).map(Arc::clone))?;
        let running = child.lock().ok()?.try_wait().ok()?.is_none();
        Some(!running)
    }
}

fn find_task(state_dir: &Path, definition: &str) -> Option<String> {
    let entries = std::fs::read_dir(state_dir.join("tasks")).ok()?;
    for entry in entries.flatten() {
        let Ok(bytes) = std::fs::read(entry.path().join("manifest.json")) else {
            continue;
        };
        let Ok(m) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if m.get("definition").and_then(|d| d.as_str()) == Some(definition) {
            return m.get("task").and_then(|t| t.as_str()).map(str::to_owned);
        }
    }
    None
}
