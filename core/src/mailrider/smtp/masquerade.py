"""``senders <t> masquerade``: From: rewritten to the authenticated envelope sender.

OpenSMTPD rewrites the address of the message's From: header to the MAIL FROM
address once the senders table allowed it. :class:`FromRewriter` sits between
the message bytes (LF line endings, dot-unstuffed) and the spool file: it
holds the header section, at most ``limit`` bytes, then writes it out with
every From: field (continuation lines included) replaced by
``From: <display name> <sender>`` or ``From: sender``.

Invariants:

- Only the header section is examined; every other byte, and every other
  header field, is passed through byte-identical, in order.
- The new field is built from the validated envelope sender and, at most,
  the original display name when it is printable text (no CR, LF or other
  control character, no group or address-list syntax), re-quoted unless it
  is a plain phrase of atoms. Anything else is dropped, never copied.
- At most ``limit`` bytes are held: a longer header section is passed
  through unchanged (``overflowed`` tells the caller to log it).
"""

from __future__ import annotations

import re

# RFC 5322 3.6.8 field name (ftext), obsolete WSP before the colon allowed
_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_FROM = re.compile(rb"from[ \t]*:", re.IGNORECASE)
# RFC 5322 3.2.3 atext, for a display name that needs no quoting
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+( [A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
#: RFC 5322 2.1.1: a line is at most 998 characters
_LINE_MAX = 998


def display_name(value: bytes) -> tuple[str, bool] | None:
    """The display name of a From: value (unfolded), if it is safe to keep,
    and whether it was a quoted-string."""
    if b"<" not in value:
        return None
    raw, angle = value.split(b"<", 1)
    if angle.count(b">") != 1 or angle.split(b">", 1)[1].strip(b" \t"):
        return None  # not exactly one mailbox "name <addr>": several, or trailing text
    raw = raw.strip(b" \t")
    try:
        text = re.sub(r"[ \t]+", " ", raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None
    quoted = len(text) >= 2 and text[0] == '"' and text[-1] == '"'
    if quoted:
        out, i, inner = [], 0, text[1:-1]
        while i < len(inner):
            c = inner[i]
            if c == "\\" and i + 1 < len(inner):
                i += 1
                c = inner[i]
            elif c in '"\\':
                return None  # not one quoted-string
            out.append(c)
            i += 1
        text = "".join(out)
    elif any(c in text for c in '",:;<>@()[]\\'):
        return None  # a group, several addresses, comments: not one plain phrase
    text = text.strip(" ")
    if not text or not text.isprintable():
        return None  # control characters (CR, LF, ...) or an empty name
    return text, quoted


def _name_bytes(name: str, quoted: bool) -> bytes:
    if not quoted and _ATOMS.fullmatch(name):
        return name.encode("ascii")
    return ('"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"').encode("utf-8")


def from_field(sender: str, name: tuple[str, bool] | None) -> bytes:
    """The replacement field, LF-terminated."""
    addr = sender.encode("utf-8")
    if name is not None:
        line = b"From: " + _name_bytes(*name) + b" <" + addr + b">"
        if len(line) <= _LINE_MAX:
            return line + b"\n"
    return b"From: " + addr + b"\n"


def rewrite_header(head: bytes, sender: str) -> tuple[bytes, int]:
    """``head`` (the lines of one header section) with its From: fields
    replaced, and how many were."""
    lines = [ln + b"\n" for ln in head.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    out: list[bytes] = []
    count = 0
    i = 0
    while i < len(lines):
        j = i + 1
        while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
            j += 1
        m = _FROM.match(lines[i])
        if m is None:
            out += lines[i:j]
        else:
            value = b"".join(ln.rstrip(b"\r\n") for ln in lines[i:j])[m.end():]
            out.append(from_field(sender, display_name(value)))
            count += 1
            if not lines[j - 1].endswith(b"\n"):
                out[-1] = out[-1][:-1]  # the message ended on this line: keep it so
        i = j
    return b"".join(out), count


class FromRewriter:
    """Hold the header section, then hand it out rewritten; the rest unchanged."""

    def __init__(self, sender: str, limit: int) -> None:
        self.sender = sender
        self.limit = limit
        self.buf = bytearray()
        self.scan = 0  # offset of the first line not yet classified
        self.done = False
        self.overflowed = False
        self.rewritten = 0  # From: fields replaced

    def _is_header_line(self, line: bytes) -> bool:
        if line[:1] in (b" ", b"\t"):
            return self.scan > 0  # a continuation needs a field before it
        return _FIELD.match(line) is not None

    def _release(self, end: int) -> bytes:
        head, rest = bytes(self.buf[:end]), bytes(self.buf[end:])
        self.buf = bytearray()
        self.done = True
        new, self.rewritten = rewrite_header(head, self.sender)
        return new + rest

    def feed(self, data: bytes) -> bytes:
        """Message bytes in; the bytes that may be written now out."""
        if self.done:
            return data
        self.buf += data
        while True:
            nl = self.buf.find(b"\n", self.scan)
            if nl < 0:
                break
            if not self._is_header_line(bytes(self.buf[self.scan:nl + 1])):
                return self._release(self.scan)  # blank line or body: the header ends
            self.scan = nl + 1
        if len(self.buf) > self.limit:
            out = bytes(self.buf)
            self.buf = bytearray()
            self.done = self.overflowed = True
            return out
        return b""

    def finish(self) -> bytes:
        """End of message: what is still held (a message that is all header)."""
        if self.done:
            return b""
        tail = bytes(self.buf[self.scan:])
        end = len(self.buf) if tail and self._is_header_line(tail) else self.scan
        return self._release(end)
