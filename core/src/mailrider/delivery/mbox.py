"""mbox delivery (mboxrd flavour).

Each message is written as::

    From <envelope sender or MAILER-DAEMON> <asctime date>\\n
    <prepend + message, every line matching ^>*From  given one more '>'>
    \\n                      (a blank line ends the message)

Invariants:

- The mailbox is locked two ways at once, so that every other mail program
  agrees: a dot-lock file ``<path>.lock`` (created with ``O_EXCL``, removed
  when older than :data:`limits.MBOX_LOCK_STALE`) and an ``fcntl`` lock on
  the mailbox. When the spool folder does not let the recipient create the
  dot-lock (a group-writable ``/var/mail`` without a setgid helper) the
  ``fcntl`` lock alone is used.
- A message is appended whole or not at all: on any write or fsync error
  the mailbox is truncated back to its size before the delivery.
- The mailbox is opened without following a symlink and must be a regular
  file owned by the user we run as: another local user cannot plant a link
  or a file of theirs to receive or redirect someone's mail.
- Failures are :class:`TempFail`; a mailbox still locked after ``timeout``
  seconds is ``450 4.2.0``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from mailrider import limits
from mailrider.delivery.message import Message, os_failure
from mailrider.errors import TempFail

__all__ = ["MboxItem", "deliver_mbox", "deliver_mbox_batch", "from_line", "mboxrd_quote"]

_WRITE_BUFFER = 65536
_POLL_FIRST = 0.05
_POLL_MAX = 1.0


def from_line(sender: str, when: float | None = None) -> bytes:
    """The ``From `` separator line (with its LF) for ``sender`` ("" = null sender)."""
    who = "".join("_" if c.isspace() or not c.isprintable() else c for c in sender)
    stamp = time.asctime(time.localtime(when))
    return f"From {who or 'MAILER-DAEMON'} {stamp}\n".encode("utf-8", "replace")


def mboxrd_quote(line: bytes) -> bytes:
    """Add one ``>`` to a line that reads ``From `` after any number of ``>``."""
    if line.lstrip(b">").startswith(b"From "):
        return b">" + line
    return line


class _Locked(Exception):
    pass


def _deadline_sleep(deadline: float, delay: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _Locked
    time.sleep(min(delay, remaining))
    return min(delay * 2, _POLL_MAX)


def _dotlock(lock: str, deadline: float) -> bool:
    """Take the dot-lock; False if the folder does not allow one (fcntl only)."""
    delay = _POLL_FIRST
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            try:
                age = time.time() - os.lstat(lock).st_mtime
            except FileNotFoundError:
                continue  # released meanwhile: try again at once
            if age > limits.MBOX_LOCK_STALE:
                try:
                    os.unlink(lock)
                except FileNotFoundError:
                    pass
                except OSError:
                    # Not ours to remove (sticky folder): wait like for a live one.
                    delay = _deadline_sleep(deadline, delay)
                continue
            delay = _deadline_sleep(deadline, delay)
            continue
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return False
            raise
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        return True


def _lockf(fd: int, deadline: float) -> None:
    delay = _POLL_FIRST
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        delay = _deadline_sleep(deadline, delay)


def _release(fd: int, lock: str | None) -> None:
    """Close the mailbox (its lockf lock goes with it), then remove our dot-lock."""
    if fd >= 0:
        os.close(fd)
    if lock is not None:
        try:
            os.unlink(lock)
        except OSError:
            pass


def _open_mailbox(path: str) -> int:
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise TempFail("mbox: mailbox is not a regular file owned by the recipient")
    return fd


def _write_all(fd: int, data: bytes | bytearray) -> None:
    with memoryview(data) as whole:
        view = whole
        while view:
            n = os.write(fd, view)
            view = view[n:]
        view.release()


def _separator(fd: int, size: int) -> bytes:
    """What must precede our From line so it starts a line after a blank one."""
    if size == 0:
        return b""
    tail = os.pread(fd, 2, max(size - 2, 0))
    if tail.endswith(b"\n\n") or tail == b"\n":
        return b""
    return b"\n" if tail.endswith(b"\n") else b"\n\n"


def _append(fd: int, msg: Message, sender: str, prepend: bytes, *, sync: bool = True) -> None:
    """Append one message; on any failure the mailbox is cut back to its size
    before it. ``sync=False``: the caller syncs (several messages, one fsync)."""
    size = os.fstat(fd).st_size
    try:
        buf = bytearray(_separator(fd, size))
        buf += from_line(sender)
        last = b"\n"
        for line in msg.iter_lines(prepend):
            buf += mboxrd_quote(line)
            last = line
            if len(buf) >= _WRITE_BUFFER:
                _write_all(fd, buf)
                buf.clear()
        if not last.endswith(b"\n"):
            buf += b"\n"
        buf += b"\n"
        _write_all(fd, buf)
        if sync:
            os.fsync(fd)
    except BaseException:
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError:
            pass
        raise


def deliver_mbox(
    path: str,
    msg_fd: int,
    *,
    sender: str,
    prepend: bytes = b"",
    timeout: float = limits.MBOX_LOCK_TIMEOUT,
) -> None:
    """Append ``prepend`` + the message to the mbox at ``path``, locked."""
    msg = Message(msg_fd)
    deadline = time.monotonic() + timeout
    lock = path + ".lock"
    dotlocked = False
    fd = -1
    try:
        dotlocked = _dotlock(lock, deadline)
        fd = _open_mailbox(path)
        _lockf(fd, deadline)
        _append(fd, msg, sender, prepend)
    except _Locked:
        raise TempFail("mailbox locked", 450, "4.2.0") from None
    except OSError as exc:
        raise os_failure(exc, "mbox") from exc
    finally:
        _release(fd, lock if dotlocked else None)


class MboxItem:
    """One message of :func:`deliver_mbox_batch` (a plain class: the worker
    that uses it does not import ``dataclasses``)."""

    __slots__ = ("msg_fd", "prepend", "sender")

    def __init__(self, msg_fd: int, sender: str, prepend: bytes = b"") -> None:
        self.msg_fd = msg_fd
        self.sender = sender
        self.prepend = prepend

    def __repr__(self) -> str:
        return f"MboxItem(msg_fd={self.msg_fd!r}, sender={self.sender!r})"


def deliver_mbox_batch(path: str, items: list[MboxItem], *,
                       timeout: float = limits.MBOX_LOCK_TIMEOUT) -> list[TempFail | None]:
    """Append several messages to the mbox at ``path`` under one lock and
    one ``fsync``; one outcome each (None: appended and synced).

    The invariants of :func:`deliver_mbox` hold for each message: a message
    that fails is cut back out alone (the mailbox returns to its size before
    it); when the final sync fails, the mailbox is cut back to its size before
    the batch and every message fails, so nothing is reported delivered that
    is not on disk.
    """
    out: list[TempFail | None] = [None] * len(items)
    if not items:
        return out
    deadline = time.monotonic() + timeout
    lock = path + ".lock"
    dotlocked = False
    fd = -1
    try:
        try:
            dotlocked = _dotlock(lock, deadline)
            fd = _open_mailbox(path)
            _lockf(fd, deadline)
            start = os.fstat(fd).st_size
        except _Locked:
            fail = TempFail("mailbox locked", 450, "4.2.0")
            return [fail] * len(items)
        except OSError as exc:
            fail = os_failure(exc, "mbox")
            return [fail] * len(items)
        except TempFail as exc:
            return [exc] * len(items)
        for i, item in enumerate(items):
            try:
                _append(fd, Message(item.msg_fd), item.sender, item.prepend, sync=False)
            except OSError as exc:
                out[i] = os_failure(exc, "mbox")
            except TempFail as exc:
                out[i] = exc
        try:
            os.fsync(fd)
        except OSError as exc:
            fail = os_failure(exc, "mbox")
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                pass
            return [fail] * len(items)
        return out
    finally:
        _release(fd, lock if dotlocked else None)
