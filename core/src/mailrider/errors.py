"""Error types that carry their SMTP meaning.

A permanent failure is never confused with a temporary one: a backend that
is down raises :class:`TempFail`, a key that is absent is a normal "not
found" result, and a peer that breaks the protocol raises
:class:`ProtocolViolation`.
"""

from __future__ import annotations

import os


def plain_reason(exc: BaseException) -> str:
    """What went wrong, in plain words for a log line or a reply: an OS error
    is its system message (``Connection refused``), with the path it concerns
    first when there is one; never a Python repr such as asyncio's
    ``Connect call failed ('127.0.0.1', 25)`` (the caller names the host)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        reason = getattr(exc, "reason", None)  # ssl.SSLError
        if isinstance(reason, str) and reason:
            text = reason.replace("_", " ").lower()
        elif exc.errno is not None and exc.errno > 0 and reason is None:
            text = os.strerror(exc.errno)
        else:
            text = exc.strerror or type(exc).__name__
        return f"{exc.filename}: {text}" if exc.filename else text
    return str(exc) or type(exc).__name__


class MailriderError(Exception):
    """Base of every error mailrider raises on purpose."""


class ConfigError(MailriderError):
    """A configuration problem, printed as ``file:line: message``."""

    def __init__(self, message: str, file: str = "", line: int = 0) -> None:
        self.message = message
        self.file = file
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.file:
            return f"{self.file}:{self.line}: {self.message}"
        return self.message


class SMTPFailure(MailriderError):
    """A failure with the reply it implies: ``code``, enhanced ``status``, ``text``."""

    code = 451
    status = "4.3.0"

    def __init__(self, text: str, code: int | None = None, status: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def reply(self) -> str:
        return f"{self.code} {self.status} {self.text}"


class TempFail(SMTPFailure):
    """Temporary failure: 4xx, the client or the scheduler tries again."""

    code = 451
    status = "4.3.0"


class PermFail(SMTPFailure):
    """Permanent failure: 5xx, the mail bounces."""

    code = 550
    status = "5.0.0"


class ProtocolViolation(SMTPFailure):
    """The remote side broke the protocol."""

    code = 500
    status = "5.5.2"


def delivery_outcome(exc: Exception) -> tuple[str, str]:
    """A failed delivery's (status, reply) as the queue takes it: a
    :class:`PermFail` or :class:`TempFail` says its own reply; anything else is
    a temporary failure naming the error (a fault is never a bounce)."""
    if isinstance(exc, PermFail):
        return "permfail", exc.reply()
    if isinstance(exc, TempFail):
        return "tempfail", exc.reply()
    return "tempfail", f"451 4.3.0 delivery error: {type(exc).__name__}: {exc}"
