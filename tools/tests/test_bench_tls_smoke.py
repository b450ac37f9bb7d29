"""tools/bench/tls_daemon.py runs two real daemons and prints both figures.

A tiny run (RSA, TLS 1.3, 2 clients, 1 s): both rates are printed and
positive, klondike signed for the delegated daemon only, and the forced
in-process daemon logged the key-in-process warning.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "bench" / "tls_daemon.py"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_tls_daemon_smoke() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "1", "--rounds", "2", "--clients", "2",
         "--kinds", "rsa", "--versions", "1.3"],
        capture_output=True, text=True, timeout=60,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "key-in-process warning logged: delegated=False in-process=True" in out, out
    row = next(line.split() for line in out.splitlines() if line.startswith("rsa  1.3"))
    in_process, delegated, ratio = float(row[2]), float(row[3]), float(row[4])
    sign_delegated, sign_in_process = int(row[5]), int(row[6])
    assert in_process > 0 and delegated > 0 and ratio > 0, out
    assert sign_delegated > 0, out
    assert sign_in_process == 0, out
    assert "klondike.sign total: delegated=" in out and " in-process=0" in out, out
    assert "worst ratio delegated/in-process:" in out
