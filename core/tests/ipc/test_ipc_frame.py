"""The IPC frame codec (mailrider.ipc.frame) and the hex transcripts of
transcripts/, run against the codec and against a real Channel."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mailrider.ipc import frame
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel

TRANSCRIPTS = sorted((Path(__file__).parent / "transcripts").glob("*.txt"))


@dataclass
class Block:
    kind: str  # "frame" or "raw"
    direction: str
    data: bytes = b""
    reqid: int = 0
    flags: int = 0
    message: dict[str, Any] | None = None


@dataclass
class Transcript:
    blocks: list[Block] = field(default_factory=list)
    closed: str | None = None


def load(path: Path) -> Transcript:
    t = Transcript()
    hexes: list[str] = []

    def end() -> None:
        if t.blocks and hexes:
            t.blocks[-1].data = bytes.fromhex("".join(hexes))
        hexes.clear()

    for line in path.read_text(encoding="ascii").splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("frame "):
            end()
            _, direction, reqid, flags, text = line.split(" ", 4)
            t.blocks.append(Block("frame", direction, reqid=int(reqid), flags=int(flags),
                                  message=json.loads(text)))
        elif line == "raw >":
            end()
            t.blocks.append(Block("raw", ">"))
        elif line.startswith("closed "):
            end()
            t.closed = line[len("closed "):]
        else:
            hexes.append(line.replace(" ", ""))
    end()
    return t


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_frame_transcript_codec(path: Path) -> None:
    t = load(path)
    assert t.blocks
    for b in t.blocks:
        if b.kind == "frame":
            assert b.message is not None
            obj = m.decode(dict(b.message))
            assert frame.frame(obj, b.reqid, b.flags) == b.data
            length, reqid, flags, nfds = frame.HEADER.unpack_from(b.data)
            assert (length, reqid, flags, nfds) == (len(b.data) - frame.HEADER.size,
                                                    b.reqid, b.flags, 0)
            assert frame.frame_type(b.data[frame.HEADER.size:]) == b.message["t"]


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_frame_transcript_channel(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    t = load(path)
    sent = b"".join(b.data for b in t.blocks if b.direction == ">")
    expected = b"".join(b.data for b in t.blocks if b.direction == "<")
    seen: list[Any] = []

    async def handler(chan: Channel, msg: Any, fds: list[int]) -> Any:
        seen.append(msg)
        return m.Ok(text=msg.msgid)

    async def main() -> bytes:
        a, b = socket.socketpair()
        closed = asyncio.Event()
        chan = Channel(b, "peer", handler)
        chan.on_close = lambda c: closed.set()
        loop = asyncio.get_running_loop()
        a.setblocking(False)
        await loop.sock_sendall(a, sent)
        got = b""
        while len(got) < len(expected):
            chunk = await asyncio.wait_for(loop.sock_recv(a, 65536), 10)
            if not chunk:
                break
            got += chunk
        if t.closed is not None:
            await asyncio.wait_for(closed.wait(), 10)
            assert chan.closed
            try:  # nothing was answered
                assert a.recv(65536, socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                pass
        else:
            assert not chan.closed
            chan.close()
        a.close()
        return got

    with caplog.at_level(logging.INFO):
        got = asyncio.run(main())
    assert got == expected
    if t.closed is not None:
        assert t.closed in caplog.text
        assert seen == []
    else:
        requests = [b for b in t.blocks if b.direction == ">"]
        assert [x.msgid for x in seen] == [b.message["msgid"] for b in requests if b.message]


def test_frame_type_needs_the_type_first() -> None:
    assert frame.frame_type(b'{"t":"Ok","text":""}') == "Ok"
    assert frame.frame_type(b'{ "t" : "Ok"}') == "Ok"
    assert frame.frame_type(b'{"text":"","t":"Ok"}') is None
    assert frame.frame_type(b'{"t":"' + b"A" * 65 + b'"}') is None
    assert frame.frame_type(b"[1]") is None
