"""A long-lived local delivery worker, started by the parent for one user.

    python -m mailrider.proc.mda_worker UID GID GROUPS FD

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
- One request is one batch: a JSON list of deliveries, maildir (the final
  folder path, the user's home, the junk flag, the header lines to prepend)
  or mbox (the mailbox path, the envelope sender, the header lines), with
  the message descriptors attached in the same order. Each maildir message
  is written under ``tmp/``, then those of the batch are made durable
  together (:class:`~mailrider.delivery.maildir.MaildirBatch`: one sync for
  the files, one for the links); the messages for one mailbox are appended
  under one lock and one ``fsync``
  (:func:`~mailrider.delivery.mbox.deliver_mbox_batch`). Only then is the
  answer sent: one outcome per delivery, so a delivery reported done is on
  disk.
- A malformed request (bad JSON, wrong types, a count of descriptors that
  does not match, more than :data:`~mailrider.limits.DELIVERY_BATCH_MAX`)
  ends the worker: the parent sees the channel close and fails the batch
  temporarily. Every descriptor it received is closed after the batch.
- It imports everything before it switches user (the interpreter's files may
  be out of the user's reach) and never asyncio: a small process.
"""

from __future__ import annotations

import array
import json
import os
import socket
import sys

from mailrider import limits, malloc
from mailrider.delivery.maildir import MaildirBatch
from mailrider.delivery.mbox import MboxItem, deliver_mbox_batch
from mailrider.errors import TempFail, delivery_outcome

#: a request's JSON, at most (DELIVERY_BATCH_MAX deliveries of bounded fields)
REQUEST_MAX = 256 * 1024
_TEXT_MAX = 500


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


def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One request and its descriptors; (b"", []) when the parent closed."""
    fds = array.array("i")
    size = fds.itemsize * limits.DELIVERY_BATCH_MAX
    data, ancdata, flags, _ = sock.recvmsg(REQUEST_MAX, socket.CMSG_SPACE(size))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    got = list(fds)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in got:
            os.close(fd)
        raise ValueError("request truncated")
    return data, got


def _checked(data: bytes, nfds: int) -> list[dict[str, object]]:
    jobs = json.loads(data)
    if not isinstance(jobs, list) or not 0 < len(jobs) <= limits.DELIVERY_BATCH_MAX \
            or len(jobs) != nfds:
        raise ValueError("bad batch")
    for job in jobs:
        if not isinstance(job, dict) or not isinstance(job.get("path"), str) \
                or not isinstance(job.get("home"), str) \
                or not isinstance(job.get("prepend"), str) \
                or not isinstance(job.get("junk"), bool):
            raise ValueError("bad delivery")
        method = job.get("method", "maildir")
        if method == "mbox":
            if not isinstance(job.get("sender"), str) or not os.path.isabs(str(job["path"])):
                raise ValueError("bad mbox delivery")
        elif method != "maildir":
            raise ValueError("bad delivery method")
    return jobs


def deliver(jobs: list[dict[str, object]], fds: list[int]) -> list[tuple[str, str]]:
    """Every delivery of the batch, made durable together; one outcome each."""
    results: list[tuple[str, str]] = [("tempfail", "451 4.3.0 delivery failed")] * len(jobs)
    batch = MaildirBatch()
    pending: dict[int, int] = {}
    mailboxes: dict[str, list[int]] = {}  # mbox path -> its deliveries, in order
    for i, (job, fd) in enumerate(zip(jobs, fds, strict=True)):
        if job.get("method") == "mbox":
            mailboxes.setdefault(str(job["path"]), []).append(i)
            continue
        try:
            try:
                os.chdir(str(job["home"]) or "/")
            except OSError:
                os.chdir("/")
            prepend = str(job["prepend"]).encode("utf-8", "surrogateescape")
            pending[i] = batch.add(str(job["path"]), fd, prepend=prepend,
                                   junk=bool(job["junk"]))
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
            items = [MboxItem(fds[i], str(jobs[i]["sender"]),
                              str(jobs[i]["prepend"]).encode("utf-8", "surrogateescape"))
                     for i in which]
            outcomes: list[Exception | None] = list(deliver_mbox_batch(path, items))
        except Exception as exc:  # each delivery must report
            outcomes = [exc] * len(which)
        for i, failure in zip(which, outcomes, strict=True):
            results[i] = ("ok", "Delivered") if failure is None else delivery_outcome(failure)
    return results


def serve(sock: socket.socket) -> int:
    while True:
        data, fds = receive(sock)
        if not data and not fds:
            return 0
        try:
            jobs = _checked(data, len(fds))
            results = deliver(jobs, fds)
        finally:
            for fd in fds:
                os.close(fd)
        sock.sendall(json.dumps([{"status": st, "text": tx[:_TEXT_MAX]}
                                 for st, tx in results]).encode())


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4:
        print("usage: python -m mailrider.proc.mda_worker UID GID GROUPS FD", file=sys.stderr)
        return 2
    uid, gid = int(args[0]), int(args[1])
    groups = [int(g) for g in args[2].split(",") if g]
    malloc.tune()
    sock = socket.socket(fileno=int(args[3]))
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
