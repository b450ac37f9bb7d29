"""Torture properties of the sans-I/O SMTP machines (hypothesis): the
outgoing body encoder never emits a smuggling sequence, dot-stuffing round
trips through the server, plaintext after STARTTLS never executes, a body
pipelined after a refused DATA never runs, and arbitrary input neither
crashes nor hangs the command parser or the address parser."""

from __future__ import annotations

import re
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailrider.smtp import events as ev
from mailrider.smtp.address import (
    AddressError,
    parse_mail_params,
    parse_path,
    parse_rcpt_params,
    split_path,
)
from mailrider.smtp.client import BodyEncoder
from mailrider.smtp.server import ServerConfig, SMTPServer, State
from smtp_transcript import CONFIG, Driver

# A fuzzing deadline per input: a quadratic (or worse) path shows up here.
DEADLINE_MS = 2000
FUZZ = settings(max_examples=300, deadline=DEADLINE_MS,
                suppress_health_check=[HealthCheck.too_slow])

# bytes rich in the characters that matter: CR, LF, ".", NUL
smtp_bytes = st.lists(st.sampled_from([b"\r", b"\n", b".", b"\0", b"a", b"\r\n", b"\r\n.",
                                       b".\r\n", b"X" * 50, b"\xff", b" "]),
                      max_size=60).map(b"".join) | st.binary(max_size=300)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    # no empty piece: receive(b"") means end of file
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


def encode(body: bytes, cuts: list[int]) -> bytes:
    enc = BodyEncoder()
    return b"".join(enc.feed(c) for c in _split(body, cuts)) + enc.end()


@FUZZ
@given(smtp_bytes, st.lists(st.integers(0, 10**6), max_size=8))
def test_body_encoder_never_emits_smuggling_sequences(body: bytes, cuts: list[int]) -> None:
    wire = encode(body, cuts)
    # every CR is followed by LF and every LF preceded by CR
    assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")
    # the end-of-data mark appears once, at the very end
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    assert wire.find(b"\r\n.\r\n") in (len(wire) - 5, -1)
    # no line of the body is a bare "." (would end the message early)
    lines = wire[:-3].split(b"\r\n")
    assert all(not (ln.startswith(b".") and not ln.startswith(b"..")) for ln in lines if ln)


@FUZZ
@given(smtp_bytes, st.lists(st.integers(0, 10**6), max_size=8),
       st.lists(st.integers(0, 10**6), max_size=8))
def test_dot_stuffing_round_trip_through_the_server(body: bytes, cuts: list[int],
                                                    rcuts: list[int]) -> None:
    wire = encode(body, cuts)
    cfg = ServerConfig(hostname="mx.example.org", max_line_length=0)
    d = Driver(cfg).feed(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    d.feed_all(_split(wire, rcuts))
    ends = [e for e in d.events if isinstance(e, ev.DataEnd)]
    assert len(ends) == 1
    # the server stores LF line ends; CR, LF and CRLF each ended a line
    expected = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if expected and not expected.endswith(b"\n"):
        expected += b"\n"
    if b"\0" in body:
        assert ends[0].error is not None and "NUL" in ends[0].error.text
    else:
        assert ends[0].error is None
        assert d.message() == expected


def _starttls_driver() -> Driver:
    cfg = ServerConfig(hostname="mx.example.org", starttls=True)
    return Driver(cfg).feed(b"EHLO c\r\n")


@FUZZ
@given(st.binary(min_size=1, max_size=200) | st.sampled_from([
    b"MAIL FROM:<a@b.example>\r\n", b"\r\n", b"EHLO x\r\nMAIL FROM:<x@y.example>\r\n",
    b"NOOP\r\n", b"\x16\x03\x01"]), st.booleans())
def test_plaintext_after_starttls_never_executes(tail: bytes, same_read: bool) -> None:
    d = _starttls_driver()
    n = len(d.events)
    if same_read:
        d.feed(b"STARTTLS\r\n" + tail)  # pipelined with the command (CVE-2011-0411)
        assert "220 2.0.0 Ready to start TLS" not in d.replies
    else:
        d.feed(b"STARTTLS\r\n")
        assert d.last() == "220 2.0.0 Ready to start TLS"
        d.feed(tail)  # in clear, before the handshake
    later = d.events[n:]
    assert not any(isinstance(e, ev.MailFrom | ev.Hello | ev.RcptTo) for e in later)
    assert d.srv.closed
    assert any(isinstance(e, ev.ProtocolError) for e in later)


def test_after_tls_the_client_must_greet_again() -> None:
    d = _starttls_driver()
    d.feed(b"STARTTLS\r\n")
    d.srv.tls_started()
    assert d.srv.state is State.INIT
    d.feed(b"MAIL FROM:<a@b.example>\r\n")
    assert d.last().startswith("503 ")
    d.feed(b"EHLO c\r\n")
    assert "STARTTLS" not in d.replies[-1] and d.srv.tls


@FUZZ
@given(st.sampled_from(["reject-rcpt", "reject-data", "no-rcpt"]),
       st.lists(st.sampled_from([
           "MAIL FROM:<evil@x.example>", "RCPT TO:<victim@y.example>", "DATA", "Subject: s",
           "", "RSET", "x", "."]), max_size=12))
def test_body_pipelined_after_refused_data_never_runs(how: str, lines: list[str]) -> None:
    def policy(srv: SMTPServer, e: ev.Event) -> None:
        if not srv.awaiting_answer:
            return
        if (isinstance(e, ev.RcptTo) and how == "reject-rcpt") or \
                (isinstance(e, ev.DataStart) and how == "reject-data"):
            srv.reject(550 if isinstance(e, ev.RcptTo) else 451, "5.0.0" if
                       isinstance(e, ev.RcptTo) else "4.3.0", "no")
        else:
            srv.accept()

    head = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n"
    if how != "no-rcpt":
        head += b"RCPT TO:<c@d.example>\r\n"
    body = "".join(x + "\r\n" for x in ["MAIL FROM:<evil@x.example>", *lines]).encode()
    d = Driver(CONFIG, policy).feed(head + b"DATA\r\n" + body)
    froms = [e for e in d.events if isinstance(e, ev.MailFrom)]
    assert len(froms) == 1  # only the client's own MAIL, none from the body
    assert not any(isinstance(e, ev.DataStart) for e in d.events[d.events.index(froms[0]) + 3:]
                   if how == "no-rcpt")
    assert d.srv.closed
    assert d.last() == "421 4.7.0 mx.example.org Protocol violation"


def test_refused_data_without_pipelining_keeps_the_session() -> None:
    def policy(srv: SMTPServer, e: ev.Event) -> None:
        if isinstance(e, ev.DataStart):
            srv.reject(451, "4.3.0", "Queue unavailable")
        elif srv.awaiting_answer:
            srv.accept()

    d = Driver(CONFIG, policy).feed(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n"
                                    b"RCPT TO:<c@d.example>\r\nDATA\r\n")
    assert d.last() == "451 4.3.0 Queue unavailable"
    d.feed(b"RSET\r\n")
    assert d.last() == "250 2.0.0 Reset state" and not d.srv.closed


@FUZZ
@given(st.lists(smtp_bytes, max_size=6), st.booleans())
def test_command_parser_never_crashes_or_hangs(chunks: list[bytes], prefix: bool) -> None:
    d = Driver()
    started = time.monotonic()
    if prefix:
        d.feed(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n")
    for c in chunks:
        d.feed(c)
        # bounded buffering: never more than one command line held
        assert len(d.srv._buf) <= CONFIG.command_line_max + len(c)
    d.feed(b"")
    assert time.monotonic() - started < DEADLINE_MS / 1000
    assert all(re.match(r"\d{3}[ -]", r) for r in d.replies)


@FUZZ
@given(st.text(max_size=300) | st.sampled_from([
    "<@a.example,@b.example:u@c.example>", '<"a\\"b"@c.example>', "<u@[IPv6:::1]>",
    "<u@[127.0.0.1]>", "<>", "<postmaster>", "<u@xn--bcher-kva.example>", "<ü@bücher.example>",
    "<u%v@w.example>", "<a!b@c.example>", "<u@d.example.>"]), st.booleans(), st.booleans())
def test_address_parser_raises_only_address_error(text: str, utf8: bool, sender: bool) -> None:
    try:
        path, rest = split_path(text, sender=sender)
        addr = parse_path(path, utf8, sender=sender, postmaster=not sender)
        if sender:
            parse_mail_params(rest, dsn=True, eightbitmime=True, smtputf8=utf8)
        else:
            parse_rcpt_params(rest, dsn=True, smtputf8=utf8)
    except AddressError as exc:
        assert 400 <= exc.reply.code < 600
        return
    if addr is not None:
        s = str(addr)
        assert "\r" not in s and "\n" not in s and "\0" not in s
        assert addr.domain == "" or len(addr.domain) <= 255
