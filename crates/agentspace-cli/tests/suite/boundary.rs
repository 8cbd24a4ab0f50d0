//! The control boundary around a real cell: a definition with egress rules gets a network
//! namespace whose only exit is the gateway's door. Real TLS to a local HTTPS stand-in
//! posing as a named host; its CA is trusted only by the gateway's upstream client.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use super::support::{Ran, Sandbox, privileged};

pub(super) struct Upstream {
    child: Child,
    pub(super) port: u16,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const UPSTREAM: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        auth = self.headers.get("Authorization")
        with open("seen.log", "a") as f:
            f.write("%s auth=%s\n" % (self.path, auth))
        if self.path.startswith("/v1/echo-auth"):
            body = ("you sent %s\n" % auth).encode()
        else:
            body = ("upstream saw %s\n" % self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let st = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl {args:?}");
}

/// A test CA and an HTTPS server for `api.example.test` signed by it.
pub(super) fn upstream(s: &Sandbox) -> Upstream {
    let d = s.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=agentspace test CA",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=api.example.test",
        ],
    );
    std::fs::write(d.join("ext"), "subjectAltName=DNS:api.example.test\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
    let mut child = Command::new("python3")
        .current_dir(d)
        .args(["-c", UPSTREAM, "leaf.pem", "leaf.key"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    Upstream {
        child,
        port: line.trim().parse().unwrap(),
    }
}

const GOVERNED: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: fetcher, tenant: acme}
spec:
  workspace: ./workspace
  egress:
    - name: api
      hosts: [api.example.test]
      methods: [GET]
      paths: [\"/v1/*\"]
      credential: {secret: api-key, header: Authorization, format: \"Bearer {}\"}
  resources: {memory: 256Mi, pids: 64, cpu: 1.0, timeout: 60s}
";

#[test]
fn the_cell_reaches_allowed_hosts_only_through_the_gateway() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let up = upstream(&s);
    let def = s.definition("governed.yaml", GOVERNED);
    s.set_secret("acme", "api-key", "s3cr3t-token-value");
    let script = format!(
        "curl -sS https://api.example.test/v1/ok; \
         echo '--'; curl -sS https://api.example.test/v2/no; echo; \
         echo '--'; curl -sS -m 5 --noproxy '*' https://api.example.test/v1/direct || echo DIRECT-FAILED; \
         echo '--'; curl -sS -m 3 --noproxy '*' https://127.0.0.1:{port}/v1/by-ip -k || echo BY-IP-FAILED; \
         echo '--'; curl -sS -m 3 --noproxy '' -x http://127.0.0.1:3128 http://127.0.0.1:{port}/v1/ssrf; echo; \
         echo '--'; curl -sS -H 'Authorization: Bearer agent-made-up' https://api.example.test/v1/echo-auth; \
         echo '--'; env; grep -r s3cr3t-tok\"\"en-value /workspace /tmp /home /etc /dev/shm -s -l; echo; \
         echo '--'; python3 -c \"import urllib.request; print(urllib.request.urlopen('https://api.example.test/v1/python').read().decode())\"",
        port = up.port
    );
    let mut c = s.governed_run(&def, up.port);
    c.args(["--", "sh", "-c", &script]);
    let r: Ran = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    let parts: Vec<&str> = r.stdout.split("--\n").collect();
    assert_eq!(parts[0], "upstream saw /v1/ok\n", "{r:?}");
    let denied: serde_json::Value =
        serde_json::from_str(parts[1].trim()).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    assert_eq!(denied["decision"], "deny");
    assert!(denied["audit_id"].as_str().is_some());
    // A program ignoring the proxy is intercepted and governed the same way.
    assert_eq!(parts[2], "upstream saw /v1/direct\n", "{r:?}");
    assert!(
        parts[3].contains("BY-IP-FAILED"),
        "the upstream was reachable by address: {r:?}"
    );
    assert!(
        !parts[4].contains("upstream saw"),
        "SSRF through the door reached the host: {r:?}"
    );
    assert!(parts[4].contains("\"decision\":\"deny\""), "{r:?}");
    assert!(
        !parts[5].contains("s3cr3t"),
        "the brokered secret reached the agent in a response: {r:?}"
    );
    assert!(parts[5].starts_with("you sent "), "{r:?}");
    assert!(
        !parts[6].contains("s3cr3t-token-value"),
        "the secret is in the cell's environment or files: {r:?}"
    );
    assert_eq!(
        parts[7], "upstream saw /v1/python\n\n",
        "Python's TLS did not trust the tenant CA: {r:?}"
    );
    // The upstream saw the injected credential, never the agent's own.
    let seen = std::fs::read_to_string(s.path().join("seen.log")).unwrap();
    assert!(
        seen.contains("/v1/ok auth=Bearer s3cr3t-token-value"),
        "{seen}"
    );
    assert!(
        seen.contains("/v1/echo-auth auth=Bearer s3cr3t-token-value"),
        "{seen}"
    );
    assert!(
        seen.contains("/v1/direct auth=Bearer s3cr3t-token-value"),
        "{seen}"
    );
    assert!(!seen.contains("agent-made-up"), "{seen}");
    // Nor is the secret in the audit log or the task's files.
    let export = s
        .command()
        .args(["audit", "export", "--format", "jsonl"])
        .output()
        .unwrap();
    assert!(export.status.success());
    assert!(!String::from_utf8_lossy(&export.stdout).contains("s3cr3t-token-value"));
    for e in std::fs::read_dir(s.state().join("tasks"))
        .unwrap()
        .flatten()
    {
        for f in ["stdout.log", "stderr.log", "manifest.json", "cell.json"] {
            let text = std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
            assert!(!text.contains("s3cr3t-token-value"), "secret in {f}");
        }
    }

    // Every request was decided and audited, and the log verifies.
    let events = s.audit_events(&["--kind", "http_request"]);
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["decision"].as_str().unwrap_or("").to_owned(),
                e["resource"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        seen.contains(&("allow".into(), "https://api.example.test:443/v1/ok".into())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("deny".into(), "https://api.example.test:443/v2/no".into())),
        "{seen:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["user"] == "alice" && e["agent"] == "fetcher"),
        "{events:?}"
    );
    assert!(s.audit_verifies());
}

#[test]
fn gateway_options_without_egress_rules_are_refused() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let r = s.run(&s.path().join("hello.yaml"), &["true"]);
    assert_eq!(r.code, 0);
    let mut c = s.command();
    c.args(["run", "-f"])
        .arg(s.path().join("hello.yaml"))
        .args(["--resolve", "a.example:443:127.0.0.1", "--", "true"]);
    let r: Ran = c.output().unwrap().into();
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("spec.egress"), "{r:?}");
}

const PLAIN: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: fetcher, tenant: acme}
spec:
  workspace: ./workspace
  egress:
    - name: api
      hosts: [api.example.test]
      methods: [GET]
  resources: {memory: 256Mi, pids: 64, cpu: 1.0, timeout: 60s}
";

#[test]
fn a_gateway_config_file_routes_and_trusts_and_flags_win_over_it() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let up = upstream(&s);
    let def = s.definition("plain.yaml", PLAIN);
    // The file points the name at a closed port; the flag, given after, wins.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = s.definition(
        "gateway.yaml",
        &format!(
            "# operator settings\nresolve:\n  - api.example.test:443:127.0.0.1:{}\nupstreamCa: [ca.pem]\nlimits:\n  connectTimeout: 5s\n  maxHeaderBytes: 32Ki\n",
            up.port
        ),
    );
    let run = |extra: &[String]| -> Ran {
        let mut c = s.command();
        c.args(["run", "--user", "alice", "-f"])
            .arg(&def)
            .arg("--config")
            .arg(&config)
            .args(extra)
            .args(["--", "curl", "-sS", "https://api.example.test/v1/config"]);
        c.output().unwrap().into()
    };
    let r = run(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "upstream saw /v1/config\n", "{r:?}");
    std::fs::write(
        &config,
        format!(
            "resolve: [\"api.example.test:443:127.0.0.1:{closed_port}\"]\nupstreamCa: [ca.pem]\n"
        ),
    )
    .unwrap();
    let r = run(&[
        "--resolve".into(),
        format!("api.example.test:443:127.0.0.1:{}", up.port),
    ]);
    assert_eq!(r.stdout, "upstream saw /v1/config\n", "{r:?}");

    // A mistake in the file names the file, the line and the field, and nothing runs.
    std::fs::write(&config, "resolve: []\nlimits:\n  conectTimeout: 5s\n").unwrap();
    let r = run(&[]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr
            .contains("gateway.yaml` at line 3 column 3: field `limits.conectTimeout`"),
        "{r:?}"
    );
}

#[test]
fn a_pinning_client_in_the_cell_gets_the_upstreams_own_certificate() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let up = upstream(&s);
    // The agent trusts only the stand-in's CA, as a client that pins it would.
    std::fs::copy(
        s.path().join("ca.pem"),
        s.path().join("workspace/pinned-ca.pem"),
    )
    .unwrap();
    let def = s.definition(
        "pinned.yaml",
        &PLAIN.replace("      methods: [GET]\n", "      tls: passthrough\n"),
    );
    let mut c = s.governed_run(&def, up.port);
    c.args([
            "--",
            "sh",
            "-c",
            "curl -sS --cacert /workspace/pinned-ca.pem https://api.example.test/v1/pinned; \
             echo '--'; curl -sS https://api.example.test/v1/tenant-ca >/dev/null 2>&1 || echo NOT-INTERCEPTED; \
             echo '--'; curl -sS --noproxy '*' --cacert /workspace/pinned-ca.pem https://api.example.test/v1/transparent",
        ]);
    let r: Ran = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        "upstream saw /v1/pinned\n--\nNOT-INTERCEPTED\n--\nupstream saw /v1/transparent\n",
        "{r:?}"
    );
    let events = s.audit_events(&["--kind", "http_request"]);
    assert!(
        events.iter().any(|e| e["action"] == "TUNNEL"
            && e["resource"]
                .as_str()
                .is_some_and(|r| r.contains("tls://api.example.test:443"))),
        "{events:#?}"
    );
}

#[test]
fn a_passthrough_rule_with_a_credential_or_paths_is_refused() {
    let s = Sandbox::new();
    for (extra, field) in [
        (
            "      credential: {secret: api-key, header: Authorization}\n",
            "spec.egress[0].credential",
        ),
        ("      paths: [\"/v1/*\"]\n", "spec.egress[0].paths"),
    ] {
        let def = s.definition(
            "bad.yaml",
            &PLAIN.replace(
                "      methods: [GET]\n",
                &format!("      tls: passthrough\n{extra}"),
            ),
        );
        let r: Ran = s
            .command()
            .args(["definition", "check", "-f"])
            .arg(&def)
            .output()
            .unwrap()
            .into();
        assert_ne!(r.code, 0, "{r:?}");
        assert!(r.stderr.contains(field), "{r:?}");
        assert!(r.stderr.contains("tls: passthrough"), "{r:?}");
    }
}
