"""A long-lived local delivery worker, started by the parent for one user.

    python -m mailrider.proc.mda_worker UID GID GROUPS FD

(the parent starts it with :func:`command`: the same, in an isolated
interpreter without ``site``).

The parent (:mod:`mailrider.proc.parent_workers`) starts it as root with the
credentials it decided (``parent_mda.decide``), and the worker takes them
for good before it reads anything: supplementary groups, gid, then uid
(``setres*id``, no way back), and checks the result. ``UID`` -1 means the
daemon is not root and the worker keeps the parent's user. It then serves
requests on ``FD``, one ``SOCK_SEQPACKET`` socket, until the parent closes it.

Invariants:

- It delivers only as the user it was started for: its credentials are
  taken before the first request and the parent sends it deliveries of that
  user only (docs/security.md, rule 1).
- One request is one batch of deliveries, maildir (the final folder path,
  the user's home, the junk flag, the header lines to prepend) or mbox (the
  mailbox path, the envelope sender, the header lines), with the message
  descriptors attached in the same order. The request is the
  :data:`FIELDS` of each delivery in order, every field ending in a NUL
  (no field may hold one: paths, addresses and header lines never do); the
  answer is a status and a text per delivery, in the same form
  (:func:`encode_request`, :func:`decode_request`, :func:`decode_reply`).
  Each maildir message is written under ``tmp/``, then those of the batch
  are made durable together
  (:class:`~mailrider.delivery.maildir.MaildirBatch`: one sync for the
  files, one for the links); the messages for one mailbox are appended
  under one lock and one ``fsync``
  (:func:`~mailrider.delivery.mbox.deliver_mbox_batch`). Only then is the
  answer sent: one outcome per delivery, so a delivery reported done is on
  disk.
- A malformed request (a field count that is not a whole number of
  deliveries, an unknown method or junk flag, a relative mbox path, a count
  of descriptors that does not match, more than
  :data:`~mailrider.limits.DELIVERY_BATCH_MAX`) ends the worker: the parent
  sees the channel close and fails the batch temporarily. Every descriptor
  it received is closed after the batch.
- It imports everything before it switches user (the interpreter's files may
  be out of the user's reach) and as little as it can: no asyncio, no
  ``json`` or ``socket`` (each pulls in ``re`` or ``enum``; the C module
  ``_socket`` is enough for one socket), no ``dataclasses``, no ``array``
  (it loads ``collections``). A fresh interpreter costs its imports in
  private memory (docs/performance.md §4).
"""

from __future__ import annotations

import _socket
import os
import struct
import sys

from mailrider import limits, malloc
from mailrider.delivery.maildir import MaildirBatch
from mailrider.delivery.mbox import MboxItem, deliver_mbox_batch
from mailrider.errors import TempFail, delivery_outcome

#: a request, at most (DELIVERY_BATCH_MAX deliveries of bounded fields)
REQUEST_MAX = 256 * 1024
_TEXT_MAX = 500

#: what :func:`command` runs: the package's folder goes last on the path, after
#: the standard library, so nothing there can stand in for a standard module
_BOOT = ("import sys; sys.path.append(sys.argv[1]); "
         "from mailrider.proc.mda_worker import main; sys.exit(main(sys.argv[2:]))")


def command(uid: int, gid: int, groups: list[int], fd: int) -> list[str]:
    """The command line that starts a worker (``-1`` for uid/gid: keep the caller's).

    ``-I -S -c``, not ``-m``: ``runpy`` (with ``importlib.util`` and
    ``contextlib``) and ``site`` (with whatever the environment's ``.pth``
    files load) cost a fresh interpreter some 0.7 MB of private memory, and
    the worker exists only under load, so it counts whole in the daemon's
    peak (docs/performance.md §4). Isolated (``-I``), the worker reads no
    ``PYTHON*`` variable and puts no working folder on its path; it imports
    this package from where the caller's own copy is.
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [sys.executable, "-I", "-S", "-c", _BOOT, root, str(uid), str(gid),
            ",".join(str(g) for g in groups), str(fd)]


#: the fields of one delivery in a request, in this order
FIELDS = ("method", "path", "home", "junk", "sender", "prepend")
_METHODS = frozenset({"maildir", "mbox"})
#: the statuses an answer may give
STATUSES = frozenset({"ok", "tempfail", "permfail"})


def _fields(values: list[str]) -> bytes:
    for value in values:
        if "\0" in value:
            raise ValueError("a NUL in a field")
    return "".join(value + "\0" for value in values).encode("utf-8", "surrogateescape")


def _split(data: bytes, width: int) -> list[str]:
    if not data.endswith(b"\0"):
        raise ValueError("unterminated field")
    fields = data[:-1].split(b"\0")
    if len(fields) % width:
        raise ValueError("not a whole number of records")
    return [f.decode("utf-8", "surrogateescape") for f in fields]


def encode_request(jobs: list[dict[str, object]]) -> bytes:
    """The request for these deliveries (``parent_mda.worker_job``'s dicts);
    ValueError for a field of the wrong type or holding a NUL."""
    values: list[str] = []
    for job in jobs:
        for name in FIELDS:
            value = job.get(name, "maildir" if name == "method" else "")
            if name == "junk":
                if not isinstance(value, bool):
                    raise ValueError("junk: want a bool")
                value = "1" if value else "0"
            if not isinstance(value, str):
                raise ValueError(f"{name}: want a string")
            values.append(value)
    return _fields(values)


def decode_request(data: bytes, nfds: int) -> list[dict[str, str]]:
    """The deliveries of a request, checked; ValueError for anything else."""
    fields = _split(data, len(FIELDS))
    count = len(fields) // len(FIELDS)
    if not 0 < count <= limits.DELIVERY_BATCH_MAX or count != nfds:
        raise ValueError("bad batch")
    jobs = [dict(zip(FIELDS, fields[i:i + len(FIELDS)], strict=True))
            for i in range(0, len(fields), len(FIELDS))]
    for job in jobs:
        if job["method"] not in _METHODS or job["junk"] not in ("0", "1") or not job["path"]:
            raise ValueError("bad delivery")
        if job["method"] == "mbox" and not os.path.isabs(job["path"]):
            raise ValueError("bad mbox delivery")
    return jobs


def encode_reply(results: list[tuple[str, str]]) -> bytes:
    """The answer: a status and a bounded one-line text per delivery."""
    values: list[str] = []
    for status, text in results:
        values += [status, text[:_TEXT_MAX].replace("\0", " ")]
    return _fields(values)


def decode_reply(data: bytes, count: int) -> list[tuple[str, str]]:
    """The parent's reading of an answer to ``count`` deliveries: (status, text)
    each; ValueError for anything else (the worker is not trusted to be well)."""
    fields = _split(data, 2)
    if len(fields) != 2 * count:
        raise ValueError("answer does not match the batch")
    out = list(zip(fields[::2], fields[1::2], strict=True))
    if any(status not in STATUSES for status, _ in out):
        raise ValueError("malformed answer")
    return out


def switch_user(uid: int, gid: int, groups: list[int]) -> None:
    """Become uid/gid with exactly these groups, for good; never root."""
    if uid == 0 or gid == 0 or 0 in groups:
        raise PermissionError("refusing to deliver as root or with group 0")
    os.setgroups(groups or [gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) \
            or 0 in os.getgroups():
        raise PermissionError("credentials not switched")


def receive(sock: _socket.socket) -> tuple[bytes, list[int]]:
    """One request and its descriptors; (b"", []) when the parent closed."""
    width = struct.calcsize("i")
    data, ancdata, flags, _ = sock.recvmsg(
        REQUEST_MAX, _socket.CMSG_SPACE(width * limits.DELIVERY_BATCH_MAX))
    got: list[int] = []
    for level, kind, payload in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            whole = len(payload) // width
            got += struct.unpack(f"{whole}i", payload[:whole * width])
    if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
        for fd in got:
            os.close(fd)
        raise ValueError("request truncated")
    return data, got


def deliver(jobs: list[dict[str, str]], fds: list[int]) -> list[tuple[str, str]]:
    """Every delivery of the batch, made durable together; one outcome each."""
    results: list[tuple[str, str]] = [("tempfail", "451 4.3.0 delivery failed")] * len(jobs)
    batch = MaildirBatch()
    pending: dict[int, int] = {}
    mailboxes: dict[str, list[int]] = {}  # mbox path -> its deliveries, in order
    for i, (job, fd) in enumerate(zip(jobs, fds, strict=True)):
        if job.get("method") == "mbox":
            mailboxes.setdefault(job["path"], []).append(i)
            continue
        try:
            try:
                os.chdir(job["home"] or "/")
            except OSError:
                os.chdir("/")
            prepend = job["prepend"].encode("utf-8", "surrogateescape")
            pending[i] = batch.add(job["path"], fd, prepend=prepend, junk=job["junk"] == "1")
        except Exception as exc:  # each delivery must report
            results[i] = delivery_outcome(exc)
    try:
        committed = batch.commit()
    except Exception as exc:
        committed = [TempFail(f"maildir commit failed: {exc}")] * len(pending)
    for i, index in pending.items():
        final = committed[index] if index < len(committed) else TempFail("not committed")
        results[i] = ("ok", "Delivered") if isinstance(final, str) else delivery_outcome(final)
    for path, which in mailboxes.items():
        try:
            os.chdir("/")
            items = [MboxItem(fds[i], jobs[i]["sender"],
                              jobs[i]["prepend"].encode("utf-8", "surrogateescape"))
                     for i in which]
            outcomes: list[Exception | None] = list(deliver_mbox_batch(path, items))
        except Exception as exc:  # each delivery must report
            outcomes = [exc] * len(which)
        for i, failure in zip(which, outcomes, strict=True):
            results[i] = ("ok", "Delivered") if failure is None else delivery_outcome(failure)
    return results


def serve(sock: _socket.socket) -> int:
    while True:
        data, fds = receive(sock)
        if not data and not fds:
            return 0
        try:
            jobs = decode_request(data, len(fds))
            results = deliver(jobs, fds)
        finally:
            for fd in fds:
                os.close(fd)
        sock.sendall(encode_reply(results))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4:
        print("usage: python -m mailrider.proc.mda_worker UID GID GROUPS FD", file=sys.stderr)
        return 2
    uid, gid = int(args[0]), int(args[1])
    groups = [int(g) for g in args[2].split(",") if g]
    malloc.tune()
    sock = _socket.socket(fileno=int(args[3]))
    try:
        with open("/proc/self/comm", "w") as f:  # what ps and top show (Linux)
            f.write("mailrider:mda")
    except OSError:
        pass
    if uid != -1:
        switch_user(uid, gid, groups)
    try:
        return serve(sock)
    except (OSError, ValueError) as exc:
        print(f"mda_worker: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
