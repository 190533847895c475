#!/usr/bin/env bash
# The long chaos bench of issue 21 (RELIABILITY.md): the Jepsen-style e2e test
# (tests/e2e/jepsen.rs) with more runs, more rounds of faults and 60 s database outages.
# A private PostgreSQL, 2 planning schedulers, 3 workers and a server, each with a home of its
# own; every round kills a scheduler with -9, kills a worker's "host" (the worker and its
# tasks), restarts both, and stops PostgreSQL for the outage. Then the ledger the tasks wrote is
# checked against the database. Prints one line of figures; exits non-zero when a check fails.
#
#   FLOW_CHAOS_RUNS      runs triggered (default 500)
#   FLOW_CHAOS_ROUNDS    rounds of faults (default 5)
#   FLOW_CHAOS_OUTAGE_S  seconds PostgreSQL is down each round (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flow-ci-target}"
export FLOW_CHAOS_RUNS="${FLOW_CHAOS_RUNS:-500}"
export FLOW_CHAOS_ROUNDS="${FLOW_CHAOS_ROUNDS:-5}"
export FLOW_CHAOS_OUTAGE_S="${FLOW_CHAOS_OUTAGE_S:-60}"
exec cargo test --workspace --locked --test e2e -- --ignored --exact jepsen::chaos_long --nocapture
