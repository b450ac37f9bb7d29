"""Every shipped example configuration passes ``mailriderd -n``."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.conf"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_checks_ok(path: pathlib.Path) -> None:
    res = subprocess.run([sys.executable, "-m", "mailrider.cli.mailriderd", "-n", "-f", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout.strip()) == (0, "configuration OK"), res.stderr


def test_bad_config_names_file_and_line(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("listen on 127.0.0.1 port 2525\n\nmatch from any for any action nowhere\n")
    res = subprocess.run([sys.executable, "-m", "mailrider.cli.mailriderd", "-n", "-f", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith(f"{bad}:3: "), res.stderr
