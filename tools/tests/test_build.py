"""The nox ``build`` session's checks, run with the test suite: sdist and wheel of
every distribution build, their metadata renders, and tools/check_dists.py passes."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DISTS = [ROOT / "core", *sorted(p.parent for p in ROOT.glob("extras/*/pyproject.toml"))]


@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="build not installed")
def test_every_distribution_builds_and_checks(tmp_path: pathlib.Path) -> None:
    for dist in DISTS:
        res = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel",
                              "--outdir", str(tmp_path), str(dist)],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{dist.name}: {res.stdout[-2000:]}{res.stderr[-2000:]}"
    built = sorted(p.name for p in tmp_path.iterdir())
    assert len(built) == 2 * len(DISTS), built
    if importlib.util.find_spec("twine") is not None:
        res = subprocess.run([sys.executable, "-m", "twine", "check", "--strict",
                              *[str(p) for p in sorted(tmp_path.iterdir())]],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-3000:]
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "check_dists.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout
    assert "distributions OK" in res.stdout


def test_check_dists_can_fail(tmp_path: pathlib.Path) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "check_dists.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "FAIL" in res.stdout
