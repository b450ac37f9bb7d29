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


#: the process modules the command-line programs may import: the daemon's
#: entry (parent), the children's entry (child) and what every process shares
#: (common); any other pure helper they need lives below proc/
CLI_MAY_IMPORT = {"parent", "child", "common"}


def _cli_process_imports(imports: list[tuple[str, list[str], int]]) -> list[tuple[str, int]]:
    """(process module, line) of each import of a process module not in CLI_MAY_IMPORT."""
    bad = []
    for mod, names, line in imports:
        targets = [mod]
        if mod == "mailrider.proc":
            targets = [f"mailrider.proc.{n}" for n in names]
        for target in targets:
            if target.startswith("mailrider.proc."):
                if target.split(".")[2] not in CLI_MAY_IMPORT:
                    bad.append((target, line))
            elif target == "mailrider.proc":
                bad.append((target, line))
    return bad


def test_cli_imports_only_the_process_entries() -> None:
    bad = []
    programs = [*sorted((SRC / "cli").glob("*.py")), SRC / "sendmail.py", SRC / "__main__.py"]
    for path in programs:
        rel = str(path.relative_to(SRC))
        for target, line in _cli_process_imports(_imports(path)):
            bad.append(f"{rel}:{line} imports {target}")
    assert bad == []


def test_the_cli_check_refuses_the_old_imports() -> None:
    # what cli/ imported before the helpers moved below proc/
    old = [
        ("mailrider.proc.control", ["format_queue_line", "invalid_id", "socket_path"], 14),
        ("mailrider.proc.pony_mta", ["check_relay_urls"], 23),
        ("mailrider.proc", ["control"], 30),
        ("mailrider.proc", ["common"], 19),
        ("mailrider.proc.parent", ["Parent"], 22),
    ]
    assert _cli_process_imports(old) == [
        ("mailrider.proc.control", 14),
        ("mailrider.proc.pony_mta", 23),
        ("mailrider.proc.control", 30),
    ]


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


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the modules of mailrider it imports (at the top, in a function
    or under TYPE_CHECKING alike). ``from package import submodule`` is an
    edge to the submodule; the package's ``__init__``, which Python runs
    first, is not counted (it may re-export its submodules without a cycle)."""
    mods = {_module_name(p): p for p in _modules()}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for mod, names, _ in _imports(path):
            targets = [f"{mod}.{n}" if f"{mod}.{n}" in mods else mod for n in names] or [mod]
            deps.update(t for t in targets if t in mods and t != name)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle() -> None:
    # a circle of imports (pony <-> pony_mta was one) means neither module can
    # be understood, tested or loaded without the other
    assert _cycles(_import_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    # the graph of the tree has the edges the check needs to see
    real = _import_graph()
    assert "mailrider.proc.pony_smtp" in real["mailrider.proc.pony"]
    assert "mailrider.proc.pony_filter" in real["mailrider.proc.pony_smtp"]


_PRIVATE_ATTRS = r"""
import ast, json, sys
from pathlib import Path
src = Path(sys.argv[1])
result = {}
for path in sorted(src.rglob("*.py")):
    here = ".".join(path.relative_to(src.parent).with_suffix("").parts)
    tree = ast.parse(path.read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mailrider.") and a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level)[0]
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if not (mod == "mailrider" or mod.startswith("mailrider.")):
                continue
            for a in node.names:
                rel = Path(*f"{mod}.{a.name}".split(".")[1:])
                if (src / rel).with_suffix(".py").exists() or (src / rel).is_dir():
                    aliases[a.asname or a.name] = f"{mod}.{a.name}"
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            out.append(f"{aliases[node.value.id]}.{node.attr}:{node.lineno}")
    if out:
        result[str(path.relative_to(src))] = out
print(json.dumps(result))
"""


def test_no_private_attributes_of_other_modules() -> None:
    # ``from mailrider.x import y`` then ``y._name``: the same leak as importing _name
    res = subprocess.run([sys.executable, "-c", _PRIVATE_ATTRS, str(SRC)], capture_output=True,
                         text=True, check=True, timeout=120)
    assert json.loads(res.stdout) == {}
