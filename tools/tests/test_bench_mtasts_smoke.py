"""tools/bench/mtasts_fetch.py fetches and looks up policies and prints both figures."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "bench" / "mtasts_fetch.py"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_mtasts_bench_smoke() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--fetches", "3", "--lookups", "20"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    fetch = re.search(r"^fetch +\(3\): median ([\d.]+) ms", done.stdout, re.M)
    cached = re.search(r"^cached \(20\): median ([\d.]+) ms", done.stdout, re.M)
    assert fetch and cached, done.stdout
    assert float(fetch.group(1)) > float(cached.group(1)) > 0, done.stdout
