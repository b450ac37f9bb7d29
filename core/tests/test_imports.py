"""core/src is standard-library only, and filesystem defaults live in paths.py."""

from __future__ import annotations

import ast
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "mailrider"


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def test_only_standard_library_imports() -> None:
    allowed = set(sys.stdlib_module_names) | {"mailrider", "__future__"}
    files = list(SRC.rglob("*.py"))
    assert len(files) > 20
    bad = sorted(f"{p.relative_to(SRC)}: {name}" for p in files for name in _imports(p)
                 if name.split(".")[0] not in allowed)
    assert bad == []


def test_the_check_can_fail(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import redis\nfrom psycopg import sql\n")
    assert _imports(f) == {"redis", "psycopg"}


def test_system_paths_only_in_paths_module() -> None:
    pattern = re.compile(r"""["'](/etc/|/var/|/usr/|/run/)""")
    offenders = []
    for p in SRC.rglob("*.py"):
        if p.name == "paths.py":
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{p.relative_to(SRC)}:{i}: {line.strip()}")
    assert offenders == []
