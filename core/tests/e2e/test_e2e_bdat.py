"""End to end: CHUNKING / BDAT (RFC 3030) into a real mailriderd, driven by
smtplib and by a raw pipelining client; the message lands in a real Maildir."""

from __future__ import annotations

import os
import smtplib
import socket
from collections.abc import Iterator

import pytest
from harness import Daemon, wait_for

HEAD = b"From: Alice <alice@example.org>\r\nTo: bob@localhost\r\nSubject: chunks\r\n\r\n"
BODY = b"first line\r\n.\r\n..two dots\r\nlast line\r\n"


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon().start()
    yield d
    d.cleanup()


def delivered(d: Daemon, user: str, n: int = 1) -> list[bytes]:
    box = d.state / "maildir" / user / "new"
    names = wait_for(lambda: box.is_dir() and len(os.listdir(box)) >= n and os.listdir(box))
    return [(box / name).read_bytes() for name in sorted(names)]


def test_smtplib_chunks_delivered_verbatim(daemon: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as c:
        c.ehlo("client.example")
        assert c.has_extn("chunking")
        assert c.mail("alice@example.org")[0] == 250
        assert c.rcpt("bob@localhost")[0] == 250
        parts = [HEAD[:30], HEAD[30:] + BODY[:11], BODY[11:]]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            c.send(b"BDAT %d%s\r\n" % (len(part), b" LAST" if last else b"") + part)
            code, text = c.getreply()
            if last:
                assert code == 250 and b"Message accepted" in text
            else:
                assert (code, text) == (250, b"2.0.0 %d octets received" % len(part))
    (data,) = delivered(daemon, "bob")
    # no dot-unstuffing: the "." line and ".." stay as sent; CRLF -> LF on disk
    assert data.endswith((HEAD + BODY).replace(b"\r\n", b"\n"))
    assert b"\nReceived: from client.example" in data
    assert daemon.log().count("smtp message ") >= 1


def test_pipelined_raw_session_and_refusals(daemon: Daemon) -> None:
    msg = HEAD.replace(b"bob", b"carol") + BODY
    script = (b"EHLO client.example\r\n"
              b"BDAT 6\r\nRSET\r\n"  # no transaction: 503, the chunk is dropped
              b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<carol@localhost>\r\n"
              + b"BDAT 20\r\n" + msg[:20] + b"BDAT %d LAST\r\n" % (len(msg) - 20) + msg[20:]
              + b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<carol@localhost>\r\n"
              b"BDAT 9\r\nbare\nLF\r\nBDAT 3 LAST\r\nx\r\nQUIT\r\n")
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.recv(1000)
        s.sendall(script)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    codes = [line[:9] for line in out.split(b"\r\n") if line[3:4] == b" "]
    assert codes[1:] == [b"503 5.5.1", b"250 2.1.0", b"250 2.1.5", b"250 2.0.0", b"250 2.0.0",
                         b"250 2.1.0", b"250 2.1.5", b"554 5.6.0", b"503 5.5.1", b"221 2.0.0"], out
    (data,) = delivered(daemon, "carol")
    assert data.endswith(msg.replace(b"\r\n", b"\n"))


def test_bdat_content_goes_through_the_data_line_filter() -> None:
    """The filter protocol's data-line phase gets a BDAT message as lines,
    dot-stuffed as for DATA (a line "." must not end the filter's message)."""
    from test_e2e_filters import filter_cmd, make

    d = make("", "f2")
    cmd = filter_cmd(d, "data-upper", "f2")
    d.config_path.write_text(f"filter f2 proc-exec {cmd}\n" + d.config_path.read_text())
    msg = b"Subject: hello\r\n\r\nsecret body\r\n.\r\n.dot line\r\nlast\r\n"
    with d, socket.create_connection(("127.0.0.1", d.port), timeout=20) as s:
        f = s.makefile("rb")
        script = (b"EHLO client.example\r\nMAIL FROM:<ok@x.example>\r\nRCPT TO:<bob@localhost>\r\n"
                  + b"BDAT 25\r\n" + msg[:25] + b"BDAT %d LAST\r\n" % (len(msg) - 25) + msg[25:]
                  + b"QUIT\r\n")
        f.readline()
        s.sendall(script)
        out = f.read()
        assert out.count(b"\r\n250 2.0.0 ") == 2 and b"221 2.0.0" in out, out
        got = wait_for(lambda: list((d.mail / "bob" / "new").glob("*"))
                       if (d.mail / "bob" / "new").is_dir() else [])
        assert isinstance(got, list)
        data = got[0].read_bytes()
    assert data.endswith(b"\nSUBJECT: HELLO\n\nSECRET BODY\n.\n.DOT LINE\nLAST\n"), data
