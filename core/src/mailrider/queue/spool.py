"""The spool on disk, and the commit that makes ``250`` after DATA true.

Layout under the spool folder (all 0700, owned by the daemon's user)::

    incoming/<msgid>/message       message being received (pony writes its fd);
    incoming/<msgid>/<evpid>       at commit, its envelopes join it
    temporary/                     no longer written; purged at start (older spools)
    queue/<HH>/<msgid>/message     committed message, HH = first 2 hex digits
    queue/<HH>/<msgid>/<evpid>     one envelope per recipient
    purge/                         leftovers moved aside at start, then deleted

Invariants:

- A message is acknowledged only once its folder is in ``queue/`` and one
  sync covered it: :meth:`Spool.commit_batch` writes the envelopes into
  ``incoming/<msgid>/`` beside the body, renames the folder into ``queue/``
  and syncs. A crash before that sync may leave a folder in ``queue/``
  whose body is incomplete: never acknowledged, it is found by the body
  digest every envelope records, checked after an unclean stop.
- The body is created in its own new folder, not in one shared folder: on
  ext4 every inode created in one folder comes from that folder's block
  group, which fills up and makes each creation search (measured: 200 µs
  against 10 µs for a file in a fresh folder, tools/bench/smtp_accept.py).
- At start, ``temporary/`` and ``incoming/`` hold only uncommitted data (no
  ``250`` was sent for it) and are purged.
- Syncing is batched: one ``syncfs(2)`` covers every file of a batch (group
  commit); where syncfs is unavailable each file and folder is fsynced.
- With ``queue compression`` or ``queue encryption`` (the :class:`Codec`),
  the body pony wrote in ``incoming/`` is re-encoded at commit, before the
  rename into ``queue/``, and every envelope is written encoded; readers get
  decoded bytes (:meth:`Spool.open_message` hands out a descriptor of the
  decoded body) whatever format each file has (docs/queue.md §8).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

from mailrider import log
from mailrider.errors import TempFail
from mailrider.queue import envelope as envmod
from mailrider.queue.codec import Codec, CodecError, is_encoded, memfd_with
from mailrider.queue.envelope import Envelope
from mailrider.syncfs import SYNCFS

#: bytes asked for per read of an envelope file (they are a few hundred)
ENVELOPE_READ = 64 * 1024
_FSYNC_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")


@dataclass(slots=True)
class PendingCommit:
    msgid: str
    envelopes: list[Envelope]
    error: BaseException | None = None


class Spool:
    def __init__(self, root: str, *, use_syncfs: bool = True,
                 codec: Codec | None = None) -> None:
        self.root = root
        self.codec = codec or Codec()
        self.temporary = os.path.join(root, "temporary")
        self.incoming = os.path.join(root, "incoming")
        self.queue = os.path.join(root, "queue")
        self.purge = os.path.join(root, "purge")
        self._syncfs = SYNCFS if use_syncfs else None
        self._rootfd = -1
        #: the queue/<HH> folders known to exist (they are never removed): one
        #: mkdir per folder instead of one per commit
        self._buckets: set[str] = set()

    # -- setup and recovery --------------------------------------------------

    def setup(self) -> None:
        for d in (self.root, self.temporary, self.incoming, self.queue, self.purge):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._rootfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)

    def purge_uncommitted(self) -> int:
        """Move what was never acknowledged aside and delete it. Returns the
        count of what held data: an empty spool file is one pony asked for
        ahead and never used (proc/pony_spool.SpoolFiles), not a message."""
        n = 0
        for d in (self.temporary, self.incoming):
            for name in os.listdir(d):
                src = os.path.join(d, name)
                if not (d == self.incoming and _unused(src)):
                    n += 1
                os.rename(src, os.path.join(self.purge, f"{os.path.basename(d)}-{name}"))
        for name in os.listdir(self.purge):
            p = os.path.join(self.purge, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        return n

    def walk(self, verify: bool = False) -> Iterator[tuple[str, list[Envelope]]]:
        """Every committed message and its envelopes; corrupt ones are set aside.

        With ``verify`` (after an unclean stop) each body is checked against the
        size and SHA-256 its envelopes record (see :meth:`commit_batch`)."""
        for bucket in self.buckets():
            yield from self.walk_bucket(bucket, verify)

    def buckets(self) -> list[str]:
        """The folders of ``queue/`` (``HH``, the msgid's first two digits)."""
        return sorted(name for name in os.listdir(self.queue)
                      if os.path.isdir(os.path.join(self.queue, name)))

    def walk_bucket(self, bucket: str, verify: bool = False) -> list[tuple[str, list[Envelope]]]:
        """:meth:`walk` for the messages of one bucket, as a list: buckets may be
        read side by side (a cold start spends its time waiting on the disk)."""
        out: list[tuple[str, list[Envelope]]] = []
        hdir = os.path.join(self.queue, bucket)
        try:
            msgids = sorted(os.listdir(hdir))
        except (FileNotFoundError, NotADirectoryError):
            return out
        for msgid in msgids:
            mdir = os.path.join(hdir, msgid)
            if not envmod.is_msgid(msgid):
                continue
            envs: list[Envelope] = []
            undecodable = 0
            try:
                names = os.listdir(mdir)
            except (FileNotFoundError, NotADirectoryError):
                continue
            bad = "message" not in names or not os.path.isfile(os.path.join(mdir, "message"))
            for name in names:
                if name == "message" or name.endswith(".tmp"):
                    continue
                try:
                    with open(os.path.join(mdir, name), "rb") as f:
                        raw = self.codec.decode(f.read())
                except CodecError as exc:
                    # kept: the right key (or a fixed file) brings it back
                    undecodable += 1
                    log.error("queue", "undecodable-envelope", msgid=msgid, file=name,
                              error=str(exc))
                    continue
                except OSError as exc:
                    log.error("queue", "corrupt-envelope", msgid=msgid, file=name,
                              error=str(exc))
                    continue
                try:
                    envs.append(envmod.parse(raw))
                except ValueError as exc:
                    log.error("queue", "corrupt-envelope", msgid=msgid, file=name,
                              error=str(exc))
            if bad:
                log.error("queue", "message-missing", msgid=msgid)
                continue
            if undecodable:
                continue
            if not envs:
                shutil.rmtree(mdir, ignore_errors=True)
                continue
            # its envelopes decoded, so the key is right: a body that does
            # not decode was damaged like a plain one that does not match
            if verify and not _body_matches(os.path.join(mdir, "message"), envs, self.codec):
                log.warning("queue", "unacknowledged-discarded", msgid=msgid,
                            reason="body not on disk when the daemon stopped")
                os.rename(mdir, os.path.join(self.purge, f"unsynced-{msgid}"))
                shutil.rmtree(os.path.join(self.purge, f"unsynced-{msgid}"),
                              ignore_errors=True)
                continue
            out.append((msgid, envs))
        return out

    # -- paths ---------------------------------------------------------------

    def msgdir(self, msgid: str) -> str:
        # the last line of defence: no id that is not hex of its length makes a path
        if not envmod.is_msgid(msgid):
            raise ValueError("invalid message id")
        return os.path.join(self.queue, msgid[:2], msgid)

    def message_path(self, msgid: str) -> str:
        return os.path.join(self.msgdir(msgid), "message")

    def envelope_path(self, evpid: str) -> str:
        if not envmod.is_evpid(evpid):
            raise ValueError("invalid envelope id")
        return os.path.join(self.msgdir(evpid[:8]), evpid)

    # -- receiving -------------------------------------------------------------

    def create(self, wanted: str = "") -> tuple[str, int]:
        """A fresh msgid (``wanted`` if free), a write fd on ``incoming/<msgid>/message``."""
        for attempt in range(100):
            msgid = wanted if attempt == 0 and envmod.is_msgid(wanted) else envmod.new_msgid()
            if os.path.exists(self.msgdir(msgid)):
                continue
            idir = os.path.join(self.incoming, msgid)
            try:
                os.mkdir(idir, 0o700)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _spool_error(exc) from exc
            try:
                fd = os.open(os.path.join(idir, "message"),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                shutil.rmtree(idir, ignore_errors=True)
                raise _spool_error(exc) from exc
            return msgid, fd
        raise TempFail("cannot allocate a message id")

    def create_many(self, wanted: list[str]) -> list[tuple[str, int] | TempFail]:
        """:meth:`create` for several messages in one call (one hand-off to a
        worker thread for all the sessions that asked meanwhile): a msgid and a
        write fd, or the TempFail, for each."""
        out: list[tuple[str, int] | TempFail] = []
        for w in wanted:
            try:
                out.append(self.create(w))
            except TempFail as exc:
                out.append(exc)
        return out

    def rollback(self, msgid: str) -> None:
        if not envmod.is_msgid(msgid):
            raise ValueError("invalid message id")
        shutil.rmtree(os.path.join(self.incoming, msgid), ignore_errors=True)

    def commit_batch(self, batch: list[PendingCommit]) -> None:
        """Commit every message of the batch with one sync; failures are set per item.

        Each message is staged in ``incoming/`` and renamed into ``queue/``, then
        one sync covers the whole batch. The reply that follows promises only
        what that sync made durable; a crash before it may leave a message in
        ``queue/`` whose body did not reach the disk, which is why every envelope
        carries the body's size and SHA-256 and recovery after an unclean stop
        checks them (:meth:`walk` with ``verify``): such a message was never
        acknowledged and is set aside, never delivered corrupted.
        """
        done: list[PendingCommit] = []
        for item in batch:
            try:
                self._stage(item)
                hdir = os.path.join(self.queue, item.msgid[:2])
                if hdir not in self._buckets:
                    os.makedirs(hdir, 0o700, exist_ok=True)
                    self._buckets.add(hdir)
                src = os.path.join(self.incoming, item.msgid)
                try:
                    os.rename(src, self.msgdir(item.msgid))
                except FileNotFoundError:  # the bucket was removed by hand?
                    os.makedirs(hdir, 0o700, exist_ok=True)
                    os.rename(src, self.msgdir(item.msgid))
                done.append(item)
            except OSError as exc:
                item.error = _spool_error(exc)
                self.rollback(item.msgid)
        if not done:
            return
        try:
            self._sync(done)
        except OSError as exc:
            # renamed but maybe not durable: the client gets a 4xx and sends
            # again; delivering twice is better than losing mail
            for item in done:
                item.error = _spool_error(exc)

    def _stage(self, item: PendingCommit) -> None:
        idir = os.path.join(self.incoming, item.msgid)
        if self.codec.active:
            self._encode_body(idir)
        for env in item.envelopes:
            path = os.path.join(idir, env.evpid)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, self.codec.encode(envmod.serialise(env)))
            finally:
                os.close(fd)

    def _encode_body(self, idir: str) -> None:
        """Replace the plain body pony wrote with its encoded form (the
        plaintext's name is gone before the commit's sync)."""
        path = os.path.join(idir, "message")
        with open(path, "rb") as f:
            data = f.read()
        if is_encoded(data):
            return
        tmp = path + ".enc"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, self.codec.encode(data))
        finally:
            os.close(fd)
        os.rename(tmp, path)

    def sync(self) -> None:
        """Everything written to the spool so far reaches the disk."""
        if self._syncfs is not None:
            if self._syncfs(self._rootfd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        else:
            os.sync()

    def _sync(self, items: list[PendingCommit]) -> None:
        if self._syncfs is not None:
            self.sync()
            return
        paths: list[str] = []
        for item in items:
            mdir = self.msgdir(item.msgid)
            paths += [os.path.join(mdir, name) for name in os.listdir(mdir)]
            paths.append(mdir)
        paths += sorted({os.path.join(self.queue, i.msgid[:2]) for i in items})
        paths.append(self.queue)
        # concurrent fsyncs share journal commits (jbd2 batches them)
        list(_FSYNC_POOL.map(_fsync_path, paths))

    # -- clean-stop marker ------------------------------------------------------

    @property
    def _marker(self) -> str:
        return os.path.join(self.root, "clean")

    def mark_clean(self) -> None:
        """At a clean stop, after the last commit: the next start need not verify."""
        self.sync()
        fd = os.open(self._marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fsync(fd)
        os.close(fd)
        os.fsync(self._rootfd)

    def take_clean_mark(self) -> bool:
        """Whether the last stop was clean; the mark is removed (durably) either way."""
        try:
            os.unlink(self._marker)
        except FileNotFoundError:
            return False
        os.fsync(self._rootfd)
        return True

    # -- delivery bookkeeping -------------------------------------------------

    def load_envelope(self, evpid: str) -> Envelope:
        # os.open and os.read: three system calls, where open() costs seven
        fd = os.open(self.envelope_path(evpid), os.O_RDONLY)
        try:
            chunks = []
            while chunk := os.read(fd, ENVELOPE_READ):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return envmod.parse(self.codec.decode(b"".join(chunks)))

    def update_envelope(self, env: Envelope) -> None:
        path = self.envelope_path(env.evpid)
        if not self.codec.active:
            envmod.write_atomic(path, env)
            return
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, self.codec.encode(envmod.serialise(env)))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)

    def remove_envelope(self, evpid: str) -> None:
        try:
            os.unlink(self.envelope_path(evpid))
        except FileNotFoundError:
            pass
        mdir = self.msgdir(evpid[:8])
        try:
            rest = [n for n in os.listdir(mdir) if n != "message"]
        except FileNotFoundError:
            return
        if not rest:
            _remove_message_dir(mdir)

    def remove_envelopes(self, evpids: list[str]) -> list[Exception | None]:
        """Remove several envelopes, each message folder emptied of envelopes
        with them; one outcome per envelope (None: removed, or already gone)."""
        errors: list[Exception | None] = []
        msgids: dict[str, None] = {}
        for evpid in evpids:
            try:
                try:
                    os.unlink(self.envelope_path(evpid))
                except FileNotFoundError:
                    pass
                msgids[evpid[:8]] = None
                errors.append(None)
            except (OSError, ValueError) as exc:
                errors.append(exc)
        for msgid in msgids:
            mdir = self.msgdir(msgid)
            try:
                rest = [n for n in os.listdir(mdir) if n != "message"]
            except FileNotFoundError:
                continue
            except OSError:
                continue  # its envelopes are gone; a later start removes the folder
            if not rest:
                _remove_message_dir(mdir)
        return errors

    def open_message(self, msgid: str) -> int:
        """A read descriptor of the message's plain bytes (decoded if need be).

        Raises OSError (a decoding failure as EIO: the body cannot be read)."""
        fd = os.open(self.message_path(msgid), os.O_RDONLY)
        try:
            head = os.pread(fd, 4, 0)
        except OSError:
            os.close(fd)
            raise
        if not is_encoded(head):
            return fd
        try:
            with os.fdopen(fd, "rb") as f:
                data = f.read()
            return memfd_with(self.codec.decode(data))
        except CodecError as exc:
            raise OSError(errno.EIO, f"cannot decode message {msgid}: {exc}") from None

    def add_message(self, msgid: str, body: bytes, envelopes: list[Envelope]) -> None:
        """Write a message made by the daemon itself (a bounce) and commit it."""
        idir = os.path.join(self.incoming, msgid)
        os.mkdir(idir, 0o700)
        fd = os.open(os.path.join(idir, "message"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, self.codec.encode(body))
        finally:
            os.close(fd)
        digest = body_digest(body)
        item = PendingCommit(msgid, [
            dataclasses.replace(e, message_size=len(body), message_sha256=digest)
            for e in envelopes])
        self.commit_batch([item])
        if item.error is not None:
            raise item.error


def body_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _body_matches(path: str, envs: list[Envelope], codec: Codec) -> bool:
    want = next((e for e in envs if e.message_sha256), None)
    if want is None:
        return True  # written by a version that recorded no digest
    h = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            if is_encoded(f.read(4)):
                f.seek(0)
                data = codec.decode(f.read())
                h.update(data)
                size = len(data)
            else:
                f.seek(0)
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
    except (OSError, CodecError):
        return False
    return (want.message_size in (None, size)
            and h.hexdigest() == want.message_sha256)


def _remove_message_dir(mdir: str) -> None:
    """Remove a message folder left with its message alone: two system calls,
    where shutil.rmtree costs eight; rmtree when something else is there."""
    try:
        os.unlink(os.path.join(mdir, "message"))
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(mdir, ignore_errors=True)
        return
    try:
        os.rmdir(mdir)
    except FileNotFoundError:
        pass
    except OSError:  # not empty after all: as before, everything goes
        shutil.rmtree(mdir, ignore_errors=True)


def _unused(idir: str) -> bool:
    """An incoming message folder holding only its empty message file."""
    try:
        return os.listdir(idir) == ["message"] and os.stat(
            os.path.join(idir, "message")).st_size == 0
    except OSError:
        return False


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _spool_error(exc: OSError) -> TempFail:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TempFail("Insufficient system storage", 452, "4.3.1")
    if exc.errno == errno.EROFS:
        return TempFail("Queue is read-only", 451, "4.3.0")
    return TempFail(f"Temporary failure in queue ({exc.strerror})", 451, "4.3.0")
