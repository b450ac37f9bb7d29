"""pony: the process that serves SMTP, and delivers to other mail servers.

Like OpenSMTPD's dispatcher, this module is thin: it opens the listeners,
dispatches IPC, keeps the per-address caps, the AUTH throttle and the
counters. Each connection is a :class:`~mailrider.proc.pony_smtp.Session`
(which reaches this process only through its ``SessionHost`` interface), its
filters go through :mod:`mailrider.proc.pony_filter`, outgoing deliveries
are :mod:`mailrider.proc.pony_mta`'s and TLS is :mod:`mailrider.proc.pony_tls`'s.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

from mailrider import limits, log
from mailrider.config.model import Listener
from mailrider.crypto import libcrypto
from mailrider.crypto.signclient import SignClient
from mailrider.errors import ConfigError, TempFail
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel
from mailrider.proc import common, pony_spool, pony_tls
from mailrider.proc.pony_filter import Peer
from mailrider.proc.pony_mta import Mta
from mailrider.proc.pony_proxy import proxy_v2_factory
from mailrider.proc.pony_smtp import Session, is_loopback
from mailrider.proc.pony_tls import ListenerTLS


def _hostname() -> str:
    # no DNS: the configured host name of the machine
    return socket.gethostname() or "localhost"



def needs_rdns(config: Any) -> bool:
    """Reverse lookups: asked for with ``smtp rdns``, or needed by a rule or filter."""
    if config.rdns_lookup:
        return True
    conds = [c for mt in config.matches for c in mt.conditions]
    conds += [c for f in config.filters.values() for c in f.conditions]
    return any(c.kind in ("from-rdns", "rdns", "fcrdns") for c in conds)



def _env_seconds(name: str, default: float) -> float:
    """A test-only duration override from the environment (see limits)."""
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if 0 <= value <= default else default


class Pony(common.Process):
    role = "pony"
    #: no landlock_net: pony connects to other hosts (mta) and serves its listeners
    landlock_fs = True

    def chroot_dir(self) -> str | None:
        return common.empty_dir(self.opts.statedir)

    def before_confine(self) -> None:
        # the OpenSSL binding is found through /proc/self/maps, absent once chrooted;
        # TLS contexts (server and client, with their CA stores) are built in setup()
        try:
            libcrypto.load()
        except libcrypto.Unavailable:
            pass

    async def setup(self) -> None:
        self.hostname = _hostname()
        self.sign_client: Any = None
        # certificates are read before the privilege drop; keys stay in klondike
        self.tls = ListenerTLS(self.config, self.sign)
        self.tls.build()
        self.sessions: set[Session] = set()
        #: sessions closed since the last full garbage collection
        self.closed_since_gc = 0
        self.by_id: dict[str, Session] = {}
        #: failed AUTH by client_key: (count in the window, last failure)
        self.auth_failures: dict[str, tuple[int, float]] = {}
        #: by client_key: when its next AUTH attempt may be checked (auth_wait)
        self.auth_next: dict[str, float] = {}
        self.rdns_lookup = needs_rdns(self.config)
        self.tasks: set[asyncio.Task[None]] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.paused_smtp = "smtp" in self.opts.paused  # mailriderd -P smtp
        self.mta = Mta(self)
        #: open SMTP sessions by client_key (smtp limit sessions-per-address)
        self.per_ip: dict[str, int] = {}
        self.session_timeout = _env_seconds(limits.SESSION_TIMEOUT_ENV, limits.SESSION_TIMEOUT)
        self.greeting_delay = _env_seconds(limits.GREETING_DELAY_ENV, limits.GREETING_DELAY)
        self.greeting_delay_all = limits.GREETING_DELAY_ENV in os.environ

    def sign(self, cert_hash: str, op: str, data: bytes, padding: int) -> bytes:
        if self.sign_client is None:
            raise TempFail("no channel to klondike")
        result: bytes = self.sign_client.sign(cert_hash, op, data, padding)
        return result

    def connect(self, fds: dict[str, int]) -> None:
        sign_fd = fds.pop("klondike-sign", None)
        if sign_fd is not None:
            # a plain blocking socket: OpenSSL calls us synchronously mid-handshake
            self.sign_client = SignClient(socket.socket(fileno=sign_fd))
        super().connect(fds)
        #: spool files asked for before sessions need them (pony_spool.SpoolFiles)
        self.spool_files = pony_spool.SpoolFiles(self.peers["queue"], self.spawn)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.tls.self_test()
        except ConfigError as exc:
            log.error("smtp", "tls-self-test-failed", error=str(exc))
            self.stopping.set()
            return
        spec = os.environ.get("MAILRIDER_LISTENERS", "")
        for item in filter(None, spec.split(",")):
            idx, fd = (int(x) for x in item.split(":"))
            lst = self.config.listeners[idx]
            sock = socket.socket(fileno=fd)
            ctx = self.tls.contexts.get(idx) if lst.smtps else None
            factory: Callable[[], asyncio.BaseProtocol] = functools.partial(
                Session, self, lst, index=idx)
            if ctx is not None:  # smtps: TLS from the first byte
                factory = pony_tls.smtps_factory(ctx, factory)
            if lst.proxy_v2:  # the balancer's header comes first, before any TLS
                factory = proxy_v2_factory(factory, self.count)
            # create_server listens again: without backlog=, asyncio's 100 would
            # replace the parent's (limits.LISTEN_BACKLOG)
            server = await loop.create_server(factory, sock=sock,
                                              backlog=limits.LISTEN_BACKLOG)
            self.servers.append(server)
            log.event("smtp", "listening", address=sock.getsockname()[0],
                      port=sock.getsockname()[1])
        await self.stopping.wait()
        for server in self.servers:
            server.close()

    def session_refused(self, ip: str, client: str, socket_session: bool) -> str | None:
        """Why a new session from ``ip`` (counted as ``client``, its client_key)
        is refused, or None.

        Sessions through the local socket (sendmail) are never refused here;
        loopback clients have their own per-address cap, none by default.
        """
        if socket_session:
            return None
        cfg = self.config
        if len(self.sessions) >= cfg.max_sessions:
            return "too-many-sessions-total"
        local = is_loopback(ip)
        cap = cfg.max_sessions_per_local if local else cfg.max_sessions_per_address
        if cap and self.per_ip.get(client, 0) >= cap:
            return "too-many-sessions"
        return None

    # -- the host of sessions (pony_smtp.SessionHost) --------------------------------

    def peer(self, name: str) -> Peer:
        return self.peers[name]

    def tls_context(self, index: int) -> ssl.SSLContext | None:
        return self.tls.contexts.get(index)

    def session_opened(self, session: Session) -> None:
        self.sessions.add(session)
        self.per_ip[session.client] = self.per_ip.get(session.client, 0) + 1
        self.by_id[session.id] = session

    def session_closed(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            left = self.per_ip.get(session.client, 1) - 1
            if left > 0:
                self.per_ip[session.client] = left
            else:
                self.per_ip.pop(session.client, None)
            self.count("smtp.session.closed")
            self.closed_since_gc += 1
            if self.closed_since_gc >= limits.SESSIONS_PER_GC:
                # asyncio's transports sit in reference cycles (each holds its
                # own bound method) that only a full collection frees; over
                # what the set-up left (frozen) it is short
                self.closed_since_gc = 0
                gc.collect()
        self.by_id.pop(session.id, None)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _auth_count(self, client: str, now: float) -> int:
        count, last = self.auth_failures.get(client, (0, now))
        return 0 if now - last > limits.AUTH_FAIL_WINDOW else count

    def auth_failed(self, client: str) -> None:
        """Count a failed AUTH from ``client`` (a client_key)."""
        now = time.monotonic()
        self.auth_failures[client] = (self._auth_count(client, now) + 1, now)
        if len(self.auth_failures) > 10000:  # bounded: forget the oldest half
            for key, _ in sorted(self.auth_failures.items(), key=lambda kv: kv[1][1])[:5000]:
                del self.auth_failures[key]

    def auth_wait(self, client: str) -> float | None:
        """Seconds an AUTH attempt from ``client`` waits before its password is
        checked, or None when that would exceed AUTH_FAIL_DELAY_MAX (the
        attempt is then refused unchecked).

        Each failure within the window adds AUTH_FAIL_DELAY, and attempts of
        one client are spaced by that delay even when they come on many
        sessions at once: each takes the next slot after the last one given.
        """
        now = time.monotonic()
        delay = min(limits.AUTH_FAIL_DELAY * self._auth_count(client, now),
                    limits.AUTH_FAIL_DELAY_MAX)
        if delay <= 0:
            return 0.0
        # the wait is computed from durations, not from (now + d) - now, whose
        # rounding could push a wait of exactly the maximum past it
        wait = max(0.0, self.auth_next.get(client, 0.0) - now) + delay
        if wait > limits.AUTH_FAIL_DELAY_MAX:
            return None
        if len(self.auth_next) > 10000:  # bounded: slots already past are forgotten
            for key in [k for k, t in self.auth_next.items() if t <= now]:
                del self.auth_next[key]
        self.auth_next[client] = now + wait
        return wait

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out["smtp.session.current"] = len(self.sessions)
        return out

    def local_listener(self) -> tuple[Listener, int]:
        """The ``listen on socket`` options, or the defaults when there is none."""
        for i, lst in enumerate(self.config.listeners):
            if lst.address == "socket":
                return lst, i
        return Listener(address="socket"), -1

    async def local_session(self, msg: m.LocalSession, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        loop = asyncio.get_running_loop()
        lst, idx = self.local_listener()
        factory = functools.partial(Session, self, lst, local_user=msg.user, index=idx)
        await loop.connect_accepted_socket(factory, sock)

    async def handle(self, chan: Channel, msg: Any, fds: list[int]) -> Any:
        if isinstance(msg, m.DeliverBatch):
            try:
                return await self.mta.deliver(msg, fds)
            finally:
                for fd in fds:
                    os.close(fd)
        if isinstance(msg, m.FilterData):
            session = self.by_id.get(msg.sid)
            if session is not None:
                session.filter_output(list(msg.lines), msg.error)
            return None
        if isinstance(msg, m.LocalSession) and len(fds) == 1:
            await self.local_session(msg, fds[0])
            return m.Ok()
        for fd in fds:
            os.close(fd)
        if isinstance(msg, m.Control):
            if msg.command in ("pause-smtp", "resume-smtp"):
                self.paused_smtp = msg.command == "pause-smtp"
                return m.ControlReply(lines=["command succeeded"])
            if msg.command == "status":
                return m.ControlReply(data={"paused_smtp": self.paused_smtp})
            shown = self.mta.control(msg)
            if shown is not None:
                return shown
            return await self.control(msg)
        raise ValueError(f"pony: unexpected {m.type_name(msg)} from {chan.peer}")


PROCESS = Pony
