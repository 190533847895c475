"""What every check shares: where the repository is, the report, the tools."""

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

ROOT = Path(__file__).resolve().parent.parent.parent
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
