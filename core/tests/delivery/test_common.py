"""Shared delivery helpers: headers, environment, message access."""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailrider import paths
from mailrider.delivery.common import (
    delivery_headers,
    extension_of,
    mda_environment,
    sanitize_text,
)
from mailrider.delivery.format import FormatContext
from mailrider.delivery.message import Message, os_failure

from .conftest import SAMPLE, MakeFd


def test_delivery_headers_exact() -> None:
    assert delivery_headers("bob@example.net", "alice@example.org") == (
        b"Return-Path: <bob@example.net>\nDelivered-To: alice@example.org\n"
    )
    assert delivery_headers("", "alice@example.org") == (
        b"Return-Path: <>\nDelivered-To: alice@example.org\n"
    )


def test_delivery_headers_cannot_be_injected() -> None:
    out = delivery_headers("a\r\nX-Evil: 1>\n<@x", "b\nBcc: c@d\0")
    assert out.count(b"\n") == 2
    assert b"\r" not in out and b"\0" not in out
    assert out.startswith(b"Return-Path: <aX-Evil: 1@x>\n")
    assert out.endswith(b"Delivered-To: bBcc: c@d\n")


def test_delivery_headers_utf8() -> None:
    assert delivery_headers("jörg@b.example", "zoë@a.example") == (
        "Return-Path: <jörg@b.example>\nDelivered-To: zoë@a.example\n".encode()
    )


def test_mda_environment() -> None:
    ctx = FormatContext(
        sender="bob@example.net",
        rcpt="Alice+news@example.org",
        dest="alice+news@example.org",
        user_name="alice",
        user_dir="/home/alice",
    )
    env = mda_environment(ctx, home="/home/alice", user="alice", extension="news")
    assert env == {
        "DOMAIN": "example.org",
        "EXTENSION": "news",
        "HOME": "/home/alice",
        "LOCAL": "alice+news",
        "LOGNAME": "alice",
        "ORIGINAL_RECIPIENT": "Alice+news@example.org",
        "PATH": paths.MDA_PATH,
        "RECIPIENT": "alice+news@example.org",
        "SENDER": "bob@example.net",
        "SHELL": "/bin/sh",
        "USER": "alice",
    }


def test_mda_environment_strips_nul_and_controls() -> None:
    ctx = FormatContext("a\0b@x", "r\n@x", "d@x", "u", "/h")
    env = mda_environment(ctx, home="/h", user="u", extension="")
    assert env["SENDER"] == "ab@x"
    assert env["ORIGINAL_RECIPIENT"] == "r@x"
    assert all("\0" not in v and "\n" not in v for v in env.values())


@pytest.mark.parametrize(
    ("user", "delim", "ext"),
    [("a+b", "+", "b"), ("a+b+c", "+", "b+c"), ("a", "+", ""), ("+b", "+", ""), ("a-b", "", "")],
)
def test_extension_of(user: str, delim: str, ext: str) -> None:
    assert extension_of(user, delim) == ext


def test_sanitize_text() -> None:
    assert sanitize_text("  first line\x1b[31m\nsecond") == "first line?[31m"
    assert sanitize_text("x" * 500) == "x" * 200
    assert sanitize_text("\n\n") == ""


def test_os_failure_codes() -> None:
    full = os_failure(OSError(28, "No space left on device"), "maildir")
    assert (full.code, full.status) == (452, "4.2.2")
    eio = os_failure(OSError(5, "Input/output error"), "maildir")
    assert (eio.code, eio.status) == (451, "4.3.0")
    assert eio.text.startswith("maildir: ")


def test_iter_chunks_reads_from_start_and_keeps_position(make_fd: MakeFd) -> None:
    fd = make_fd(SAMPLE)
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    assert pos != 0
    msg = Message(fd)
    assert b"".join(msg.iter_chunks(7)) == SAMPLE
    assert all(len(c) <= 7 for c in msg.iter_chunks(7))
    assert msg.size() == len(SAMPLE)
    assert os.lseek(fd, 0, os.SEEK_CUR) == pos


@given(
    body=st.lists(st.sampled_from([b"a", b"\n", b"From ", b".", b"xyz"]), max_size=40),
    size=st.integers(min_value=1, max_value=9),
    prepend=st.sampled_from([b"", b"P: 1\n"]),
)
def test_iter_lines_any_chunking(body: list[bytes], size: int, prepend: bytes) -> None:
    data = b"".join(body)


    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        lines = list(Message(f.fileno()).iter_lines(prepend, size=size))
    assert b"".join(lines) == prepend + data
    assert all(line.endswith(b"\n") for line in lines[:-1])
    assert all(line.count(b"\n") <= 1 for line in lines)
    assert all(line for line in lines)


@pytest.mark.parametrize(
    ("headers", "spam"),
    [
        (b"X-Spam: Yes\n", True),
        (b"x-spam:   YES  \n", True),
        (b"X-SPAM:yes\n", True),
        (b"X-Spam:\n Yes\n", True),  # folded
        (b"X-Spam: No\n", False),
        (b"X-Spam-Flag: YES\n", False),
        (b"X-Spam: Yes, score=9\n", False),
        (b"Subject: X-Spam: Yes\n", False),
        (b"", False),
    ],
)
def test_spam_header(make_fd: MakeFd, headers: bytes, spam: bool) -> None:
    msg = b"Received: by x\n" + headers + b"\nbody\n"
    assert Message(make_fd(msg)).has_spam_header() is spam


def test_spam_header_only_in_header_section(make_fd: MakeFd) -> None:
    assert not Message(make_fd(b"Subject: hi\n\nX-Spam: Yes\n")).has_spam_header()
    assert not Message(make_fd(b"\nX-Spam: Yes\n")).has_spam_header()


def test_spam_header_past_a_chunk_boundary(make_fd: MakeFd) -> None:
    filler = b"".join(b"X-Filler-%d: %s\n" % (i, b"y" * 60) for i in range(2000))
    assert len(filler) > 65536
    msg = Message(make_fd(b"Received: by x\n" + filler + b"X-Spam: yes\n\nbody\n"))
    assert msg.has_spam_header()
