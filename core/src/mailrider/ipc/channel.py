"""Framed messages between mailrider processes, with file-descriptor passing.

The frame itself (header, JSON payload naming its type first) is
:mod:`mailrider.ipc.frame`.

A channel may be given the set of message types it accepts
(:mod:`mailrider.ipc.policy`): the type, which every payload names first,
is checked before anything else of the frame is decoded. A frame of another
type, a payload that is not a message, or JSON nested too deep closes the
channel: the peer broke the protocol, and nothing it sent after that is
believed. Every descriptor received on a closed channel is closed.

Descriptors ride on the ``sendmsg`` call that carries the frame's first byte,
so on the receiving side they are queued in arrival order and handed to the
frames that announce them. Payloads are JSON and decoded into registered
dataclasses only (see :mod:`mailrider.ipc.messages`): a less trusted peer can
send nothing that executes.

The invariant every process relies on: requests on one channel may be many
in flight at once; each reply is matched to its request by ``reqid``.

A :class:`Gate` may bound how many requests of some types are handled at
once, over every channel it is given to: the others wait in arrival order as
small records (the decoded message and its request id), not as tasks with
their coroutine frames, and each gets its answer as before.
"""

from __future__ import annotations

import array
import asyncio
import collections
import errno
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mailrider import log, profile
from mailrider.errors import TempFail, plain_reason
from mailrider.ipc import messages
from mailrider.ipc.frame import FLAG_ERROR, FLAG_REPLY, HEADER, frame_type
from mailrider.ipc.frame import payload as encode_payload
from mailrider.limits import IPC_FDS_MAX, IPC_FRAME_MAX

_MAX_FDS = IPC_FDS_MAX
_RECV_SIZE = 256 * 1024


class ChannelClosed(TempFail):
    """The peer process went away."""


class RemoteError(TempFail):
    """The peer failed to handle a request."""


Handler = Callable[["Channel", Any, list[int]], Awaitable[Any]]


class Gate:
    """At most ``limit`` requests of ``types`` handled at once, over every channel
    whose ``gate`` it is; the others wait their turn in arrival order.

    Why: a request being handled is a task and the coroutine frames of its
    handler, and under a burst hundreds of them may wait on one answer at
    once (lka's recipient expansions, 4-7 kB each, all waiting on the
    parent's first ``~/.forward`` answer: docs/performance.md §1, "Sessions
    under load"). A waiting request here is a tuple beside its decoded
    message. The requests still run in the order they came, each gets the
    reply (or error) its handler gives, and one whose channel closed while
    it waited is dropped, as its reply would have been.
    """

    def __init__(self, limit: int, types: tuple[type, ...]) -> None:
        if limit < 1:
            raise ValueError("a gate lets at least one request through")
        self.limit = limit
        self.types = types
        #: requests being handled now
        self.running = 0
        #: the most that waited at once (show stats)
        self.waiting_peak = 0
        self._waiting: collections.deque[tuple[Channel, int, Any, list[int]]] = \
            collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def takes(self, obj: Any) -> bool:
        return isinstance(obj, self.types)

    def submit(self, chan: Channel, reqid: int, obj: Any, fds: list[int]) -> None:
        """Handle the request now if a place is free, else when one is."""
        if self.running < self.limit:
            self._start(chan, reqid, obj, fds)
            return
        self._waiting.append((chan, reqid, obj, fds))
        if len(self._waiting) > self.waiting_peak:
            self.waiting_peak = len(self._waiting)

    def _start(self, chan: Channel, reqid: int, obj: Any, fds: list[int]) -> None:
        self.running += 1
        try:
            chan._start(reqid, obj, fds).add_done_callback(self._done)
        except BaseException:
            self.running -= 1
            raise

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running -= 1
        if task.cancelled():
            # only the end of the process cancels a handler: nothing more starts
            while self._waiting:
                for fd in self._waiting.popleft()[3]:
                    os.close(fd)
            return
        while self._waiting and self.running < self.limit:
            chan, reqid, obj, fds = self._waiting.popleft()
            if chan.closed:
                for fd in fds:
                    os.close(fd)
                continue
            self._start(chan, reqid, obj, fds)


class Channel:
    """One end of a socketpair to another process."""

    def __init__(self, sock: socket.socket, peer: str, handler: Handler | None = None,
                 accepts: frozenset[str] | None = None) -> None:
        self.sock = sock
        self.peer = peer
        self.handler = handler
        #: the message types this end takes from the peer (None: every registered type)
        self.accepts = accepts
        self.on_close: Callable[[Channel], None] | None = None
        #: bounds how many requests of some types are handled at once (None: no bound)
        self.gate: Gate | None = None
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._rbuf = bytearray()
        self._rfds: collections.deque[int] = collections.deque()
        self._wqueue: collections.deque[tuple[memoryview, list[int]]] = collections.deque()
        self._writing = False
        self._flush_soon = False
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[tuple[Any, list[int]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._on_readable)

    # -- sending -------------------------------------------------------------

    def _frame(self, obj: Any, reqid: int, flags: int, nfds: int) -> bytes:
        payload = encode_payload(obj)
        if len(payload) > IPC_FRAME_MAX:
            raise ValueError(f"ipc frame too large: {len(payload)}")
        return HEADER.pack(len(payload), reqid, flags, nfds) + payload

    def _enqueue(self, data: bytes, fds: Sequence[int]) -> None:
        if self.closed:
            raise ChannelClosed(f"channel to {self.peer} closed")
        if len(fds) > _MAX_FDS:
            raise ValueError("too many fds in one frame")
        owned = [os.dup(fd) for fd in fds]
        self._wqueue.append((memoryview(data), owned))
        if not self._writing and not self._flush_soon:
            # frames queued during this turn of the loop (replies to a whole
            # commit batch, requests of many sessions) leave in one sendmsg
            self._flush_soon = True
            self._loop.call_soon(self._flush_turn)

    def _flush_turn(self) -> None:
        self._flush_soon = False
        if not self.closed and not self._writing:
            self._flush()

    def _flush(self) -> None:
        while self._wqueue:
            # consecutive frames, at most _MAX_FDS descriptors (what the peer's
            # recvmsg makes room for) and _RECV_SIZE bytes in one sendmsg; the
            # descriptors travel with its first byte, before the frames naming them
            views: list[memoryview] = []
            fds: list[int] = []
            size = 0
            for view, vfds in self._wqueue:
                if views and (len(fds) + len(vfds) > _MAX_FDS or size + len(view) > _RECV_SIZE):
                    break
                views.append(view)
                fds.extend(vfds)
                size += len(view)
            try:
                if fds:
                    n = self.sock.sendmsg(
                        views, [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    )
                else:
                    n = self.sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                log.error("ipc", "write-failed", peer=self.peer, error=exc.strerror)
                self._close()
                return
            if fds and n > 0:
                for i in range(len(views)):
                    for fd in self._wqueue[i][1]:
                        os.close(fd)
                    self._wqueue[i][1].clear()
            whole = n == size
            while n > 0:
                view = self._wqueue[0][0]
                if n >= len(view):
                    n -= len(view)
                    self._wqueue.popleft()
                else:
                    self._wqueue[0] = (view[n:], [])
                    n = 0
            if whole:
                continue
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self.sock.fileno(), self._on_writable)
            return
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self.sock.fileno())

    def _on_writable(self) -> None:
        self._flush()

    def notify(self, obj: Any, fds: Sequence[int] = ()) -> None:
        """Send a one-way message."""
        self._enqueue(self._frame(obj, 0, 0, len(fds)), fds)

    async def call(self, obj: Any, fds: Sequence[int] = ()) -> tuple[Any, list[int]]:
        """Send a request and wait for its reply (and the fds that came with it)."""
        reqid = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
        fut: asyncio.Future[tuple[Any, list[int]]] = self._loop.create_future()
        self._pending[reqid] = fut
        try:
            self._enqueue(self._frame(obj, reqid, 0, len(fds)), fds)
        except BaseException:
            self._pending.pop(reqid, None)
            raise
        if not profile.on("imsg"):
            return await fut
        # the caller's side: how long the request waited for its answer
        started = time.perf_counter()
        try:
            return await fut
        finally:
            profile.add(f"profile.rtt.{messages.type_name(obj)}>{self.peer}",
                        int((time.perf_counter() - started) * 1e6))

    async def ask(self, obj: Any, fds: Sequence[int] = ()) -> Any:
        """Like :meth:`call` for replies that carry no descriptors."""
        reply, rfds = await self.call(obj, fds)
        for fd in rfds:
            os.close(fd)
        return reply

    def _reply(self, reqid: int, obj: Any, fds: Sequence[int] = (), error: bool = False) -> None:
        flags = FLAG_REPLY | (FLAG_ERROR if error else 0)
        if not self.closed:
            self._enqueue(self._frame(obj, reqid, flags, len(fds)), fds)

    # -- receiving -----------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data, ancdata, msg_flags, _ = self.sock.recvmsg(
                _RECV_SIZE, socket.CMSG_SPACE(_MAX_FDS * 4)
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno != errno.ECONNRESET:
                log.error("ipc", "read-failed", peer=self.peer, error=exc.strerror)
            self._close()
            return
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
                self._rfds.extend(fds)
        if msg_flags & socket.MSG_CTRUNC:
            log.error("ipc", "fds-truncated", peer=self.peer)
            self._close()
            return
        if not data:
            self._close()
            return
        self._rbuf += data
        self._parse()

    def _parse(self) -> None:
        buf = self._rbuf
        pos = 0
        hsize = HEADER.size
        while len(buf) - pos >= hsize:
            length, reqid, flags, nfds = HEADER.unpack_from(buf, pos)
            if length > IPC_FRAME_MAX:
                log.error("ipc", "frame-too-large", peer=self.peer, size=length)
                self._close()
                return
            if len(buf) - pos - hsize < length:
                break
            payload = bytes(buf[pos + hsize : pos + hsize + length])
            pos += hsize + length
            if nfds > len(self._rfds):
                log.error("ipc", "missing-fds", peer=self.peer)
                self._close()
                return
            fds = [self._rfds.popleft() for _ in range(nfds)]
            kind = frame_type(payload)
            if kind is None or (self.accepts is not None and kind not in self.accepts):
                log.error("ipc", "refused-frame", peer=self.peer, type=kind or "?")
                for fd in fds:
                    os.close(fd)
                self._close()
                return
            try:
                obj = messages.decode(json.loads(payload))
            except (ValueError, TypeError, KeyError, RecursionError) as exc:
                log.error("ipc", "bad-frame", peer=self.peer, type=kind,
                          error=type(exc).__name__)
                for fd in fds:
                    os.close(fd)
                self._close()
                return
            self._dispatch(reqid, flags, obj, fds)
        del buf[:pos]

    def _dispatch(self, reqid: int, flags: int, obj: Any, fds: list[int]) -> None:
        if flags & FLAG_REPLY:
            fut = self._pending.pop(reqid, None)
            if fut is None or fut.done():
                for fd in fds:
                    os.close(fd)
                return
            if flags & FLAG_ERROR:
                text = obj.text if isinstance(obj, messages.Error) else "remote error"
                fut.set_exception(RemoteError(text))
            else:
                fut.set_result((obj, fds))
            return
        if self.handler is None:
            for fd in fds:
                os.close(fd)
            return
        if self.gate is not None and self.gate.takes(obj):
            self.gate.submit(self, reqid, obj, fds)
            return
        self._start(reqid, obj, fds)

    def _start(self, reqid: int, obj: Any, fds: list[int]) -> asyncio.Task[None]:
        task = self._loop.create_task(self._handle(reqid, obj, fds))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _handle(self, reqid: int, obj: Any, fds: list[int]) -> None:
        """Run the handler; descriptors it returns are sent, then closed here."""
        assert self.handler is not None
        started = time.perf_counter() if profile.on("imsg") else 0.0
        try:
            result = await self.handler(self, obj, fds)
            if started:
                profile.add(f"profile.imsg.{messages.type_name(obj)}",
                            int((time.perf_counter() - started) * 1e6))
        except Exception as exc:
            if not isinstance(exc, TempFail):
                log.error("ipc", "handler-failed", peer=self.peer, type=messages.type_name(obj),
                          error=f"{type(exc).__name__}: {plain_reason(exc)}")
            if reqid:
                text = exc.reply() if isinstance(exc, TempFail) else "internal error"
                self._reply(reqid, messages.Error(text=text), error=True)
            return
        if reqid:
            rfds: Sequence[int] = ()
            if isinstance(result, tuple):
                result, rfds = result
            try:
                self._reply(reqid, result if result is not None else messages.Ok(), rfds)
            except (OSError, ValueError, TypeError) as exc:
                log.error("ipc", "reply-failed", peer=self.peer,
                          error=f"{type(exc).__name__}: {plain_reason(exc)}")
                self._reply(reqid, messages.Error(text="internal error"), error=True)
            finally:
                for fd in rfds:
                    os.close(fd)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._loop.remove_reader(self.sock.fileno())
            if self._writing:
                self._loop.remove_writer(self.sock.fileno())
        except (ValueError, OSError):
            pass
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ChannelClosed(f"channel to {self.peer} closed"))
        self._pending.clear()
        while self._rfds:
            os.close(self._rfds.popleft())
        for _, fds in self._wqueue:
            for fd in fds:
                os.close(fd)
        self._wqueue.clear()
        self.sock.close()
        if self.on_close is not None:
            self.on_close(self)

    def close(self) -> None:
        if not self.closed and self._wqueue and not self._writing:
            self._flush()  # what this turn of the loop queued still leaves
        self._close()
