"""Every console script of every distribution answers --version and --help, and refuses
unknown options, without waiting on its standard input."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest
from mailrider import __version__

ROOT = pathlib.Path(__file__).resolve().parents[2]
DISTS = [ROOT / "core", *sorted(p.parent for p in ROOT.glob("extras/*/pyproject.toml"))]
SCRIPTS = sorted(
    name
    for d in DISTS
    for name in tomllib.loads((d / "pyproject.toml").read_text())["project"].get("scripts", {})
)


def _program(name: str) -> str:
    path = pathlib.Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def _run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    # stdin is a pipe left open: a program that read it would hang until the timeout
    with subprocess.Popen([_program(name), *args], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{name} {' '.join(args)} waited on its input")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_scripts_found() -> None:
    assert {"mailriderd", "mailriderctl", "mailrider-table-redis"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_version(name: str) -> None:
    res = _run(name, "--version")
    assert (res.returncode, res.stdout) == (0, f"{name} {__version__}\n"), res.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name: str) -> None:
    res = _run(name, "--help")
    assert res.returncode == 0, res.stderr
    assert "usage" in res.stdout.lower()


@pytest.mark.parametrize("name", SCRIPTS)
def test_unknown_option(name: str) -> None:
    res = _run(name, "--no-such-option")
    assert res.returncode == 2
    assert "--no-such-option" in res.stderr
