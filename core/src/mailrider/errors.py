"""Error types that carry their SMTP meaning.

A permanent failure is never confused with a temporary one: a backend that
is down raises :class:`TempFail`, a key that is absent is a normal "not
found" result, and a peer that breaks the protocol raises
:class:`ProtocolViolation`.
"""

from __future__ import annotations


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
