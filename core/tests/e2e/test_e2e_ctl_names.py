"""mailriderctl under its other names (sendmail, mailq, newaliases), as ports
install it, and newaliases rebuilding a db: aliases table."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from harness import Daemon, wait_for

CTL = shutil.which("mailriderctl", path=os.path.dirname(sys.executable))


@pytest.mark.skipif(CTL is None, reason="mailriderctl is not installed next to the interpreter")
def test_invoked_as_sendmail_and_mailq() -> None:
    assert CTL is not None
    links = Path(tempfile.mkdtemp(prefix="mailrider-names-"))
    try:
        for name in ("sendmail", "mailq"):
            (links / name).symlink_to(CTL)
        with Daemon() as d:
            d.ctl("pause", "mda")
            # sendmail takes no -S: the state folder comes from the environment
            env = {**d.env, "MAILRIDER_STATEDIR": str(d.state)}
            res = subprocess.run([str(links / "sendmail"), "-i", "named@localhost"],
                                 input=b"Subject: by name\n\nhello\n", capture_output=True,
                                 timeout=60, env=env)
            assert res.returncode == 0, res.stderr
            q = subprocess.run([str(links / "mailq")], capture_output=True, text=True,
                               timeout=60, env=env)
            assert "|named@localhost|" in q.stdout
            d.ctl("resume", "mda")
            wait_for(lambda: (d.state / "maildir" / "named" / "new").is_dir())
    finally:
        shutil.rmtree(links, ignore_errors=True)


def test_newaliases_rebuilds_a_db_aliases_table() -> None:
    d = Daemon(config="")
    try:
        src = d.state / "aliases"
        src.write_text(f"team: {d.user}\n")
        os.chmod(src, 0o644)
        from mailrider.table.makemap import makemap

        makemap(str(src), str(src) + ".db", "aliases")
        os.chmod(str(src) + ".db", 0o644)
        assert d.config_path is not None
        d.config_path.write_text(
            f"table aliases db:{src}.db\nlisten on 127.0.0.1 port {d.port}\n"
            f'action "local" maildir "{d.mail}/%{{user.username}}" alias <aliases>\n'
            'match from any for local action "local"\n')
        d.start()
        src.write_text(f"team: {d.user}\nstaff: {d.user}\n")
        res = d.ctl("newaliases", "-f", str(d.config_path))
        assert "2 aliases" in res.stderr
        import smtplib

        with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as c:
            assert c.sendmail("a@b.example", ["staff@localhost"], b"Subject: s\r\n\r\nx\r\n") == {}
    finally:
        d.cleanup()
