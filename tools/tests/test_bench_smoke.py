"""tools/bench/smtp_accept.py runs against a real daemon and prints its figures.

A very short run (Postfix peer skipped): 2 sessions, a few messages of 1 KB,
with the built-in client so it needs nothing but the core.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "bench" / "smtp_accept.py"


def test_smtp_accept_smoke() -> None:
    env = dict(os.environ)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--sessions", "2", "--messages", "10", "--sizes", "1k",
         "--no-postfix", "--client", "builtin", "--timeout", "30"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "load tool: built-in asyncio client" in out
    assert "== 1K messages ==" in out
    lines = {line.split("  ")[0].strip(): line.split() for line in out.splitlines()}
    accepted = lines["accepted, fsynced (delivery held)"]
    assert float(accepted[-3].replace(",", "")) > 0  # mailrider msg/s
    assert "queue.commit.messages=10" in out
    e2e = lines["end to end to Maildir"]
    assert e2e[-3] != "-", out


def test_session_memory_smoke() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench" / "session_memory.py"), "--sessions", "3",
         "--settle", "0.5"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "children started by: fork" in out
    totals = [float(x) for x in re.findall(r"(\d+\.\d) MB PSS", out)]
    assert len(totals) == 3 and all(t > 10 for t in totals), out
    assert "pony per session:" in out
