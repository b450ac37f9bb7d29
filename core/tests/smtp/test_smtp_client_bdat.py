"""The sans-I/O SMTP client's CHUNKING / BDAT (RFC 3030): transcripts, and
the client paired with the server machine in memory."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st
from mailrider.smtp.client import (
    ClientConfig,
    ClientState,
    DataReady,
    Failed,
    TransactionResult,
)
from mailrider.smtp.server import ServerConfig
from test_smtp_client import CFG, NO, C, Pair, normalise, ready

EHLO_CHUNKING = (b"250-mx.example.org Hello\r\n250-PIPELINING\r\n250-CHUNKING\r\n"
                 b"250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n")
SMALL = dataclasses.replace(CFG, chunk_size=8)


def start(c: C, rcpts: tuple[str, ...] = ("bob@example.org",)) -> bytes:
    c.c.start_transaction("alice@example.net", [(r, NO) for r in rcpts], 20, False, False)
    return c.take()


def test_one_last_chunk_without_dot_stuffing() -> None:
    c = ready(EHLO_CHUNKING)
    assert start(c) == b"MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.org>\r\n"
    assert c.c.chunking
    c.feed(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
    assert isinstance(c.last(), DataReady) and c.c.state is ClientState.BODY
    c.c.send_body(b"Subject: x\n\n.\n..two\r\nbare\rcr")
    c.c.end_body()
    body = b"Subject: x\r\n\r\n.\r\n..two\r\nbare\r\ncr\r\n"
    assert c.take() == b"BDAT %d LAST\r\n" % len(body) + body
    c.feed(b"250 2.0.0 queued\r\n")
    res = c.last()
    assert isinstance(res, TransactionResult) and res.reply.code == 250
    assert c.c.state is ClientState.READY


def test_big_message_in_bounded_chunks() -> None:
    c = ready(EHLO_CHUNKING, SMALL)
    start(c)
    c.feed(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
    c.c.send_body(b"0123456789")
    c.c.send_body(b"abcdef\n")
    c.c.end_body()
    assert c.take() == (b"BDAT 8\r\n01234567" b"BDAT 8\r\n89abcdef"
                        b"BDAT 2 LAST\r\n\r\n")
    c.feed(b"250 2.0.0 8 octets\r\n250 2.0.0 8 octets\r\n250 2.0.0 queued\r\n")
    assert [type(e).__name__ for e in c.events][-1] == "TransactionResult"
    assert c.c.state is ClientState.READY


def test_failed_chunk_is_the_result_and_rset_follows() -> None:
    c = ready(EHLO_CHUNKING, SMALL)
    start(c)
    c.feed(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
    c.c.send_body(b"x" * 20 + b"\n")
    c.c.end_body()
    c.take()
    c.feed(b"250 2.0.0 ok\r\n552 5.3.4 Too big\r\n503 5.5.1 Need MAIL command\r\n")
    res = c.last()
    assert isinstance(res, TransactionResult) and (res.reply.code, res.reply.status) == (552,
                                                                                       "5.3.4")
    assert c.take() == b"RSET\r\n"
    c.feed(b"250 2.0.0 Reset\r\n")
    assert c.c.state is ClientState.READY
    assert start(c).startswith(b"MAIL FROM:")


def test_all_recipients_refused_sends_no_chunk() -> None:
    c = ready(EHLO_CHUNKING)
    start(c)
    c.feed(b"250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n")
    failed = c.last()
    assert isinstance(failed, Failed) and failed.stage == "rcpt" and not failed.temporary
    assert c.take() == b"RSET\r\n"


def test_mail_refused_sends_no_chunk() -> None:
    c = ready(EHLO_CHUNKING)
    start(c)
    c.feed(b"451 4.3.0 Later\r\n503 5.5.1 Need MAIL\r\n")
    failed = c.last()
    assert isinstance(failed, Failed) and failed.stage == "mail" and failed.temporary
    assert c.take() == b""


def test_data_without_pipelining_or_when_not_wanted() -> None:
    no_pipe = b"250-mx.example.org Hello\r\n250 CHUNKING\r\n"
    c = ready(no_pipe)
    c.c.start_transaction("a@b.example", [("c@d.example", NO)], 1, False, False)
    c.feed(b"250 Ok\r\n")
    c.feed(b"250 Ok\r\n")
    assert c.take().endswith(b"DATA\r\n") and not c.c.chunking
    c = ready(EHLO_CHUNKING, dataclasses.replace(CFG, want_chunking=False))
    assert start(c).endswith(b"DATA\r\n")


def test_pair_chunks_and_size_limit() -> None:
    p = Pair(ccfg=SMALL, scfg=ServerConfig(hostname="mx", max_message_size=30))
    p.send(b"line one\nline two\n")
    res = p.cevents[-1]
    assert isinstance(res, TransactionResult) and res.reply.code == 250
    assert p.message() == b"line one\nline two\n"
    assert p.c2s.count(b"BDAT ") == 3
    # a SIZE under the limit, a message over it: the chunk that crosses fails
    p.cli.start_transaction("alice@example.net", [("bob@example.org", NO)], 10, False, False)
    p.run()
    p.cli.send_body(b"y" * 40 + b"\n")
    p.cli.end_body()
    p.run()
    res = p.cevents[-1]
    assert isinstance(res, TransactionResult) and res.reply.code == 552
    p.send(b"again\n")
    res = p.cevents[-1]
    assert isinstance(res, TransactionResult) and res.reply.code == 250


@given(st.binary(max_size=200), st.integers(1, 50))
@settings(max_examples=100, deadline=None)
def test_pair_any_body_any_chunk_size(body: bytes, size: int) -> None:
    body = body.replace(b"\0", b"")
    p = Pair(ccfg=ClientConfig(helo_name="relay.example.net", chunk_size=size))
    p.send(body)
    res = p.cevents[-1]
    assert isinstance(res, TransactionResult) and res.reply.code == 250, res
    assert p.message() == normalise(body).replace(b"\r\n", b"\n")
