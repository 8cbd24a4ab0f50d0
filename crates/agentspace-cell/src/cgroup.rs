//! Cgroup limits for one cell, on cgroup v2, v1 or a hybrid of both.
//!
//! Each controller (memory, pids, cpu) is found where the host mounted it: a v1 hierarchy
//! of its own, or the v2 unified hierarchy. The cell's group is created below the cgroup
//! `agentspace` runs in, under `agentspace/<task>`, so a host that confines Agent Space
//! also confines its cells.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why cgroups could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A controller is not mounted anywhere.
    #[error(
        "the `{0}` cgroup controller is not available on this host (neither a v1 hierarchy nor enabled in cgroup v2); enable it (e.g. boot with systemd.unified_cgroup_hierarchy=1 or mount the v1 controller) — `agentspace doctor` shows what is there"
    )]
    Missing(&'static str),
    /// Reading or writing a cgroup file failed.
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where one controller lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ControllerPlace {
    /// The controller name.
    pub controller: &'static str,
    /// `true` for the v2 unified hierarchy.
    pub v2: bool,
    /// The cgroup directory this process is in, for that controller.
    pub own_dir: PathBuf,
}

/// The controllers a cell needs.
pub(crate) const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// Finds each needed controller from /proc/self/mountinfo and /proc/self/cgroup.
pub(crate) fn locate() -> Result<Vec<ControllerPlace>, CgroupError> {
    let mountinfo = read("/proc/self/mountinfo")?;
    let own = read("/proc/self/cgroup")?;
    let mut v2_mount: Option<PathBuf> = None;
    let mut v1_mounts: Vec<(Vec<String>, PathBuf)> = Vec::new();
    for line in mountinfo.lines() {
        // fields: id parent major:minor root mountpoint options ... - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut rf = right.split_whitespace();
        let fstype = rf.next().unwrap_or("");
        let _source = rf.next();
        let superopts = rf.next().unwrap_or("");
        let mountpoint = left.split_whitespace().nth(4).unwrap_or("");
        if fstype == "cgroup2" && v2_mount.is_none() {
            v2_mount = Some(PathBuf::from(unescape(mountpoint)));
        } else if fstype == "cgroup" {
            let opts = superopts.split(',').map(str::to_owned).collect();
            v1_mounts.push((opts, PathBuf::from(unescape(mountpoint))));
        }
    }
    let mut places = Vec::new();
    for controller in CONTROLLERS {
        if let Some((_, mount)) = v1_mounts
            .iter()
            .find(|(opts, _)| opts.iter().any(|o| o == controller))
        {
            // /proc/self/cgroup: "N:ctrl1,ctrl2:/path"
            let rel = own
                .lines()
                .filter_map(|l| {
                    let mut parts = l.splitn(3, ':').skip(1);
                    parts.next().zip(parts.next())
                })
                .find(|(ctrls, _)| ctrls.split(',').any(|c| c == controller))
                .map(|(_, p)| p.to_owned())
                .unwrap_or_else(|| "/".to_owned());
            places.push(ControllerPlace {
                controller,
                v2: false,
                own_dir: join_rel(mount, &rel),
            });
            continue;
        }
        if let Some(mount) = &v2_mount {
            let available = read(mount.join("cgroup.controllers"))?;
            if available.split_whitespace().any(|c| c == controller) {
                let rel = own
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .unwrap_or("/")
                    .to_owned();
                places.push(ControllerPlace {
                    controller,
                    v2: true,
                    own_dir: join_rel(mount, &rel),
                });
                continue;
            }
        }
        return Err(CgroupError::Missing(controller));
    }
    Ok(places)
}

fn join_rel(mount: &Path, rel: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    }
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn read(path: impl AsRef<Path>) -> Result<String, CgroupError> {
    let path = path.as_ref();
    fs::read_to_string(path).map_err(io_err("read", path))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

/// The limits to apply.
#[derive(Clone, Copy, Debug)]
pub struct CgroupLimits {
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Most tasks.
    pub pids: u32,
    /// Cores.
    pub cpu: f64,
}

/// The cgroups of one cell; removed on drop.
#[derive(Debug)]
pub struct CellCgroup {
    dirs: Vec<(ControllerPlace, PathBuf)>,
}

/// What the cgroups recorded about the cell's life.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupStats {
    /// Processes killed by the out-of-memory killer inside the cell.
    pub oom_kills: u64,
    /// Times a fork failed because the pids limit was reached.
    pub pids_max_hits: u64,
    /// Peak memory use in bytes, when the kernel reports it.
    pub memory_peak_bytes: Option<u64>,
}

impl CellCgroup {
    /// Creates `agentspace/<name>` for each controller and applies the limits.
    pub fn create(name: &str, limits: CgroupLimits) -> Result<Self, CgroupError> {
        let places = locate()?;
        let mut cg = Self { dirs: Vec::new() };
        let mut done_v2 = false;
        for place in places {
            let parent = place.own_dir.join("agentspace");
            if place.v2 && !done_v2 {
                enable_v2_controllers(&place.own_dir, &parent)?;
                done_v2 = true;
            } else if !parent.exists() {
                fs::create_dir_all(&parent).map_err(io_err("create", &parent))?;
            }
            sweep_stale(&parent);
            let dir = parent.join(name);
            if !dir.exists() {
                fs::create_dir(&dir).map_err(io_err("create", &dir))?;
            }
            cg.dirs.push((place, dir));
        }
        for (place, dir) in &cg.dirs {
            match (place.controller, place.v2) {
                ("memory", false) => {
                    write(
                        &dir.join("memory.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    )?;
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &limits.memory_bytes.to_string())?;
                    }
                }
                ("memory", true) => {
                    write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, "0")?;
                    }
                }
                ("pids", _) => write(&dir.join("pids.max"), &limits.pids.to_string())?,
                ("cpu", v2) => {
                    let period: u64 = 100_000;
                    let quota = ((limits.cpu * period as f64).round() as u64).max(1_000);
                    if v2 {
                        write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
                    } else {
                        write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                        write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                }
                _ => {}
            }
        }
        Ok(cg)
    }

    /// The `cgroup.procs` file of each hierarchy, for the cell's init to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// Reads what the kernel counted.
    pub fn stats(&self) -> CgroupStats {
        let mut stats = CgroupStats::default();
        for (place, dir) in &self.dirs {
            match (place.controller, place.v2) {
                ("memory", false) => {
                    stats.oom_kills =
                        keyed(&dir.join("memory.oom_control"), "oom_kill").unwrap_or(0);
                    stats.memory_peak_bytes =
                        fs::read_to_string(dir.join("memory.max_usage_in_bytes"))
                            .ok()
                            .and_then(|s| s.trim().parse().ok());
                }
                ("memory", true) => {
                    stats.oom_kills = keyed(&dir.join("memory.events"), "oom_kill").unwrap_or(0);
                    stats.memory_peak_bytes = fs::read_to_string(dir.join("memory.peak"))
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                }
                ("pids", _) => {
                    stats.pids_max_hits = keyed(&dir.join("pids.events"), "max").unwrap_or(0)
                }
                _ => {}
            }
        }
        stats
    }

    /// Kills every process left in the cell (v2 `cgroup.kill`, else SIGKILL to each pid).
    pub fn kill_all(&self) {
        for (place, dir) in &self.dirs {
            if place.v2 && fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                continue;
            }
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::SIGKILL,
                    );
                }
            }
        }
    }
}

impl Drop for CellCgroup {
    fn drop(&mut self) {
        for (_, dir) in &self.dirs {
            // A cgroup whose last process just exited can be briefly busy.
            for attempt in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) if attempt < 49 => {
                        self.kill_all();
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

/// Removes cells' cgroups left behind when `agentspace` was killed: empty ones older than
/// a minute (a live cell joins its cgroup within milliseconds of its creation, so an old
/// empty one belongs to nobody; rmdir refuses any cgroup that still has processes).
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    // Only directories are cells' groups; `file_type` comes from the directory listing,
    // so the control files are never stat'ed on this path of every cell start.
    for entry in entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
    {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(60));
        if old {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// On v2, controllers must be enabled in every ancestor's `cgroup.subtree_control`. That
/// fails with EBUSY in a non-root cgroup that holds processes ("no internal processes"),
/// so the error says how to give Agent Space a delegated cgroup.
fn enable_v2_controllers(own: &Path, parent: &Path) -> Result<(), CgroupError> {
    let wanted: Vec<&str> = CONTROLLERS.to_vec();
    let enable = |dir: &Path| -> Result<(), CgroupError> {
        let file = dir.join("cgroup.subtree_control");
        let current = read(&file)?;
        for c in &wanted {
            if !current.split_whitespace().any(|x| x == *c) {
                write(&file, &format!("+{c}")).map_err(|e| match e {
                    CgroupError::Io { path, source, .. } => CgroupError::Io {
                        action: "enable a controller in (run agentspace in a delegated cgroup with no processes of its own, e.g. `systemd-run --scope -p Delegate=yes`)",
                        path,
                        source,
                    },
                    other => other,
                })?;
            }
        }
        Ok(())
    };
    enable(own)?;
    if !parent.exists() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    enable(parent)
}
