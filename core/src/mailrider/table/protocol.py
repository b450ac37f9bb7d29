"""The lines of the stdio table protocol 0.1 (docs/table-protocol.md), as one pure codec.

Both ends use it: the daemon's client (:mod:`mailrider.table.proc`) and the
backends' SDK (:mod:`mailrider.table.sdk`). Nothing here does I/O: functions
turn values into lines (each ending in ``\\n``) and lines (without their
``\\n``) into values. A line that breaks the protocol raises
:class:`ProtocolError`; when the line can still be tied to a request, the
error carries the operation and id so that the caller can answer or fail
that request. :class:`LineSplitter` cuts a byte stream into lines, never
holding more than :data:`mailrider.limits.TABLE_LINE_MAX` bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from mailrider import limits
from mailrider.table.base import SERVICES

PROTOCOL_VERSION = "0.1"

#: the operations of a request, in the order of docs/table-protocol.md §3
OPS = ("check", "lookup", "fetch", "update")

REGISTER_READY = "register|ready"
CONFIG_READY = "config|ready"


class ProtocolError(ValueError):
    """A line that is not valid in the protocol.

    ``op`` and ``rid`` are set when the line names a request (a reply is
    owed for it, or a request in flight is answered by it).
    """

    def __init__(self, message: str, *, op: str | None = None, rid: str | None = None) -> None:
        super().__init__(message)
        self.op = op
        self.rid = rid


# -- handshake ---------------------------------------------------------------


def config_lines(smtpd_version: str, table_name: str, version: str = PROTOCOL_VERSION) -> str:
    """The daemon's four handshake lines (§2)."""
    return (
        f"config|smtpd-version|{smtpd_version}\n"
        f"config|protocol|{version}\n"
        f"config|tablename|{table_name}\n"
        f"{CONFIG_READY}\n"
    )


def parse_config(line: str) -> tuple[str, str] | None:
    """A ``config|KEY|VALUE`` line as (key, value); None for ``config|ready``."""
    if line == CONFIG_READY:
        return None
    parts = line.split("|", 2)
    if len(parts) != 3 or parts[0] != "config":
        raise ProtocolError("unexpected line in handshake")
    return parts[1], parts[2]


def check_version(version: str | None) -> None:
    """Refuse a handshake whose ``config|protocol`` is missing or not ours."""
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r}")


def register_lines(services: Iterable[str]) -> str:
    """The backend's answer to the handshake: its services, then ready."""
    return "".join(f"register|{service}\n" for service in services) + REGISTER_READY + "\n"


def parse_register(line: str) -> str | None:
    """The service of a ``register|SERVICE`` line; None for ``register|ready``.

    A service that is not one of §7 raises ProtocolError.
    """
    if line == REGISTER_READY:
        return None
    if not line.startswith("register|"):
        raise ProtocolError(f"unexpected line in handshake: {line[:80]!r}")
    service = line[len("register|") :]
    if service not in SERVICES:
        raise ProtocolError(f"registered unknown service {service!r}")
    return service


# -- requests ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One request line: ``service`` is None for update, ``key`` None for fetch and update."""

    table: str
    op: str
    rid: str
    service: str | None = None
    key: str | None = None
    timestamp: str = ""


def timestamp() -> str:
    """The wall-clock time as the protocol writes it: seconds and six digits of microseconds."""
    usec = time.time_ns() // 1000
    return f"{usec // 1_000_000}.{usec % 1_000_000:06d}"


def request_prefix(version: str = PROTOCOL_VERSION) -> str:
    """The fixed start of every request line, up to and without the timestamp."""
    return f"table|{version}|"


def format_request(
    table: str,
    op: str,
    rid: str,
    service: str | None = None,
    key: str | None = None,
    stamp: str | None = None,
    *,
    prefix: str | None = None,
) -> str:
    """A request line; ``stamp`` defaults to now. ValueError for values the line cannot carry.

    A key with CR or LF, an id or service with ``|``, or an operation without
    its fields is refused (the key, last on the line, may contain ``|``).
    """
    head = f"{prefix or request_prefix()}{stamp or timestamp()}|{table}|{op}|"
    if op == "update":
        return f"{head}{rid}\n"
    if service is None or "|" in service or "|" in rid:
        raise ValueError(f"malformed {op} request")
    if op == "fetch":
        return f"{head}{service}|{rid}\n"
    if op not in ("check", "lookup") or key is None:
        raise ValueError(f"malformed {op} request")
    if "\r" in key or "\n" in key:
        raise ValueError("key contains CR or LF")
    return f"{head}{service}|{rid}|{key}\n"


def parse_request(line: str) -> Request:
    """A request line as a :class:`Request`.

    ProtocolError for anything else; its ``op``/``rid`` are set when a reply
    is owed all the same (an unknown operation, a check or lookup without a
    key), so that the backend can answer ``error``.
    """
    parts = line.split("|", 5)
    if len(parts) < 6 or parts[0] != "table":
        raise ProtocolError("malformed request")
    stamp, table, op, rest = parts[2], parts[3], parts[4], parts[5]
    service: str | None = None
    key: str | None = None
    if op == "update":
        rid = rest
    elif op == "fetch":
        service, _, rid = rest.partition("|")
    elif op in ("check", "lookup"):
        service, _, rest = rest.partition("|")
        rid, sep, key = rest.partition("|")
        if not sep:
            raise ProtocolError("request without key", op=op, rid=rid or None)
    else:
        fields = rest.split("|")
        rid = fields[1] if len(fields) > 1 else fields[0]
        raise ProtocolError("unsupported operation", op=op, rid=rid or None)
    if not rid or "|" in rid:
        raise ProtocolError("malformed request")
    return Request(table, op, rid, service, key, stamp)


# -- replies -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """One reply line. ``status`` is ``found``, ``not-found``, ``ok`` or ``error``;
    ``value`` is the value of a found lookup or fetch, or an error's message."""

    op: str
    rid: str
    status: str
    value: str | None = None


def format_found(op: str, rid: str, value: str | None = None) -> str:
    """``found`` (with the value for lookup and fetch). ValueError for an empty value or CR/LF."""
    if op == "check":
        return f"check-result|{rid}|found\n"
    if not value or "\r" in value or "\n" in value:
        raise ValueError("invalid value")
    return f"{op}-result|{rid}|found|{value}\n"


def format_not_found(op: str, rid: str) -> str:
    return f"{op}-result|{rid}|not-found\n"


def format_ok(rid: str) -> str:
    return f"update-result|{rid}|ok\n"


def format_error(op: str, rid: str, message: str = "") -> str:
    """``error``, with a message when there is one (CR, LF and ``|``-free is the caller's job)."""
    if message:
        return f"{op}-result|{rid}|error|{message}\n"
    return f"{op}-result|{rid}|error\n"


def parse_result(line: str) -> Result:
    """A reply line as a :class:`Result`.

    ProtocolError for a line that is not a valid reply; its ``rid`` is the
    id the line names (when it names one) and its ``op`` the operation, so
    that the request in flight can be failed.
    """
    kind, _, rest = line.partition("|")
    rid, sep, status = rest.partition("|")
    op = kind[: -len("-result")] if kind.endswith("-result") else None
    if not sep or op not in OPS:
        raise ProtocolError("not a reply", rid=rid or None)
    if status == "error" or status.startswith("error|"):
        return Result(op, rid, "error", status[6:] or None)
    if "\r" in status:
        raise ProtocolError("CR in reply", op=op, rid=rid)
    if op == "update":
        if status == "ok":
            return Result(op, rid, "ok")
    elif status == "not-found":
        return Result(op, rid, "not-found")
    elif op == "check":
        if status.startswith("found"):
            return Result(op, rid, "found")
    elif status.startswith("found|") and len(status) > 6:
        return Result(op, rid, "found", status[6:])
    raise ProtocolError("bad status", op=op, rid=rid)


def format_result(result: Result) -> str:
    """The line of a :class:`Result` (the inverse of :func:`parse_result`)."""
    if result.status == "found":
        return format_found(result.op, result.rid, result.value)
    if result.status == "not-found":
        return format_not_found(result.op, result.rid)
    if result.status == "ok":
        return format_ok(result.rid)
    return format_error(result.op, result.rid, result.value or "")


# -- byte stream -------------------------------------------------------------


class LineSplitter:
    """Cuts a byte stream into lines (without ``\\n``), holding at most ``limit`` bytes.

    A line longer than ``limit`` is dropped whole (its start and its end,
    however many reads it spans); :meth:`feed` says how many were dropped.
    """

    __slots__ = ("_buffer", "_limit", "_skipping")

    def __init__(self, limit: int = limits.TABLE_LINE_MAX) -> None:
        self._buffer = b""
        self._limit = limit
        self._skipping = False

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """The complete lines ``data`` ends, and the number of over-long lines dropped."""
        dropped = 0
        if b"\n" not in data:
            self._buffer += data
            if len(self._buffer) > self._limit:
                if not self._skipping:
                    dropped = 1
                self._skipping = True
                self._buffer = b""
            return [], dropped
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        if self._skipping:
            del lines[0]
            self._skipping = False
        if len(self._buffer) > self._limit:
            self._buffer = b""
            self._skipping = True
            dropped += 1
        limit = self._limit
        if any(len(line) > limit for line in lines):
            kept = [line for line in lines if len(line) <= limit]
            dropped += len(lines) - len(kept)
            lines = kept
        return lines, dropped
