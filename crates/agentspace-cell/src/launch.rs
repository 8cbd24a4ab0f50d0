//! The launcher side: prepares the task directory and starts the supervisor.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::spec::{CellReport, CellSpec};
use crate::sys;

/// The hidden first argument that turns the `agentspace` binary into the supervisor.
pub const SUPERVISOR_ARG: &str = "__cell-supervisor";

/// The environment variable that carries the spec path to the supervisor.
pub(crate) const SPEC_ENV: &str = "AGENTSPACE_CELL_SPEC";

/// Why a cell could not be started.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    /// A task directory entry could not be created.
    #[error("cannot prepare `{path}`: {source}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The supervisor could not be started.
    #[error("cannot start the cell supervisor `{exe}`: {source}")]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Waiting for the supervisor failed.
    #[error("lost the cell supervisor: {0}")]
    Wait(io::Error),
    /// Cells need root for now.
    #[error(
        "running a cell needs root (uid 0); rootless cells are not supported yet — run with sudo, or see docs/operations.md"
    )]
    NotRoot,
    /// The network door could not be created.
    #[error("cannot create the cell's network door: {0}")]
    Door(String),
    /// The workspace given does not exist or is not a directory.
    #[error("workspace `{0}` is not a directory; create it or fix spec.workspace")]
    Workspace(PathBuf),
}

fn prep(path: &Path) -> impl FnOnce(io::Error) -> CellError + '_ {
    move |source| CellError::Prepare {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the task directory layout: `upper/` (the workspace's writes, owned by the
/// agent's host uid), `work/` (overlay scratch), `rootfs/` and `lower/` (mount points).
pub fn prepare_task_dir(task_dir: &Path, host_id: u32) -> Result<(), CellError> {
    for sub in ["", "upper", "work", "rootfs", "lower"] {
        let p = task_dir.join(sub);
        fs::create_dir_all(&p).map_err(prep(&p))?;
    }
    fs::set_permissions(task_dir, fs::Permissions::from_mode(0o711)).map_err(prep(task_dir))?;
    let upper = task_dir.join("upper");
    chown(&upper, Some(host_id), Some(host_id)).map_err(prep(&upper))?;
    fs::set_permissions(&upper, fs::Permissions::from_mode(0o755)).map_err(prep(&upper))?;
    let work = task_dir.join("work");
    fs::set_permissions(&work, fs::Permissions::from_mode(0o700)).map_err(prep(&work))?;
    Ok(())
}

/// Starts cells by re-executing an `agentspace` binary as the supervisor.
#[derive(Clone, Debug)]
pub struct Launcher {
    exe: PathBuf,
}

impl Launcher {
    /// A launcher that re-executes the running binary (which must call
    /// [`crate::supervisor_main`] when its first argument is [`SUPERVISOR_ARG`]).
    pub fn current_exe() -> Self {
        Self {
            exe: PathBuf::from("/proc/self/exe"),
        }
    }

    /// Starts the cell described by `spec`. The agent's stdin is this process's stdin;
    /// its stdout and stderr are pipes the caller reads from [`RunningCell`].
    pub fn start(&self, spec: &CellSpec) -> Result<RunningCell, CellError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(CellError::NotRoot);
        }
        if let Some(ws) = &spec.workspace
            && !ws.is_dir()
        {
            return Err(CellError::Workspace(ws.clone()));
        }
        let spec_path = spec.task_dir.join("cell.json");
        let json = serde_json::to_vec_pretty(spec).map_err(|e| CellError::Prepare {
            path: spec_path.clone(),
            source: io::Error::other(e),
        })?;
        fs::write(&spec_path, json).map_err(prep(&spec_path))?;
        if sys::thread_count() == Some(1) {
            return start_forked(&spec_path, &spec.task_dir);
        }
        let mut cmd = Command::new(&self.exe);
        // The spec path goes in the environment, not argv: the cell's pid 1 is this process
        // forked, and its argv is world-readable in the cell's /proc while its environment
        // is not (the init is non-dumpable).
        cmd.arg(SUPERVISOR_ARG)
            .env_clear()
            .env(SPEC_ENV, &spec_path)
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (setpgid, prctl).
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                // Own process group: the terminal's Ctrl-C reaches `agentspace run`, which
                // forwards it, rather than every process at once.
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| CellError::Spawn {
            exe: self.exe.clone(),
            source,
        })?;
        Ok(RunningCell {
            pid: child.id(),
            stdout: child
                .stdout
                .take()
                .map(|o| fs::File::from(OwnedFd::from(o))),
            stderr: child
                .stderr
                .take()
                .map(|o| fs::File::from(OwnedFd::from(o))),
            child: Some(child),
            report_path: spec.task_dir.join("cell-report.json"),
        })
    }
}

/// A single-threaded launcher (the `agentspace run` case) forks the supervisor instead
/// of re-executing itself: same process tree and guarantees, one exec fewer per cell.
fn start_forked(spec_path: &Path, task_dir: &Path) -> Result<RunningCell, CellError> {
    use nix::unistd::{ForkResult, dup2_stderr, dup2_stdout, pipe2};
    let pipe = || {
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| CellError::Spawn {
            exe: PathBuf::from("fork"),
            source: e.into(),
        })
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    // SAFETY: the caller checked this process is single-threaded, so the child may run
    // ordinary Rust code after fork.
    #[allow(unsafe_code)]
    let forked = unsafe { nix::unistd::fork() };
    match forked.map_err(|e| CellError::Spawn {
        exe: PathBuf::from("fork"),
        source: e.into(),
    })? {
        ForkResult::Child => {
            let setup = (|| -> io::Result<()> {
                nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))?;
                sys::set_parent_death_signal(libc::SIGKILL)?;
                dup2_stdout(&out_w)?;
                dup2_stderr(&err_w)?;
                sys::close_fds_from_3()?;
                nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&nix::sys::signal::SigSet::empty()),
                    None,
                )?;
                Ok(())
            })();
            let code = match setup {
                Ok(()) => crate::supervisor::run_and_report(spec_path),
                Err(e) => {
                    sys::write_stderr(
                        format!("agentspace: cannot start the cell supervisor: {e}\n").as_bytes(),
                    );
                    125
                }
            };
            sys::exit_now(i32::from(code))
        }
        ForkResult::Parent { child } => Ok(RunningCell {
            pid: child.as_raw() as u32,
            stdout: Some(fs::File::from(out_r)),
            stderr: Some(fs::File::from(err_r)),
            child: None,
            report_path: task_dir.join("cell-report.json"),
        }),
    }
}

/// A started cell.
#[derive(Debug)]
pub struct RunningCell {
    pid: u32,
    stdout: Option<fs::File>,
    stderr: Option<fs::File>,
    /// Set when the supervisor was spawned by exec rather than fork.
    child: Option<Child>,
    report_path: PathBuf,
}

impl RunningCell {
    /// The supervisor's pid (signals sent to it reach the agent: one SIGINT is forwarded,
    /// a second kills the cell; SIGTERM, SIGHUP and SIGQUIT are forwarded).
    pub fn supervisor_pid(&self) -> u32 {
        self.pid
    }

    /// The agent's stdout.
    pub fn take_stdout(&mut self) -> Option<fs::File> {
        self.stdout.take()
    }

    /// The agent's stderr.
    pub fn take_stderr(&mut self) -> Option<fs::File> {
        self.stderr.take()
    }

    /// Waits for the cell to end and returns the supervisor's report.
    pub fn wait(mut self) -> Result<CellReport, CellError> {
        let status = match self.child.as_mut() {
            Some(child) => child.wait().map_err(CellError::Wait)?.to_string(),
            None => {
                let pid = nix::unistd::Pid::from_raw(self.pid as i32);
                format!(
                    "{:?}",
                    nix::sys::wait::waitpid(pid, None).map_err(|e| CellError::Wait(e.into()))?
                )
            }
        };
        let report = fs::read(&self.report_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<CellReport>(&b).ok());
        Ok(report.unwrap_or_else(|| CellReport {
            exit_code: 125,
            error: Some(format!(
                "the cell supervisor ended without a report ({status})"
            )),
            ..Default::default()
        }))
    }
}
