"""SMTP replies: a code, an RFC 3463 enhanced status code and text.

Invariants:

* ``code`` is a three-digit reply code (RFC 5321 4.2: 2xx-5xx).
* ``status`` is empty or an enhanced status ``class.subject.detail`` whose
  class equals the first digit of ``code`` (RFC 3463 2, RFC 2034 3).  It is
  empty only where RFC 2034 3 exempts it: the greeting, the HELO/EHLO
  answer and intermediate 3xx replies.
* No line of text contains CR, LF or another control character: they are
  replaced by a space when the reply is built, so peer-supplied text (a HELO
  name echoed back) can never inject a reply line.
* ``to_bytes()`` yields lines of at most 512 octets including CRLF
  (RFC 5321 4.5.3.1.5); longer text is truncated on a character boundary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["REPLY_LINE_MAX", "Reply", "sanitise_text", "split_status"]

# RFC 5321 4.5.3.1.5: a reply line is at most 512 octets including CRLF.
REPLY_LINE_MAX = 512

_STATUS_RE = re.compile(r"[245]\.(?:0|[1-9][0-9]{0,2})\.(?:0|[1-9][0-9]{0,2})")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def sanitise_text(text: str) -> str:
    """Return ``text`` with every C0 control and DEL replaced by a space."""
    return _CONTROL_RE.sub(" ", text)


def split_status(text: str) -> tuple[str, str]:
    """Split a leading enhanced status code off ``text``.

    ``"2.0.0 queued as X"`` gives ``("2.0.0", "queued as X")``; text without
    one gives ``("", text)``.
    """
    head, sep, rest = text.partition(" ")
    if _STATUS_RE.fullmatch(head):
        return head, rest if sep else ""
    return "", text


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply; ``lines`` are the continuation lines after ``text``."""

    code: int
    status: str
    text: str
    lines: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if self.status:
            if not _STATUS_RE.fullmatch(self.status):
                raise ValueError(f"bad enhanced status code: {self.status!r}")
            if self.status[0] != str(self.code)[0]:
                raise ValueError(f"status {self.status} does not match code {self.code}")
        object.__setattr__(self, "text", sanitise_text(self.text))
        object.__setattr__(self, "lines", tuple(sanitise_text(x) for x in self.lines))

    @property
    def is_positive(self) -> bool:
        """True for 2xx and 3xx replies."""
        return self.code < 400

    @property
    def is_temporary(self) -> bool:
        """True for 4xx replies."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """True for 5xx replies."""
        return self.code >= 500

    def __str__(self) -> str:
        if self.status:
            return f"{self.code} {self.status} {self.text}"
        return f"{self.code} {self.text}"

    def to_bytes(self) -> bytes:
        """Serialise, multi-line when ``lines`` is not empty (RFC 5321 4.2.1)."""
        all_lines = (self.text, *self.lines)
        out = bytearray()
        last = len(all_lines) - 1
        for n, line in enumerate(all_lines):
            prefix = f"{self.code}{'-' if n < last else ' '}"
            if self.status:
                prefix += self.status + " "
            body = line.encode("utf-8")
            room = REPLY_LINE_MAX - 2 - len(prefix)
            if len(body) > room:
                body = body[:room].decode("utf-8", "ignore").encode("utf-8")
            out += prefix.encode("ascii") + body + b"\r\n"
        return bytes(out)
