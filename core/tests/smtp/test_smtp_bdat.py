"""CHUNKING / BDAT (RFC 3030) in the sans-I/O server: chunks read by count,
pipelined replies in order, refused chunks consumed, one content policy with DATA."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailrider.smtp import events as ev
from mailrider.smtp.server import SMTPServer, State
from smtp_transcript import CONFIG, ENVELOPE, HELLO, Driver, merged, run, with_data

ACCEPTED = "250 2.0.0 1f2e3d4c Message accepted for delivery"
SMUGGLED = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<x@example.org>\r\nDATA\r\nx\r\n.\r\n"


def bdat(data: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


def chunks(*parts: bytes) -> bytes:
    """Parts as BDAT chunks, the last one with LAST."""
    return b"".join(bdat(p, i == len(parts) - 1) for i, p in enumerate(parts))


def session(*parts: bytes) -> bytes:
    return ENVELOPE + chunks(*parts) + b"QUIT\r\n"


def ends(d: Driver) -> list[ev.DataEnd]:
    return [e for e in d.events if isinstance(e, ev.DataEnd)]


def test_chunking_advertised() -> None:
    d = run(HELLO)
    assert "250 CHUNKING" in d.replies or "250-CHUNKING" in d.replies
    assert "BINARYMIME" not in bytes(d.out).decode()
    d = run(b"HELP\r\n")
    assert "BDAT" in d.last()


def test_chunking_off_and_lmtp_refuse_bdat() -> None:
    for cfg in (dataclasses.replace(CONFIG, chunking=False),
                dataclasses.replace(CONFIG, lmtp=True)):
        hello = b"LHLO c.example\r\n" if cfg.lmtp else HELLO
        d = run(hello + b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 0 LAST\r\n", cfg)
        assert "CHUNKING" not in bytes(d.out).decode()
        assert d.last() == "502 5.5.1 Command not implemented"


def test_single_last_chunk() -> None:
    d = run(session(b"Subject: x\r\n\r\nbody\r\n"))
    assert d.message() == b"Subject: x\n\nbody\n"
    assert d.replies[-2:] == [ACCEPTED, "221 2.0.0 Bye"]
    assert ends(d) == [ev.DataEnd(17, 0, None)]
    assert ev.DataStart(chunked=True) in d.events
    assert d.kinds() == ["Hello", "MailFrom", "RcptTo", "DataStart", "DataChunk", "DataEnd",
                         "Quit", "ConnectionClosed"]


def test_pipelined_chunks_reply_in_order() -> None:
    d = run(session(b"Subject: x\r\n", b"\r\nline one\r", b"\nline two\r\n", b""))
    assert d.replies[-6:] == [
        "250 2.1.5 Destination address valid",
        "250 2.0.0 12 octets received",
        "250 2.0.0 11 octets received",
        "250 2.0.0 11 octets received",
        ACCEPTED,
        "221 2.0.0 Bye",
    ]
    assert d.message() == b"Subject: x\n\nline one\nline two\n"
    assert d.kinds().count("DataStart") == 1 and len(ends(d)) == 1


def test_bdat_zero_last_is_an_empty_message() -> None:
    d = run(session(b""))
    assert ends(d) == [ev.DataEnd(0, 0, None)]
    assert d.replies[-2] == ACCEPTED
    d = run(ENVELOPE + b"BDAT 0\r\nBDAT 3 LAST\r\na\r\n")
    assert d.replies[-2:] == ["250 2.0.0 0 octets received", ACCEPTED]
    assert d.message() == b"a\n"


def test_lowercase_verb_and_marker() -> None:
    d = run(ENVELOPE + b"bdat 3 last\r\na\r\n")
    assert d.last() == ACCEPTED


def test_no_dot_stuffing_and_no_end_of_data_scan() -> None:
    body = b"..two dots\r\n.\r\n" + SMUGGLED
    d = run(session(body))
    assert d.message() == body.replace(b"\r\n", b"\n")
    assert len(ends(d)) == 1 and ends(d)[0].error is None
    assert sum(isinstance(e, ev.MailFrom) for e in d.events) == 1


def test_final_crlf_added() -> None:
    d = run(session(b"Subject: x\r\n\r\nno newline"))
    assert d.message() == b"Subject: x\n\nno newline\n"
    assert ends(d)[0].size == len(d.message())


def test_received_fields_counted_across_chunks() -> None:
    d = run(session(b"Received: a\r\nRece", b"ived: b\r\n\r\nReceived: body\r\n"))
    assert ends(d)[0].received_count == 2


def test_every_split_point_gives_the_same_transcript() -> None:
    data = session(b"Received: a\r\nX: y\r", b"\n\r\nbody\r\n.\r\n", b"tail")
    whole = run(data)
    assert whole.replies[-2] == ACCEPTED
    for cut in range(1, len(data)):
        d = Driver().feed(data[:cut]).feed(data[cut:])
        assert merged(d.events) == merged(whole.events), cut
        assert d.out == whole.out, cut


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
@settings(max_examples=150, deadline=None)
def test_chunks_equal_data(body: bytes, cuts: list[int]) -> None:
    """Any split of a clean message into chunks gives what DATA gives."""
    body = body.replace(b"\r", b"").replace(b"\0", b"").replace(b"\n", b"\r\n")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    bounds = [0, *sorted(c for c in set(cuts) if c < len(body)), len(body)]
    parts = [body[a:b] for a, b in itertools.pairwise(bounds)]
    d = run(session(*parts))
    stuffed = b"".join(b"." + x if x.startswith(b".") else x
                       for x in body.splitlines(keepends=True))
    ref = run(with_data(stuffed + b".\r\n"))
    assert d.message() == ref.message()
    assert ends(d)[0].size == ends(ref)[0].size
    assert ends(d)[0].error == ends(ref)[0].error


@pytest.mark.parametrize("prefix", [b"", HELLO, HELLO + b"MAIL FROM:<a@b.example>\r\n"])
def test_bdat_without_transaction_is_refused_and_consumed(prefix: bytes) -> None:
    inside = b"RSET\r\nNOOP\r\n"
    d = run(b"HELO c.example\r\n" + prefix + bdat(inside, last=True) + b"QUIT\r\n")
    expected = {b"": "503 5.5.1 Send EHLO first", HELLO: "503 5.5.1 Need MAIL command"}
    assert d.replies[-2] == expected.get(prefix, "503 5.5.1 Need RCPT command")
    # the chunk's RSET/NOOP never ran: the refusal is followed by QUIT's 221
    assert d.replies[-1] == "221 2.0.0 Bye"
    assert not any(isinstance(e, ev.DataChunk | ev.DataStart | ev.Reset) for e in d.events)


def test_bdat_after_refused_recipients() -> None:
    def policy(srv: SMTPServer, e: ev.Event) -> None:
        if isinstance(e, ev.RcptTo):
            srv.reject(550, "5.1.1", "No such user")
        elif isinstance(e, ev.Hello | ev.MailFrom):
            srv.accept()
    d = Driver(policy=policy).feed(ENVELOPE + bdat(b"RSET\r\n", True) + b"QUIT\r\n")
    assert d.replies[-2:] == ["554 5.5.1 No valid recipients", "221 2.0.0 Bye"]


def test_refused_chunk_is_discarded_piecewise() -> None:
    """A huge refused chunk is dropped as it comes, never held."""
    d = Driver().feed(HELLO + b"BDAT 1000000000000\r\n")
    for _ in range(50):
        d.feed(b"MAIL FROM:<a@b.example>\r\n" * 100)
        assert d.srv.buffered == 0
    assert d.replies[-1] == "503 5.5.1 Need MAIL command"
    assert not any(isinstance(e, ev.MailFrom) for e in d.events)


def test_data_after_bdat_is_refused() -> None:
    d = Driver().feed(ENVELOPE + bdat(b"Subject: x\r\n"))
    d.feed(b"DATA\r\n")
    assert d.last() == "503 5.5.1 DATA not allowed after BDAT"
    assert d.srv.state is State.CHUNKED
    d.feed(b"MAIL FROM:<a@b.example>\r\n")
    assert d.last() == "503 5.5.1 BDAT or RSET expected"
    d.feed(bdat(b"\r\nbody\r\n", True))
    assert d.last() == ACCEPTED
    assert d.message() == b"Subject: x\n\nbody\n"


def test_data_after_bdat_with_pipelined_content_closes() -> None:
    d = run(ENVELOPE + bdat(b"x\r\n") + b"DATA\r\n" + SMUGGLED)
    assert d.replies[-2:] == ["503 5.5.1 DATA not allowed after BDAT",
                              "421 4.7.0 mx.example.org Protocol violation"]
    assert sum(isinstance(e, ev.MailFrom) for e in d.events) == 1


def test_rset_between_chunks_aborts() -> None:
    d = run(ENVELOPE + bdat(b"x\r\n") + b"RSET\r\n" + bdat(b"RSET\r\n", True) + b"QUIT\r\n")
    assert d.replies[-4:] == ["250 2.0.0 3 octets received", "250 2.0.0 Reset state",
                              "503 5.5.1 Need MAIL command", "221 2.0.0 Bye"]
    assert d.kinds()[-4:] == ["DataChunk", "Reset", "Quit", "ConnectionClosed"]
    assert not ends(d)


def test_ehlo_and_quit_between_chunks() -> None:
    d = run(ENVELOPE + bdat(b"x\r\n") + HELLO)
    assert "Reset" in d.kinds()
    assert d.srv.state is State.GREETED
    d = run(ENVELOPE + bdat(b"x\r\n") + b"NOOP\r\nQUIT\r\n")
    assert d.replies[-2:] == ["250 2.0.0 Ok", "221 2.0.0 Bye"]
    assert d.kinds()[-2:] == ["Quit", "ConnectionClosed"]


def test_refused_first_chunk_fails_the_transaction() -> None:
    def policy(srv: SMTPServer, e: ev.Event) -> None:
        if isinstance(e, ev.DataStart):
            srv.reject(451, "4.3.0", "Temporary failure in queue")
        elif isinstance(e, ev.Hello | ev.MailFrom | ev.RcptTo):
            srv.accept()
    d = Driver(policy=policy).feed(session(b"Subject: a\r\n", b"\r\nbody\r\n"))
    assert d.replies[-3:] == ["451 4.3.0 Temporary failure in queue",
                              "503 5.5.1 Need MAIL command", "221 2.0.0 Bye"]
    assert "Reset" in d.kinds()
    assert not any(isinstance(e, ev.DataChunk | ev.DataEnd) for e in d.events)


@pytest.mark.parametrize("arg", [b"", b" ", b" x", b" -1", b" 1 FOO", b" 1  LAST", b" 1 LAST ",
                                 b" 123456789012345678901", b"  1"])
def test_bad_size_closes(arg: bytes) -> None:
    d = run(ENVELOPE + b"BDAT" + arg + b"\r\nQUIT\r\n")
    assert d.replies[-1] == "421 4.7.0 mx.example.org Protocol violation"
    assert isinstance(d.events[-2], ev.ProtocolError)


def test_eof_inside_a_chunk() -> None:
    d = Driver().feed(ENVELOPE + b"BDAT 100 LAST\r\nshort").feed(b"")
    assert d.kinds()[-1] == "ConnectionClosed"
    assert not ends(d)


# ---------------------------------------------------------- one policy with DATA

@pytest.mark.parametrize("bad", [
    b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\r\n.\r\r\n", b"\r.\r\n", b"\r\n.\r",
    b"\n.\r", b"\r\n.\r\r\n", b"\r\x00\n.\r\x00\n", b"\n..\n", b"\r\n \r\n.\n",
    b"\r\n.\n\r\n", b"\r\n\r.\r\n",
])
def test_smuggling_variants_inside_bdat(bad: bytes) -> None:
    body = b"Subject: one\r\n\r\nbody" + bad + SMUGGLED
    for parts in ([body], [body[:20], body[20:]], [body[: len(body) // 2], body[len(body) // 2:]]):
        d = run(session(*parts))
        assert len(ends(d)) == 1, parts
        error = ends(d)[0].error
        assert error is not None and (error.code, error.status) == (554, "5.6.0"), parts
        assert sum(isinstance(e, ev.MailFrom) for e in d.events) == 1
        assert ACCEPTED not in d.replies


def test_bare_cr_at_chunk_end_then_lf_is_a_crlf() -> None:
    d = run(session(b"a\r", b"\nb\r\n"))
    assert ends(d)[0].error is None and d.message() == b"a\nb\n"


def test_bare_cr_at_message_end() -> None:
    d = run(session(b"a\r\nb\r"))
    assert d.replies[-2] == "554 5.6.0 Message contains bare CR or LF"


def test_nul_and_long_line() -> None:
    assert run(session(b"a\0b\r\n")).replies[-2] == "554 5.6.0 NUL byte in message"
    assert run(session(b"x" * 999 + b"\r\n")).replies[-2] == "554 5.6.0 Line too long"
    assert run(session(b"x" * 998 + b"\r\n")).replies[-2] == ACCEPTED


def test_fault_in_a_middle_chunk_ends_the_message_at_once() -> None:
    d = run(session(b"a\nb\r\n", b"MAIL FROM:<x@y.example>\r\n", b"c\r\n"))
    assert d.replies[-4:] == ["554 5.6.0 Message contains bare CR or LF",
                              "503 5.5.1 Need MAIL command", "503 5.5.1 Need MAIL command",
                              "221 2.0.0 Bye"]
    assert len(ends(d)) == 1
    assert sum(isinstance(e, ev.MailFrom) for e in d.events) == 1


def test_size_limit_counts_all_chunks() -> None:
    cfg = dataclasses.replace(CONFIG, max_message_size=100)
    d = run(session(b"x" * 60 + b"\r\n", b"y" * 60 + b"\r\n", b"z\r\n"), cfg)
    assert d.replies[-4:] == ["250 2.0.0 62 octets received",
                              "552 5.3.4 Message size exceeds fixed limit",
                              "503 5.5.1 Need MAIL command", "221 2.0.0 Bye"]
    assert ends(d)[0].error is not None and ends(d)[0].error.code == 552


def test_absurd_chunk_is_streamed_not_buffered() -> None:
    cfg = dataclasses.replace(CONFIG, max_message_size=1000)
    d = Driver(cfg).feed(ENVELOPE + b"BDAT 10000000000 LAST\r\n")
    for _ in range(100):
        d.feed(b"x" * 998 + b"\r\n")
        assert d.srv.buffered == 0
    assert d.srv.state is State.BDAT
    assert len(d.message()) <= 1000
    assert not ends(d)
