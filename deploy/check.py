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

The tools come from the venv scripts/testbed.sh makes ($FLOW_TEST_CFN_LINT's folder), or PATH.
A missing tool skips its check, except under CI=true, where it fails.
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI") == "true"
UID = 10001
SERVER_PORT = 8080


# --- reporting ---------------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []
        self.skipped: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok    {name}")
        else:
            self.failed.append(name)
            print(f"FAIL  {name}" + (f": {detail}" if detail else ""))
        return ok

    def skip(self, name: str, why: str) -> None:
        if CI:
            self.check(name, False, f"{why} (CI=true requires it; scripts/testbed.sh installs it)")
        else:
            self.skipped.append(name)
            print(f"skip  {name}: {why}")

    def note(self, text: str) -> None:
        print(f"note  {text}")


R = Report()


def tool(name: str) -> str | None:
    """A tool of the test bed's venv (beside this python, or beside $FLOW_TEST_CFN_LINT), else PATH."""
    dirs = [Path(sys.executable).parent]
    if os.environ.get("FLOW_TEST_CFN_LINT"):
        dirs.insert(0, Path(os.environ["FLOW_TEST_CFN_LINT"]).parent)
    for d in dirs:
        if (d / name).is_file() and os.access(d / name, os.X_OK):
            return str(d / name)
    return shutil.which(name)


# --commands and --flow-tomls read the files only; they run no tool.
TOOLS = True


def run_tool(name: str, args: list[str], check_name: str) -> None:
    if not TOOLS:
        return
    exe = tool(name)
    if exe is None:
        R.skip(check_name, f"{name} is not installed")
        return
    out = subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True)
    R.check(check_name, out.returncode == 0, (out.stdout + out.stderr).strip()[-3000:])


# --- flow's own command line and flow.toml, read from the sources ------------------------------


def kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower().replace("_", "-")


def rust_block(src: str, header: str) -> str:
    """The body of the item whose declaration is `header` (up to its matching brace)."""
    start = src.index(header)
    i = src.index("{", start)
    depth = 0
    for j in range(i, len(src)):
        depth += {"{": 1, "}": -1}.get(src[j], 0)
        if depth == 0:
            return src[i + 1 : j]
    raise ValueError(header)


def fields(body: str) -> list[tuple[str, str, str]]:
    """(attributes, name, type) of each field of a struct body or struct-like variant."""
    out = []
    attrs = ""
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("#["):
            attrs += line
        elif m := re.match(r"(?:pub )?(\w+): (.+?),?$", line):
            out.append((attrs, m.group(1), m.group(2)))
            attrs = ""
        elif line and not line.startswith("//"):
            attrs = ""
    return out


class Cli:
    """What ui/src/cli.rs declares: subcommands, their flags and nested subcommands."""

    def __init__(self) -> None:
        self.src = (ROOT / "ui/src/cli.rs").read_text()
        self.global_flags = self.struct_flags("Global")

    def struct_flags(self, name: str) -> set[str]:
        flags = set()
        for attrs, field, ty in fields(rust_block(self.src, f"pub struct {name} ")):
            if "flatten" in attrs:
                flags |= self.struct_flags(ty)
            elif "long" in attrs:
                m = re.search(r'long\s*=\s*"([^"]+)"', attrs)
                flags.add("--" + (m.group(1) if m else kebab(field)))
        return flags

    def variants(self, enum: str) -> dict[str, tuple[set[str], str | None]]:
        body = rust_block(self.src, f"pub enum {enum} ")
        out: dict[str, tuple[set[str], str | None]] = {}
        # Variants sit at one indentation level: `Name,`, `Name(Args),` or `Name { ... },`.
        for m in re.finditer(r"^    (\w+)\s*(\{|\(|,)", body, re.M):
            name, kind = m.group(1), m.group(2)
            flags: set[str] = set()
            sub = None
            if kind == "(":
                ty = body[m.end() : body.index(")", m.end())]
                flags = self.struct_flags(ty)
            elif kind == "{":
                depth, end = 1, m.end()
                while depth:
                    depth += {"{": 1, "}": -1}.get(body[end], 0)
                    end += 1
                inner = body[m.end() : end - 1]
                if "\n" not in inner:  # `Name { a: A, b: B }` on one line
                    inner = inner.replace(", ", ",\n")
                for attrs, field, ty in fields(inner):
                    if "subcommand" in attrs:
                        sub = ty
                    elif "flatten" in attrs:
                        flags |= self.struct_flags(ty)
                    elif "long" in attrs:
                        lm = re.search(r'long\s*=\s*"([^"]+)"', attrs)
                        flags.add("--" + (lm.group(1) if lm else kebab(field)))
            out[kebab(name)] = (flags, sub)
        return out

    def problem(self, argv: list[str]) -> str | None:
        """Why flow would refuse `flow ARGV`, or None."""
        enum = "Command"
        flags = set(self.global_flags)
        rest = list(argv)
        path: list[str] = []
        while rest and not rest[0].startswith("-"):
            variants = self.variants(enum)
            if rest[0] not in variants:
                return f"`{rest[0]}` is not a subcommand of `flow {' '.join(path)}` (there are: {', '.join(variants)})"
            path.append(rest.pop(0))
            more, sub = variants[path[-1]]
            flags |= more
            if sub is None:
                break
            enum = sub
        else:
            if enum != "Command":
                return f"`flow {' '.join(path)}` needs a subcommand"
        for word in rest:
            if word.startswith("--") and word.split("=")[0] not in flags:
                return f"`{word}` is not a flag of `flow {' '.join(path)}` ({', '.join(sorted(flags))})"
        return None


def config_keys() -> dict[str, set[str]]:
    """flow.toml's keys per table, from ui/src/config.rs: '' is the top level."""
    src = (ROOT / "ui/src/config.rs").read_text()
    keys = {"": {f for _, f, _ in fields(rust_block(src, "pub struct FileConfig "))}}
    keys["api"] = {f for _, f, _ in fields(rust_block(src, "pub struct ApiFile "))}
    keys["notifications"] = {f for _, f, _ in fields(rust_block(src, "pub struct Notifications "))}
    keys["logs"] = {f for _, f, _ in fields(rust_block(src, "pub struct LogsFile "))}
    return keys


# Keys designed for flow.toml that flow does not read yet, noted instead of failed. Empty: the
# deployment files hold only keys this build reads (flow refuses unknown keys at start).
PENDING_KEYS: dict = {}


def check_flow_toml(name: str, text: str) -> dict:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        R.check(f"{name}: is TOML", False, str(e))
        return {}
    known = config_keys()
    unknown = []
    for key, value in doc.items():
        if key not in known[""]:
            if ("", key) in PENDING_KEYS:
                R.note(f"{name}: `{key}` is not in ui/src/config.rs yet: {PENDING_KEYS[('', key)]}")
                continue
            unknown.append(key)
        elif key in known and isinstance(value, dict):
            unknown += [f"{key}.{k}" for k in value if k not in known[key]]
    for (table, key), _ in PENDING_KEYS.items():
        if table == "" and key in known[""]:
            R.note(f"ui/src/config.rs now has `{key}`: remove it from PENDING_KEYS in deploy/check.py")
    R.check(f"{name}: every key is one flow.toml has", not unknown, f"unknown: {unknown}")
    if "connections" in doc:
        bad = [n for n, c in doc["connections"].items() if c.get("type") not in ("aws", "postgres")]
        R.check(f"{name}: connections have a known type", not bad, str(bad))
    return doc


# --- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, list[str], str, int]]:
    """(INSTRUCTION, flags, arguments, line) with continuations joined and comments dropped."""
    out = []
    pending = ""
    start = 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        instr, _, rest = text.partition(" ")
        flags = []
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        out.append((instr.upper(), flags, rest, start))
    return out


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**", i):
                rx += ".*"
                i += 2
                if pat.startswith("/", i):
                    rx += "/?"
                    i += 1
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        out.append((negate, re.compile(rx + "$")))
    return out


def ignored(rel: str, patterns=None) -> bool:
    """Whether the build context leaves `rel` out (it, or a folder above it, matches)."""
    patterns = patterns if patterns is not None else dockerignore_patterns()
    parts = Path(rel).parts
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        verdict = None
        for negate, rx in patterns:
            if rx.match(prefix):
                verdict = not negate
        if verdict:
            return True
    return False


def build_inputs() -> list[str]:
    """What the release build reads: the workspace's manifests and members, .cargo/, and every
    file a member includes at compile time (include_str!, include_bytes!, sqlx::migrate!)."""
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    members = cargo["workspace"]["members"]
    inputs = ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml", ".cargo/config.toml", *members]
    for member in members:
        for src in (ROOT / member).rglob("*.rs"):
            text = src.read_text()
            for m in re.finditer(r'(?:include_str!|include_bytes!|migrate!)\("([^"]+)"\)', text):
                base = ROOT / member if "migrate!" in m.group(0) else src.parent
                target = (base / m.group(1)).resolve()
                if ROOT in target.parents:
                    inputs.append(str(target.relative_to(ROOT)))
    return sorted(set(inputs))


def check_dockerfile() -> dict:
    path = ROOT / "Dockerfile"
    ins = dockerfile_instructions(path)
    facts: dict = {}
    stages: list[list] = []
    args = {}
    for instr, flags, rest, line in ins:
        if instr == "FROM":
            stages.append([])
        if not stages:
            if instr == "ARG":
                k, _, v = rest.partition("=")
                args[k] = v
            continue
        stages[-1].append((instr, flags, rest, line))

    # BuildKit's own parser must read the same instructions.
    try:
        import dockerfile  # type: ignore

        theirs = [c.cmd.upper() for c in dockerfile.parse_file(str(path))]
        ours = [i[0] for i in ins]
        R.check("Dockerfile: BuildKit's parser reads it as we do", theirs == ours, f"{theirs} != {ours}")
    except ImportError:
        R.skip("Dockerfile: BuildKit's parser reads it as we do", "PyPI `dockerfile` is not installed")
    run_tool("hadolint", ["Dockerfile"], "Dockerfile: hadolint")

    R.check("Dockerfile: multi-stage (a builder and a runtime)", len(stages) >= 2, f"{len(stages)} stage(s)")
    builder, final = stages[0], stages[-1]
    channel = tomllib.loads((ROOT / "rust-toolchain.toml").read_text())["toolchain"]["channel"]
    R.check(
        "Dockerfile: the builder's Rust is rust-toolchain.toml's",
        args.get("RUST_VERSION") == channel and "${RUST_VERSION}" in builder[0][2] and builder[0][2].startswith("rust:"),
        f"ARG RUST_VERSION={args.get('RUST_VERSION')}, rust-toolchain.toml {channel}, FROM {builder[0][2]}",
    )
    runs = " ".join(r for i, _, r, _ in builder if i == "RUN")
    R.check("Dockerfile: cargo build --release --locked --bin flow", "cargo build --release --locked --bin flow" in runs, runs)
    base = final[0][2].split()[0]
    R.check(
        "Dockerfile: the runtime is Debian slim or distroless",
        re.match(r"debian:(\$\{DEBIAN_RELEASE\}|\w+)-slim$", base) is not None or base.startswith("gcr.io/distroless/cc"),
        base,
    )

    def last(instr: str) -> tuple | None:
        found = [x for x in final if x[0] == instr]
        return found[-1] if found else None

    user = last("USER")
    user_value = user[2] if user else "root"
    uid = user_value.split(":")[0]
    R.check("Dockerfile: USER is not root", uid not in ("root", "0", ""), user_value)
    R.check("Dockerfile: USER is runtime-setup.sh's flow (10001)", uid in ("flow", str(UID)), user_value)
    facts["user"] = user_value
    setup_runs = [r for i, _, r, _ in final if i == "RUN"]
    R.check(
        "Dockerfile: the runtime stage runs deploy/docker/runtime-setup.sh",
        any("runtime-setup.sh" in r for r in setup_runs),
        str(setup_runs),
    )
    copies_flow = [x for x in final if x[0] == "COPY" and "--from=builder" in x[1] and x[2].endswith("/usr/local/bin/flow")]
    R.check("Dockerfile: the binary comes from the builder stage", bool(copies_flow))

    env: dict[str, str] = {}
    for instr, _, rest, _ in final:
        if instr == "ENV":
            for k, v in re.findall(r"(\w+)=(\S+)", rest):
                env[k] = v
    facts["env"] = env
    R.check("Dockerfile: FLOW_HOME=/var/lib/flow", env.get("FLOW_HOME") == "/var/lib/flow", str(env))
    dags = [x for x in final if x[0] == "COPY" and x[2].split()[0].rstrip("/") == "dags"]
    R.check(
        "Dockerfile: the example DAGs are copied to FLOW_DAGS_FOLDER",
        bool(dags) and dags[0][2].split()[-1].rstrip("/") == env.get("FLOW_DAGS_FOLDER"),
        f"{dags} / {env.get('FLOW_DAGS_FOLDER')}",
    )
    bind_port = env.get("FLOW_BIND", "").rpartition(":")[2]
    expose = last("EXPOSE")
    R.check(
        "Dockerfile: EXPOSE is FLOW_BIND's port",
        expose is not None and expose[2].split("/")[0] == bind_port == str(SERVER_PORT),
        f"EXPOSE {expose and expose[2]}, FLOW_BIND {env.get('FLOW_BIND')}",
    )
    stop = last("STOPSIGNAL")
    R.check("Dockerfile: STOPSIGNAL SIGTERM", stop is not None and stop[2] == "SIGTERM")
    hc = last("HEALTHCHECK")
    hc_script = (ROOT / "deploy/docker/healthcheck.sh").read_text()
    R.check(
        "Dockerfile: HEALTHCHECK runs flow-healthcheck, which asks GET /api/v1/health",
        hc is not None and "/usr/local/bin/flow-healthcheck" in hc[2] and "GET /api/v1/health HTTP/1.1" in hc_script,
        str(hc),
    )
    entry = last("ENTRYPOINT")
    entry_argv = json.loads(entry[2]) if entry else []
    setup = (ROOT / "deploy/docker/runtime-setup.sh").read_text()
    R.check(
        "Dockerfile: ENTRYPOINT is tini (installed by runtime-setup.sh), then flow-entrypoint",
        entry_argv[:1] == ["/usr/bin/tini"] and entry_argv[-1:] == ["/usr/local/bin/flow-entrypoint"] and re.search(r"apt-get install .*\btini\b", setup) is not None,
        str(entry_argv),
    )
    cmd = last("CMD")
    facts["cmd"] = json.loads(cmd[2]) if cmd else []

    patterns = dockerignore_patterns()
    sources = []
    for stage in stages:
        for instr, flags, rest, _ in stage:
            if instr in ("COPY", "ADD") and not any(f.startswith("--from") for f in flags):
                sources += rest.split()[:-1]
    missing = [s for s in sources if s != "." and not (ROOT / s).exists()]
    R.check("Dockerfile: every COPY source exists", not missing, str(missing))
    left_out = [s for s in sources if s != "." and ignored(s.rstrip("/"), patterns)]
    R.check("Dockerfile: .dockerignore keeps every COPY source", not left_out, str(left_out))
    needed = build_inputs()
    left_out = [p for p in needed if ignored(p, patterns)]
    R.check(
        f"Dockerfile: .dockerignore keeps what the build reads ({len(needed)} paths)",
        not left_out and any(s == "." for s in sources),
        str(left_out),
    )
    return facts


# --- the scripts, run -----------------------------------------------------------------------------


def check_runtime_setup() -> None:
    name = "runtime-setup.sh: run into a scratch root"
    if os.geteuid() != 0:
        R.skip(name, "needs root (it sets owners; the image build runs it as root)")
        return
    if not shutil.which("useradd"):
        R.skip(name, "shadow's useradd is missing")
        return
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "etc").mkdir()
        # What debian:*-slim has for root, nothing more.
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
        (root / "etc/group").write_text("root:x:0:\n")
        (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
        (root / "etc/gshadow").write_text("root:*::\n")
        out = subprocess.run(
            ["sh", str(ROOT / "deploy/docker/runtime-setup.sh"), str(ROOT / "deploy/docker")],
            env={**os.environ, "FLOW_IMAGE_ROOT": str(root)},
            capture_output=True,
            text=True,
        )
        if not R.check(name, out.returncode == 0, out.stdout + out.stderr):
            return
        passwd = (root / "etc/passwd").read_text().splitlines()
        R.check(
            "runtime-setup.sh: user flow, uid 10001, home /var/lib/flow, no login shell",
            f"flow:x:{UID}:{UID}::/var/lib/flow:/usr/sbin/nologin" in passwd,
            str(passwd),
        )
        R.check("runtime-setup.sh: group flow, gid 10001", f"flow:x:{UID}:" in (root / "etc/group").read_text().splitlines())

        def owner_mode(rel: str) -> tuple[int, int, int]:
            st = (root / rel).stat()
            return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

        expected = {
            "var/lib/flow": (UID, UID, 0o700),
            "opt/flow/dags": (0, 0, 0o755),
            "tmp/flow-examples": (UID, UID, 0o755),
            "usr/local/bin/flow-entrypoint": (0, 0, 0o755),
            "usr/local/bin/flow-healthcheck": (0, 0, 0o755),
        }
        got = {rel: owner_mode(rel) for rel in expected if (root / rel).exists()}
        R.check("runtime-setup.sh: owners and modes (FLOW_HOME flow's 0700, DAGs root's)", got == expected, f"{got}")
        same = all(
            (root / "usr/local/bin" / f"flow-{n}").read_bytes() == (ROOT / f"deploy/docker/{n}.sh").read_bytes()
            for n in ("entrypoint", "healthcheck")
        )
        R.check("runtime-setup.sh: installs the entrypoint and the health check as they are", same)


def check_entrypoint() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        d = Path(scratch)
        (d / "bin").mkdir()
        stub = d / "bin/flow"
        # The stand-in prints its arguments and environment as JSON.
        stub.write_text(
            f"#!{sys.executable}\nimport json, os, sys\n"
            "print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}))\n"
        )
        stub.chmod(0o755)
        password = "p@ss:w/rd#?%'\" é$(x)"
        toml_text = 'parallelism = 2\n[api]\ntrusted_proxies = ["10.0.0.0/16"]'
        env = {
            "PATH": f"{d / 'bin'}:{os.environ['PATH']}",
            "FLOW_HOME": str(d / "home"),
            "FLOW_CONFIG_TOML": toml_text,
            "FLOW_DB_HOST": "db.internal",
            "FLOW_DB_PORT": "5433",
            "FLOW_DB_USER": "flow user",
            "FLOW_DB_PASSWORD": password,
            "FLOW_DB_SSLMODE": "verify-full",
            "FLOW_DB_SSLROOTCERT": "/opt/flow/rds ca.pem",
        }
        out = subprocess.run(
            ["sh", str(ROOT / "deploy/docker/entrypoint.sh"), "scheduler", "--no-tasks", "two words"],
            env=env,
            capture_output=True,
            text=True,
        )
        if not R.check("entrypoint.sh: execs flow", out.returncode == 0, out.stderr):
            return
        seen = json.loads(out.stdout)
        R.check("entrypoint.sh: passes the arguments as they are", seen["argv"] == ["scheduler", "--no-tasks", "two words"], str(seen["argv"]))
        url = seen["env"].get("FLOW_DATABASE_URL", "")
        parts = urllib.parse.urlsplit(url)
        R.check(
            "entrypoint.sh: composes FLOW_DATABASE_URL, user, password and TLS settings percent-encoded",
            parts.scheme == "postgres"
            and urllib.parse.unquote(parts.username or "") == "flow user"
            and urllib.parse.unquote(parts.password or "") == password
            and parts.hostname == "db.internal"
            and parts.port == 5433
            and parts.path == "/flow"
            and urllib.parse.parse_qs(parts.query) == {"sslmode": ["verify-full"], "sslrootcert": ["/opt/flow/rds ca.pem"]},
            url,
        )
        leaked = sorted(k for k in seen["env"] if k.startswith("FLOW_DB_") or k == "FLOW_CONFIG_TOML")
        R.check("entrypoint.sh: removes FLOW_DB_* and FLOW_CONFIG_TOML before flow starts", not leaked, str(leaked))
        written = d / "home/flow.toml"
        R.check(
            "entrypoint.sh: writes FLOW_CONFIG_TOML to $FLOW_HOME/flow.toml, mode 0600",
            written.exists() and written.read_text() == toml_text + "\n" and stat.S_IMODE(written.stat().st_mode) == 0o600,
        )
        # Again with the same text (an ECS Exec session): the file is left as it is.
        before = written.stat().st_ino
        again = subprocess.run(["sh", str(ROOT / "deploy/docker/entrypoint.sh"), "tokens", "list"], env=env, capture_output=True, text=True)
        R.check(
            "entrypoint.sh: leaves a flow.toml that holds the same text",
            again.returncode == 0 and written.stat().st_ino == before and sorted(p.name for p in written.parent.iterdir()) == ["flow.toml"],
            again.stderr,
        )
        # A URL given whole is left alone.
        env2 = {"PATH": env["PATH"], "FLOW_HOME": str(d / "home2"), "FLOW_DATABASE_URL": "postgres://a@b:1/c", "FLOW_DB_HOST": "x"}
        out = subprocess.run(["sh", str(ROOT / "deploy/docker/entrypoint.sh"), "worker"], env=env2, capture_output=True, text=True)
        seen = json.loads(out.stdout) if out.returncode == 0 else {"env": {}}
        R.check(
            "entrypoint.sh: keeps a FLOW_DATABASE_URL that is given",
            seen["env"].get("FLOW_DATABASE_URL") == "postgres://a@b:1/c" and not (d / "home2/flow.toml").exists(),
            out.stderr,
        )


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        _Health.paths.append(self.path)
        body = json.dumps({"status": "ok" if _Health.status == 200 else "error"}).encode()
        self.send_response(_Health.status if self.path == "/api/v1/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        try:
            self.end_headers()
            self.wfile.write(body)
        except ConnectionError:
            pass  # the check reads the status line and hangs up

    def log_message(self, *args) -> None:
        pass


def check_healthcheck() -> None:
    if not shutil.which("bash"):
        R.skip("healthcheck.sh", "bash is missing")
        return
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            proc = Path(scratch)
            (proc / "1").mkdir()

            def probe(command: str, bind: str) -> int:
                (proc / "1/cmdline").write_bytes(b"/usr/bin/tini\0--\0/usr/local/bin/flow-entrypoint\0" + command.encode() + b"\0")
                env = {**os.environ, "FLOW_HEALTHCHECK_PROC": str(proc), "FLOW_BIND": bind}
                return subprocess.run(["bash", str(ROOT / "deploy/docker/healthcheck.sh")], env=env, capture_output=True).returncode

            _Health.status = 200
            R.check("healthcheck.sh: server answering 200 is healthy", probe("server", f"0.0.0.0:{port}") == 0)
            R.check("healthcheck.sh: it asked GET /api/v1/health", _Health.paths == ["/api/v1/health"], str(_Health.paths))
            _Health.status = 503
            R.check("healthcheck.sh: server answering 503 is unhealthy", probe("standalone", f"127.0.0.1:{port}") == 1)
            _Health.paths.clear()
            R.check("healthcheck.sh: a worker is healthy while it runs, asked nothing", probe("worker", f"0.0.0.0:{port}") == 0 and not _Health.paths)
            server.shutdown()
            server.server_close()
            R.check("healthcheck.sh: server not listening is unhealthy", probe("server", f"0.0.0.0:{port}") == 1)
    finally:
        server.server_close()


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


def check_cloudformation(cli: Cli, docker: dict) -> tuple[list[list[str]], str]:
    path = ROOT / "deploy/aws/flow.yaml"
    run_tool("cfn-lint", ["--include-checks", "I", "--", str(path)], "flow.yaml: cfn-lint (errors, warnings, informational)")
    doc = yaml.load(path.read_text(), Loader=CfnLoader)  # noqa: S506 (a SafeLoader subclass)
    res: dict = doc["Resources"]
    params: dict = doc["Parameters"]

    def of_type(t: str) -> dict:
        return {n: r for n, r in res.items() if r["Type"] == t}

    tds = of_type("AWS::ECS::TaskDefinition")
    containers = {n: r["Properties"]["ContainerDefinitions"] for n, r in tds.items()}
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
    return commands, ecs_toml


# --- main -------------------------------------------------------------------------------------------


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
        global TOOLS
        TOOLS = False
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
