"""A fake peer for the role unit tests: what a process under test sends to
another process goes here instead of over a socketpair.

Every message crosses the real IPC codec both ways (encoded to JSON and
decoded again, as ipc/channel.py does), so a test sees exactly what the
peer would receive: typed envelopes that survived the codec, not the
objects the process happened to hold. Descriptors sent along are closed
once the answer function has seen them, as a channel's sender does.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from mailrider.ipc import messages as m

T = TypeVar("T")

#: (message, descriptors) -> the reply (None: Ok), or a tuple (reply, descriptors)
Answer = Callable[[Any, list[int]], Any]


def wire(msg: Any) -> Any:
    """``msg`` as the receiving end of a channel decodes it."""
    return m.decode(json.loads(json.dumps(m.encode(msg), separators=(",", ":"))))


class FakePeer:
    def __init__(self, name: str, answer: Answer | None = None) -> None:
        self.name = name
        self.answer = answer
        #: every message sent to this peer, as the peer decoded it
        self.got: list[Any] = []

    def of(self, kind: type[T]) -> list[T]:
        return [x for x in self.got if isinstance(x, kind)]

    def notify(self, msg: Any, fds: Sequence[int] = ()) -> None:
        self.got.append(wire(msg))

    async def call(self, msg: Any, fds: Sequence[int] = ()) -> tuple[Any, list[int]]:
        got = wire(msg)
        self.got.append(got)
        dups = [os.dup(fd) for fd in fds]
        try:
            reply = self.answer(got, dups) if self.answer is not None else None
            if asyncio.iscoroutine(reply):
                reply = await reply
        finally:
            for fd in dups:
                os.close(fd)
        rfds: list[int] = []
        if isinstance(reply, tuple):
            reply, rfds = reply
        return wire(reply if reply is not None else m.Ok()), rfds

    async def ask(self, msg: Any, fds: Sequence[int] = ()) -> Any:
        reply, rfds = await self.call(msg, fds)
        for fd in rfds:
            os.close(fd)
        return reply


async def until(cond: Callable[[], bool], what: str, tries: int = 500) -> None:
    """Let the loop run until ``cond`` holds (bounded: a hang fails the test)."""
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)
