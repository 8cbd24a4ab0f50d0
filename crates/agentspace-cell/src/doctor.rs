//! What this host supports for cells, checked by trying rather than by reading config.

use std::fs;

use crate::cgroup;
use crate::sys;

/// One capability of the host.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether cells can use it.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do when it is missing.
    pub fix: Option<&'static str>,
}

/// Everything `agentspace doctor` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HostReport {
    /// Kernel release.
    pub kernel: String,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl HostReport {
    /// Whether every required check passed.
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

fn check(name: &'static str, ok: bool, detail: String, fix: &'static str) -> Check {
    Check {
        name,
        ok,
        detail,
        fix: (!ok).then_some(fix),
    }
}

/// Probes the host.
pub fn host_report() -> HostReport {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mut checks = Vec::new();

    let root = nix::unistd::geteuid().is_root();
    checks.push(check(
        "root",
        root,
        if root {
            "running as uid 0".into()
        } else {
            "not root".into()
        },
        "run agentspace as root (rootless cells are not supported yet)",
    ));

    let max_userns = fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    checks.push(check(
        "user namespaces",
        max_userns.is_some_and(|n| n > 0),
        format!("user.max_user_namespaces = {}", max_userns.map_or("unknown".into(), |n| n.to_string())),
        "sysctl -w user.max_user_namespaces=15000 (and kernel.unprivileged_userns_clone=1 where it exists)",
    ));

    let ns_files = ["pid", "net", "mnt", "ipc", "uts", "cgroup", "user"];
    let missing: Vec<_> = ns_files
        .iter()
        .filter(|n| fs::metadata(format!("/proc/self/ns/{n}")).is_err())
        .collect();
    checks.push(check(
        "namespaces",
        missing.is_empty(),
        if missing.is_empty() {
            "pid net mnt ipc uts cgroup user".into()
        } else {
            format!("missing: {missing:?}")
        },
        "use a kernel built with CONFIG_*_NS for each namespace",
    ));

    match sys::landlock_abi() {
        Ok(abi) => checks.push(check(
            "landlock",
            true,
            format!(
                "ABI {abi}{}{}",
                if abi >= 4 {
                    ", tcp rules"
                } else {
                    ", no tcp rules (needs ABI 4)"
                },
                if abi >= 6 {
                    ", scoping"
                } else {
                    ", no scoping (needs ABI 6)"
                }
            ),
            "",
        )),
        Err(e) => checks.push(check(
            "landlock",
            false,
            format!("unavailable: {e}"),
            "boot with `lsm=landlock,...` on Linux 5.13+",
        )),
    }

    let seccomp = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("Seccomp:"))
            .map(str::to_owned)
    });
    checks.push(check(
        "seccomp",
        seccomp.is_some(),
        seccomp.unwrap_or_else(|| "no Seccomp field in /proc/self/status".into()),
        "use a kernel with CONFIG_SECCOMP_FILTER",
    ));

    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let overlay = filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("overlay"));
    checks.push(check(
        "overlayfs",
        overlay,
        if overlay {
            "available".into()
        } else {
            "not in /proc/filesystems".into()
        },
        "modprobe overlay",
    ));

    let idmap = kernel_at_least(&kernel, 5, 19);
    checks.push(check(
        "idmapped mounts",
        idmap,
        format!("kernel {kernel}"),
        "Linux 5.19 or newer is needed for overlayfs on idmapped layers",
    ));

    match cgroup::locate() {
        Ok(places) => {
            for p in places {
                checks.push(check(
                    match p.controller {
                        "memory" => "cgroup memory",
                        "pids" => "cgroup pids",
                        _ => "cgroup cpu",
                    },
                    true,
                    format!(
                        "{} at {}",
                        if p.v2 { "v2" } else { "v1" },
                        p.own_dir.display()
                    ),
                    "",
                ));
            }
        }
        Err(e) => checks.push(check(
            "cgroups",
            false,
            e.to_string(),
            "mount the memory, pids and cpu controllers (v1 or v2)",
        )),
    }
    // Not required, but it decides how fast cells start: without it every cgroup
    // migration waits for an RCU grace period (milliseconds). See docs/operations.md.
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let favor = mounts
        .lines()
        .any(|l| l.contains(" cgroup2 ") && l.contains("favordynmods"));
    checks.push(check(
        "cgroup attach",
        true,
        if favor {
            "cgroup2 favordynmods on: fast cell start".into()
        } else {
            "cgroup2 favordynmods off: each cell start waits ~10 ms for an RCU grace period (optional: mount -o remount,favordynmods on the cgroup2 mount)".into()
        },
        "",
    ));
    // The network door of cells with egress rules: a namespace with its route, its
    // nftables redirect and its sockets, made for real and thrown away.
    let door = if root {
        crate::door::NetworkDoor::create()
            .map(drop)
            .map_err(|e| e.to_string())
    } else {
        Err("needs root".to_owned())
    };
    checks.push(check(
        "network door",
        door.is_ok(),
        match door {
            Ok(()) => "namespace, local route, nftables redirect and door sockets work".into(),
            Err(e) => e,
        },
        "install iproute2 and nftables (apt-get install iproute2 nftables) and run as root; the kernel needs nf_tables with nat (CONFIG_NFT_NAT, CONFIG_NFT_REDIR)",
    ));
    HostReport { kernel, checks }
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}
