"""Test files of every suite share one pytest run (tools/test): two files of
the same name in folders without __init__.py collide at collection, which
stops the whole run. Keep every basename unique."""

from __future__ import annotations

import collections
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_test_file_names_are_unique() -> None:
    folders = [ROOT / "core" / "tests", ROOT / "tools" / "tests",
               *sorted((ROOT / "extras").glob("*/tests"))]
    seen: dict[str, list[str]] = collections.defaultdict(list)
    for folder in folders:
        for path in folder.rglob("test_*.py"):
            if (path.parent / "__init__.py").exists():
                continue  # a package: its module name carries the folder
            seen[path.name].append(str(path.relative_to(ROOT)))
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}
