//! AWS Signature Version 4 brokering, verified by an independent implementation: a
//! stand-in whose verifier is botocore's own signer (`SigV4Auth` / `S3SigV4Auth`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use agentspace_gateway::{Apply, Credential};
use pretty_assertions::assert_eq;

use super::helpers::Harness;

const ACCESS_KEY_ID: &str = "AKIAAGENTSPACETEST01";
const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI-agentspace-test-secret-key";
const SESSION_TOKEN: &str = "FwoGZXIvYXdzEAgentspaceSessionToken";

/// A plain-HTTP stand-in for an AWS service: recomputes the signature of each request
/// with botocore and answers whether it verifies, what was signed, and the payload hash.
const VERIFIER: &str = r#"
import hashlib, http.server, json, sys
from botocore.auth import SigV4Auth, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AK, SK, TOKEN, REGION, SERVICE = sys.argv[1:6]

def verify(method, path, headers, body):
    auth = headers.get("Authorization") or ""
    prefix = "AWS4-HMAC-SHA256 "
    if not auth.startswith(prefix):
        return "no signature", ""
    fields = dict(p.strip().split("=", 1) for p in auth[len(prefix):].split(","))
    signed = fields["SignedHeaders"].split(";")
    date = headers.get("X-Amz-Date") or ""
    if fields["Credential"] != "%s/%s/%s/%s/aws4_request" % (AK, date[:8], REGION, SERVICE):
        return "wrong credential scope " + fields["Credential"], fields["SignedHeaders"]
    cls = S3SigV4Auth if SERVICE == "s3" else SigV4Auth
    signer = cls(Credentials(AK, SK, TOKEN or None), SERVICE, REGION)
    request = AWSRequest(
        method=method,
        url="http://" + headers["Host"] + path,
        headers={name: headers[name] for name in signed},
        data=body,
    )
    request.context["timestamp"] = date
    canonical = signer.canonical_request(request)
    want = signer.signature(signer.string_to_sign(request, canonical), request)
    if fields["Signature"] != want:
        return "signature mismatch", fields["SignedHeaders"]
    sha = headers.get("X-Amz-Content-Sha256")
    if sha != "UNSIGNED-PAYLOAD" and sha != hashlib.sha256(body).hexdigest():
        return "payload hash mismatch", fields["SignedHeaders"]
    if TOKEN and headers.get("X-Amz-Security-Token") != TOKEN:
        return "session token missing", fields["SignedHeaders"]
    return "ok", fields["SignedHeaders"]

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        verdict, signed = verify(self.command, self.path, self.headers, body)
        out = json.dumps({
            "verdict": verdict,
            "signed": signed,
            "payload": self.headers.get("X-Amz-Content-Sha256"),
            "date": self.headers.get("X-Amz-Date"),
            "length": len(body),
        }).encode()
        self.send_response(200 if verdict == "ok" else 403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_PUT = do_POST = do_DELETE = handle_any
    def log_message(self, *a):
        pass

s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

struct Verifier {
    child: Child,
    port: u16,
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn verifier(token: &str, service: &str) -> Verifier {
    let mut child = Command::new("python3")
        .args([
            "-c",
            VERIFIER,
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            token,
            "eu-west-1",
            service,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the verifier did not start (botocore installed?): {line}"));
    Verifier { child, port }
}

const AWS_AGENT: &str = r#"apiVersion: agentspace/v1
kind: Agent
metadata:
  name: shopper
  tenant: acme
spec:
  egress:
    - name: bucket
      hosts: [bucket.s3.example.test]
    - name: api
      hosts: [api.execute.example.test]
  loopLimit: 10
"#;

fn sigv4(service: &str) -> Credential {
    Credential {
        secret: "aws-key".into(),
        apply: Apply::AwsSigV4 {
            region: "eu-west-1".into(),
            service: service.into(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_signed_so_that_botocore_verifies_them() {
    for (service, host, token) in [
        ("s3", "bucket.s3.example.test", SESSION_TOKEN),
        ("execute-api", "api.execute.example.test", ""),
    ] {
        let v = verifier(token, service);
        let secret = if token.is_empty() {
            format!("{ACCESS_KEY_ID}:{SECRET_ACCESS_KEY}")
        } else {
            format!("{ACCESS_KEY_ID}:{SECRET_ACCESS_KEY}:{SESSION_TOKEN}")
        };
        let capability = if service == "s3" { "bucket" } else { "api" };
        let h = Harness::start_custom(
            AWS_AGENT,
            vec![(capability, sigv4(service))],
            &[("aws-key", secret.as_bytes())],
            &[format!("{host}:80:127.0.0.1:{}", v.port)],
        )
        .await;
        let big = h.dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 200_000]).unwrap();
        let big = format!("@{}", big.display());
        let cases: [(&str, Vec<&str>, &str); 4] = [
            // The agent's own signature and date are removed and replaced.
            (
                "GET with forged headers",
                vec![
                    "-H",
                    "Authorization: AWS4-HMAC-SHA256 Credential=forged",
                    "-H",
                    "X-Amz-Date: 19990101T000000Z",
                    "-H",
                    "X-Amz-Security-Token: forged",
                ],
                "/photos/2024/cat%20one.jpg?versionId=3&list-type=2",
            ),
            (
                "small PUT",
                vec!["-X", "PUT", "--data-binary", "hello, bucket"],
                "/photos/note.txt",
            ),
            (
                "large PUT",
                vec!["-X", "PUT", "--data-binary", &big],
                "/photos/big.bin",
            ),
            ("DELETE", vec!["-X", "DELETE"], "/photos/old.txt"),
        ];
        for (what, args, path) in cases {
            let url = format!("http://{host}{path}");
            let mut all: Vec<&str> = args.clone();
            all.push(&url);
            let out = h.curl(&all).await;
            assert_eq!(out.status, 200, "{service} {what}: {}", out.body);
            let seen = out.json();
            assert_eq!(seen["verdict"], "ok", "{service} {what}: {seen}");
            assert_ne!(seen["date"], "19990101T000000Z");
            let signed = seen["signed"].as_str().unwrap();
            let want = if token.is_empty() {
                "host;x-amz-content-sha256;x-amz-date"
            } else {
                "host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
            };
            assert_eq!(signed, want, "{what}");
            match what {
                "large PUT" => {
                    assert_eq!(seen["payload"], "UNSIGNED-PAYLOAD");
                    assert_eq!(seen["length"], 200_000);
                }
                "small PUT" => assert_eq!(seen["payload"], sha256_hex(b"hello, bucket")),
                _ => assert_eq!(seen["payload"], sha256_hex(b"")),
            }
            for secret in [SECRET_ACCESS_KEY, SESSION_TOKEN] {
                assert!(!out.body.contains(secret) && !out.headers.contains(secret));
            }
        }
        let events = serde_json::to_string(&h.events().await).unwrap();
        assert!(!events.contains(SECRET_ACCESS_KEY) && !events.contains(SESSION_TOKEN));
        assert!(events.contains("\"credential\":\"aws-key\""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_is_not_an_aws_key_denies_the_request() {
    let v = verifier("", "s3");
    let h = Harness::start_custom(
        AWS_AGENT,
        vec![("bucket", sigv4("s3"))],
        &[("aws-key", b"just-one-part")],
        &[format!("bucket.s3.example.test:80:127.0.0.1:{}", v.port)],
    )
    .await;
    let out = h.curl(&["http://bucket.s3.example.test/x"]).await;
    assert_eq!(out.status, 403, "{}", out.body);
    let body = out.json();
    assert_eq!(body["code"], "credential");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("ACCESS_KEY_ID:SECRET_ACCESS_KEY"),
        "{body}"
    );
    assert!(!out.body.contains("just-one-part"));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
