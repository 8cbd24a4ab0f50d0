//! Shared fixtures: a temporary state directory, definitions, and running the binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn agentspace_bin() -> &'static str {
    env!("CARGO_BIN_EXE_agentspace")
}

/// Privileged tests need root. In CI (CI=true) they must never skip.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "privileged tests must run as root in CI (they need namespaces, mounts and cgroups)"
        );
    }
    eprintln!(
        "skipping: this test needs root (namespaces, mounts, cgroups); run the suite with sudo"
    );
    false
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for Ran {
    fn from(o: Output) -> Self {
        Ran {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub const HELLO: &str = "apiVersion: agentspace/v1
kind: Agent
metadata:
  name: hello
  tenant: acme
spec:
  workspace: ./workspace
  resources:
    memory: 256Mi
    pids: 64
    cpu: 1.0
    timeout: 60s
";

impl Sandbox {
    /// A temp dir with `workspace/notes.txt` and `hello.yaml`.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("agentspace-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("workspace")).unwrap();
        std::fs::write(
            dir.path().join("workspace/notes.txt"),
            "hello from the host\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("hello.yaml"), HELLO).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes a definition file and returns its path.
    pub fn definition(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(agentspace_bin());
        c.arg("--state-dir").arg(self.state());
        c.stdin(Stdio::null());
        c
    }

    /// `agentspace run -f DEF -- ARGS...`
    pub fn run(&self, def: &Path, args: &[&str]) -> Ran {
        let mut c = self.command();
        c.arg("run").arg("-f").arg(def).arg("--").args(args);
        c.output().unwrap().into()
    }

    /// Runs a shell script in a hello cell.
    pub fn sh(&self, script: &str) -> Ran {
        self.run(&self.path().join("hello.yaml"), &["sh", "-c", script])
    }

    /// Runs a Python program in a hello cell.
    pub fn py(&self, program: &str) -> Ran {
        self.run(&self.path().join("hello.yaml"), &["python3", "-c", program])
    }

    /// The manifests of all tasks run in this sandbox.
    pub fn manifests(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.state().join("tasks"))
            .unwrap()
            .flatten()
        {
            let text = std::fs::read_to_string(e.path().join("manifest.json")).unwrap();
            out.push(serde_json::from_str(&text).unwrap());
        }
        out.sort_by(|a: &serde_json::Value, b| a["task"].as_str().cmp(&b["task"].as_str()));
        out
    }

    pub fn last_manifest(&self) -> serde_json::Value {
        self.manifests().pop().expect("a task ran")
    }

    /// The audit events (`audit query --format jsonl` with `filter`), oldest first.
    pub fn audit_events(&self, filter: &[&str]) -> Vec<serde_json::Value> {
        let out = self
            .command()
            .args(["audit", "query", "--format", "jsonl"])
            .args(filter)
            .output()
            .unwrap();
        assert!(out.status.success(), "{:?}", Ran::from(out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
            .collect()
    }

    /// Stores secret `name` of `tenant` with `value`, sent on stdin as a user would.
    pub fn set_secret(&self, tenant: &str, name: &str, value: &str) {
        let mut child = self
            .command()
            .args(["secret", "set", "--tenant", tenant, name])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            format!("{value}\n").as_bytes(),
        )
        .unwrap();
        assert!(child.wait().unwrap().success());
    }

    /// Whether `agentspace audit verify` accepts the whole log.
    pub fn audit_verifies(&self) -> bool {
        self.command()
            .args(["audit", "verify"])
            .output()
            .unwrap()
            .status
            .success()
    }

    /// `agentspace run --user alice -f DEF` with the gateway pointed at a local stand-in
    /// for `api.example.test` (listening on `port`, its CA in `ca.pem`), before `-- ARGS`.
    pub fn governed_run(&self, def: &Path, port: u16) -> Command {
        let mut c = self.command();
        c.args(["run", "--user", "alice", "-f"])
            .arg(def)
            .args([
                "--resolve",
                &format!("api.example.test:443:127.0.0.1:{port}"),
            ])
            .arg("--upstream-ca")
            .arg(self.path().join("ca.pem"));
        c
    }
}

/// A control plane on a free loopback port, killed on drop.
pub struct Serve {
    pub child: Child,
    pub url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(s: &Sandbox) -> Serve {
    serve_with(s, &[], &[])
}

/// `agentspace serve` with extra arguments and environment variables.
pub fn serve_with(s: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Serve {
    let mut child = Command::new(agentspace_bin())
        .arg("--state-dir")
        .arg(s.state())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in `{line}`"))
        .to_owned();
    Serve { child, url }
}

/// Runs `command`, which must succeed; returns its stdout, trimmed.
pub fn succeed(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Creates tenant `acme` with admin `alice`; returns her API token.
pub fn bootstrap(s: &Sandbox) -> String {
    bootstrap_with(s, &[])
}

/// [`bootstrap`] with extra environment variables.
pub fn bootstrap_with(s: &Sandbox, env: &[(&str, &str)]) -> String {
    succeed(
        s.command()
            .args(["serve", "--bootstrap-admin", "alice", "--tenant", "acme"])
            .envs(env.iter().copied()),
    )
}

/// `agentspace definition register -f FILE --tenant acme --as operator`, as the host's
/// operator does.
pub fn register_on_host(s: &Sandbox, file: &Path) {
    succeed(
        s.command()
            .args(["definition", "register", "-f"])
            .arg(file)
            .args(["--tenant", "acme", "--as", "operator"]),
    );
}

/// Polls `f` until it gives a value (20 s at most).
pub fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What an attacker with write access to the audit database does: drops the
/// append-only triggers and replaces `from` with `to` in the events matching `filter`
/// (an SQL condition); returns how many events changed.
pub fn rewrite_audit_events(s: &Sandbox, filter: &str, from: &str, to: &str) -> usize {
    let conn = rusqlite::Connection::open(s.state().join("audit/audit.db")).unwrap();
    let triggers: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for t in triggers {
        conn.execute_batch(&format!("DROP TRIGGER {t}")).unwrap();
    }
    conn.execute(
        &format!(
            "UPDATE audit_events SET event = CAST(replace(CAST(event AS TEXT), ?1, ?2) AS BLOB) WHERE {filter}"
        ),
        [from, to],
    )
    .unwrap()
}
