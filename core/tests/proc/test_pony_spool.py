"""proc/pony_spool.py: spool writes, the header section's end, envelope building."""

from __future__ import annotations

import os
import types
from pathlib import Path

from mailrider.config import parse_string
from mailrider.proc import pony_spool
from mailrider.queue.envelope import Delivery
from mailrider.smtp.hygiene import HeaderHygiene
from mailrider.smtp.masquerade import FromRewriter

CONFIG = """\
action out relay
action box mbox ttl 2d
match from any for domain example.org action box
match from any for any action out
"""


def test_write_all_writes_everything(tmp_path: Path) -> None:
    data = b"x" * 300_000  # more than one pipe buffer's worth on a regular file
    fd = os.open(tmp_path / "spool", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        pony_spool.write_all(fd, data)
    finally:
        os.close(fd)
    assert (tmp_path / "spool").read_bytes() == data


def test_write_all_raises_oserror() -> None:
    r, w = os.pipe()
    os.close(w)
    try:
        try:
            pony_spool.write_all(r, b"data")  # the read end: EBADF
        except OSError:
            pass
        else:
            raise AssertionError("no OSError")
    finally:
        os.close(r)


def test_header_tail_without_rewriters() -> None:
    assert pony_spool.header_tail(None, None) == b""


def test_header_tail_flushes_hygiene_then_masquerade() -> None:
    masq = FromRewriter("user@example.org", 64 * 1024)
    hygiene = HeaderHygiene("mx.example.org", True)
    # the rewriter holds the header section until its end
    assert masq.feed(hygiene.feed(b"From: Someone <someone@else.test>\r\n")) == b""
    tail = pony_spool.header_tail(hygiene, masq)
    assert tail.startswith(b"From: Someone <user@example.org>")
    assert b"Message-ID: <" in tail  # added by the hygiene, passed through the rewriter
    assert masq.rewritten == 1


def test_build_envelopes() -> None:
    config = parse_string(CONFIG, "t.conf")
    local = Delivery(dispatcher="box", rcpt="bob@example.org", dest="bob@example.org",
                     method="mbox", user="bob")
    relayed = Delivery(dispatcher="out", rcpt="carol@else.test", dest="carol@else.test",
                       method="relay")
    tx = pony_spool.Transaction(
        tag="in", smtpname="mx.example.org", helo="client.test", sockaddr="192.0.2.7",
        sender="alice@else.test",
        mail_params=types.SimpleNamespace(ret="HDRS", envid="e1"),
        rcpts=[("Bob@example.org", types.SimpleNamespace(notify=("SUCCESS", "FAILURE"),
                                                         orcpt="rfc822;bob@example.org")),
               ("carol@else.test", None)],
        size=123, digest="ab" * 32)
    envs = pony_spool.build_envelopes(config, tx, [(0, local), (1, relayed)], now=1000)
    assert [e.type for e in envs] == ["mda", "mta"]
    bob, carol = envs
    assert bob.delivery.rcpt == "Bob@example.org"  # as the client wrote it
    assert bob.delivery.user == "bob"
    assert carol.delivery is relayed
    assert bob.ttl == 2 * 86400
    assert carol.ttl == config.queue_ttl
    assert bob.dsn_notify == ("FAILURE", "SUCCESS")
    assert bob.dsn_orcpt == "rfc822;bob@example.org"
    assert carol.dsn_notify == () and carol.dsn_orcpt == ""
    assert (bob.dsn_ret, bob.dsn_envid) == ("HDRS", "e1")
    for e in envs:
        assert (e.evpid, e.tag, e.smtpname, e.helo, e.hostname) == (
            "", "in", "mx.example.org", "client.test", "<unknown>")
        assert (e.sockaddr, e.sender, e.ctime, e.retry) == ("192.0.2.7", "alice@else.test",
                                                          1000, 0)
        assert (e.message_size, e.message_sha256) == (123, "ab" * 32)
