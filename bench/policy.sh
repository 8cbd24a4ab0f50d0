#!/usr/bin/env bash
# Decision latency of Agent Space (Cedar) vs the same decisions in Rego (regorus), in one
# run: 100 definitions x 20 rules, 50 shared extra policies, 20,000 requests. Results go
# in docs/benchmarks.md ("Policy: decision latency").
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p agentspace-policy --bench decisions "$@"
