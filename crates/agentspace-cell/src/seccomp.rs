//! The cell's seccomp filter: a deny list of system calls a contained program never needs.
//!
//! The cell is a full OS inside, so the filter allows by default and refuses (EPERM) the
//! calls that reach the kernel's privileged or rarely-hardened surfaces. Every entry has
//! its reason next to it; docs/threat-model.md carries the same list. Foreign
//! architectures (32-bit `int 0x80`, x32) kill the process: they are a classic way around
//! a filter written for x86_64 numbers.

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

/// A system call refused in every cell, and why.
pub(crate) const DENIED: &[(&str, &str)] = &[
    // Filesystem namespace surgery: the cell's mounts are fixed before the agent starts.
    ("mount", "changes the mount table"),
    ("umount2", "uncovers masked paths"),
    ("pivot_root", "changes the root"),
    (
        "chroot",
        "root games, with mount tricks a classic escape step",
    ),
    ("fsopen", "new mount API"),
    ("fsconfig", "new mount API"),
    ("fsmount", "new mount API"),
    ("fspick", "new mount API"),
    ("move_mount", "new mount API"),
    ("open_tree", "new mount API"),
    ("mount_setattr", "new mount API"),
    // Namespaces: creating or entering one is how most container escapes start, and new
    // user namespaces expose kernel code written for root.
    ("unshare", "creates namespaces"),
    ("setns", "enters namespaces"),
    // Kernel code loading and replacement.
    ("init_module", "loads kernel code"),
    ("finit_module", "loads kernel code"),
    ("delete_module", "unloads kernel code"),
    ("kexec_load", "replaces the kernel"),
    ("kexec_file_load", "replaces the kernel"),
    // Powerful kernel interfaces with a long history of privilege-escalation bugs.
    ("bpf", "loads programs into the kernel"),
    (
        "perf_event_open",
        "kernel profiling: side channels and escalation bugs",
    ),
    (
        "userfaultfd",
        "stalls kernel threads at will: race-exploit primitive",
    ),
    (
        "io_uring_setup",
        "io_uring operations bypass seccomp and had many escalation bugs",
    ),
    ("io_uring_enter", "see io_uring_setup"),
    ("io_uring_register", "see io_uring_setup"),
    // Keyrings are not namespaced: keys could leak between cells and to the host.
    ("add_key", "kernel keyring, not namespaced"),
    ("request_key", "kernel keyring, not namespaced"),
    ("keyctl", "kernel keyring, not namespaced"),
    // Handles bypass path-based checks (the "shocker" escape).
    (
        "open_by_handle_at",
        "opens files by handle, bypassing path checks",
    ),
    ("name_to_handle_at", "companion of open_by_handle_at"),
    // Debugging other processes: inspection of anything outside is blocked by the pid
    // namespace; inside, ptrace is refused as well so no process can steer another.
    ("ptrace", "controls other processes"),
    ("process_vm_writev", "writes other processes' memory"),
    ("process_vm_readv", "reads other processes' memory"),
    ("kcmp", "compares kernel objects of other processes"),
    // Host-wide state.
    ("reboot", "host-wide"),
    ("swapon", "host-wide"),
    ("swapoff", "host-wide"),
    ("acct", "host-wide process accounting"),
    ("settimeofday", "host clock"),
    ("clock_settime", "host clock"),
    ("clock_adjtime", "host clock"),
    ("adjtimex", "host clock"),
    ("syslog", "kernel log: leaks addresses"),
    ("quotactl", "filesystem quotas"),
    ("quotactl_fd", "filesystem quotas"),
    ("nfsservctl", "kernel nfs server"),
    ("lookup_dcookie", "kernel profiling"),
    ("vhangup", "hangs up the terminal"),
    ("iopl", "raw I/O port access"),
    ("ioperm", "raw I/O port access"),
    ("uselib", "obsolete loader path"),
    ("ustat", "obsolete"),
    ("sysfs", "obsolete"),
    ("_sysctl", "obsolete"),
    (
        "personality",
        "can re-enable legacy layouts and READ_IMPLIES_EXEC",
    ),
    ("fanotify_init", "watches the whole filesystem"),
    ("mknod", "device nodes"),
    ("mknodat", "device nodes"),
];

const CLONE_NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x0000_0080, // CLONE_NEWTIME
];

/// Builds the filter. It is compiled before the cell's init forks so that loading it is a
/// single system call.
pub(crate) fn build() -> Result<ScmpFilterContext, libseccomp::error::SeccompError> {
    let eperm = ScmpAction::Errno(libc::EPERM);
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow)?;
    ctx.set_act_badarch(ScmpAction::KillProcess)?;
    ctx.set_ctl_nnp(true)?;
    for (name, _why) in DENIED {
        // A name this libseccomp does not know is a syscall this kernel/arch does not
        // have; skipping it cannot open anything.
        if let Ok(sys) = ScmpSyscall::from_name(name) {
            ctx.add_rule(eperm, sys)?;
        }
    }
    // clone with any namespace flag: refused. clone3 passes its flags in memory a filter
    // cannot read, so it answers ENOSYS and the C library falls back to clone.
    for flag in CLONE_NS_FLAGS {
        ctx.add_rule_conditional(
            eperm,
            ScmpSyscall::from_name("clone")?,
            &[ScmpArgCompare::new(
                0,
                ScmpCompareOp::MaskedEqual(*flag),
                *flag,
            )],
        )?;
    }
    ctx.add_rule(
        ScmpAction::Errno(libc::ENOSYS),
        ScmpSyscall::from_name("clone3")?,
    )?;
    // Raw and packet sockets: forge traffic, sniff, and bypass the door's TCP/UDP view.
    let socket = ScmpSyscall::from_name("socket")?;
    ctx.add_rule_conditional(
        eperm,
        socket,
        &[ScmpArgCompare::new(
            0,
            ScmpCompareOp::Equal,
            libc::AF_PACKET as u64,
        )],
    )?;
    ctx.add_rule_conditional(
        eperm,
        socket,
        &[ScmpArgCompare::new(
            1,
            ScmpCompareOp::MaskedEqual(0xf),
            libc::SOCK_RAW as u64,
        )],
    )?;
    ctx.add_rule_conditional(
        eperm,
        socket,
        &[ScmpArgCompare::new(
            1,
            ScmpCompareOp::MaskedEqual(0xf),
            10, /* SOCK_PACKET, the obsolete packet socket type */
        )],
    )?;
    // Terminal injection: TIOCSTI pushes keystrokes into the terminal the cell inherited,
    // which the user's shell would then run outside the cell.
    let ioctl = ScmpSyscall::from_name("ioctl")?;
    for request in [libc::TIOCSTI, libc::TIOCLINUX] {
        ctx.add_rule_conditional(
            eperm,
            ioctl,
            &[ScmpArgCompare::new(
                1,
                ScmpCompareOp::MaskedEqual(0xffff_ffff),
                request,
            )],
        )?;
    }
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_every_listed_name_is_known() {
        assert!(build().is_ok());
        let unknown: Vec<_> = DENIED
            .iter()
            .filter(|(n, _)| ScmpSyscall::from_name(n).is_err())
            .map(|(n, _)| *n)
            .collect();
        // Obsolete calls may be missing on x86_64; everything else must resolve.
        for name in unknown {
            assert!(
                ["nfsservctl", "uselib", "ustat", "sysfs", "_sysctl"].contains(&name),
                "{name}"
            );
        }
    }
}
