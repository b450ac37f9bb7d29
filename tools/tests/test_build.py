"""The nox ``build`` session's checks, run with the test suite: sdist and wheel of
every distribution build, their metadata renders, and tools/check_dists.py passes."""

from __future__ import annotations

import importlib.util
import pathlib
import re
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


def _check_dists() -> object:
    spec = importlib.util.spec_from_file_location("check_dists", ROOT / "tools" / "check_dists.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GOOD_METADATA = """\
Metadata-Version: 2.4
Name: mailrider
Version: 0.1.0
License-Expression: ISC
License-File: LICENSE
Classifier: Programming Language :: Python :: 3 :: Only
Classifier: Programming Language :: Python :: 3.11
Classifier: Topic :: Communications :: Email :: Mail Transport Agents
Classifier: Typing :: Typed
Project-URL: Homepage, https://example.org/
Project-URL: Documentation, https://example.org/docs/
Project-URL: Source, https://example.org/src/
Project-URL: Changelog, https://example.org/src/CHANGELOG.md

# mailrider

A description long enough to stand alone on an index page, with an absolute
[link](https://example.org/) and an [anchor](#mailrider); it says what the
distribution is, how to install it and where its documentation lives.
"""


def _wheel(tmp_path: pathlib.Path, metadata: str, *, license_file: bool = True,
           typed: bool = True) -> pathlib.Path:
    import zipfile

    path = tmp_path / "mailrider-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mailrider-0.1.0.dist-info/METADATA", metadata)
        if license_file:
            z.writestr("mailrider-0.1.0.dist-info/licenses/LICENSE", "ISC")
        if typed:
            z.writestr("mailrider/py.typed", "")
    return path


def _problems(tmp_path: pathlib.Path, metadata: str, **kwargs: bool) -> list[str]:
    import email.parser

    checker = _check_dists()
    wheel = _wheel(tmp_path, metadata, **kwargs)
    meta = email.parser.Parser().parsestr(metadata)
    return list(checker.metadata_problems(wheel, meta))  # type: ignore[attr-defined]


def test_metadata_check_accepts_complete_metadata(tmp_path: pathlib.Path) -> None:
    assert _problems(tmp_path, GOOD_METADATA) == []


@pytest.mark.parametrize(("change", "problem"), [
    (("License-Expression: ISC\n", "License: ISC\n"), "License-Expression is None"),
    (("License-File: LICENSE\n", ""), "License-File lacks LICENSE"),
    (("Classifier: Typing :: Typed\n", ""), "classifier missing: Typing :: Typed"),
    (("Classifier: Topic :: Communications :: Email :: Mail Transport Agents\n", ""),
     "classifier missing: Topic :: Communications :: Email :: Mail Transport Agents"),
    (("Classifier: Programming Language :: Python :: 3.11\n", ""),
     "no Programming Language :: Python :: 3.X classifier"),
    (("Classifier: Typing :: Typed\n",
      "Classifier: Typing :: Typed\nClassifier: License :: OSI Approved :: ISC License (ISCL)\n"),
     "a License :: classifier beside the SPDX expression"),
    (("Project-URL: Source, https://example.org/src/\n", ""), "Project-URL missing: Source"),
    (("[link](https://example.org/)", "[link](../../core)"), "links to a relative path"),
])
def test_metadata_check_finds_each_gap(tmp_path: pathlib.Path, change: tuple[str, str],
                                       problem: str) -> None:
    old, new = change
    assert old in GOOD_METADATA
    found = _problems(tmp_path, GOOD_METADATA.replace(old, new))
    assert any(problem in p for p in found), found


def test_metadata_check_looks_into_the_wheel(tmp_path: pathlib.Path) -> None:
    assert _problems(tmp_path, GOOD_METADATA, license_file=False) == [
        "no .dist-info/licenses/LICENSE in the wheel"]
    assert _problems(tmp_path, GOOD_METADATA, typed=False) == [
        "Typing :: Typed without a py.typed file"]


def test_metadata_check_wants_a_description(tmp_path: pathlib.Path) -> None:
    short = GOOD_METADATA.split("\n\n")[0] + "\n\nSee the top-level README.\n"
    assert _problems(tmp_path, short) == ["no description (README) to show on the index"]


def test_dev_tools_are_pinned() -> None:
    lines = [line for line in (ROOT / "tools" / "dev-requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    names = {line.split("==")[0] for line in lines}
    assert {"pytest", "hypothesis", "ruff", "mypy", "build", "twine"} <= names
    for line in lines:
        assert re.fullmatch(r"[a-z0-9-]+==\d+(\.\d+)+", line), line
    assert "tools/dev-requirements.txt" in (ROOT / "tools" / "test").read_text()
    assert "dev-requirements.txt" in (ROOT / "noxfile.py").read_text()
