#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of the workspace (unit, store contract
# on SQLite and PostgreSQL, end-to-end tests of the real `flow` binary), in one build.
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL must answer on 127.0.0.1:5432 (user postgres, trust auth). Start the machine's own
# cluster if it is installed but down; under CI=true the tests fail if it is still missing.
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi

export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-1}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
