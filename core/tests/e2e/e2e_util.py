"""Helpers shared by the end-to-end tests of deliveries, tables and configuration.

- :func:`smtp_send` runs one SMTP transaction and returns the reply of every
  RCPT and of DATA, so a test can assert exact codes;
- :class:`LmtpServer` is a tiny LMTP server (TCP on 127.0.0.1 or a unix
  socket) run in a thread, which records every transaction it accepted;
- :func:`files_in` / :func:`wait_files` read what a delivery wrote.
"""

from __future__ import annotations

import os
import re
import socket
import socketserver
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import Daemon, wait_for

MSG = (b"From: Alice <alice@example.org>\r\nTo: team@localhost\r\nSubject: e2e\r\n\r\n"
       b"first line\r\n.leading dot\r\n\r\nFrom the start\r\nlast line\r\n")
#: what a local delivery stores after the trace headers (LF endings, unstuffed)
BODY = (b"From: Alice <alice@example.org>\nTo: team@localhost\nSubject: e2e\n\n"
        b"first line\n.leading dot\n\nFrom the start\nlast line\n")


def _reply(sock_file: object) -> tuple[int, str]:
    lines = []
    while True:
        line = sock_file.readline()  # type: ignore[attr-defined]
        if not line:
            raise ConnectionError("connection closed by the daemon")
        text = line.decode().rstrip("\r\n")
        lines.append(text)
        if text[3:4] != "-":
            return int(text[:3]), "\n".join(x[4:] for x in lines)


@dataclass
class Transaction:
    mail: tuple[int, str] = (0, "")
    rcpts: list[tuple[int, str]] = field(default_factory=list)
    data: tuple[int, str] | None = None


def smtp_send(port: int, sender: str, rcpts: Sequence[str], body: bytes = MSG,
              helo: str = "client.example", source: str | None = None) -> Transaction:
    """One transaction; DATA is sent only when a recipient was accepted.
    ``source``: the client's address (another loopback one, 127.0.0.2...)."""
    t = Transaction()
    with socket.create_connection(("127.0.0.1", port), timeout=30,
                                  source_address=(source, 0) if source else None) as s:
        f = s.makefile("rb")
        assert _reply(f)[0] == 220

        def cmd(line: str) -> tuple[int, str]:
            s.sendall(line.encode() + b"\r\n")
            return _reply(f)

        assert cmd(f"EHLO {helo}")[0] == 250
        t.mail = cmd(f"MAIL FROM:<{sender}>")
        if t.mail[0] != 250:
            return t
        for r in rcpts:
            t.rcpts.append(cmd(f"RCPT TO:<{r}>"))
        if any(code == 250 for code, _ in t.rcpts):
            assert cmd("DATA")[0] == 354
            stuffed = b"\r\n".join(b"." + x if x.startswith(b".") else x
                                   for x in body.split(b"\r\n"))
            s.sendall(stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n")
            t.data = _reply(f)
        cmd("QUIT")
    return t


def files_in(folder: Path) -> list[bytes]:
    if not folder.is_dir():
        return []
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]


def wait_files(folder: Path, n: int = 1, timeout: float = 20.0) -> list[bytes]:
    """The contents of the files in ``folder`` once there are at least ``n``."""
    wait_for(lambda: len(files_in(folder)) >= n, timeout)
    return files_in(folder)


def wait_file(path: Path, timeout: float = 20.0) -> bytes:
    """A file's content once it exists and is not empty (see :func:`wait_delivered`)."""
    wait_for(lambda: path.is_file() and path.stat().st_size > 0, timeout)
    return path.read_bytes()


def delivered(daemon: Daemon, rcpt: str, result: str = "Ok") -> int:
    """How many deliveries for ``rcpt`` the daemon logged with ``result``."""
    pattern = re.compile(rf"delivery evpid=\S+ .*(?:to|rcpt)=<{re.escape(rcpt)}> "
                         rf".*result=\"?{result}\b")
    return sum(1 for line in daemon.log().splitlines() if pattern.search(line))


def wait_delivered(daemon: Daemon, rcpt: str, n: int = 1, timeout: float = 20.0) -> None:
    """Wait until ``n`` deliveries for ``rcpt`` are finished (files complete)."""
    wait_for(lambda: delivered(daemon, rcpt) >= n, timeout)


def split_delivery(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(Return-Path + Delivered-To lines, Received header, the rest) of a stored message."""
    head, sep, rest = data.partition(b"\nReceived: ")
    assert sep, data[:200]
    received, sep, body = rest.partition(b"\nFrom: ")
    assert sep, data[:300]
    return head, b"Received: " + received, b"From: " + body


# --- a small LMTP server ------------------------------------------------------


@dataclass
class LmtpTransaction:
    lhlo: str
    mail_from: str
    rcpts: list[str]
    data: bytes  # as received: CRLF line endings, dot-stuffed, without the final "."


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        w = self.wfile.write
        w(b"220 lmtp.test LMTP ready\r\n")
        lhlo, mail, rcpts = "", "", []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "LHLO":
                lhlo = cmd[5:]
                w(b"250-lmtp.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
            elif verb == "MAIL":
                mail = cmd[10:].split(">", 1)[0].lstrip("<")
                rcpts = []
                w(b"250 2.1.0 ok\r\n")
            elif verb == "RCPT":
                rcpts.append(cmd[8:].split(">", 1)[0].lstrip("<"))
                w(b"250 2.1.5 ok\r\n")
            elif verb == "DATA":
                w(b"354 go ahead\r\n")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                    data += chunk
                with self.server.lock:
                    self.server.transactions.append(LmtpTransaction(lhlo, mail, rcpts, data))
                for _ in rcpts:
                    w(b"250 2.0.0 delivered\r\n")
            elif verb == "RSET":
                mail, rcpts = "", []
                w(b"250 2.0.0 ok\r\n")
            elif verb == "QUIT":
                w(b"221 2.0.0 bye\r\n")
                return
            else:
                w(b"500 5.5.1 what\r\n")


class _Server(socketserver.ThreadingMixIn, socketserver.BaseServer):
    daemon_threads = True
    transactions: list[LmtpTransaction]
    lock: threading.Lock


class _TcpServer(_Server, socketserver.TCPServer):
    allow_reuse_address = True


class _UnixServer(_Server, socketserver.UnixStreamServer):
    pass


class LmtpServer:
    """``LmtpServer()`` listens on 127.0.0.1, ``LmtpServer(path)`` on a unix socket."""

    def __init__(self, path: str | None = None) -> None:
        if path is None:
            self.server: _Server = _TcpServer(("127.0.0.1", 0), _Handler)
            self.address = f"127.0.0.1:{self.server.server_address[1]}"  # type: ignore[index]
        else:
            self.server = _UnixServer(path, _Handler)
            os.chmod(path, 0o777)  # the delivery runs as another user
            self.address = path
        self.server.transactions = []
        self.server.lock = threading.Lock()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def transactions(self) -> list[LmtpTransaction]:
        with self.server.lock:
            return list(self.server.transactions)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def unstuff_lmtp(data: bytes) -> bytes:
    """LMTP DATA bytes as a stored file would hold them: LF endings, dots unstuffed."""
    lines = data.split(b"\r\n")
    return b"\n".join(x[1:] if x.startswith(b".") else x for x in lines)


def free_unix_path(folder: Path, name: str) -> str:
    path = folder / name
    if path.exists():
        path.unlink()
    return str(path)


def socket_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False
