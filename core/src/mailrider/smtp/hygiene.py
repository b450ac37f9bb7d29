"""Header hygiene of every message we queue, as OpenSMTPD and Postfix do it.

:class:`HeaderHygiene` sits between the message bytes (LF line endings,
dot-unstuffed) and the spool file. In the header section it

- removes every ``Bcc:`` and ``Resent-Bcc:`` field, continuation lines
  included (RFC 5322 3.6.3: the blind copies must not be shown to the other
  recipients);
- when asked (``add_missing``: local submissions and the submission port,
  where OpenSMTPD adds them), adds ``Date:`` and ``Message-ID:`` when the
  message has none (RFC 5322 3.6: both are expected of every message;
  RFC 6409 8.2, 8.3: a submission server may add them), at the end of the
  header section, as OpenSMTPD does.

Invariants:

- Streaming: a field is classified from its first bytes and then passed
  through (or dropped) as it arrives. At most ``limit`` bytes of one line
  (:data:`limits.HEADER_LINE_HOLD`) are held while its field name is read; a
  longer line without a colon is not a header field, so the header section
  ends there.
- Only the header section is examined; every byte of the body, and of every
  field that is kept, is passed through byte-identical, in order.
- The fields added are built from our host name, a random id and the clock,
  never from message content.
"""

from __future__ import annotations

import email.utils
import re
import secrets
import time

from mailrider import limits

# RFC 5322 3.6.8 field name (ftext), obsolete WSP before the colon allowed
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_DROP = frozenset({b"bcc", b"resent-bcc"})
_HOST_BAD = re.compile(r"[^A-Za-z0-9.\-_\[\]:]")


def message_id(hostname: str) -> bytes:
    """A new ``Message-ID:`` field, OpenSMTPD's form: 16 hex digits of a
    random 64-bit id at the listener's host name (RFC 5322 3.6.4)."""
    host = _HOST_BAD.sub("", hostname)[:255] or "localhost"
    return f"Message-ID: <{secrets.randbits(64):016x}@{host}>\n".encode("ascii")


def date_field(when: float | None = None) -> bytes:
    """A ``Date:`` field in local time (RFC 5322 3.3)."""
    stamp = time.time() if when is None else when
    return f"Date: {email.utils.formatdate(stamp, localtime=True)}\n".encode("ascii")


class HeaderHygiene:
    """Drop Bcc:/Resent-Bcc:, optionally add Date:/Message-ID:; the rest unchanged."""

    def __init__(self, hostname: str, add_missing: bool, limit: int = limits.HEADER_LINE_HOLD,
                 when: float | None = None) -> None:
        self.hostname = hostname
        self.add_missing = add_missing
        self.limit = limit
        self.when = when
        self.done = False  # the header section is over: pass everything through
        self.line = bytearray()  # the start of a line not yet classified
        self.mode = b""  # inside a line: b"keep" or b"drop"; b"" at a line start
        self.dropping = False  # the current field is dropped (continuations too)
        self.fields = 0  # fields seen in the header section
        self.has_date = False
        self.has_message_id = False
        self.dropped = 0  # fields removed
        self.added: list[str] = []  # fields added

    def _additions(self) -> bytes:
        self.done = True
        if not self.add_missing:
            return b""
        out = b""
        if not self.has_date:
            out += date_field(self.when)
            self.added.append("Date")
        if not self.has_message_id:
            out += message_id(self.hostname)
            self.added.append("Message-ID")
        return out

    def _classify(self, start: bytes) -> bytes:
        """The first bytes of a line (up to its colon, its LF or the limit):
        what to write now. Sets ``mode`` or ends the header section."""
        if start[:1] in (b" ", b"\t") and self.fields:
            self.mode = b"drop" if self.dropping else b"keep"
        else:
            m = _FIELD.match(start)
            if m is None:  # a blank line, or body text: the header section ends
                return self._additions() + start
            name = m.group(1).lower()
            self.fields += 1
            self.has_date = self.has_date or name == b"date"
            self.has_message_id = self.has_message_id or name == b"message-id"
            self.dropping = name in _DROP
            self.dropped += self.dropping
            self.mode = b"drop" if self.dropping else b"keep"
        return b"" if self.mode == b"drop" else start

    def feed(self, data: bytes) -> bytes:
        """Message bytes in; the bytes to write now out."""
        if self.done:
            return data
        out = bytearray()
        i = 0
        while i < len(data) and not self.done:
            if self.mode:  # inside a classified line: up to its LF
                nl = data.find(b"\n", i)
                end = len(data) if nl < 0 else nl + 1
                if self.mode == b"keep":
                    out += data[i:end]
                if nl >= 0:
                    self.mode = b""
                i = end
                continue
            # a line start: hold bytes until the field can be classified
            room = self.limit - len(self.line)
            chunk = data[i:i + room]
            stop = min((p for p in (chunk.find(b"\n"), chunk.find(b":")) if p >= 0),
                       default=-1)
            if stop < 0 and len(self.line) + len(chunk) < self.limit:
                self.line += chunk
                i += len(chunk)
                continue
            take = len(chunk) if stop < 0 else stop + 1
            start = bytes(self.line) + chunk[:take]
            self.line = bytearray()
            i += take
            out += self._classify(start)
            if start.endswith(b"\n") and not self.done:
                self.mode = b""
        out += data[i:]
        return bytes(out)

    def finish(self) -> bytes:
        """End of message: what is still held, and the additions when the
        message ended inside its header section."""
        if self.done:
            return b""
        out = b""
        if self.line:
            start, self.line = bytes(self.line), bytearray()
            out = self._classify(start)
            if self.done:
                return out
        add = self._additions()
        if add and self.mode == b"keep":
            add = b"\n" + add  # the last kept line was cut off: the fields need their own
        self.mode = b""
        return out + add
