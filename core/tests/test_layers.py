"""The layering of the source tree, checked on its imports (every import,
those inside functions too).

- Protocol machines, codecs and data layers sit below the processes: they
  never import ``mailrider.proc`` or ``mailrider.cli``.
- A process module imports the modules every process shares and its own
  family (``pony`` and ``pony_*``, ...), never another process's.
- No module imports another module's private names.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import mailrider

SRC = Path(mailrider.__file__).resolve().parent

#: process modules every process may use
SHARED = {"common", "child", "confine", "workers"}
#: process families: a module of one imports no module of another
FAMILIES = ("pony", "lka", "parent", "queue", "scheduler", "control", "klondike")


_SCAN = r"""
import ast, json, sys
from pathlib import Path
src = Path(sys.argv[1])
result = {}
for path in sorted(src.rglob("*.py")):
    here = ".".join(path.relative_to(src.parent).with_suffix("").parts)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level)[0]
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names], node.lineno))
    result[str(path)] = [x for x in out if x[0] == "mailrider" or x[0].startswith("mailrider.")]
print(json.dumps(result))
"""


@functools.cache
def _scan() -> dict[str, list[tuple[str, list[str], int]]]:
    # in a fresh interpreter: CPython 3.11.2's ast can fail with "AST constructor
    # recursion depth mismatch" after an earlier test provoked a RecursionError
    res = subprocess.run([sys.executable, "-c", _SCAN, str(SRC)], capture_output=True,
                         text=True, check=True, timeout=120)
    return {k: [(m, n, line) for m, n, line in v] for k, v in json.loads(res.stdout).items()}


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every import of a mailrider module in ``path``."""
    return _scan()[str(path)]


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _family(name: str) -> str | None:
    for fam in FAMILIES:
        if name == fam or name.startswith(fam + "_"):
            return fam
    return None


def test_lower_layers_never_import_processes() -> None:
    bad = []
    for path in _modules():
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("proc", "cli") or rel.name == "__main__.py":
            continue
        for mod, _, line in _imports(path):
            if mod.startswith(("mailrider.proc", "mailrider.cli")):
                bad.append(f"{rel}:{line} imports {mod}")
    assert bad == []


def test_processes_import_no_other_process() -> None:
    bad = []
    for path in sorted((SRC / "proc").glob("*.py")):
        mine = _family(path.stem)
        for mod, names, line in _imports(path):
            targets = [mod]
            if mod == "mailrider.proc":
                targets = [f"mailrider.proc.{n}" for n in names]
            for target in targets:
                if not target.startswith("mailrider.proc."):
                    continue
                other = target.split(".")[2]
                if other in SHARED or _family(other) in (None, mine):
                    continue
                bad.append(f"proc/{path.name}:{line} imports {target}")
    assert bad == []


def test_no_private_names_across_modules() -> None:
    bad = []
    for path in _modules():
        for mod, names, line in _imports(path):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(SRC)}:{line} imports {mod}.{n}")
    assert bad == []


def test_the_checks_see_imports_inside_functions(tmp_path: Path) -> None:
    # the scan is not vacuous: it sees a lazy import and a relative one
    probe = SRC / "proc" / "pony.py"
    found = {m for m, _, _ in _imports(probe)}
    assert "mailrider.proc.pony_tls" in found or "mailrider.proc" in found
    assert len(_modules()) > 50
