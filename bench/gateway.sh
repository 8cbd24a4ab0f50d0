#!/usr/bin/env bash
# Gateway benchmark (issue 5, "Speed"): added latency and throughput of HTTPS through
# `agentspace gateway` (TLS interception + policy + credential injection + audit) against
# a direct connection, mitmdump (Debian's mitmproxy, intercepting) and squid (CONNECT
# only, no interception): the same client (the gateway_bench example), the same local
# HTTPS upstream (nginx with a test CA), the same run, peers interleaved round by round.
#
# Usage: sudo bench/gateway.sh   (root: installs the peers with apt-get when missing, and
# gives the run its own /etc/hosts in a private mount namespace so that every peer
# resolves api.bench.test to the loopback upstream)
# Environment: AGENTSPACE_BIN=path (prebuilt binary), BENCH_ROUNDS (3), BENCH_REQUESTS
# (2000 sequential per round), BENCH_CONNECTIONS (16,64), BENCH_SECONDS (5 per case),
# BENCH_PEERS (direct,agentspace,mitmdump,squid), BENCH_OUT (target/bench/gateway),
# BASELINE_BIN=path (adds peer `before`: that binary's gateway, to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "bench/gateway.sh: run as root (sudo): it installs peers and mounts its own /etc/hosts" >&2
  exit 1
fi
if [ -z "${GATEWAY_BENCH_NS:-}" ]; then
  missing=""
  for tool in mitmdump:mitmproxy squid:squid nginx:nginx-light openssl:openssl; do
    command -v "${tool%%:*}" >/dev/null || missing="$missing ${tool#*:}"
  done
  if [ -n "$missing" ]; then
    # The peers are not in scripts/debian-packages: no test needs them.
    apt-get install -y -q $missing >/dev/null
  fi
  exec env GATEWAY_BENCH_NS=1 unshare --mount --propagation private "$0" "$@"
fi

if [ -z "${AGENTSPACE_BIN:-}" ]; then
  cargo build -q --release -p agentspace-cli
fi
cargo build -q --release -p agentspace-gateway --example gateway_bench
bin="${AGENTSPACE_BIN:-$PWD/target/release/agentspace}"
client="$PWD/target/release/examples/gateway_bench"
out="${BENCH_OUT:-$PWD/target/bench/gateway}"
mkdir -p "$out"
work="$(mktemp -d)"
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

host=api.bench.test
up_port=8443
gw_port=3128
mitm_port=3129
squid_port=3130
before_port=3131
secret="sk_bench_$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

# Names: api.bench.test is the upstream on loopback, for every peer alike.
cp /etc/hosts "$work/hosts"
echo "127.0.0.1 $host" >>"$work/hosts"
mount --bind "$work/hosts" /etc/hosts

# The upstream's test CA and certificate (ECDSA P-256, like the gateway's leaves).
. bench/lib.sh
test_certificate "$work" "$host"

# The upstream: nginx, a small JSON answer with an LLM-style `usage` object (so the
# gateway's token counting runs) that says whether the brokered key arrived.
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  map \$http_authorization \$auth {
    "Bearer $secret" brokered;
    default agent;
  }
  server {
    listen 127.0.0.1:$up_port ssl;
    ssl_certificate $work/up.pem;
    ssl_certificate_key $work/up.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      default_type application/json;
      return 200 '{"id":"msg_bench","type":"message","auth":"\$auth","content":[{"type":"text","text":"ok"}],"usage":{"input_tokens":12,"output_tokens":30}}\n';
    }
  }
}
EOF
nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' & pids+=($!); nginx_pid=$!

# Agent Space: the gateway for one task of bench/gateway.yaml, its key brokered.
state="$work/state"
printf %s "$secret" | "$bin" --state-dir "$state" secret set --tenant bench bench-key
"$bin" --state-dir "$state" gateway -f bench/gateway.yaml --user bench \
  --listen "127.0.0.1:$gw_port" --resolve "$host:$up_port:127.0.0.1" \
  --upstream-ca "$work/ca.pem" 2>"$work/gateway.log" & pids+=($!); cpu_args=(--cpu "agentspace=$!")

if [ -n "${BASELINE_BIN:-}" ]; then
  printf %s "$secret" | "$BASELINE_BIN" --state-dir "$work/state-before" secret set --tenant bench bench-key
  "$BASELINE_BIN" --state-dir "$work/state-before" gateway -f bench/gateway.yaml --user bench \
    --listen "127.0.0.1:$before_port" --resolve "$host:$up_port:127.0.0.1" \
    --upstream-ca "$work/ca.pem" 2>"$work/gateway-before.log" & pids+=($!)
  cpu_args+=(--cpu "before=$!")
fi

# mitmdump: intercepting, upstream verified against the test CA, quiet (no flow log).
mkdir -p "$work/mitm"
mitmdump -q --listen-host 127.0.0.1 --listen-port "$mitm_port" --set confdir="$work/mitm" \
  --set ssl_verify_upstream_trusted_ca="$work/ca.pem" \
  >"$work/mitm.log" 2>&1 & pids+=($!); cpu_args+=(--cpu "mitmdump=$!")

# squid: CONNECT tunnels only, no cache, no log.
mkdir -p "$work/squid"
chown proxy: "$work/squid" 2>/dev/null || true
cat >"$work/squid/squid.conf" <<EOF
http_port 127.0.0.1:$squid_port
acl bench_port port $up_port
acl CONNECT method CONNECT
http_access deny CONNECT !bench_port
http_access allow localhost
http_access deny all
cache deny all
access_log none
cache_store_log none
cache_log $work/squid/cache.log
pid_filename $work/squid/squid.pid
coredump_dir $work/squid
hosts_file $work/hosts
shutdown_lifetime 0 seconds
EOF
squid -N -f "$work/squid/squid.conf" & pids+=($!); cpu_args+=(--cpu "squid=$!")

wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench/gateway.sh: nothing listens on port $1 ($2)" >&2
  exit 1
}
wait_port "$up_port" nginx
wait_port "$gw_port" agentspace
wait_port "$mitm_port" mitmdump
wait_port "$squid_port" squid
[ -z "${BASELINE_BIN:-}" ] || wait_port "$before_port" before
for _ in $(seq 100); do [ -f "$work/mitm/mitmproxy-ca-cert.pem" ] && break; sleep 0.1; done
tenant_ca="$state/gateway/ca/bench/ca.pem"
cpu_args+=(--cpu "upstream=$(pgrep -d, -P "$nginx_pid")")

declare -A via=([direct]=direct [agentspace]="127.0.0.1:$gw_port"
  [mitmdump]="127.0.0.1:$mitm_port" [squid]="127.0.0.1:$squid_port"
  [before]="127.0.0.1:$before_port")
peer_args=()
IFS=, read -r -a peers <<<"${BENCH_PEERS:-direct,agentspace,mitmdump,squid}"
for p in "${peers[@]}"; do peer_args+=(--peer "$p=${via[$p]}"); done

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
  echo "peers: $(nginx -v 2>&1 | cut -d: -f2 | tr -d ' ') upstream; mitmdump $(mitmdump --version 2>/dev/null | awk '/Mitmproxy/{print $2}'); squid $(squid -v | awk 'NR==1{print $4}')"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/run.txt"

# Load during the run, every 5 s.
(while sleep 5; do echo "$(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)"; done) \
  >"$out/load.txt" & pids+=($!)

"$client" --host "$host" --port "$up_port" --addr "127.0.0.1:$up_port" \
  --ca "$work/ca.pem" --ca "$tenant_ca" --ca "$work/mitm/mitmproxy-ca-cert.pem" \
  ${BASELINE_BIN:+--ca "$work/state-before/gateway/ca/bench/ca.pem"} \
  --rounds "${BENCH_ROUNDS:-3}" --requests "${BENCH_REQUESTS:-2000}" \
  --connections "${BENCH_CONNECTIONS:-16,64}" --seconds "${BENCH_SECONDS:-5}" \
  "${peer_args[@]}" "${cpu_args[@]}" >"$out/results.jsonl"

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/run.txt"
# The audit log holds one verified event per request the gateway forwarded.
"$bin" --state-dir "$state" audit verify --tenant bench >"$out/audit-verify.txt" 2>&1 &&
  echo "audit: $(tail -1 "$out/audit-verify.txt")" | tee -a "$out/run.txt"

python3 - "$out/results.jsonl" "$out/load.txt" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
load = [l.split()[1] for l in open(sys.argv[2]) if l.strip()]
peers = list(dict.fromkeys(r["peer"] for r in rows))
def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(round(p * (len(v) - 1))))]
lat = {p: [s for r in rows if r["kind"] == "latency" and r["peer"] == p for s in r["samples_us"]] for p in peers}
for p in peers:
    body = next(r["body"] for r in rows if r["kind"] == "latency" and r["peer"] == p)
    print(f"{p}: upstream answered {body.strip()[:60]}...")
print(f"\nload average (1 min) during the run: {min(load, default='?')} to {max(load, default='?')}\n")
print("Latency, one keep-alive connection, sequential requests "
      f"({len(lat[peers[0]])} per peer over all rounds):\n")
print("| peer | p50 µs | p99 µs | added p50 µs | added p99 µs | p50 per round |")
print("| --- | ---: | ---: | ---: | ---: | --- |")
d50, d99 = (pct(lat["direct"], q) for q in (0.5, 0.99)) if "direct" in lat else (0, 0)
for p in peers:
    p50, p99 = pct(lat[p], 0.5), pct(lat[p], 0.99)
    rounds = ", ".join(f"{r['p50_us']:.0f}" for r in rows if r["kind"] == "latency" and r["peer"] == p)
    print(f"| {p} | {p50:.0f} | {p99:.0f} | {p50 - d50:+.0f} | {p99 - d99:+.0f} | {rounds} |")
conns = sorted({r["connections"] for r in rows if r["kind"] == "throughput"})
tp = {(p, c): [r["rps"] for r in rows if r["kind"] == "throughput" and r["peer"] == p and r["connections"] == c]
      for p in peers for c in conns}
print("\nThroughput, requests/s (median of rounds; each round's in brackets):\n")
print("| peer | " + " | ".join(f"{c} conns" for c in conns) + " | " + " | ".join(f"vs direct ({c})" for c in conns)
      + " | " + " | ".join(f"vs mitmdump ({c})" for c in conns) + " |")
print("| --- |" + " ---: |" * (3 * len(conns)))
med = {k: statistics.median(v) for k, v in tp.items()}
for p in peers:
    cells = [f"{med[p, c]:,.0f} [{', '.join(f'{x:,.0f}' for x in tp[p, c])}]" for c in conns]
    vd = [f"{med[p, c] / med['direct', c]:.2f}" if "direct" in peers else "-" for c in conns]
    vm = [f"{med[p, c] / med['mitmdump', c]:.2f}" if "mitmdump" in peers else "-" for c in conns]
    print(f"| {p} | " + " | ".join(cells + vd + vm) + " |")
cpu = {(p, c): [r["cpu_us_per_request"] for r in rows if r["kind"] == "throughput" and r["peer"] == p and r["connections"] == c]
       for p in peers for c in conns}
print("\nCPU time per request, µs (user + system, median of rounds): the peer's own process(es), "
      "the upstream's (nginx) and the client's:\n")
print("| peer | " + " | ".join(f"peer ({c})" for c in conns) + " | " + " | ".join(f"upstream ({c})" for c in conns)
      + " | " + " | ".join(f"client ({c})" for c in conns) + " |")
print("| --- |" + " ---: |" * (3 * len(conns)))
for p in peers:
    cells = [f"{statistics.median(x[k] for x in cpu[p, c]):.0f}" for k in ("peer", "upstream", "client") for c in conns]
    print(f"| {p} | " + " | ".join(cells) + " |")
if "agentspace" in peers:
    print("\nTargets:")
    added = pct(lat["agentspace"], 0.5) - d50
    print(f"- p50 added latency <= 1 ms: {added / 1000:.3f} ms -> {'met' if added <= 1000 else 'MISSED'}")
    for c in conns:
        if "mitmdump" in peers:
            r = med["agentspace", c] / med["mitmdump", c]
            print(f"- throughput >= 5x mitmdump ({c} conns): {r:.2f}x -> {'met' if r >= 5 else 'MISSED'}")
        if "direct" in peers:
            r = med["agentspace", c] / med["direct", c]
            print(f"- throughput >= 50% of direct ({c} conns): {r:.0%} -> {'met' if r >= 0.5 else 'MISSED'}")
PY
