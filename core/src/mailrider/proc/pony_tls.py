"""TLS contexts of pony's listeners, with the private keys left in klondike.

Each pki a listener uses gets its own ``ssl.SSLContext`` built by
:func:`mailrider.crypto.delegate.delegated_context`: the context holds the
certificate chain and a key object with public parts only, whose private
operations are round trips to klondike (KLONDIKE.md). A listener with
several pki picks one by the client's SNI name. Every context passes a
TLS 1.2 and 1.3 self-test at start. When delegation is unavailable pony
refuses to start, unless ``smtp key-in-process`` allows it to load the key
itself, which is logged as a warning at every start.

Benchmarks and tests only: ``MAILRIDER_KEY_IN_PROCESS=force`` in pony's
environment (:data:`mailrider.limits.KEY_IN_PROCESS_ENV`) skips delegation
and takes that same in-process path, with the same warning, whatever the
configuration says; tools/bench/tls_daemon.py uses it to compare one daemon
with itself. pony reads the key file only here, in ``setup()`` before the
privilege drop, so root-only keys still load. Never set it in production.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

from mailrider import limits, log
from mailrider.config.model import Config, Listener, Pki
from mailrider.errors import ConfigError

SignFn = Callable[[str, str, bytes, int], bytes]

_VERSIONS = {
    "tlsv1.0": ssl.TLSVersion.TLSv1, "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}


def protocol_range(spec: str | None) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """libtls-style ``protocols`` ("secure", "default", "all", "tlsv1.2,tlsv1.3", "legacy")."""
    if spec is None or spec.lower() in ("secure", "default"):
        return ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED
    if spec.lower() in ("all", "legacy"):
        return ssl.TLSVersion.TLSv1, ssl.TLSVersion.MAXIMUM_SUPPORTED
    chosen = []
    for word in spec.replace(":", ",").split(","):
        word = word.strip().lower()
        if word.startswith("!"):
            continue
        if word not in _VERSIONS:
            raise ValueError(f"unknown TLS protocol {word!r}")
        chosen.append(_VERSIONS[word])
    if not chosen:
        raise ValueError(f"no TLS protocol in {spec!r}")
    return min(chosen), max(chosen)


def needs_tls(lst: Listener) -> bool:
    return lst.tls or lst.tls_require or lst.smtps


def load_pki(ctx: ssl.SSLContext, name: str, pki: Pki, sign: SignFn, config: Config,
             role: str) -> bool:
    """Put pki ``name``'s certificate into ``ctx``, its key delegated to klondike.

    Returns True when the key had to be loaded into pony instead: only with
    ``smtp key-in-process`` (or :data:`limits.KEY_IN_PROCESS_ENV` forced,
    benchmarks and tests), logged as a warning by ``role``; otherwise a
    delegation that cannot work is a :class:`ConfigError` at the pki's line.
    Listeners (server contexts) and ``relay pki`` (client contexts) share it.
    """
    from mailrider.crypto import delegate

    assert pki.cert is not None and pki.key is not None
    forced = os.environ.get(limits.KEY_IN_PROCESS_ENV, "") == "force"
    try:
        try:
            if forced:
                raise delegate.DelegationUnavailable(
                    f"{limits.KEY_IN_PROCESS_ENV}=force (benchmarks/tests only)")
            delegate.install(ctx, pki.cert, sign)
            return False
        except delegate.DelegationUnavailable as exc:
            if not (config.key_in_process or forced):
                raise ConfigError(f"pki {name}: key delegation to klondike is unavailable "
                                  f"({exc}); 'smtp key-in-process' would allow pony to hold "
                                  "the key", pki.where.file, pki.where.line) from None
            log.warning(role, "key-in-process", pki=name, reason=str(exc))
            ctx.load_cert_chain(pki.cert, pki.key)
            return True
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"pki {name}: {exc}", pki.where.file, pki.where.line) from None


class ListenerTLS:
    """The contexts of every listener that offers TLS."""

    def __init__(self, config: Config, sign: SignFn) -> None:
        self.config = config
        self.sign = sign
        self.contexts: dict[int, ssl.SSLContext] = {}
        self.by_name: dict[int, dict[str, ssl.SSLContext]] = {}
        self.delegated: list[ssl.SSLContext] = []
        self.in_process = False

    def build(self) -> None:
        """Build every context (before the privilege drop: certificates may be root-only)."""
        for i, lst in enumerate(self.config.listeners):
            if not needs_tls(lst):
                continue
            names = lst.pki or list(self.config.pkis)
            if not names:
                raise ConfigError("listener offers TLS but no pki is declared",
                                  lst.where.file, lst.where.line)
            ctxs = {name: self._context(lst, name) for name in names}
            default = ctxs[names[0]]
            if len(ctxs) > 1:
                default.sni_callback = self._sni(ctxs)
            self.contexts[i] = default
            self.by_name[i] = ctxs

    @staticmethod
    def _sni(ctxs: dict[str, ssl.SSLContext]) -> Callable[[ssl.SSLObject, str | None,
                                                            ssl.SSLContext], None]:
        lowered = {k.lower(): v for k, v in ctxs.items()}

        def pick(obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            chosen = lowered.get((name or "").lower().rstrip("."))
            if chosen is not None:
                obj.context = chosen

        return pick

    def _context(self, lst: Listener, name: str) -> ssl.SSLContext:
        pki = self.config.pkis.get(name)
        if pki is None or pki.cert is None or pki.key is None:
            raise ConfigError(f"pki {name}: certificate and key are both required",
                              lst.where.file, lst.where.line)
        try:
            lo, hi = protocol_range(lst.protocols)
        except ValueError as exc:
            raise ConfigError(str(exc), lst.where.file, lst.where.line) from None
        ciphers = lst.ciphers or self.config.smtp_ciphers
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version, ctx.maximum_version = lo, hi
        try:
            if ciphers:
                ctx.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise ConfigError(f"pki {name}: {exc}", pki.where.file, pki.where.line) from None
        if load_pki(ctx, name, pki, self.sign, self.config, "smtp"):
            self.in_process = True
        else:
            self.delegated.append(ctx)
        if lst.tls_verify:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ca = self.config.cas.get(lst.ca) if lst.ca else None
            if ca is not None and ca.cert:
                ctx.load_verify_locations(ca.cert)
            else:
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        return ctx

    def self_test(self) -> None:
        """KLONDIKE.md step 6 for every delegated context; raises on failure."""
        from mailrider.crypto import delegate

        for ctx in self.delegated:
            mode = ctx.verify_mode
            # a verify listener would want a client certificate: test the key
            # delegation without it, then ask for certificates again
            ctx.verify_mode = ssl.CERT_NONE
            try:
                delegate.self_test(ctx)
            except delegate.DelegationUnavailable as exc:
                raise ConfigError(f"TLS self-test failed: {exc}") from None
            finally:
                ctx.verify_mode = mode
        if self.delegated:
            log.event("smtp", "tls-ready", contexts=len(self.delegated), delegated="yes")


def tls_summary(obj: object) -> tuple[str, str] | None:
    """("TLSv1.3:TLS_AES_256_GCM_SHA384:256", "version=… cipher=… bits=…") of a session."""
    if not isinstance(obj, ssl.SSLObject | ssl.SSLSocket):
        return None
    version = obj.version() or "?"
    cipher = obj.cipher()
    name, bits = (cipher[0], cipher[2]) if cipher else ("?", 0)
    return f"{version}:{name}:{bits}", f"version={version} cipher={name} bits={bits}"


# --- handshakes off the event loop ------------------------------------------
#
# OpenSSL asks for the server's signature synchronously, in the middle of
# ``SSLObject.do_handshake()``; with the key in klondike that call waits for
# a round trip to another process. Run on the event loop, that wait would
# stall every other session of pony. asyncio's SSLProtocol runs the
# handshake inline, so the step that consumes the ClientHello (the one that
# signs) is moved to a worker thread here: ``do_handshake`` releases the GIL
# inside OpenSSL, the sign callback takes it back only to talk to klondike,
# and the loop keeps serving other sessions meanwhile. The same is done when
# the key is in process (tools/bench/tls_daemon.py compares like with like).
#
# Invariant: while a step runs in the worker, the loop thread never touches
# the SSLObject or its two memory BIOs. Bytes that arrive meanwhile wait in
# a Python buffer; a connection lost meanwhile is handled once the step is
# back. Only the first step that has bytes to read is moved: the others are
# cheap (no private-key operation) and stay inline.

_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None

#: SSLProtocol internals the subclass relies on (asyncio of Python 3.11-3.13):
#: methods, and attributes its ``__init__`` sets
_METHODS = ("_do_handshake", "_on_handshake_complete", "_process_outgoing", "_fatal_error",
            "buffer_updated", "connection_lost", "_app_transport")
_ATTRIBUTES = ("_incoming", "_sslobj", "_state", "_ssl_buffer_view", "_loop", "_transport")


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = concurrent.futures.ThreadPoolExecutor(
            max_workers=limits.TLS_HANDSHAKE_THREADS, thread_name_prefix="tls-handshake")
    return _EXECUTOR


def _supported() -> bool:
    """Whether this Python's SSLProtocol has what OffloadedHandshake overrides and reads."""
    cls = getattr(sslproto, "SSLProtocol", None)
    state = getattr(sslproto, "SSLProtocolState", None)
    if cls is None or not hasattr(state, "DO_HANDSHAKE"):
        return False
    names = cls.__init__.__code__.co_names  # attributes assigned in __init__
    return (all(hasattr(cls, n) or n in names for n in _METHODS)
            and all(n in names for n in _ATTRIBUTES))


#: typeshed knows little of SSLProtocol's internals: the base is typed loosely
_SSLProtocol: Any = sslproto.SSLProtocol


class OffloadedHandshake(_SSLProtocol):  # type: ignore[misc]
    """asyncio's server-side SSLProtocol, its signing handshake step in a worker."""

    _busy = False
    _moved = False
    _held: bytearray | None = None
    _lost: tuple[BaseException | None] | None = None

    def buffer_updated(self, nbytes: int) -> None:
        if self._busy:
            if self._held is None:
                self._held = bytearray()
            self._held += self._ssl_buffer_view[:nbytes]
            if len(self._held) > limits.TLS_HELD_MAX:  # a client that floods mid-handshake
                self._held = bytearray()
                self._transport.abort()
            return
        super().buffer_updated(nbytes)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._busy:
            self._lost = (exc,)
            return
        super().connection_lost(exc)

    def _do_handshake(self) -> None:
        if self._busy:
            return
        if self._moved or not self._incoming.pending:
            super()._do_handshake()
            return
        self._moved = self._busy = True
        fut = self._loop.run_in_executor(_executor(), self._step)
        fut.add_done_callback(self._stepped)

    def _step(self) -> BaseException | None:
        try:
            self._sslobj.do_handshake()
        except BaseException as exc:  # handed back to the loop thread
            return exc
        return None

    def _stepped(self, fut: asyncio.Future[BaseException | None]) -> None:
        self._busy = False
        outcome: BaseException | None = (fut.exception() or fut.result()
                                         if not fut.cancelled() else ConnectionAbortedError())
        if self._held:
            self._incoming.write(bytes(self._held))
        self._held = None
        if self._lost is not None:
            super().connection_lost(self._lost[0])
            return
        if self._state != sslproto.SSLProtocolState.DO_HANDSHAKE:
            return  # aborted meanwhile (timeout, EOF, close)
        if isinstance(outcome, ssl.SSLWantReadError | ssl.SSLWantWriteError):
            self._process_outgoing()
            if self._incoming.pending:
                super()._do_handshake()
        elif isinstance(outcome, ssl.SSLError):
            self._on_handshake_complete(outcome)
        elif outcome is not None:
            self._fatal_error(outcome, "TLS handshake failed")
        else:
            self._on_handshake_complete(None)


OFFLOAD = _supported()


def server_protocol(loop: asyncio.AbstractEventLoop, app: asyncio.BaseProtocol,
                    ctx: ssl.SSLContext, waiter: asyncio.Future[None] | None,
                    call_connection_made: bool = True) -> Any:
    cls = OffloadedHandshake if OFFLOAD else _SSLProtocol
    proto = cls(loop, app, ctx, waiter, server_side=True,
                                      call_connection_made=call_connection_made,
                                      ssl_handshake_timeout=limits.TLS_HANDSHAKE_TIMEOUT)
    return proto


def smtps_factory(ctx: ssl.SSLContext, app_factory: Callable[[], asyncio.BaseProtocol]
                  ) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory for ``create_server`` of an smtps listener (TLS from the start)."""
    def make() -> asyncio.BaseProtocol:
        loop = asyncio.get_running_loop()
        proto: asyncio.BaseProtocol = server_protocol(loop, app_factory(), ctx, None)
        return proto
    return make


#: the first byte of every TLS record a ClientHello can come in (handshake)
_TLS_HANDSHAKE_RECORD = 0x16


async def client_speaks_tls(transport: asyncio.Transport, timeout: float) -> bool:
    """After our 220 to STARTTLS: wait for the client's first byte and look at it
    without consuming it. False when it is not the start of a TLS handshake
    record (the client went on in clear: RFC 3207 4.2, answered with 421
    rather than a handshake error) or the client closed; TimeoutError after
    ``timeout``. The transport's reading is paused on return."""
    loop = asyncio.get_running_loop()
    transport.pause_reading()
    raw = transport.get_extra_info("socket")
    if raw is None:
        return True
    # the transport owns its descriptor: watch and peek through a duplicate
    peek = socket.socket(fileno=os.dup(raw.fileno()))
    try:
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(peek.fileno(), readable)
        try:
            await asyncio.wait_for(ready, timeout)
        finally:
            loop.remove_reader(peek.fileno())
        try:
            first = peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # readable went away: let the handshake wait for it
        except OSError:
            return False
        if first[:1] == bytes([_TLS_HANDSHAKE_RECORD]):
            return True
        try:
            # what the client sent in clear is never read as commands; taken off
            # the socket so that closing it does not reset the connection
            # before our 421 arrives
            peek.recv(limits.PIPELINE_READ_AHEAD, socket.MSG_DONTWAIT)
        except OSError:
            pass
        return False
    finally:
        peek.close()


async def start_tls(transport: asyncio.Transport, app: asyncio.BaseProtocol,
                    ctx: ssl.SSLContext) -> asyncio.Transport:
    """``loop.start_tls(..., server_side=True)`` with the handshake step off the loop."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    proto = server_protocol(loop, app, ctx, waiter, call_connection_made=False)
    transport.pause_reading()
    transport.set_protocol(proto)
    made = loop.call_soon(proto.connection_made, transport)
    resumed = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        made.cancel()
        resumed.cancel()
        raise
    new: asyncio.Transport = proto._app_transport
    return new
