"""One line per event, ``key=value``, to syslog or stderr.

Every process logs through :func:`event`. Values are quoted when they hold
blanks or ``=``, and control characters are escaped so a hostile peer cannot
forge log lines. Secrets are never passed here.
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


def _escape(value: object) -> str:
    text = str(value)
    if _UNSAFE.search(text):
        text = _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if not text or " " in text or "=" in text:
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
    """Log one event: ``subsystem name key=value ...`` (None values are omitted)."""
    if level == logging.DEBUG and (subsystem in _traced or "all" in _traced):
        level = logging.INFO
    if not _LOGGER.isEnabledFor(level):
        return
    parts = [subsystem, name]
    parts.extend(f"{k.replace('_', '-')}={_escape(v)}" for k, v in fields.items() if v is not None)
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
