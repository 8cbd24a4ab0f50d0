//! The escape suite: real attacks from inside a real cell. Every attempt must fail and the
//! host must be unaffected. Prints "N attempts, N blocked" and fails on any success.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use super::support::{Ran, Sandbox, privileged};

struct Attempt {
    name: &'static str,
    blocked: bool,
    detail: String,
}

fn check(name: &'static str, r: &Ran, blocked: bool) -> Attempt {
    Attempt {
        name,
        blocked,
        detail: format!("{r:?}"),
    }
}

/// A Python attempt that prints `ESCAPED` if it got through and `BLOCKED <why>` if not.
fn py_attempt(s: &Sandbox, name: &'static str, body: &str) -> Attempt {
    let program = format!(
        "import os, sys, socket, ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\ntry:\n{}\nexcept Exception as e:\n    print('BLOCKED', type(e).__name__, e)\n",
        indent(body)
    );
    let r = s.py(&program);
    let blocked = r.stdout.contains("BLOCKED") && !r.stdout.contains("ESCAPED");
    check(name, &r, blocked)
}

fn indent(body: &str) -> String {
    body.lines().map(|l| format!("    {l}\n")).collect()
}

/// A raw system call that must fail; prints BLOCKED with its errno.
fn syscall_attempt(s: &Sandbox, name: &'static str, nr: u32, args: &str) -> Attempt {
    py_attempt(
        s,
        name,
        &format!(
            "r = libc.syscall({nr}{args})\nif r == -1:\n    print('BLOCKED', errno.errorcode.get(ctypes.get_errno()))\nelse:\n    print('ESCAPED', r)"
        ),
    )
}

#[test]
fn escape_suite() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let host_secret_dir = s.path().join("host-only");
    std::fs::create_dir_all(&host_secret_dir).unwrap();
    let mut results = Vec::new();

    // Host files.
    let r = s.sh("cat /etc/shadow; ls /root; cat /host-only 2>&1; exit 0");
    results.push(check(
        "read the host's /etc/shadow and /root",
        &r,
        !r.stdout.contains("root:") && !r.stdout.contains("$"),
    ));
    let r = s.sh(&format!(
        "cat {}/hello.yaml 2>&1; ls {} 2>&1; exit 0",
        s.path().display(),
        host_secret_dir.display()
    ));
    results.push(check(
        "read the definition and host paths outside the workspace",
        &r,
        !r.stdout.contains("apiVersion"),
    ));

    let r = s.sh("for p in /etc/x /usr/x /bin/x /x /proc/x /dev/x /mnt/x; do echo hi > $p 2>/dev/null && echo WROTE $p; done; exit 0");
    results.push(check(
        "write outside the workspace",
        &r,
        !r.stdout.contains("WROTE") && !std::path::Path::new("/usr/x").exists(),
    ));

    let before = std::fs::read_to_string(s.path().join("workspace/notes.txt")).unwrap();
    let r = s.sh("echo tampered > /workspace/notes.txt; rm -f /workspace/notes.txt; grep -h workspace /proc/self/mountinfo; exit 0");
    let after = std::fs::read_to_string(s.path().join("workspace/notes.txt")).unwrap();
    results.push(check(
        "modify the workspace's host (lower) directory",
        &r,
        before == after && !r.stdout.contains("lowerdir=/"),
    ));

    // Processes.
    let me = std::process::id();
    let r = s.sh(&format!("ls /proc | grep -c '^[0-9]'; kill -0 {me} 2>&1 && echo SIGNALLED; cat /proc/{me}/cmdline 2>&1; exit 0"));
    let visible: usize = r
        .stdout
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(999);
    results.push(check(
        "see or signal host processes",
        &r,
        visible < 10 && !r.stdout.contains("SIGNALLED"),
    ));
    let r =
        s.sh("cat /proc/1/environ 2>&1 | head -c 200; ls -l /proc/1/root/ 2>&1 | head -3; exit 0");
    results.push(check(
        "read the cell init's environment and root",
        &r,
        !r.stdout.contains("AGENTSPACE_CELL_SPEC") && !r.stdout.contains("usr"),
    ));

    // A descriptor the caller left open (a shell's `7<file`) must not reach the cell.
    let secret = s.path().join("host-secret.txt");
    std::fs::write(&secret, "host-only-marker\n").unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 7<'{}'; exec '{}' --state-dir '{}' run -f '{}' -- sh -c 'cat <&7; ls /proc/self/fd; exit 0'",
            secret.display(),
            super::support::agentspace_bin(),
            s.state().display(),
            s.path().join("hello.yaml").display(),
        ))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let r: Ran = out.into();
    results.push(check(
        "read a descriptor inherited from the caller",
        &r,
        r.code == 0
            && !r.stdout.contains("host-only-marker")
            && !r.stdout.lines().any(|l| l == "7"),
    ));

    // Kernel surfaces.
    results.push(py_attempt(&s, "mount a filesystem", "r = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)\nprint('ESCAPED' if r == 0 else 'BLOCKED %d' % ctypes.get_errno())"));
    results.push(py_attempt(&s, "unshare a user namespace", "r = libc.unshare(0x10000000)\nprint('ESCAPED' if r == 0 else 'BLOCKED %d' % ctypes.get_errno())"));
    let r = s.sh("unshare -Ur id 2>&1; unshare -n true 2>&1 && echo ESCAPED; exit 0");
    results.push(check(
        "unshare(1) namespaces",
        &r,
        !r.stdout.contains("ESCAPED") && !r.stdout.contains("uid=0"),
    ));
    results.push(py_attempt(&s, "setns into another network namespace", "fd = os.open('/proc/1/ns/net', os.O_RDONLY)\nr = libc.setns(fd, 0)\nprint('ESCAPED' if r == 0 else 'BLOCKED %d' % ctypes.get_errno())"));
    results.push(syscall_attempt(
        &s,
        "load a kernel module (finit_module)",
        313,
        ", 0, b'', 0",
    ));
    results.push(syscall_attempt(
        &s,
        "load a kernel module (init_module)",
        175,
        ", None, 0, b''",
    ));
    results.push(syscall_attempt(&s, "bpf", 321, ", 0, None, 0"));
    results.push(syscall_attempt(
        &s,
        "perf_event_open",
        298,
        ", None, 0, -1, -1, 0",
    ));
    results.push(syscall_attempt(&s, "keyctl", 250, ", 0, 0, 0, 0, 0"));
    results.push(syscall_attempt(
        &s,
        "add_key",
        248,
        ", b'user', b'k', b'v', 1, -2",
    ));
    results.push(syscall_attempt(&s, "userfaultfd", 323, ", 0"));
    results.push(syscall_attempt(&s, "io_uring_setup", 425, ", 8, None"));
    results.push(syscall_attempt(
        &s,
        "open_by_handle_at",
        304,
        ", -100, None, 0",
    ));
    results.push(syscall_attempt(&s, "kexec_load", 246, ", 0, 0, None, 0"));
    results.push(py_attempt(&s, "ptrace the cell's init", "r = libc.ptrace(16, 1, None, None)\nprint('ESCAPED' if r == 0 else 'BLOCKED %d' % ctypes.get_errno())"));
    results.push(py_attempt(&s, "mknod a device", "import stat\nos.mknod('/tmp/mem', stat.S_IFCHR | 0o600, os.makedev(1, 1))\nprint('ESCAPED')"));
    results.push(py_attempt(
        &s,
        "inject keystrokes into the terminal (TIOCSTI)",
        "import fcntl, termios\nfcntl.ioctl(0, termios.TIOCSTI, b'x')\nprint('ESCAPED')",
    ));
    let sysrq_before = std::fs::read_to_string("/proc/sys/vm/overcommit_ratio").unwrap();
    let r = s.sh("echo 77 > /proc/sys/vm/overcommit_ratio 2>/dev/null && echo WROTE; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null && echo WROTE; ls /sys 2>/dev/null && echo SYS-VISIBLE; exit 0");
    let sysrq_after = std::fs::read_to_string("/proc/sys/vm/overcommit_ratio").unwrap();
    results.push(check(
        "write /proc/sys and /sys",
        &r,
        !r.stdout.contains("WROTE")
            && !r.stdout.contains("SYS-VISIBLE")
            && sysrq_before == sysrq_after,
    ));
    let r = s.sh("for b in /usr/bin/su /bin/su /usr/bin/mount /usr/bin/passwd /usr/bin/newgrp /usr/bin/chsh; do [ -u $b ] && $b -c id root </dev/null 2>&1; done; mount -t tmpfs none /tmp 2>&1; id; exit 0");
    results.push(check(
        "use setuid binaries to gain root",
        &r,
        !r.stdout.contains("uid=0") && !r.stdout.contains("euid=0"),
    ));
    let r = s.sh("grep -E '^Cap(Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp:' /proc/self/status; cat /proc/self/uid_map");
    let caps_zero = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("Cap"))
        .all(|l| l.ends_with("0000000000000000"));
    let host_uid: u64 = r
        .stdout
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    results.push(check(
        "hold a capability or run as host root",
        &r,
        caps_zero && host_uid >= 0x4000_0000 && r.stdout.contains("NoNewPrivs:\t1"),
    ));

    // Network.
    results.push(py_attempt(
        &s,
        "open a raw socket",
        "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\nprint('ESCAPED')",
    ));
    results.push(py_attempt(
        &s,
        "open a packet socket",
        "socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)\nprint('ESCAPED')",
    ));
    results.push(py_attempt(
        &s,
        "connect to a public address",
        "socket.create_connection(('1.1.1.1', 443), timeout=3)\nprint('ESCAPED')",
    ));
    results.push(py_attempt(&s, "send UDP to a public DNS server", "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nu.sendto(b'x', ('8.8.8.8', 53))\nprint('ESCAPED')"));
    results.push(py_attempt(
        &s,
        "resolve a public name",
        "socket.getaddrinfo('example.com', 443)\nprint('ESCAPED')",
    ));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let a = py_attempt(
        &s,
        "connect to a listener on the host's 127.0.0.1",
        &format!("socket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('ESCAPED')"),
    );
    let accepted = listener.accept().is_ok();
    results.push(Attempt {
        blocked: a.blocked && !accepted,
        ..a
    });
    let abstract_name = format!("agentspace-escape-test-{}", std::process::id());
    let unix = bind_abstract(&abstract_name);
    let a = py_attempt(
        &s,
        "connect to a host abstract unix socket",
        &format!(
            "u = socket.socket(socket.AF_UNIX)\nu.connect('\\0{abstract_name}')\nprint('ESCAPED')"
        ),
    );
    let accepted = unix.accept().is_ok();
    results.push(Attempt {
        blocked: a.blocked && !accepted,
        ..a
    });

    // Landlock's network rules stand on their own: even on the cell's own loopback, where
    // the network namespace alone would allow it, no TCP port can be bound.
    results.push(py_attempt(
        &s,
        "bind a TCP port inside the cell (Landlock, independent of the namespace)",
        "t = socket.socket()\nt.bind(('127.0.0.1', 8080))\nprint('ESCAPED')",
    ));

    // Resources.
    let small = s.definition(
        "small.yaml",
        &super::support::HELLO
            .replace("memory: 256Mi", "memory: 64Mi")
            .replace("pids: 64", "pids: 32")
            .replace("timeout: 60s", "timeout: 3s"),
    );
    let started = std::time::Instant::now();
    let bomb = std::thread::spawn({
        let small = small.clone();
        let s2 = Sandbox {
            dir: tempfile::tempdir().unwrap(),
        };
        move || s2.run(&small, &["sh", "-c", "f(){ f | f & }; f; sleep 2"])
    });
    std::thread::sleep(Duration::from_millis(500));
    // The host can still start processes while the bomb runs.
    let host_ok = std::process::Command::new("true")
        .status()
        .is_ok_and(|st| st.success());
    let r = bomb.join().unwrap();
    results.push(check(
        "fork bomb",
        &r,
        host_ok && r.stderr.contains("limit of 32 processes"),
    ));
    let r = s.run(
        &small,
        &[
            "python3",
            "-c",
            "x = bytearray(512 * 1024 * 1024); print('ESCAPED')",
        ],
    );
    let m = s.last_manifest();
    results.push(check(
        "memory bomb",
        &r,
        r.code == 137
            && !r.stdout.contains("ESCAPED")
            && m["limits_hit"]
                .as_array()
                .unwrap()
                .contains(&"memory".into()),
    ));
    let r = s.run(&small, &["sh", "-c", "dd if=/dev/zero of=/tmp/fill bs=1M count=1024 2>&1; dd if=/dev/zero of=/home/agent/fill bs=1M count=1024 2>&1; exit 0"]);
    results.push(check(
        "fill /tmp and home",
        &r,
        r.stdout.contains("No space left on device") && r.code == 0,
    ));
    let r = s.run(
        &small,
        &["sh", "-c", "trap '' TERM INT HUP; sleep 30; echo ESCAPED"],
    );
    let m = s.last_manifest();
    results.push(check(
        "run past the timeout",
        &r,
        r.code == 137
            && !r.stdout.contains("ESCAPED")
            && started.elapsed() < Duration::from_secs(60)
            && m["limits_hit"]
                .as_array()
                .unwrap()
                .contains(&"timeout".into()),
    ));

    let blocked = results.iter().filter(|a| a.blocked).count();
    for a in &results {
        eprintln!(
            "{} {}",
            if a.blocked { "blocked " } else { "ESCAPED " },
            a.name
        );
        if !a.blocked {
            eprintln!("{}", a.detail);
        }
    }
    println!("{} attempts, {} blocked", results.len(), blocked);
    eprintln!("{} attempts, {} blocked", results.len(), blocked);
    assert_eq!(blocked, results.len(), "some escape attempts succeeded");
}

fn bind_abstract(name: &str) -> UnixListener {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let l = UnixListener::bind_addr(&addr).unwrap();
    l.set_nonblocking(true).unwrap();
    l
}
