"""tools/bench/dane.py measures the TLSA lookup (through a real IPC channel
and a loopback DNS server) and the DANE checks, and prints its figures.

A very short run; the script itself asserts that every lookup was
authenticated and every check passed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "bench" / "dane.py"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_dane_bench_smoke() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--lookups", "5", "--checks", "5"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for label in (r"TLSA lookup pony->lka->DNS, uncached", r"TLSA lookup pony->lka, lka cache hit",
                  r"verify 3 1 1 \(DANE-EE\), chain extraction included",
                  r"verify 2 1 1 \(DANE-TA\), chain extraction included",
                  r"for scale: in-memory TLS handshake"):
        assert re.search(rf"^{label} +[0-9.]+ us  \([0-9]+ runs\)$", out, re.M), out
