#!/usr/bin/env bash
# MCP gateway benchmark (issue 6, "Speed"): added latency per tools/call through the MCP
# gateway (policy, schema validation, content checks, per-call identity token, two
# durable audit events, taint) against calling the same stdio tool server directly, from
# the same client in the same run, rounds interleaved. The server is the credit officer's
# scoring server (Python MCP SDK), so both paths pay the same Python cost.
#
# Usage: bench/mcp.sh   (needs the Python `mcp` package: scripts/install-deps)
# Environment: BENCH_ROUNDS (3), BENCH_CALLS (1000 per path per round), BENCH_WARMUP (100).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p agentspace-gateway --example mcp_bench
target/release/examples/mcp_bench \
  --rounds "${BENCH_ROUNDS:-3}" --calls "${BENCH_CALLS:-1000}" --warmup "${BENCH_WARMUP:-100}" \
  | python3 -c '
import json, sys, statistics
rows = [json.loads(l) for l in sys.stdin if l.strip()]
for r in rows:
    print("round %s %-8s p50 %8.1f us  p99 %8.1f us  (%s calls)" % (r["round"], r["path"], r["p50_us"], r["p99_us"], r["calls"]))
def med(path, key):
    return statistics.median(r[key] for r in rows if r["path"] == path)
for key in ("p50_us", "p99_us"):
    d, g = med("direct", key), med("gateway", key)
    print(f"median over rounds, {key[:3]}: direct {d:.1f} us, gateway {g:.1f} us, added {g - d:.1f} us")
'
