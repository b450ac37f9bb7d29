"""pony's side of ``listen on ... proxy-v2``: read the PROXY v2 header, then
hand the connection to the listener's own protocol with the client's address.

The header is parsed by :mod:`mailrider.smtp.proxy` (sans-I/O); this module
owns the socket until the header is whole (docs/hostile-input-rules.md,
"PROXY protocol v2 headers"):

- :class:`ProxyV2Protocol` is the outermost protocol of a proxy-v2 listener,
  outside TLS for ``smtps`` (the balancer sends the header in clear before
  the client's first byte). It reads at most one header, within
  ``limits.PROXY_HEADER_TIMEOUT``; anything malformed closes the connection
  with one log line and no reply.
- Once the header is complete, the socket transport is given to the inner
  protocol (the SMTP session, or the TLS layer in front of it) wrapped in a
  :class:`ProxiedTransport` whose ``peername`` and ``sockname`` are the
  header's, so every later use of the client's address (session caps,
  rules, ``Received:``, filters, logs) sees the proxied one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mailrider import limits, log
from mailrider.smtp import proxy


class ProxiedTransport(asyncio.Transport):
    """The socket transport with the addresses a PROXY header gave."""

    def __init__(self, inner: asyncio.Transport, peername: tuple[str, int] | None,
                 sockname: tuple[str, int] | None) -> None:
        super().__init__()
        self._inner = inner
        self._names: dict[str, Any] = {}
        if peername is not None:
            self._names["peername"] = peername
        if sockname is not None:
            self._names["sockname"] = sockname

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._names:
            return self._names[name]
        return self._inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def close(self) -> None:
        self._inner.close()

    def abort(self) -> None:
        self._inner.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._inner.writelines(list_of_data)

    def write_eof(self) -> None:
        self._inner.write_eof()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)


class ProxyV2Protocol(asyncio.Protocol):
    """Reads one PROXY v2 header, then becomes the inner protocol."""

    def __init__(self, inner_factory: Callable[[], asyncio.BaseProtocol],
                 count: Callable[[str], None] | None = None) -> None:
        self._factory = inner_factory
        self._count = count or (lambda key: None)
        self._reader = proxy.ProxyReader()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._peer = ""
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) else "local"
        self._timer = asyncio.get_running_loop().call_later(
            limits.PROXY_HEADER_TIMEOUT, self._refuse, "timeout")

    def _refuse(self, reason: str) -> None:
        if self._done:
            return
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        log.event("smtp", "proxy-refused", address=self._peer, reason=reason)
        self._count("smtp.proxy.refused")
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        try:
            header, rest = self._reader.feed(data)
        except proxy.ProxyError as exc:
            self._refuse(str(exc))
            return
        if header is None:
            return
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        assert self._transport is not None
        if header.command == "proxy":
            wrapped = ProxiedTransport(self._transport, header.source, header.destination)
            log.event("smtp", "proxy", address=header.source[0] if header.source else None,
                      port=header.source[1] if header.source else None, proxy=self._peer)
        else:
            wrapped = ProxiedTransport(self._transport, None, None)
            log.event("smtp", "proxy", address=self._peer, command="local")
        self._count("smtp.proxy")
        inner = self._factory()
        self._transport.set_protocol(inner)
        inner.connection_made(wrapped)
        if rest and isinstance(inner, asyncio.Protocol):
            inner.data_received(rest)

    def eof_received(self) -> bool | None:
        self._refuse("closed before the header")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done:
            self._done = True
            log.event("smtp", "proxy-refused", address=self._peer,
                      reason="closed before the header")
            self._count("smtp.proxy.refused")
        if self._timer is not None:
            self._timer.cancel()


def proxy_v2_factory(inner: Callable[[], asyncio.BaseProtocol],
                     count: Callable[[str], None] | None = None
                     ) -> Callable[[], asyncio.BaseProtocol]:
    """The protocol factory of a ``proxy-v2`` listener around its own."""
    return lambda: ProxyV2Protocol(inner, count)
