"""FromRewriter: From: rewritten to the envelope sender, everything else unchanged."""

from __future__ import annotations

import pytest
from mailrider.smtp.masquerade import FromRewriter, display_name, rewrite_header

SENDER = "alice@example.org"


def run(data: bytes, limit: int = 65536, step: int | None = None) -> tuple[bytes, FromRewriter]:
    r = FromRewriter(SENDER, limit)
    out = bytearray()
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        out += r.feed(data[i:i + step])
    out += r.finish()
    return bytes(out), r


@pytest.mark.parametrize("step", [1, 3, 7, None])
def test_from_rewritten_rest_identical(step: int | None) -> None:
    msg = (b"Received: from x\n\tby y\nFrom: \"Mallory M.\" <mallory@evil.example>\n"
           b"Subject: hi\n\nFrom: body line stays\nbody\n")
    out, r = run(msg, step=step)
    assert out == (b"Received: from x\n\tby y\nFrom: \"Mallory M.\" <alice@example.org>\n"
                   b"Subject: hi\n\nFrom: body line stays\nbody\n")
    assert r.rewritten == 1


def test_folded_from_and_atom_name() -> None:
    msg = b"Subject: s\nFROM : Bob\n   Builder\n\t<bob@x.example>\nTo: t@x\n\nb\n"
    out, _ = run(msg, step=2)
    assert out == b"Subject: s\nFrom: Bob Builder <alice@example.org>\nTo: t@x\n\nb\n"


@pytest.mark.parametrize("value", [
    b" mallory@evil.example", b" mallory@evil.example (Mallory)",
    b" a@x, b@y", b" group: a@x;", b" \"a\x01b\" <m@x>", b" \"x\rBcc: v@x\" <m@x>",
    b" \"\" <m@x>", b" \xff\xfe <m@x>", b" a@x, Bob <b@x>", b" Bob <b@x>, c@y",
    b" Bob <b@x> (comment)", b" Bob <<b@x>>",
])
def test_unsafe_or_missing_names_are_dropped(value: bytes) -> None:
    out, _ = run(b"From:" + value + b"\nX: y\n\n")
    assert out == b"From: alice@example.org\nX: y\n\n"


def test_names_requoted_safely() -> None:
    assert display_name(b' "a \\"q\\" b" <m@x>') == ('a "q" b', True)
    out, _ = run(b'From: "a \\"q\\" \\\\ b" <m@x>\n\n')
    assert out == b'From: "a \\"q\\" \\\\ b" <alice@example.org>\n\n'
    out, _ = run(b"From: =?utf-8?q?Al=C3=AFce?= <m@x>\n\n")
    assert out == b"From: =?utf-8?q?Al=C3=AFce?= <alice@example.org>\n\n"
    out, _ = run("From: Zoë Z <m@x>\n\n".encode())
    assert out == "From: \"Zoë Z\" <alice@example.org>\n\n".encode()


@pytest.mark.parametrize("msg", [
    b"Subject: none\n\nFrom: not a header\n",
    b"just a body line\nFrom: x@y\n",
    b"\nFrom: x@y\n",
    b"",
    b"Subject: headers only, no end",
])
def test_without_from_header_unchanged(msg: bytes) -> None:
    out, r = run(msg, step=4)
    assert out == msg and r.rewritten == 0


def test_message_ending_inside_the_header() -> None:
    out, _ = run(b"Subject: x\nFrom: m@x", step=3)
    assert out == b"Subject: x\nFrom: alice@example.org"


def test_every_from_field_and_crlf_untouched_elsewhere() -> None:
    head, n = rewrite_header(b"From: a@x\nA: 1\r\nfrom: b@y\n", SENDER)
    assert (head, n) == (b"From: alice@example.org\nA: 1\r\nFrom: alice@example.org\n", 2)


def test_long_header_passes_through_unchanged() -> None:
    msg = b"From: m@x\n" + b"".join(b"X-%d: %s\n" % (i, b"p" * 60) for i in range(200)) + b"\nb\n"
    out, r = run(msg, limit=4096, step=100)
    assert out == msg and r.overflowed and r.rewritten == 0
    assert len(r.buf) == 0
