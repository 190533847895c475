#!/usr/bin/env bash
# What the benchmarks need beyond the test suite: wrk, the HTTP load tool `flow-bench bench-ui` drives.
set -euo pipefail
if ! command -v wrk >/dev/null; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y wrk
fi
wrk --version 2>&1 | head -n1 || true
