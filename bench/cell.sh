#!/usr/bin/env bash
# Cell start and idle cost: `agentspace run -- true` in a full cell against bubblewrap
# (`bwrap --unshare-all`) in the same run. Needs root, hyperfine and bubblewrap
# (scripts/install-deps). Usage: sudo bench/cell.sh [RUNS]   (default 200)
# AGENTSPACE_BIN=path uses a prebuilt binary instead of building a release one.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-200}"
if [ -z "${AGENTSPACE_BIN:-}" ]; then
  cargo build -q --release -p agentspace-cli
fi
bin="${AGENTSPACE_BIN:-$PWD/target/release/agentspace}"
out="$PWD/target/bench"; mkdir -p "$out"
state="$(mktemp -d)"; trap 'rm -rf "$state"' EXIT

ours="$bin --state-dir $state run -f bench/cell-true.yaml -- /bin/true"
# The same cell with a network door (an egress rule): namespace, route, nftables
# redirect, the gateway's runtime, policy engine and tenant CA.
door="$bin --state-dir $state run -f bench/cell-door.yaml -- /bin/true"
bwrap="bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin --proc /proc --dev /dev --tmpfs /tmp /bin/true"
hyperfine -N --warmup 10 --runs "$runs" --export-json "$out/cell-start.json" \
  -n agentspace "$ours" -n agentspace-door "$door" -n bwrap "$bwrap" >/dev/null

python3 - "$out/cell-start.json" <<'PY'
import json, statistics, sys
r = {x["command"]: sorted(x["times"]) for x in json.load(open(sys.argv[1]))["results"]}
def pct(t, p): return t[min(len(t) - 1, int(round(p * (len(t) - 1))))]
rows = {k: (statistics.median(v) * 1e3, pct(v, 0.95) * 1e3, len(v)) for k, v in r.items()}
for k, (med, p95, n) in rows.items():
    print(f"{k:<12} runs {n:>4}  median {med:7.2f} ms  p95 {p95:7.2f} ms")
a, b = rows["agentspace"], rows["bwrap"]
print(f"ratio agentspace/bwrap: median {a[0]/b[0]:.2f}x  p95 {a[1]/b[1]:.2f}x")
d = rows["agentspace-door"]
print(f"the door adds: median {d[0]-a[0]:.2f} ms  (agentspace-door/bwrap {d[0]/b[0]:.2f}x)")
PY

# Idle cost: the processes Agent Space adds around an idle agent (launcher, supervisor,
# the cell's init), by proportional set size, against bwrap's own process.
pss() { awk '/^Pss:/{print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
$bin --state-dir "$state" run -f bench/cell-true.yaml -- sleep 5 & launcher=$!
sleep 1
sup=$(pgrep -P $launcher | head -1); init=$(pgrep -P "$sup" | head -1)
ours_kb=$(( $(pss $launcher) + $(pss "$sup") + $(pss "$init") ))
wait $launcher
bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --proc /proc --dev /dev /bin/sleep 5 & b=$!
sleep 1
bw_kb=0; for p in $(pgrep -x bwrap); do bw_kb=$(( bw_kb + $(pss $p) )); done
kill $b 2>/dev/null || true; wait $b 2>/dev/null || true
echo "idle cell overhead (PSS of launcher+supervisor+init): ${ours_kb} KiB; bwrap: ${bw_kb} KiB"
