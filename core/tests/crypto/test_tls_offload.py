"""pony's server handshakes: the signing step runs in a worker, never on the event loop.

A slow ``sign`` (klondike busy) stands in for the round trip. While it waits
it asks the loop to run a callback: the loop can only do so if it is not the
thread stuck in the signature. The same scenario served by asyncio's own
TLS (``create_server(ssl=...)``, handshake inline) shows the block, so the
check can fail.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mailrider import limits
from mailrider.crypto import delegate, keys
from mailrider.proc import pony_tls
from pki_util import Pki

SLOW = 0.4  # seconds each signature takes
#: how long a signature waits for the loop to run its callback: generous when
#: the loop is expected to be free, short when it cannot be (the contrast)
LIVE, STUCK = 10.0, 0.5


@pytest.fixture
def store(pkis: dict[str, Pki]) -> Iterator[keys.KeyStore]:
    s = keys.KeyStore()
    s.load("rsa", pkis["rsa"].cert, pkis["rsa"].key)
    yield s
    s.close()


class Banner(asyncio.Protocol):
    """The application protocol: says hello once TLS is up."""

    made: list[Banner] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Banner.made.append(self)
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"220 hello\r\n")


class Probe:
    """What the slow signatures saw: their threads, and whether the loop ran meanwhile."""

    def __init__(self, bound: float = LIVE) -> None:
        self.bound = bound
        self.loop: asyncio.AbstractEventLoop | None = None
        self.threads: list[str] = []
        self.live: list[bool] = []
        self.started = threading.Event()  # a signature is under way


def slow_context(pkis: dict[str, Pki], store: keys.KeyStore, probe: Probe) -> ssl.SSLContext:
    def sign(cert_hash: str, op: str, data: bytes, padding: int) -> bytes:
        probe.threads.append(threading.current_thread().name)
        probe.started.set()
        ran = threading.Event()
        assert probe.loop is not None
        probe.loop.call_soon_threadsafe(ran.set)
        time.sleep(SLOW)  # klondike is busy
        probe.live.append(ran.wait(probe.bound))  # never set while the loop is stuck here
        return store.sign(cert_hash, op, data, padding)

    return delegate.delegated_context(pkis["rsa"].cert, sign)


def client_hello() -> tuple[ssl.SSLObject, ssl.MemoryBIO, bytes]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return obj, incoming, outgoing.read()


def tls_client(port: int, timeout: float = 10.0) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw) as tls:
        return tls.recv(100)


def run(scenario: Callable[[int], Any], ctx: ssl.SSLContext, probe: Probe, ours: bool = True
        ) -> tuple[Any, list[dict[str, Any]]]:
    """Serve ``ctx`` on loopback (pony's TLS layer, or asyncio's own when not
    ``ours``), run the blocking ``scenario(port)`` in a thread.

    Returns what it returned and the exceptions the loop's handler saw.
    """
    async def main() -> tuple[Any, list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        probe.loop = loop
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        if ours:
            server = await loop.create_server(pony_tls.smtps_factory(ctx, Banner),
                                              "127.0.0.1", 0)
        else:
            server = await loop.create_server(Banner, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            result = await asyncio.to_thread(scenario, port)
            await asyncio.sleep(SLOW + 0.2)  # let a step still in a worker come back
        finally:
            server.close()
        return result, errors

    Banner.made.clear()
    return asyncio.run(main())


def test_the_signing_step_does_not_block_the_loop(pkis: dict[str, Pki],
                                                  store: keys.KeyStore) -> None:
    probe = Probe()
    banner, errors = run(tls_client, slow_context(pkis, store, probe), probe)
    assert banner == b"220 hello\r\n"
    assert probe.threads and all(t.startswith("tls-handshake") for t in probe.threads)
    assert probe.live == [True] * len(probe.threads), "the loop was stuck in a signature"
    assert not errors


def test_asyncio_inline_handshake_blocks_the_loop(pkis: dict[str, Pki],
                                                  store: keys.KeyStore) -> None:
    """The contrast: asyncio's own TLS signs on the loop, which stalls meanwhile."""
    probe = Probe(STUCK)
    banner, _ = run(tls_client, slow_context(pkis, store, probe), probe, ours=False)
    assert banner == b"220 hello\r\n"
    assert probe.threads == ["MainThread"]
    assert probe.live == [False]


def test_concurrent_handshakes_all_complete(pkis: dict[str, Pki],
                                            store: keys.KeyStore) -> None:
    probe = Probe()
    ctx = slow_context(pkis, store, probe)

    def many(port: int) -> list[bytes]:
        out: list[bytes] = []
        workers = [threading.Thread(target=lambda: out.append(tls_client(port)))
                   for _ in range(5)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return out

    banners, errors = run(many, ctx, probe)
    assert banners == [b"220 hello\r\n"] * 5
    assert len(probe.threads) == 5 and all(probe.live) and not errors


def test_bytes_sent_during_the_step_are_held_then_read(pkis: dict[str, Pki],
                                                       store: keys.KeyStore) -> None:
    """Garbage pipelined behind the ClientHello waits, then fails the handshake cleanly."""
    probe = Probe()

    def garbage(port: int) -> bytes:
        _, _, hello = client_hello()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(hello)
            assert probe.started.wait(10)  # the step is running now
            s.sendall(b"\x17\x03\x03\x00\x05junk!" * 10)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data

    reply, errors = run(garbage, slow_context(pkis, store, probe), probe)
    assert reply.startswith(b"\x16\x03")  # the server's flight came, then the close
    assert Banner.made == []  # the application never saw the connection
    assert len(probe.threads) == 1
    assert all("exception" not in e or isinstance(e["exception"], ssl.SSLError | OSError)
               for e in errors)


def test_a_client_gone_during_the_step(pkis: dict[str, Pki], store: keys.KeyStore) -> None:
    probe = Probe()

    def gone(port: int) -> bytes:
        _, _, hello = client_hello()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(hello)
            assert probe.started.wait(10)
        return tls_client(port)  # the server still serves the next one

    banner, errors = run(gone, slow_context(pkis, store, probe), probe)
    assert banner == b"220 hello\r\n"
    assert len(Banner.made) == 1 and len(probe.threads) == 2
    assert not errors and all(probe.live)


def test_a_flood_during_the_step_is_cut(pkis: dict[str, Pki], store: keys.KeyStore) -> None:
    probe = Probe()

    def flood(port: int) -> str:
        _, _, hello = client_hello()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(hello)
            assert probe.started.wait(10)
            try:
                for _ in range(limits.TLS_HELD_MAX // 4096 + 64):
                    s.sendall(b"\x17\x03\x03\x10\x00" + b"x" * 4091)
                while s.recv(65536):
                    pass
            except OSError as exc:
                return type(exc).__name__
            return "closed"

    outcome, _ = run(flood, slow_context(pkis, store, probe), probe)
    assert outcome in ("closed", "ConnectionResetError", "BrokenPipeError")
    assert Banner.made == []
