"""A process imports what its role uses (docs/performance.md, "Memory").

Structural, not timed: for each role, a fresh interpreter runs the child's
preload for that role (``mailrider.proc.child.preload``, what a child does
before it is confined) and reports ``sys.modules``. Two checks:

- nothing is missing: every import statement the role's code can reach
  (inside functions too, following mailrider modules from
  ``mailrider.proc.child`` and ``mailrider.proc.<role>``) names a module that
  is already loaded, so no lazy import runs after the chroot, where it would
  fail;
- nothing is loaded that the role must not use (the forbidden lists below).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

#: the children, and mailriderd itself (which forks deliveries as other users)
ROLES = ("control", "lka", "queue", "scheduler", "pony", "klondike", "parent")

#: imported by the child before any preload (child.run_profiled, as root;
#: tomllib when mailrider.paths, at its import, reads a port's paths.toml)
BEFORE_PRELOAD = {"cProfile", "marshal", "tomllib"}
#: reached only through mailriderd's own command line (common.parse_options),
#: which a child never parses (common.child_options)
MAILRIDERD_ONLY = {"argparse"}

#: modules a role must not load: memory (issue 15), and less code within reach
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "control": ("mailrider.smtp.server", "mailrider.table.db", "mailrider.queue.spool",
                "mailrider.crypto.keys", "mailrider.dns.resolver", "mailrider.delivery.maildir",
                "email.parser", "sqlite3"),
    "lka": ("mailrider.smtp.server", "mailrider.smtp.client", "mailrider.queue.spool",
            "mailrider.proc.pony", "mailrider.crypto.keys", "email.parser"),
    "queue": ("mailrider.smtp.server", "mailrider.smtp.client", "mailrider.table.db",
              "mailrider.dns.resolver", "mailrider.crypto.keys", "mailrider.delivery.maildir",
              "sqlite3"),
    "scheduler": ("mailrider.smtp.server", "mailrider.table.db", "mailrider.queue.spool",
                  "mailrider.crypto.keys", "mailrider.dns.resolver",
                  "mailrider.delivery.maildir", "email.parser", "sqlite3"),
    "pony": ("mailrider.table.db", "mailrider.queue.spool", "mailrider.dns.resolver",
             "mailrider.crypto.keys", "mailrider.delivery.maildir", "mailrider.proc.lka",
             "sqlite3"),
    "parent": ("mailrider.proc.lka", "mailrider.proc.queue", "mailrider.queue.spool",
               "mailrider.dns.resolver", "mailrider.filter.host", "mailrider.proc.pony",
               "mailrider.proc.control", "mailrider.smtp.server"),
    "klondike": ("mailrider.smtp.server", "mailrider.table.db", "mailrider.queue.spool",
                 "mailrider.dns.resolver", "mailrider.delivery.maildir", "email.parser",
                 "sqlite3"),
}

_PROBE = r"""
import ast, importlib.util, json, sys
from pathlib import Path

role = sys.argv[1]
if role.startswith("fork:"):  # a child the start-up server forked: its imports first
    from mailrider.proc import forkserver
    forkserver.preload_shared()
    role = role[5:]
if role == "mda_worker":  # switches user right after its own imports
    import mailrider.proc.mda_worker
else:
    from mailrider.proc import child
    child.preload(role)
loaded = set(sys.modules)

import mailrider
src = Path(mailrider.__file__).resolve().parent

#: imports made with importlib, invisible to the scan
DYNAMIC = {"mailrider.proc.child": [f"mailrider.proc.{role}"],
           "mailrider.table.registry": ["mailrider.table.proc"]}


def source(mod):
    rel = Path(*mod.split(".")[1:])
    for p in (src / rel.with_suffix(".py"), src / rel / "__init__.py"):
        if p.is_file():
            return p
    return None


def is_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def skip_type_checking(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    return tree


def imports(mod):
    path = source(mod)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = list(DYNAMIC.get(mod, []))
    for node in ast.walk(skip_type_checking(ast.parse(path.read_text()))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            out.append(base)
            out += [f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")]
    return out


start = {"parent": "mailrider.cli.mailriderd",
         "mda_worker": "mailrider.proc.mda_worker"}.get(role, "mailrider.proc.child")
seen, todo, reached = set(), [start], set()
while todo:
    mod = todo.pop()
    if mod in seen:
        continue
    seen.add(mod)
    for name in imports(mod):
        reached.add(name)
        if name.startswith("mailrider.") and source(name) is not None:
            todo.append(name)
print(json.dumps({"loaded": sorted(loaded), "reached": sorted(reached)}))
"""


for _role in ROLES:
    if _role != "parent":  # a child reads the options mailriderd wrote, without argparse
        FORBIDDEN[_role] += ("argparse",)


@functools.cache
def _probe(role: str) -> tuple[frozenset[str], frozenset[str]]:
    res = subprocess.run([sys.executable, "-c", _PROBE, role], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    return frozenset(out["loaded"]), frozenset(out["reached"])


@pytest.mark.parametrize("role", ROLES)
def test_every_reachable_import_is_preloaded(role: str) -> None:
    loaded, reached = _probe(role)
    assert f"mailrider.proc.{role}" in reached
    exempt = BEFORE_PRELOAD | (MAILRIDERD_ONLY if role != "parent" else set())
    missing = sorted(name for name in reached - exempt if name not in loaded)
    assert missing == []


@pytest.mark.parametrize("role", [r for r in ROLES if r != "parent"])
def test_a_forked_child_preloads_as_a_fresh_one(role: str) -> None:
    # forked by the start-up server (proc/forkserver.py), a child holds what
    # the server imported, then imports its role's modules before it is
    # confined: every import reachable is loaded, and nothing forbidden
    loaded, reached = _probe(f"fork:{role}")
    fresh, _ = _probe(role)
    assert sorted(name for name in reached - BEFORE_PRELOAD - MAILRIDERD_ONLY
                  if name not in loaded) == []
    assert sorted(set(FORBIDDEN[role]) & loaded) == []
    # the server adds nothing the role would not have loaded itself (its own
    # code runs as __main__ there, imported by name only in this probe)
    assert sorted(loaded - fresh - {"mailrider.proc.forkserver"}) == []


def test_the_delivery_worker_loads_everything_before_it_switches_user() -> None:
    # proc/mda_worker.py imports at start, as root, then takes the user's
    # credentials: no import may follow; and it is small (no asyncio)
    loaded, reached = _probe("mda_worker")
    assert sorted(name for name in reached - BEFORE_PRELOAD if name not in loaded) == []
    assert sorted({"asyncio", "mailrider.proc.child", "mailrider.config.parser",
                   "mailrider.ipc.channel", "ssl"} & loaded) == []


@pytest.mark.parametrize("role", ROLES)
def test_a_role_leaves_out_what_it_does_not_use(role: str) -> None:
    loaded, _ = _probe(role)
    assert sorted(set(FORBIDDEN[role]) & loaded) == []


def test_the_full_preload_loads_everything() -> None:
    # what the forbidden lists name exists: preload("all") loads it
    res = subprocess.run(
        [sys.executable, "-c", "import sys; from mailrider.proc import child; "
         "child.preload(); print(' '.join(sys.modules))"],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = set(res.stdout.split())
    for forbidden in FORBIDDEN.values():
        assert set(forbidden) - MAILRIDERD_ONLY <= loaded


def test_a_child_reads_back_the_options_mailriderd_writes() -> None:
    from mailrider.proc import common

    opts = common.Options(config_file="/etc/x.conf", macros={"port": "25", "a": "b=c"},
                          statedir="/var/mailrider", foreground=True, verbose=2,
                          paused=["mda", "smtp"])
    assert common.child_options(opts.argv()) == opts
    assert common.child_options(["-S", "/s"]) == common.Options(statedir="/s")
    for bad in (["-S"], ["-f", "x"], ["-S", "/s", "-D", "novalue"], ["-S", "/s", "-x"],
                ["-S", "/s", "-P", "lka"]):
        with pytest.raises(ValueError):
            common.child_options(bad)
