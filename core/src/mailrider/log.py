"""One line per event, ``key=value``, to syslog or stderr.

Every process logs through :func:`event`. Lines follow OpenSMTPD's layout
(docs/logging.md): an event of an SMTP session (or of one envelope's
delivery) starts with its 16-digit id, then the subsystem, the event and its
fields: ``0123456789abcdef smtp connected address=192.0.2.1 host=mx.test``.
Values are quoted when they hold blanks or ``=`` (or are :class:`Quoted`),
and control characters are escaped so a hostile peer cannot forge log lines.
Secrets are never passed here.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import threading
import time
from collections.abc import Callable

from mailrider import paths

_LOGGER = logging.getLogger("mailrider")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\"\\]")
_verbose = False
_traced: set[str] = set()
#: writes an event line straight to stderr (``-d``) or syslog, in the bytes the
#: logging handler would write (its machinery costs more than an SMTP command)
_fast: Callable[[int, str], None] | None = None
#: syslog severities of logging's levels
_SEVERITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


def _stderr_writer(role: str) -> Callable[[int, str], None]:
    """``asctime role[pid]: line`` as logging.Formatter would write it, to stderr."""
    lock = threading.Lock()
    stamp = ["", -1]  # the formatted second, and which second it is

    def write(level: int, line: str) -> None:
        now = time.time()
        sec = int(now)
        with lock:
            if stamp[1] != sec:
                stamp[0] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec))
                stamp[1] = sec
            sys.stderr.write(f"{stamp[0]},{int((now - sec) * 1000):03d} {role}"
                             f"[{os.getpid()}]: {line}\n")
    return write


def _syslog_writer(role: str, handler: logging.handlers.SysLogHandler
                   ) -> Callable[[int, str], None]:
    """``<pri>mailrider-role[pid]: line\0`` on the handler's socket, as its emit()
    would send it; on any socket error the handler itself takes over (it reconnects)."""
    facility = handler.facility << 3

    def write(level: int, line: str) -> None:
        data = (f"<{facility | _SEVERITY.get(level, 6)}>mailrider-{role}[{os.getpid()}]: "
                f"{line}\0").encode("utf-8", "replace")
        sock = getattr(handler, "socket", None)
        try:
            if sock is None:
                raise OSError("no syslog socket")
            sock.send(data)
        except OSError:
            _LOGGER.log(level, line)
    return write


def duration_text(seconds: int) -> str:
    """``1d2h3m4s`` with the zero parts left out, ``0s`` for none: OpenSMTPD's
    form of a delay in logs and of ``uptime.human`` in smtpctl."""
    if seconds == 0:
        return "0s"
    sign, t = ("-", -seconds) if seconds < 0 else ("", seconds)
    parts = [(t // 86400, "d"), (t // 3600 % 24, "h"), (t // 60 % 60, "m"), (t % 60, "s")]
    return sign + "".join(f"{v}{u}" for v, u in parts if v)


class Quoted(str):
    """A value always written in double quotes, as OpenSMTPD writes it
    (``result="Ok"``): log parsers written for it expect the quotes."""

    __slots__ = ()


def _escape(value: object) -> str:
    text = str(value)
    if _UNSAFE.search(text):
        text = _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if not text or " " in text or "=" in text or isinstance(value, Quoted):
        return f'"{text}"'
    return text


def setup(role: str, *, foreground: bool, verbose: bool = False) -> None:
    """Configure logging for one process: stderr with -d, else syslog (mail facility)."""
    global _verbose, _fast
    _verbose = verbose
    _fast = None
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if foreground or not os.path.exists(paths.SYSLOG_SOCKET):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s {role}[%(process)d]: %(message)s"))
        _fast = _stderr_writer(role)
    else:
        handler = logging.handlers.SysLogHandler(
            address=paths.SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(logging.Formatter(f"mailrider-{role}[%(process)d]: %(message)s"))
        if handler.unixsocket:
            _fast = _syslog_writer(role, handler)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = verbose
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)


def trace(subsystem: str, on: bool) -> None:
    """Turn debug events of one subsystem (or "all") on or off at run time."""
    if on:
        _traced.add(subsystem)
    else:
        _traced.discard(subsystem)
        if subsystem == "all":
            _traced.clear()


def event(subsystem: str, name: str, /, *, level: int = logging.INFO, **fields: object) -> None:
    """Log one event: ``[session] subsystem name key=value ...`` (None values are
    omitted); a ``session`` field (a session or envelope id) leads the line."""
    emit(subsystem, name, fields, level)


def emit(subsystem: str, name: str, fields: dict[str, object],
         level: int = logging.INFO) -> None:
    """:func:`event` with the fields as a dict (for keys such as ``from``)."""
    if level == logging.DEBUG and (subsystem in _traced or "all" in _traced):
        level = logging.INFO
    if not _LOGGER.isEnabledFor(level):
        return
    session = fields.get("session")
    parts = [_escape(session), subsystem, name] if session else [subsystem, name]
    parts.extend(f"{k.replace('_', '-')}={_escape(v)}" for k, v in fields.items()
                 if v is not None and k != "session")
    if _fast is not None:
        _fast(level, " ".join(parts))
    else:
        _LOGGER.log(level, " ".join(parts))


def debug(subsystem: str, name: str, /, **fields: object) -> None:
    event(subsystem, name, level=logging.DEBUG, **fields)


def warning(subsystem: str, name: str, /, **fields: object) -> None:
    event(subsystem, name, level=logging.WARNING, **fields)


def error(subsystem: str, name: str, /, **fields: object) -> None:
    event(subsystem, name, level=logging.ERROR, **fields)
