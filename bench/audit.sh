#!/usr/bin/env bash
# Audit log benchmark: durable appends/s (chain + Ed25519 + group commit) vs plain SQLite
# inserts of the same rows, at batch sizes 1-1000 and 1-8 writers; verify throughput; raw
# SHA-256 / Ed25519 / canonical JSON costs. Prints Markdown (see docs/benchmarks.md).
# AUDIT_BENCH_SECS sets seconds per case (default 2); AUDIT_BENCH_DIR the scratch directory.
#
# `bench/audit.sh contend [PROCESSES] [EVENTS]`: PROCESSES processes (default 100) append
# EVENTS events each (default 50) to one SQLite log, one durable append at a time, as the
# gateways of many tasks on one host do; prints appends/s and the append latency spread.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = contend ]; then
  shift
  cargo build --release -q -p agentspace-audit --example audit_contend
  exec target/release/examples/audit_contend "$@"
fi
exec cargo run --release -q -p agentspace-audit --example audit_bench -- "$@"
