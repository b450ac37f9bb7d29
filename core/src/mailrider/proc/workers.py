"""A bounded pool of worker threads for blocking or CPU-heavy steps.

Password hashes (SHA-crypt with hundreds of thousands of rounds) are checked
here rather than on a process's event loop, so one login does not stall
every other session's requests. The pool is bounded twice: ``threads`` run
at once, and at most ``pending_max`` calls may be queued or running; past
that :meth:`WorkerPool.run` raises :class:`Busy` at once (the caller answers
a temporary failure) instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from typing import TypeVar

from mailrider.errors import TempFail

T = TypeVar("T")


class Busy(TempFail):
    """Every worker is busy and the queue is full."""


class WorkerPool:
    def __init__(self, threads: int, pending_max: int, name: str) -> None:
        self.pending_max = pending_max
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=name)
        #: calls queued or running; a call stays counted until its thread is
        #: done with it, even when its caller stopped waiting
        self._pending: set[concurrent.futures.Future[object]] = set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if len(self._pending) >= self.pending_max:
            raise Busy("too many requests waiting for a worker")
        cf = self._executor.submit(functools.partial(fn, *args))
        self._pending.add(cf)  # type: ignore[arg-type]
        cf.add_done_callback(self._pending.discard)
        return await asyncio.wrap_future(cf)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
