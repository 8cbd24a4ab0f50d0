//! Builds the cell's root filesystem in a private mount namespace and pivots into it.
//!
//! The root is a fresh tmpfs holding: read-only binds of the host's system directories,
//! a synthesized /etc (no host secrets), a minimal /dev, a fresh /proc with its sensitive
//! files masked, bounded tmpfs /tmp and /home/agent, the workspace overlay and the
//! read-only binds the definition asks for. No /sys. Runs as real root in the cell's init,
//! before the user namespace exists, so the agent cannot change any of these mounts.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::spec::{AGENT_ID, CellSpec};
use crate::sys;

/// A failure while building the root: the step, the path and the OS error.
#[derive(Debug)]
pub(crate) struct RootfsError(pub(crate) String);

impl std::fmt::Display for RootfsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail(step: &str, path: &Path, e: impl std::fmt::Display) -> RootfsError {
    RootfsError(format!("{step} `{}`: {e}", path.display()))
}

const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// /etc entries copied from the host: loader configuration, certificates, time zone and
/// language data. Nothing that names users, keys or services of the host.
const ETC_COPY: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "mime.types",
    "protocols",
    "services",
    "ethertypes",
    "ssl/openssl.cnf",
    "ssl/certs/ca-certificates.crt",
    "ca-certificates.conf",
    "bash.bashrc",
    "profile",
    "inputrc",
    "debian_version",
    "os-release",
    "python3",
    "python3.11",
    "python3.12",
    "python3.13",
];

const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// /proc files masked with /dev/null: kernel memory, host-wide triggers and timers.
const PROC_MASKED: &[&str] = &[
    "kcore",
    "sysrq-trigger",
    "timer_list",
    "kallsyms",
    "keys",
    "latency_stats",
    "sched_debug",
    "kpageflags",
    "kpagecount",
    "kpagecgroup",
];
/// /proc directories made read-only.
const PROC_READ_ONLY: &[&str] = &["sys", "bus", "fs", "irq", "asound", "acpi", "scsi"];

fn mkdir(path: &Path) -> Result<(), RootfsError> {
    fs::create_dir_all(path).map_err(|e| fail("create directory", path, e))
}

fn bind(src: &Path, dst: &Path, flags: MsFlags) -> Result<(), RootfsError> {
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| fail("bind", src, e))?;
    mount(
        None::<&str>,
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
    .map_err(|e| fail("remount", dst, e))
}

fn tmpfs(dst: &Path, options: &str, flags: MsFlags) -> Result<(), RootfsError> {
    mount(Some("tmpfs"), dst, Some("tmpfs"), flags, Some(options))
        .map_err(|e| fail("mount tmpfs on", dst, e))
}

/// Builds the root under `<task>/rootfs`, pivots into it and leaves the process in
/// `/workspace`.
pub(crate) fn build_and_enter(spec: &CellSpec) -> Result<(), RootfsError> {
    let host_id = spec.host_id;
    // Nothing done here may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("make private", Path::new("/"), e))?;

    let root = spec.task_dir.join("rootfs");
    mkdir(&root)?;
    tmpfs(
        &root,
        "mode=0755,size=16m",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;

    // System directories: the host's, read-only. Symlinks (merged /usr) stay symlinks.
    for dir in SYSTEM_DIRS {
        let host = Path::new(dir);
        let inside = root.join(dir.trim_start_matches('/'));
        match fs::symlink_metadata(host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(host).map_err(|e| fail("read link", host, e))?;
                symlink(&target, &inside).map_err(|e| fail("create link", &inside, e))?;
            }
            Ok(m) if m.is_dir() => {
                mkdir(&inside)?;
                bind(
                    host,
                    &inside,
                    MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                )?;
            }
            _ => {}
        }
    }

    build_etc(&root.join("etc"), spec)?;
    build_dev(&root.join("dev"))?;

    // /proc: fresh, for this pid namespace only, with host-wide files masked.
    let proc_dir = root.join("proc");
    mkdir(&proc_dir)?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| fail("mount proc on", &proc_dir, e))?;
    for name in PROC_MASKED {
        let p = proc_dir.join(name);
        if p.exists() {
            mount(
                Some(&root.join("dev/null")),
                &p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| fail("mask", &p, e))?;
        }
    }
    for name in PROC_READ_ONLY {
        let p = proc_dir.join(name);
        if p.is_dir() {
            bind(
                &p,
                &p,
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            )?;
        }
    }

    // Scratch space, bounded and owned by the agent.
    let owner = format!("uid={host_id},gid={host_id}");
    for (dir, mode) in [("tmp", "1777"), ("home/agent", "0700")] {
        let p = root.join(dir);
        mkdir(&p)?;
        tmpfs(
            &p,
            &format!("mode={mode},size={},{owner}", spec.tmp_bytes),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )?;
    }

    mount_workspace(spec, &root)?;

    for (host, inside) in &spec.read_only {
        let rel = inside.strip_prefix("/").unwrap_or(inside);
        let p = root.join(rel);
        if !host.is_dir() {
            return Err(fail(
                "read-only bind: not a directory:",
                host,
                "check spec.filesystem.readOnly",
            ));
        }
        mkdir(&p)?;
        bind(
            host,
            &p,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )?;
    }

    // Enter the new root and drop every trace of the old one.
    let old = root.join(".oldroot");
    mkdir(&old)?;
    nix::unistd::pivot_root(&root, &old).map_err(|e| fail("pivot_root into", &root, e))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir", Path::new("/"), e))?;
    umount2("/.oldroot", MntFlags::MNT_DETACH)
        .map_err(|e| fail("detach old root", Path::new("/.oldroot"), e))?;
    fs::remove_dir("/.oldroot").map_err(|e| fail("remove", Path::new("/.oldroot"), e))?;
    // The root tmpfs itself becomes read-only: only the mounts above are writable.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| fail("remount read-only", Path::new("/"), e))?;
    nix::unistd::chdir("/workspace").map_err(|e| fail("chdir", Path::new("/workspace"), e))?;
    Ok(())
}

fn build_etc(etc: &Path, spec: &CellSpec) -> Result<(), RootfsError> {
    mkdir(etc)?;
    let write = |name: &str, text: &str| -> Result<(), RootfsError> {
        let p = etc.join(name);
        fs::write(&p, text).map_err(|e| fail("write", &p, e))
    };
    let id = AGENT_ID;
    write(
        "passwd",
        &format!(
            "root:x:0:0:root:/root:/usr/sbin/nologin\nagent:x:{id}:{id}:agent:/home/agent:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
    )?;
    write(
        "group",
        &format!("root:x:0:\nagent:x:{id}:\nnogroup:x:65534:\n"),
    )?;
    write("hostname", &format!("{}\n", spec.hostname))?;
    write(
        "hosts",
        &format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{}\n",
            spec.hostname
        ),
    )?;
    // No resolver is reachable: lookups of anything but /etc/hosts fail at once.
    write(
        "resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )?;
    write(
        "nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n",
    )?;
    for name in ETC_COPY {
        let src = Path::new("/etc").join(name);
        let dst = etc.join(name);
        copy_tree(&src, &dst)?;
    }
    // The tenant's interception CA joins the bundle, so TLS through the door verifies.
    if let Some(extra) = &spec.extra_ca {
        let bundle = etc.join("ssl/certs/ca-certificates.crt");
        let mut text = fs::read_to_string(&bundle).unwrap_or_default();
        let pem = fs::read_to_string(extra).map_err(|e| fail("read CA", extra, e))?;
        text.push('\n');
        text.push_str(&pem);
        mkdir(&etc.join("ssl/certs"))?;
        fs::write(&bundle, text).map_err(|e| fail("write", &bundle, e))?;
    }
    // /etc/alternatives holds only symlinks that Debian's /usr/bin links go through.
    let alt = Path::new("/etc/alternatives");
    if alt.is_dir() {
        let p = etc.join("alternatives");
        mkdir(&p)?;
        bind(
            alt,
            &p,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )?;
    }
    Ok(())
}

/// Copies a file, a symlink or a directory tree if it exists on the host.
fn copy_tree(src: &Path, dst: &Path) -> Result<(), RootfsError> {
    let Ok(meta) = fs::symlink_metadata(src) else {
        return Ok(());
    };
    if let Some(parent) = dst.parent() {
        mkdir(parent)?;
    }
    if meta.file_type().is_symlink() {
        let target = fs::read_link(src).map_err(|e| fail("read link", src, e))?;
        symlink(target, dst).map_err(|e| fail("create link", dst, e))
    } else if meta.is_dir() {
        mkdir(dst)?;
        let entries = fs::read_dir(src).map_err(|e| fail("read", src, e))?;
        for entry in entries.flatten() {
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        Ok(())
    } else if meta.is_file() {
        fs::copy(src, dst).map_err(|e| fail("copy", src, e))?;
        fs::set_permissions(dst, fs::Permissions::from_mode(0o644))
            .map_err(|e| fail("chmod", dst, e))
    } else {
        Ok(())
    }
}

fn build_dev(dev: &Path) -> Result<(), RootfsError> {
    mkdir(dev)?;
    tmpfs(
        dev,
        "mode=0755,size=64k",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        let inside = dev.join(name);
        fs::write(&inside, b"").map_err(|e| fail("create", &inside, e))?;
        mount(
            Some(&host),
            &inside,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| fail("bind", &host, e))?;
    }
    let pts = dev.join("pts");
    mkdir(&pts)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| fail("mount devpts on", &pts, e))?;
    symlink("pts/ptmx", dev.join("ptmx")).map_err(|e| fail("create link", &dev.join("ptmx"), e))?;
    let shm = dev.join("shm");
    mkdir(&shm)?;
    tmpfs(
        &shm,
        "mode=1777,size=64m",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(name)).map_err(|e| fail("create link", &dev.join(name), e))?;
    }
    // The tmpfs holding the nodes goes read-only; the bound nodes keep working.
    mount(
        None::<&str>,
        dev,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| fail("remount read-only", dev, e))
}

/// /workspace: an overlay whose lower layer is the host directory seen through an
/// idmapped mount (its owner appears as the agent), and whose upper layer is in the task
/// directory. Without a workspace, the upper directory alone is bound there.
fn mount_workspace(spec: &CellSpec, root: &Path) -> Result<(), RootfsError> {
    let target = root.join("workspace");
    mkdir(&target)?;
    let upper = spec.task_dir.join("upper");
    let Some(host) = &spec.workspace else {
        return mount(
            Some(&upper),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| fail("bind", &upper, e))
        .and_then(|()| {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                None::<&str>,
            )
            .map_err(|e| fail("remount", &target, e))
        });
    };
    let lower = spec.task_dir.join("lower");
    mkdir(&lower)?;
    let meta = fs::metadata(host).map_err(|e| fail("stat workspace", host, e))?;
    use std::os::unix::fs::MetadataExt;
    let userns = idmap_userns(&root.join("proc"), meta.uid(), meta.gid(), spec.host_id)
        .map_err(|e| fail("create id mapping for", host, e))?;
    sys::idmapped_bind(host, &lower, userns.as_fd()).map_err(|e| {
        fail(
            "idmapped bind (needs Linux 5.19+ and a filesystem that supports idmapped mounts) of",
            host,
            e,
        )
    })?;
    // Relative layer paths (from the task directory): the options are visible in the
    // cell's /proc/self/mountinfo and must not name host paths.
    nix::unistd::chdir(&spec.task_dir).map_err(|e| fail("chdir", &spec.task_dir, e))?;
    mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("lowerdir=lower,upperdir=upper,workdir=work"),
    )
    .map_err(|e| fail("mount overlay on", &target, e))?;
    // The overlay holds its own reference to the lower layer.
    umount2(&lower, MntFlags::MNT_DETACH).map_err(|e| fail("detach", &lower, e))
}

/// A user namespace whose only mapping is `uid -> agent`, `gid -> agent`: used as the id
/// mapping of the workspace mount. A short-lived child creates it; we keep its ns fd.
fn idmap_userns(proc_dir: &Path, uid: u32, gid: u32, agent: u32) -> io::Result<std::fs::File> {
    use nix::sys::wait::waitpid;
    use nix::unistd::{ForkResult, pipe, read};
    let (r, w) = pipe().map_err(io::Error::from)?;
    // SAFETY-free: this process is single-threaded (the cell's init), so fork is sound.
    match unsafe_fork()? {
        ForkResult::Child => {
            drop(w);
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
            let mut buf = [0u8; 1];
            let _ = read(&r, &mut buf);
            // SAFETY: _exit is async-signal-safe and ends this child immediately.
            child_exit(if ok { 0 } else { 1 });
        }
        ForkResult::Parent { child } => {
            drop(r);
            let result = (|| {
                // Wait until the child has its namespace.
                for _ in 0..1000 {
                    let mine = fs::read_link(proc_dir.join("self/ns/user"))?;
                    let theirs = fs::read_link(proc_dir.join(format!("{child}/ns/user")))?;
                    if mine != theirs {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                // The cell's own /proc: this process is in the cell's pid namespace.
                let theirs = proc_dir.join(child.to_string());
                fs::write(theirs.join("uid_map"), format!("{uid} {agent} 1\n"))?;
                fs::write(theirs.join("setgroups"), "deny\n")?;
                fs::write(theirs.join("gid_map"), format!("{gid} {agent} 1\n"))?;
                fs::File::open(theirs.join("ns/user"))
            })();
            drop(w);
            let _ = waitpid(child, None);
            result
        }
    }
}

#[allow(unsafe_code)]
fn unsafe_fork() -> io::Result<nix::unistd::ForkResult> {
    // SAFETY: called only from the cell's init, a single-threaded process.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

#[allow(unsafe_code)]
fn child_exit(code: i32) -> ! {
    // SAFETY: _exit never returns and skips destructors the forked child must not run.
    unsafe { libc::_exit(code) }
}
