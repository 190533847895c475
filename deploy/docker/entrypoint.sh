#!/bin/sh
# flow's container entrypoint, installed as /usr/local/bin/flow-entrypoint: PID 1 is tini, which
# runs this, which execs `flow ARGS` (so flow gets tini's SIGTERM itself).
#
# Two conveniences for orchestrators that hand a container settings only as environment
# variables (ECS task definitions; see deploy/aws/flow.yaml):
#
#   FLOW_CONFIG_TOML   the text of flow.toml; written to $FLOW_HOME/flow.toml (mode 0600) on
#                      every start, replacing what was there (unless it is the same).
#   FLOW_DB_HOST       with FLOW_DB_USER, FLOW_DB_PASSWORD, FLOW_DB_PORT (default 5432) and
#                      FLOW_DB_NAME (default flow): the PostgreSQL database, composed into
#                      FLOW_DATABASE_URL when that is not set, with the user and the password
#                      percent-encoded, so that a password held in Secrets Manager may hold any
#                      character. flow masks the URL's password in everything it writes.
#   FLOW_DB_SSLMODE    with FLOW_DB_HOST: the URL's sslmode (disable, prefer, require,
#                      verify-ca, verify-full); FLOW_DB_SSLROOTCERT: the CA file that verify-*
#                      checks the server's certificate against (for RDS, Amazon's bundle).
#
# These variables are removed from the environment before flow starts. (Tasks never see any
# FLOW_* variable anyway: flow starts them without, SECURITY.md rule 4.)
set -eu

# Percent-encodes $1 (every byte but A-Z a-z 0-9 - . _ ~), for the user part of a URL. Run it
# under LC_ALL=C so that `?` is one byte.
urlencode() {
  s=$1
  out=
  while [ -n "$s" ]; do
    rest=${s#?}
    c=${s%"$rest"}
    case $c in
      [A-Za-z0-9._~-]) out=$out$c ;;
      *) out=$out$(printf '%%%02X' "'$c") ;;
    esac
    s=$rest
  done
  printf '%s' "$out"
}

# (A file that already holds the same text is left as it is: `flow-entrypoint tokens create`
# in an ECS Exec session, docs/deploy.md, must not change the running server's files.)
if [ -n "${FLOW_CONFIG_TOML:-}" ]; then
  home=${FLOW_HOME:-./.flow}
  mkdir -p "$home"
  (umask 077 && printf '%s\n' "$FLOW_CONFIG_TOML" >"$home/flow.toml.new")
  if cmp -s "$home/flow.toml.new" "$home/flow.toml"; then
    rm -f "$home/flow.toml.new"
  else
    mv -f "$home/flow.toml.new" "$home/flow.toml"
  fi
fi
unset FLOW_CONFIG_TOML

if [ -z "${FLOW_DATABASE_URL:-}" ] && [ -n "${FLOW_DB_HOST:-}" ]; then
  : "${FLOW_DB_USER:?FLOW_DB_HOST is set, so FLOW_DB_USER must be too}"
  : "${FLOW_DB_PASSWORD:?FLOW_DB_HOST is set, so FLOW_DB_PASSWORD must be too}"
  db_user=$(LC_ALL=C && export LC_ALL && urlencode "$FLOW_DB_USER")
  db_password=$(LC_ALL=C && export LC_ALL && urlencode "$FLOW_DB_PASSWORD")
  FLOW_DATABASE_URL="postgres://$db_user:$db_password@$FLOW_DB_HOST:${FLOW_DB_PORT:-5432}/${FLOW_DB_NAME:-flow}"
  sep='?'
  if [ -n "${FLOW_DB_SSLMODE:-}" ]; then
    FLOW_DATABASE_URL="$FLOW_DATABASE_URL${sep}sslmode=$(LC_ALL=C && export LC_ALL && urlencode "$FLOW_DB_SSLMODE")"
    sep='&'
  fi
  if [ -n "${FLOW_DB_SSLROOTCERT:-}" ]; then
    FLOW_DATABASE_URL="$FLOW_DATABASE_URL${sep}sslrootcert=$(LC_ALL=C && export LC_ALL && urlencode "$FLOW_DB_SSLROOTCERT")"
  fi
  export FLOW_DATABASE_URL
  unset db_user db_password sep
fi
unset FLOW_DB_HOST FLOW_DB_PORT FLOW_DB_NAME FLOW_DB_USER FLOW_DB_PASSWORD FLOW_DB_SSLMODE FLOW_DB_SSLROOTCERT

exec flow "$@"
