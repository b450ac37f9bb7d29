"""What pony's SMTP session writes to the queue: the message bytes into its
spool file, the header section's end (hygiene and From: masquerading), and
the envelopes of one transaction (docs/processes.md §4, docs/queue.md).

Pure helpers without a session: :class:`~mailrider.proc.pony_smtp.Session`
keeps the state (the spool descriptor, the digest, the counters) and logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from mailrider import limits
from mailrider.config.model import Config
from mailrider.errors import TempFail
from mailrider.ipc import messages as m
from mailrider.proc.pony_filter import Peer, Spawn
from mailrider.queue.envelope import Delivery, Envelope
from mailrider.smtp.hygiene import HeaderHygiene
from mailrider.smtp.masquerade import FromRewriter


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the spool file ``fd``; OSError as os.write raises it."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class SpoolFiles:
    """Spool files asked of the queue before any session needs one.

    A session that accepts its first recipient takes one (:meth:`take`) instead
    of asking the queue then: the file's creation, a round trip through the
    queue and its creator thread, no longer lies on the path of each message
    (docs/performance.md §9). They are ordinary uncommitted spool files, in the
    queue's ``incoming/`` and its list of open messages, committed or rolled
    back like any other.

    How many: each take asks for a replacement, and a take that finds none
    ready doubles the number kept, up to ``size``; after ``idle`` seconds
    without a take the ready ones are given back (rolled back) and the number
    starts again at one, so a quiet daemon holds no spool file open (an admin
    can remount the spool, and a sporadic message costs one or two). When the
    queue fails to create one, none is asked for during
    ``limits.SPOOL_FILES_RETRY`` seconds: sessions then ask for theirs
    themselves and get the queue's error as their reply.
    """

    def __init__(self, queue: Peer, spawn: Spawn, size: int = limits.SPOOL_FILES_AHEAD,
                 idle: float = limits.SPOOL_FILES_IDLE) -> None:
        self._queue = queue
        self._spawn = spawn
        self.size = size
        self.idle = idle
        #: how many to keep ready or asked for (1 to size)
        self.want = min(1, size)
        self._ready: deque[tuple[str, int]] = deque()
        self._asked = 0
        self._retry_at = 0.0
        self._last_take = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._ready)

    def take(self) -> tuple[str, int] | None:
        """A ready spool file (msgid, write descriptor), the caller's to commit
        or roll back, or None when none is ready; asks for its replacement."""
        self._last_take = time.monotonic()
        if self._ready:
            got: tuple[str, int] | None = self._ready.popleft()
        else:
            got = None
            self.want = min(self.size, self.want * 2)
        self._fill()
        return got

    def _fill(self) -> None:
        if self._retry_at and time.monotonic() < self._retry_at:
            return
        self._retry_at = 0.0
        while len(self._ready) + self._asked < self.want:
            self._asked += 1
            self._spawn(self._ask())

    async def _ask(self) -> None:
        try:
            reply, fds = await self._queue.call(m.MessageCreate(msgid=""))
        except (TempFail, OSError, ValueError):
            self._asked -= 1
            self._retry_at = time.monotonic() + limits.SPOOL_FILES_RETRY
            return
        self._asked -= 1
        if not isinstance(reply, m.MessageCreated) or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            self._retry_at = time.monotonic() + limits.SPOOL_FILES_RETRY
            return
        self._ready.append((reply.msgid, fds[0]))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.idle, self._check_idle)

    def _check_idle(self) -> None:
        self._timer = None
        if not self._ready:
            return
        quiet = time.monotonic() - self._last_take
        if quiet < self.idle:
            self._timer = asyncio.get_running_loop().call_later(self.idle - quiet,
                                                                self._check_idle)
            return
        self.want = min(1, self.size)
        while self._ready:
            msgid, fd = self._ready.popleft()
            os.close(fd)
            self._spawn(self._give_back(msgid))

    async def _give_back(self, msgid: str) -> None:
        try:
            await self._queue.ask(m.MessageRollback(msgid=msgid))
        except (TempFail, OSError, ValueError):
            pass  # the queue removes it at its next start


def header_tail(hygiene: HeaderHygiene | None, masq: FromRewriter | None) -> bytes:
    """The bytes the header hygiene and the From: rewriter still hold at the
    end of the message, the hygiene's through the rewriter."""
    tail = hygiene.finish() if hygiene is not None else b""
    if masq is None:
        return tail
    return masq.feed(tail) + masq.finish()


@dataclasses.dataclass(frozen=True, slots=True)
class Transaction:
    """What one SMTP transaction knows when its message is complete."""

    tag: str
    smtpname: str
    helo: str
    sockaddr: str
    sender: str
    mail_params: Any
    rcpts: list[tuple[str, Any]]
    size: int
    digest: str


def build_envelopes(config: Config, tx: Transaction,
                    deliveries: Iterable[tuple[int, Delivery]], now: int) -> list[Envelope]:
    """One envelope per delivery lka decided, built once (the queue names them).

    Each delivery keeps the recipient as the client wrote it, its action's
    ``ttl`` (else the queue's) and the DSN parameters of MAIL and its RCPT.
    """
    out: list[Envelope] = []
    params = tx.mail_params
    for index, d in deliveries:
        rcpt, rparams = tx.rcpts[index]
        action = config.actions.get(d.dispatcher)
        ttl = action.ttl if action is not None and action.ttl else config.queue_ttl
        out.append(Envelope(
            evpid="", delivery=d if d.rcpt == rcpt else dataclasses.replace(d, rcpt=rcpt),
            type="mta" if d.relayed else "mda", tag=tx.tag,
            smtpname=tx.smtpname, helo=tx.helo, hostname="<unknown>",
            sockaddr=tx.sockaddr, sender=tx.sender, ctime=now, retry=0, ttl=ttl,
            dsn_notify=tuple(sorted(getattr(rparams, "notify", None) or ())),
            dsn_orcpt=getattr(rparams, "orcpt", None) or "",
            dsn_ret=getattr(params, "ret", None) or "",
            dsn_envid=getattr(params, "envid", None) or "",
            message_size=tx.size, message_sha256=tx.digest))
    return out
