"""Torture: the open-relay battery against the built-in configuration and
every example configuration (made runnable on loopback)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torture_util as tu
from harness import Daemon

EXAMPLES = sorted((tu.ROOT / "core" / "examples").glob("*.conf"))
#: the domain each configuration serves
OURS = {"lmtp-dovecot.conf": "example.org", "virtual-domains.conf": "example.org"}


@pytest.mark.parametrize("conf", [None, *EXAMPLES], ids=lambda p: p.name if p else "built-in")
def test_no_open_relay(conf: Path | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mailrider-relay-"))
    tmp.chmod(0o755)
    try:
        d = Daemon(tu.example_config(conf, tmp) if conf else None)
        tu.fix_users(tmp, d.user)
        with d:
            ours = OURS.get(conf.name, "localhost") if conf else "localhost"
            t = tu.check_relay(d, ours, conf.name if conf else "built-in")
        assert t.attempts >= len(tu.RELAY_PROBES)
        assert t.failures == 0, t.notes
        assert t.numbers["relayed"] == 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
