"""pony's server handshakes: the signing step runs in a worker, never on the event loop.

A slow ``sign`` (klondike busy) stands in for the round trip; a ticker on
the loop measures how long the loop was blocked. The same scenario with
asyncio's own SSLProtocol shows the block, so the check can fail.
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


def slow_context(pkis: dict[str, Pki], store: keys.KeyStore,
                 threads: list[str]) -> ssl.SSLContext:
    def sign(cert_hash: str, op: str, data: bytes, padding: int) -> bytes:
        threads.append(threading.current_thread().name)
        time.sleep(SLOW)
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


def run(scenario: Callable[[int], Any], ctx: ssl.SSLContext, offload: bool = True
        ) -> tuple[Any, float, list[dict[str, Any]]]:
    """Serve ``ctx`` on loopback, run the blocking ``scenario(port)`` in a thread.

    Returns what it returned, the longest gap between two 10 ms ticks of the
    loop meanwhile, and the exceptions the loop's handler saw.
    """
    async def main() -> tuple[Any, float, list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        server = await loop.create_server(pony_tls.smtps_factory(ctx, Banner),
                                          "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        gap, stop = [0.0], asyncio.Event()

        async def ticker() -> None:
            last = loop.time()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = loop.time()
                gap[0] = max(gap[0], now - last)
                last = now

        tick = asyncio.create_task(ticker())
        try:
            result = await asyncio.to_thread(scenario, port)
            await asyncio.sleep(SLOW + 0.2)  # let a step still in a worker come back
        finally:
            stop.set()
            await tick
            server.close()
        return result, gap[0], errors

    Banner.made.clear()
    saved = pony_tls.OFFLOAD
    pony_tls.OFFLOAD = offload  # read when a connection comes
    try:
        return asyncio.run(main())
    finally:
        pony_tls.OFFLOAD = saved


def test_the_signing_step_does_not_block_the_loop(pkis: dict[str, Pki],
                                                  store: keys.KeyStore) -> None:
    assert pony_tls.OFFLOAD, "this Python's SSLProtocol lacks what the offload needs"
    threads: list[str] = []
    banner, gap, errors = run(tls_client, slow_context(pkis, store, threads))
    assert banner == b"220 hello\r\n"
    assert threads and all(t.startswith("tls-handshake") for t in threads)
    assert gap < SLOW / 2, f"the loop stalled {gap:.3f}s"
    assert not errors


def test_asyncio_inline_handshake_blocks_the_loop(pkis: dict[str, Pki],
                                                  store: keys.KeyStore) -> None:
    """The contrast: without the offload the same handshake stalls the loop."""
    threads: list[str] = []
    banner, gap, _ = run(tls_client, slow_context(pkis, store, threads), offload=False)
    assert banner == b"220 hello\r\n"
    assert threads == ["MainThread"]
    assert gap >= SLOW * 0.9


def test_concurrent_handshakes_all_complete(pkis: dict[str, Pki],
                                            store: keys.KeyStore) -> None:
    threads: list[str] = []
    ctx = slow_context(pkis, store, threads)

    def many(port: int) -> list[bytes]:
        out: list[bytes] = []
        workers = [threading.Thread(target=lambda: out.append(tls_client(port)))
                   for _ in range(5)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return out

    banners, gap, errors = run(many, ctx)
    assert banners == [b"220 hello\r\n"] * 5
    assert len(threads) == 5 and gap < SLOW / 2 and not errors


def test_bytes_sent_during_the_step_are_held_then_read(pkis: dict[str, Pki],
                                                       store: keys.KeyStore) -> None:
    """Garbage pipelined behind the ClientHello waits, then fails the handshake cleanly."""
    threads: list[str] = []

    def garbage(port: int) -> bytes:
        _, _, hello = client_hello()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(hello)
            time.sleep(0.05)  # the step is running now
            s.sendall(b"\x17\x03\x03\x00\x05junk!" * 10)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data

    reply, _, errors = run(garbage, slow_context(pkis, store, threads))
    assert reply.startswith(b"\x16\x03")  # the server's flight came, then the close
    assert Banner.made == []  # the application never saw the connection
    assert len(threads) == 1
    assert all("exception" not in e or isinstance(e["exception"], ssl.SSLError | OSError)
               for e in errors)


def test_a_client_gone_during_the_step(pkis: dict[str, Pki], store: keys.KeyStore) -> None:
    threads: list[str] = []

    def gone(port: int) -> bytes:
        _, _, hello = client_hello()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(hello)
            time.sleep(0.05)
        return tls_client(port)  # the server still serves the next one

    banner, gap, errors = run(gone, slow_context(pkis, store, threads))
    assert banner == b"220 hello\r\n"
    assert len(Banner.made) == 1 and len(threads) == 2
    assert not errors and gap < SLOW / 2


def test_a_flood_during_the_step_is_cut(pkis: dict[str, Pki], store: keys.KeyStore) -> None:
    threads: list[str] = []

    def flood(port: int) -> str:
        _, _, hello = client_hello()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(hello)
            time.sleep(0.05)
            try:
                for _ in range(limits.TLS_HELD_MAX // 4096 + 64):
                    s.sendall(b"\x17\x03\x03\x10\x00" + b"x" * 4091)
                while s.recv(65536):
                    pass
            except OSError as exc:
                return type(exc).__name__
            return "closed"

    outcome, _, _ = run(flood, slow_context(pkis, store, threads))
    assert outcome in ("closed", "ConnectionResetError", "BrokenPipeError")
    assert Banner.made == []
