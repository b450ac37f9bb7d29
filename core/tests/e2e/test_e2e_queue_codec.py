"""End to end: ``queue compression`` and ``queue encryption`` (docs/queue.md §8).

A message waits in the queue (its relay host is down): no spool file holds
its body or its recipient in clear; ``show message`` and a local delivery
read it decoded; after ``kill -9`` of the whole daemon and a restart the
message is still there and is delivered once the host is up.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_util import smtp_send
from harness import Daemon, free_port, wait_for
from mailrider.crypto import libcrypto
from smtp_peer import SmtpPeer

pytestmark = pytest.mark.skipif(not libcrypto.available(),
                                reason=libcrypto.unavailable_reason())

KEY = "6f1d0c2a9b8e7f3041526374a5b6c7d8"
MARKER = b"MARKER-c0dec-41f2"

CONFIG = """\
queue compression
queue encryption KEYSPEC
listen on 127.0.0.1 port {port}
table all {{ "@" = "{user}" }}
action "local" maildir "{mail}/%{{rcpt.user}}" virtual <all>
action "out" relay host smtp://127.0.0.1:RELAYPORT
match from any for domain "remote.test" action "out"
match from any for local action "local"
"""


def message(to: str) -> bytes:
    return (f"From: <a@example.org>\r\nTo: <{to}>\r\nSubject: codec\r\n\r\n".encode()
            + MARKER + b" in the body\r\n" + b"filler line to compress\r\n" * 200)


def spool_bytes(d: Daemon) -> bytes:
    return b"".join(p.read_bytes() for p in (d.state / "spool").rglob("*") if p.is_file())


def wait_log(d: Daemon, pattern: str, timeout: float = 20) -> None:
    try:
        wait_for(lambda: re.search(pattern, d.log()), timeout)
    except TimeoutError:
        raise AssertionError(f"no {pattern!r} in log:\n{d.log()[-3000:]}") from None


def test_encrypted_spool_survives_kill9_and_delivers() -> None:
    relay_port = free_port()
    d = Daemon(CONFIG.replace("KEYSPEC", KEY).replace("RELAYPORT", str(relay_port)))
    try:
        d.start()
        t = smtp_send(d.port, "a@example.org", ["far@remote.test"], message("far@remote.test"))
        assert t.data is not None and t.data[0] == 250
        wait_log(d, r"delivery result .*rcpt=far@remote.test .*result=TempFail")
        # at rest: neither the body nor the recipient in clear, and files are marked
        raw = spool_bytes(d)
        assert MARKER not in raw and b"far@remote.test" not in raw
        bodies = list((d.state / "spool" / "queue").rglob("message"))
        assert len(bodies) == 1 and bodies[0].read_bytes()[:6] == b"\x00MRQ\x01\x03"
        assert KEY not in d.log()  # the key is never logged
        # show message decodes
        evpid = d.ctl("show", "queue").stdout.split("|")[0].strip()
        shown = d.ctl("show", "message", evpid).stdout
        assert MARKER.decode() in shown
        # a local delivery reads the decoded body too
        t = smtp_send(d.port, "a@example.org", ["ann@localhost"], message("ann@localhost"))
        assert t.data is not None and t.data[0] == 250
        wait_for(lambda: d.maildir("ann"), 20)
        assert MARKER in d.maildir("ann")[0]
        # the local envelope is gone from the queue: only the relayed one waits
        wait_for(lambda: len([x for x in d.ctl("show", "queue").stdout.splitlines()
                              if x.strip()]) == 1, 20)

        d.kill9()
        with SmtpPeer(port=relay_port) as peer:
            before = d.log().count("queue recovered envelopes=")
            d.start()
            wait_for(lambda: d.log().count("queue recovered envelopes=") > before, 30)
            assert "queue recovered envelopes=1" in d.log()
            d.ctl("schedule", "all")
            wait_for(lambda: peer.received, 30)
            assert MARKER in peer.received[0].data
            assert peer.received[0].rcpts == ["RCPT TO:<far@remote.test>"]
    finally:
        d.cleanup()


def test_key_from_stdin_and_a_bad_key_refused(tmp_path: Path) -> None:
    d = Daemon(CONFIG.replace("KEYSPEC", "stdin").replace("RELAYPORT", "9"))
    try:
        # -n: a key that is not 32 characters is a config error, and the key is not echoed
        bad = Daemon(CONFIG.replace("KEYSPEC", "tooshortsecret").replace("RELAYPORT", "9"))
        try:
            res = subprocess.run([*bad.argv(), "-n"], capture_output=True, text=True,
                                 timeout=60)
            assert res.returncode == 1
            assert re.search(r"mailrider.conf:2: queue encryption: .*32 characters",
                             res.stderr), res.stderr
            assert "tooshortsecret" not in res.stderr
        finally:
            bad.cleanup()
        with open(d.log_path, "ab") as logf:
            d.proc = subprocess.Popen(d.argv(), stdin=subprocess.PIPE, stdout=logf,
                                      stderr=logf, start_new_session=True, env=d.env)
        assert d.proc.stdin is not None
        d.proc.stdin.write(KEY.encode() + b"\n")
        d.proc.stdin.close()
        d._old_control = None
        wait_for(d._ready, 30)
        t = smtp_send(d.port, "a@example.org", ["bob@localhost"], message("bob@localhost"))
        assert t.data is not None and t.data[0] == 250
        wait_for(lambda: d.maildir("bob"), 20)
        assert MARKER in d.maildir("bob")[0]
        assert KEY not in d.log()
    finally:
        d.cleanup()


def test_wrong_key_at_restart_keeps_the_spool() -> None:
    d = Daemon(CONFIG.replace("KEYSPEC", KEY).replace("RELAYPORT", str(free_port())))
    try:
        d.start()
        t = smtp_send(d.port, "a@example.org", ["far@remote.test"], message("far@remote.test"))
        assert t.data is not None and t.data[0] == 250
        wait_log(d, r"delivery result .*rcpt=far@remote.test .*result=TempFail")
        d.stop()
        assert d.config_path is not None
        d.config_path.write_text(d.config_path.read_text().replace(KEY, "x" * 32))
        d.start()
        wait_log(d, r"queue undecodable-envelope")
        wait_log(d, r"queue recovered envelopes=0")
        assert len(list((d.state / "spool" / "queue").rglob("message"))) == 1
        assert "x" * 32 not in d.log()
    finally:
        d.cleanup()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
