#!/usr/bin/env bash
# Control plane under load (issue 7, "Load"): BENCH_TASKS (200) concurrent tasks through
# one `agentspace serve`, each a real cell (started with `agentspace run --server`)
# whose agent makes HTTPS requests back to back through its gateway to a loopback
# stand-in (nginx): allowed ones, denied ones (one in five), and for BENCH_APPROVALS
# (20) of them one request held for approval, approved by an automated approver that
# follows the event stream and approves through the API. The peer, in the same run:
# the same agents under plain bubblewrap, connecting straight to the stand-in.
#
# Reports decisions per second, decision latency (p50, p99), approval round trip,
# memory per task (PSS), and the ratios to the peer. Raw results:
# target/bench/serve/results.json.
#
# Usage: sudo bench/serve.sh   (root: cells, bubblewrap; installs nginx-light if missing)
# Environment: AGENTSPACE_BIN=path (prebuilt binary), BENCH_TASKS (200), BENCH_SECONDS
# (30, the load phase), BENCH_APPROVALS (20), BENCH_RAMP (seconds from launching the
# tasks to the common start; default 30 + TASKS/4), BENCH_OUT (target/bench/serve),
# BENCH_PEERS (agentspace,bwrap), BENCH_RATE (requests per second per agent, paced,
# latency counted from when each was due; default 0: back to back), BENCH_KEEP=1 (keep
# the work directory).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "bench/serve.sh: run as root (sudo): cells and bubblewrap need it" >&2
  exit 1
fi
command -v nginx >/dev/null || apt-get install -y -q nginx-light >/dev/null
for tool in bwrap python3 openssl curl; do
  command -v "$tool" >/dev/null || { echo "bench/serve.sh: needs $tool (scripts/debian-packages)" >&2; exit 1; }
done

tasks="${BENCH_TASKS:-200}"
seconds="${BENCH_SECONDS:-30}"
approvals="${BENCH_APPROVALS:-20}"
ramp="${BENCH_RAMP:-$((30 + tasks / 4))}"
rate="${BENCH_RATE:-0}"
peers="${BENCH_PEERS:-agentspace,bwrap}"
if [ -z "${AGENTSPACE_BIN:-}" ]; then
  cargo build -q --release -p agentspace-cli
fi
bin="${AGENTSPACE_BIN:-$PWD/target/release/agentspace}"
out="${BENCH_OUT:-$PWD/target/bench/serve}"
mkdir -p "$out"
work="$(mktemp -d)"
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${BENCH_KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
agent="$(cat bench/serve-agent.py)"
stats=bench/serve-stats.py
host=api.bench.test
up_port=8443
api_port="${BENCH_API_PORT:-7180}"
url="http://127.0.0.1:$api_port"

# The stand-in's test CA and certificate, and nginx answering every GET with 200.
. bench/lib.sh
test_certificate "$work" "$host"
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
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
  keepalive_timeout 600s;
  server {
    listen 127.0.0.1:$up_port ssl;
    ssl_certificate $work/up.pem;
    ssl_certificate_key $work/up.key;
    location / {
      default_type application/json;
      return 200 '{"ok":true,"path":"\$request_uri"}\n';
    }
  }
}
EOF
nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' & nginx_pid=$!; pids+=($nginx_pid)
echo "127.0.0.1 $host" >"$work/hosts"

{
  echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); CPU busy over the 5 s before: $(python3 -c '
import time
def t():
    c = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(c), c[3] + c[4]
a = t(); time.sleep(5); b = t()
print("%.0f%%" % (100 * (1 - (b[1] - a[1]) / max(b[0] - a[0], 1))))')"
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo -)"
  echo "tasks $tasks, load phase ${seconds}s, approvals $approvals, ramp ${ramp}s, rate ${rate}/s per agent (0: back to back)"
} | tee "$work/machine.txt"

# Sleeps until Unix time $1.
sleep_until() { sleep "$(python3 -c "import time; print(max(0, $1 - time.time()))")"; }

# CPU of the process trees at the start (+1 s) and end (-1 s) of the load phase, and
# memory in the middle: `measure PREFIX START_AT TREE...`.
measure() {
  local prefix="$1" at="$2"
  shift 2
  sleep_until "$(python3 -c "print($at + 1)")"
  python3 "$stats" cpu "$@" >"$prefix-cpu0.json"
  sleep_until "$(python3 -c "print($at + $seconds / 2)")"
  python3 "$stats" pss "$@" >"$prefix-pss.json"
  sleep_until "$(python3 -c "print($at + $seconds - 1)")"
  python3 "$stats" cpu "$@" >"$prefix-cpu1.json"
}

# Waits for every pid in $@ (in this shell: a subshell cannot wait for them); sets
# $failed to how many exited non-zero and writes their exit codes to $1.
wait_all() {
  local codes="$1" code
  shift
  failed=0
  : >"$codes"
  for p in "$@"; do
    code=0
    wait "$p" || code=$?
    echo "$code" >>"$codes"
    [ "$code" = 0 ] || failed=$((failed + 1))
  done
}

if [[ ",$peers," == *,agentspace,* ]]; then
  state="$work/state"
  printf 'resolve: ["%s:443:127.0.0.1:%s"]\nupstreamCa: ["%s"]\n' "$host" "$up_port" "$work/ca.pem" >"$work/gateway.yaml"
  admin="$("$bin" --state-dir "$state" serve --bootstrap-admin admin --tenant bench 2>/dev/null)"
  ${BENCH_SERVE_WRAP:-} "$bin" --state-dir "$state" serve --listen "127.0.0.1:$api_port" --gateway-config "$work/gateway.yaml" \
    2>"$work/serve.log" & serve_pid=$!; pids+=($serve_pid)
  for _ in $(seq 100); do curl -fs "$url/openapi.json" >/dev/null && break; sleep 0.1; done
  api() { curl -fsS -H "Authorization: Bearer $1" -H 'Content-Type: application/json' "${@:2}"; }
  api "$admin" -X POST "$url/v1/users" -d '{"name":"dev","roles":["developer"]}' >/dev/null
  api "$admin" -X POST "$url/v1/users" -d '{"name":"bot","roles":["approver"]}' >/dev/null
  dev="$(api "$admin" -X POST "$url/v1/users/dev/tokens" -d '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
  bot="$(api "$admin" -X POST "$url/v1/users/bot/tokens" -d '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
  "$bin" definition check -f bench/serve.yaml >/dev/null
  python3 -c 'import json,sys; print(json.dumps({"definition": open(sys.argv[1]).read()}))' bench/serve.yaml |
    api "$dev" -X POST "$url/v1/definitions" -d @- >/dev/null
  AGENTSPACE_TOKEN="$bot" python3 bench/serve-approver.py "$url" >"$work/approver.jsonl" & pids+=($!)

  echo "agentspace: starting $tasks tasks through $url ..."
  mkdir -p "$work/as"
  launched=$(date +%s.%N)
  start_at=$(python3 -c "print($launched + $ramp)")
  clients=()
  for i in $(seq 0 $((tasks - 1))); do
    AGENTSPACE_SERVER="$url" AGENTSPACE_TOKEN="$dev" ${BENCH_CLIENT_WRAP:-} "$bin" run --agent serve-bench -- \
      python3 -c "$agent" "$i" "$start_at" "$seconds" "$approvals" proxy "$rate" \
      >"$work/as/$i.out" 2>"$work/as/$i.err" &
    clients+=($!)
  done
  # The ramp: how long until every task runs (the tasks' own manifests, via the API).
  python3 "$stats" ramp "$url" "$dev" "$tasks" "$launched" "$start_at" >"$work/as-ramp.json"
  measure "$work/as" "$start_at" "server=$serve_pid" "nginx=$nginx_pid" \
    "clients=$(IFS=,; echo "${clients[*]}")"
  ls "/proc/$serve_pid/fd" | wc -l >"$work/as-serve-fds.txt"
  wait_all "$work/as-codes.txt" "${clients[@]}"
  ended=$(date +%s.%N)
  echo "agentspace: done; $failed of $tasks clients exited non-zero"
  # Every decision of the run, from the audit log (as exported), and the approvals.
  "$bin" --state-dir "$state" audit export --tenant bench --kind http_request >"$work/decisions.jsonl"
  api "$admin" "$url/v1/approvals?state=all&limit=1000" >"$work/approvals.json"
  "$bin" --state-dir "$state" audit verify --tenant bench >"$work/verify.txt" 2>&1 || echo "AUDIT VERIFY FAILED" >>"$work/verify.txt"
  kill "$serve_pid" 2>/dev/null || true
  cp "$work/serve.log" "$out/serve.log"
  echo "{\"failed\": $failed, \"launched\": $launched, \"start_at\": $start_at, \"ended\": $ended}" >"$work/as-meta.json"
fi

if [[ ",$peers," == *,bwrap,* ]]; then
  echo "bwrap: starting $tasks sandboxes ..."
  mkdir -p "$work/bw"
  bw_ramp=$((10 + tasks / 10))
  launched=$(date +%s.%N)
  start_at=$(python3 -c "print($launched + $bw_ramp)")
  sandboxes=()
  for i in $(seq 0 $((tasks - 1))); do
    bwrap --unshare-all --share-net --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin \
      --symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin \
      --ro-bind /etc/ssl /etc/ssl --ro-bind "$work/hosts" /etc/hosts --ro-bind "$work/ca.pem" /ca.pem \
      --proc /proc --dev /dev --tmpfs /tmp \
      python3 -c "$agent" "$i" "$start_at" "$seconds" "$approvals" "direct:$up_port:/ca.pem" "$rate" \
      >"$work/bw/$i.out" 2>"$work/bw/$i.err" &
    sandboxes+=($!)
  done
  measure "$work/bw" "$start_at" "sandboxes=$(IFS=,; echo "${sandboxes[*]}")" "nginx=$nginx_pid"
  wait_all "$work/bw-codes.txt" "${sandboxes[@]}"
  echo "{\"failed\": $failed, \"launched\": $launched, \"start_at\": $start_at}" >"$work/bw-meta.json"
  echo "bwrap: done; $failed of $tasks exited non-zero"
fi

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$work/machine.txt"
python3 "$stats" report "$work" "$tasks" "$seconds" | tee "$out/report.txt"
cp "$work/results.json" "$work/machine.txt" "$out/"
