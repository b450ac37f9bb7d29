"""``senders <t> masquerade`` against a real daemon: the From: header of an
authenticated user's message becomes the envelope sender; nothing else changes."""

from __future__ import annotations

import os
import pathlib
import smtplib
import ssl
import subprocess
import sys
from collections.abc import Iterator

import pytest
from harness import Daemon, free_port, wait_for

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "crypto"))
from pki_util import OPENSSL, make_pki

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    assert OPENSSL is not None
    daemon = Daemon(config="")
    keys = daemon.state / "keys"
    keys.mkdir(mode=0o700)
    rsa = make_pki(keys, "mx", "rsa", cn="mx.test")
    daemon.cafile = rsa.cert  # type: ignore[attr-defined]
    plain_port = free_port()
    daemon.plain_port = plain_port  # type: ignore[attr-defined]
    pw = subprocess.run([OPENSSL, "passwd", "-6", "-salt", "saltsalt", "wonder land"],
                        capture_output=True, text=True, check=True).stdout.strip()
    creds = daemon.state / "creds"
    creds.write_text(f"alice {pw}\n")
    senders = daemon.state / "senders"
    senders.write_text("alice alice@example.org\n")
    for f in (creds, senders):
        os.chmod(f, 0o644)
    assert daemon.config_path is not None
    daemon.config_path.write_text(
        f'pki mx.test cert "{rsa.cert}"\npki mx.test key "{rsa.key}"\n'
        f"table creds file:{creds}\ntable sendmap file:{senders}\n"
        f"listen on 127.0.0.1 port {daemon.port} tls pki mx.test auth <creds> "
        "senders <sendmap> masquerade\n"
        f"listen on 127.0.0.1 port {plain_port} tls pki mx.test auth <creds> "
        "senders <sendmap>\n"
        f'table all {{ "@" = "{daemon.user}" }}\n'
        f'action "local" maildir "{daemon.mail}/%{{rcpt.user}}" virtual <all>\n'
        'match from any auth for any action "local"\n'
        'match from any for any reject\n')
    daemon.start()
    yield daemon
    daemon.cleanup()


def send(d: Daemon, box: str, message: bytes, *, masquerade: bool = True) -> bytes:
    port = d.port if masquerade else d.plain_port  # type: ignore[attr-defined]
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c._host = "mx.test"
        c.starttls(context=ssl.create_default_context(cafile=d.cafile))  # type: ignore[attr-defined]
        c.login("alice", "wonder land")
        c.sendmail("alice@example.org", [f"{box}@localhost"], message)
    got = wait_for(lambda: d.maildir(box))
    assert isinstance(got, list) and len(got) == 1
    data: bytes = got[0]
    return data


def split(data: bytes) -> tuple[bytes, bytes]:
    """(the header after our Received field, the body) of a delivered message"""
    end = data.index(b"\n", data.index(b"\nReceived: ") + 1)
    while data[end + 1:end + 2] in (b" ", b"\t"):  # its continuation lines
        end = data.index(b"\n", end + 1)
    head, _, body = data[end + 1:].partition(b"\n\n")
    return head, body


def test_from_rewritten_for_an_authenticated_user(d: Daemon) -> None:
    msg = (b"From: \"Mallory\" <mallory@evil.example>\r\nTo: x@localhost\r\n"
           b"Subject: masq\r\n\r\nFrom: a body line\r\n.dot\r\n")  # smtplib stuffs
    head, body = split(send(d, "masq1", msg))
    assert head == (b'From: "Mallory" <alice@example.org>\nTo: x@localhost\n'
                    b"Subject: masq")
    assert body == b"From: a body line\n.dot\n"
    assert "smtp masquerade " in d.log() and "sender=alice@example.org fields=1" in d.log()


def test_unchanged_without_masquerade(d: Daemon) -> None:
    msg = (b"From: \"Mallory\" <mallory@evil.example>\r\nTo: x@localhost\r\n"
           b"Subject: plain\r\n\r\nbody\r\n")
    head, body = split(send(d, "plain1", msg, masquerade=False))
    assert head == (b'From: "Mallory" <mallory@evil.example>\nTo: x@localhost\n'
                    b"Subject: plain")
    assert body == b"body\n"


def test_folded_from_header(d: Daemon) -> None:
    msg = (b"Subject: folded\r\nFrom: Mallory\r\n  Evil\r\n\t<mallory@evil.example>,\r\n"
           b" other@evil.example\r\nX-After: kept\r\n\tfolded too\r\n\r\nbody\r\n")
    head, body = split(send(d, "masq2", msg))
    assert head == (b"Subject: folded\nFrom: alice@example.org\n"
                    b"X-After: kept\n\tfolded too")
    assert body == b"body\n"


def test_folded_from_header_keeps_a_safe_name(d: Daemon) -> None:
    msg = (b"Subject: folded\r\nFrom: Mallory\r\n  Evil\r\n\t<mallory@evil.example>\r\n"
           b"\r\nbody\r\n")
    head, _ = split(send(d, "masq3", msg))
    assert head == b"Subject: folded\nFrom: Mallory Evil <alice@example.org>"


def test_message_without_from_unchanged(d: Daemon) -> None:
    msg = b"Subject: no from\r\nTo: x@localhost\r\n\r\nFrom: in the body\r\n"
    head, body = split(send(d, "masq4", msg))
    assert head == b"Subject: no from\nTo: x@localhost"
    assert body == b"From: in the body\n"
