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

# The browser test (tests/e2e/browser.rs) needs Debian's chromium and playwright-core from npm;
# install them when missing (never `npx playwright install`: it downloads a browser build).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update
    pkgs="chromium chromium-driver"
    command -v npm >/dev/null || pkgs="$pkgs nodejs npm"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y $pkgs
  else
    echo "note: chromium or node is missing and cannot be installed here (needs root and apt-get)" >&2
  fi
fi
if command -v npm >/dev/null && [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund)
fi

# S3 for the heavy-step tests (scripts/testbed.sh). Under CI=true those tests fail without it.
# shellcheck source=scripts/testbed.sh
. scripts/testbed.sh
trap testbed_stop EXIT
if ! testbed_start; then
  echo "note: the S3 test bed did not start; tests that need it will fail under CI=true" >&2
fi

export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-1}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
