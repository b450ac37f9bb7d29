"""TLS contexts of pony's listeners, with the private keys left in klondike.

Each pki a listener uses gets its own ``ssl.SSLContext`` built by
:func:`mailrider.crypto.delegate.delegated_context`: the context holds the
certificate chain and a key object with public parts only, whose private
operations are round trips to klondike (docs/processes.md §5). A listener with
several pki picks one by the client's SNI name. Every context passes a
TLS 1.2 and 1.3 self-test at start. When delegation is unavailable pony
refuses to start, unless ``smtp key-in-process`` allows it to load the key
itself, which is logged as a warning at every start.

The TLS of smtps and STARTTLS sessions is a layer of our own
(:class:`TLSLayer` below the session, :class:`TLSTransport` handed to it),
built on the public ``ssl.SSLObject``/``ssl.MemoryBIO`` and asyncio's public
protocol and transport classes: its handshake steps, where OpenSSL asks
klondike to sign, run in a worker thread so that the event loop keeps
serving the other sessions. It uses no private name of ``asyncio`` or
``ssl`` (a test scans this module for them).

Benchmarks and tests only: ``MAILRIDER_KEY_IN_PROCESS=force`` in pony's
environment (:data:`mailrider.limits.KEY_IN_PROCESS_ENV`) skips delegation
and takes that same in-process path, with the same warning, whatever the
configuration says; tools/bench/tls_daemon.py uses it to compare one daemon
with itself. pony reads the key file only here, in ``setup()`` before the
privilege drop, so root-only keys still load. Never set it in production.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import enum
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from mailrider import limits, log
from mailrider.config.model import Config, Listener, Pki
from mailrider.config.tls import dhe_group, load_dhe, needs_tls, protocol_range
from mailrider.crypto import delegate
from mailrider.errors import ConfigError

SignFn = Callable[[str, str, bytes, int], bytes]



def load_pki(ctx: ssl.SSLContext, name: str, pki: Pki, sign: SignFn, config: Config,
             role: str) -> bool:
    """Put pki ``name``'s certificate into ``ctx``, its key delegated to klondike.

    Returns True when the key had to be loaded into pony instead: only with
    ``smtp key-in-process`` (or :data:`limits.KEY_IN_PROCESS_ENV` forced,
    benchmarks and tests), logged as a warning by ``role``; otherwise a
    delegation that cannot work is a :class:`ConfigError` at the pki's line.
    Listeners (server contexts) and ``relay pki`` (client contexts) share it.
    """
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
        refuse_renegotiation(ctx)
        try:
            if ciphers:
                ctx.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise ConfigError(f"pki {name}: {exc}", pki.where.file, pki.where.line) from None
        group = dhe_group(pki.dhe, pki.cert)
        if group is not None:
            load_dhe(ctx, group)
            if pki.dhe == "legacy":
                log.warning("smtp", "dhe-legacy", pki=name, group=group)
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
        """The start-up self-test (docs/processes.md §5) of every delegated context.

        Raises on failure."""
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


def ca_context(config: Config, ca_name: str | None) -> ssl.SSLContext:
    """A verifying client context trusting the ``ca`` named (docs/config.md
    §8), else the system store; a CA file that cannot be read is logged and
    the system store used. The relay contexts and MTA-STS's policy fetch
    start from it."""
    ca = config.cas.get(ca_name) if ca_name else None
    if ca is not None and ca.cert:
        try:
            return ssl.create_default_context(cafile=ca.cert)
        except (OSError, ssl.SSLError) as exc:
            log.error("mta", "ca-load-failed", ca=ca_name, error=str(exc))
    return ssl.create_default_context()


def tls_summary(obj: object) -> tuple[str, str] | None:
    """("TLSv1.3:TLS_AES_256_GCM_SHA384:256", "version=… cipher=… bits=…") of a session."""
    if not isinstance(obj, ssl.SSLObject | ssl.SSLSocket):
        return None
    version = obj.version() or "?"
    cipher = obj.cipher()
    name, bits = (cipher[0], cipher[2]) if cipher else ("?", 0)
    return f"{version}:{name}:{bits}", f"version={version} cipher={name} bits={bits}"


# --- pony's TLS layer ---------------------------------------------------------
#
# OpenSSL asks for the server's signature synchronously, in the middle of
# ``SSLObject.do_handshake()``; with the key in klondike that call waits for
# a round trip to another process. Run on the event loop, that wait would
# stall every other session of pony. So pony has a TLS layer of its own, made
# of public parts only (``ssl.SSLObject`` over two ``ssl.MemoryBIO``, an
# ``asyncio.Protocol`` below and an ``asyncio.Transport`` above): every
# handshake step runs in a worker thread of a small pool
# (:data:`limits.TLS_HANDSHAKE_THREADS`): ``do_handshake`` releases the GIL
# inside OpenSSL, the sign callback takes it back only to talk to klondike,
# and the loop serves other sessions meanwhile. Reads and writes after the
# handshake run on the loop: they never use the key, since renegotiation (a
# new handshake inside ``read``) is refused. The same is done when the key is
# in process (tools/bench/tls_daemon.py compares like with like).
#
# Invariants:
# - while a step runs in the worker (``busy``), the loop thread never touches
#   the SSLObject or its two memory BIOs: bytes that arrive meanwhile wait in
#   a Python buffer of at most :data:`limits.TLS_HELD_MAX` octets (the
#   connection is cut beyond), and a connection lost meanwhile is handled
#   once the step is back;
# - the application protocol gets ``connection_made`` once (smtps: when the
#   handshake is done; STARTTLS: it already had it on the clear transport) and
#   then exactly one ``connection_lost``, whatever ends the connection;
# - ``close()`` sends close_notify, then waits for the client's close_notify
#   or EOF (at most :data:`limits.TLS_SHUTDOWN_TIMEOUT`) before closing the
#   socket, so that unread input does not turn the close into a reset that
#   could destroy our last reply (data after our close_notify is an error for
#   OpenSSL 3: the socket is closed then, that input read); an EOF without
#   close_notify is passed on as ``eof_received`` after every complete record
#   (a truncated one is dropped).

_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = concurrent.futures.ThreadPoolExecutor(
            max_workers=limits.TLS_HANDSHAKE_THREADS, thread_name_prefix="tls-handshake")
    return _EXECUTOR


def refuse_renegotiation(ctx: ssl.SSLContext) -> None:
    """A renegotiation would be a handshake (a signature) inside ``read`` on the loop."""
    if not ctx.options & ssl.OP_NO_RENEGOTIATION:
        ctx.options |= ssl.OP_NO_RENEGOTIATION


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    WRAPPED = "wrapped"
    CLOSING = "closing"  # our close_notify is sent; the client's (or its EOF) awaited
    CLOSED = "closed"  # the socket is closed, closing or lost: TLS is over


def _feed(app: asyncio.BaseProtocol, data: bytes) -> None:
    if isinstance(app, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(app.get_buffer(len(view)))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            app.buffer_updated(n)
            view = view[n:]
    elif isinstance(app, asyncio.Protocol):
        app.data_received(data)


class TLSLayer(asyncio.Protocol):
    """Server-side TLS between a socket transport and an application protocol.

    The protocol of the socket transport; the application talks to
    :attr:`app_transport`. ``connected`` says whether the application already
    had ``connection_made`` (STARTTLS); ``waiter`` gets the handshake's outcome;
    ``reading`` is False for an application that starts with reading paused.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, app: asyncio.BaseProtocol,
                 ctx: ssl.SSLContext, *, connected: bool,
                 waiter: asyncio.Future[None] | None = None, reading: bool = True) -> None:
        refuse_renegotiation(ctx)
        self.app = app
        self.app_transport = TLSTransport(self)
        self._loop = loop
        self._connected = connected
        self._waiter = waiter
        self._inbio = ssl.MemoryBIO()
        self._outbio = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._inbio, self._outbio, server_side=True)
        self._info: dict[str, Any] = {"sslcontext": ctx}
        self._socket: asyncio.Transport | None = None
        self._phase = Phase.HANDSHAKE
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # a handshake step is in the worker
        self._held = bytearray()  # bytes received meanwhile
        self._lost: tuple[Exception | None] | None = None  # connection lost meanwhile
        self._error: Exception | None = None  # what ended the session, for the app
        self._eof = False  # the client's EOF (TCP)
        self._peer_closed = False  # the client's close_notify
        self._app_eof = False  # app.eof_received() called
        self._app_lost = False  # app.connection_lost() called (or scheduled)
        self._app_closing = False  # the app called close() or abort()
        self._reading_paused = not reading  # by the app
        self._socket_paused = False  # socket reading paused by us (app paused, input piling)
        self._writing_paused = False  # by the socket transport
        self._told_paused = False  # app.pause_writing() called, resume_writing() owed
        self._pending: collections.deque[bytes] = collections.deque()  # plaintext to encrypt

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def socket_paused(self) -> bool:
        """The socket is not read: the app paused reading and input piled up."""
        return self._socket_paused

    @property
    def ended_while_busy(self) -> tuple[bool, bool]:
        """(EOF, connection lost) noted while a handshake step is in the worker."""
        return self._busy and self._eof, self._lost is not None

    # -- the socket transport's protocol ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._socket = transport
        self._timer = self._loop.call_later(limits.TLS_HANDSHAKE_TIMEOUT,
                                            self._handshake_timeout)
        self._advance()

    def data_received(self, data: bytes) -> None:
        if self._phase is Phase.CLOSED:
            return
        if self._busy:
            self._held += data
            if len(self._held) > limits.TLS_HELD_MAX:  # a client flooding mid-handshake
                self._held.clear()
                self._abandon(ConnectionAbortedError("too much input during the TLS handshake"))
            return
        self._inbio.write(data)
        self._advance()

    def eof_received(self) -> bool:
        self._eof = True
        self._advance()
        return True  # the layer closes the socket itself, once TLS is done with it

    def connection_lost(self, exc: Exception | None) -> None:
        if self._busy:
            self._lost = (exc,)
            return
        self._gone(exc)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._tell_app_writing()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._tell_app_writing()

    # -- the application's transport (TLSTransport calls these) -------------------------

    def extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._info:
            return self._info[name]
        if self._socket is not None:
            return self._socket.get_extra_info(name, default)
        return default

    def closing(self) -> bool:
        return self._app_closing or self._phase in (Phase.CLOSING, Phase.CLOSED)

    def app_write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self.closing():
            return
        self._pending.append(data if isinstance(data, bytes) else bytes(data))
        self._push()

    def app_close(self) -> None:
        if self._app_closing:
            return
        self._app_closing = True
        self._shutdown()

    def app_abort(self) -> None:
        self._app_closing = True
        self._abandon(None)

    def app_pause_reading(self) -> None:
        self._reading_paused = True

    def app_resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._loop.call_soon(self._advance)

    def app_reading(self) -> bool:
        return not self._reading_paused and not self.closing()

    def write_buffer_size(self) -> int:
        size = self._outbio.pending + sum(map(len, self._pending))
        if self._socket is not None:
            size += self._socket.get_write_buffer_size()
        return size

    def write_buffer_limits(self) -> tuple[int, int]:
        if self._socket is None:
            return 0, 0
        return self._socket.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None, low: int | None) -> None:
        if self._socket is not None:
            self._socket.set_write_buffer_limits(high, low)

    # -- the machine ---------------------------------------------------------------------

    def _advance(self) -> None:
        """Do what the input and events so far allow (loop thread, never while busy)."""
        if self._busy or self._socket is None:
            return
        if self._phase is Phase.HANDSHAKE:
            if self._inbio.pending:
                self._busy = True
                fut = self._loop.run_in_executor(_executor(), self._handshake_step)
                fut.add_done_callback(self._stepped)
            elif self._eof:
                self._fail(ConnectionResetError("connection closed during the TLS handshake"))
        elif self._phase is Phase.WRAPPED:
            self._read()
        elif self._phase is Phase.CLOSING:
            self._drain()

    def _handshake_step(self) -> Exception | None:
        """In a worker: one handshake step; the one that signs waits for klondike."""
        try:
            self._obj.do_handshake()
        except Exception as exc:  # handed back to the loop thread
            return exc
        return None

    def _stepped(self, fut: asyncio.Future[Exception | None]) -> None:
        self._busy = False
        outcome = (fut.result() if not fut.cancelled() and fut.exception() is None
                   else ConnectionAbortedError("TLS handshake step did not finish"))
        if self._held:
            self._inbio.write(bytes(self._held))
            self._held.clear()
        if self._lost is not None:
            exc = self._lost[0]
            self._lost = None
            self._gone(exc)
            return
        if self._phase is not Phase.HANDSHAKE:
            return  # cut meanwhile (timeout, flood)
        self._send()  # this step's flight, or its alert
        try:
            if outcome is None:
                self._handshake_done()
            elif isinstance(outcome, ssl.SSLWantReadError):
                self._advance()
            else:
                self._fail(outcome)
        except Exception as exc:  # the application's connection_made or data_received
            self._loop.call_exception_handler({"message": "TLS session callback failed",
                                               "exception": exc, "protocol": self.app})
            self._abandon(exc)

    def _handshake_done(self) -> None:
        self._cancel_timer()
        self._phase = Phase.WRAPPED
        obj = self._obj
        self._info.update(ssl_object=obj, peercert=obj.getpeercert(), cipher=obj.cipher(),
                          compression=obj.compression(), sslcontext=obj.context)
        if not self._connected:
            self._connected = True
            self.app.connection_made(self.app_transport)
        self._wake(None)
        self._tell_app_writing()
        self._push()
        self._advance()

    def _fail(self, exc: Exception, *, abort: bool = False) -> None:
        """The handshake failed: tell the waiter, send our alert if any, close
        (cut when the alert cannot leave at once: a client that does not read
        must not keep the socket)."""
        self._phase = Phase.CLOSED
        self._cancel_timer()
        self._error = exc
        self._wake(exc)
        if not self._busy:
            self._send()
        sock = self._socket
        if sock is not None:
            abort = abort or self._busy or sock.get_write_buffer_size() > 0
        self._close_socket(abort=abort)

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self._phase is Phase.HANDSHAKE:
            self._fail(ConnectionAbortedError(
                f"TLS handshake not done in {limits.TLS_HANDSHAKE_TIMEOUT:g} s"), abort=True)

    def _read(self) -> None:
        """WRAPPED: decrypt what is here for the app, unless it paused reading."""
        if self._reading_paused:
            self._control_socket_reading()
            return
        chunks: list[bytes] = []
        try:
            while chunk := self._obj.read(limits.TLS_READ_CHUNK):
                chunks.append(chunk)
            self._peer_closed = True  # read() gives b"" on close_notify
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._peer_closed = True
        except ssl.SSLError as exc:  # a bad record: OpenSSL queued an alert
            self._send()
            self._abandon(exc)
            return
        self._send()  # alerts or key updates the records asked for
        if chunks:
            _feed(self.app, b"".join(chunks))
        if self._phase is not Phase.WRAPPED:
            return  # the app closed meanwhile
        if (self._peer_closed or (self._eof and not self._reading_paused)) and not self._app_eof:
            # close_notify, or an EOF without it: a stream truncated after
            # its last complete record (RFC 8446 6.1), passed on all the same
            if self._app_eof_received():
                return  # the app keeps the connection open and closes it later
            self._shutdown()
            return
        self._control_socket_reading()

    def _app_eof_received(self) -> bool:
        if self._app_eof or self._app_lost or not self._connected:
            return False
        self._app_eof = True
        app = self.app
        if isinstance(app, asyncio.Protocol | asyncio.BufferedProtocol):
            return bool(app.eof_received())
        return False

    def _push(self) -> None:
        """Encrypt what the app wrote onto the socket, a chunk at a time."""
        if self._phase is not Phase.WRAPPED:
            return
        while self._pending:
            data = self._pending[0]
            view = memoryview(data)
            done = 0
            try:
                while done < len(view):
                    done += self._obj.write(view[done:done + limits.TLS_WRITE_CHUNK])
                    self._send()
            except ssl.SSLWantReadError:  # needs the client's records first
                self._pending[0] = data[done:]
                break
            except ssl.SSLError as exc:
                self._abandon(exc)
                return
            self._pending.popleft()
        self._send()

    def _shutdown(self) -> None:
        """Send close_notify; close the socket once the client has closed too."""
        if self._phase is Phase.HANDSHAKE:
            self._fail(ConnectionAbortedError("closed during the TLS handshake"), abort=True)
            return
        if self._phase is not Phase.WRAPPED:
            return
        self._phase = Phase.CLOSING
        self._push()
        self._pending.clear()
        try:
            self._obj.unwrap()
        except ssl.SSLError:  # SSLWantReadError: the client's close_notify is not here yet
            pass
        self._send()
        if self._peer_closed or self._eof:
            self._phase = Phase.CLOSED
            self._close_socket(abort=False)
            return
        self._timer = self._loop.call_later(limits.TLS_SHUTDOWN_TIMEOUT, self._shutdown_timeout)
        if self._socket_paused and self._socket is not None:
            self._socket_paused = False
            self._socket.resume_reading()
        self._drain()

    def _drain(self) -> None:
        """CLOSING: wait for the client's close_notify, or its EOF.

        ``read()`` is over once our close_notify is out: a repeated ``unwrap()``
        reads on, one record a call. Data after our close_notify is an error
        for OpenSSL 3 (as for asyncio's own TLS): the socket is closed then,
        its input already read, so the close does not become a reset.
        """
        done = self._eof
        while True:
            before = self._inbio.pending
            try:
                self._obj.unwrap()
                done = True  # the client's close_notify
                break
            except (ssl.SSLWantReadError, ssl.SSLSyscallError):
                if not self._inbio.pending or self._inbio.pending >= before:
                    break
            except ssl.SSLError:
                done = True
                break
        self._send()
        if done:
            self._phase = Phase.CLOSED
            self._cancel_timer()
            self._close_socket(abort=False)

    def _shutdown_timeout(self) -> None:
        self._timer = None
        if self._phase is Phase.CLOSING:
            self._abandon(None)

    def _abandon(self, exc: Exception | None) -> None:
        """Cut the connection now (an error, a flood, abort())."""
        if self._error is None:
            self._error = exc
        if self._phase is Phase.HANDSHAKE:
            self._wake(exc or ConnectionAbortedError("TLS handshake aborted"))
        self._phase = Phase.CLOSED
        self._cancel_timer()
        self._close_socket(abort=True)

    def _gone(self, exc: Exception | None) -> None:
        """The socket's connection_lost (handled once no step is in the worker)."""
        self._phase = Phase.CLOSED
        self._cancel_timer()
        self._held.clear()
        self._pending.clear()
        exc = exc or self._error
        self._wake(exc or ConnectionResetError("connection lost during the TLS handshake"))
        if self._connected and not self._app_lost:
            self._app_lost = True
            self._loop.call_soon(self.app.connection_lost, exc)

    # -- helpers -----------------------------------------------------------------------

    def _send(self) -> None:
        """What OpenSSL wrote to the outgoing BIO, onto the socket (never while busy)."""
        data = self._outbio.read()
        if data and self._socket is not None and not self._socket.is_closing():
            self._socket.write(data)

    def _close_socket(self, *, abort: bool) -> None:
        sock = self._socket
        if sock is None:
            return
        if not self._busy:
            self._send()
        if abort:
            sock.abort()
        else:
            sock.close()

    def _wake(self, exc: Exception | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _control_socket_reading(self) -> None:
        sock = self._socket
        if sock is None or sock.is_closing():
            return
        pending = self._inbio.pending
        if self._reading_paused and pending >= limits.TLS_READ_HIGH and not self._socket_paused:
            self._socket_paused = True
            sock.pause_reading()
        elif self._socket_paused and pending <= limits.TLS_READ_LOW:
            self._socket_paused = False
            sock.resume_reading()

    def _tell_app_writing(self) -> None:
        if self._phase is Phase.HANDSHAKE or not self._connected or self._app_lost:
            return
        if self._writing_paused and not self._told_paused:
            self._told_paused = True
            self.app.pause_writing()
        elif not self._writing_paused and self._told_paused:
            self._told_paused = False
            self.app.resume_writing()


class TLSTransport(asyncio.Transport):
    """What the application holds: plaintext in and out of a :class:`TLSLayer`."""

    def __init__(self, layer: TLSLayer) -> None:
        super().__init__()
        self._layer = layer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``ssl_object``, ``peercert``, ``cipher``, ``compression``, ``sslcontext`` (the
        one SNI chose, once the handshake is done), else the socket transport's."""
        return self._layer.extra_info(name, default)

    def is_closing(self) -> bool:
        return self._layer.closing()

    def close(self) -> None:
        self._layer.app_close()

    def abort(self) -> None:
        self._layer.app_abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._layer.app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._layer.app

    def is_reading(self) -> bool:
        return self._layer.app_reading()

    def pause_reading(self) -> None:
        self._layer.app_pause_reading()

    def resume_reading(self) -> None:
        self._layer.app_resume_reading()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._layer.app_write(data)

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self._layer.write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._layer.write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._layer.set_write_buffer_limits(high, low)


def smtps_factory(ctx: ssl.SSLContext, app_factory: Callable[[], asyncio.BaseProtocol]
                  ) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory for ``create_server`` of an smtps listener (TLS from the start):
    the application's ``connection_made`` comes once the handshake is done."""
    refuse_renegotiation(ctx)

    def make() -> asyncio.BaseProtocol:
        return TLSLayer(asyncio.get_running_loop(), app_factory(), ctx, connected=False)
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
    """Server-side TLS on ``app``'s clear ``transport`` (STARTTLS); the TLS transport.

    Raises ``ssl.SSLError`` or ``ConnectionError`` when the handshake fails
    (the connection is closed then, and ``app`` gets ``connection_lost``). The
    TLS transport starts with reading paused if ``transport`` had it paused
    (pony does while its STARTTLS step runs): what the client pipelines behind
    its Finished reaches ``app`` only once it has taken the new transport.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    layer = TLSLayer(loop, app, ctx, connected=True, waiter=waiter,
                     reading=transport.is_reading())
    transport.set_protocol(layer)
    layer.connection_made(transport)
    transport.resume_reading()
    try:
        await waiter
    except asyncio.CancelledError:
        transport.abort()
        raise
    return layer.app_transport
