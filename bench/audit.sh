#!/usr/bin/env bash
# Audit log benchmark: durable appends/s (chain + Ed25519 + group commit) vs plain SQLite
# inserts of the same rows, at batch sizes 1-1000 and 1-8 writers; verify throughput; raw
# SHA-256 / Ed25519 / canonical JSON costs. Prints Markdown (see docs/benchmarks.md).
# AUDIT_BENCH_SECS sets seconds per case (default 2); AUDIT_BENCH_DIR the scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release -q -p agentspace-audit --example audit_bench -- "$@"
