"""The lint and type checks run with the test suite (tools/test installs both tools)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    exe = pathlib.Path(sys.executable).parent / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def test_ruff() -> None:
    res = subprocess.run([_tool("ruff"), "check", "--no-cache", "core", "extras", "tools",
                          "noxfile.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-2000:]


def test_mypy_strict_core() -> None:
    env = dict(os.environ, MYPYPATH=str(ROOT / "core" / "src"))
    res = subprocess.run([_tool("mypy"), "--strict", "--no-incremental", "--cache-dir",
                          os.devnull, str(ROOT / "core" / "src" / "mailrider")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-2000:]
