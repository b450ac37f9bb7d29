"""The sans-I/O SMTP (and LMTP) server state machine.

Bytes go in with :meth:`SMTPServer.receive`, events come out of
:meth:`SMTPServer.next_event`, replies come out of
:meth:`SMTPServer.data_to_send`.  No sockets, clocks, logging or TLS here.

Invariants:

* One session state (:class:`State`) at a time, changed only by
  ``_enter``; the verbs legal in each state are the table ``_LEGAL``.
* At most one event awaits an answer.  While it does, no further input is
  parsed, so replies leave in command order (RFC 2920 3.1) and bytes
  pipelined after DATA or STARTTLS are never read as commands before the
  answer is known.
* Input is scanned once (O(n)).  An incomplete command line is bounded by
  ``command_line_max``; an over-long one is discarded up to its LF without
  being stored.  In DATA mode at most four bytes (a possible prefix of
  CRLF "." CRLF) are held between reads; every other byte is handed on at
  once, so memory is bounded by the size of one read.
* Only CRLF "." CRLF ends the message (RFC 5321 4.1.1.4).  A message with
  a bare CR or LF, a NUL, an over-long line or too many bytes is consumed
  to its real end and then answered with the error, so a smuggled second
  message never exists.
* Each session ends with exactly one :class:`events.ConnectionClosed`.
* SMTP AUTH (RFC 4954; PLAIN, RFC 4616, and LOGIN) is offered only under
  TLS.  Lines of the exchange (state ``AUTH``) are SASL responses, never
  commands, bounded by ``auth_line_max``; credentials leave the machine
  only in :class:`events.Auth`, and no reply echoes a response line.
* CHUNKING (RFC 3030): ``BDAT <size> [LAST]`` is followed by exactly
  ``size`` octets, read by count (no dot-stuffing, no end-of-data scan) and
  streamed like DATA content through the same checks, so one policy holds
  for both: bare CR or LF, NUL, over-long lines and the size limit refuse
  the message.  A chunk the session will not take (no transaction, a
  refused first chunk, a failed transaction) is still read to its end and
  thrown away, never parsed as commands and never buffered whole.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from mailrider import limits
from mailrider.smtp import events
from mailrider.smtp.address import (
    AddressError,
    parse_mail_params,
    parse_path,
    parse_rcpt_params,
    split_path,
)
from mailrider.smtp.errors import LocalProtocolError
from mailrider.smtp.received import with_protocol
from mailrider.smtp.reply import Reply, split_status

__all__ = ["LocalProtocolError", "SMTPServer", "ServerConfig", "State", "events"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What one listener offers.  Limits default to :mod:`mailrider.limits`."""

    hostname: str
    max_message_size: int = limits.MAX_MESSAGE_SIZE  # 0: no limit (RFC 1870 "SIZE 0")
    max_rcpt: int = limits.MAX_RCPT
    max_mails: int = limits.MAX_MAILS
    max_errors: int = limits.MAX_ERRORS
    max_commands: int = limits.MAX_COMMANDS
    dsn: bool = True
    starttls: bool = False
    smtputf8: bool = True
    pipelining: bool = True
    eightbitmime: bool = True
    vrfy: bool = False
    lmtp: bool = False
    implicit_tls: bool = False  # smtps: the session is TLS from the start
    command_line_max: int = limits.COMMAND_LINE_MAX
    max_line_length: int = limits.DATA_LINE_MAX  # incl. CRLF; 0: unchecked
    banner: str = "ESMTP mailrider"
    auth: bool = False  # AUTH PLAIN LOGIN offered (under TLS only)
    auth_required: bool = False  # MAIL refused until AUTH succeeded
    tls_required: bool = False  # MAIL refused until TLS is on
    auth_max_failures: int = limits.AUTH_MAX_FAILURES  # then 421; 0: no limit
    auth_line_max: int = limits.AUTH_LINE_MAX  # incl. CRLF
    chunking: bool = True  # CHUNKING / BDAT (RFC 3030); never offered over LMTP


class State(enum.Enum):
    """Session states."""

    INIT = "init"  # greeting sent; HELO/EHLO/LHLO expected
    GREETED = "greeted"  # no transaction open
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading the message
    BDAT = "bdat"  # reading the octets of a BDAT chunk
    CHUNKED = "chunked"  # between the BDAT chunks of one message
    TLS = "tls"  # 220 sent for STARTTLS; waiting for the handshake
    AUTH = "auth"  # 334 sent; the next line is a SASL response
    CLOSED = "closed"


class _Await(enum.Enum):
    HELLO = "hello"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    BDAT = "bdat"  # the first BDAT of a transaction (DataStart)
    DATA_END = "data-end"
    STARTTLS = "starttls"
    AUTH = "auth"


class _Sasl(enum.Enum):
    """Which client response a 334 challenge waits for."""

    PLAIN = "plain"  # the whole PLAIN message (RFC 4616 2)
    LOGIN_USER = "login-user"
    LOGIN_SECOND = "login-second"  # the LOGIN password line


_ANYTIME: Final = frozenset(
    {"HELO", "EHLO", "LHLO", "NOOP", "RSET", "QUIT", "HELP", "VRFY", "EXPN"}
)
_LEGAL: Final[dict[State, frozenset[str]]] = {
    State.INIT: _ANYTIME,
    State.GREETED: _ANYTIME | {"MAIL", "STARTTLS", "AUTH"},
    State.MAIL: _ANYTIME | {"RCPT", "DATA"},
    State.RCPT: _ANYTIME | {"RCPT", "DATA"},
    State.DATA: frozenset(),
    State.BDAT: frozenset(),
    State.CHUNKED: _ANYTIME,  # BDAT itself is dispatched before this table
    State.TLS: frozenset(),
    State.AUTH: frozenset(),  # lines are SASL responses (see _sasl_line)
    State.CLOSED: frozenset(),
}
# Why a verb is out of sequence, by verb (RFC 5321 4.1.4, 503).
_SEQUENCE: Final[dict[str, str]] = {
    "MAIL": "Send HELO/EHLO first",
    "RCPT": "Need MAIL command",
    "DATA": "Need MAIL command",
    "STARTTLS": "Send EHLO first",
    "AUTH": "Send EHLO first",
}
# Known verbs we do not offer (RFC 5321 4.2.4: 502).  AUTH, STARTTLS and
# BDAT are 502 when not configured.
_UNIMPLEMENTED: Final = frozenset({"ETRN", "TURN", "ATRN", "SEND", "SOML", "SAML"})
_ANSWERABLE: Final = (
    events.Hello,
    events.MailFrom,
    events.RcptTo,
    events.DataStart,
    events.DataEnd,
    events.StartTLS,
    events.Auth,
)
_GREETINGS: Final = frozenset({"HELO", "EHLO", "LHLO"})
_IDLE: Final = frozenset({"HELO", "EHLO", "LHLO", "NOOP", "RSET", "HELP", "VRFY", "EXPN"})

# RFC 5321 4.1.1.4: the end of mail data indicator.
_EOD: Final = b"\r\n.\r\n"

_R_OK: Final = Reply(250, "2.0.0", "Ok")
_R_RESET: Final = Reply(250, "2.0.0", "Reset state")
_R_BYE: Final = Reply(221, "2.0.0", "Bye")
_R_BARE: Final = Reply(500, "5.5.2", "Bare LF or CR in command")
_R_NUL_CMD: Final = Reply(500, "5.5.2", "NUL byte in command")
_R_UTF8_CMD: Final = Reply(500, "5.5.2", "Invalid UTF-8 in command")
_R_LONG_CMD: Final = Reply(500, "5.5.2", "Line too long")
_R_UNKNOWN: Final = Reply(500, "5.5.1", "Command unrecognized")
_R_NOT_IMPL: Final = Reply(502, "5.5.1", "Command not implemented")
_R_TOO_BIG_DATA: Final = Reply(552, "5.3.4", "Message size exceeds fixed limit")
_R_NUL_DATA: Final = Reply(554, "5.6.0", "NUL byte in message")
_R_BARE_DATA: Final = Reply(554, "5.6.0", "Message contains bare CR or LF")
_R_LONG_DATA: Final = Reply(554, "5.6.0", "Line too long")
# RFC 3030 2: "BDAT" SP chunk-size [ SP end-marker ]; 20 digits bound int().
_BDAT_RE: Final = re.compile(r"([0-9]{1,20})(?: (LAST))?", re.IGNORECASE)
# RFC 4954 4 and 6.
_MECHANISMS: Final = ("PLAIN", "LOGIN")
_R_AUTH_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
_R_AUTH_MECH: Final = Reply(504, "5.5.4", "Unrecognized authentication type")
_R_AUTH_TLS: Final = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
_R_AUTH_AGAIN: Final = Reply(503, "5.5.1", "Already authenticated")
_R_AUTH_DECODE: Final = Reply(501, "5.5.2", "Cannot decode response")
_R_AUTH_CANCEL: Final = Reply(501, "5.0.0", "Authentication cancelled")
_R_AUTH_LONG: Final = Reply(500, "5.5.6", "Authentication Exchange line is too long")
_R_AUTH_INVALID: Final = Reply(535, "5.7.8", "Authentication credentials invalid")
_R_AUTH_NEEDED: Final = Reply(530, "5.7.0", "Authentication required")
_R_TLS_NEEDED: Final = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
_R_CHALLENGE: Final = Reply(334, "", "")  # RFC 4954 4: "334 " + empty challenge
_R_USERNAME: Final = Reply(334, "", "VXNlcm5hbWU6")  # base64 "Username:"
_R_PASSWORD: Final = Reply(334, "", "UGFzc3dvcmQ6")  # base64 "Password:"
_F_BARE: Final = 1
_F_NUL: Final = 2
_F_LONG: Final = 4
_F_BIG: Final = 8
# Which error a bad message gets when it has several faults.
_FAULTS: Final = (
    (_F_BARE, _R_BARE_DATA),
    (_F_NUL, _R_NUL_DATA),
    (_F_LONG, _R_LONG_DATA),
    (_F_BIG, _R_TOO_BIG_DATA),
)


def _b64decode(text: bytes) -> bytes | None:
    """Decode strict base64 (RFC 4648 4, RFC 4954 4): only the alphabet,
    correct padding, zero pad bits; None when ``text`` is anything else."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        return None
    return raw if base64.b64encode(raw) == text else None


def _sasl_text(raw: bytes) -> str | None:
    """A SASL identity or password as text: UTF-8 without control characters
    (RFC 4616 2 asks for SASLprep; we apply only its control-character
    prohibition, RFC 4013 2.3 / RFC 3454 C.2)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(unicodedata.category(c) == "Cc" for c in text):
        return None
    return text


def _hold_back(buf: bytes, bol: bool) -> int:
    """How many trailing bytes of ``buf`` may begin the end-of-data mark."""
    if bol and len(buf) < 3 and b".\r\n".startswith(buf):
        return len(buf)
    for k in (4, 3, 2, 1):
        if buf.endswith(_EOD[:k]):
            return k
    return 0


#: what :meth:`SMTPServer.rename` takes: a domain, or an address literal
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.IPv6]+\]")


class SMTPServer:
    """One server-side SMTP/LMTP session; see the module docstring."""

    # one per open connection, hundreds at once under load: slots instead of a
    # __dict__ each (docs/performance.md §1, "Sessions under load")
    __slots__ = (
        "_auth_candidate",
        "_auth_failures",
        "_auth_user",
        "_bol",
        "_buf",
        "_chunk_last",
        "_chunk_left",
        "_chunk_size",
        "_chunked",
        "_config",
        "_cr",
        "_delivered",
        "_derror",
        "_discarding",
        "_dsize",
        "_due",
        "_eof",
        "_errors",
        "_esmtp",
        "_events",
        "_faults",
        "_hdr_carry",
        "_helo",
        "_in_header",
        "_line_len",
        "_mails",
        "_out",
        "_pending",
        "_rcpt_tries",
        "_rcpts",
        "_received",
        "_sasl",
        "_sasl_user",
        "_scan",
        "_seen",
        "_skip",
        "_state",
        "_tls",
        "_utf8",
        "_wasted",
    )

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self._state = State.INIT
        self._buf = bytearray()
        self._out = bytearray()
        # a few at most (the next step runs only once they are taken): a list
        # is 700 bytes smaller than an empty deque
        self._events: list[events.Event] = []
        self._pending: _Await | None = None
        self._delivered = False  # the event awaiting an answer left next_event()
        self._eof = False
        self._scan = 0  # where the search for LF resumes in _buf
        self._discarding = False  # inside an over-long command line
        self._errors = 0
        self._wasted = 0  # commands that moved nothing forward
        self._tls = config.implicit_tls
        self._helo: str | None = None
        self._esmtp = False
        self._mails = 0
        # transaction
        self._utf8 = False
        self._rcpts = 0
        self._rcpt_tries = 0
        # DATA mode
        self._bol = True
        self._dsize = 0
        self._line_len = 0
        self._derror: Reply | None = None  # set at the end of the message
        self._faults = 0  # bit set of _F_* seen so far in this message
        self._seen = 0  # unstuffed bytes seen, delivered or not
        self._in_header = True
        self._hdr_carry = b"\n"
        self._received = 0
        self._due = 0
        # BDAT (RFC 3030)
        self._chunk_left = 0  # octets of the current chunk still to read
        self._chunk_size = 0
        self._chunk_last = False
        self._cr = False  # a chunk's content ended in CR: held till we see what follows
        self._skip = 0  # octets of a refused chunk still to read and drop
        self._chunked = False  # the current (or last) message came in BDAT chunks
        # AUTH (RFC 4954)
        self._auth_user: str | None = None
        self._auth_failures = 0
        self._auth_candidate: str | None = None  # user named in the pending Auth
        self._sasl: _Sasl | None = None  # response awaited in State.AUTH
        self._sasl_user: str | None = None  # LOGIN user between the two 334s

    # ------------------------------------------------------------------ API

    @property
    def state(self) -> State:
        """The current session state."""
        return self._state

    @property
    def closed(self) -> bool:
        """True once the session is over: flush data_to_send(), then close."""
        return self._state is State.CLOSED

    @property
    def awaiting_answer(self) -> bool:
        """True while the last event returned needs accept()/reject()/reply()."""
        return self._pending is not None and self._delivered

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed (held while an answer is awaited)."""
        return len(self._buf)

    @property
    def chunked(self) -> bool:
        """The current (or last) message came in BDAT chunks, not DATA."""
        return self._chunked

    @property
    def tls(self) -> bool:
        """True when the session runs over TLS."""
        return self._tls

    @property
    def helo(self) -> str | None:
        """The accepted HELO/EHLO/LHLO name, if any."""
        return self._helo

    @property
    def auth_user(self) -> str | None:
        """The user name of the successful AUTH, if any (RFC 4954)."""
        return self._auth_user

    @property
    def with_protocol(self) -> str:
        """The ``with`` keyword for this transaction's Received field."""
        return with_protocol(
            esmtp=self._esmtp,
            tls=self._tls,
            auth=self._auth_user is not None,
            utf8=self._utf8,
            lmtp=self._config.lmtp,
        )

    def rename(self, hostname: str) -> None:
        """Call ourselves ``hostname`` from now on (``hostnames <t>`` picks it
        by the local address, before the banner). Raises ValueError unless it
        is a host name: letters, digits, ``-``, ``.`` and ``_``, or an
        address literal, at most 255 octets (RFC 5321 4.1.2)."""
        if not _NAME_RE.fullmatch(hostname) or len(hostname) > limits.DOMAIN_MAX:
            raise ValueError(f"not a host name: {hostname[:64]!r}")
        self._config = dataclasses.replace(self._config, hostname=hostname)

    def greeting(self, text: str | None = None) -> bytes:
        """The 220 banner (RFC 5321 4.2: no enhanced status, RFC 2034 3)."""
        cfg = self._config
        return Reply(220, "", text or f"{cfg.hostname} {cfg.banner}").to_bytes()

    def receive(self, data: bytes) -> None:
        """Feed bytes read from the peer; ``b""`` means end of file."""
        if self._state is State.CLOSED:
            return
        if self._state is State.TLS:
            # RFC 3207 4.2 / CVE-2011-0411: nothing may be read in clear
            # between our 220 and the handshake.
            if data:
                self._protocol_error("data received before the TLS handshake")
            else:
                self._close(None)
            return
        if not data:
            self._eof = True
            return
        self._buf += data

    def next_event(self) -> events.Event | None:
        """The next event, or None when input is needed or an answer is awaited."""
        while not self._events:
            if self._pending is not None or self._state in (State.CLOSED, State.TLS):
                return None
            if not self._step():
                return None
        event = self._events.pop(0)
        if self._pending is not None and isinstance(event, _ANSWERABLE):
            self._delivered = True
        return event

    def data_to_send(self) -> bytes:
        """Replies queued since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def accept(self, text: str | None = None) -> None:
        """Answer the awaited event positively; ``text`` may replace the default
        text and may start with an enhanced status (``"2.0.0 queued as X"``)."""
        pending = self._take_pending()
        cfg = self._config
        if pending is _Await.HELLO:
            assert self._helo is not None
            first = text or f"{cfg.hostname} Hello {self._helo}"
            if self._esmtp:
                self._send(Reply(250, "", first, self._extensions()))
            else:
                self._send(Reply(250, "", first))
            self._enter(State.GREETED)
        elif pending is _Await.MAIL:
            self._send(self._positive("2.1.0", "Ok", text))
            self._mails += 1
            self._enter(State.MAIL)
        elif pending is _Await.RCPT:
            self._send(self._positive("2.1.5", "Destination address valid", text))
            self._rcpts += 1
            self._enter(State.RCPT)
        elif pending is _Await.DATA:
            self._send(Reply(354, "", text or 'Enter mail, end with "." on a line by itself'))
            self._chunked = False
            self._enter(State.DATA)
        elif pending is _Await.BDAT:
            # No reply: the chunk's octets follow at once (RFC 3030 2).
            self._new_message()
            self._chunked = True
            self._enter(State.BDAT)
        elif pending is _Await.DATA_END:
            if self._derror is not None:
                self._pending = pending
                self._delivered = True
                raise LocalProtocolError("the message is bad: answer with DataEnd.error")
            self._send(self._positive("2.0.0", "Message accepted for delivery", text))
            self._data_answered()
        elif pending is _Await.STARTTLS:
            if self._buf:
                self._protocol_error("commands pipelined after STARTTLS")
                return
            self._send(self._positive("2.0.0", "Ready to start TLS", text, code=220))
            self._enter(State.TLS)
        elif pending is _Await.AUTH:
            self._send(self._positive("2.7.0", "Authentication successful", text, code=235))
            self._auth_user = self._auth_candidate
            self._auth_candidate = None

    def reject(self, code: int, status: str, text: str) -> None:
        """Answer the awaited event with a 4xx/5xx reply."""
        self.reply(Reply(code, status, text))

    def reply(self, reply: Reply) -> None:
        """Answer the awaited event with a failure ``reply`` (e.g. DataEnd.error).

        421 also closes the session (RFC 5321 3.8).
        """
        if reply.code < 400:
            raise LocalProtocolError("reply() takes a failure; use accept()")
        pending = self._take_pending()
        if pending is _Await.AUTH:
            self._auth_candidate = None
            if reply.is_permanent:
                # 535 and the like: a failed authentication (RFC 4954 6).
                # 4xx (454 backend down) is no verdict on the credentials.
                self._auth_failed(reply)
                return
        self._wasted += 1
        self._send(reply)
        if pending is _Await.HELLO:
            # The greeting is refused: the client must greet again.
            self._enter(State.INIT)
        elif pending is _Await.DATA_END:
            self._data_answered()
        elif pending is _Await.DATA:
            self._refused_data()
        elif pending is _Await.BDAT:
            # The transaction has failed (RFC 3030 2): drop this chunk, and
            # refuse every chunk pipelined after it, never glue them into a
            # message that lacks its start.
            self._skip = self._chunk_left
            self._events.append(events.Reset())
            self._enter(State.GREETED)
        if reply.code == 421:
            self._close(None)

    def tls_started(self) -> None:
        """The TLS handshake after STARTTLS completed (RFC 3207 4.2: forget
        everything learnt from the client and expect EHLO again)."""
        if self._state is not State.TLS:
            raise LocalProtocolError("tls_started() without an accepted STARTTLS")
        self._tls = True
        self._auth_user = None
        self._buf.clear()
        self._scan = 0
        self._enter(State.INIT)

    def cleartext_after_starttls(self) -> None:
        """After our 220 the client went on in clear instead of a handshake
        (seen by the I/O layer before any TLS byte was read): the same 421 and
        ProtocolError as bytes given to :meth:`receive` at that point."""
        if self._state is not State.TLS:
            raise LocalProtocolError("cleartext_after_starttls() outside STARTTLS")
        self._protocol_error("data received before the TLS handshake")

    def close(self, reply: Reply | None = None) -> None:
        """Close the session from the application side (timeout, shutdown),
        sending ``reply`` (typically 421) first."""
        self._close(reply)

    # ------------------------------------------------------------ internals

    def _take_pending(self) -> _Await:
        pending = self._pending
        if pending is None or not self._delivered:
            raise LocalProtocolError("no event awaits an answer")
        self._pending = None
        self._delivered = False
        return pending

    def _positive(self, status: str, default: str, text: str | None, code: int = 250) -> Reply:
        if text is None:
            return Reply(code, status, default)
        given, rest = split_status(text)
        if given and given[0] != str(code)[0]:
            raise LocalProtocolError(f"status {given} in a {code} reply")
        return Reply(code, given or status, rest)

    def _extensions(self) -> tuple[str, ...]:
        cfg = self._config
        ext: list[str] = []
        if cfg.pipelining:
            ext.append("PIPELINING")  # RFC 2920
        ext.append(f"SIZE {cfg.max_message_size}" if cfg.max_message_size else "SIZE")  # RFC 1870
        if cfg.eightbitmime:
            ext.append("8BITMIME")  # RFC 6152
        ext.append("ENHANCEDSTATUSCODES")  # RFC 2034
        if cfg.smtputf8:
            ext.append("SMTPUTF8")  # RFC 6531
        if self._chunking:
            # RFC 3030; before DSN so STARTTLS/AUTH/DSN keep closing the list
            ext.append("CHUNKING")
        if cfg.dsn:
            ext.append("DSN")  # RFC 3461
        if cfg.starttls and not self._tls:
            ext.append("STARTTLS")  # RFC 3207
        if cfg.auth and self._tls:
            # RFC 4954 4 / RFC 4616 9: plaintext mechanisms only under TLS.
            ext.append("AUTH " + " ".join(_MECHANISMS))
        return tuple(ext)

    @property
    def _chunking(self) -> bool:
        return self._config.chunking and not self._config.lmtp

    def _enter(self, state: State) -> None:
        """The one place where the session state changes."""
        if state is not State.AUTH:
            self._sasl = None
            self._sasl_user = None
        if state in (State.INIT, State.GREETED):
            self._utf8 = False
            self._rcpts = 0
            self._rcpt_tries = 0
        if state is State.INIT:
            self._helo = None
            self._esmtp = False
        elif state is State.DATA:
            self._new_message()
        self._state = state

    def _new_message(self) -> None:
        """Forget the previous message's content checks."""
        self._bol = True
        self._dsize = 0
        self._line_len = 0
        self._derror = None
        self._faults = 0
        self._seen = 0
        self._in_header = True
        self._hdr_carry = b"\n"
        self._received = 0
        self._cr = False

    def _send(self, reply: Reply) -> None:
        self._out += reply.to_bytes()

    def _error(self, reply: Reply) -> None:
        """Answer a bad command; the max_errors-th one closes the session."""
        self._errors += 1
        self._wasted += 1
        if self._errors >= self._config.max_errors:
            self._close(Reply(421, "4.7.0", f"{self._config.hostname} Too many errors"))
        else:
            self._send(reply)

    def _protocol_error(self, reason: str) -> None:
        self._events.append(events.ProtocolError(reason))
        self._close(Reply(421, "4.7.0", f"{self._config.hostname} Protocol violation"))

    def _close(self, reply: Reply | None) -> None:
        if self._state is State.CLOSED:
            return
        if reply is not None:
            self._send(reply)
        self._pending = None
        self._delivered = False
        self._buf.clear()
        self._skip = 0
        self._enter(State.CLOSED)
        self._events.append(events.ConnectionClosed())

    def _step(self) -> bool:
        """Consume some input; False when more input is needed."""
        if self._state is State.DATA:
            return self._step_data()
        if self._state is State.BDAT:
            return self._step_chunk()
        if self._skip:
            return self._step_skip()
        return self._step_command()

    # ------------------------------------------------------- command lines

    def _step_command(self) -> bool:
        buf = self._buf
        sasl = self._state is State.AUTH
        limit = self._config.auth_line_max if sasl else self._config.command_line_max
        if self._discarding:
            i = buf.find(b"\n")
            if i < 0:
                buf.clear()
                if self._eof:
                    self._close(None)
                    return True
                return False
            del buf[: i + 1]
            self._discarding = False
            return True
        i = buf.find(b"\n", self._scan, limit)
        if i < 0:
            if len(buf) >= limit:
                # RFC 5321 4.5.3.1.4 / 4.2.2: "500 Line too long"; skip the
                # rest of the line without storing it.
                del buf[:limit]
                self._scan = 0
                self._discarding = True
                if sasl:
                    # RFC 4954 4: fail the AUTH command with 500 (5.5.6).
                    self._sasl_abort(_R_AUTH_LONG)
                else:
                    self._error(_R_LONG_CMD)
                return True
            self._scan = len(buf)
            if self._eof:
                self._close(None)
                return True
            return False
        self._scan = 0
        line = bytes(buf[: i + 1])
        del buf[: i + 1]
        if sasl:
            self._sasl_line(line)
        else:
            self._command(line)
        return True

    def _command(self, line: bytes) -> None:
        cfg = self._config
        if self._wasted >= cfg.max_commands:
            self._close(Reply(421, "4.7.0", f"{cfg.hostname} Too many commands"))
            return
        if b"\0" in line:
            self._error(_R_NUL_CMD)
            return
        # RFC 5321 2.3.8: lines end in CRLF; a bare CR or LF is not a line end.
        if line.count(b"\r") != 1 or not line.endswith(b"\r\n"):
            self._error(_R_BARE)
            return
        try:
            text = line[:-2].decode("utf-8")
        except UnicodeDecodeError:
            self._error(_R_UTF8_CMD)
            return
        word, _, arg = text.partition(" ")
        verb = word.upper()  # RFC 5321 2.4: verbs are case-insensitive
        if (
            verb in _UNIMPLEMENTED
            or (verb == "STARTTLS" and not cfg.starttls)
            or (verb == "AUTH" and not cfg.auth)
        ):
            self._error(_R_NOT_IMPL)
            return
        if verb == "BDAT":
            # Before the sequence check: even a refused chunk must be read.
            if self._chunking:
                self._cmd_bdat(arg)
            else:
                self._error(_R_NOT_IMPL)
            return
        handler = _HANDLERS.get(verb)
        # RFC 2033 4.1: an LMTP server knows LHLO, not HELO/EHLO; and vice versa.
        if handler is None or (verb in _GREETINGS and (verb == "LHLO") != cfg.lmtp):
            self._error(_R_UNKNOWN)
            return
        if verb not in _LEGAL[self._state]:
            why = _SEQUENCE.get(verb, "Bad sequence of commands")
            if verb == "MAIL" and self._state in (State.MAIL, State.RCPT):
                why = "Nested MAIL command"
            elif verb == "STARTTLS" and self._state is not State.INIT:
                why = "STARTTLS not allowed in a transaction"
            elif verb == "AUTH" and self._state is not State.INIT:
                # RFC 4954 4: AUTH within a mail transaction gets 503.
                why = "AUTH not allowed in a transaction"
            elif self._state is State.CHUNKED:
                # RFC 3030 2: one transaction uses DATA or BDAT, never both.
                why = "DATA not allowed after BDAT" if verb == "DATA" else "BDAT or RSET expected"
            self._error(Reply(503, "5.5.1", why))
            if verb == "DATA" and self._state is State.CHUNKED:
                self._refused_data()
            return
        if verb in _IDLE:
            self._wasted += 1
        handler(self, arg)

    def _await(self, kind: _Await, event: events.Event) -> None:
        self._pending = kind
        self._events.append(event)

    def _cmd_hello(self, arg: str, verb: str) -> None:
        name = arg
        if (
            not name
            or len(name.encode("utf-8")) > limits.DOMAIN_MAX
            or not name.isprintable()
            or " " in name
            or (not name.isascii() and not self._config.smtputf8)
        ):
            self._error(Reply(501, "5.5.4", f"Syntax: {verb} hostname"))
            return
        if self._state in (State.MAIL, State.RCPT, State.CHUNKED):
            # RFC 5321 4.1.4: EHLO in a transaction acts as RSET first.
            self._events.append(events.Reset())
        self._enter(State.GREETED)
        self._helo = name
        self._esmtp = verb != "HELO"
        self._await(_Await.HELLO, events.Hello(verb, name))

    def _cmd_helo(self, arg: str) -> None:
        self._cmd_hello(arg, "HELO")

    def _cmd_ehlo(self, arg: str) -> None:
        self._cmd_hello(arg, "EHLO")

    def _cmd_lhlo(self, arg: str) -> None:
        self._cmd_hello(arg, "LHLO")

    def _cmd_mail(self, arg: str) -> None:
        cfg = self._config
        if cfg.tls_required and not self._tls:
            self._error(_R_TLS_NEEDED)  # RFC 3207 4
            return
        if cfg.auth_required and self._auth_user is None:
            self._error(_R_AUTH_NEEDED)  # RFC 4954 6
            return
        if arg[:5].upper() != "FROM:":
            self._error(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
            return
        try:
            path, rest = split_path(arg[5:].lstrip(" "), sender=True)
            params = parse_mail_params(
                rest, dsn=cfg.dsn, eightbitmime=cfg.eightbitmime, smtputf8=cfg.smtputf8
            )
            sender = parse_path(path, params.smtputf8, sender=True)
        except AddressError as exc:
            self._error(exc.reply)
            return
        if cfg.max_message_size and params.size is not None and params.size > cfg.max_message_size:
            # RFC 1870 6.1: refuse a declared size we would not accept.
            self._wasted += 1
            self._send(Reply(552, "5.3.4", "Message too big"))
            return
        if self._mails >= cfg.max_mails:
            self._error(Reply(452, "4.7.0", "Too many messages in this session"))
            return
        self._utf8 = params.smtputf8
        self._await(_Await.MAIL, events.MailFrom(sender, params))

    def _cmd_rcpt(self, arg: str) -> None:
        cfg = self._config
        if arg[:3].upper() != "TO:":
            self._error(Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
            return
        self._rcpt_tries += 1
        try:
            path, rest = split_path(arg[3:].lstrip(" "))
            params = parse_rcpt_params(rest, dsn=cfg.dsn, smtputf8=self._utf8)
            rcpt = parse_path(path, self._utf8, postmaster=True)
        except AddressError as exc:
            self._error(exc.reply)
            return
        if rcpt is None:
            self._error(Reply(501, "5.1.3", "Null recipient not allowed"))
            return
        if self._rcpts >= cfg.max_rcpt:
            # RFC 5321 4.5.3.1.10: 452 for too many recipients.
            self._wasted += 1
            self._send(Reply(452, "4.5.3", "Too many recipients"))
            return
        self._await(_Await.RCPT, events.RcptTo(rcpt, params))

    def _cmd_data(self, arg: str) -> None:
        if arg:
            self._error(Reply(501, "5.5.4", "Syntax: DATA"))
            return
        if self._state is State.MAIL:
            # RFC 5321 3.3 / RFC 2920 3.1: no recipient was accepted.
            if self._rcpt_tries:
                self._error(Reply(554, "5.5.1", "No valid recipients"))
            else:
                self._error(Reply(503, "5.5.1", "Need RCPT command"))
            self._refused_data()
            return
        self._await(_Await.DATA, events.DataStart())

    def _cmd_rset(self, arg: str) -> None:
        if arg:
            self._error(Reply(501, "5.5.4", "Syntax: RSET"))
            return
        self._send(_R_RESET)
        if self._state in (State.MAIL, State.RCPT, State.CHUNKED):
            self._events.append(events.Reset())
            self._enter(State.GREETED)

    def _cmd_noop(self, arg: str) -> None:
        self._send(_R_OK)

    def _cmd_quit(self, arg: str) -> None:
        if arg:
            self._error(Reply(501, "5.5.4", "Syntax: QUIT"))
            return
        self._events.append(events.Quit())
        self._close(_R_BYE)

    def _cmd_help(self, arg: str) -> None:
        verbs = "LHLO" if self._config.lmtp else "HELO EHLO"
        verbs += " MAIL RCPT DATA RSET NOOP QUIT HELP VRFY"
        if self._chunking:
            verbs += " BDAT"
        if self._config.starttls and not self._tls:
            verbs += " STARTTLS"
        if self._config.auth and self._tls:
            verbs += " AUTH"
        self._send(Reply(214, "2.0.0", f"mailrider; commands: {verbs}"))

    def _cmd_vrfy(self, arg: str) -> None:
        if not self._config.vrfy:
            self._send(Reply(502, "5.5.1", "VRFY disabled"))
        elif not arg:
            self._error(Reply(501, "5.5.4", "Syntax: VRFY address"))
        else:
            # RFC 5321 3.5.3: 252 when we will not verify but will try.
            self._send(Reply(252, "2.5.2", "Cannot VRFY user; try RCPT to attempt delivery"))

    def _cmd_expn(self, arg: str) -> None:
        self._send(Reply(502, "5.5.1", "EXPN disabled"))

    def _cmd_starttls(self, arg: str) -> None:
        if self._tls:
            self._error(Reply(503, "5.5.1", "TLS already active"))
            return
        if arg:
            self._error(Reply(501, "5.5.4", "Syntax: STARTTLS"))
            return
        if self._buf:
            # RFC 3207 4.2 / CVE-2011-0411: bytes after STARTTLS would be
            # executed as if they came over TLS.  Refuse the session.
            self._protocol_error("commands pipelined after STARTTLS")
            return
        self._await(_Await.STARTTLS, events.StartTLS())

    def _cmd_bdat(self, arg: str) -> None:
        match = _BDAT_RE.fullmatch(arg)
        if match is None:
            # Without a size the chunk's end is unknown: its octets would be
            # read as commands.  Close, as for data pipelined after a refused DATA.
            self._protocol_error("BDAT without a valid chunk size")
            return
        size, last = int(match[1]), match[2] is not None
        state = self._state
        if state is State.RCPT:
            self._chunk_left = self._chunk_size = size
            self._chunk_last = last
            self._await(_Await.BDAT, events.DataStart(chunked=True))
            return
        if state is State.CHUNKED:
            self._chunk_left = self._chunk_size = size
            self._chunk_last = last
            self._enter(State.BDAT)
            return
        # RFC 3030 2: the chunk is read and discarded, then the error given.
        if not self._esmtp:
            reply = Reply(503, "5.5.1", "Send EHLO first")
        elif state is State.MAIL and self._rcpt_tries:
            reply = Reply(554, "5.5.1", "No valid recipients")
        elif state is State.MAIL:
            reply = Reply(503, "5.5.1", "Need RCPT command")
        else:
            reply = Reply(503, "5.5.1", "Need MAIL command")
        self._error(reply)
        if self._state is not State.CLOSED:
            self._skip = size

    def _refused_data(self) -> None:
        """DATA was refused.  RFC 2920 3.1: DATA ends a pipelined group, so
        bytes already read after it are message content sent without waiting
        for 354; read as commands they would run whatever the message says."""
        if self._buf and self._state is not State.CLOSED:
            self._protocol_error("data pipelined after a refused DATA")

    # ---------------------------------------------------------------- AUTH

    def _cmd_auth(self, arg: str) -> None:
        # Check step: every refusal below is answered before any credential
        # is looked at, and none of them echoes the argument.
        if not self._esmtp:
            self._error(Reply(503, "5.5.1", "Send EHLO first"))  # AUTH is an ESMTP extension
            return
        if self._auth_user is not None:
            self._error(_R_AUTH_AGAIN)  # RFC 4954 4: once per session
            return
        mech, sp, initial = arg.partition(" ")
        if not mech or (sp and (not initial or " " in initial)):
            self._error(_R_AUTH_SYNTAX)
            return
        if not self._tls:
            # RFC 4954 4 / RFC 4616 9: no cleartext password over a clear channel.
            self._error(_R_AUTH_TLS)
            return
        mech = mech.upper()
        if mech not in _MECHANISMS:
            self._error(_R_AUTH_MECH)
            return
        # Proceed step.
        raw: bytes | None = None
        if sp:
            # RFC 4954 4: "=" is an empty initial response.
            raw = b"" if initial == "=" else _b64decode(initial.encode("utf-8"))
            if raw is None:
                self._error(_R_AUTH_DECODE)
                return
        if mech == "PLAIN":
            if raw is None:
                self._challenge(_Sasl.PLAIN, _R_CHALLENGE)
            else:
                self._sasl_plain(raw)
        elif raw is None:
            self._challenge(_Sasl.LOGIN_USER, _R_USERNAME)
        else:
            self._sasl_login_user(raw)

    def _challenge(self, step: _Sasl, reply: Reply) -> None:
        self._send(reply)
        self._enter(State.AUTH)
        self._sasl = step

    def _sasl_line(self, line: bytes) -> None:
        """One client response line of the exchange (State.AUTH)."""
        if line.count(b"\r") != 1 or not line.endswith(b"\r\n"):
            self._sasl_abort(_R_BARE)
            return
        body = line[:-2]
        if body == b"*":
            self._sasl_abort(_R_AUTH_CANCEL)  # RFC 4954 4
            return
        raw = _b64decode(body)
        if raw is None:
            self._sasl_abort(_R_AUTH_DECODE)
            return
        step = self._sasl
        if step is _Sasl.PLAIN:
            self._sasl_plain(raw)
        elif step is _Sasl.LOGIN_USER:
            self._sasl_login_user(raw)
        else:
            self._sasl_login_pass(raw)

    def _sasl_plain(self, raw: bytes) -> None:
        # RFC 4616 2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
        parts = raw.split(b"\0")
        if len(parts) != 3:
            self._sasl_fail()
            return
        authzid, user, password = (_sasl_text(p) for p in parts)
        if authzid is None or not user or not password:
            self._sasl_fail()
            return
        if authzid and authzid != user:
            # We do not act on behalf of another identity (RFC 4616 2:
            # the server fails when authcid may not act as authzid).
            self._sasl_fail()
            return
        self._sasl_done("PLAIN", user, password)

    def _sasl_login_user(self, raw: bytes) -> None:
        user = _sasl_text(raw)
        if not user:
            self._sasl_fail()
            return
        self._challenge(_Sasl.LOGIN_SECOND, _R_PASSWORD)
        self._sasl_user = user

    def _sasl_login_pass(self, raw: bytes) -> None:
        user = self._sasl_user
        password = _sasl_text(raw)
        assert user is not None
        if not password:
            self._sasl_fail()
            return
        self._sasl_done("LOGIN", user, password)

    def _sasl_done(self, mechanism: str, user: str, password: str) -> None:
        self._enter(State.GREETED)
        self._auth_candidate = user
        self._await(_Await.AUTH, events.Auth(mechanism, user, password))

    def _sasl_abort(self, reply: Reply) -> None:
        """The exchange ends without a verdict on the credentials."""
        self._enter(State.GREETED)
        self._error(reply)

    def _sasl_fail(self) -> None:
        """Credentials that cannot be valid: fail as a wrong password would."""
        self._enter(State.GREETED)
        self._auth_failed(_R_AUTH_INVALID)

    def _auth_failed(self, reply: Reply) -> None:
        """A failed authentication; the auth_max_failures-th closes the session."""
        cfg = self._config
        self._auth_failures += 1
        self._wasted += 1
        if cfg.auth_max_failures and self._auth_failures >= cfg.auth_max_failures:
            self._close(Reply(421, "4.7.0", f"{cfg.hostname} Too many authentication failures"))
        else:
            self._send(reply)

    # ----------------------------------------------------------- DATA mode

    def _step_data(self) -> bool:
        buf = self._buf
        if not buf:
            if self._eof:
                self._close(None)
                return True
            return False
        chunk = bytes(buf)
        end = False
        if self._bol and chunk.startswith(b".\r\n"):
            content, used, end = b"", 3, True
        else:
            i = chunk.find(_EOD)
            if i >= 0:
                # The CRLF before "." ends the last line of the message.
                content, used, end = chunk[: i + 2], i + 5, True
            else:
                hold = _hold_back(chunk, self._bol)
                content = chunk[: len(chunk) - hold] if hold else chunk
                used = len(content)
        del buf[:used]
        if content:
            self._content(content)
        if end:
            self._derror = next((r for f, r in _FAULTS if self._faults & f), None)
            due = self._rcpts if self._config.lmtp else 1
            self._due = due
            self._await(
                _Await.DATA_END,
                events.DataEnd(self._dsize, self._received, self._derror, due),
            )
            return True
        if content:
            return True
        if self._eof:
            self._close(None)
            return True
        return False

    def _step_skip(self) -> bool:
        """Drop the octets of a refused BDAT chunk as they come."""
        buf = self._buf
        if not buf:
            if self._eof:
                self._close(None)
                return True
            return False
        n = min(len(buf), self._skip)
        del buf[:n]
        self._skip -= n
        return True

    def _step_chunk(self) -> bool:
        """Read the octets of an accepted BDAT chunk as they come."""
        buf = self._buf
        if self._chunk_left:
            if not buf:
                if self._eof:
                    self._close(None)
                    return True
                return False
            n = min(len(buf), self._chunk_left)
            raw = b"\r" + bytes(buf[:n]) if self._cr else bytes(buf[:n])
            del buf[:n]
            self._chunk_left -= n
            # A CR may be the first half of a CRLF split by a read or a chunk
            # boundary: _content is never given half a pair (see there).
            self._cr = raw.endswith(b"\r")
            if self._cr:
                raw = raw[:-1]
            if raw:
                self._content(raw, stuffed=False)
            if self._chunk_left:
                return True
        if self._chunk_last:
            tail = b"\r" if self._cr else b""
            self._cr = False
            if tail or not self._bol:
                # The message ends with its last line's CRLF, as with DATA; a
                # held CR is a bare CR (the CRLF added makes it "\r\r\n").
                self._content(tail + b"\r\n", stuffed=False)
        elif not self._faults:
            self._send(Reply(250, "2.0.0", f"{self._chunk_size} octets received"))
            self._enter(State.CHUNKED)
            return True
        # The LAST chunk, or a bad message: end it now, with its error if any.
        self._derror = next((r for f, r in _FAULTS if self._faults & f), None)
        self._due = 1
        self._await(
            _Await.DATA_END, events.DataEnd(self._dsize, self._received, self._derror, 1)
        )
        return True

    def _content(self, raw: bytes, stuffed: bool = True) -> None:
        """Check, unstuff and hand on one span of message bytes.

        ``raw`` never ends inside a CRLF pair (a trailing CR is held back),
        so every check below gives the same answer however the message was
        split into reads.  After the first fault nothing more is handed on,
        but all checks go on, so the error finally reported (by the fixed
        precedence of ``_FAULTS``) does not depend on the split either.
        """
        bol = self._bol
        self._bol = raw.endswith(b"\r\n")
        if b"\0" in raw:
            self._faults |= _F_NUL
        data = raw
        if stuffed:
            # RFC 5321 4.5.2: remove the leading dot of every line.
            data = raw[1:] if bol and raw[:1] == b"." else raw
            if b"\r\n." in data:
                data = data.replace(b"\r\n.", b"\r\n")
        # One split serves every check (a few passes over the bytes in C,
        # not one per check: this runs over every byte of every message).
        # Removing a stuffed dot never joins a CR to an LF, so the pieces
        # between CRLF pairs are the same in ``raw`` and ``data``.
        lines = data.split(b"\r\n")
        if len(lines) == 1:
            flat = out = data
        else:
            flat = b"".join(lines)
            out = b"\n".join(lines)
        if b"\r" in flat or b"\n" in flat:
            # Bare CR / LF (left between the CRLF pairs): the SMTP smuggling
            # vector; refuse the message.
            self._faults |= _F_BARE
        maxlen = self._config.max_line_length
        if maxlen and not self._faults & _F_LONG:
            # RFC 5321 4.5.3.1.6: 1000 octets including CRLF, after unstuffing.
            room = maxlen - 2
            first = self._line_len + len(lines[0])
            if first > room or (len(lines) > 1 and max(map(len, lines)) > room):
                self._faults |= _F_LONG
            self._line_len = first if len(lines) == 1 else len(lines[-1])
        self._seen += len(out)
        limit = self._config.max_message_size
        if limit and self._seen > limit:
            self._faults |= _F_BIG
        if self._in_header:
            self._scan_header(out)
        if not self._faults:
            self._dsize += len(out)
            if out:
                self._events.append(events.DataChunk(out))

    def _scan_header(self, out: bytes) -> None:
        """Count ``Received:`` fields until the empty line (RFC 5322 2.1).

        ``_hdr_carry`` is LF plus the start of the current line while that
        line is shorter than the field name (undecided), else empty.
        """
        text = self._hdr_carry + out
        end = text.find(b"\n\n")
        region = text if end < 0 else text[: end + 1]
        self._received += region.lower().count(b"\nreceived:")
        if end >= 0:
            self._in_header = False
            self._hdr_carry = b""
            return
        nl = text.rfind(b"\n")
        if nl >= 0:
            tail = text[nl + 1 :]
            self._hdr_carry = b"\n" + tail if len(tail) < 9 else b""

    def _data_answered(self) -> None:
        self._due -= 1
        if self._due <= 0:
            self._enter(State.GREETED)
        else:
            # LMTP (RFC 2033 4.2): the same DataEnd wants another answer.
            self._pending = _Await.DATA_END
            self._delivered = True


_HANDLERS: Final[dict[str, Callable[[SMTPServer, str], None]]] = {
    "HELO": SMTPServer._cmd_helo,
    "EHLO": SMTPServer._cmd_ehlo,
    "LHLO": SMTPServer._cmd_lhlo,
    "MAIL": SMTPServer._cmd_mail,
    "RCPT": SMTPServer._cmd_rcpt,
    "DATA": SMTPServer._cmd_data,
    "RSET": SMTPServer._cmd_rset,
    "NOOP": SMTPServer._cmd_noop,
    "QUIT": SMTPServer._cmd_quit,
    "HELP": SMTPServer._cmd_help,
    "VRFY": SMTPServer._cmd_vrfy,
    "EXPN": SMTPServer._cmd_expn,
    "STARTTLS": SMTPServer._cmd_starttls,
    "AUTH": SMTPServer._cmd_auth,
}
