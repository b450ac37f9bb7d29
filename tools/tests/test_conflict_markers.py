"""No file of the repository keeps a merge's conflict markers.

A marker line left in a Markdown table or a CHANGELOG breaks nothing that
runs, so no other test notices it; this one reads every tracked text file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
MARKER = re.compile(rb"^(<{7} |>{7} |={7}$)", re.MULTILINE)


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "-C", str(TOP), "ls-files", "-z"], capture_output=True,
                         check=True).stdout
    return [TOP / name.decode() for name in out.split(b"\0") if name]


def markers(data: bytes) -> list[int]:
    """Line numbers (from 1) of conflict-marker lines in ``data``."""
    return [data.count(b"\n", 0, m.start()) + 1 for m in MARKER.finditer(data)]


def test_the_marker_pattern_finds_a_conflict() -> None:
    text = b"a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> branch\nd\n"
    assert markers(text) == [2, 4, 6]
    assert markers(b"a ======= b\n==== heading\n") == []


def test_no_tracked_file_has_conflict_markers() -> None:
    found = []
    for path in tracked_files():
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        found += [f"{path.relative_to(TOP)}:{n}" for n in markers(data)]
    assert found == []
