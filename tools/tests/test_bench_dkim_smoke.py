"""tools/bench/dkim_sign.py runs three real daemons and a klondike and prints its figures.

A very short run: 2 sessions, 10 messages per variant, 10 for the signing
step; the script itself checks that every message of a signed variant was
signed (``mta dkim-signed`` in the daemon's log) and none of the unsigned one.
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
SCRIPT = ROOT / "tools" / "bench" / "dkim_sign.py"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_dkim_sign_smoke() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--sessions", "2", "--messages", "10",
         "--step-messages", "10", "--timeout", "60"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for alg in ("rsa-sha256", "ed25519-sha256"):
        assert re.search(rf"^  {alg} +[0-9]+ msg/s +[0-9.]+ ms/msg$", out, re.M), out
        assert re.search(rf"round 1  {alg} +[0-9.]+ msg/s  \(10 signed\)", out), out
    assert re.search(r"round 1  unsigned +[0-9.]+ msg/s  \(0 signed\)", out), out
    assert re.search(r"^  rsa-sha256 +[0-9.]+ msg/s +[0-9.]+ x unsigned$", out, re.M), out
