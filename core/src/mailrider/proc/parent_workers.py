"""The parent's long-lived maildir and mbox delivery workers (:mod:`mailrider.proc.mda_worker`).

A fork of the parent per batch of deliveries costs a copy of its page
tables and a process start and exit each time; a worker serves many
batches. The parent keeps at most one worker per set of credentials (user,
group, groups, as :func:`~mailrider.proc.parent_mda.decide` decided them)
and sends it only deliveries decided for exactly those credentials.

Invariants:

- A worker is started by the parent, as a fresh interpreter running a small
  module (not a fork of the parent), with the credentials on its command
  line; it takes them for good before it reads a request. It never runs as
  uid 0 or with group 0 (``decide`` refuses those, and the worker checks).
- One batch at a time per worker: the parent sends a batch, waits for its
  answer, then sends the next (:class:`~mailrider.proc.parent_mda.Deliveries`
  lets one batch of a worker's credentials run at a time).
- The answer is checked (``mda_worker.decode_reply``): one status and text
  per delivery, a known status, the text made one bounded printable line.
  Anything else, the worker's exit, or its channel closing, fails the batch
  with a 4xx (the queue retries) and the worker is killed and forgotten; the
  next batch starts a new one.
- A worker serves at most :data:`~mailrider.limits.MDA_WORKER_DELIVERIES`
  deliveries and is let go after :data:`~mailrider.limits.MDA_WORKER_IDLE`
  seconds without work (its channel closed: it exits).
- The parent computes what the worker needs (the Maildir path from the
  action's template, the header lines to prepend, the junk flag:
  ``parent_mda.worker_job``): the worker decides nothing.

``MAILRIDER_MDA_FORK=1`` in the environment (benchmarks and tests only) keeps
the fork per batch instead.
"""

from __future__ import annotations

import array
import asyncio
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from typing import Protocol

from mailrider import limits, log
from mailrider.delivery import common as dcommon
from mailrider.proc import mda_worker

#: a worker's answer, at most (DELIVERY_BATCH_MAX outcomes of bounded text)
_REPLY_MAX = 64 * 1024

Credentials = tuple[int | None, int | None, tuple[int, ...]]


def enabled() -> bool:
    return os.environ.get("MAILRIDER_MDA_FORK", "") != "1"


class Host(Protocol):
    """What the workers need of the parent process (parent.Parent)."""

    #: started children by pid: the future gets the exit status (reap)
    forks: dict[int, asyncio.Future[int]]

    def reap(self) -> None:
        """Collect the children that have exited."""
        ...


@dataclass(eq=False)
class _Worker:
    creds: Credentials
    pid: int
    sock: socket.socket
    exited: asyncio.Future[int]
    deliveries: int = 0
    idle: asyncio.TimerHandle | None = None
    busy: bool = False


class Workers:
    """The running workers, by credentials."""

    def __init__(self, parent: Host) -> None:
        self.parent = parent
        self._workers: dict[Credentials, _Worker] = {}
        self.started = 0

    def _start(self, creds: Credentials) -> _Worker:
        uid, gid, groups = creds
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            theirs.set_inheritable(True)
            argv = mda_worker.command(-1 if uid is None else uid, -1 if gid is None else gid,
                                      list(groups), theirs.fileno())
            proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()], close_fds=True,
                                    stdin=subprocess.DEVNULL)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.setblocking(False)
        exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.parent.forks[proc.pid] = exited
        self.parent.reap()
        worker = _Worker(creds, proc.pid, mine, exited)
        self._workers[creds] = worker
        self.started += 1
        log.debug("parent", "mda-worker-started", pid=proc.pid, uid=uid, gid=gid)
        return worker

    def _retire(self, worker: _Worker, *, kill: bool = False) -> None:
        if self._workers.get(worker.creds) is worker:
            del self._workers[worker.creds]
        if worker.idle is not None:
            worker.idle.cancel()
            worker.idle = None
        worker.sock.close()  # the worker sees the end of its channel and exits
        if kill and not worker.exited.done():
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for worker in list(self._workers.values()):
            self._retire(worker)

    async def deliver(self, creds: Credentials, payload: list[dict[str, object]],
                      fds: list[int]) -> list[dict[str, str]] | None:
        """One batch of maildir and mbox deliveries (``parent_mda.worker_job``, with
        their message descriptors) for the worker of ``creds``: one outcome
        each, ``{status, text}``, or None when the worker failed."""
        worker = self._workers.get(creds)
        if worker is None or worker.exited.done():
            if worker is not None:
                self._retire(worker)
            worker = self._start(creds)
        if worker.busy:  # Deliveries runs one batch per credentials at a time
            raise RuntimeError("delivery worker busy")
        if worker.idle is not None:
            worker.idle.cancel()
            worker.idle = None
        worker.busy = True
        try:
            got = await self._ask(worker, payload, fds)
        except (OSError, ValueError) as exc:
            log.warning("parent", "mda-worker-failed", pid=worker.pid, error=str(exc))
            self._retire(worker, kill=True)
            return None
        finally:
            worker.busy = False
        worker.deliveries += len(payload)
        if worker.deliveries >= limits.MDA_WORKER_DELIVERIES:
            self._retire(worker)
        else:
            worker.idle = asyncio.get_running_loop().call_later(
                limits.MDA_WORKER_IDLE, self._retire, worker)
        return got

    async def _ask(self, worker: _Worker, payload: list[dict[str, object]],
                   fds: list[int]) -> list[dict[str, str]]:
        loop = asyncio.get_running_loop()
        data = mda_worker.encode_request(payload)
        if len(data) > mda_worker.REQUEST_MAX:
            raise ValueError("batch too large for a worker")
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        while True:
            try:
                worker.sock.sendmsg([data], anc)
                break
            except BlockingIOError:
                writable: asyncio.Future[None] = loop.create_future()
                loop.add_writer(worker.sock, writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(worker.sock)
        reply = await loop.sock_recv(worker.sock, _REPLY_MAX + 1)
        if not reply:
            raise OSError("delivery worker exited")
        if len(reply) > _REPLY_MAX:
            raise ValueError("oversized answer")
        return [{"status": status, "text": dcommon.sanitize_text(text, 500)}
                for status, text in mda_worker.decode_reply(reply, len(payload))]
