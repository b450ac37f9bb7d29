"""HeaderHygiene: Bcc:/Resent-Bcc: removed, Date:/Message-ID: added only when asked."""

from __future__ import annotations

import re

import pytest
from mailrider.smtp.hygiene import HeaderHygiene, date_field, message_id

DATE = date_field(0)


def run(data: bytes, add: bool = False, step: int | None = None,
        limit: int = 1000) -> tuple[bytes, HeaderHygiene]:
    h = HeaderHygiene("mx.example", add, limit=limit, when=0)
    out = bytearray()
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        out += h.feed(data[i:i + step])
    out += h.finish()
    return bytes(out), h


def ids(data: bytes) -> bytes:
    return re.sub(rb"Message-ID: <[0-9a-f]{16}@mx\.example>", b"Message-ID: <ID@mx.example>", data)


MSG = (b"Received: from x\n\tby y\nFrom: a@x\nBcc: hidden@x,\n  other@y\nTo: b@x\n"
       b"resent-BCC : q@x\n\tcont@x\nBcc:\nSubject: s\n\nBcc: in the body stays\nbody\n")
CLEAN = (b"Received: from x\n\tby y\nFrom: a@x\nTo: b@x\nSubject: s\n\n"
         b"Bcc: in the body stays\nbody\n")


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, None])
def test_bcc_and_resent_bcc_removed_with_continuations(step: int | None) -> None:
    out, h = run(MSG, step=step)
    assert out == CLEAN
    assert h.dropped == 3 and h.added == []


@pytest.mark.parametrize("step", [1, 5, None])
def test_date_and_message_id_added_at_end_of_header(step: int | None) -> None:
    out, h = run(MSG, add=True, step=step)
    assert ids(out) == (b"Received: from x\n\tby y\nFrom: a@x\nTo: b@x\nSubject: s\n" + DATE
                        + b"Message-ID: <ID@mx.example>\n\nBcc: in the body stays\nbody\n")
    assert h.added == ["Date", "Message-ID"]


def test_present_fields_not_added_again() -> None:
    msg = b"date: Mon, 1 Jan 2024 00:00:00 +0000\nMESSAGE-ID: <a@b>\n\nbody\n"
    assert run(msg, add=True, step=3)[0] == msg
    out, h = run(b"Message-Id: <a@b>\nSubject: x\n\nb\n", add=True)
    assert out == b"Message-Id: <a@b>\nSubject: x\n" + DATE + b"\nb\n"
    assert h.added == ["Date"]


def test_not_added_unless_asked() -> None:
    msg = b"Subject: x\n\nbody\n"
    assert run(msg)[0] == msg


def test_message_id_is_random_hex_at_host() -> None:
    a, b = message_id("mx.example"), message_id("mx.example")
    assert re.fullmatch(rb"Message-ID: <[0-9a-f]{16}@mx\.example>\n", a)
    assert a != b
    # a host name cannot carry a line break or a second field
    assert message_id("bad\r\nBcc: x").count(b"\n") == 1


def test_body_without_header_and_empty_message() -> None:
    out, _ = run(b"just body text\nBcc: x\n", add=True)
    assert ids(out) == DATE + b"Message-ID: <ID@mx.example>\njust body text\nBcc: x\n"
    assert ids(run(b"", add=True)[0]) == DATE + b"Message-ID: <ID@mx.example>\n"
    assert run(b"")[0] == b""


def test_message_ending_in_header_section() -> None:
    out, _ = run(b"Subject: x\nBcc: y", step=2)
    assert out == b"Subject: x\n"
    out, _ = run(b"Subject: x", add=True, step=4)
    assert ids(out) == b"Subject: x\n" + DATE + b"Message-ID: <ID@mx.example>\n"


def test_long_lines_bounded_and_passed_through() -> None:
    # a long field passes through as it comes; only its name is held
    long_to = b"To: " + b"a@x, " * 2000 + b"\n"
    out, _ = run(long_to + b"Bcc: " + b"b@y, " * 2000 + b"\n\nbody\n", step=100)
    assert out == long_to + b"\nbody\n"
    # a line without a colon longer than the hold limit is body: the header ends
    junk = b"x" * 3000 + b"\nBcc: stays\n"
    h = HeaderHygiene("mx.example", False, limit=100)
    got = bytearray()
    for i in range(0, len(junk), 7):
        got += h.feed(junk[i:i + 7])
        assert len(h.line) < 100
    assert bytes(got) + h.finish() == junk


def test_crlf_blank_line_ends_header() -> None:
    msg = b"Subject: x\r\n\r\nBcc: y\r\n"
    assert run(msg, step=1)[0] == msg
