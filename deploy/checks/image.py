"""The Dockerfile, .dockerignore and the scripts the image runs (deploy/docker/)."""

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
