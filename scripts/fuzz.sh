#!/usr/bin/env bash
# The long fuzz run of DAG parsing and validation: libFuzzer through cargo-fuzz, seeded with the
# example DAGs and every test fixture. Usage: scripts/fuzz.sh [SECONDS] (default 600).
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets it
# pass libFuzzer's flags. No sanitizer: flow forbids unsafe code, and the target looks for
# panics and hangs. A finding is written under fuzz/artifacts/dag_parse/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p fuzz/corpus/dag_parse
# Start from the workspace's own lock, so the target builds the versions the tests use.
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FLOW_FUZZ_TARGET_DIR:-$HOME/.cache/flow-fuzz-target}"
cd fuzz
exec cargo fuzz run --sanitizer none dag_parse corpus/dag_parse \
  ../dags ../engine/tests/fixtures/valid ../engine/tests/fixtures/invalid \
  ../engine/tests/fixtures/duplicate_id \
  -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
