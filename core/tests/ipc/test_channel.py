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
from mailrider.ipc.channel import Channel, ChannelClosed, Gate, RemoteError


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


def test_a_gate_bounds_the_requests_handled_at_once() -> None:
    """200 gated requests over two channels, all waiting on one answer: never more
    than the gate's limit in the handler, each answered (or failed) as without a
    gate, in arrival order per channel; requests of other types pass beside them."""
    async def main() -> None:
        release = asyncio.Event()
        inside = 0
        most = 0
        order: list[str] = []

        async def handler(chan: Channel, msg: Any, fds: list[int]) -> Any:
            nonlocal inside, most
            if isinstance(msg, m.MessageCreate):  # not gated
                return m.Ok(text="fast")
            inside += 1
            most = max(most, inside)
            order.append(msg.msgid)
            try:
                await release.wait()
                if msg.msgid.endswith("7"):
                    raise TempFail("table down", 451, "4.3.0")
                return m.Ok(text=msg.msgid)
            finally:
                inside -= 1

        gate = Gate(5, (m.MessageRollback,))
        pairs = [await _pair(handler) for _ in range(2)]
        for _, cb in pairs:
            cb.gate = gate
        calls = [asyncio.ensure_future(ca.ask(m.MessageRollback(msgid=f"{k}-{i}")))
                 for i in range(100) for k, (ca, _) in enumerate(pairs)]
        for _ in range(50):
            await asyncio.sleep(0.002)
            if gate.waiting == 195:
                break
        assert (gate.running, gate.waiting, most) == (5, 195, 5)
        # a request of another type is not held behind them
        assert (await pairs[0][0].ask(m.MessageCreate())).text == "fast"
        release.set()
        got = await asyncio.gather(*calls, return_exceptions=True)
        for i in range(100):
            for k in range(2):
                reply = got[2 * i + k]
                if i % 10 == 7:
                    assert isinstance(reply, RemoteError) and "451 4.3.0" in str(reply)
                else:
                    assert isinstance(reply, m.Ok) and reply.text == f"{k}-{i}"
        assert most == 5 and (gate.running, gate.waiting, gate.waiting_peak) == (0, 0, 195)
        for k in range(2):
            mine = [x for x in order if x.startswith(f"{k}-")]
            assert mine == [f"{k}-{i}" for i in range(100)]
        for ca, cb in pairs:
            ca.close()
            cb.close()

    run(main())


def test_a_gate_drops_the_waiting_requests_of_a_closed_channel() -> None:
    """A channel that closes while its requests wait: they are not handled (their
    reply could not leave), and the gate goes on with another channel's."""
    async def main() -> None:
        release = asyncio.Event()
        handled: list[str] = []

        async def handler(chan: Channel, msg: Any, fds: list[int]) -> Any:
            handled.append(msg.msgid)
            await release.wait()
            return m.Ok(text=msg.msgid)

        gate = Gate(1, (m.MessageRollback,))
        (a1, b1), (a2, b2) = await _pair(handler), await _pair(handler)
        b1.gate = b2.gate = gate
        first = [asyncio.ensure_future(a1.ask(m.MessageRollback(msgid=f"a{i}")))
                 for i in range(3)]
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(a2.ask(m.MessageRollback(msgid="b0")))
        await asyncio.sleep(0.01)
        assert (gate.running, gate.waiting, handled) == (1, 3, ["a0"])
        b1.close()  # a1's requests now fail as a dead peer's
        for fut in first:
            with pytest.raises(ChannelClosed):
                await fut
        release.set()
        assert (await second).text == "b0"
        assert handled == ["a0", "b0"] and (gate.running, gate.waiting) == (0, 0)
        a1.close()
        a2.close()
        b2.close()

    run(main())


def test_a_gate_lets_at_least_one_request_through() -> None:
    with pytest.raises(ValueError):
        Gate(0, (m.MessageRollback,))


class _Wrapped:
    """A socket whose sendmsg is observed."""

    def __init__(self, sock: socket.socket, sendmsg: Any) -> None:
        self._sock, self.sendmsg = sock, sendmsg

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)
