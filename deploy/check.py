#!/usr/bin/env python3
"""Checks flow's deployment files as far as this machine can without a Docker engine or an AWS
account (docs/deploy.md, "What was validated here and what was not run"):

  Dockerfile          parsed (our reading and BuildKit's parser, PyPI `dockerfile`), hadolint;
                      multi-stage, the builder's toolchain is rust-toolchain.toml's, a non-root
                      USER that runtime-setup.sh creates, HEALTHCHECK on /api/v1/health, EXPOSE
                      = FLOW_BIND, STOPSIGNAL SIGTERM; nothing it copies (nor anything the build
                      includes) is left out by .dockerignore.
  deploy/docker/*.sh  shellcheck; runtime-setup.sh run into a scratch root (the user, owners and
                      modes checked); entrypoint.sh run with a stand-in `flow` (flow.toml written,
                      the database URL composed and percent-encoded); healthcheck.sh against a
                      local HTTP server answering 200 and 503.
  docker-compose.yml  the compose-spec JSON schema (the copy check-jsonschema ships); every flow
                      service's command is a flow subcommand with flags flow has; postgres and
                      S3 health-checked and waited for; two workers; one scheduler, --no-tasks;
                      the server's port; the buckets flow.toml names are created.
  deploy/aws/flow.yaml  cfn-lint (errors, warnings and informational); the target group checks
                      /api/v1/health on the server's port; every container runs as the image's
                      user with stopTimeout 30 and awslogs; secrets are FLOW_SECRET_* (or the
                      database's) from this stack's Secrets Manager secrets, none on the server;
                      nothing but the load balancer reaches a task; IAM without wildcards beyond
                      the two actions that take no resource.
  flow.toml           the compose one and the one the template writes: keys flow's config.rs
                      knows.

    python3 deploy/check.py                 # every check; exit 1 when one fails
    python3 deploy/check.py --commands      # the flow command lines the files use, as JSON
    python3 deploy/check.py --flow-tomls DIR  # write compose.toml and ecs.toml into DIR

The checks live in deploy/checks/, one module per kind of file (common: the report and the
tools; flowcli: flow's command line and flow.toml read from the sources; image; compose;
cloudformation); this file runs them.

The tools come from the venv scripts/testbed.sh makes ($FLOW_TEST_CFN_LINT's folder), or PATH.
A missing tool skips its check, except under CI=true, where it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import checks.common as common
from checks.cloudformation import check_cloudformation
from checks.common import ROOT, R, run_tool
from checks.compose import check_compose
from checks.flowcli import Cli
from checks.image import check_dockerfile, check_entrypoint, check_healthcheck, check_runtime_setup


def docs_commands() -> list[list[str]]:
    """The flow command lines docs/deploy.md tells a person to run in a container."""
    doc = ROOT / "docs/deploy.md"
    text = doc.read_text() if doc.exists() else ""
    lines = re.findall(r'--command "flow-entrypoint ([^"]+)"|compose exec server flow ([^\n#]+)', text)
    return [(a or b).split() for a, b in lines]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commands", action="store_true", help="print the flow command lines the files use, as JSON")
    ap.add_argument("--flow-tomls", metavar="DIR", help="write compose.toml and ecs.toml (the template's, rendered) into DIR")
    opts = ap.parse_args()
    cli = Cli()
    if opts.commands or opts.flow_tomls:
        common.TOOLS = False
        # Quiet: only what was asked for on stdout.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        docker = check_dockerfile()
        compose = check_compose(cli, docker)
        cfn, ecs_toml = check_cloudformation(cli, docker)
        sys.stdout = sys.__stdout__
        if opts.flow_tomls:
            out = Path(opts.flow_tomls)
            out.mkdir(parents=True, exist_ok=True)
            (out / "compose.toml").write_text((ROOT / "deploy/compose/flow.toml").read_text())
            (out / "ecs.toml").write_text(ecs_toml)
        if opts.commands:
            unique = []
            for argv in [*compose, *cfn, *docs_commands(), docker.get("cmd", [])]:
                if argv and argv not in unique:
                    unique.append(argv)
            print(json.dumps(unique))
        return 0

    print(f"deploy/check.py: {ROOT}")
    docker = check_dockerfile()
    run_tool("shellcheck", [str(p) for p in sorted((ROOT / "deploy/docker").glob("*.sh"))], "deploy/docker/*.sh: shellcheck")
    check_runtime_setup()
    check_entrypoint()
    check_healthcheck()
    check_compose(cli, docker)
    check_cloudformation(cli, docker)
    for argv in docs_commands():
        problem = cli.problem(argv)
        R.check(f"docs/deploy.md: `flow {' '.join(argv)}` is a flow command", problem is None, problem or "")
    total = R.passed + len(R.failed) + len(R.skipped)
    if R.failed:
        print(f"deploy/check.py: {len(R.failed)} of {total} checks failed: {', '.join(R.failed)}")
        return 1
    print(f"deploy/check.py: all {R.passed} checks hold" + (f", {len(R.skipped)} skipped" if R.skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
