"""Message hygiene against a real daemon, as OpenSMTPD does it: Bcc:/Resent-Bcc:
removed from every message queued; Date:/Message-ID: added when missing on
the submission port and the local socket only."""

from __future__ import annotations

import os
import re
import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from harness import Daemon, wait_for

#: the submission port on an address of its own, so no other listener is disturbed
SUBMIT = "127.0.0.58"

MSG = (b"From: a@example.org\r\nBcc: hidden@example.org,\r\n  other@example.org\r\n"
       b"To: x@localhost\r\nResent-Bcc: r@example.org\r\nSubject: hygiene\r\n\r\n"
       b"Bcc: a body line stays\r\n")


def _can_bind_submission() -> bool:
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((SUBMIT, 587))
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    if os.geteuid() != 0 or not _can_bind_submission():
        pytest.skip("needs root and a free port 587 on " + SUBMIT)
    daemon = Daemon(config=(
        "listen on 127.0.0.1 port {port}\n"
        f"listen on {SUBMIT} port 587 hostname mx.hygiene.test\n"
        'table all {{ "@" = "{user}" }}\n'
        'action "local" maildir "{mail}/%{{rcpt.user}}" virtual <all>\n'
        'match from any for any action "local"\n'))
    daemon.start()
    yield daemon
    daemon.cleanup()


def send(host: str, port: int, box: str, message: bytes) -> None:
    with smtplib.SMTP(host, port, timeout=30) as c:
        c.sendmail("a@example.org", [f"{box}@localhost"], message)


def delivered(d: Daemon, box: str) -> bytes:
    got = wait_for(lambda: d.maildir(box))
    assert isinstance(got, list) and len(got) == 1
    data: bytes = got[0]
    return data


def header(data: bytes) -> bytes:
    return data.partition(b"\n\n")[0]


def test_bcc_removed_nothing_added_on_a_relay_port(d: Daemon) -> None:
    send("127.0.0.1", d.port, "relay1", MSG)
    data = delivered(d, "relay1")
    head = header(data)
    assert b"Bcc" not in head and b"hidden@" not in data and b"other@" not in data
    assert b"r@example.org" not in data
    assert head.endswith(b"\nFrom: a@example.org\nTo: x@localhost\nSubject: hygiene")
    assert data.endswith(b"\n\nBcc: a body line stays\n")
    # mail relayed to us is not ours to complete
    assert b"\nDate:" not in head and b"\nMessage-ID:" not in head


def test_date_and_message_id_added_on_the_submission_port(d: Daemon) -> None:
    send(SUBMIT, 587, "sub1", MSG)
    head = header(delivered(d, "sub1"))
    assert b"Bcc" not in head
    m = re.search(rb"\nSubject: hygiene\nDate: [^\n]+\nMessage-ID: <([0-9a-f]{16})@"
                  rb"mx\.hygiene\.test>$", head)
    assert m is not None, head


def test_present_date_and_message_id_kept_alone(d: Daemon) -> None:
    msg = (b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <mine@example.org>\r\n"
           b"Subject: complete\r\n\r\nbody\r\n")
    send(SUBMIT, 587, "sub2", msg)
    head = header(delivered(d, "sub2"))
    assert head.count(b"Date:") == 1 and head.count(b"Message-ID:") == 1
    assert head.endswith(b"\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
                         b"Message-ID: <mine@example.org>\nSubject: complete")


def test_bcc_removed_from_local_submission_without_t(d: Daemon) -> None:
    # without -t the sendmail program leaves the header alone: the daemon strips it
    argv = [sys.executable, "-m", "mailrider.cli.mailriderctl", "-S", str(d.state),
            "sendmail", "-f", "me@example.org", "loc1@localhost"]
    res = subprocess.run(argv, input=b"Bcc: secret@example.org\nSubject: l\n\nbody\n",
                         capture_output=True, timeout=60, env=d.env)
    assert res.returncode == 0, res.stderr
    data = delivered(d, "loc1")
    assert b"secret@example.org" not in data and b"Bcc" not in data
    assert b"\nSubject: l\n" in data and data.endswith(b"\n\nbody\n")
