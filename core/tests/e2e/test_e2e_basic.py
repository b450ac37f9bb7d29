"""End to end: a real mailriderd on loopback, real SMTP clients, real Maildirs."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import socket
import subprocess

import pytest
from harness import Daemon, wait_for
from mailrider import limits

MSG = (b"From: Alice <alice@example.org>\r\nTo: someone@localhost\r\nSubject: test\r\n\r\n"
       b"first line\r\n.leading dot\r\n..two dots\r\n\r\nlast line\r\n")
BODY_ON_DISK = (b"From: Alice <alice@example.org>\nTo: someone@localhost\nSubject: test\n\n"
                b"first line\n.leading dot\n..two dots\n\nlast line\n")


def raw_session(port: int, lines: list[bytes]) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.recv(1000)
        s.sendall(b"".join(lines))
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.fixture(scope="module")
def default_daemon() -> Daemon:
    d = Daemon().start()  # the built-in configuration, as the README's first command
    yield d
    d.cleanup()


def test_builtin_config_delivers_to_maildir(default_daemon: Daemon) -> None:
    d = default_daemon
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as c:
        c.ehlo("client.example")
        # smtplib dot-stuffs; the daemon must un-stuff exactly once
        refused = c.sendmail("alice@example.org", ["Someone@localhost"], MSG)
    assert refused == {}
    msgs = wait_for(lambda: (d.state / "maildir" / "someone" / "new").is_dir()
                    and os.listdir(d.state / "maildir" / "someone" / "new"))
    assert len(msgs) == 1
    data = (d.state / "maildir" / "someone" / "new" / msgs[0]).read_bytes()
    head, _, rest = data.partition(b"\nReceived: ")
    # the local part keeps its case (RFC 5321 2.4); the Maildir name is folded
    assert head == b"Return-Path: <alice@example.org>\nDelivered-To: Someone@localhost"
    received, _, body = rest.partition(b"\nFrom: ")
    assert b"by " in received and b"with ESMTP id " in received
    assert b"\r" not in data
    assert b"From: " + body == BODY_ON_DISK


def test_250_names_the_queue_id_and_logs_it(default_daemon: Daemon) -> None:
    d = default_daemon
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as c:
        c.ehlo("client.example")
        c.mail("bob@example.org")
        c.rcpt("x@localhost")
        code, text = c.data(b"Subject: id\r\n\r\nbody\r\n")
    assert code == 250
    m = re.match(rb"2\.0\.0 ([0-9a-f]{8}) Message accepted for delivery", text)
    assert m, text
    msgid = m.group(1).decode()
    wait_for(lambda: f"msgid={msgid}" in d.log())
    wait_for(lambda: re.search(rf"delivery evpid={msgid}[0-9a-f]{{8}} .*result=\"?Ok\b",
                               d.log()))


@pytest.mark.parametrize("rcpt", [
    b"victim@example.net", b"victim@example.net.", b"VICTIM@EXAMPLE.NET",
    b"@localhost:victim@example.net", b"victim@[192.0.2.1]",
])
def test_no_open_relay(default_daemon: Daemon, rcpt: bytes) -> None:
    out = raw_session(default_daemon.port, [
        b"EHLO x\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<" + rcpt + b">\r\n",
        b"QUIT\r\n",
    ])
    lines = out.decode().split("\r\n")
    rcpt_reply = [x for x in lines if x[:1] in "2345" and not x.startswith(("220", "250-"))][2]
    assert rcpt_reply[:1] == "5", (rcpt, lines)
    assert "Destination address valid" not in out.decode()


def test_smuggling_variants_never_make_a_second_message(default_daemon: Daemon) -> None:
    d = default_daemon
    before = d.log().count("smtp message ")
    for bad in (b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\r\n.\r\r\n"):
        out = raw_session(d.port, [
            b"EHLO x\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<smug@localhost>\r\n",
            b"DATA\r\n", b"Subject: one\r\n\r\nbody" + bad +
            b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<smug2@localhost>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nx\r\n.\r\n", b"QUIT\r\n",
        ])
        assert b"554 5.6.0" in out, (bad, out)
        assert b"Message accepted" not in out
    assert d.log().count("smtp message ") == before
    assert not (d.state / "maildir" / "smug2").exists()


def test_mailriderctl_show_status_and_queue(default_daemon: Daemon) -> None:
    res = default_daemon.ctl("show", "status")
    assert res.stdout.splitlines() == ["MDA running", "MTA running", "SMTP running"]
    res = default_daemon.ctl("show", "stats")
    assert re.search(r"^uptime=\d+$", res.stdout, re.M)
    assert re.search(r"^smtp.session=\d+$", res.stdout, re.M)


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
def test_swaks_delivers(default_daemon: Daemon) -> None:
    d = default_daemon
    res = subprocess.run(["swaks", "--server", f"127.0.0.1:{d.port}", "--to", "swaks@localhost",
                          "--from", "tester@example.org", "--body", "hello from swaks",
                          "--h-Subject", "swaks test"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    msgs = wait_for(lambda: [p.read_bytes()
                             for p in (d.state / "maildir" / "swaks" / "new").glob("*")])
    assert b"hello from swaks" in msgs[0]
    assert b"Subject: swaks test" in msgs[0]


def test_abandoned_transactions_leave_no_spool_file(default_daemon: Daemon) -> None:
    d = default_daemon
    for end in (b"RSET\r\n", b"QUIT\r\n", b"MAIL FROM:<b@example.org>\r\n"):
        raw_session(d.port, [b"EHLO x\r\n", b"MAIL FROM:<a@example.org>\r\n",
                             b"RCPT TO:<gone@localhost>\r\n", end, b"QUIT\r\n"])
    # the spool file taken at RCPT is given back when no DATA follows, and
    # those pony asked for ahead once no session took one for a while
    incoming = d.state / "spool" / "incoming"
    wait_for(lambda: os.listdir(incoming) == [], limits.SPOOL_FILES_IDLE + 10)
