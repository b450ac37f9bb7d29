"""The per-receiver message tables (ipc/policy.py) and how a channel enforces them.

The attacker here is a peer process speaking the real framing: it sends a
type its role may not send, a deeply nested payload, a payload that names no
type, each with a descriptor. Every one closes the channel before a handler
runs, and every received descriptor is closed.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from typing import Any

import pytest
from mailrider.ipc import messages as m
from mailrider.ipc import policy
from mailrider.ipc.channel import Channel, frame_type
from mailrider.proc import common

HEADER = struct.Struct("!IIBB")


def test_every_pair_of_linked_processes_has_a_row() -> None:
    pairs = {(r, "parent") for r in common.ROLES} | {("parent", r) for r in common.ROLES}
    for a, b in common.LINKS:
        pairs |= {(a, b), (b, a)}
    assert pairs <= set(policy.ACCEPTS)


def test_rows_name_only_registered_types() -> None:
    for row in policy.ACCEPTS.values():
        for name in row:
            assert name in m._REGISTRY, name


def test_pony_may_not_ask_for_what_only_control_or_lka_may() -> None:
    assert "FilterStart" not in policy.accepts("parent", "pony")
    assert "ForwardOpen" not in policy.accepts("parent", "pony")
    assert "Control" not in policy.accepts("queue", "pony")  # no remove, no expire
    assert "SchedDue" not in policy.accepts("queue", "pony")
    assert "ForkDelivery" not in policy.accepts("parent", "pony")
    assert "ForkDelivery" in policy.accepts("parent", "queue")
    assert "ForkDeliveries" not in policy.accepts("parent", "pony")
    assert "ForkDeliveries" not in policy.accepts("parent", "lka")
    assert "ForkDeliveries" in policy.accepts("parent", "queue")
    assert "GrantKey" not in policy.accepts("lka", "pony")
    assert policy.accepts("parent", "nobody") == frozenset({"Ok", "Error"})


def test_frame_type_is_read_before_decoding() -> None:
    assert frame_type(b'{"t":"Ok","text":""}') == "Ok"
    assert frame_type(b'{"text":"","t":"Ok"}') is None  # the type must come first
    assert frame_type(b'{"t":"../x","a":1}') is None
    assert frame_type(b'{"t":"' + b"A" * 100 + b'"}') is None
    assert frame_type(b"[1,2]") is None
    # what the encoder writes always starts with its type
    import json

    payload = json.dumps(m.encode(m.MessageRollback(msgid="00000001"))).encode()
    assert frame_type(payload.replace(b" ", b"")) == "MessageRollback"


async def _hostile(payload: bytes, accepts: frozenset[str]) -> tuple[Channel, list[object]]:
    """Send one raw frame carrying a pipe's read end; return the receiving channel."""
    a, b = socket.socketpair()
    handled: list[object] = []

    async def handler(chan: Channel, msg: Any, fds: list[int]) -> Any:
        handled.append(msg)
        return None

    closed = asyncio.Event()
    chan = Channel(b, "pony", handler, accepts)
    chan.on_close = lambda c: closed.set()
    r, w = os.pipe()
    a.sendmsg([HEADER.pack(len(payload), 7, 0, 1) + payload],
              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", r))])
    os.close(r)
    await asyncio.wait_for(closed.wait(), 5)
    # the receiver closed its copy of the descriptor: nobody reads the pipe any more
    with pytest.raises(OSError) as exc:
        os.write(w, b"x")
    assert exc.value.errno == errno.EPIPE
    os.close(w)
    a.close()
    return chan, handled


@pytest.mark.parametrize("payload", [
    b'{"t":"FilterStart","name":"filter:x"}',  # a type the queue may not send the parent
    b'{"t":"ForwardOpen","user":"root"}',
    b'{"text":"x","t":"Ok"}',  # no type first
    b'{"t":"ForkDelivery","envelope":' + b"[" * 50000 + b"]" * 50000 + b"}",  # deep nesting
    b'{"t":"ForkDelivery","envelope":{"a":' + b"{\"a\":" * 5000 + b"1" + b"}" * 5001 + b"}",
    b'{"t":"ForkDelivery","envelope":{}, "extra": 1}',  # a field the type has not
    b'{"t":"ForkDelivery"',  # not JSON
])
def test_hostile_frames_close_the_channel(payload: bytes) -> None:
    async def main() -> None:
        # the queue may send ForkDelivery: the nested ones fail in decoding
        chan, handled = await _hostile(payload, policy.accepts("parent", "queue"))
        assert chan.closed
        assert handled == []

    asyncio.run(main())


def test_an_allowed_frame_still_reaches_the_handler() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        got: list[object] = []

        async def handler(chan: Channel, msg: Any, fds: list[int]) -> Any:
            got.append(msg)
            for fd in fds:
                os.close(fd)
            return m.Ok()

        chan = Channel(b, "pony", handler, policy.accepts("queue", "pony"))
        peer = Channel(a, "queue")
        reply = await peer.ask(m.MessageRollback(msgid="0000000a"))
        assert isinstance(reply, m.Ok)
        assert got == [m.MessageRollback(msgid="0000000a")]
        peer.close()
        chan.close()

    asyncio.run(main())
