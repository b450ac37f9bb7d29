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


def test_frames_of_one_turn_share_sends_and_keep_their_descriptors() -> None:
    """40 requests with a descriptor each, queued in one turn of the loop: they leave in
    few sendmsg calls (at most 16 descriptors each, what the peer makes room for), and
    every request gets its own descriptor, in order, mixed with frames that carry none."""
    async def main() -> None:
        seen: list[bytes] = []

        async def handler(chan: Channel, msg: Any, fds: list[int]) -> Any:
            if isinstance(msg, m.MessageCreate):
                assert len(fds) == 1
                seen.append(os.pread(fds[0], 100, 0))
                os.close(fds[0])
            else:
                assert fds == []
            return m.Ok(text=getattr(msg, "msgid", ""))

        ca, cb = await _pair(handler)
        sends = 0
        real = ca.sock.sendmsg

        def counting(*args: Any) -> int:
            nonlocal sends
            sends += 1
            return real(*args)

        ca.sock = _Wrapped(ca.sock, counting)  # type: ignore[assignment]
        files = []
        calls = []
        for i in range(40):
            f = tempfile.TemporaryFile()
            f.write(f"file {i}".encode())
            f.flush()
            files.append(f)
            calls.append(ca.call(m.MessageCreate(msgid=f"{i:08x}"), [f.fileno()]))
            calls.append(ca.call(m.MessageRollback(msgid=str(i))))
        replies = await asyncio.gather(*calls)
        for f in files:
            f.close()
        assert [r.text for r, _ in replies[::2]] == [f"{i:08x}" for i in range(40)]
        assert seen == [f"file {i}".encode() for i in range(40)]
        assert 3 <= sends <= 6  # 40 descriptors: at least 3 sendmsg, not 80
        ca.close()
        cb.close()

    run(main())


class _Wrapped:
    """A socket whose sendmsg is observed."""

    def __init__(self, sock: socket.socket, sendmsg: Any) -> None:
        self._sock, self.sendmsg = sock, sendmsg

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)
