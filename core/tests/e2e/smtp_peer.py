"""Remote mail servers for the relay tests, on loopback.

- :class:`SmtpPeer` is a small scriptable SMTP server run in a thread: what
  it answers to RCPT and to the end of data, whether it greets at all,
  closes in the middle of DATA, offers STARTTLS (with a test certificate)
  and requires AUTH PLAIN. It records every transaction it accepted.
- :func:`make_certs` makes a test CA and a server certificate for
  127.0.0.1 with the ``openssl`` command.
- :class:`DnsThread` runs the test DNS server (core/tests/dns/dnsserver.py)
  in its own thread and event loop, so a daemon under test can ask it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "dns"))

from dnsserver import DNSServer, Records


@dataclass
class Received:
    helo: str
    mail: str  # the whole MAIL FROM command line
    rcpts: list[str]  # the whole RCPT TO command lines
    data: bytes  # as received: CRLF, dot-stuffed, without the final "."
    tls: bool = False
    auth: str = ""
    #: the client certificate (ssl getpeercert()), when one was verified
    peer_cert: dict[str, Any] | None = None
    tls_version: str = ""
    cipher: str = ""
    #: which connection carried it (1 for the peer's first), and its place there
    conn: int = 0
    nth: int = 0


@dataclass
class Behaviour:
    greet: bool = True
    greeting: str = "220 peer.test ESMTP"
    rcpt: Callable[[str], str] = lambda line: "250 2.1.5 Ok"
    data_end: Callable[[], str] = lambda: "250 2.0.0 Ok: queued"
    #: when set, the end-of-data reply chosen by the message (over data_end)
    data_reply: Callable[[bytes], str] | None = None
    close_in_data: bool = False
    #: seconds to wait before answering the end of data (keeps sessions open
    #: at once, so limits on concurrent connections show)
    data_delay: float = 0.0
    dsn: bool = False
    tls: ssl.SSLContext | None = None
    auth: tuple[str, str] | None = None


class SmtpPeer:
    def __init__(self, behaviour: Behaviour | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.b = behaviour or Behaviour()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(50)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.received: list[Received] = []
        self.connections = 0
        self.commands: list[str] = []
        self.tls_errors: list[str] = []
        #: connections open now, and the most open at once
        self.open_now = 0
        self.open_peak = 0
        self._count_lock = threading.Lock()
        self._ended: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._session, args=(conn, self.connections),
                             daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> SmtpPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _session(self, conn: socket.socket, number: int = 0) -> None:
        conn.settimeout(30)
        with self._count_lock:
            self.open_now += 1
            self.open_peak = max(self.open_peak, self.open_now)
        try:
            self._talk(conn, number)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()
            self._closed(number)

    def _closed(self, number: int) -> None:
        """The session is over (at QUIT, before the 221: a client that waits for
        it before its next connection never overlaps two here)."""
        with self._count_lock:
            if number not in self._ended:
                self._ended.add(number)
                self.open_now -= 1

    def _talk(self, conn: Any, number: int = 0) -> None:
        b = self.b
        nth = 0
        if not b.greet:
            self._stop.wait(60)
            return
        f = conn.makefile("rb")

        def w(line: str) -> None:
            conn.sendall(line.encode() + b"\r\n")

        w(b.greeting)
        helo, mail, rcpts, tls, authed = "", "", [], False, ""
        peer_cert: dict[str, Any] | None = None
        tls_info = ("", "")
        while True:
            raw = f.readline(4096)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.commands.append(line)
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                helo = line[5:]
                ext = ["PIPELINING", "8BITMIME", "SIZE 10000000"]
                if b.dsn:
                    ext.append("DSN")
                if b.tls is not None and not tls:
                    ext.append("STARTTLS")
                if b.auth is not None and tls:
                    ext.append("AUTH PLAIN")
                lines = ["peer.test", *ext]
                for i, x in enumerate(lines):
                    w(f"250{'-' if i < len(lines) - 1 else ' '}{x}")
            elif verb == "STARTTLS" and b.tls is not None and not tls:
                w("220 2.0.0 Ready to start TLS")
                try:
                    conn = b.tls.wrap_socket(conn, server_side=True)
                except (OSError, ValueError) as exc:
                    self.tls_errors.append(str(exc))
                    raise
                peer_cert = conn.getpeercert() or None
                tls_info = (conn.version() or "", (conn.cipher() or ("",))[0])
                f = conn.makefile("rb")
                tls = True
            elif verb == "AUTH" and b.auth is not None and tls:
                parts = line.split(" ")
                token = base64.b64decode(parts[2]) if len(parts) > 2 else b""
                _, user, pw = token.split(b"\0") if token.count(b"\0") == 2 else (b"", b"", b"")
                if (user.decode(), pw.decode()) == b.auth:
                    authed = user.decode()
                    w("235 2.7.0 Authentication successful")
                else:
                    w("535 5.7.8 Authentication credentials invalid")
            elif verb == "MAIL":
                if b.auth is not None and not authed:
                    w("530 5.7.0 Authentication required")
                    continue
                mail, rcpts = line, []
                w("250 2.1.0 Ok")
            elif verb == "RCPT":
                reply = b.rcpt(line)
                if reply.startswith("2"):
                    rcpts.append(line)
                w(reply)
            elif verb == "DATA":
                if not rcpts:
                    w("554 5.5.1 No valid recipients")
                    continue
                w("354 End data with <CR><LF>.<CR><LF>")
                data = bytearray()
                while True:
                    chunk = f.readline(65536)
                    if not chunk:
                        return
                    if chunk == b".\r\n":
                        break
                    data += chunk
                    if b.close_in_data and len(data) > 10:
                        return
                reply = b.data_reply(bytes(data)) if b.data_reply else b.data_end()
                nth += 1
                if reply.startswith("2"):
                    self.received.append(Received(helo, mail, rcpts, bytes(data), tls, authed,
                                                  peer_cert, *tls_info, conn=number, nth=nth))
                if b.data_delay:
                    self._stop.wait(b.data_delay)
                w(reply)
            elif verb == "RSET":
                mail, rcpts = "", []
                w("250 2.0.0 Ok")
            elif verb == "QUIT":
                self._closed(number)
                w("221 2.0.0 Bye")
                return
            else:
                w("502 5.5.2 Error: command not recognized")


def make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server.key): a CA and a certificate for 127.0.0.1."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=mailrider test CA",
        "-days", "2", "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout",
        "server.key", "-out", "server.csr")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "server.pem", "-extfile", "ext.cnf")
    for name in ("ca.pem", "server.pem"):
        os.chmod(folder / name, 0o644)
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


@dataclass
class DnsThread:
    """The test DNS server on 127.0.0.1, served from a thread."""

    records: Records
    #: every answer with the AD bit (but those for ``unsigned`` names)
    ad: bool = False
    unsigned: set[str] = field(default_factory=set)
    server: DNSServer | None = None
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> DnsThread:
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            server = DNSServer(self.records, ad=self.ad)
            server.unsigned = self.unsigned
            self.server = self._loop.run_until_complete(server.start())
            self.port = self.server.port
            self._ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self.server is not None
        fut = asyncio.run_coroutine_threadsafe(self.server.close(), self._loop)
        fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
