"""LMTP delivery: a small blocking LMTP client (RFC 2033).

One session per call: greeting, ``LHLO``, ``MAIL FROM``, one ``RCPT TO``
per recipient, ``DATA``, the message (LF turned into CRLF, lines starting
with ``.`` doubled, RFC 5321 4.5.2), ``.``, then one reply per accepted
recipient (RFC 2033 4.2), and ``QUIT``.

Invariants:

- The result has one entry per recipient, in order: ``None`` when the
  server took the message for it, else the failure its reply means (4xx
  :class:`TempFail`, 5xx :class:`PermFail`, with the server's code,
  enhanced status when it gave one, and sanitised text). A failure of the
  whole session (connect, timeout, lost connection, protocol error, a
  refused greeting or LHLO) makes every recipient still undecided a
  :class:`TempFail`.
- No DNS: ``dest`` is ``/path/to/socket``, ``IPv4:port``, ``[IPv6]:port``
  or ``localhost:port``; another host name needs the ``resolve`` hook.
- Timeouts are RFC 5321 4.5.3.2's per step, never beyond the overall
  ``timeout``. Replies are bounded in line length and line count.
- A sender or recipient with a control character never reaches the wire.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Callable, Iterator

from mailrider import limits
from mailrider.delivery.common import sanitize_text
from mailrider.delivery.message import Message
from mailrider.errors import PermFail, ProtocolViolation, TempFail

__all__ = ["LMTPEncoder", "deliver_lmtp", "parse_dest"]

Result = Exception | None
Resolver = Callable[[str], list[str]]
SockAddr = str | tuple[str, int] | tuple[str, int, int, int]

_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |\Z)")


class _SessionFailure(Exception):
    """Ends the session; every undecided recipient gets ``failure``."""

    def __init__(self, failure: TempFail | PermFail) -> None:
        super().__init__(failure.text)
        self.failure = failure


def parse_dest(dest: str, resolve: Resolver | None = None) -> tuple[int, list[SockAddr]]:
    """``dest`` -> (address family, candidate socket addresses). ValueError if malformed."""
    if dest.startswith("/"):
        return socket.AF_UNIX, [dest]
    if dest.startswith("["):
        host, sep, port_text = dest[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad lmtp destination {dest!r}")
        addr6 = ipaddress.IPv6Address(host)
        return socket.AF_INET6, [(str(addr6), _port(port_text, dest), 0, 0)]
    host, sep, port_text = dest.rpartition(":")
    if not sep or not host:
        raise ValueError(f"bad lmtp destination {dest!r} (host:port or /socket)")
    port = _port(port_text, dest)
    try:
        return socket.AF_INET, [(str(ipaddress.IPv4Address(host)), port)]
    except ValueError:
        pass
    if resolve is not None:
        addrs = resolve(host)
    elif host.lower() == "localhost":
        addrs = ["127.0.0.1"]  # RFC 6761 6.3
    else:
        raise ValueError(f"lmtp host {host!r} is not an address (no DNS here)")
    if not addrs:
        raise ValueError(f"lmtp host {host!r} has no address")
    ips = [ipaddress.ip_address(a) for a in addrs]
    if ips[0].version == 6:
        return socket.AF_INET6, [(str(a), port, 0, 0) for a in ips if a.version == 6]
    return socket.AF_INET, [(str(a), port) for a in ips if a.version == 4]


def _port(text: str, dest: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in lmtp destination {dest!r}")
    return int(text)


class LMTPEncoder:
    """Turn LF-terminated message bytes into the DATA stream, chunk by chunk.

    Stateless across chunk boundaries except for "at start of line", so a
    chunk may end anywhere. :meth:`end` finishes the last line and adds the
    terminating ``.``.
    """

    __slots__ = ("_bol",)

    def __init__(self) -> None:
        self._bol = True

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        out = chunk.replace(b"\n.", b"\n..")
        if self._bol and out.startswith(b"."):
            out = b"." + out
        self._bol = chunk.endswith(b"\n")
        return out.replace(b"\n", b"\r\n")

    def end(self) -> bytes:
        return (b"" if self._bol else b"\r\n") + b".\r\n"


class _Conn:
    """Blocking line reader/writer with one deadline per step."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = bytearray()

    def _settimeout(self, step: float) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("overall lmtp timeout")
        self.sock.settimeout(min(step, remaining))

    def send(self, data: bytes, step: float) -> None:
        self._settimeout(step)
        self.sock.sendall(data)

    def _line(self, step: float) -> bytes:
        searched = 0
        while True:
            nl = self.buf.find(b"\n", searched)
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
                return line.removesuffix(b"\r")
            searched = len(self.buf)
            if searched > limits.LMTP_REPLY_LINE_MAX:
                raise ProtocolViolation("lmtp: reply line too long")
            self._settimeout(step)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionResetError("lmtp: connection closed by server")
            self.buf += data

    def reply(self, step: float) -> tuple[int, str]:
        """Read one (possibly multi-line) reply: (code, text lines joined by LF)."""
        lines: list[str] = []
        code = ""
        while True:
            raw = self._line(step)
            text = raw.decode("utf-8", "replace")
            if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
                raise ProtocolViolation(f"lmtp: malformed reply {sanitize_text(text)!r}")
            if code and text[:3] != code:
                raise ProtocolViolation("lmtp: reply code changed within a reply")
            code = text[:3]
            lines.append(text[4:])
            if len(lines) > limits.LMTP_REPLY_LINES_MAX:
                raise ProtocolViolation("lmtp: reply has too many lines")
            if text[3:4] != "-":
                return int(code), "\n".join(lines)


def _failure(code: int, text: str) -> TempFail | PermFail:
    """The failure a non-2xx reply means, keeping the server's code and status."""
    first = text.split("\n", 1)[0]
    m = _STATUS.match(first)
    status: str | None = None
    if m and m.group(1) == str(code)[0]:
        status = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        first = first[m.end() :]
    words = sanitize_text(first) or "(no text)"
    text_out = f"lmtp: {code} {words}"
    if 500 <= code < 600:
        return PermFail(text_out, code, status or "5.0.0")
    if 400 <= code < 500:
        return TempFail(text_out, code, status or "4.0.0")
    return TempFail(f"lmtp: unexpected reply {code} {words}", 451, "4.5.0")


def _session_error(where: str, exc: BaseException) -> TempFail:
    if isinstance(exc, TimeoutError | socket.timeout):
        return TempFail(f"lmtp: timeout {where}", 451, "4.4.2")
    if isinstance(exc, ProtocolViolation):
        return TempFail(f"{exc.text} {where}", 451, "4.5.0")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return TempFail(f"lmtp: {sanitize_text(reason)} {where}", 451, "4.4.2")


def _clean_address(address: str) -> bool:
    return all(c.isprintable() and c not in " <>" for c in address)


def _connect(dest: str, resolve: Resolver | None, deadline: float) -> socket.socket:
    try:
        family, addrs = parse_dest(dest, resolve)
    except ValueError as exc:
        raise _SessionFailure(TempFail(f"lmtp: {exc}", 451, "4.3.5")) from None
    last: BaseException | None = None
    for addr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("overall lmtp timeout")
            sock.settimeout(min(remaining, limits.LMTP_GREETING_TIMEOUT))
            sock.connect(addr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    assert last is not None
    raise _SessionFailure(
        TempFail(f"lmtp: cannot connect to {dest}: {_reason(last)}", 451, "4.4.1")
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _data_stream(msg: Message, prepend: bytes) -> Iterator[bytes]:
    enc = LMTPEncoder()
    if prepend:
        yield enc.feed(prepend)
    for chunk in msg.iter_chunks():
        yield enc.feed(chunk)
    yield enc.end()


def _quit(conn: _Conn) -> None:
    try:
        conn.deadline = min(conn.deadline, time.monotonic() + 5.0)
        conn.send(b"QUIT\r\n", 5.0)
        conn.reply(5.0)
    except (OSError, ProtocolViolation):
        pass


def deliver_lmtp(
    dest: str,
    msg_fd: int,
    *,
    sender: str,
    rcpts: list[str],
    lhlo: str,
    prepend: bytes = b"",
    timeout: float = limits.LMTP_TIMEOUT,
    resolve: Resolver | None = None,
) -> list[Exception | None]:
    """Deliver ``prepend`` + the message to ``rcpts`` over LMTP at ``dest``."""
    results: list[Result] = [None] * len(rcpts)
    undecided = set(range(len(rcpts)))
    deadline = time.monotonic() + timeout
    msg = Message(msg_fd)

    def decide(i: int, result: Result) -> None:
        results[i] = result
        undecided.discard(i)

    for i, rcpt in enumerate(rcpts):
        if not _clean_address(rcpt) or not rcpt:
            decide(i, PermFail("lmtp: invalid recipient address", 501, "5.1.3"))
    if not _clean_address(sender) or not _clean_address(lhlo) or not lhlo:
        fail = PermFail("lmtp: invalid sender address or LHLO name", 501, "5.1.7")
        return [results[i] if i not in undecided else fail for i in range(len(rcpts))]
    if not undecided:
        return results

    sock: socket.socket | None = None
    conn: _Conn | None = None
    where = "connecting"
    try:
        sock = _connect(dest, resolve, deadline)
        conn = _Conn(sock, deadline)

        where = "waiting for greeting"
        code, text = conn.reply(limits.LMTP_GREETING_TIMEOUT)
        if code != 220:
            raise _SessionFailure(_as_temp(_failure(code, text)))

        where = "after LHLO"
        conn.send(f"LHLO {lhlo}\r\n".encode(), limits.LMTP_COMMAND_TIMEOUT)
        code, text = conn.reply(limits.LMTP_COMMAND_TIMEOUT)
        if code != 250:
            raise _SessionFailure(_as_temp(_failure(code, text)))
        extensions = {ln.split(" ", 1)[0].upper() for ln in text.split("\n")[1:]}

        where = "after MAIL FROM"
        params = ""
        wanted = [rcpts[i] for i in sorted(undecided)]
        if not all(a.isascii() for a in [sender, *wanted]):
            if "SMTPUTF8" not in extensions:
                # RFC 6531 3.2: no SMTPUTF8 => an 8-bit address cannot go.
                raise _SessionFailure(
                    PermFail("lmtp: server does not support SMTPUTF8", 553, "5.6.7")
                )
            params = " SMTPUTF8"
        conn.send(f"MAIL FROM:<{sender}>{params}\r\n".encode(), limits.LMTP_COMMAND_TIMEOUT)
        code, text = conn.reply(limits.LMTP_COMMAND_TIMEOUT)
        if code // 100 != 2:
            raise _SessionFailure(_failure(code, text))

        accepted: list[int] = []
        for i in sorted(undecided):
            where = "after RCPT TO"
            conn.send(f"RCPT TO:<{rcpts[i]}>\r\n".encode(), limits.LMTP_COMMAND_TIMEOUT)
            code, text = conn.reply(limits.LMTP_COMMAND_TIMEOUT)
            if code // 100 == 2:
                accepted.append(i)
            else:
                decide(i, _failure(code, text))
        if not accepted:
            _quit(conn)
            return results

        where = "after DATA"
        conn.send(b"DATA\r\n", limits.LMTP_COMMAND_TIMEOUT)
        code, text = conn.reply(limits.LMTP_DATA_INIT_TIMEOUT)
        if code != 354:
            raise _SessionFailure(_failure(code, text))

        where = "sending message"
        for block in _data_stream(msg, prepend):
            if block:
                conn.send(block, limits.LMTP_DATA_BLOCK_TIMEOUT)

        # RFC 2033 4.2: one reply per accepted recipient, in RCPT order.
        for i in accepted:
            where = "after end of data"
            code, text = conn.reply(limits.LMTP_DATA_END_TIMEOUT)
            decide(i, None if code // 100 == 2 else _failure(code, text))
        _quit(conn)
    except _SessionFailure as exc:
        for i in list(undecided):
            decide(i, exc.failure)
        if conn is not None:
            _quit(conn)
    except (OSError, ProtocolViolation) as exc:
        failure = _session_error(where, exc)
        for i in list(undecided):
            decide(i, failure)
    finally:
        if sock is not None:
            sock.close()
    return results


def _as_temp(failure: TempFail | PermFail) -> TempFail:
    """A refused greeting or LHLO is the server's state, not the mail's: retry."""
    if isinstance(failure, TempFail):
        return failure
    return TempFail(failure.text, 451, "4.3.0")
