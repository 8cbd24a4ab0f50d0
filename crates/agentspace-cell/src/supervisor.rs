//! The supervisor: `agentspace` re-executed as a fresh single-threaded process, the parent
//! of the cell's init. It creates the pid namespace, writes the user namespace's id maps
//! (which needs root outside the cell), enforces the wall-clock limit, turns a double
//! interrupt into a kill, and reports how the cell ended.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, pipe2};

use crate::init::{self, InitPipes};
use crate::spec::{AGENT_ID, CellReport, CellSpec};
use crate::{seccomp, sys};

/// Entry point of the supervisor process. Reads the spec from the path in
/// `$AGENTSPACE_CELL_SPEC`,
/// writes `cell-report.json` beside it and returns the exit code for `agentspace run`.
pub fn supervisor_main() -> u8 {
    if let Err(e) = sys::close_fds_from_3() {
        sys::write_stderr(
            format!("agentspace: cannot close inherited descriptors: {e}\n").as_bytes(),
        );
        return 125;
    }
    let Some(spec_path) = std::env::var_os(crate::launch::SPEC_ENV) else {
        sys::write_stderr(b"agentspace: the cell supervisor needs a spec path\n");
        return 125;
    };
    let spec_path = Path::new(&spec_path);
    run_and_report(spec_path)
}

/// Reads the spec at `spec_path`, runs the cell, writes `cell-report.json` beside it and
/// returns the exit code.
pub(crate) fn run_and_report(spec_path: &Path) -> u8 {
    let report = match fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<CellSpec>(&b).map_err(|e| e.to_string()))
    {
        Ok(spec) => supervise(&spec),
        Err(e) => CellReport {
            exit_code: 125,
            error: Some(format!(
                "cannot read cell spec `{}`: {e}",
                spec_path.display()
            )),
            ..Default::default()
        },
    };
    let out = spec_path.with_file_name("cell-report.json");
    if let Ok(json) = serde_json::to_vec_pretty(&report) {
        let _ = fs::write(out, json);
    }
    u8::try_from(report.exit_code).unwrap_or(125)
}

fn failed(message: String) -> CellReport {
    CellReport {
        exit_code: 125,
        error: Some(message),
        ..Default::default()
    }
}

fn supervise(spec: &CellSpec) -> CellReport {
    if let Err(e) = sys::set_parent_death_signal(libc::SIGKILL) {
        return failed(format!("set parent-death signal: {e}"));
    }
    let landlock_abi = match sys::landlock_abi() {
        Ok(v) => v,
        Err(e) => {
            return failed(format!(
                "landlock is not available ({e}); the cell needs it as an independent layer: enable it with `lsm=...,landlock` on the kernel command line (Linux 5.13+)"
            ));
        }
    };
    let filter = match seccomp::build() {
        Ok(f) => f,
        Err(e) => return failed(format!("build seccomp filter: {e}")),
    };

    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
    ] {
        signals.add(s);
    }
    // Ignored signals are discarded even when blocked: take them back to the default
    // first, so an interrupt always reaches us (and, through us, the agent).
    for s in signals.iter() {
        let _ = crate::init::reset_signal(s);
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None) {
        return failed(format!("block signals: {e}"));
    }
    let sfd = match SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => return failed(format!("signalfd: {e}")),
    };
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        return failed(format!(
            "create pid namespace: {e} (agentspace run needs root; rootless cells are not supported yet)"
        ));
    }
    let pipes = (
        pipe2(nix::fcntl::OFlag::O_CLOEXEC),
        pipe2(nix::fcntl::OFlag::O_CLOEXEC),
    );
    let ((down_r, down_w), (up_r, up_w)) = match pipes {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return failed(format!("pipe: {e}")),
    };

    let started = Instant::now();
    let init_pid = match fork_single_threaded() {
        Err(e) => return failed(format!("fork the cell's init: {e}")),
        Ok(ForkResult::Child) => {
            drop(down_w);
            drop(up_r);
            drop(sfd);
            init::main(
                spec,
                InitPipes {
                    from_supervisor: down_r,
                    to_supervisor: up_w,
                },
                &filter,
                landlock_abi,
            )
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop(down_r);
    drop(up_w);

    let mut report = CellReport::default();
    let mut lines = BufReader::new(fs::File::from(up_r));
    let mut status_open = true;
    let mut interrupts = 0;
    let deadline = started + Duration::from_millis(spec.timeout_ms);
    let mut exit: Option<WaitStatus> = None;

    while exit.is_none() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() && !report.timed_out {
            report.timed_out = true;
            let _ = kill(init_pid, Signal::SIGKILL);
        }
        let timeout = PollTimeout::try_from(remaining.as_millis().min(60_000) as i32)
            .unwrap_or(PollTimeout::MAX);
        let timeout = if report.timed_out {
            PollTimeout::from(100u16)
        } else {
            timeout
        };
        let sfd_raw = sfd.as_fd();
        let up_fd = lines.get_ref().as_fd();
        let mut fds = vec![PollFd::new(sfd_raw, PollFlags::POLLIN)];
        if status_open {
            fds.push(PollFd::new(up_fd, PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, timeout);
        let status_ready = fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
        drop(fds);

        if status_ready {
            let mut line = String::new();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => status_open = false,
                Ok(_) => handle_status(line.trim_end(), init_pid, spec, &down_w, &mut report),
            }
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => {}
                Ok(Signal::SIGINT) => {
                    interrupts += 1;
                    if interrupts >= 2 {
                        report.interrupted = true;
                        let _ = kill(init_pid, Signal::SIGKILL);
                    } else {
                        let _ = kill(init_pid, Signal::SIGINT);
                    }
                }
                Ok(sig) => {
                    let _ = kill(init_pid, sig);
                }
                Err(_) => {}
            }
        }
        match waitpid(init_pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => exit = Some(status),
            Err(_) => exit = Some(WaitStatus::Exited(init_pid, 125)),
        }
    }
    // Drain the last status lines (an error written just before exit).
    if status_open {
        let mut rest = String::new();
        while lines.read_line(&mut rest).unwrap_or(0) > 0 {
            handle_status(rest.trim_end(), init_pid, spec, &down_w, &mut report);
            rest.clear();
        }
    }
    match exit {
        Some(WaitStatus::Exited(_, code)) => {
            report.exit_code = code;
            report.agent_exit = Some(code);
            if code > 128 && code < 160 {
                report.signal = Some(code - 128);
            }
        }
        Some(WaitStatus::Signaled(_, sig, _)) => {
            report.exit_code = 128 + sig as i32;
            report.signal = Some(sig as i32);
        }
        _ => report.exit_code = 125,
    }
    if report.error.is_some() {
        report.exit_code = 125;
        report.agent_exit = None;
    }
    report
}

fn handle_status(
    line: &str,
    init_pid: Pid,
    spec: &CellSpec,
    down: &std::os::fd::OwnedFd,
    report: &mut CellReport,
) {
    if line == "userns" {
        let id = spec.host_id;
        let written = fs::write(
            format!("/proc/{init_pid}/uid_map"),
            format!("{AGENT_ID} {id} 1\n"),
        )
        .and_then(|()| {
            fs::write(
                format!("/proc/{init_pid}/gid_map"),
                format!("{AGENT_ID} {id} 1\n"),
            )
        });
        match written {
            Ok(()) => {
                // Our end stays open: the init treats its closing as our death.
                let _ = nix::unistd::write(down, b"1");
            }
            Err(e) => {
                report.error = Some(format!("write the cell's user namespace id maps: {e}"));
                let _ = kill(init_pid, Signal::SIGKILL);
            }
        }
    } else if let Some(rest) = line.strip_prefix("started ") {
        let (abi, summary) = rest.split_once(' ').unwrap_or((rest, ""));
        report.landlock_abi = abi.parse().ok();
        report.landlock = Some(summary.to_owned());
    } else if let Some(message) = line.strip_prefix("error ") {
        report.error = Some(message.to_owned());
    }
}

#[allow(unsafe_code)]
fn fork_single_threaded() -> nix::Result<ForkResult> {
    // SAFETY: the supervisor is a freshly exec'd process that never starts threads.
    unsafe { nix::unistd::fork() }
}
