"""The conformance checker passes a good backend and fails broken ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / "tools" / "conformance" / "check_table.py"
VECTORS = ROOT / "tools" / "conformance" / "example.vectors"
MAP = ROOT / "tools" / "conformance" / "example.map"
sys.path.insert(0, str(ROOT / "core" / "tests" / "table" / "backends"))

import backendkit  # noqa: E402


def check(*args: str) -> tuple[int, list[str]]:
    done = subprocess.run(
        [sys.executable, str(CHECKER), "--timeout", "2", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout.splitlines()


@pytest.fixture
def programs(tmp_path: Path) -> Path:
    for backend, script in (("example", "example.py"), ("rogue", "rogue.py")):
        backendkit.install(str(tmp_path), backend, script)
    return tmp_path


def test_example_backend_passes(programs: Path) -> None:
    status, lines = check(
        "--vectors",
        str(VECTORS),
        "--config",
        str(MAP),
        "--name",
        "vusers",
        "--",
        str(programs / "table-example"),
    )
    assert status == 0, lines
    assert all(line.startswith("PASS ") for line in lines)
    names = {line[5:] for line in lines}
    assert {
        "handshake",
        "pipelining",
        "unregistered-service",
        "update",
        "fetch",
        "key-with-pipe",
        "alive-after-batch",
        "exit-on-eof",
        "vector 9: lookup alias a|b",
    } <= names
    vectors = [
        line for line in VECTORS.read_text().splitlines() if line and not line.startswith("#")
    ]
    assert sum(name.startswith("vector ") for name in names) == len(vectors)


def test_raw_backend_passes_builtin_checks(programs: Path) -> None:
    status, lines = check("--", str(programs / "table-rogue"))
    assert status == 0, lines
    assert "PASS unregistered-service" in lines


def test_wrong_values_fail(programs: Path) -> None:
    # the raw backend answers v:<key>, not what the vectors expect
    status, lines = check("--vectors", str(VECTORS), "--", str(programs / "table-rogue"))
    assert status == 1
    assert (
        "FAIL vector 4: lookup alias root: expected value 'admin@example.org', "
        "got 'v:root'" in lines
    )
    assert "PASS pipelining" in lines


def test_sloppy_backend_fails(programs: Path) -> None:
    status, lines = check("--config", "sloppy", "--", str(programs / "table-rogue"))
    assert status == 1
    failed = {line.split(":")[0] for line in lines if line.startswith("FAIL ")}
    assert {
        "FAIL update",
        "FAIL fetch",
        "FAIL check",
        "FAIL key-with-pipe",
        "FAIL unregistered-service",
        "FAIL pipelining",
    } <= failed
    assert "PASS handshake" in lines


@pytest.mark.parametrize("mode", ["hs-none", "hs-unknown", "hs-garbage", "hs-eof"])
def test_bad_handshake_fails(programs: Path, mode: str) -> None:
    status, lines = check("--config", mode, "--", str(programs / "table-rogue"))
    assert status == 1
    assert lines[0].startswith("FAIL handshake: ")


def test_bad_vector_file(tmp_path: Path, programs: Path) -> None:
    bad = tmp_path / "bad.vectors"
    bad.write_text("lookup alias root => found\n")
    status, lines = check("--vectors", str(bad), "--", str(programs / "table-rogue"))
    assert status == 2
    assert lines == []
