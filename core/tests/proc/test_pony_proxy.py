"""proc/pony_proxy.py over real loopback sockets: the header, then the inner
protocol with the proxied addresses; refusals and the header timeout."""

from __future__ import annotations

import asyncio

import pytest
from mailrider import limits
from mailrider.smtp import proxy


class Inner(asyncio.Protocol):
    def __init__(self) -> None:
        self.peer: object = None
        self.sock: object = None
        self.data = b""
        self.made = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = transport.get_extra_info("peername")
        self.sock = transport.get_extra_info("sockname")
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"220 hello\r\n")
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.data += data


async def _serve(first: bytes) -> tuple[list[Inner], bytes, list[str]]:
    from mailrider.proc.pony_proxy import proxy_v2_factory

    inners: list[Inner] = []
    counted: list[str] = []

    def make() -> Inner:
        inners.append(Inner())
        return inners[-1]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(proxy_v2_factory(make, counted.append), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    await writer.drain()
    got = b""
    try:
        got = await asyncio.wait_for(reader.read(100), 5)
    except (ConnectionError, TimeoutError):
        pass
    await asyncio.sleep(0.05)
    writer.close()
    server.close()
    return inners, got, counted


def test_header_then_inner_protocol_with_the_proxied_addresses() -> None:
    hdr = proxy.build(("198.51.100.4", 6000), ("192.0.2.25", 25))
    inners, got, counted = asyncio.run(_serve(hdr + b"EHLO early\r\n"))
    assert got == b"220 hello\r\n"
    assert inners[0].peer == ("198.51.100.4", 6000)
    assert inners[0].sock == ("192.0.2.25", 25)
    assert inners[0].data == b"EHLO early\r\n"  # what followed the header reaches it
    assert counted == ["smtp.proxy"]


def test_local_command_keeps_the_socket_peer() -> None:
    inners, got, _ = asyncio.run(_serve(proxy.build(None)))
    assert got == b"220 hello\r\n" and isinstance(inners[0].peer, tuple)
    assert inners[0].peer[0] == "127.0.0.1"


@pytest.mark.parametrize("first", [b"EHLO x\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"])
def test_refused_without_inner_protocol_or_reply(first: bytes) -> None:
    inners, got, counted = asyncio.run(_serve(first))
    assert inners == [] and got == b"" and counted == ["smtp.proxy.refused"]


def test_header_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "PROXY_HEADER_TIMEOUT", 0.2)
    inners, got, counted = asyncio.run(_serve(proxy.SIGNATURE[:6]))
    assert inners == [] and got == b"" and counted == ["smtp.proxy.refused"]

