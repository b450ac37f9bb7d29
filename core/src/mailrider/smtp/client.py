"""The sans-I/O SMTP (and LMTP) client state machine, twin of :mod:`server`.

Replies go in with :meth:`SMTPClient.receive`, events come out of
:meth:`SMTPClient.next_event`, commands come out of
:meth:`SMTPClient.data_to_send`.  No sockets, clocks, logging or TLS here:
the process owning the socket applies the RFC 5321 4.5.3.2 timeouts
(``limits.SMTP_*_TIMEOUT``) and performs the TLS handshake.

Invariants:

* One session state (:class:`ClientState`) at a time, changed only by
  ``_enter``; the application calls legal in each state are the table
  ``_CALLS``.
* Every command sent appends what its reply means to one queue; replies
  are matched to it in order (RFC 2920 3.1), so pipelined MAIL, RCPTs and
  DATA are answered exactly as when sent one by one.  A reply nobody asked
  for is a protocol error.
* A reply must be RFC 5321 4.2 shaped (three digits 2-5/0-5/0-9, then
  space, hyphen or the line end; the same code on every line), a line at
  most ``reply_line_max`` octets and at most ``reply_lines_max`` lines;
  anything else ends the session with a temporary :class:`Failed`.
  Bytes received after the 220 to STARTTLS and before the handshake are a
  protocol error (a response injection: RFC 3207 4.2 / CVE-2011-1575).
* Outgoing message bytes go through :class:`BodyEncoder`: every line ends
  in CRLF (LF, CR and CRLF in the input are all line ends), every line
  starting with "." is dot-stuffed, and the only CRLF "." CRLF is the
  terminator, so a mailrider relay can never carry a smuggled message.
* Towards a server offering CHUNKING and PIPELINING (RFC 3030, 2920) the
  message leaves in BDAT chunks of at most ``chunk_size`` octets, the
  last one with LAST, instead of DATA: the same line-end normalisation,
  no dot-stuffing, no terminator.  A failed chunk fails the transaction
  (its reply is the result), whatever the LAST chunk is answered.
* Sender, recipients and parameters never contain CR, LF or another control
  character (:class:`LocalProtocolError`), so a command cannot be injected.
* The password never appears in an event, a reply or a repr.
* Each session ends with exactly one :class:`Closed`.
"""

from __future__ import annotations

import base64
import enum
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from mailrider import limits
from mailrider.smtp.address import xtext_encode
from mailrider.smtp.errors import LocalProtocolError
from mailrider.smtp.reply import Reply, split_status

__all__ = [
    "AuthResult",
    "BodyEncoder",
    "ClientConfig",
    "ClientEvent",
    "ClientState",
    "Closed",
    "DataReady",
    "Failed",
    "Greeting",
    "LocalProtocolError",
    "MailResult",
    "RcptDSN",
    "RcptResult",
    "Ready",
    "SMTPClient",
    "StartTLSReady",
    "TransactionResult",
]

# RFC 5321 4.5.3.2 client timeouts, for the process that owns the socket.
GREETING_TIMEOUT: Final = limits.SMTP_GREETING_TIMEOUT
MAIL_TIMEOUT: Final = limits.SMTP_MAIL_TIMEOUT
RCPT_TIMEOUT: Final = limits.SMTP_RCPT_TIMEOUT
DATA_INIT_TIMEOUT: Final = limits.SMTP_DATA_INIT_TIMEOUT
DATA_BLOCK_TIMEOUT: Final = limits.SMTP_DATA_BLOCK_TIMEOUT
DATA_END_TIMEOUT: Final = limits.SMTP_DATA_END_TIMEOUT

Stage = Literal[
    "greeting", "helo", "starttls", "auth", "mail", "rcpt", "data", "message", "rset", "quit"
]


# ------------------------------------------------------------------ config


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How to behave towards one server.

    ``auth`` (username, password) is only used over TLS unless
    ``allow_plain_auth``, and with ``auth_needs_verified_tls`` only over TLS
    whose peer certificate the application verified (``implicit_tls_verified``,
    ``tls_established(verified=True)``); it is left out of the repr.  ``want_dsn`` passes
    DSN parameters on when the server offers DSN (RFC 3461 4).
    """

    helo_name: str
    lmtp: bool = False
    want_starttls: Literal["never", "opportunistic", "require"] = "opportunistic"
    auth: tuple[str, str] | None = field(default=None, repr=False)
    allow_plain_auth: bool = False
    auth_needs_verified_tls: bool = False
    want_dsn: bool = True
    implicit_tls: bool = False  # smtps: the session is TLS from the start
    implicit_tls_verified: bool = False  # ... and its peer certificate verified
    reply_line_max: int = limits.SMTP_REPLY_LINE_MAX
    reply_lines_max: int = limits.SMTP_REPLY_LINES_MAX
    want_chunking: bool = True  # BDAT when the server offers CHUNKING and PIPELINING
    chunk_size: int = limits.BDAT_CHUNK_SIZE

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"bad chunk_size {self.chunk_size!r}")
        if not self.helo_name or not _TOKEN_RE.fullmatch(self.helo_name):
            raise ValueError(f"bad helo name {self.helo_name!r}")
        if self.want_starttls not in ("never", "opportunistic", "require"):
            raise ValueError(f"bad want_starttls {self.want_starttls!r}")


@dataclass(frozen=True, slots=True)
class RcptDSN:
    """RFC 3461 4.1/4.2 for one recipient: NOTIFY values and ORCPT
    (``"rfc822;user@example.org"``, decoded)."""

    notify: frozenset[str] = frozenset()
    orcpt: str | None = None


# ------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server's 220 banner."""

    code: int
    text: str


@dataclass(frozen=True, slots=True)
class StartTLSReady:
    """220 to STARTTLS: do the handshake, then call ``tls_established()``."""


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of AUTH (RFC 4954); a failure is followed by a fatal Failed."""

    ok: bool
    reply: Reply


@dataclass(frozen=True, slots=True)
class Ready:
    """The session is set up (EHLO/HELO, STARTTLS, AUTH done): start a
    transaction.  ``extensions`` maps upper-case EHLO keywords to their
    parameters ("" when none); empty after HELO."""

    extensions: dict[str, str]


@dataclass(frozen=True, slots=True)
class MailResult:
    reply: Reply


@dataclass(frozen=True, slots=True)
class RcptResult:
    rcpt: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class DataReady:
    """354 (or, with BDAT, every recipient answered): send the message with
    send_body() and end_body()."""


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """The reply to the end of data; in LMTP one per accepted recipient
    (``rcpt`` set, RFC 2033 4.2).  ``dsn_relayed``: the DSN parameters were
    passed on to the server (RFC 3461 6.2.1 "relayed" otherwise)."""

    reply: Reply
    rcpt: str | None = None
    dsn_relayed: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """Something failed at ``stage``.  ``fatal``: the session is over (the
    machine sends QUIT when it can; Closed follows); otherwise only the
    transaction failed and the session is Ready again."""

    reply: Reply
    temporary: bool
    stage: Stage
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over: close the connection. Always last."""


ClientEvent = (
    Greeting
    | StartTLSReady
    | AuthResult
    | Ready
    | MailResult
    | RcptResult
    | DataReady
    | TransactionResult
    | Failed
    | Closed
)


# ------------------------------------------------------------ body encoder


class BodyEncoder:
    """Message bytes to DATA wire format (RFC 5321 4.1.1.4, 4.5.2).

    CRLF, lone LF and lone CR each end a line and leave as CRLF; a line
    starting with "." gets a second one.  :meth:`end` closes the last line
    if needed and adds the terminator "." CRLF.  Chunks may be split
    anywhere, even inside a CRLF pair.  With ``stuff=False`` (BDAT, RFC
    3030) only the line ends are made CRLF: no dot-stuffing, no terminator.
    """

    def __init__(self, stuff: bool = True) -> None:
        self._stuff = stuff
        self._bol = True  # the output so far ends a line (or is empty)
        self._cr = False  # a CR was held back: it may be the start of CRLF
        self._ended = False

    def feed(self, chunk: bytes) -> bytes:
        if self._ended:
            raise LocalProtocolError("the message has ended")
        if self._cr:
            chunk = b"\r" + chunk
        self._cr = chunk.endswith(b"\r")
        if self._cr:
            chunk = chunk[:-1]
        if not chunk:
            return b""
        data = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if self._stuff:
            if self._bol and data.startswith(b"."):
                data = b"." + data
            data = data.replace(b"\r\n.", b"\r\n..")
        self._bol = data.endswith(b"\r\n")
        return data

    def end(self) -> bytes:
        if self._ended:
            raise LocalProtocolError("the message has ended")
        out = b""
        if self._cr:
            out = b"\r\n"
            self._cr = False
        elif not self._bol:
            out = b"\r\n"
        self._ended = True
        return out + b".\r\n" if self._stuff else out


# ------------------------------------------------------------------- states


class ClientState(enum.Enum):
    """Session states."""

    GREETING = "greeting"  # waiting for the 220 banner
    HELLO = "hello"  # EHLO/HELO/LHLO sent
    STARTTLS = "starttls"  # STARTTLS sent
    TLS = "tls"  # 220 to STARTTLS received: the application does the handshake
    AUTH = "auth"  # AUTH exchange under way
    READY = "ready"  # no transaction: start_transaction() or quit()
    TRANSACTION = "transaction"  # MAIL/RCPT/DATA replies awaited
    BODY = "body"  # 354 received: send_body()/end_body()
    DATA_END = "data-end"  # final reply (replies, LMTP) awaited
    QUIT = "quit"  # QUIT sent (or about to be)
    CLOSED = "closed"


_CALLS: Final[dict[str, frozenset[ClientState]]] = {
    "start_transaction": frozenset({ClientState.READY}),
    "send_body": frozenset({ClientState.BODY}),
    "end_body": frozenset({ClientState.BODY}),
    "tls_established": frozenset({ClientState.TLS}),
}


class _K(enum.Enum):
    """What an awaited reply answers."""

    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    DATA_END = "data-end"
    CHUNK = "chunk"  # a BDAT chunk that is not the last
    IGNORE = "ignore"  # RSET, and the end of a message nobody should get
    QUIT = "quit"


_STAGE: Final[dict[_K, Stage]] = {
    _K.GREETING: "greeting",
    _K.EHLO: "helo",
    _K.HELO: "helo",
    _K.STARTTLS: "starttls",
    _K.AUTH: "auth",
    _K.MAIL: "mail",
    _K.RCPT: "rcpt",
    _K.DATA: "data",
    _K.DATA_END: "message",
    _K.CHUNK: "message",
    _K.IGNORE: "rset",
    _K.QUIT: "quit",
}

# RFC 5321 4.2: Reply-code = %x32-35 %x30-35 %x30-39, then SP / "-" / CRLF.
_REPLY_RE: Final = re.compile(rb"([2-5][0-5][0-9])(?:([ -])(.*))?")
# A token safe in a command: no space, control character or angle bracket.
_TOKEN_RE: Final = re.compile(r"[^\x00-\x20\x7f<>]+")
_CTL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_NOTIFY: Final = frozenset({"SUCCESS", "FAILURE", "DELAY", "NEVER"})

_R_EOF: Final = Reply(421, "4.4.2", "Connection closed by the server")
_R_TLS_MISSING: Final = Reply(421, "4.7.0", "TLS required but not offered")
_R_AUTH_CLEAR: Final = Reply(421, "4.7.0", "Refusing to authenticate without TLS")
_R_AUTH_MISSING: Final = Reply(421, "4.7.0", "No supported AUTH mechanism offered")
_R_AUTH_UNVERIFIED: Final = Reply(421, "4.7.0", "Refusing to authenticate to a TLS peer "
                                                "whose certificate was not verified")
_R_SIZE: Final = Reply(552, "5.3.4", "Message size exceeds the server's fixed maximum")
_R_8BIT: Final = Reply(554, "5.6.3", "8-bit content not supported")
_R_UTF8: Final = Reply(553, "5.6.7", "SMTPUTF8 not supported by the server")


def _local(reason: str) -> Reply:
    return Reply(421, "4.5.0", f"Protocol error: {reason}")


class SMTPClient:
    """One client-side SMTP/LMTP session; see the module docstring."""

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._state = ClientState.GREETING
        self._buf = bytearray()
        self._out = bytearray()
        self._events: deque[ClientEvent] = deque()
        self._expect: deque[_K] = deque([_K.GREETING])
        self._lines: list[tuple[int, str]] = []  # lines of the reply being read
        self._tls = config.implicit_tls
        self._tls_verified = config.implicit_tls and config.implicit_tls_verified
        self._ext: dict[str, str] = {}
        self._helo_tried = False
        self._starttls_tried = False
        self._authed = False
        self._auth_step = ""
        # transaction
        self._pipelined = False
        self._rcpts: list[str] = []
        self._rcpt_lines: list[str] = []
        self._rcpt_next = 0  # next RCPT to send (without pipelining)
        self._rcpt_answered = 0
        self._accepted: list[str] = []
        self._mail_reply: Reply | None = None
        self._last_rcpt_reply: Reply | None = None
        self._dsn = False
        self._due: deque[str] = deque()  # LMTP: recipients owed a final reply
        self._body: BodyEncoder | None = None
        self._chunking = False  # this transaction sends BDAT (RFC 3030)
        self._chunk = bytearray()  # encoded octets not yet sent in a BDAT
        self._chunk_error: Reply | None = None  # the first failed chunk's reply

    # ------------------------------------------------------------------ API

    @property
    def chunking(self) -> bool:
        """The current (or last) transaction sends BDAT chunks, not DATA."""
        return self._chunking

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def closed(self) -> bool:
        """True once the session is over: flush data_to_send(), then close."""
        return self._state is ClientState.CLOSED

    @property
    def tls(self) -> bool:
        return self._tls

    @property
    def hello_verb(self) -> str:
        """The command that opened the session: LHLO, EHLO, or HELO after an
        old server refused EHLO."""
        return "LHLO" if self._config.lmtp else ("HELO" if self._helo_tried else "EHLO")

    @property
    def extensions(self) -> dict[str, str]:
        """The extensions of the last EHLO reply (keywords upper-case)."""
        return dict(self._ext)

    @property
    def dsn_passed(self) -> bool:
        """True when the current transaction passed DSN parameters on."""
        return self._dsn

    def receive(self, data: bytes) -> None:
        """Feed bytes read from the server; ``b""`` means end of file."""
        if self._state is ClientState.CLOSED:
            return
        if not data:
            if self._state is ClientState.QUIT:
                self._close()
            else:
                self._fatal(_R_EOF, self._stage(), quit=False)
            return
        if self._state is ClientState.TLS:
            self._protocol_error("data received before the TLS handshake")
            return
        self._buf += data
        self._parse()

    def next_event(self) -> ClientEvent | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def tls_established(self, *, verified: bool = False) -> None:
        """The TLS handshake after StartTLSReady completed: greet again
        (RFC 3207 4.2: all knowledge from before TLS is discarded).
        ``verified``: the peer's certificate was checked and good."""
        self._check("tls_established")
        self._tls = True
        self._tls_verified = verified
        self._ext = {}
        self._buf.clear()
        self._lines.clear()
        self._hello()

    def start_transaction(
        self,
        sender: str,
        rcpts: list[tuple[str, RcptDSN]],
        size: int,
        body_8bit: bool,
        smtputf8: bool,
        dsn_ret: Literal["FULL", "HDRS"] | None = None,
        envid: str | None = None,
    ) -> None:
        """Send MAIL, the RCPTs (and DATA when pipelining).

        ``sender`` is "" for the null reverse-path.  When the server cannot
        take the message as it is (SIZE, 8BITMIME, SMTPUTF8) nothing is sent
        and a non-fatal :class:`Failed` is the only event.
        """
        self._check("start_transaction")
        if not rcpts:
            raise LocalProtocolError("a transaction needs a recipient")
        _check_path(sender, smtputf8, allow_empty=True)
        for rcpt, _ in rcpts:
            _check_path(rcpt, smtputf8)
        ext = self._ext
        limit = ext.get("SIZE", "")
        if limit.isdigit() and limit.isascii() and 0 < int(limit) < size:
            # RFC 1870 6.1: do not send what the server said it will refuse.
            self._events.append(Failed(_R_SIZE, False, "mail"))
            return
        if smtputf8 and "SMTPUTF8" not in ext:
            # RFC 6531 3.7.4.1: no downgrade.
            self._events.append(Failed(_R_UTF8, False, "mail"))
            return
        if body_8bit and "8BITMIME" not in ext:
            # RFC 6152 3: we do not downgrade 8-bit content.
            self._events.append(Failed(_R_8BIT, False, "mail"))
            return
        self._dsn = self._config.want_dsn and "DSN" in ext
        params: list[str] = []
        if "SIZE" in ext and size >= 0:
            params.append(f"SIZE={size}")
        if body_8bit:
            params.append("BODY=8BITMIME")
        if smtputf8:
            params.append("SMTPUTF8")
        if self._dsn:
            if dsn_ret is not None:
                if dsn_ret not in ("FULL", "HDRS"):
                    raise LocalProtocolError(f"bad RET {dsn_ret!r}")
                params.append(f"RET={dsn_ret}")
            if envid is not None:
                params.append(f"ENVID={xtext_encode(_no_ctl(envid))}")
        mail = " ".join([f"MAIL FROM:<{sender}>", *params])
        self._rcpts = [r for r, _ in rcpts]
        self._rcpt_lines = [f"RCPT TO:<{r}>" + self._rcpt_params(d) for r, d in rcpts]
        self._rcpt_next = 0
        self._rcpt_answered = 0
        self._accepted = []
        self._mail_reply = None
        self._last_rcpt_reply = None
        self._pipelined = "PIPELINING" in ext
        # RFC 3030 4.2: chunks go back to back, so only with PIPELINING.
        self._chunking = (self._config.want_chunking and not self._config.lmtp
                          and self._pipelined and "CHUNKING" in ext)
        self._chunk_error = None
        self._enter(ClientState.TRANSACTION)
        self._command(mail, _K.MAIL)
        if self._pipelined:
            # RFC 2920 3.1: MAIL, RCPTs and DATA in one group.
            for line in self._rcpt_lines:
                self._command(line, _K.RCPT)
            self._rcpt_next = len(self._rcpt_lines)
            if not self._chunking:
                self._command("DATA", _K.DATA)

    def send_body(self, chunk: bytes) -> None:
        """Queue message bytes (LF line ends are fine; dot-stuffing is done here)."""
        self._check("send_body")
        assert self._body is not None
        data = self._body.feed(chunk)
        if not self._chunking:
            self._out += data
            return
        self._chunk += data
        size = self._config.chunk_size
        while len(self._chunk) >= size:
            self._out += b"BDAT %d\r\n" % size + self._chunk[:size]
            del self._chunk[:size]
            self._expect.append(_K.CHUNK)

    def end_body(self) -> None:
        """End the message with CRLF "." CRLF and await the final reply(ies)."""
        self._check("end_body")
        assert self._body is not None
        if self._chunking:
            self._chunk += self._body.end()
            self._out += b"BDAT %d LAST\r\n" % len(self._chunk) + self._chunk
            self._chunk.clear()
        else:
            self._out += self._body.end()
        self._body = None
        self._due = deque(self._accepted if self._config.lmtp else [""])
        for _ in self._due:
            self._expect.append(_K.DATA_END)
        self._enter(ClientState.DATA_END)

    def quit(self) -> None:
        """End the session politely (QUIT), or at once when QUIT cannot be
        sent (before the greeting, in the message, before the handshake)."""
        if self._state in (ClientState.CLOSED, ClientState.QUIT):
            return
        if self._state in (ClientState.GREETING, ClientState.BODY, ClientState.TLS):
            self._close()
            return
        self._send_quit()

    # ------------------------------------------------------------ internals

    def _check(self, call: str) -> None:
        if self._state not in _CALLS[call]:
            raise LocalProtocolError(f"{call}() in state {self._state.value}")

    def _enter(self, state: ClientState) -> None:
        """The one place where the session state changes."""
        if state is ClientState.BODY:
            self._body = BodyEncoder(stuff=not self._chunking)
            self._chunk.clear()
        elif state is ClientState.READY:
            self._body = None
            self._due.clear()
        self._state = state

    def _stage(self) -> Stage:
        return _STAGE[self._expect[0]] if self._expect else "quit"

    def _command(self, line: str, kind: _K) -> None:
        self._out += line.encode("utf-8") + b"\r\n"
        self._expect.append(kind)

    def _rcpt_params(self, dsn: RcptDSN) -> str:
        if not self._dsn:
            return ""
        out = ""
        if dsn.notify:
            notify = {x.upper() for x in dsn.notify}
            if not notify <= _NOTIFY or ("NEVER" in notify and len(notify) > 1):
                raise LocalProtocolError(f"bad NOTIFY {sorted(dsn.notify)}")
            out += " NOTIFY=" + ",".join(sorted(notify))
        if dsn.orcpt is not None:
            addr_type, semi, addr = dsn.orcpt.partition(";")
            if not semi or not _TOKEN_RE.fullmatch(addr_type):
                raise LocalProtocolError(f"bad ORCPT {dsn.orcpt!r}")
            out += f" ORCPT={addr_type};{xtext_encode(_no_ctl(addr))}"
        return out

    def _send_quit(self) -> None:
        self._command("QUIT", _K.QUIT)
        self._enter(ClientState.QUIT)

    def _close(self) -> None:
        if self._state is ClientState.CLOSED:
            return
        self._buf.clear()
        self._expect.clear()
        self._enter(ClientState.CLOSED)
        self._events.append(Closed())

    def _fatal(self, reply: Reply, stage: Stage, *, quit: bool = True) -> None:
        """The session cannot go on: report, then QUIT (or just close)."""
        self._events.append(Failed(reply, not reply.is_permanent, stage, fatal=True))
        if quit:
            self._send_quit()
        else:
            self._close()

    def _protocol_error(self, reason: str) -> None:
        self._fatal(_local(reason), self._stage(), quit=False)

    # -------------------------------------------------------------- replies

    def _parse(self) -> None:
        cfg = self._config
        while self._state is not ClientState.CLOSED:
            if self._state is ClientState.TLS and self._buf:
                self._protocol_error("data received before the TLS handshake")
                return
            i = self._buf.find(b"\n", 0, cfg.reply_line_max)
            if i < 0:
                if len(self._buf) >= cfg.reply_line_max:
                    self._protocol_error("reply line too long")
                return
            raw = bytes(self._buf[:i])
            del self._buf[: i + 1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            m = _REPLY_RE.fullmatch(raw)
            if m is None:
                self._protocol_error("malformed reply line")
                return
            code = int(m.group(1))
            if self._lines and code != self._lines[0][0]:
                self._protocol_error("reply code changed within a reply")
                return
            text = (m.group(3) or b"").decode("utf-8", "replace")
            self._lines.append((code, text))
            if len(self._lines) > cfg.reply_lines_max:
                self._protocol_error("too many reply lines")
                return
            if m.group(2) == b"-":
                continue
            texts = [t for _, t in self._lines]
            self._lines = []
            self._reply(_build_reply(code, texts))

    def _reply(self, reply: Reply) -> None:
        if not self._expect:
            if reply.code == 421:
                self._fatal(reply, "quit", quit=False)
            else:
                self._protocol_error(f"unexpected reply {reply.code}")
            return
        kind = self._expect.popleft()
        if self._state is ClientState.QUIT:
            if kind is _K.QUIT or reply.code == 421:
                self._close()
            return
        if reply.code == 421:
            # RFC 5321 3.8: the server is closing the session.
            self._fatal(reply, _STAGE[kind], quit=False)
            return
        _HANDLERS[kind](self, reply)

    def _on_greeting(self, reply: Reply) -> None:
        if reply.code != 220:
            # RFC 5321 3.1: a 554 greeting; QUIT and go.
            self._fatal(reply, "greeting")
            return
        self._events.append(Greeting(reply.code, reply.text))
        self._hello()

    def _hello(self) -> None:
        verb = "LHLO" if self._config.lmtp else "EHLO"
        self._enter(ClientState.HELLO)
        self._command(f"{verb} {self._config.helo_name}", _K.EHLO)

    def _on_ehlo(self, reply: Reply) -> None:
        if reply.code == 250:
            ext: dict[str, str] = {}
            for line in reply.lines:
                word, _, rest = line.strip().partition(" ")
                if word:
                    ext[word.upper()] = rest.strip()
            self._ext = ext
            self._after_hello()
        elif reply.is_permanent and not self._config.lmtp and not self._helo_tried:
            # RFC 5321 3.2: an old server; fall back to HELO.
            self._helo_tried = True
            self._command(f"HELO {self._config.helo_name}", _K.HELO)
        else:
            self._fatal(reply, "helo")

    def _on_helo(self, reply: Reply) -> None:
        if reply.code != 250:
            self._fatal(reply, "helo")
            return
        self._ext = {}
        self._after_hello()

    def _after_hello(self) -> None:
        cfg = self._config
        if not self._tls and cfg.want_starttls != "never" and not self._starttls_tried:
            if "STARTTLS" in self._ext:
                self._starttls_tried = True
                self._enter(ClientState.STARTTLS)
                self._command("STARTTLS", _K.STARTTLS)
                return
            if cfg.want_starttls == "require":
                self._fatal(_R_TLS_MISSING, "starttls")
                return
        if cfg.want_starttls == "require" and not self._tls:
            self._fatal(_R_TLS_MISSING, "starttls")
            return
        if cfg.auth is not None and not self._authed:
            self._start_auth(cfg.auth)
            return
        self._enter(ClientState.READY)
        self._events.append(Ready(dict(self._ext)))

    def _on_starttls(self, reply: Reply) -> None:
        if reply.code == 220:
            self._enter(ClientState.TLS)
            self._events.append(StartTLSReady())
        elif self._config.want_starttls == "require":
            self._fatal(reply, "starttls")
        else:
            # Opportunistic: carry on in clear (RFC 3207 4.1).
            self._after_hello()

    def _start_auth(self, creds: tuple[str, str]) -> None:
        if not self._tls and not self._config.allow_plain_auth:
            self._fatal(_R_AUTH_CLEAR, "auth")
            return
        if self._config.auth_needs_verified_tls and not self._tls_verified:
            self._fatal(_R_AUTH_UNVERIFIED, "auth")
            return
        mechs = self._ext.get("AUTH", "").upper().split()
        user, password = creds
        self._enter(ClientState.AUTH)
        if "PLAIN" in mechs:
            # RFC 4616 2: authzid NUL authcid NUL passwd; RFC 4954 4 initial response.
            token = _b64(b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8"))
            self._auth_step = "done"
            self._command(f"AUTH PLAIN {token}", _K.AUTH)
        elif "LOGIN" in mechs:
            self._auth_step = "user"
            self._command("AUTH LOGIN", _K.AUTH)
        else:
            self._fatal(_R_AUTH_MISSING, "auth")

    def _on_auth(self, reply: Reply) -> None:
        assert self._config.auth is not None
        user, password = self._config.auth
        if reply.code == 334 and self._auth_step in ("user", "password"):
            value = user if self._auth_step == "user" else password
            self._auth_step = "password" if self._auth_step == "user" else "done"
            self._command(_b64(value.encode("utf-8")), _K.AUTH)
            return
        ok = reply.code == 235
        self._events.append(AuthResult(ok, reply))
        if ok:
            self._authed = True
            self._after_hello()
        elif reply.code == 334:
            # A challenge we have no answer for: cancel (RFC 4954 4) and leave.
            self._command("*", _K.IGNORE)
            self._fatal(_local("unexpected AUTH challenge"), "auth")
        else:
            self._fatal(reply, "auth")

    def _on_mail(self, reply: Reply) -> None:
        self._mail_reply = reply
        self._events.append(MailResult(reply))
        if self._pipelined:
            return
        if reply.code != 250:
            self._transaction_failed(reply, "mail", open_=False)
            return
        self._send_next_rcpt()

    def _send_next_rcpt(self) -> None:
        line = self._rcpt_lines[self._rcpt_next]
        self._rcpt_next += 1
        self._command(line, _K.RCPT)

    def _on_rcpt(self, reply: Reply) -> None:
        rcpt = self._rcpts[self._rcpt_answered]
        self._rcpt_answered += 1
        self._last_rcpt_reply = reply
        if reply.code in (250, 251):
            self._accepted.append(rcpt)
        self._events.append(RcptResult(rcpt, reply))
        if self._pipelined:
            if self._chunking and self._rcpt_answered == len(self._rcpts):
                self._rcpts_done()
            return
        if self._rcpt_next < len(self._rcpt_lines):
            self._send_next_rcpt()
        elif self._accepted:
            self._command("DATA", _K.DATA)
        else:
            self._transaction_failed(reply, "rcpt", open_=True)

    def _on_data(self, reply: Reply) -> None:
        mail = self._mail_reply
        mail_ok = mail is not None and mail.code == 250
        if reply.code == 354 and mail_ok and self._accepted:
            self._enter(ClientState.BODY)
            self._events.append(DataReady())
            return
        if reply.code == 354:
            # RFC 2920 3.1: DATA accepted with no valid recipient; send an
            # empty message and ignore the answer to it.
            self._out += b".\r\n"
            self._expect.append(_K.IGNORE)
        if not mail_ok:
            assert mail is not None
            self._transaction_failed(mail, "mail", open_=False)
        elif not self._accepted:
            assert self._last_rcpt_reply is not None
            self._transaction_failed(self._last_rcpt_reply, "rcpt", open_=True)
        else:
            self._transaction_failed(reply, "data", open_=True)

    def _rcpts_done(self) -> None:
        """BDAT: every recipient is answered; the message may go (no 354)."""
        mail = self._mail_reply
        if mail is None or mail.code != 250:
            assert mail is not None
            self._transaction_failed(mail, "mail", open_=False)
        elif not self._accepted:
            assert self._last_rcpt_reply is not None
            self._transaction_failed(self._last_rcpt_reply, "rcpt", open_=True)
        else:
            self._enter(ClientState.BODY)
            self._events.append(DataReady())

    def _on_chunk(self, reply: Reply) -> None:
        if reply.code != 250 and self._chunk_error is None:
            self._chunk_error = reply

    def _transaction_failed(self, reply: Reply, stage: Stage, *, open_: bool) -> None:
        if open_:
            self._command("RSET", _K.IGNORE)
        self._enter(ClientState.READY)
        self._events.append(Failed(reply, not reply.is_permanent, stage))

    def _on_data_end(self, reply: Reply) -> None:
        rcpt = self._due.popleft() if self._due else ""
        lmtp = self._config.lmtp
        failed, self._chunk_error = self._chunk_error, None
        if failed is not None:
            # RFC 3030 2: a failed chunk failed the transaction; the LAST
            # chunk's answer (often 503) says less.  RSET to be sure it is over.
            reply = failed
            self._command("RSET", _K.IGNORE)
        self._events.append(TransactionResult(reply, rcpt if lmtp else None, self._dsn))
        if not self._due:
            self._enter(ClientState.READY)

    def _on_ignore(self, reply: Reply) -> None:
        pass

    def _on_quit(self, reply: Reply) -> None:  # pragma: no cover - handled in _reply
        self._close()


_HANDLERS: Final[dict[_K, Callable[[SMTPClient, Reply], None]]] = {
    _K.GREETING: SMTPClient._on_greeting,
    _K.EHLO: SMTPClient._on_ehlo,
    _K.HELO: SMTPClient._on_helo,
    _K.STARTTLS: SMTPClient._on_starttls,
    _K.AUTH: SMTPClient._on_auth,
    _K.MAIL: SMTPClient._on_mail,
    _K.RCPT: SMTPClient._on_rcpt,
    _K.DATA: SMTPClient._on_data,
    _K.DATA_END: SMTPClient._on_data_end,
    _K.CHUNK: SMTPClient._on_chunk,
    _K.IGNORE: SMTPClient._on_ignore,
    _K.QUIT: SMTPClient._on_quit,
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _no_ctl(value: str) -> str:
    if _CTL_RE.search(value):
        raise LocalProtocolError("control character in a parameter")
    return value


def _check_path(addr: str, smtputf8: bool, allow_empty: bool = False) -> None:
    if not addr:
        if allow_empty:
            return
        raise LocalProtocolError("empty recipient")
    if not _TOKEN_RE.fullmatch(addr) and not (
        '"' in addr and not _CTL_RE.search(addr) and "<" not in addr and ">" not in addr
    ):
        raise LocalProtocolError(f"address unfit for a command: {addr!r}")
    if not smtputf8 and not addr.isascii():
        raise LocalProtocolError("non-ASCII address without SMTPUTF8")


def _build_reply(code: int, texts: list[str]) -> Reply:
    """A :class:`Reply` from the text of each line; an enhanced status code
    is taken off the lines when the first one has it (RFC 2034 3)."""
    status, first = split_status(texts[0])
    if status and status[0] != str(code)[0]:
        status, first = "", texts[0]
    rest = texts[1:]
    if status:
        rest = [t[len(status) + 1 :] if t.startswith(status + " ") else t for t in rest]
    return Reply(code, status, first, tuple(rest))
