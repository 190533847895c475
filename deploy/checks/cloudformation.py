"""deploy/aws/flow.yaml: the ECS deployment, read rule by rule."""

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


# --- deploy/aws/flow.yaml ---------------------------------------------------------------------


class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _tag)


def refs(value) -> set[str]:
    """Every resource or parameter a value names (Ref, GetAtt, ${...} in Sub)."""
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Ref":
                out.add(v)
            elif k == "Fn::GetAtt":
                out.add(v[0])
            elif k == "Fn::Sub":
                text = v if isinstance(v, str) else v[0]
                out |= {m.split(".")[0] for m in re.findall(r"\$\{([\w.:]+)\}", text)}
                if not isinstance(v, str):
                    out |= refs(v[1])
            else:
                out |= refs(v)
    elif isinstance(value, list):
        for v in value:
            out |= refs(v)
    return out


def render_sub(sub, values: dict[str, str]) -> str:
    text = sub if isinstance(sub, str) else sub[0]
    return re.sub(r"\$\{([\w.:]+)\}", lambda m: values.get(m.group(1), f"<{m.group(1)}>"), text)


ECS_TOML_VALUES = {
    "WorkerParallelism": "4",
    "Scheme": "https",
    "LoadBalancer.DNSName": "flow-alb-123.eu-west-1.elb.amazonaws.com",
    "VpcCidr": "10.0.0.0/16",
    "Bucket": "flow-bucket-abc",
    "AWS::Region": "eu-west-1",
}


class Template:
    """The template, read once; the task definitions by the flow command they run."""

    def __init__(self, path: Path) -> None:
        self.doc = yaml.load(path.read_text(), Loader=CfnLoader)  # noqa: S506 (a SafeLoader subclass)
        self.res: dict = self.doc["Resources"]
        self.params: dict = self.doc["Parameters"]
        self.tds = self.of_type("AWS::ECS::TaskDefinition")
        self.containers = {n: r["Properties"]["ContainerDefinitions"] for n, r in self.tds.items()}

    def of_type(self, t: str) -> dict:
        return {n: r for n, r in self.res.items() if r["Type"] == t}


def check_cloudformation(cli: Cli, docker: dict) -> tuple[list[list[str]], str]:
    path = ROOT / "deploy/aws/flow.yaml"
    run_tool("cfn-lint", ["--include-checks", "I", "--", str(path)], "flow.yaml: cfn-lint (errors, warnings, informational)")
    t = Template(path)
    commands, by_role, ecs_toml = check_containers(t, cli, docker)
    svc_by_td = check_services(t, by_role)
    check_network(t, by_role, svc_by_td)
    check_iam(t, by_role)
    return commands, ecs_toml


def check_containers(t: Template, cli: Cli, docker: dict) -> tuple[list[list[str]], dict, str]:
    """Each container: its command, user, image, logs, secrets, database settings; flow.toml."""
    of_type, containers = t.of_type, t.containers
    by_role = {}
    commands = []
    secrets_in_template = set(of_type("AWS::SecretsManager::Secret"))
    tomls = set()
    for td, defs in containers.items():
        for c in defs:
            argv = c.get("Command", [])
            commands.append(argv)
            by_role[argv[0] if argv else ""] = (td, c)
            problem = cli.problem(argv)
            R.check(f"flow.yaml {td}: `flow {' '.join(argv)}` is a flow command", problem is None, problem or "")
            R.check(f"flow.yaml {td}: stopTimeout 30 (SIGTERM, then SIGKILL after 30 s)", c.get("StopTimeout") == 30, str(c.get("StopTimeout")))
            R.check(f"flow.yaml {td}: runs as the image's user, not root", str(c.get("User")) == docker.get("user") and not str(c.get("User")).startswith(("0", "root")), str(c.get("User")))
            R.check(f"flow.yaml {td}: the image is the ImageUri parameter", c.get("Image") == {"Ref": "ImageUri"})
            R.check(f"flow.yaml {td}: output to CloudWatch Logs", c.get("LogConfiguration", {}).get("LogDriver") == "awslogs")
            names = [s["Name"] for s in c.get("Secrets", [])]
            bad = [n for n in names if not (n.startswith("FLOW_SECRET_") or n in ("FLOW_DB_USER", "FLOW_DB_PASSWORD"))]
            R.check(f"flow.yaml {td}: secrets are FLOW_SECRET_* (or the database's)", not bad, str(bad))
            foreign = [s["Name"] for s in c.get("Secrets", []) if not refs(s["ValueFrom"]) <= secrets_in_template]
            R.check(f"flow.yaml {td}: secrets come from this stack's Secrets Manager secrets", not foreign, str(foreign))
            env = {e["Name"]: e["Value"] for e in c.get("Environment", [])}
            R.check(
                f"flow.yaml {td}: the database from FLOW_DB_* (the entrypoint's)",
                {"FLOW_DB_HOST", "FLOW_DB_PORT", "FLOW_DB_NAME"} <= set(env) and {"FLOW_DB_USER", "FLOW_DB_PASSWORD"} <= set(names),
            )
            R.check(
                f"flow.yaml {td}: the database connection is TLS (FLOW_DB_SSLMODE require or verify-*)",
                env.get("FLOW_DB_SSLMODE") in ("require", "verify-ca", "verify-full"),
                str(env.get("FLOW_DB_SSLMODE")),
            )
            if "FLOW_CONFIG_TOML" in env:
                tomls.add(json.dumps(env["FLOW_CONFIG_TOML"], sort_keys=True))
    R.check("flow.yaml: scheduler --no-tasks, worker and server task definitions", {"scheduler", "worker", "server"} <= set(by_role) and ["scheduler", "--no-tasks"] in commands, str(commands))
    R.check("flow.yaml: every container gets the same flow.toml", len(tomls) == 1, f"{len(tomls)} versions")
    ecs_toml = ""
    if tomls:
        sub = json.loads(next(iter(tomls)))["Fn::Sub"]
        ecs_toml = render_sub(sub, ECS_TOML_VALUES)
        conf = check_flow_toml("flow.yaml FLOW_CONFIG_TOML", ecs_toml)
        R.check("flow.yaml: remote logs in the stack's bucket", conf.get("logs", {}).get("remote") == f"s3://{ECS_TOML_VALUES['Bucket']}/logs", ecs_toml)
        R.check("flow.yaml: the load balancer's network is a trusted proxy", conf.get("api", {}).get("trusted_proxies") == [ECS_TOML_VALUES["VpcCidr"]])

    server_td, server = by_role.get("server", (None, {}))
    server_env = {e["Name"]: e["Value"] for e in server.get("Environment", [])}
    server_port = [p.get("ContainerPort") for p in server.get("PortMappings", [])]
    R.check("flow.yaml server: listens on FLOW_BIND's port", server_port == [SERVER_PORT] and server_env.get("FLOW_BIND", "").endswith(f":{SERVER_PORT}"), f"{server_port} {server_env.get('FLOW_BIND')}")
    R.check("flow.yaml server: holds no DAG secret", not [s for s in server.get("Secrets", []) if s["Name"].startswith("FLOW_SECRET_")])
    R.check("flow.yaml server: container health check is flow-healthcheck", "/usr/local/bin/flow-healthcheck" in server.get("HealthCheck", {}).get("Command", []))
    sched_secrets = {s["Name"] for s in by_role.get("scheduler", (0, {}))[1].get("Secrets", [])}
    worker_secrets = {s["Name"] for s in by_role.get("worker", (0, {}))[1].get("Secrets", [])}
    R.check("flow.yaml: the scheduler and the workers get the same secrets", sched_secrets == worker_secrets, f"{sched_secrets} / {worker_secrets}")
    return commands, by_role, ecs_toml


def check_services(t: Template, by_role: dict) -> dict:
    """The load balancer's health check, the services' counts and ECS Exec."""
    of_type, params = t.of_type, t.params
    server_td = by_role.get("server", (None, {}))[0]
    tgs = of_type("AWS::ElasticLoadBalancingV2::TargetGroup")
    R.check(
        "flow.yaml: the ALB health check is GET /api/v1/health on the server's port, 200",
        len(tgs) == 1
        and all(
            t["Properties"].get("HealthCheckPath") == "/api/v1/health"
            and t["Properties"].get("Port") == SERVER_PORT
            and t["Properties"].get("TargetType") == "ip"
            and t["Properties"].get("Matcher", {}).get("HttpCode") == "200"
            for t in tgs.values()
        ),
        str(tgs),
    )

    services = of_type("AWS::ECS::Service")
    svc_by_td = {refs(s["Properties"]["TaskDefinition"]).pop(): (n, s["Properties"]) for n, s in services.items()}
    sched = svc_by_td.get(by_role.get("scheduler", ("",))[0], ("", {}))[1]
    R.check(
        "flow.yaml: never two schedulers (MaximumPercent 100, count 0 or 1)",
        sched.get("DeploymentConfiguration", {}).get("MaximumPercent") == 100
        and sorted(str(v) for v in params[sched["DesiredCount"]["Ref"]].get("AllowedValues", [])) == ["0", "1"],
    )
    worker_svc = svc_by_td.get(by_role.get("worker", ("",))[0], ("", {}))[1]
    R.check(
        "flow.yaml: the workers' count is the WorkerCount parameter (default 2)",
        worker_svc.get("DesiredCount") == {"Ref": "WorkerCount"} and params["WorkerCount"]["Default"] == 2,
    )
    server_svc = svc_by_td.get(server_td, ("", {}))[1]
    R.check("flow.yaml: the server service is behind the target group", refs(server_svc.get("LoadBalancers", [])) >= set(tgs))
    execs = [n for n, s in services.items() if s["Properties"].get("EnableExecuteCommand")]
    R.check("flow.yaml: ECS Exec on the server only (for `flow tokens create`)", execs == [svc_by_td[server_td][0]], str(execs))
    clusters = of_type("AWS::ECS::Cluster")
    R.check(
        "flow.yaml: ECS Exec sessions are not logged (a token is printed there)",
        all(c["Properties"].get("Configuration", {}).get("ExecuteCommandConfiguration", {}).get("Logging") == "NONE" for c in clusters.values()),
    )
    return svc_by_td


def check_network(t: Template, by_role: dict, svc_by_td: dict) -> None:
    """Who can reach what: security groups, the database, the bucket."""
    of_type, res = t.of_type, t.res
    server_td = by_role.get("server", (None, {}))[0]
    # Who can reach what.
    sgs = of_type("AWS::EC2::SecurityGroup")

    def ingress(sg: str) -> list:
        rules = sgs[sg]["Properties"].get("SecurityGroupIngress", [])
        return [r for r in rules if not (isinstance(r, dict) and "Fn::If" in r)] + [
            r["Fn::If"][1] for r in rules if isinstance(r, dict) and "Fn::If" in r
        ]

    sg_of = {svc_by_td[td][0]: refs(svc_by_td[td][1]["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"]) for td in svc_by_td}
    sched_sg = sg_of[svc_by_td[by_role["scheduler"][0]][0]]
    worker_sg = sg_of[svc_by_td[by_role["worker"][0]][0]]
    server_sg = sg_of[svc_by_td[server_td][0]]
    R.check(
        "flow.yaml: the scheduler and the workers accept no connection",
        all(not ingress(sg) for sg in sched_sg | worker_sg)
        and not of_type("AWS::EC2::SecurityGroupIngress"),
    )
    albs = of_type("AWS::ElasticLoadBalancingV2::LoadBalancer")
    alb_sg = set().union(*(refs(a["Properties"]["SecurityGroups"]) for a in albs.values()))
    R.check(
        "flow.yaml: the server accepts the load balancer only, on its port",
        all(
            r.get("SourceSecurityGroupId") in ({"Ref": s} for s in alb_sg) and r.get("FromPort") == r.get("ToPort") == SERVER_PORT
            for sg in server_sg
            for r in ingress(sg)
        ),
    )
    R.check(
        "flow.yaml: the load balancer listens on 80 and 443 only",
        all(r.get("FromPort") == r.get("ToPort") and r.get("FromPort") in (80, 443) for sg in alb_sg for r in ingress(sg)),
    )
    dbs = of_type("AWS::RDS::DBInstance")
    db_sg = set().union(*(refs(d["Properties"]["VPCSecurityGroups"]) for d in dbs.values()))
    R.check(
        "flow.yaml: the database accepts the flow tasks only, on 5432",
        all(
            r.get("FromPort") == r.get("ToPort") == 5432 and refs(r.get("SourceSecurityGroupId", {})) <= (server_sg | sched_sg | worker_sg) and "CidrIp" not in r
            for sg in db_sg
            for r in ingress(sg)
        ),
    )
    groups = {n: r for n, r in res.items() if r["Type"] == "AWS::RDS::DBParameterGroup"}
    R.check(
        "flow.yaml: the database refuses plain connections (rds.force_ssl 1)",
        bool(dbs)
        and all(
            str(groups.get(next(iter(refs(d["Properties"].get("DBParameterGroupName", {}))), ""), {}).get("Properties", {}).get("Parameters", {}).get("rds.force_ssl")) == "1"
            for d in dbs.values()
        ),
    )
    R.check(
        "flow.yaml: the database is private and encrypted",
        all(d["Properties"].get("PubliclyAccessible") is False and d["Properties"].get("StorageEncrypted") is True for d in dbs.values()),
    )
    buckets = of_type("AWS::S3::Bucket")
    R.check(
        "flow.yaml: the bucket blocks public access",
        all(all(v is True for v in b["Properties"].get("PublicAccessBlockConfiguration", {}).values()) and len(b["Properties"].get("PublicAccessBlockConfiguration", {})) == 4 for b in buckets.values()),
    )


def check_iam(t: Template, by_role: dict) -> None:
    """IAM: least privilege as far as a reading can tell."""
    of_type, tds, containers, doc = t.of_type, t.tds, t.containers, t.doc
    server_td = by_role.get("server", (None, {}))[0]
    # IAM: least privilege as far as a reading can tell.
    roles = of_type("AWS::IAM::Role")
    wild = []
    passrole = []
    for rn, role in roles.items():
        for pol in role["Properties"].get("Policies", []):
            if isinstance(pol, dict) and "Fn::If" in pol:
                pol = pol["Fn::If"][1]
            for st in pol["PolicyDocument"]["Statement"]:
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                if st["Effect"] != "Allow":
                    continue
                if any(a == "*" or a.endswith(":*") for a in actions):
                    wild.append((rn, actions))
                if st.get("Resource") == "*" and not all(a == "elasticmapreduce:RunJobFlow" or a.startswith("ssmmessages:") for a in actions):
                    wild.append((rn, actions, "Resource *"))
                if "iam:PassRole" in actions:
                    passrole.append(refs(st["Resource"]))
    R.check("flow.yaml: no IAM wildcard action; Resource * only where the action takes none", not wild, str(wild))
    R.check(
        "flow.yaml: iam:PassRole names the two EMR roles only",
        passrole == [{"EmrServiceRoleName", "EmrInstanceRoleName", "AWS::Partition", "AWS::AccountId"}],
        str(passrole),
    )
    exec_roles = {refs(td["Properties"]["ExecutionRoleArn"]).pop() for td in tds.values()}
    readable = set()
    for rn in exec_roles:
        for pol in roles[rn]["Properties"].get("Policies", []):
            for st in pol["PolicyDocument"]["Statement"]:
                if "secretsmanager:GetSecretValue" in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]]):
                    readable |= refs(st["Resource"])
    used = set().union(*(refs(s["ValueFrom"]) for defs in containers.values() for c in defs for s in c.get("Secrets", [])))
    R.check("flow.yaml: the execution role reads exactly the secrets the tasks get", readable == used, f"{readable} / {used}")
    task_roles = {refs(td["Properties"]["TaskRoleArn"]).pop() for td in tds.values()}
    R.check("flow.yaml: each service has a task role of its own", len(task_roles) == len(tds), str(task_roles))

    def s3_grants(td: str) -> list[tuple[str, str]]:
        """(action, resource text) of the S3 statements of a task definition's role."""
        role = refs(tds[td]["Properties"]["TaskRoleArn"]).pop()
        out = []
        for pol in roles[role]["Properties"].get("Policies", []):
            if isinstance(pol, dict) and "Fn::If" in pol:
                pol = pol["Fn::If"][1]
            for st in pol["PolicyDocument"]["Statement"]:
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                resource = st["Resource"]
                text = resource["Fn::Sub"] if isinstance(resource, dict) and "Fn::Sub" in resource else json.dumps(resource)
                prefix = st.get("Condition", {}).get("StringLike", {}).get("s3:prefix", "")
                out += [(a, text + (f" prefix {prefix}" if prefix else "")) for a in actions if a.startswith("s3:")]
        return out

    def logs_only(grants: list[tuple[str, str]], actions: set[str]) -> bool:
        return bool(grants) and all(
            a in actions and (r == "${Bucket.Arn}/logs/*" or r.endswith(" prefix logs/*")) for a, r in grants
        )

    R.check(
        "flow.yaml: the server's role reads the bucket's logs/ and nothing else in S3",
        logs_only(s3_grants(server_td), {"s3:GetObject", "s3:ListBucket"}),
        str(s3_grants(server_td)),
    )
    sched_td = by_role["scheduler"][0]
    R.check(
        "flow.yaml: the scheduler's role reads and writes logs/ and nothing else in S3",
        logs_only(s3_grants(sched_td), {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}),
        str(s3_grants(sched_td)),
    )
    worker_td = by_role["worker"][0]
    R.check(
        "flow.yaml: the workers' role reaches the stack's bucket only",
        all("Bucket" in r for _, r in s3_grants(worker_td)) and bool(s3_grants(worker_td)),
        str(s3_grants(worker_td)),
    )
    policies = of_type("AWS::S3::BucketPolicy")
    R.check(
        "flow.yaml: the bucket refuses plain HTTP",
        any(
            st["Effect"] == "Deny" and st.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
            for p in policies.values()
            for st in p["Properties"]["PolicyDocument"]["Statement"]
        ),
    )
    outputs = doc.get("Outputs", {})
    R.check("flow.yaml: outputs the load balancer's URL", "LoadBalancer" in refs(outputs.get("ServiceUrl", {}).get("Value")))
