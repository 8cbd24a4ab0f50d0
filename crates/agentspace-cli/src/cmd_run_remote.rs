//! `agentspace run --server URL (-f DEFINITION | --agent NAME[@VERSION]) -- COMMAND...`:
//! one task on a control plane, as if it ran here. The definition is registered (a new
//! version only when its text changed) or named; the task starts on the server and acts
//! for the API token's user; its stdout and stderr are followed to this terminal; the
//! exit code is the task's (125 when Agent Space failed). Ctrl-C stops the task on the
//! server (revoked and sent SIGTERM), a second Ctrl-C stops it again (its supervisor
//! then kills the cell), a third stops waiting.

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use serde_json::{Value, json};

use crate::remote::Remote;

/// How long one log request waits on the server for new output.
const FOLLOW_WAIT_SECS: u64 = 25;

/// How long following output survives an unreachable control plane.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// What to run: the arguments of `agentspace run` that apply to a control plane.
pub(crate) struct RemoteRun<'a> {
    pub(crate) definition: Option<&'a std::path::Path>,
    pub(crate) agent: Option<&'a str>,
    pub(crate) user: Option<&'a str>,
    pub(crate) command: &'a [String],
}

/// Runs the task through `remote`; returns its exit code.
pub(crate) fn run(remote: Remote, r: RemoteRun<'_>) -> Result<ExitCode> {
    let me = remote.me()?;
    if let Some(user) = r.user
        && user != me.user
    {
        bail!(
            "`--user {user}`, but the API token is `{}`'s: a task started through the control plane acts for the token's user; drop --user, or use a token of `{user}`",
            me.user
        );
    }
    let (agent, version) = match (r.definition, r.agent) {
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read definition `{}`", path.display()))?;
            let registered = remote
                .post("/v1/definitions", &json!({ "definition": text }))
                .with_context(|| format!("cannot register `{}`", path.display()))?;
            let name = registered
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            (name, registered.get("version").and_then(Value::as_u64))
        }
        (None, Some(agent)) => parse_agent(agent)?,
        _ => bail!("give the definition with -f FILE, or a registered one with --agent NAME"),
    };

    // Signals are taken by a thread of ours from here on (blocked before it starts, so
    // every thread inherits the mask): Ctrl-C stops the task on the server.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
        agentspace_cell::reset_signal(s).with_context(|| format!("cannot reset {s}"))?;
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None).context("cannot block signals")?;
    let remote = Arc::new(remote);
    let stopper = Arc::new(Stopper::default());
    {
        let (remote, stopper) = (Arc::clone(&remote), Arc::clone(&stopper));
        std::thread::spawn(move || {
            while signals.wait().is_ok() {
                stopper.signal(&remote);
            }
        });
    }

    let body = json!({ "agent": agent, "version": version, "command": r.command });
    let started = remote.post("/v1/tasks", &body)?;
    let task = started
        .get("task")
        .and_then(Value::as_str)
        .context("the control plane did not name the started task")?
        .to_owned();
    agentspace_core::TaskId::parse(&task)
        .with_context(|| format!("the control plane named task `{task}`, not a task id"))?;
    stopper.started(&remote, &task);

    let followers: Vec<_> = ["stdout", "stderr"]
        .into_iter()
        .map(|stream| {
            let (remote, task) = (Arc::clone(&remote), task.clone());
            std::thread::spawn(move || follow(&remote, &task, stream))
        })
        .collect();
    for f in followers {
        f.join()
            .map_err(|_| anyhow::anyhow!("following the task's output failed"))??;
    }
    let manifest = remote.get(&format!("/v1/tasks/{task}"))?;
    let code = manifest.get("exit_code").and_then(Value::as_i64).with_context(|| {
        format!(
            "task `{task}` ended without an exit code (state `{}`): see `agentspace tasks show {task}` and the server's log",
            manifest.get("state").and_then(Value::as_str).unwrap_or("unknown")
        )
    })?;
    Ok(ExitCode::from(
        u8::try_from(code).unwrap_or(crate::EXIT_AGENTSPACE_FAILED),
    ))
}

/// `NAME` or `NAME@VERSION`.
fn parse_agent(agent: &str) -> Result<(String, Option<u64>)> {
    match agent.split_once('@') {
        None => Ok((agent.to_owned(), None)),
        Some((name, v)) => match v.parse::<u64>() {
            Ok(v) if v > 0 && !name.is_empty() => Ok((name.to_owned(), Some(v))),
            _ => bail!(
                "`--agent {agent}` is not NAME or NAME@VERSION (a version is a number from 1, as `GET /v1/definitions/NAME/versions` lists)"
            ),
        },
    }
}

/// Copies one of the task's logs to this process's stream until the task has ended
/// and every byte is copied.
fn follow(remote: &Remote, task: &str, stream: &str) -> Result<()> {
    let mut offset = 0u64;
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        let path = format!(
            "/v1/tasks/{task}/logs?stream={stream}&offset={offset}&wait={FOLLOW_WAIT_SECS}"
        );
        let answer = match remote.get_raw(&path) {
            Ok(a) => {
                unreachable_since = None;
                a
            }
            // The control plane restarting or a dropped connection: the task goes on
            // there; ask again for a while before giving up.
            Err(e) if is_connection_error(&e) => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > RECONNECT_FOR {
                    return Err(e.context(format!(
                        "lost the control plane while following task `{task}`, which may still run: see `agentspace tasks show {task}`"
                    )));
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(e) => return Err(e),
        };
        if !answer.body.is_empty() {
            // A closed terminal or pipe must not stop the task; its output stays in
            // the server's log.
            let _ = if stream == "stdout" {
                let mut out = std::io::stdout().lock();
                out.write_all(&answer.body).and_then(|()| out.flush())
            } else {
                let mut err = std::io::stderr().lock();
                err.write_all(&answer.body).and_then(|()| err.flush())
            };
        }
        let header = |name: &str| answer.header_values(name).first().map(|v| v.to_string());
        let next = header("agentspace-log-next")
            .and_then(|v| v.parse::<u64>().ok())
            .context("the control plane's log answer has no `Agentspace-Log-Next`: is it older than this agentspace?")?;
        offset = next;
        if header("agentspace-log-complete").as_deref() == Some("true") {
            return Ok(());
        }
    }
}

fn is_connection_error(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<agentspace_server::client::ClientError>(),
        Some(agentspace_server::client::ClientError::Io { .. })
    )
}

/// What Ctrl-C does: before the task has started, remember it; after, stop the task on
/// the server (twice at most), then stop waiting.
#[derive(Default)]
struct Stopper {
    state: Mutex<StopState>,
}

#[derive(Default)]
struct StopState {
    task: Option<String>,
    signals: u32,
}

impl Stopper {
    fn signal(&self, remote: &Remote) {
        let (task, n) = match self.state.lock() {
            Ok(mut s) => {
                s.signals += 1;
                (s.task.clone(), s.signals)
            }
            Err(_) => return,
        };
        match task {
            None => eprintln!("agentspace: the task will be stopped as soon as it has started"),
            Some(task) if n > 2 => {
                eprintln!(
                    "agentspace: no longer waiting for the task (`agentspace tasks show {}` shows how it ends)",
                    task
                );
                std::process::exit(130);
            }
            Some(task) => stop(remote, &task, n),
        }
    }

    /// The task is running: stop it now if a signal came while it started.
    fn started(&self, remote: &Remote, task: &str) {
        let pending = match self.state.lock() {
            Ok(mut s) => {
                s.task = Some(task.to_owned());
                s.signals
            }
            Err(_) => 0,
        };
        if pending > 0 {
            stop(remote, task, pending);
        }
    }
}

fn stop(remote: &Remote, task: &str, n: u32) {
    match remote.post(
        &format!("/v1/tasks/{task}/stop"),
        &Value::Object(Default::default()),
    ) {
        Ok(_) if n == 1 => eprintln!(
            "agentspace: stopping task {task} on the control plane (Ctrl-C again to kill its cell)"
        ),
        Ok(_) => eprintln!("agentspace: stopping task {task} again (Ctrl-C again to stop waiting)"),
        Err(e) => eprintln!("agentspace: cannot stop task {task}: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_agent;

    #[test]
    fn agents_are_named_with_an_optional_version() {
        assert_eq!(parse_agent("hello").unwrap(), ("hello".to_owned(), None));
        assert_eq!(
            parse_agent("hello@3").unwrap(),
            ("hello".to_owned(), Some(3))
        );
        for bad in ["hello@", "hello@0", "hello@x", "@2"] {
            let e = parse_agent(bad).unwrap_err().to_string();
            assert!(e.contains("NAME@VERSION"), "{bad}: {e}");
        }
    }
}
