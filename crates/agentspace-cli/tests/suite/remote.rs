//! The CLI against a running control plane (`--server URL`, AGENTSPACE_SERVER): `run`
//! starts a real cell through the API, follows its output to the terminal and exits
//! with its code; Ctrl-C stops it on the server; `tasks`, `audit` and `revoke` read and
//! change through the API with the same output as on the state directory; a missing or
//! wrong token, another user and another tenant are refused.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use agentspace_server::client::Client;
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

use super::boundary::upstream;
use super::support::{
    Ran, Sandbox, Serve, agentspace_bin, bootstrap, privileged, rewrite_audit_events, serve,
    serve_with, until,
};

const HELLO: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: hello, tenant: acme}
spec:
  resources: {memory: 256Mi, pids: 64, cpu: 1.0, timeout: 60s}
";

/// `agentspace` as a client of `server` with `token` (none: no AGENTSPACE_TOKEN), on an
/// empty state directory of its own, so every answer comes from the server.
fn client(s: &Sandbox, server: &Serve, token: Option<&str>) -> Command {
    let mut c = Command::new(agentspace_bin());
    c.arg("--state-dir")
        .arg(s.path().join("client-state"))
        .env("AGENTSPACE_SERVER", &server.url)
        .env_remove("AGENTSPACE_TOKEN")
        .stdin(Stdio::null());
    if let Some(token) = token {
        c.env("AGENTSPACE_TOKEN", token);
    }
    c
}

fn ran(mut c: Command, args: &[&str]) -> Ran {
    c.args(args).output().unwrap().into()
}

/// A sandbox with tenant `acme` (admin `alice`), a running server, and the hello
/// definition; `None` when not privileged.
fn setup() -> Option<(Sandbox, String, Serve, String)> {
    if !privileged() {
        return None;
    }
    let s = Sandbox::new();
    let token = bootstrap(&s);
    let server = serve(&s);
    let def = s.definition("hello-remote.yaml", HELLO);
    let def = def.to_str().unwrap().to_owned();
    Some((s, token, server, def))
}

/// The tasks of the token's tenant, as the API lists them.
fn tasks(server: &Serve, token: &str) -> Vec<Value> {
    let r = Client::new(&server.url, Some(token))
        .unwrap()
        .get("/v1/tasks")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.error_message());
    r.json().as_array().unwrap().clone()
}

#[test]
fn run_with_a_server_runs_a_real_cell_there_and_exits_with_its_code() {
    let Some((s, token, server, def)) = setup() else {
        return;
    };
    let def = def.as_str();

    // Output bigger than one piece of the log API (1 MiB) on stdout, a line on stderr.
    let script = "echo \"out as $AGENTSPACE_USER in $(hostname)\"; echo err >&2; \
                  head -c 3000000 /dev/zero | tr '\\0' x; echo; exit 7";
    let r = ran(
        client(&s, &server, Some(&token)),
        &["run", "-f", def, "--", "sh", "-c", script],
    );
    assert_eq!(r.code, 7, "{}", r.stderr);
    let (first, rest) = r.stdout.split_once('\n').unwrap();
    assert_eq!(first, "out as alice in hello");
    assert_eq!(rest.len(), 3_000_001);
    assert!(rest.trim_end().bytes().all(|b| b == b'x'));
    assert!(r.stderr.contains("err\n"), "{}", r.stderr);

    // The task ran on the server, for the token's user, from the registered definition.
    let list = tasks(&server, &token);
    assert_eq!(list.len(), 1);
    let task = list[0]["task"].as_str().unwrap().to_owned();
    assert_eq!(
        (&list[0]["user"], &list[0]["exit_code"]),
        (&json!("alice"), &json!(7))
    );
    assert!(
        list[0]["definition"]
            .as_str()
            .unwrap()
            .contains("/server/runs/acme/")
    );
    // The server keeps only the head of what the run printed: an agent that prints
    // without end cannot fill the server's disk (the task's own logs are capped too).
    let run_dir = std::path::Path::new(list[0]["definition"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_owned();
    let kept = std::fs::metadata(run_dir.join("run.log")).unwrap().len();
    assert!(kept <= 2 * 256 * 1024, "run.log holds {kept} bytes");
    let r = ran(client(&s, &server, Some(&token)), &["tasks", "list"]);
    assert_eq!(r.code, 0, "{r:?}");
    let row = r.stdout.lines().nth(1).unwrap();
    assert!(
        row.starts_with(&task) && row.contains("alice") && row.contains(" 7 "),
        "{r:?}"
    );
    let r = ran(client(&s, &server, Some(&token)), &["tasks", "show", &task]);
    let shown: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (&shown["task"], &shown["exit_code"]),
        (&json!(task), &json!(7))
    );

    // The same text again is the same version; a registered definition runs by name,
    // optionally at a version.
    let r = ran(
        client(&s, &server, Some(&token)),
        &["run", "--agent", "hello", "--", "sh", "-c", "echo by name"],
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "by name\n"), "{r:?}");
    let r = ran(
        client(&s, &server, Some(&token)),
        &["run", "--agent", "hello@1", "--", "false"],
    );
    assert_eq!(r.code, 1, "{r:?}");
    let versions = Client::new(&server.url, Some(&token))
        .unwrap()
        .get("/v1/definitions/hello/versions")
        .unwrap()
        .json();
    assert_eq!(versions.as_array().unwrap().len(), 1, "{versions}");
    let r = ran(
        client(&s, &server, Some(&token)),
        &["run", "--agent", "hello@2", "--", "true"],
    );
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("(404)"), "{r:?}");

    // Agent Space refusing the task is 125 with the reason, and nothing runs.
    let nosy = s.definition(
        "nosy.yaml",
        &HELLO
            .replace("name: hello", "name: nosy")
            .replace("spec:\n", "spec:\n  workspace: /etc\n"),
    );
    let r = ran(
        client(&s, &server, Some(&token)),
        &[
            "run",
            "-f",
            nosy.to_str().unwrap(),
            "--",
            "cat",
            "/etc/shadow",
        ],
    );
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr.contains("(422)") && r.stderr.contains("`spec.workspace`"),
        "{r:?}"
    );
    // Options that are the host's choices are refused with a server.
    let r = ran(
        client(&s, &server, Some(&token)),
        &["run", "--commit-workspace", "-f", def, "--", "true"],
    );
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("host's choices"), "{r:?}");
    assert_eq!(tasks(&server, &token).len(), 3);
}

/// The registry and a task's budget use through the CLI: `definition list|versions|show|
/// diff` and `tasks budget` read the control plane, and say so when no server is given.
#[test]
fn definitions_and_a_tasks_budget_are_read_through_the_server() {
    let Some((s, token, server, def)) = setup() else {
        return;
    };
    let r = ran(
        client(&s, &server, Some(&token)),
        &["run", "-f", &def, "--", "true"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let task = tasks(&server, &token)[0]["task"]
        .as_str()
        .unwrap()
        .to_owned();
    let v2 = HELLO.replace("memory: 256Mi", "memory: 128Mi");
    let r = Client::new(&server.url, Some(&token))
        .unwrap()
        .post("/v1/definitions", &json!({"definition": v2}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.error_message());

    let cli = |args: &[&str]| ran(client(&s, &server, Some(&token)), args);
    let r = cli(&["definition", "list"]);
    assert_eq!(r.code, 0, "{r:?}");
    let rows: Vec<Vec<&str>> = r
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 1, "{}", r.stdout);
    assert_eq!(rows[0][..4], ["hello", "2", "api", "alice"], "{}", r.stdout);
    let r = cli(&["definition", "versions", "hello", "--json"]);
    let versions: Value = serde_json::from_str(&r.stdout).unwrap();
    let numbers: Vec<u64> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2]);
    let r = cli(&["definition", "show", "hello@1"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, HELLO), "{r:?}");
    let r = cli(&["definition", "show", "hello"]);
    assert_eq!(r.stdout, v2);
    let r = cli(&["definition", "diff", "hello", "1", "2"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("-  resources: {memory: 256Mi")
            && r.stdout.contains("+  resources: {memory: 128Mi"),
        "{}",
        r.stdout
    );
    let r = cli(&["definition", "show", "hello@3"]);
    assert!(r.code == 125 && r.stderr.contains("(404)"), "{r:?}");
    let r = cli(&["definition", "show", "hello@latest"]);
    assert!(
        r.code != 0 && r.stderr.contains("must be a number"),
        "{r:?}"
    );

    let r = cli(&["tasks", "budget", &task]);
    assert_eq!(r.code, 0, "{r:?}");
    let budget: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (&budget["task"], &budget["agent"]),
        (&json!(task), &json!("hello"))
    );
    assert!(budget["usage"].is_object(), "{budget}");

    // Without a server there is no registry to read: the error says what to give.
    let mut standalone = client(&s, &server, Some(&token));
    standalone.env_remove("AGENTSPACE_SERVER");
    let r = ran(standalone, &["definition", "list"]);
    assert!(
        r.code != 0 && r.stderr.contains("give --server URL"),
        "{r:?}"
    );
}

#[test]
fn ctrl_c_stops_the_task_on_the_server() {
    let Some((s, token, server, def)) = setup() else {
        return;
    };
    let mut c = client(&s, &server, Some(&token));
    c.args(["run", "-f", def.as_str(), "--"])
        .args(["sh", "-c", "echo ready; exec sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // The output arrives while the task runs.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let running = tasks(&server, &token);
    assert_eq!(running[0]["state"], "running", "{running:?}");
    let task = running[0]["task"].as_str().unwrap().to_owned();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    // The agent died of the SIGTERM the server sent: 128 + 15.
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains(&format!("stopping task {task}")), "{err}");
    let m = &tasks(&server, &token)[0];
    assert_eq!(
        (&m["state"], &m["exit_code"]),
        (&json!("exited"), &json!(143))
    );
    // Stopped as alice, on the record.
    let api = Client::new(&server.url, Some(&token)).unwrap();
    let revoked = api.get("/v1/revocations").unwrap().json();
    assert_eq!(revoked[0]["task"], task.as_str());
    let events = api.get("/v1/audit/events?kind=revocation").unwrap().json();
    let e = &events[0]["event"];
    assert_eq!(
        (&e["user"], &e["action"], &e["details"]["via"]),
        (&json!("alice"), &json!("revoke"), &json!("control-plane")),
        "{events}"
    );
}

#[test]
fn a_missing_or_wrong_token_another_user_and_another_tenant_are_refused() {
    let Some((s, token, server, def)) = setup() else {
        return;
    };
    let def = def.as_str();
    let run_true = ["run", "-f", def, "--", "true"];

    let r = ran(client(&s, &server, None), &run_true);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr
            .contains("set AGENTSPACE_TOKEN or give --token-file"),
        "{r:?}"
    );
    let r = ran(client(&s, &server, Some("ast_wrong")), &run_true);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("(401)"), "{r:?}");
    let r = ran(client(&s, &server, Some(&token)), &["tasks", "list"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = ran(client(&s, &server, Some("ast_wrong")), &["tasks", "list"]);
    assert!(r.code == 125 && r.stderr.contains("(401)"), "{r:?}");
    // Acting for someone else: the server decides who a task acts for.
    let r = ran(
        client(&s, &server, Some(&token)),
        &["run", "--user", "bob", "-f", def, "--", "true"],
    );
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr
            .contains("`--user bob`, but the API token is `alice`'s"),
        "{r:?}"
    );
    assert_eq!(tasks(&server, &token).len(), 0, "nothing ran");

    // The token from a file; `--user` naming the token's user is fine.
    let file = s.path().join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let r = ran(
        client(&s, &server, None),
        &[
            "run",
            "--token-file",
            file.to_str().unwrap(),
            "--user",
            "alice",
            "-f",
            def,
            "--",
            "true",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let task = tasks(&server, &token)[0]["task"]
        .as_str()
        .unwrap()
        .to_owned();

    // Tenant beta sees nothing of acme's: not its task, its definition, its events.
    let out = s
        .command()
        .args(["serve", "--bootstrap-admin", "bea", "--tenant", "beta"])
        .output()
        .unwrap();
    let beta = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let r = ran(client(&s, &server, Some(&beta)), &["tasks", "show", &task]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr.contains("(404)") && r.stderr.contains("has no task"),
        "{r:?}"
    );
    let r = ran(client(&s, &server, Some(&beta)), &["tasks", "list"]);
    assert_eq!(r.stdout.lines().count(), 1, "only the header: {r:?}");
    let r = ran(
        client(&s, &server, Some(&beta)),
        &["run", "--agent", "hello", "--", "true"],
    );
    assert!(r.code == 125 && r.stderr.contains("(404)"), "{r:?}");
    let r = ran(
        client(&s, &server, Some(&beta)),
        &["audit", "query", "--format", "jsonl", "--task", &task],
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r:?}");
    for args in [
        &["audit", "query", "--tenant", "acme"][..],
        &["revoke", "task", &task, "--tenant", "acme"][..],
    ] {
        let r = ran(client(&s, &server, Some(&beta)), args);
        assert_eq!(r.code, 125, "{r:?}");
        assert!(
            r.stderr
                .contains("`--tenant acme`, but the API token is of tenant `beta`"),
            "{r:?}"
        );
    }
    // Stopping acme's task with beta's admin token is a 404 too.
    let r = Client::new(&server.url, Some(&beta))
        .unwrap()
        .post(&format!("/v1/tasks/{task}/stop"), &json!({}))
        .unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn audit_and_revocations_through_the_server_read_as_on_the_state_directory() {
    let Some((s, token, server, def)) = setup() else {
        return;
    };
    let r = ran(
        client(&s, &server, Some(&token)),
        &["run", "-f", def.as_str(), "--", "true"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let task = tasks(&server, &token)[0]["task"]
        .as_str()
        .unwrap()
        .to_owned();

    // Revoke and lift through the server; the state directory has it, audited as alice.
    let r = ran(
        client(&s, &server, Some(&token)),
        &["revoke", "agent", "hello", "--reason", "checking"],
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (
            0,
            "revoked: agent `hello` of tenant `acme` (effective on the next decision)\n"
        ),
        "{r:?}"
    );
    let remote_list = ran(client(&s, &server, Some(&token)), &["revoke", "list"]);
    let local_list: Ran = s
        .command()
        .args(["revoke", "list"])
        .output()
        .unwrap()
        .into();
    assert_eq!(remote_list.stdout, local_list.stdout);
    assert!(
        local_list
            .stdout
            .contains("agent `hello` of tenant `acme`  checking")
    );

    // The same state seen both ways: identical output.
    for args in [
        &["audit", "verify"][..],
        &["audit", "query"][..],
        &["audit", "query", "--format", "jsonl", "--task", &task][..],
        &[
            "audit",
            "query",
            "--kind",
            "revocation",
            "--since",
            "2020-01-01",
        ][..],
        &["audit", "export", "--format", "ocsf"][..],
        &["audit", "export", "--resource", "agent `hello`"][..],
    ] {
        let remote = ran(client(&s, &server, Some(&token)), args);
        assert_eq!(remote.code, 0, "{args:?}: {remote:?}");
        let mut local = s.command();
        local.args(args);
        if args[1] == "verify" || args[1] == "query" || args[1] == "export" {
            local.args(["--tenant", "acme"]);
        }
        let local: Ran = local.output().unwrap().into();
        assert_eq!(remote.stdout, local.stdout, "{args:?}");
        assert!(!remote.stdout.is_empty(), "{args:?}");
    }
    let revocations = s.audit_events(&["--kind", "revocation"]);
    assert_eq!(revocations[0]["user"], "alice");
    let r = ran(
        client(&s, &server, Some(&token)),
        &["revoke", "agent", "hello", "--lift"],
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "lifted: agent `hello` of tenant `acme`\n"),
        "{r:?}"
    );
    let r = ran(client(&s, &server, Some(&token)), &["revoke", "list"]);
    assert_eq!(r.stdout, "no revocations\n");
    // What only the host can check is refused with the way to do it.
    let r = ran(
        client(&s, &server, Some(&token)),
        &["audit", "verify", "--checkpoint", "cp.json"],
    );
    assert!(r.code == 125 && r.stderr.contains("on the host"), "{r:?}");

    // A rewritten event: verify through the server fails (exit 1) like on the host.
    assert!(rewrite_audit_events(&s, "tenant = 'acme'", "checking", "chucking") > 0);
    let r = ran(client(&s, &server, Some(&token)), &["audit", "verify"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("audit log does not verify"), "{r:?}");
}

#[test]
fn a_governed_task_through_the_server_uses_its_gateway_config_and_waits_for_an_approver() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let up = upstream(&s);
    std::fs::write(
        s.path().join("gateway.yaml"),
        format!(
            "resolve: [\"api.example.test:443:127.0.0.1:{}\"]\nupstreamCa: [ca.pem]\n",
            up.port
        ),
    )
    .unwrap();
    let token = bootstrap(&s);
    let config = s.path().join("gateway.yaml");
    let server = serve_with(&s, &["--gateway-config", config.to_str().unwrap()], &[]);
    let api = Client::new(&server.url, Some(&token)).unwrap();
    let r = api
        .post("/v1/users", &json!({"name": "bob", "roles": ["approver"]}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.error_message());
    let bob = api.post("/v1/users/bob/tokens", &json!({})).unwrap().json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let def = s.definition(
        "payer.yaml",
        "apiVersion: agentspace/v1
kind: Agent
metadata: {name: payer, tenant: acme}
spec:
  egress:
    - name: api
      hosts: [api.example.test]
      methods: [GET]
      paths: [\"/v1/*\"]
      approval: {when: 'context has query && context.query like \"*big*\"', timeout: 1m}
  resources: {memory: 256Mi, pids: 64, cpu: 1.0, timeout: 60s}
",
    );
    let script = "curl -sS https://api.example.test/v1/ok; \
                  curl -sS -o /dev/null -w '%{http_code}\\n' https://api.example.test/v2/no; \
                  curl -sS 'https://api.example.test/v1/pay?size=big'";
    let mut c = client(&s, &server, Some(&token));
    c.args(["run", "-f", def.to_str().unwrap(), "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let agent = c.spawn().unwrap();

    // bob approves the held request through the server, with the CLI.
    let pending = until("a pending approval", || {
        let list = Client::new(&server.url, Some(&bob))
            .unwrap()
            .get("/v1/approvals")
            .unwrap()
            .json();
        list.as_array().unwrap().first().cloned()
    });
    assert_eq!(pending["context"]["user"], "alice");
    let id = pending["id"].as_str().unwrap();
    let r = ran(
        client(&s, &server, Some(&bob)),
        &["approvals", "approve", id, "--comment", "fine"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let r: Ran = agent.wait_with_output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout, "upstream saw /v1/ok\n403\nupstream saw /v1/pay?size=big\n",
        "{r:?}"
    );
    // Each request decided as alice's; the held one allowed once bob approved it.
    let events = s.audit_events(&["--tenant", "acme"]);
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .filter(|e| e["kind"] != "task_start" && e["kind"] != "task_exit")
        .filter(|e| e["task"].is_string())
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["decision"].as_str().unwrap_or("-"),
                e["user"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("http_request", "allow", "alice"),
            ("http_request", "deny", "alice"),
            ("approval_requested", "approval_required", "alice"),
            ("approval_granted", "allow", "alice"),
            ("http_request", "allow", "alice"),
        ],
        "{events:?}"
    );
    let granted = events
        .iter()
        .find(|e| e["kind"] == "approval_granted")
        .unwrap();
    assert_eq!(granted["details"]["approver"], "bob", "{granted}");
}
