"""Every shipped example configuration passes ``mailriderd -n``."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.conf"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_checks_ok(path: pathlib.Path) -> None:
    # -n reads file tables as the start does (under root, as the daemon's
    # user): the example's /etc/mail files are made, empty, in a folder of
    # their own that user can reach
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="mailrider-example-", dir="/tmp"))
    try:
        _check_example(path, tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _check_example(path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    text = path.read_text()
    for name in set(re.findall(r"file:/etc/mail/([\w.-]+)", text)):
        (tmp_path / name).write_text("")
    conf = tmp_path / path.name
    conf.write_text(text.replace("file:/etc/mail/", f"file:{tmp_path}/"))
    tmp_path.chmod(0o755)
    for f in tmp_path.iterdir():
        f.chmod(0o644)
    res = subprocess.run([sys.executable, "-m", "mailrider.cli.mailriderd", "-n", "-f", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout.strip()) == (0, "configuration OK"), res.stderr


def test_bad_config_names_file_and_line(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("listen on 127.0.0.1 port 2525\n\nmatch from any for any action nowhere\n")
    res = subprocess.run([sys.executable, "-m", "mailrider.cli.mailriderd", "-n", "-f", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith(f"{bad}:3: "), res.stderr
