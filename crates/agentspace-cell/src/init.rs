//! The cell's init: pid 1 of the cell's pid namespace.
//!
//! It builds the cell around itself (cgroups, namespaces, root filesystem, user namespace,
//! privilege drop, Landlock, seccomp), then starts the agent and stays as a minimal init:
//! it reaps zombies, forwards signals to the agent and exits with the agent's status,
//! which makes the kernel kill everything else left in the cell.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, execve, pipe2, read, setresgid, setresuid, setsid};

use crate::spec::{AGENT_ID, CellSpec};
use crate::{landlock, rootfs, sys};

/// Signals the init forwards to the agent.
const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Pipes between the supervisor and the init.
pub(crate) struct InitPipes {
    /// Supervisor → init: one byte once the user namespace's id maps are written; EOF if
    /// the supervisor died.
    pub(crate) from_supervisor: OwnedFd,
    /// Init → supervisor: status lines (`userns`, `started …`, `error …`).
    pub(crate) to_supervisor: OwnedFd,
}

/// Runs the init. Never returns: the process exits with the agent's status.
pub(crate) fn main(
    spec: &CellSpec,
    pipes: InitPipes,
    filter: &libseccomp::ScmpFilterContext,
    landlock_abi: i32,
) -> ! {
    let InitPipes {
        from_supervisor,
        to_supervisor,
    } = pipes;
    let mut status = fs::File::from(to_supervisor);
    match setup(spec, &from_supervisor, &mut status, filter, landlock_abi) {
        Ok(agent) => {
            drop(status);
            drop(from_supervisor);
            reap(agent)
        }
        Err(message) => {
            let _ = writeln!(status, "error {}", message.replace('\n', " "));
            std::process::exit(125)
        }
    }
}

fn setup(
    spec: &CellSpec,
    from_supervisor: &OwnedFd,
    status: &mut fs::File,
    filter: &libseccomp::ScmpFilterContext,
    landlock_abi: i32,
) -> Result<Pid, String> {
    sys::set_parent_death_signal(libc::SIGKILL)
        .map_err(|e| format!("set parent-death signal: {e}"))?;

    // Cgroups first, so everything below (and every child) is limited and accounted.
    for procs in &spec.cgroup_procs {
        fs::write(procs, "0").map_err(|e| format!("join cgroup `{}`: {e}", procs.display()))?;
    }
    let new_net = if spec.netns.is_some() {
        CloneFlags::empty()
    } else {
        CloneFlags::CLONE_NEWNET
    };
    unshare(
        CloneFlags::CLONE_NEWCGROUP
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | new_net,
    )
    .map_err(|e| format!("create namespaces (cgroup, mount, network, uts, ipc): {e}"))?;
    nix::unistd::sethostname(&spec.hostname).map_err(|e| format!("set hostname: {e}"))?;
    match &spec.netns {
        // The door's namespace: its loopback is up and the door listens there.
        Some(path) => {
            let ns = fs::File::open(path).map_err(|e| {
                format!(
                    "open the door's network namespace `{}`: {e}",
                    path.display()
                )
            })?;
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("join the door's network namespace: {e}"))?;
        }
        None => sys::loopback_up().map_err(|e| format!("bring up loopback: {e}"))?,
    }
    rootfs::build_and_enter(spec).map_err(|e| e.to_string())?;

    // No supplementary groups survive (the host's root group above all).
    nix::unistd::setgroups(&[]).map_err(|e| format!("clear supplementary groups: {e}"))?;
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| {
        format!("create user namespace: {e} (are user namespaces enabled? see `agentspace doctor`)")
    })?;
    status
        .write_all(b"userns\n")
        .map_err(|e| format!("talk to supervisor: {e}"))?;
    let mut byte = [0u8; 1];
    match read(from_supervisor, &mut byte) {
        Ok(1) => {}
        _ => return Err("supervisor did not write the user namespace's id maps".to_owned()),
    }

    // From here on: an unprivileged user with no capabilities, for good.
    sys::drop_bounding_and_lock_securebits()
        .map_err(|e| format!("drop capability bounding set: {e}"))?;
    let id = Gid::from_raw(AGENT_ID);
    setresgid(id, id, id).map_err(|e| format!("set gid: {e}"))?;
    let id = Uid::from_raw(AGENT_ID);
    setresuid(id, id, id).map_err(|e| format!("set uid: {e}"))?;
    sys::clear_capabilities().map_err(|e| format!("clear capabilities: {e}"))?;
    sys::set_non_dumpable().map_err(|e| format!("set non-dumpable: {e}"))?;

    let enforced = landlock::restrict(landlock_abi, spec.network_door)?;
    filter
        .load()
        .map_err(|e| format!("load seccomp filter: {e}"))?;
    setsid().map_err(|e| format!("new session: {e}"))?;

    // Changing credentials cleared the parent-death signal: set it again, then make sure
    // the supervisor did not die in between (its end of the pipe would be closed).
    sys::set_parent_death_signal(libc::SIGKILL)
        .map_err(|e| format!("set parent-death signal: {e}"))?;
    if supervisor_gone(from_supervisor) {
        std::process::exit(125);
    }
    let agent = start_agent(spec)?;
    let line = format!("started {} {}\n", enforced.abi, enforced.summary);
    status
        .write_all(line.as_bytes())
        .map_err(|e| format!("talk to supervisor: {e}"))?;
    Ok(agent)
}

fn supervisor_gone(fd: &OwnedFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP))
}

/// Finds the program like a shell would, using the cell's PATH.
fn resolve(program: &str, env: &std::collections::BTreeMap<String, String>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = env
        .get("PATH")
        .map(String::as_str)
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            nix::unistd::access(p.as_path(), nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file()
        })
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("`{}` contains a NUL byte", s.escape_debug()))
}

/// Forks and execs the agent. Returns only once the exec succeeded; an exec failure is
/// reported like a shell would (127 not found, 126 not executable) and ends the init.
fn start_agent(spec: &CellSpec) -> Result<Pid, String> {
    let program = spec.argv.first().ok_or("no command given")?;
    let Some(path) = resolve(program, &spec.env) else {
        let _ = writeln!(
            std::io::stderr(),
            "agentspace: `{program}`: command not found in the cell"
        );
        std::process::exit(127);
    };
    let path_c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| "program path contains a NUL byte".to_owned())?;
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| cstring(&format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    let (exec_r, exec_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;

    match fork_single_threaded()? {
        ForkResult::Child => {
            drop(exec_r);
            // A fresh start: default dispositions (ignored signals survive exec) and an
            // empty mask.
            for sig in Signal::iterator() {
                if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
                    // SAFETY-free: resetting to SIG_DFL installs no handler.
                    let _ = reset_signal(sig);
                }
            }
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            let err = execve(&path_c, &argv, &envp)
                .err()
                .map(|e| e as i32)
                .unwrap_or(0);
            let _ = nix::unistd::write(&exec_w, &err.to_ne_bytes());
            exit_now(if err == libc::ENOENT { 127 } else { 126 });
        }
        ForkResult::Parent { child } => {
            drop(exec_w);
            let mut buf = [0u8; 4];
            let n = read(&exec_r, &mut buf).unwrap_or(0);
            if n == 4 {
                let errno = nix::errno::Errno::from_raw(i32::from_ne_bytes(buf));
                let code = if errno == nix::errno::Errno::ENOENT {
                    127
                } else {
                    126
                };
                let what = if code == 127 {
                    "not found"
                } else {
                    "cannot be executed"
                };
                let _ = writeln!(
                    std::io::stderr(),
                    "agentspace: `{}` {what} in the cell: {}",
                    path.display(),
                    errno.desc()
                );
                let _ = waitpid(child, None);
                std::process::exit(code);
            }
            Ok(child)
        }
    }
}

#[allow(unsafe_code)]
fn fork_single_threaded() -> Result<ForkResult, String> {
    // SAFETY: the init is single-threaded (forked from the single-threaded supervisor).
    unsafe { nix::unistd::fork() }.map_err(|e| format!("fork the agent: {e}"))
}

/// Restores the default disposition of `sig` (an inherited "ignore" would discard it
/// even while blocked).
#[allow(unsafe_code)]
pub fn reset_signal(sig: Signal) -> nix::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, sigaction};
    // SAFETY: SIG_DFL is not a Rust handler, so no handler code can run unsafely.
    unsafe {
        sigaction(
            sig,
            &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
        )
    }
    .map(|_| ())
}

#[allow(unsafe_code)]
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the forked child without running the parent's destructors.
    unsafe { libc::_exit(code) }
}

/// The init loop: reap everything, forward signals, exit with the agent's status.
fn reap(agent: Pid) -> ! {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(*s);
    }
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    loop {
        // Reap first: the agent may already be gone.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == agent => std::process::exit(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == agent => {
                    std::process::exit(128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => continue,
            Ok(sig) => {
                let _ = kill(agent, sig);
            }
        }
    }
}
