//! A gateway with one door on loopback, an HTTPS and a plain HTTP stand-in upstream, and
//! `curl` as the agent.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentspace_audit::{AuditLog, VerifyOptions};
use agentspace_core::{Actor, Definition, Name, Principal, TaskRef, UserId};
use agentspace_gateway::{
    Credential, Door, DoorListener, Gateway, GatewayConfig, ResolveOverride, Task,
};
use agentspace_policy::PolicyEngine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The test agent: items may be read, charges posted (big ones need approval), and a
/// rule that names internal addresses so only the SSRF guard stands in the way.
pub(crate) const AGENT: &str = r#"apiVersion: agentspace/v1
kind: Agent
metadata:
  name: shopper
  tenant: acme
spec:
  egress:
    - name: items
      hosts: [api.example.com]
      methods: [GET]
      paths: ["/v1/items", "/v1/items/*"]
    - name: payments
      hosts: [api.example.com]
      methods: [POST]
      paths: ["/v1/charges"]
      approval:
        when: 'context.body.amount > 1000'
        timeout: 10m
    - name: uploads
      hosts: [api.example.com]
      methods: [POST]
      paths: ["/v1/uploads"]
    - name: plain
      hosts: [plain.example.com]
      methods: [GET]
    - name: impostor
      hosts: [impostor.example.com]
    - name: internal
      hosts: [localhost, 127.0.0.1, 169.254.169.254, metadata.example.com]
"#;

pub(crate) struct Harness {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) task: Arc<Task>,
    pub(crate) proxy: SocketAddr,
    pub(crate) upstream_tls: SocketAddr,
    pub(crate) upstream_plain: SocketAddr,
    /// The CA of the HTTPS stand-in (what a client that pins it trusts).
    pub(crate) upstream_ca: PathBuf,
    pub(crate) tenant_ca: PathBuf,
    pub(crate) audit: AuditLog,
    /// Connections the HTTPS stand-in has accepted.
    pub(crate) upstream_connections: Arc<AtomicUsize>,
    /// `METHOD URI authorization=VALUE` of every request the stand-ins received.
    pub(crate) upstream_seen: Seen,
}

pub(crate) type Seen = Arc<std::sync::Mutex<Vec<String>>>;

pub(crate) struct Out {
    pub(crate) status: u16,
    pub(crate) headers: String,
    pub(crate) body: String,
}

impl Out {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().rev().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// A test CA: the issuer of stand-ins' certificates, and its certificate as PEM.
pub(crate) fn test_ca() -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, "upstream stand-in test CA");
    let cert = params.self_signed(&key).unwrap();
    (Issuer::new(params, key), cert.pem())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Echoes what the upstream saw as JSON.
async fn echo(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(protocol) = req.headers().get(hyper::header::UPGRADE).cloned() {
        // After the upgrade, echo raw bytes back.
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(hyper::header::UPGRADE, protocol);
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("upgrade"),
        );
        return Ok(resp);
    }
    // Stand-ins for LLM APIs: each reports 60 tokens, as JSON or as an event stream.
    match req.uri().path() {
        "/v1/llm/json" => {
            let mut resp = Response::new(Full::new(Bytes::from_static(
                br#"{"id":"msg_1","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":20,"output_tokens":40}}"#,
            )));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            return Ok(resp);
        }
        "/v1/llm/sse" => {
            let mut resp = Response::new(Full::new(Bytes::from_static(
                b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":40}}\n\n",
            )));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/event-stream"),
            );
            return Ok(resp);
        }
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let v = serde_json::json!({
        "method": parts.method.as_str(),
        "version": format!("{:?}", parts.version),
        "authority": parts.uri.authority().map(|a| a.to_string()),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&bytes),
    });
    Ok(Response::new(Full::new(Bytes::from(v.to_string()))))
}

async fn serve_upstream(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    accepted: Arc<AtomicUsize>,
    seen: Seen,
    audit: AuditLog,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let tls = tls.clone();
        let seen = Arc::clone(&seen);
        let audit = audit.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let seen = Arc::clone(&seen);
            let audit = audit.clone();
            async move {
                // How many decisions are durable in the audit log when the request
                // arrives: the request's own must already be there.
                let audited = tokio::task::spawn_blocking(move || {
                    audit
                        .verify(&VerifyOptions::default())
                        .map(|t| t.iter().map(|t| t.events).sum::<u64>())
                        .unwrap_or(0)
                })
                .await
                .unwrap_or(0);
                let line = format!(
                    "{} {} authorization={} audited={audited}",
                    req.method(),
                    req.uri(),
                    req.headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                );
                seen.lock().unwrap().push(line);
                echo(req).await
            }
        });
        tokio::spawn(async move {
            let builder = {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new());
                b
            };
            match tls {
                Some(acceptor) => {
                    if let Ok(s) = acceptor.accept(stream).await {
                        if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                            let _ = hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(TokioIo::new(s), service)
                            .await;
                        } else {
                            let _ = builder
                                .serve_connection(TokioIo::new(s), service)
                                .with_upgrades()
                                .await;
                        }
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                }
            }
        });
    }
}

pub(crate) fn principal(task: &str) -> Principal {
    Principal::new(
        Name::new("acme").unwrap(),
        UserId::new("alice@acme.example").unwrap(),
        Actor::new(Name::new("shopper").unwrap(), TaskRef::new(task).unwrap()),
    )
}

impl Harness {
    pub(crate) async fn start() -> Self {
        Self::start_with(AGENT).await
    }

    /// A harness whose door's task runs the agent `definition`.
    pub(crate) async fn start_with(definition: &str) -> Self {
        Self::start_full(definition, Vec::new(), &[]).await
    }

    /// A harness with brokered `credentials` and `secrets` stored before it starts.
    pub(crate) async fn start_full(
        definition: &str,
        credentials: Vec<(&str, Credential)>,
        secrets: &[(&str, &[u8])],
    ) -> Self {
        Self::start_custom(definition, credentials, secrets, &[]).await
    }

    /// Like [`Harness::start_full`] with more resolve overrides (`HOST:PORT:ADDR`).
    pub(crate) async fn start_custom(
        definition: &str,
        credentials: Vec<(&str, Credential)>,
        secrets: &[(&str, &[u8])],
        resolve: &[String],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let def_path = dir.path().join("agent.yaml");
        std::fs::write(&def_path, definition).unwrap();
        let definition = Definition::parse(&def_path, definition).unwrap();
        let state = dir.path().join("state");
        let policy = Arc::new(PolicyEngine::load(&definition, &state).unwrap());
        let audit = AuditLog::open(&state).unwrap();
        let store = agentspace_secrets::SecretStore::open(&state);
        for (name, value) in secrets {
            store.set(&Name::new("acme").unwrap(), name, value).unwrap();
        }

        // Stand-ins: one HTTPS server posing as api.example.com (its CA trusted only by
        // the gateway's upstream client), one plain HTTP server.
        let (issuer, ca_pem) = test_ca();
        let ca_file = dir.path().join("upstream-ca.pem");
        std::fs::write(&ca_file, &ca_pem).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![
            "api.example.com".to_owned(),
            "other.example.com".to_owned(),
        ])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        let mut server = server;
        // The HTTPS stand-in speaks HTTP/2 when asked, like most real APIs.
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tls_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_tls = tls_listener.local_addr().unwrap();
        let upstream_connections = Arc::new(AtomicUsize::new(0));
        let upstream_seen = Seen::default();
        tokio::spawn(serve_upstream(
            tls_listener,
            Some(TlsAcceptor::from(Arc::new(server))),
            Arc::clone(&upstream_connections),
            Arc::clone(&upstream_seen),
            audit.clone(),
        ));
        let plain_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_plain = plain_listener.local_addr().unwrap();
        tokio::spawn(serve_upstream(
            plain_listener,
            None,
            Arc::default(),
            Arc::clone(&upstream_seen),
            audit.clone(),
        ));

        let mut config = GatewayConfig::new(&state);
        config.system_roots = false;
        config.upstream_ca = vec![ca_file.clone()];
        for entry in resolve.iter().cloned().chain([
            format!("api.example.com:443:{upstream_tls}"),
            format!("other.example.com:443:{upstream_tls}"),
            format!("plain.example.com:80:{upstream_plain}"),
            // Allowed by no certificate of the stand-in: upstream verification must fail.
            format!("impostor.example.com:443:{upstream_tls}"),
        ]) {
            config.resolve.push(ResolveOverride::parse(&entry).unwrap());
        }
        let gateway = Gateway::new(config, audit.clone()).unwrap();
        let tenant_ca = gateway
            .tenant_ca(&Name::new("acme").unwrap())
            .unwrap()
            .cert_path()
            .to_owned();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let door = Door::new(
            DoorListener::Tcp(listener),
            credentials.into_iter().fold(
                Task::new(principal("t1"), policy)
                    .with_identity(Arc::new(agentspace_identity::Identity::open(&state))),
                |t, (cap, cred)| t.with_credential(cap, cred),
            ),
        );
        let task = Arc::clone(door.task());
        tokio::spawn(Arc::clone(&gateway).serve(door));
        Self {
            dir,
            gateway,
            task,
            proxy,
            upstream_tls,
            upstream_plain,
            upstream_ca: ca_file,
            tenant_ca,
            audit,
            upstream_connections,
            upstream_seen,
        }
    }

    /// Runs `curl` through the proxy, trusting only the tenant CA.
    pub(crate) async fn curl(&self, args: &[&str]) -> Out {
        let mut all: Vec<String> = vec![
            "--proxy".into(),
            format!("http://{}", self.proxy),
            "--cacert".into(),
            self.tenant_ca.display().to_string(),
        ];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        self.curl_raw(all).await
    }

    /// Runs `curl` with exactly `args` (plus output plumbing).
    pub(crate) async fn curl_raw(&self, args: Vec<String>) -> Out {
        let out_dir = tempfile::tempdir_in(self.dir.path()).unwrap();
        let headers = out_dir.path().join("headers");
        let body = out_dir.path().join("body");
        let (h, b) = (headers.clone(), body.clone());
        let output = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-sS", "--max-time", "30", "-w", "%{http_code}", "-D"])
                .arg(&h)
                .arg("-o")
                .arg(&b)
                .args(&args)
                .env_remove("http_proxy")
                .env_remove("https_proxy")
                .env_remove("HTTPS_PROXY")
                .env_remove("ALL_PROXY")
                .env_remove("all_proxy")
                .env_remove("NO_PROXY")
                .env_remove("no_proxy")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        // With several URLs curl prints one code after another: keep the last.
        let codes = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let status: u16 = codes
            .get(codes.len().saturating_sub(3)..)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Out {
            status,
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            body: std::fs::read_to_string(&body)
                .unwrap_or_else(|_| String::from_utf8_lossy(&output.stderr).into_owned()),
        }
    }

    /// Verifies the tenant's chain and returns how many events it holds.
    pub(crate) async fn verified_events(&self) -> u64 {
        let audit = self.audit.clone();
        tokio::task::spawn_blocking(move || {
            let verified = audit
                .verify(&VerifyOptions {
                    tenant: Some("acme".into()),
                    ..VerifyOptions::default()
                })
                .unwrap();
            verified.iter().map(|t| t.events).sum()
        })
        .await
        .unwrap()
    }

    /// The audit events of the tenant, in order, as JSON.
    pub(crate) async fn events(&self) -> Vec<serde_json::Value> {
        let audit = self.audit.clone();
        tokio::task::spawn_blocking(move || {
            let mut events = Vec::new();
            audit
                .query(
                    &agentspace_audit::Filter {
                        tenant: Some("acme".into()),
                        ..agentspace_audit::Filter::default()
                    },
                    |e| {
                        events.push(serde_json::to_value(&e.event).unwrap());
                        Ok(true)
                    },
                )
                .unwrap();
            events
        })
        .await
        .unwrap()
    }
}
