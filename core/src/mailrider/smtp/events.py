"""Events the SMTP server machine hands to the application.

Events marked *needs an answer* suspend the machine: it parses nothing more
until the application calls ``accept()``, ``reject()`` or ``reply()``.  The
others are information only.  Every session ends with exactly one
:class:`ConnectionClosed`, after which no event follows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailrider.smtp.address import Address, MailParams, RcptParams
from mailrider.smtp.reply import Reply

__all__ = [
    "Auth",
    "ConnectionClosed",
    "DataChunk",
    "DataEnd",
    "DataStart",
    "Event",
    "Hello",
    "MailFrom",
    "ProtocolError",
    "Quit",
    "RcptTo",
    "Reset",
    "StartTLS",
]


@dataclass(frozen=True, slots=True)
class Hello:
    """HELO, EHLO or LHLO (``verb`` upper-cased). Needs an answer."""

    verb: str
    name: str


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM; ``sender`` is None for the null reverse-path. Needs an answer."""

    sender: Address | None
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO. Needs an answer."""

    rcpt: Address
    params: RcptParams


@dataclass(frozen=True, slots=True)
class DataStart:
    """DATA, or the first BDAT (RFC 3030), with at least one accepted
    recipient. Needs an answer: accept() sends 354 for DATA and nothing for
    BDAT (``chunked``), whose octets are then read; refusing a BDAT also
    ends the transaction (a :class:`Reset` follows)."""

    chunked: bool = False


@dataclass(frozen=True, slots=True)
class DataChunk:
    """Message content: dot-unstuffed, LF line endings, never empty."""

    data: bytes


@dataclass(frozen=True, slots=True)
class DataEnd:
    """The end of the message (CRLF.CRLF, or the BDAT LAST chunk read). Needs
    an answer.  A BDAT chunk that makes the message bad ends it at once, with
    ``error`` set, so a failed BDAT transaction needs no LAST chunk.

    ``size`` counts the bytes delivered in :class:`DataChunk` events;
    ``received_count`` the ``Received:`` fields in the header section;
    ``error``, when set, is the reply the machine requires: the application
    must answer with it (``srv.reply(event.error)``) or another failure.
    In LMTP mode one answer is due per accepted recipient (RFC 2033 4.2);
    ``replies_due`` says how many.
    """

    size: int
    received_count: int
    error: Reply | None
    replies_due: int = 1


@dataclass(frozen=True, slots=True)
class Reset:
    """RSET (or a new EHLO) while a transaction was open: abort it. Already answered."""


@dataclass(frozen=True, slots=True)
class StartTLS:
    """STARTTLS. Needs an answer; after accept() start the handshake, then call
    ``tls_started()``."""


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH (RFC 4954) with complete credentials. Needs an answer.

    ``mechanism`` is ``"PLAIN"`` or ``"LOGIN"``; ``username`` and
    ``password`` are non-empty UTF-8 text without control characters.
    accept() gives 235 and records ``srv.auth_user``; a 5xx answer (535
    5.7.8 for wrong credentials) counts as a failed authentication, a 4xx
    one (454 4.7.0 when the backend is down) does not, and 421 closes.
    The password never appears in ``repr()``; do not log this event's
    fields other than ``mechanism`` and ``username``.
    """

    mechanism: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Quit:
    """QUIT: already answered with 221; ConnectionClosed follows."""


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The peer broke the protocol so badly that the machine closed the session."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The session is over (EOF, QUIT, or closed by the machine). Always last."""


Event = (
    Hello
    | MailFrom
    | RcptTo
    | DataStart
    | DataChunk
    | DataEnd
    | Reset
    | StartTLS
    | Auth
    | Quit
    | ProtocolError
    | ConnectionClosed
)
