"""The framed IPC channel over a real socketpair: requests, replies, fds, errors."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import tempfile
from typing import Any

import pytest
from mailrider.errors import TempFail
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel, ChannelClosed, RemoteError


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _pair(handler_b: Any) -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return Channel(a, "b"), Channel(b, "a", handler_b)


def test_request_reply_and_many_in_flight() -> None:
    async def main() -> None:
        async def handler(chan: Channel, msg: Any, fds: list[int]) -> Any:
            assert isinstance(msg, m.MessageRollback)
            await asyncio.sleep(0.001 * (int(msg.msgid) % 3))
            return m.Ok(text=msg.msgid)

        ca, cb = await _pair(handler)
        replies = await asyncio.gather(*(ca.ask(m.MessageRollback(msgid=str(i)))
                                         for i in range(500)))
        assert [r.text for r in replies] == [str(i) for i in range(500)]
        ca.close()
        cb.close()

    run(main())


def test_fd_passing_both_ways() -> None:
    async def main() -> None:
        async def handler(chan: Channel, msg: Any, fds: list[int]) -> Any:
            assert len(fds) == 1
            data = os.pread(fds[0], 100, 0)
            os.close(fds[0])
            r, w = os.pipe()
            os.write(w, data.upper())
            os.close(w)
            return m.Ok(), [r]  # the channel owns (and closes) descriptors it is given back

        ca, cb = await _pair(handler)
        with tempfile.TemporaryFile() as f:
            f.write(b"hello fd")
            f.flush()
            reply, fds = await ca.call(m.MessageCreate(), [f.fileno()])
        assert isinstance(reply, m.Ok)
        assert len(fds) == 1
        assert os.read(fds[0], 100) == b"HELLO FD"
        os.close(fds[0])
        ca.close()
        cb.close()

    run(main())


def test_handler_error_becomes_remote_error() -> None:
    async def main() -> None:
        async def handler(chan: Channel, msg: Any, fds: list[int]) -> Any:
            raise TempFail("table down", 451, "4.3.0")

        ca, cb = await _pair(handler)
        with pytest.raises(RemoteError, match=r"451 4\.3\.0 table down"):
            await ca.ask(m.MessageCreate())
        ca.close()
        cb.close()

    run(main())


def test_peer_death_fails_pending_requests() -> None:
    async def main() -> None:
        never = asyncio.Event()

        async def handler(chan: Channel, msg: Any, fds: list[int]) -> Any:
            await never.wait()

        ca, cb = await _pair(handler)
        closed: list[str] = []
        ca.on_close = lambda c: closed.append(c.peer)
        fut = asyncio.ensure_future(ca.ask(m.MessageCreate()))
        await asyncio.sleep(0.01)
        cb.close()
        with pytest.raises(ChannelClosed):
            await fut
        assert closed == ["b"]

    run(main())


def test_garbage_and_unknown_types_close_the_channel() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        closed = asyncio.Event()
        chan = Channel(b, "evil", None)
        chan.on_close = lambda c: closed.set()
        payload = b'{"t": "NotAMessage"}'
        a.sendall(struct.pack("!IIBB", len(payload), 1, 0, 0) + payload)
        await asyncio.wait_for(closed.wait(), 2)
        assert chan.closed
        a.close()

    run(main())


def test_decode_rejects_unexpected_fields() -> None:
    with pytest.raises(ValueError):
        m.decode({"t": "Ok", "text": "x", "evil": 1})
    with pytest.raises(ValueError):
        m.decode(["not", "an", "object"])
    assert m.decode(m.encode(m.RcptResult(accepted=True))) == m.RcptResult(accepted=True)


def test_large_frames_survive_partial_writes() -> None:
    async def main() -> None:
        async def handler(chan: Channel, msg: Any, fds: list[int]) -> Any:
            return m.Ok(text=msg.text[::-1])

        ca, cb = await _pair(handler)
        big = "x" * 3_000_000 + "y"
        reply = await ca.ask(m.Error(text=big))
        assert reply.text == big[::-1]
        ca.close()
        cb.close()

    run(main())
