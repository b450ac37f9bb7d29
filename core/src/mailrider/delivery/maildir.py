"""Maildir delivery (cr.yp.to/proto/maildir.html, Maildir++ folders).

Invariants:

- A message is visible in ``new/`` only once it is complete and on disk:
  it is written under ``tmp/`` with ``O_EXCL``, fsynced, hard-linked into
  ``new/`` under the same unique name, and ``new/`` itself is fsynced
  before success is reported.
- A failed delivery leaves nothing behind in ``tmp/`` or ``new/``.
- Directories we create are mode 0700 (the folder holds private mail);
  existing ones are left as they are.
- Every failure is a :class:`TempFail` (see :func:`message.os_failure` for
  why even a permission problem is temporary).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import stat
import time

from mailrider.delivery.message import Message, os_failure
from mailrider.errors import TempFail
from mailrider.syncfs import SYNCFS

__all__ = ["JUNK_FOLDER", "MaildirBatch", "deliver_maildir", "folder_path", "unique_name"]

#: the Maildir++ folder ``junk`` delivers spam into
JUNK_FOLDER = "Junk"

_counter = itertools.count(1)

# Attempts at a fresh unique name before giving up: collisions need the same
# second, microsecond, pid and counter, so one retry is already paranoid.
_NAME_ATTEMPTS = 5


def _nodename() -> str:
    return os.uname().nodename  # socket.gethostname's answer, without importing socket


def _hostname() -> str:
    # maildir spec: '/' and ':' in the host name are written in octal.
    name = _nodename() or "localhost"
    out = []
    for c in name:
        if c == "/":
            out.append("\\057")
        elif c == ":":
            out.append("\\072")
        elif c.isascii() and c.isprintable() and c != "\\":
            out.append(c)
        else:
            out.append(f"\\{ord(c) & 0o377:03o}")
    return "".join(out)


def unique_name() -> str:
    """``<sec>.M<usec>P<pid>Q<counter>.<host>``: unique on this host for all time."""
    now = time.time_ns() // 1000
    sec, usec = divmod(now, 1_000_000)
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{_hostname()}"


def folder_path(path: str, folder: str | None) -> str:
    """The maildir of a Maildir++ ``folder`` (``None`` or "" = the inbox) under ``path``.

    Nested folders are written with dots (``Lists.dev``); a name with ``/``,
    an empty component or a leading dot is refused with ValueError.
    """
    if not folder:
        return path
    parts = folder.split(".")
    if "/" in folder or "\0" in folder or any(not p for p in parts):
        raise ValueError(f"invalid maildir folder name {folder!r}")
    return os.path.join(path, "." + folder)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir(path: str) -> bool:
    """Create ``path`` (and missing parents) mode 0700; True if it was created."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return False
    parent = os.path.dirname(path.rstrip("/"))
    if parent and parent != path:
        _mkdir(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return False
    if parent:
        _fsync_dir(parent)
    return True


def _ensure_maildir(path: str, subfolder: bool) -> None:
    _mkdir(path)
    for sub in ("tmp", "new", "cur"):
        _mkdir(os.path.join(path, sub))
    if subfolder:
        # Maildir++: a folder carries an empty "maildirfolder" marker file.
        marker = os.path.join(path, "maildirfolder")
        if not os.path.exists(marker):
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))


def _write_all(fd: int, data: bytes) -> None:
    with memoryview(data) as whole:
        view = whole
        while view:
            n = os.write(fd, view)
            view = view[n:]
        view.release()


def _write_tmp(tmpdir: str, msg: Message, prepend: bytes,
               sync: bool = True) -> tuple[str, str]:
    """Create and fill a unique file in ``tmpdir``; return (name, full path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_NAME_ATTEMPTS):
        name = unique_name()
        tmp = os.path.join(tmpdir, name)
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
        try:
            if prepend:
                _write_all(fd, prepend)
            for chunk in msg.iter_chunks():
                _write_all(fd, chunk)
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        os.close(fd)
        return name, tmp
    raise TempFail("maildir: cannot find a unique file name", 451, "4.3.0")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _publish(tmp: str, newdir: str, name: str) -> str:
    """Link ``tmp`` into ``newdir`` (never replacing a file), then remove ``tmp``."""
    for attempt in range(_NAME_ATTEMPTS):
        final = os.path.join(newdir, name if attempt == 0 else unique_name())
        try:
            os.link(tmp, final)
        except FileExistsError:
            continue
        except PermissionError:
            # Some filesystems have no hard links (EPERM): fall back to rename,
            # having checked the name is free (we are the only writer of it).
            if os.path.lexists(final):
                continue
            os.rename(tmp, final)
            return final
        # A leftover in tmp/ is harmless (readers sweep it); failing now
        # would make the retry deliver a duplicate.
        _unlink_quietly(tmp)
        return final
    raise TempFail("maildir: cannot find a unique file name", 451, "4.3.0")


def deliver_maildir(
    path: str,
    msg_fd: int,
    *,
    prepend: bytes = b"",
    junk: bool = False,
    folder: str | None = None,
) -> str:
    """Deliver ``prepend`` + the message into the maildir at ``path``.

    ``folder`` selects a Maildir++ sub-folder; with ``junk`` a message whose
    header section has ``X-Spam: Yes`` goes to the ``Junk`` folder instead.
    Returns the path of the delivered file in ``new/``.
    """
    msg = Message(msg_fd)
    if junk and msg.has_spam_header():
        folder = JUNK_FOLDER
    target = folder_path(path, folder)
    tmp = ""
    try:
        if target != path:
            _ensure_maildir(path, subfolder=False)
        _ensure_maildir(target, subfolder=target != path)
        newdir = os.path.join(target, "new")
        name, tmp = _write_tmp(os.path.join(target, "tmp"), msg, prepend)
        final = _publish(tmp, newdir, name)
        tmp = ""
        try:
            _fsync_dir(newdir)
        except OSError:
            # Not durable: take it back so the retry does not make a duplicate.
            _unlink_quietly(final)
            raise
        return final
    except OSError as exc:
        if tmp:
            _unlink_quietly(tmp)
        raise os_failure(exc, "maildir") from exc




class MaildirBatch:
    """Several maildir deliveries of one delivery process, made durable together.

    :meth:`add` writes each message under ``tmp/`` without syncing it;
    :meth:`commit` makes them all durable with one ``syncfs(2)`` per
    filesystem, links each into ``new/``, and makes the links durable with
    one more: two syncs for the batch instead of two per message. The
    invariants of :func:`deliver_maildir` hold for each message: nothing is
    visible in ``new/`` before its bytes are on disk, and a message reported
    delivered is durable. Without syncfs each file and folder is fsynced.
    """

    def __init__(self) -> None:
        self._items: list[tuple[str, str, str]] = []  # tmp path, new/ folder, name

    def __len__(self) -> int:
        return len(self._items)

    def add(self, path: str, msg_fd: int, *, prepend: bytes = b"", junk: bool = False,
            folder: str | None = None) -> int:
        """Write one message under ``tmp/``; its index in :meth:`commit`'s answer."""
        msg = Message(msg_fd)
        if junk and msg.has_spam_header():
            folder = JUNK_FOLDER
        target = folder_path(path, folder)
        try:
            if target != path:
                _ensure_maildir(path, subfolder=False)
            _ensure_maildir(target, subfolder=target != path)
            name, tmp = _write_tmp(os.path.join(target, "tmp"), msg, prepend, sync=False)
        except OSError as exc:
            raise os_failure(exc, "maildir") from exc
        self._items.append((tmp, os.path.join(target, "new"), name))
        return len(self._items) - 1

    def _sync(self, paths: list[str]) -> None:
        """Every file written under ``paths`` so far reaches the disk."""
        done: set[int] = set()
        for path in paths:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                dev = os.fstat(fd).st_dev
                if dev in done:
                    continue
                done.add(dev)
                if SYNCFS is not None:
                    if SYNCFS(fd) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, os.strerror(err))
                else:
                    os.sync()
            finally:
                os.close(fd)

    def commit(self) -> list[str | TempFail]:
        """Make every added message durable and visible: its path in ``new/``,
        or the TempFail that kept it out (nothing of it is left behind)."""
        items, self._items = self._items, []
        out: list[str | TempFail] = []
        if not items:
            return out
        try:
            self._sync([os.path.dirname(tmp) for tmp, _, _ in items])
        except OSError as exc:
            for tmp, _, _ in items:
                _unlink_quietly(tmp)
            fail = os_failure(exc, "maildir")
            return [fail for _ in items]
        published: list[int] = []
        for i, (tmp, newdir, name) in enumerate(items):
            try:
                out.append(_publish(tmp, newdir, name))
                published.append(i)
            except OSError as exc:
                _unlink_quietly(tmp)
                out.append(os_failure(exc, "maildir"))
            except TempFail as exc:
                _unlink_quietly(tmp)
                out.append(exc)
        try:
            self._sync([items[i][1] for i in published])
        except OSError as exc:
            # not durable: take them back so the retries make no duplicates
            fail = os_failure(exc, "maildir")
            for i in published:
                final = out[i]
                if isinstance(final, str):
                    _unlink_quietly(final)
                out[i] = fail
        return out
