//! The client of the gateway benchmark (`bench/gateway.sh`): the same HTTPS client, with
//! the same TLS stack and the same requests, for every peer — a direct connection to the
//! upstream, or a CONNECT tunnel through a proxy (Agent Space's gateway, mitmdump,
//! squid) with TLS to the upstream's name inside.
//!
//! For each round and each peer, in turn:
//! - latency: one keep-alive connection, `--warmup` requests, then `--requests`
//!   sequential requests, each timed from sending the head to the last byte of the body;
//! - throughput: for each `--connections` count C, C keep-alive connections opened
//!   first, then as many sequential requests on each as fit in `--seconds`.
//!
//! Every request is a `GET` of a distinct path under `--path` (a real agent's requests
//! differ, and the gateway's loop breaker denies a request repeated past its limit); a
//! response other than 200 counts as an error and fails the run. With `--cpu
//! NAME=PID,...` the CPU time (user + system, from /proc, 10 ms ticks) those processes
//! used during each throughput case is divided by its requests: a cost per request that
//! other load on the machine disturbs far less than requests per second. Prints one JSON
//! object per measurement on stdout (bench/gateway.sh turns them into the report).
//!
//! ```text
//! gateway_bench --host api.bench.test --port 8443 --addr 127.0.0.1:8443 --ca ca.pem \
//!     --peer direct=direct --peer squid=127.0.0.1:3129 [--rounds 3] [--requests 2000]
//!     [--warmup 200] [--connections 16,64] [--seconds 5] [--threads 2]
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How a peer is reached.
#[derive(Clone, Debug)]
enum Via {
    Direct,
    Proxy(SocketAddr),
}

#[derive(Clone, Debug)]
struct Peer {
    name: String,
    via: Via,
}

struct Options {
    host: String,
    port: u16,
    addr: SocketAddr,
    cas: Vec<PathBuf>,
    peers: Vec<Peer>,
    rounds: usize,
    requests: usize,
    warmup: usize,
    connections: Vec<usize>,
    seconds: f64,
    threads: usize,
    path: String,
    /// Processes whose CPU time is charged per request: by peer name (and `upstream`).
    cpu: Vec<(String, Vec<u32>)>,
}

fn parse_args() -> Result<Options, Error> {
    let mut o = Options {
        host: "api.bench.test".into(),
        port: 8443,
        addr: "127.0.0.1:8443".parse()?,
        cas: Vec::new(),
        peers: Vec::new(),
        rounds: 3,
        requests: 2000,
        warmup: 200,
        connections: vec![16, 64],
        seconds: 5.0,
        threads: 2,
        path: "/v1/items/".into(),
        cpu: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--host" => o.host = value()?,
            "--port" => o.port = value()?.parse()?,
            "--addr" => o.addr = value()?.parse()?,
            "--ca" => o.cas.push(value()?.into()),
            "--peer" => {
                let v = value()?;
                let (name, via) = v.split_once('=').ok_or("--peer NAME=direct|ADDR:PORT")?;
                let via = match via {
                    "direct" => Via::Direct,
                    addr => Via::Proxy(addr.parse()?),
                };
                o.peers.push(Peer {
                    name: name.into(),
                    via,
                });
            }
            "--rounds" => o.rounds = value()?.parse()?,
            "--requests" => o.requests = value()?.parse()?,
            "--warmup" => o.warmup = value()?.parse()?,
            "--connections" => {
                o.connections = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--seconds" => o.seconds = value()?.parse()?,
            "--threads" => o.threads = value()?.parse()?,
            "--path" => o.path = value()?,
            "--cpu" => {
                let v = value()?;
                let (name, pids) = v.split_once('=').ok_or("--cpu NAME=PID[,PID...]")?;
                let pids = pids.split(',').map(str::parse).collect::<Result<_, _>>()?;
                o.cpu.push((name.into(), pids));
            }
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    if o.peers.is_empty() {
        return Err("name at least one --peer".into());
    }
    Ok(o)
}

struct Client {
    o: Options,
    tls: TlsConnector,
    /// Numbers the request paths, so that no two requests are the same.
    seq: AtomicU64,
}

/// One keep-alive connection, through the peer's tunnel when it has one.
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
}

impl Client {
    async fn connect(&self, peer: &Peer) -> Result<Conn, Error> {
        let authority = format!("{}:{}", self.o.host, self.o.port);
        let tcp = match peer.via {
            Via::Direct => TcpStream::connect(self.o.addr).await?,
            Via::Proxy(proxy) => {
                let mut tcp = TcpStream::connect(proxy).await?;
                tcp.set_nodelay(true)?;
                let head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
                tcp.write_all(head.as_bytes()).await?;
                // Byte by byte up to the end of the head, so nothing of the tunnel is
                // read here (once per connection, outside every timing).
                let mut resp = Vec::new();
                while !resp.ends_with(b"\r\n\r\n") {
                    let b = tcp.read_u8().await?;
                    resp.push(b);
                    if resp.len() > 16 * 1024 {
                        return Err("CONNECT response head too long".into());
                    }
                }
                let status = String::from_utf8_lossy(&resp);
                let ok = status
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|code| code == "200");
                if !ok {
                    return Err(format!(
                        "{}: CONNECT refused: {}",
                        peer.name,
                        status.lines().next().unwrap_or("")
                    )
                    .into());
                }
                tcp
            }
        };
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.o.host.clone())?;
        let tls = self.tls.connect(name, tcp).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender })
    }

    /// One request on `conn`, read to the end of its body; returns the body.
    async fn request(&self, conn: &mut Conn) -> Result<Bytes, Error> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let req = http::Request::get(format!("{}{n}", self.o.path))
            .header(
                http::header::HOST,
                format!("{}:{}", self.o.host, self.o.port),
            )
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "agentspace-gateway-bench/1")
            // What an agent holding no secret sends: the gateway replaces it with the
            // brokered one; the other peers pass it on.
            .header(http::header::AUTHORIZATION, "Bearer agent-has-no-key")
            .body(Empty::new())?;
        conn.sender.ready().await?;
        let resp = conn.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status != http::StatusCode::OK {
            return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)).into());
        }
        Ok(body)
    }
}

/// User + system CPU time of `pid` (`self` for this process), in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    field(11) + field(12)
}

/// CPU time so far of the peer's processes, the upstream's and this client's, in µs.
fn cpu_snapshot(o: &Options, peer: &str) -> [f64; 3] {
    // Clock ticks are 100 per second on Linux (USER_HZ).
    let us = |ticks: u64| ticks as f64 * 10_000.0;
    let of = |name: &str| {
        o.cpu
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, pids)| pids)
            .map(|p| cpu_ticks(&p.to_string()))
            .sum::<u64>()
    };
    [us(of(peer)), us(of("upstream")), us(cpu_ticks("self"))]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn latency(client: &Client, peer: &Peer, round: usize) -> Result<(), Error> {
    let mut conn = client.connect(peer).await?;
    let mut first = None;
    for _ in 0..client.o.warmup {
        let body = client.request(&mut conn).await?;
        first.get_or_insert(body);
    }
    let mut samples = Vec::with_capacity(client.o.requests);
    for _ in 0..client.o.requests {
        let start = Instant::now();
        client.request(&mut conn).await?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let line = serde_json::json!({
        "kind": "latency",
        "peer": peer.name,
        "round": round,
        "requests": samples.len(),
        "p50_us": percentile(&sorted, 0.50),
        "p90_us": percentile(&sorted, 0.90),
        "p99_us": percentile(&sorted, 0.99),
        "mean_us": samples.iter().sum::<f64>() / samples.len().max(1) as f64,
        "samples_us": samples,
        "body": first.map(|b| String::from_utf8_lossy(&b).into_owned()),
    });
    println!("{line}");
    Ok(())
}

async fn throughput(
    client: &Arc<Client>,
    peer: &Peer,
    round: usize,
    connections: usize,
) -> Result<(), Error> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut conn = client.connect(peer).await?;
        // One request each before timing: the gateway's upstream connection is opened
        // by the first request of a tunnel.
        client.request(&mut conn).await?;
        conns.push(conn);
    }
    let duration = Duration::from_secs_f64(client.o.seconds);
    let cpu_before = cpu_snapshot(&client.o, &peer.name);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(connections);
    for mut conn in conns {
        let client = Arc::clone(client);
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                client.request(&mut conn).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                done += 1;
            }
            Ok::<_, Error>((done, lat))
        }));
    }
    let mut total = 0u64;
    let mut lat = Vec::new();
    for t in tasks {
        let (done, l) = t.await??;
        total += done;
        lat.extend(l);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = cpu_snapshot(&client.o, &peer.name);
    let per_request = |i: usize| (cpu_after[i] - cpu_before[i]) / total.max(1) as f64;
    lat.sort_by(f64::total_cmp);
    let line = serde_json::json!({
        "kind": "throughput",
        "peer": peer.name,
        "round": round,
        "connections": connections,
        "requests": total,
        "seconds": elapsed,
        "rps": total as f64 / elapsed,
        "p50_us": percentile(&lat, 0.50),
        "p99_us": percentile(&lat, 0.99),
        "cpu_us_per_request": {
            "peer": per_request(0),
            "upstream": per_request(1),
            "client": per_request(2),
        },
    });
    println!("{line}");
    Ok(())
}

fn main() -> Result<(), Error> {
    let o = parse_args()?;
    let mut roots = RootCertStore::empty();
    for path in &o.cas {
        for cert in CertificateDer::pem_file_iter(path)? {
            roots.add(cert?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads.max(1))
        .enable_all()
        .build()?;
    let client = Arc::new(Client {
        tls: TlsConnector::from(Arc::new(tls)),
        o,
        seq: AtomicU64::new(0),
    });
    runtime.block_on(async move {
        for round in 0..client.o.rounds {
            for peer in &client.o.peers {
                latency(&client, peer, round)
                    .await
                    .map_err(|e| format!("{} latency: {e}", peer.name))?;
            }
            for &c in &client.o.connections {
                for peer in &client.o.peers {
                    throughput(&client, peer, round, c)
                        .await
                        .map_err(|e| format!("{} throughput with {c}: {e}", peer.name))?;
                }
            }
        }
        Ok(())
    })
}
