//! `agentspace run`: what a user relies on when running an agent in a cell.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::support::{Sandbox, privileged};

#[test]
fn the_readme_example_reads_the_workspace() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let r = s.py(r#"print(open("/workspace/notes.txt").read())"#);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "hello from the host\n\n");
}

#[test]
fn exit_codes_follow_docker_run() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    assert_eq!(s.sh("exit 3").code, 3);
    assert_eq!(s.sh("exit 0").code, 0);
    let r = s.run(&s.path().join("hello.yaml"), &["no-such-program"]);
    assert_eq!(r.code, 127, "{r:?}");
    assert!(r.stderr.contains("command not found"), "{r:?}");
    let r = s.run(&s.path().join("hello.yaml"), &["/workspace/notes.txt"]);
    assert_eq!(r.code, 126, "{r:?}");
    let bad = s.definition(
        "bad.yaml",
        &super::support::HELLO.replace("pids: 64", "pids: lots"),
    );
    let r = s.run(&bad, &["true"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr.contains("line 10") && r.stderr.contains("spec.resources.pids"),
        "{r:?}"
    );
    // A signal ends the agent: 128 + signal number.
    assert_eq!(s.sh("kill -TERM $$").code, 128 + 15);
}

#[test]
fn stdin_passes_through_and_output_is_streamed_and_logged() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let mut child = s
        .command()
        .args(["run", "-f"])
        .arg(s.path().join("hello.yaml"))
        .args([
            "--",
            "sh",
            "-c",
            "read line; echo got:$line; echo err:$line >&2",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ping\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got:ping\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err:ping"));
    let m = s.last_manifest();
    let task_dir = s.state().join("tasks").join(m["task"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(task_dir.join("stdout.log")).unwrap(),
        "got:ping\n"
    );
    assert_eq!(
        std::fs::read_to_string(task_dir.join("stderr.log")).unwrap(),
        "err:ping\n"
    );
}

#[test]
fn the_manifest_records_the_task_and_tasks_show_prints_it() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let mut c = s.command();
    c.args(["run", "--user", "alice", "-f"])
        .arg(s.path().join("hello.yaml"))
        .args(["--", "sh", "-c", "exit 7"]);
    let r: super::support::Ran = c.output().unwrap().into();
    assert_eq!(r.code, 7);
    let m = s.last_manifest();
    assert_eq!(m["user"], "alice");
    assert_eq!(m["agent"], "hello");
    assert_eq!(m["tenant"], "acme");
    assert_eq!(m["state"], "exited");
    assert_eq!(m["exit_code"], 7);
    assert_eq!(m["limits"]["memory_bytes"], 256 << 20);
    assert!(
        m["definition_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(
        m["landlock"].as_str().unwrap().contains("filesystem"),
        "{m}"
    );
    assert!(m["host_uid"].as_u64().unwrap() >= 0x4000_0000);

    let id = m["task"].as_str().unwrap();
    let out = s.command().args(["tasks", "show", id]).output().unwrap();
    assert!(out.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown, m);
    let out = s.command().args(["tasks", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(id));
    let out = s
        .command()
        .args(["tasks", "show", "../../etc"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn the_host_workspace_is_untouched_until_the_user_commits() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let script = "echo changed > /workspace/notes.txt && echo new > /workspace/new.txt && mkdir -p /workspace/d && echo x > /workspace/d/x && ls -ln /workspace/notes.txt";
    let r = s.sh(script);
    assert_eq!(r.code, 0, "{r:?}");
    // Inside, the agent owns the workspace files (uid 1000).
    assert!(r.stdout.contains(" 1000 1000 "), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(s.path().join("workspace/notes.txt")).unwrap(),
        "hello from the host\n"
    );
    assert!(!s.path().join("workspace/new.txt").exists());
    assert!(r.stderr.contains("--commit-workspace"), "{r:?}");
    let m = s.last_manifest();
    assert_eq!(m["workspace_changes"]["added"], 3);
    assert_eq!(m["workspace_changes"]["modified"], 1);
    let upper = std::path::PathBuf::from(m["workspace_changes_dir"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(upper.join("new.txt")).unwrap(),
        "new\n"
    );

    let mut c = s.command();
    c.args(["run", "--commit-workspace", "-f"]).arg(s.path().join("hello.yaml")).args(["--", "sh", "-c", "echo committed > /workspace/notes.txt; rm /workspace/notes.txt; echo n > /workspace/n.txt"]);
    let r: super::support::Ran = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!s.path().join("workspace/notes.txt").exists());
    assert_eq!(
        std::fs::read_to_string(s.path().join("workspace/n.txt")).unwrap(),
        "n\n"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(s.path().join("workspace/n.txt"))
            .unwrap()
            .uid(),
        0,
        "committed files belong to the workspace owner"
    );
}

#[test]
fn the_cell_sees_its_own_world_only() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    std::fs::create_dir_all(s.path().join("reference-data")).unwrap();
    std::fs::write(s.path().join("reference-data/rates.csv"), "rate,1\n").unwrap();
    let def = s.definition(
        "ro.yaml",
        &format!("{}  env: {{LANG: C.UTF-8, GREETING: hi}}\n  filesystem:\n    readOnly: [./reference-data]\n", super::support::HELLO),
    );
    let mut c = s.command();
    c.env("AGENTSPACE_TEST_HOST_SECRET", "s3cr3t");
    c.args(["run", "-f"]).arg(&def).args([
        "--",
        "sh",
        "-c",
        "hostname; echo $GREETING; env; cat /mnt/reference-data/rates.csv; echo x > /mnt/reference-data/y 2>&1 || echo ro-ok; id -u; ls /",
    ]);
    let r: super::support::Ran = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    let root_entries: Vec<&str> = r
        .stdout
        .split("\n1000\n")
        .nth(1)
        .unwrap_or("")
        .lines()
        .collect();
    assert_eq!(lines[0], "hello");
    assert_eq!(lines[1], "hi");
    assert!(
        !r.stdout.contains("s3cr3t"),
        "host environment leaked: {r:?}"
    );
    assert!(r.stdout.contains("rate,1"));
    assert!(r.stdout.contains("ro-ok"));
    assert!(r.stdout.contains("\n1000\n"));
    assert!(
        root_entries.contains(&"workspace") && root_entries.contains(&"usr"),
        "{r:?}"
    );
    for absent in ["root", "sys", "boot", "var", "srv", "opt"] {
        assert!(
            !root_entries.contains(&absent),
            "/{absent} should not exist in the cell: {r:?}"
        );
    }
}

#[test]
fn real_programs_run_inside() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let r = s.sh("python3 -c 'import ssl, json, sqlite3; print(\"py-ok\")' && git --version && curl --version | head -1 && cd /workspace && git init -q . && git add . && git -c user.email=a@b -c user.name=a commit -qm x && echo git-ok");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("py-ok") && r.stdout.contains("git-ok"),
        "{r:?}"
    );
}

#[test]
fn one_interrupt_reaches_the_agent_and_a_second_kills_the_cell() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let program = "import signal, sys, time\nsignal.signal(signal.SIGINT, lambda *a: sys.exit(42))\nprint('ready', flush=True)\ntime.sleep(60)";
    let mut child = start_until_ready(&s, &["python3", "-c", program]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(42));

    let mut child = start_until_ready(
        &s,
        &[
            "sh",
            "-c",
            "trap '' INT; echo ready; while :; do sleep 0.1; done",
        ],
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(pid, nix::sys::signal::SIGINT).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(137));
    assert!(
        s.last_manifest()["limits_hit"]
            .as_array()
            .unwrap()
            .contains(&"interrupted".into())
    );
}

#[test]
fn killing_agentspace_leaves_no_process_behind() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let marker = format!("{}", 100_000 + std::process::id() % 100_000);
    let script = format!("sleep {marker} & echo ready; sleep {marker}");
    let mut child = start_until_ready(&s, &["sh", "-c", &script]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with(&format!("sleep {marker}")) < 2 {
        assert!(
            Instant::now() < deadline,
            "the cell's sleep processes never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with(&format!("sleep {marker}")) > 0 {
        assert!(
            Instant::now() < deadline,
            "cell processes outlived agentspace"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `agentspace run` of the hello agent and returns once it printed `ready`.
fn start_until_ready(s: &Sandbox, command: &[&str]) -> std::process::Child {
    let mut child = s
        .command()
        .args(["run", "-f"])
        .arg(s.path().join("hello.yaml"))
        .arg("--")
        .args(command)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(child.stdout.as_mut().unwrap(), "ready");
    child
}

pub fn wait_for_line(from: &mut impl std::io::Read, want: &str) {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while from.read(&mut byte).unwrap() == 1 {
        seen.push(byte[0]);
        if String::from_utf8_lossy(&seen).contains(want) {
            return;
        }
    }
    panic!(
        "stream ended before `{want}`: {}",
        String::from_utf8_lossy(&seen)
    );
}

/// Counts host processes whose command line is exactly `cmdline` (words joined by spaces).
pub fn processes_with(cmdline: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).replace('\0', " ").trim_end() == cmdline)
        .count()
}
