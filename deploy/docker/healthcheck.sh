#!/bin/bash
# The image's HEALTHCHECK, installed as /usr/local/bin/flow-healthcheck (the ECS task
# definition's container health check runs it too).
#
# For `flow server` and `flow standalone`: GET /api/v1/health on the port of FLOW_BIND must
# answer 200 (it answers 503 when the database does not). bash's /dev/tcp speaks the request, so
# the image carries no curl: the check is one status line, and curl would add its libraries (and
# their security updates) to every container for that line.
#
# For the commands that serve no HTTP (`scheduler`, `worker`), there is nothing to ask: they are
# healthy while they run, and the container ends when they do. Their liveness is what the
# server's /api/v1/health reports as `scheduler.alive`.
#
# The command is read from PID 1's command line (tini -- flow-entrypoint COMMAND ...); when it
# cannot be read, the HTTP check runs. FLOW_HEALTHCHECK_PROC (default /proc) lets
# deploy/check.py point it at a fake one.
set -u

if cmdline=$({ tr '\0' ' ' <"${FLOW_HEALTHCHECK_PROC:-/proc}/1/cmdline"; } 2>/dev/null); then
  case " $cmdline " in
    *" server "* | *" standalone "*) ;;
    *) exit 0 ;;
  esac
fi

bind=${FLOW_BIND:-127.0.0.1:8080}
port=${bind##*:}
host=${bind%:*}
case $host in
  "" | 0.0.0.0 | "[::]" | "::") host=127.0.0.1 ;;
  "["*"]") host=${host#\[} && host=${host%\]} ;;
esac

if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
  echo "flow-healthcheck: nothing listens on $host:$port" >&2
  exit 1
fi
printf 'GET /api/v1/health HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$host" "$port" >&3
if ! IFS= read -r -t 5 status <&3; then
  echo "flow-healthcheck: no answer from $host:$port" >&2
  exit 1
fi
status=${status%$'\r'}
case $status in
  "HTTP/1."?" 200 "* | "HTTP/1."?" 200") exit 0 ;;
esac
echo "flow-healthcheck: GET /api/v1/health answered: $status" >&2
exit 1
