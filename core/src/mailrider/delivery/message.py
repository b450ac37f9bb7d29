"""The queued message as a local delivery reads it, and what an OS error means.

Kept apart from :mod:`mailrider.delivery.common` so that the long-lived
delivery worker (:mod:`mailrider.proc.mda_worker`) imports no more than it
uses: this module needs only ``os`` and ``errno`` (docs/performance.md §4,
"What the worker imports"). Every read is an ``os.pread`` from an explicit
offset, so the caller's file position is irrelevant and left untouched; the
descriptor is never closed.
"""

from __future__ import annotations

import errno
import os

from mailrider.errors import TempFail

#: ``typing.TYPE_CHECKING`` without importing typing (nor collections): this
#: module is loaded by the delivery worker, which imports as little as it can
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["CHUNK_SIZE", "HEADER_SECTION_MAX", "Message", "header_has", "os_failure"]

#: read size for message chunks
CHUNK_SIZE = 65536

#: how much of the message is searched for the end of the header section
HEADER_SECTION_MAX = 1024 * 1024

# errno values that mean "no room for this mail right now" (RFC 3463 4.2.2).
_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


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
