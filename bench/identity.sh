#!/usr/bin/env bash
# Token mint and verify throughput of agentspace-identity, with the jsonwebtoken crate doing
# the same work in the same run as the peer. Prints the machine, then the results.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
echo "toolchain: $(rustc --version)"
exec cargo bench -q -p agentspace-identity --bench tokens
