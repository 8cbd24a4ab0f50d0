//! The console end to end in headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from npm): alice signs in and starts the credit officer of
//! examples/credit-officer/ from its host-registered definition, its decisions stream
//! in, its outside mail is held, bob approves it in his console, the held request
//! completes, and the approval is found in audit search. Real cells, the real
//! `agentspace serve`, a real browser; the screenshots of each step are kept in
//! `target/artifacts/console/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use agentspace_server::client::Client;
use serde_json::{Value, json};

use super::support::{Sandbox, bootstrap, privileged, register_on_host, serve};
use super::tools::python_mcp;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Node.js and the global npm directory holding playwright-core, and chromium; `None`
/// (skip) when one is missing outside CI. In CI (CI=true) a missing one fails the test.
fn browser_tools() -> Option<PathBuf> {
    let npm_root = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = if !node {
        Some("node (Node.js)")
    } else if !Path::new(CHROMIUM).exists() {
        Some("chromium (scripts/debian-packages)")
    } else if !npm_root
        .as_ref()
        .is_some_and(|r| r.join("playwright-core/package.json").exists())
    {
        Some("playwright-core (scripts/install-deps: npm install -g playwright-core)")
    } else {
        None
    };
    if let Some(what) = missing {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "the console's browser test needs {what}; CI must have it"
        );
        eprintln!("skipping: the console's browser test needs {what}");
        return None;
    }
    npm_root
}

/// Where the screenshots go: `target/artifacts/console/` of this workspace (or of
/// CARGO_TARGET_DIR).
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    target.join("artifacts").join("console")
}

#[test]
fn the_console_starts_the_credit_officer_and_its_held_mail_is_approved_in_chromium() {
    if !privileged() || !python_mcp() {
        return;
    }
    let Some(npm_root) = browser_tools() else {
        return;
    };
    let s = Sandbox::new();
    let token = bootstrap(&s);
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/credit-officer/credit-officer.yaml")
        .canonicalize()
        .unwrap();

    // The host's operator registers the example as it is, host paths and all.
    register_on_host(&s, &example);
    let server = serve(&s);
    let api = Client::new(&server.url, Some(&token)).unwrap();
    let registered = api.get("/v1/definitions/credit-officer").unwrap().json();
    assert_eq!(registered["host"], true, "{registered}");

    let r = api
        .post("/v1/users", &json!({"name": "bob", "roles": ["approver"]}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.error_message());
    let token_of = |user: &str| {
        let r = api
            .post(
                &format!("/v1/users/{user}/tokens"),
                &json!({"label": "console"}),
            )
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.error_message());
        r.json()["token"].as_str().unwrap().to_owned()
    };

    let shots = artifacts();
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/console-e2e.js");
    let out = Command::new("node")
        .arg(&script)
        .env("NODE_PATH", &npm_root)
        .env("CONSOLE_URL", &server.url)
        .env("ALICE_TOKEN", token_of("alice"))
        .env("BOB_TOKEN", token_of("bob"))
        .env("ARTIFACTS", &shots)
        .env("CHROMIUM", CHROMIUM)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    println!("console screenshots in {}:", shots.display());
    let mut files: Vec<_> = std::fs::read_dir(&shots)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in &files {
        println!("  {}", f.display());
    }
    assert!(out.status.success(), "the browser run failed:\n{stderr}");
    let findings: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let finding = |what: &str| {
        findings
            .iter()
            .find(|f| f["finding"] == what)
            .unwrap_or_else(|| panic!("no `{what}` in {stdout}"))
            .clone()
    };
    let task = finding("started")["task"].as_str().unwrap().to_owned();
    let approval = finding("held")["approval"].as_str().unwrap().to_owned();
    // Every step left its screenshot, a PNG.
    let listed = finding("screenshots")["files"].clone();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(listed.len() >= 10, "{listed:?}");
    for file in &listed {
        let bytes = std::fs::read(file).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{file} is not a PNG");
    }
    assert_eq!(files.len(), listed.len(), "{files:?}");

    // What the browser saw is what the control plane recorded.
    let a = api
        .get(&format!("/v1/approvals/{approval}"))
        .unwrap()
        .json();
    assert_eq!(
        (
            a["state"].as_str(),
            a["approver"].as_str(),
            a["comment"].as_str(),
            a["context"]["user"].as_str(),
            a["context"]["task"].as_str(),
        ),
        (
            Some("approved"),
            Some("bob"),
            Some("one-off: the customer asked for it"),
            Some("alice"),
            Some(task.as_str()),
        ),
        "{a}"
    );
    let events: Vec<Value> = api
        .get(&format!("/v1/audit/events?task={task}"))
        .unwrap()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    let start = &events[0];
    assert_eq!(
        (start["kind"].as_str(), start["user"].as_str()),
        (Some("task_start"), Some("alice"))
    );
    // The registered text ran, resolved against the example's directory.
    assert_eq!(
        start["details"]["definition_digest"], registered["digest"],
        "{start}"
    );
    assert!(
        events.iter().any(|e| e["kind"] == "approval_granted"
            && e["details"]["approver"] == "bob"
            && e["details"]["approval"] == approval.as_str()),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e["kind"] == "mcp_call"
            && e["resource"] == "mcp://mail/send_mail"
            && e["decision"] == "allow"
            && e["details"]["approval"] == approval.as_str()),
        "{events:#?}"
    );
    // Stopped from its page: it exited of the signal.
    let exit = events.iter().find(|e| e["kind"] == "task_exit").unwrap();
    assert_eq!(exit["status"], 143, "{exit}");
    for seen in [
        "self_approval_refused",
        "completed",
        "audit",
        "hostile_text",
        "stopped",
    ] {
        finding(seen);
    }
    let verify = api.get("/v1/audit/verify").unwrap().json();
    assert_eq!(verify["ok"], true, "{verify}");
}
