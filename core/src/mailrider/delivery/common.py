"""What every local delivery method shares.

These helpers run in the delivery child (already running as the recipient),
are synchronous, and read the queued message through a file descriptor that
they never move nor close: every read is an ``os.pread`` from an explicit
offset, so the caller's file position is irrelevant and left untouched.

The queued message has LF line endings, is dot-unstuffed and starts with our
Received header (docs/queue.md §3); the bytes are never decoded.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from mailrider import paths
from mailrider.delivery.format import FormatContext, split_address
from mailrider.errors import TempFail

__all__ = [
    "CHUNK_SIZE",
    "HEADER_SECTION_MAX",
    "Message",
    "delivery_headers",
    "extension_of",
    "mda_environment",
    "os_failure",
    "sanitize_text",
]

#: read size for message chunks
CHUNK_SIZE = 65536

#: how much of the message is searched for the end of the header section
HEADER_SECTION_MAX = 1024 * 1024

# errno values that mean "no room for this mail right now" (RFC 3463 4.2.2).
_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def sanitize_text(text: str, limit: int = 200) -> str:
    """A one-line, printable, bounded rendering of ``text`` for a reply or log."""
    line = text.strip().split("\n", 1)[0].strip()
    clean = "".join(c if c.isprintable() else "?" for c in line)
    return clean[:limit]


def _header_value(value: str) -> bytes:
    # No CR, LF, NUL or other control may reach a header line.
    return "".join(c for c in value if c.isprintable()).encode("utf-8", "replace")


def delivery_headers(sender: str, dest: str) -> bytes:
    """``Return-Path`` and ``Delivered-To`` lines to prepend to a local delivery."""
    return (
        b"Return-Path: <"
        + _header_value(sender).replace(b"<", b"").replace(b">", b"")
        + b">\nDelivered-To: "
        + _header_value(dest)
        + b"\n"
    )


def extension_of(user: str, delim: str = "+") -> str:
    """The sub-address tag of a local part: ``user+tag`` -> ``tag`` ("" if none)."""
    if not delim:
        return ""
    head, sep, tag = user.partition(delim)
    return tag if sep and head else ""


def _env_value(value: str) -> str:
    # NUL cannot be in an environment string; controls have no business there.
    return "".join(c for c in value if c.isprintable())


def mda_environment(
    ctx: FormatContext, *, home: str, user: str, extension: str
) -> dict[str, str]:
    """The environment of an mda command (docs/config.md §5, the mda contract).

    ``RECIPIENT`` is the expanded destination, ``ORIGINAL_RECIPIENT`` the
    address as received; ``LOCAL`` and ``DOMAIN`` are the two halves of the
    destination; ``SENDER`` is empty for the null sender.
    """
    local, domain = split_address(ctx.dest)
    env = {
        "DOMAIN": domain,
        "EXTENSION": extension,
        "HOME": home,
        "LOCAL": local,
        "LOGNAME": user,
        "ORIGINAL_RECIPIENT": ctx.rcpt,
        "PATH": paths.MDA_PATH,
        "RECIPIENT": ctx.dest,
        "SENDER": ctx.sender,
        "SHELL": paths.SHELL,
        "USER": user,
    }
    return {k: _env_value(v) for k, v in env.items()}


def os_failure(exc: OSError, what: str) -> TempFail:
    """The temporary failure an OS error during delivery means.

    Every OS error is temporary: a full disk or quota (452 4.2.2) clears up,
    and an I/O error, a permission problem or a path that is not what it
    should be (451 4.3.0) is almost always a configuration or system fault
    that the administrator fixes; bouncing would lose mail that the queue can
    keep until it is fixed or the envelope expires.
    """
    reason = os.strerror(exc.errno) if exc.errno is not None else str(exc)
    if exc.errno in _FULL:
        return TempFail(f"{what}: {reason}", 452, "4.2.2")
    return TempFail(f"{what}: {reason}", 451, "4.3.0")


class Message:
    """Read-only view of the queued message behind a file descriptor."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def iter_chunks(self, size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The whole message from offset 0, in chunks of at most ``size`` bytes."""
        offset = 0
        while True:
            chunk = os.pread(self.fd, size, offset)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk

    def iter_lines(self, prepend: bytes = b"", size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """``prepend`` then the message, one line (with its LF) at a time.

        The last line may lack its LF when the message does not end with one.
        """
        parts: list[bytes] = []
        for chunk in _chain(prepend, self.iter_chunks(size)):
            start = 0
            while (nl := chunk.find(b"\n", start)) >= 0:
                piece = chunk[start : nl + 1]
                if parts:
                    parts.append(piece)
                    piece = b"".join(parts)
                    parts.clear()
                yield piece
                start = nl + 1
            if start < len(chunk):
                parts.append(chunk[start:])
        if parts:
            yield b"".join(parts)

    def header_section(self) -> bytes:
        """The header lines (up to the first empty line), at most HEADER_SECTION_MAX bytes."""
        head = b""
        for chunk in self.iter_chunks():
            if not head and chunk.startswith(b"\n"):
                return b""
            seen = max(len(head) - 1, 0)
            head += chunk
            end = head.find(b"\n\n", seen)
            if end >= 0:
                return head[: end + 1]
            if len(head) >= HEADER_SECTION_MAX:
                break
        return head[:HEADER_SECTION_MAX]

    def has_spam_header(self) -> bool:
        """Whether the header section has ``X-Spam: Yes`` (case-insensitive)."""
        return header_has(self.header_section(), b"x-spam", b"yes")


def header_has(section: bytes, name: bytes, value: bytes) -> bool:
    """Whether a header field ``name`` (unfolded, case-insensitive) equals ``value``."""
    fields: list[bytes] = []
    for line in section.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b" " + line.strip()
        else:
            fields.append(line)
    for field in fields:
        key, colon, rest = field.partition(b":")
        if colon and key.strip().lower() == name and rest.strip().lower() == value:
            return True
    return False


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
