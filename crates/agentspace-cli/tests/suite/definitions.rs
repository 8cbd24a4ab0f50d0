//! Every file under examples/ is a valid definition (or gateway config file), and the
//! published JSON Schema is the one generated from the code.

use std::path::Path;

use agentspace_core::Definition;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
}

#[test]
fn every_example_definition_is_valid() {
    let mut checked = 0;
    let mut stack = vec![repo().join("examples")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml")
                && !p.to_string_lossy().contains("/cases")
            {
                let text = std::fs::read_to_string(&p).unwrap();
                if text.contains("apiVersion: agentspace/v1") {
                    Definition::parse(&p, &text).unwrap_or_else(|e| panic!("{e}"));
                    checked += 1;
                } else if text.starts_with("# agentspace gateway config") {
                    agentspace_gateway::GatewayConfig::new("/nonexistent")
                        .load_file(&p)
                        .unwrap_or_else(|e| panic!("{e}"));
                    checked += 1;
                }
            }
        }
    }
    assert!(
        checked >= 2,
        "expected the examples to be checked, found {checked}"
    );
}

#[test]
fn the_published_json_schema_is_current() {
    let published =
        std::fs::read_to_string(repo().join("docs/agent-definition.schema.json")).unwrap();
    let current =
        serde_json::to_string_pretty(&agentspace_core::definition_json_schema()).unwrap() + "\n";
    assert!(
        published == current,
        "docs/agent-definition.schema.json is stale: run `cargo run -p agentspace-cli -- definition schema > docs/agent-definition.schema.json`"
    );
}

#[test]
fn the_cli_reports_a_bad_definition_with_file_line_and_field() {
    let s = super::support::Sandbox::new();
    let def = s.definition(
        "typo.yaml",
        &super::support::HELLO.replace("    pids: 64", "    pid: 64"),
    );
    let out = s
        .command()
        .args(["definition", "check", "-f"])
        .arg(&def)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("typo.yaml") && err.contains("line 10") && err.contains("unknown field `pid`"),
        "{err}"
    );
}

#[test]
fn the_threat_model_lists_every_denied_system_call() {
    let doc = std::fs::read_to_string(repo().join("docs/threat-model.md")).unwrap();
    for (name, _) in agentspace_cell::seccomp_denied() {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "docs/threat-model.md does not list `{name}`"
        );
    }
}
