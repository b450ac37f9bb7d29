#!/usr/bin/env python3
"""Release checks: one version everywhere, and the tag of each distribution.

    python3 tools/release.py check     exit 1 (and say where) if versions disagree
    python3 tools/release.py tags      print mailrider-v0.1.0, mailrider-table-redis-v0.1.0, ...

Every distribution is versioned with the core. ``check`` compares the core's
pyproject version with: every extras/*/pyproject.toml version; every pin of
a local distribution in their dependencies (``mailrider==X``,
``mailrider-table-sql==X``); ``__version__`` in core/src/mailrider/__init__.py
and in each extra's package ``__init__.py`` when it defines one; and the
newest ``## X`` heading of CHANGELOG.md (``## Unreleased`` above it is allowed).
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import re
import sys
import tomllib
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclass
class Dist:
    name: str
    version: str
    folder: pathlib.Path
    dependencies: list[str]
    module: str


def _module_name(meta: dict[str, object], tool: dict[str, object], name: str) -> str:
    flit = tool.get("flit", {})
    module = flit.get("module", {}) if isinstance(flit, dict) else {}
    if isinstance(module, dict) and isinstance(module.get("name"), str):
        return str(module["name"])
    return name.replace("-", "_")


def distributions(root: pathlib.Path = ROOT) -> list[Dist]:
    folders = [root / "core", *sorted(p.parent for p in root.glob("extras/*/pyproject.toml"))]
    out = []
    for folder in folders:
        data = tomllib.loads((folder / "pyproject.toml").read_text())
        meta = data["project"]
        out.append(Dist(
            name=meta["name"],
            version=str(meta.get("version", "")),
            folder=folder,
            dependencies=list(meta.get("dependencies", [])),
            module=_module_name(meta, data.get("tool", {}), meta["name"]),
        ))
    return out


def module_version(init: pathlib.Path) -> str | None:
    """The string assigned to ``__version__`` in ``init``, or None if it has none."""
    if not init.is_file():
        return None
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__version__" for t in targets):
                if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                    return node.value.value
                return "<not a string literal>"
    return None


def changelog_version(path: pathlib.Path) -> str | None:
    """The newest released version in CHANGELOG.md (``## 0.1.0`` or ``## [0.1.0] - date``)."""
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        m = re.match(r"##\s+\[?([^\]\s]+)\]?", line)
        if m and m.group(1).lower() != "unreleased":
            return m.group(1)
    return None


def problems(root: pathlib.Path = ROOT) -> list[str]:
    dists = distributions(root)
    core = dists[0]
    version = core.version
    names = {d.name for d in dists}
    found: list[str] = []
    if not version:
        return [f"{core.folder / 'pyproject.toml'}: no static version"]
    for d in dists:
        where = d.folder.relative_to(root) / "pyproject.toml"
        if d.version != version:
            found.append(f"{where}: {d.name} version {d.version} != {version}")
        for req in d.dependencies:
            m = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", req)
            if m is None or m.group(1).lower() not in names:
                continue
            if m.group(2).replace(" ", "") != f"=={version}":
                found.append(f"{where}: {d.name} requires {req!r}, want =={version}")
        init = d.folder / "src" / d.module / "__init__.py"
        mv = module_version(init)
        if mv is not None and mv != version:
            found.append(f"{init.relative_to(root)}: __version__ {mv} != {version}")
    if module_version(core.folder / "src" / core.module / "__init__.py") is None:
        found.append(f"core/src/{core.module}/__init__.py: no __version__")
    changelog = root / "CHANGELOG.md"
    cv = changelog_version(changelog)
    if cv is None:
        found.append("CHANGELOG.md: no version heading (## X.Y.Z)")
    elif cv != version:
        found.append(f"CHANGELOG.md: newest version {cv} != {version}")
    return found


def tags(root: pathlib.Path = ROOT) -> list[str]:
    return [f"{d.name}-v{d.version}" for d in distributions(root)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["check", "tags"])
    p.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    root = pathlib.Path(ns.root).resolve()
    if ns.command == "tags":
        for tag in tags(root):
            print(tag)
        return 0
    found = problems(root)
    for line in found:
        print(f"FAIL {line}")
    if found:
        return 1
    print(f"versions OK: {distributions(root)[0].version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
