"""docker-compose.yml: the local cluster."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import tomllib
import urllib.parse
from pathlib import Path

import yaml

from checks.common import CI, ROOT, SERVER_PORT, UID, R, run_tool, tool
from checks.flowcli import Cli, check_flow_toml


# --- docker-compose.yml -----------------------------------------------------------------------


def seconds(text: str) -> float:
    total = 0.0
    for n, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text)):
        total += float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def check_compose(cli: Cli, docker: dict) -> list[list[str]]:
    path = ROOT / "docker-compose.yml"
    run_tool("check-jsonschema", ["--builtin-schema", "vendor.compose-spec", str(path)], "docker-compose.yml: the compose-spec schema")
    doc = yaml.safe_load(path.read_text())
    services: dict = doc["services"]
    commands = []

    flow = {n: s for n, s in services.items() if s.get("image") == "flow:local"}
    for name, s in flow.items():
        build = s.get("build", {})
        R.check(f"compose {name}: built from ./Dockerfile", build.get("context") == "." and build.get("dockerfile", "Dockerfile") == "Dockerfile", str(build))
        argv = s.get("command") or docker.get("cmd", [])
        commands.append(argv)
        problem = cli.problem(argv)
        R.check(f"compose {name}: `flow {' '.join(argv)}` is a flow command", problem is None, problem or "")
        deps = s.get("depends_on", {})
        R.check(
            f"compose {name}: waits for a healthy postgres and the buckets",
            deps.get("postgres", {}).get("condition") == "service_healthy"
            and deps.get("s3-buckets", {}).get("condition") == "service_completed_successfully",
            str(deps),
        )
        url = urllib.parse.urlsplit(s.get("environment", {}).get("FLOW_DATABASE_URL", ""))
        pg = services.get(url.hostname or "", {}).get("environment", {})
        R.check(
            f"compose {name}: FLOW_DATABASE_URL is the postgres service's user, password and database",
            url.scheme == "postgres"
            and (url.username, url.password, url.path.lstrip("/")) == (pg.get("POSTGRES_USER"), pg.get("POSTGRES_PASSWORD"), pg.get("POSTGRES_DB")),
            url.geturl(),
        )
        R.check(f"compose {name}: stop_grace_period of at least 30s", seconds(s.get("stop_grace_period", "10s")) >= 30)
        R.check(
            f"compose {name}: health-checked (its own check, or the image's HEALTHCHECK)",
            "test" in s.get("healthcheck", {}) or not s.get("healthcheck", {}).get("disable", False),
        )

    def role(argv: list[str]) -> str:
        return argv[0] if argv else ""

    schedulers = [s for s in flow.values() if role(s.get("command", [])) == "scheduler"]
    R.check(
        "compose: one scheduler, with --no-tasks (the workers run the tasks)",
        len(schedulers) == 1 and "--no-tasks" in schedulers[0]["command"],
        str([s.get("command") for s in schedulers]),
    )
    workers = sum(s.get("deploy", {}).get("replicas", 1) for s in flow.values() if role(s.get("command", [])) == "worker")
    R.check("compose: two workers", workers == 2, f"{workers}")
    servers = [s for s in flow.values() if role(s.get("command", [])) == "server"]
    port = docker.get("env", {}).get("FLOW_BIND", "").rpartition(":")[2]
    R.check(
        "compose: one server, publishing FLOW_BIND's port",
        len(servers) == 1 and any(str(p).endswith(f":{port}") for p in servers[0].get("ports", [])),
        str([s.get("ports") for s in servers]),
    )
    R.check(
        "compose: the server's health check is flow-healthcheck (GET /api/v1/health)",
        bool(servers) and "/usr/local/bin/flow-healthcheck" in servers[0].get("healthcheck", {}).get("test", []),
    )
    for name in ("postgres", "s3"):
        R.check(f"compose {name}: has a health check", "test" in services.get(name, {}).get("healthcheck", {}))

    names = set(services)
    bad_deps = [(n, d) for n, s in services.items() for d in s.get("depends_on", {}) if d not in names]
    R.check("compose: every depends_on names a service", not bad_deps, str(bad_deps))
    volumes = set(doc.get("volumes", {}))
    bad_vols = []
    for n, s in services.items():
        for v in s.get("volumes", []):
            src = str(v).split(":")[0]
            if src.startswith((".", "/")):
                if not (ROOT / src).exists():
                    bad_vols.append((n, src))
            elif src not in volumes:
                bad_vols.append((n, src))
    R.check("compose: every volume is declared, every bind-mounted file exists", not bad_vols, str(bad_vols))

    # flow.toml: what it names must exist in the cluster.
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for s in flow.values() for v in s.get("volumes", [])}
    toml_path = mounts.get(docker.get("env", {}).get("FLOW_HOME", "") + "/flow.toml")
    if not R.check("compose: every flow container gets a flow.toml at $FLOW_HOME/flow.toml", toml_path is not None and all(
        any(str(v).endswith("/var/lib/flow/flow.toml:ro") for v in s.get("volumes", [])) for s in flow.values()
    ), str(mounts)):
        return commands
    conf = check_flow_toml("deploy/compose/flow.toml", (ROOT / toml_path).read_text())
    s3_env = {urllib.parse.urlsplit(s.get("environment", {}).get("AWS_ENDPOINT_URL", "")).hostname for s in flow.values()}
    R.check("compose: AWS_ENDPOINT_URL is the s3 service", s3_env == {"s3"}, str(s3_env))
    remote = conf.get("logs", {}).get("remote", "")
    bucket = urllib.parse.urlsplit(remote).hostname or ""
    init = " ".join(services.get("s3-buckets", {}).get("command", []))
    aliases = services.get("s3", {}).get("networks", {}).get("default", {}).get("aliases", [])
    R.check(
        "compose: the remote-logs bucket is created, and resolves virtual-hosted too",
        (remote.startswith("s3://") and f'"{bucket}"' in init and f"{bucket}.s3" in aliases),
        f"{remote}; aliases {aliases}",
    )
    endpoints = {urllib.parse.urlsplit(c.get("endpoint_url", "")).hostname for c in conf.get("connections", {}).values() if c.get("type") == "aws"}
    R.check("compose: flow.toml's aws connections point at the s3 service", endpoints <= {"s3"}, str(endpoints))
    return commands
