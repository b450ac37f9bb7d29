"""Log lines in OpenSMTPD's layout, and a detached daemon without /dev/log.

The layout expected here is OpenSMTPD 7.8's (smtp_session.c, mta.c, mda.c):
the session id first, then ``smtp connected address=... host=...``,
``smtp message msgid=... size=... nrcpt=... proto=...``, ``smtp envelope
evpid=... from=<...> to=<...>``, ``smtp disconnected reason=...``,
``mda delivery evpid=... from=<...> to=<...> ... result=... stat=...``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
from pathlib import Path

import pytest
from harness import Daemon, wait_for
from mailrider import paths

SID = r"[0-9a-f]{16}"


def _gone(pid: int) -> bool:
    """The process ended (a zombie left to an init that does not reap counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_session_lines_lead_with_the_session_id() -> None:
    with Daemon() as d:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as c:
            c.sendmail("alice@example.org", [f"{d.user}@localhost"], b"Subject: x\r\n\r\nhi\r\n")
            c.mail("alice@example.org")
            assert c.rcpt("someone@elsewhere.example")[0] >= 500  # no relaying here
        wait_for(lambda: re.search(r"mda delivery ", d.log()), 30)
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
            s.recv(100)  # the greeting; then hang up without QUIT
        wait_for(lambda: "reason=disconnect" in d.log(), 30)
        log = d.log()
    assert re.search(rf"{SID} smtp disconnected reason=disconnect$", log, re.M), log
    m = re.search(rf"({SID}) smtp message msgid=[0-9a-f]{{8}} size=\d+ nrcpt=1 proto=ESMTP$",
                  log, re.M)
    assert m, log
    sid = m.group(1)
    assert re.search(rf"{sid} smtp connected address=127\.0\.0\.1 host=\S+ port=\d+$", log,
                     re.M), log
    assert re.search(rf"{sid} smtp envelope evpid=[0-9a-f]{{16}} from=<alice@example\.org> "
                     rf"to=<{d.user}@localhost>", log), log
    assert re.search(rf"{sid} smtp disconnected reason=quit", log), log
    assert re.search(rf"{sid} smtp failed-command command=\"RCPT TO:<someone@elsewhere\.example>\" "
                     r"result=\"5\d\d ", log), log
    assert re.search(rf"{SID} mda delivery evpid=[0-9a-f]{{16}} from=<alice@example\.org> "
                     rf"to=<{d.user}@localhost> .*delay=\d+s result=Ok stat=", log), log


@pytest.mark.skipif(os.path.exists(paths.SYSLOG_SOCKET),
                    reason="this machine has a syslog socket: the fallback is not used")
def test_detached_daemon_without_syslog_logs_to_a_file() -> None:
    d = Daemon()
    argv = [a for a in d.argv() if a != "-d"]
    pid = 0
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=d.env)
        assert res.returncode == 0, res.stderr
        logfile = Path(paths.fallback_log(str(d.state)))
        assert f"no syslog socket at {paths.SYSLOG_SOCKET}: logging to {logfile}" in res.stderr
        found = wait_for(lambda: logfile.exists() and re.search(
            r"parent started pid=(\d+)", logfile.read_text()), 30)
        assert isinstance(found, re.Match)
        pid = int(found.group(1))
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as c:
            c.noop()
        # the children's lines reach the file too
        wait_for(lambda: re.search(rf"pony\[\d+\]: {SID} smtp connected ", logfile.read_text()),
                 30)
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: _gone(pid), 30)
        shutil.rmtree(d.state, ignore_errors=True)
