"""Torture: a full and then read-only spool (a small tmpfs, root only)."""

from __future__ import annotations

import pytest
import torture_util as tu
from harness import Daemon

DISK_CONFIG = """listen on 127.0.0.1 port {port}
table all {{ "@" = "{user}" }}
action "local" maildir "{mail}/%{{rcpt.user}}" virtual <all>
match from any for local action "local"
"""


@pytest.mark.skipif(not tu.can_mount(), reason="needs root to mount a tmpfs")
def test_full_and_read_only_spool() -> None:
    d = Daemon(DISK_CONFIG)
    spool = d.state / "spool"
    spool.mkdir(mode=0o700)
    tu.mount_tmpfs(spool, "8m")
    try:
        d.start()
        t = tu.check_disk_faults(d, spool, d.mail)
        print(t.numbers)
        assert t.failures == 0, t.notes
        assert t.numbers["acked"] == t.numbers["delivered"] == 5
    finally:
        d.stop()
        tu.umount(spool)
        d.cleanup()
