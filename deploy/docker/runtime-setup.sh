#!/bin/sh
# The runtime stage of flow's image (Dockerfile), as a script so that the test bed can run the
# same steps into a scratch directory (deploy/check.py) instead of trusting a build nobody ran.
#
#   sh runtime-setup.sh [SOURCE_DIR]
#
# SOURCE_DIR holds entrypoint.sh and healthcheck.sh (default: this script's folder).
# FLOW_IMAGE_ROOT, when set, is the root to set up (a scratch directory): the Debian packages
# are then left out, since they come from the base image's apt and need the real root; every
# other step (the user, the folders and their owners, the helper scripts) runs under it.
set -eu

src="${1:-$(dirname "$0")}"
root="${FLOW_IMAGE_ROOT:-}"
# The user tasks run as. A fixed id, so that volumes, ECS task definitions (`User`) and
# Kubernetes' runAsUser can name it without looking inside the image.
uid=10001

# 1. Packages. ca-certificates: the TLS roots that S3, EMR, Secrets Manager and the `http`
#    operator's HTTPS are checked against. tini: PID 1, which passes SIGTERM on to flow and reaps
#    the processes that tasks leave behind (flow waits for its own children only). Nothing else:
#    the health check uses bash, which every Debian image has, instead of curl and its libraries.
if [ -z "$root" ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates tini
  rm -rf /var/lib/apt/lists/*
  command -v bash >/dev/null || { echo "runtime-setup: the health check needs bash" >&2; exit 1; }
else
  echo "runtime-setup: scratch root $root: not installing ca-certificates tini (the image's apt does)"
fi

# 2. The user `flow`, with no password, no login shell and its home at FLOW_HOME.
#    Under a scratch root, shadow's --prefix edits ROOT/etc/{passwd,group,shadow,gshadow}.
if [ -n "$root" ]; then set -- --prefix "$root"; else set --; fi
groupadd "$@" --gid "$uid" flow
useradd "$@" --uid "$uid" --gid "$uid" --no-create-home \
  --home-dir /var/lib/flow --shell /usr/sbin/nologin flow

# 3. Folders.
#    /var/lib/flow     FLOW_HOME (the embedded database, try logs, flow.toml): flow's alone, 0700,
#                      as flow makes a home it creates itself.
#    /opt/flow/dags    the DAGs folder: root's, read-only to flow, because a DAG file is code and
#                      a task must not rewrite the DAGs every worker and the scheduler load.
#    /tmp/flow-examples  the example DAGs' default workdir: flow's, so that a volume mounted there
#                      (docker-compose.yml shares one between the workers) starts writable.
install -d -m 0700 -o "$uid" -g "$uid" "$root/var/lib/flow"
install -d -m 0755 -o 0 -g 0 "$root/opt/flow/dags"
install -d -m 0755 -o "$uid" -g "$uid" "$root/tmp/flow-examples"

# 4. The entrypoint (flow.toml from FLOW_CONFIG_TOML, the database URL from its parts) and the
#    health check (GET /api/v1/health for `server` and `standalone`).
install -d -m 0755 "$root/usr/local/bin"
install -m 0755 "$src/entrypoint.sh" "$root/usr/local/bin/flow-entrypoint"
install -m 0755 "$src/healthcheck.sh" "$root/usr/local/bin/flow-healthcheck"
echo "runtime-setup: done (user flow, uid $uid)"
