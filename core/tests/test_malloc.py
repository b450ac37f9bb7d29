"""malloc.py: big read buffers come from the heap (glibc), a no-op elsewhere."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
from mailrider import malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_tune_takes_on_glibc() -> None:
    # in a child: the thresholds are the process's for good
    code = ("from mailrider import malloc; import sys\n"
            "ok = malloc.tune()\n"
            "b = [bytes(300 * 1024) for _ in range(50)]\n"
            "sys.exit(0 if ok else 1)\n")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_thresholds_cover_a_read() -> None:
    # asyncio's selector transport reads up to 256 KiB at a time
    assert malloc.MMAP_THRESHOLD >= 256 * 1024
    assert malloc.TRIM_THRESHOLD >= malloc.MMAP_THRESHOLD
