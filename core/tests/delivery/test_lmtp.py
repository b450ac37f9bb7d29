"""LMTP delivery against a tiny scripted LMTP server on loopback."""

from __future__ import annotations

import itertools
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailrider.delivery.lmtp import LMTPEncoder, deliver_lmtp, parse_dest
from mailrider.errors import PermFail, TempFail

from .conftest import SAMPLE, MakeFd

PREPEND = b"Return-Path: <bob@example.net>\nDelivered-To: alice@example.org\n"


@dataclass
class Script:
    """How the fake server answers; None for a reply means 'hang up instead'."""

    greeting: bytes | None = b"220 lmtp.test LMTP ready\r\n"
    lhlo: bytes = b"250-lmtp.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"
    mail: bytes = b"250 2.1.0 Ok\r\n"
    rcpt: dict[str, bytes] = field(default_factory=dict)  # default 250
    data: bytes = b"354 go ahead\r\n"
    final: dict[str, bytes] = field(default_factory=dict)  # default 250
    hang_after_data: bool = False
    stall: bool = False


class FakeLMTP:
    def __init__(self, script: Script, family: int = socket.AF_INET) -> None:
        self.script = script
        self.commands: list[bytes] = []
        self.data = b""
        self.errors: list[BaseException] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_UNIX:
            self._tmp = tempfile.TemporaryDirectory()
            self.dest = os.path.join(self._tmp.name, "lmtp.sock")
            self.sock.bind(self.dest)
        else:
            self.sock.bind(("127.0.0.1", 0))
            self.dest = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError as exc:
            self.errors.append(exc)
            return
        with conn:
            conn.settimeout(10)
            try:
                self._serve(conn, conn.makefile("rb"))
            except (OSError, AssertionError) as exc:
                self.errors.append(exc)

    def _serve(self, conn: socket.socket, rfile: object) -> None:
        s = self.script
        readline = rfile.readline  # type: ignore[attr-defined]
        if s.stall:
            time.sleep(1.0)
            return
        if s.greeting is None:
            return
        conn.sendall(s.greeting)
        accepted: list[str] = []
        while True:
            line = readline()
            if not line:
                return
            self.commands.append(line)
            verb = line[:4].upper()
            if verb == b"LHLO":
                conn.sendall(s.lhlo)
            elif verb == b"MAIL":
                conn.sendall(s.mail)
            elif verb == b"RCPT":
                rcpt = re.match(rb"RCPT TO:<(.*)>\r\n", line)
                assert rcpt, line
                who = rcpt.group(1).decode()
                reply = s.rcpt.get(who, b"250 2.1.5 Ok\r\n")
                if reply.startswith(b"2"):
                    accepted.append(who)
                conn.sendall(reply)
            elif verb == b"DATA":
                conn.sendall(s.data)
                if not s.data.startswith(b"354"):
                    continue
                chunks = []
                while True:
                    dl = readline()
                    if not dl:
                        return
                    chunks.append(dl)
                    if dl == b".\r\n":
                        break
                self.data = b"".join(chunks)
                if s.hang_after_data:
                    return
                for who in accepted:
                    conn.sendall(s.final.get(who, b"250 2.0.0 <%s> delivered\r\n" % who.encode()))
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 bye\r\n")
                return
            else:
                conn.sendall(b"500 5.5.1 what?\r\n")

    def close(self) -> None:
        self.thread.join(10)
        self.sock.close()
        if self._tmp is not None:
            self._tmp.cleanup()


@pytest.fixture
def server_factory() -> Iterator[list[FakeLMTP]]:
    servers: list[FakeLMTP] = []
    yield servers
    for s in servers:
        s.close()


def _start(servers: list[FakeLMTP], script: Script, family: int = socket.AF_INET) -> FakeLMTP:
    srv = FakeLMTP(script, family)
    servers.append(srv)
    return srv


def _wire(message: bytes) -> bytes:
    """Reference encoding, line by line."""
    out = []
    lines = message.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for line in lines:
        out.append((b"." + line if line.startswith(b".") else line) + b"\r\n")
    return b"".join(out) + b".\r\n"


def test_all_delivered_and_wire_exact(server_factory: list[FakeLMTP], make_fd: MakeFd) -> None:
    srv = _start(server_factory, Script())
    fd = make_fd(SAMPLE)
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    results = deliver_lmtp(
        srv.dest,
        fd,
        sender="bob@example.net",
        rcpts=["alice@example.org", "carol@example.org"],
        lhlo="mx.example.org",
        prepend=PREPEND,
        timeout=10,
    )
    srv.close()
    assert results == [None, None]
    assert srv.errors == []
    assert srv.commands == [
        b"LHLO mx.example.org\r\n",
        b"MAIL FROM:<bob@example.net>\r\n",
        b"RCPT TO:<alice@example.org>\r\n",
        b"RCPT TO:<carol@example.org>\r\n",
        b"DATA\r\n",
        b"QUIT\r\n",
    ]
    assert srv.data == _wire(PREPEND + SAMPLE)
    # Spelled out: the dot-stuffed lines of SAMPLE.
    assert b"\r\n...two dots\r\n..\r\nbye\r\n.\r\n" in srv.data
    assert b"\r\n..a line with a leading dot\r\n" in srv.data
    assert b"\n" not in srv.data.replace(b"\r\n", b"")
    assert os.lseek(fd, 0, os.SEEK_CUR) == pos


def test_per_recipient_results(server_factory: list[FakeLMTP], make_fd: MakeFd) -> None:
    script = Script(
        rcpt={
            "nobody@x": b"550 5.1.1 <nobody@x> unknown user\r\n",
            "later@x": b"451 try later\r\n",
        },
        final={
            "full@x": b"452 4.2.2 <full@x> mailbox full\r\n",
            "bad@x": b"554 5.6.0 rejected\r\n",
        },
    )
    srv = _start(server_factory, script)
    rcpts = ["ok@x", "nobody@x", "full@x", "later@x", "bad@x"]
    results = deliver_lmtp(
        srv.dest, make_fd(b"hi\n"), sender="", rcpts=rcpts, lhlo="mx", timeout=10
    )
    srv.close()
    assert srv.commands[1] == b"MAIL FROM:<>\r\n"
    ok, nobody, full, later, bad = results
    assert ok is None
    assert isinstance(nobody, PermFail)
    assert (nobody.code, nobody.status) == (550, "5.1.1")
    assert nobody.text == "lmtp: 550 <nobody@x> unknown user"
    assert isinstance(full, TempFail)
    assert (full.code, full.status) == (452, "4.2.2")
    assert isinstance(later, TempFail)
    assert (later.code, later.status) == (451, "4.0.0")
    assert isinstance(bad, PermFail)
    assert (bad.code, bad.status) == (554, "5.6.0")
    assert srv.data == b"hi\r\n.\r\n"


def test_unix_socket(server_factory: list[FakeLMTP], make_fd: MakeFd) -> None:
    srv = _start(server_factory, Script(), socket.AF_UNIX)
    assert srv.dest.startswith("/")
    results = deliver_lmtp(
        srv.dest, make_fd(b".\n..\nx"), sender="a@b", rcpts=["c@d"], lhlo="mx", timeout=10
    )
    srv.close()
    assert results == [None]
    assert srv.data == b"..\r\n...\r\nx\r\n.\r\n"


def test_empty_message(server_factory: list[FakeLMTP], make_fd: MakeFd) -> None:
    srv = _start(server_factory, Script())
    assert deliver_lmtp(srv.dest, make_fd(b""), sender="a@b", rcpts=["c@d"], lhlo="mx") == [None]
    srv.close()
    assert srv.data == b".\r\n"


def test_no_recipient_accepted_skips_data(
    server_factory: list[FakeLMTP], make_fd: MakeFd
) -> None:
    srv = _start(server_factory, Script(rcpt={"c@d": b"550 no\r\n"}))
    results = deliver_lmtp(srv.dest, make_fd(b"x\n"), sender="a@b", rcpts=["c@d"], lhlo="mx")
    srv.close()
    assert isinstance(results[0], PermFail)
    assert b"DATA\r\n" not in srv.commands
    assert srv.commands[-1] == b"QUIT\r\n"


def test_mail_from_refused(server_factory: list[FakeLMTP], make_fd: MakeFd) -> None:
    srv = _start(server_factory, Script(mail=b"553 5.1.8 bad sender\r\n"))
    results = deliver_lmtp(
        srv.dest, make_fd(b"x\n"), sender="a@b", rcpts=["c@d", "e@f"], lhlo="mx", timeout=10
    )
    srv.close()
    assert all(isinstance(r, PermFail) and r.status == "5.1.8" for r in results)
    assert not any(c.startswith(b"RCPT") for c in srv.commands)


def test_data_refused(server_factory: list[FakeLMTP], make_fd: MakeFd) -> None:
    srv = _start(server_factory, Script(data=b"451 4.3.0 not now\r\n"))
    results = deliver_lmtp(
        srv.dest, make_fd(b"x\n"), sender="a@b", rcpts=["c@d"], lhlo="mx", timeout=10
    )
    srv.close()
    assert isinstance(results[0], TempFail) and results[0].code == 451


@pytest.mark.parametrize(
    "script",
    [
        Script(greeting=b"554 5.3.2 go away\r\n"),
        Script(lhlo=b"500 5.5.1 LMTP? never heard of it\r\n"),
        Script(greeting=None),  # hangs up at once
        Script(greeting=b"garbage\r\n"),
    ],
)
def test_session_failures_are_temporary(
    server_factory: list[FakeLMTP], make_fd: MakeFd, script: Script
) -> None:
    srv = _start(server_factory, script)
    results = deliver_lmtp(
        srv.dest, make_fd(b"x\n"), sender="a@b", rcpts=["c@d", "e@f"], lhlo="mx", timeout=10
    )
    srv.close()
    assert len(results) == 2
    assert all(isinstance(r, TempFail) for r in results)


def test_hang_up_after_data_is_temporary(
    server_factory: list[FakeLMTP], make_fd: MakeFd
) -> None:
    srv = _start(server_factory, Script(hang_after_data=True))
    results = deliver_lmtp(
        srv.dest, make_fd(b"x\n"), sender="a@b", rcpts=["c@d"], lhlo="mx", timeout=10
    )
    srv.close()
    assert isinstance(results[0], TempFail)
    assert results[0].status == "4.4.2"
    assert srv.data == b"x\r\n.\r\n"


def test_timeout(server_factory: list[FakeLMTP], make_fd: MakeFd) -> None:
    srv = _start(server_factory, Script(stall=True))
    start = time.monotonic()
    results = deliver_lmtp(
        srv.dest, make_fd(b"x\n"), sender="a@b", rcpts=["c@d"], lhlo="mx", timeout=0.3
    )
    assert time.monotonic() - start < 0.9
    srv.close()
    assert isinstance(results[0], TempFail)
    assert "timeout" in results[0].text


def test_connection_refused(make_fd: MakeFd) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    results = deliver_lmtp(
        f"127.0.0.1:{port}", make_fd(b"x\n"), sender="a@b", rcpts=["c@d", "e@f"], lhlo="mx"
    )
    assert all(isinstance(r, TempFail) and r.status == "4.4.1" for r in results)


def test_missing_unix_socket(tmp_path: Path, make_fd: MakeFd) -> None:
    results = deliver_lmtp(
        str(tmp_path / "nope.sock"), make_fd(b"x\n"), sender="a@b", rcpts=["c@d"], lhlo="mx"
    )
    assert isinstance(results[0], TempFail)


def test_bad_addresses_never_reach_the_wire(
    server_factory: list[FakeLMTP], make_fd: MakeFd
) -> None:
    srv = _start(server_factory, Script())
    results = deliver_lmtp(
        srv.dest,
        make_fd(b"x\n"),
        sender="a@b",
        rcpts=["c@d\r\nRSET", "ok@d", "x>y@d", ""],
        lhlo="mx",
        timeout=10,
    )
    srv.close()
    assert [type(r) for r in results] == [PermFail, type(None), PermFail, PermFail]
    assert [c for c in srv.commands if c.startswith(b"RCPT")] == [b"RCPT TO:<ok@d>\r\n"]
    bad_sender = deliver_lmtp(
        srv.dest, make_fd(b"x\n"), sender="a\n@b", rcpts=["c@d"], lhlo="mx", timeout=1
    )
    assert isinstance(bad_sender[0], PermFail)


def test_smtputf8(server_factory: list[FakeLMTP], make_fd: MakeFd) -> None:
    srv = _start(server_factory, Script())
    results = deliver_lmtp(srv.dest, make_fd(b"x\n"), sender="a@b", rcpts=["zoë@d"], lhlo="mx")
    srv.close()
    assert isinstance(results[0], PermFail) and results[0].status == "5.6.7"

    srv = _start(server_factory, Script(lhlo=b"250-lmtp.test\r\n250 SMTPUTF8\r\n"))
    results = deliver_lmtp(srv.dest, make_fd(b"x\n"), sender="a@b", rcpts=["zoë@d"], lhlo="mx")
    srv.close()
    assert results == [None]
    assert srv.commands[1] == b"MAIL FROM:<a@b> SMTPUTF8\r\n"
    assert srv.commands[2] == "RCPT TO:<zoë@d>\r\n".encode()


@pytest.mark.parametrize(
    ("dest", "family", "addr"),
    [
        ("127.0.0.1:24", socket.AF_INET, ("127.0.0.1", 24)),
        ("[::1]:2424", socket.AF_INET6, ("::1", 2424, 0, 0)),
        ("localhost:24", socket.AF_INET, ("127.0.0.1", 24)),
        ("/run/dovecot/lmtp", socket.AF_UNIX, "/run/dovecot/lmtp"),
    ],
)
def test_parse_dest(dest: str, family: int, addr: object) -> None:
    assert parse_dest(dest) == (family, [addr])


@pytest.mark.parametrize(
    "dest", ["mail.example.com:24", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "[::1]24", ":24"]
)
def test_parse_dest_errors(dest: str) -> None:
    with pytest.raises(ValueError):
        parse_dest(dest)


def test_resolver_hook() -> None:
    assert parse_dest("mx.local:24", lambda name: ["10.0.0.1", "::2"]) == (
        socket.AF_INET,
        [("10.0.0.1", 24)],
    )


def test_unresolvable_name_is_tempfail(make_fd: MakeFd) -> None:
    results = deliver_lmtp(
        "mail.example.com:24", make_fd(b"x\n"), sender="a@b", rcpts=["c@d"], lhlo="mx"
    )
    assert isinstance(results[0], TempFail)


@given(
    parts=st.lists(st.sampled_from([b"a", b"\n", b".", b"..", b"x.y", b"\r"]), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=6),
)
def test_encoder_independent_of_chunking(parts: list[bytes], cuts: list[int]) -> None:
    message = b"".join(parts)
    enc = LMTPEncoder()
    bounds = sorted({c for c in cuts if c <= len(message)} | {0, len(message)})
    wire = b"".join(enc.feed(message[a:b]) for a, b in itertools.pairwise(bounds))
    wire += enc.end()
    expected = _wire(message if message.endswith(b"\n") or not message else message + b"\n")
    assert wire == expected
