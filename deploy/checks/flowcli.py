"""flow's own command line and flow.toml, read from the sources."""

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
