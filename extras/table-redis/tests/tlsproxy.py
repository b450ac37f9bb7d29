"""A TLS-terminating relay to a plain loopback server, for redis-servers built without TLS.

It lets the tests exercise the backend's TLS client (CA, verification, client
certificates) for real when the installed redis-server cannot speak TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from pathlib import Path


class TLSProxy:
    """Accepts TLS on a free loopback port and relays the plain bytes upstream."""

    def __init__(self, upstream_port: int, certs: dict[str, Path], *,
                 require_client_cert: bool = False) -> None:
        self.upstream_port = upstream_port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certs["server.crt"], certs["server.key"])
        if require_client_cert:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(certs["ca.crt"])
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        self.port = fut.result(10)

    async def _start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0, ssl=self.ctx)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_w), self._pump(up_r, writer))

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    def close(self) -> None:
        async def stop() -> None:
            if self.server is not None:
                self.server.close()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
