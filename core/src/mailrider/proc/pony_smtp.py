"""pony's SMTP session: one incoming connection, around the sans-I/O machine.

The SMTP protocol itself is :mod:`mailrider.smtp.server`; a :class:`Session`
owns the socket, its timers and the IPC steps of each verb, and reaches the
rest of pony only through the narrow :class:`SessionHost` interface (the
listeners' process, :class:`mailrider.proc.pony.Pony`, or a fake in tests).
Message bytes go from the socket straight into the spool file whose
descriptor queue handed over at DATA; they never travel over IPC.

Invariants:

- ``250`` after DATA is sent only once queue confirmed the commit
  (message and envelopes synced to disk);
- one step that needs IPC runs at a time (``busy``); meanwhile the machine
  buffers what the client pipelines, up to ``limits.PIPELINE_READ_AHEAD``;
- filters (docs/filter-protocol.md) are reached through
  :class:`~mailrider.proc.pony_filter.FilterClient`, which decides; this
  module turns decisions into replies.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import os
import ssl
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from mailrider import limits, log
from mailrider.config.model import Config, Listener
from mailrider.errors import TempFail, plain_reason
from mailrider.ipc import messages as m
from mailrider.proc import pony_spool, pony_tls
from mailrider.proc.pony_deliveries import Deliveries
from mailrider.proc.pony_filter import FilterClient, Peer, filter_reply
from mailrider.proc.pony_tls import tls_summary
from mailrider.queue.envelope import Envelope, new_msgid
from mailrider.smtp.address import AddressError, parse_path
from mailrider.smtp.hygiene import HeaderHygiene
from mailrider.smtp.masquerade import FromRewriter
from mailrider.smtp.received import received_header
from mailrider.smtp.reply import Reply
from mailrider.smtp.server import ServerConfig, SMTPServer
from mailrider.smtp.server import events as ev

#: one step of a session that needs IPC (run by Session._start)
Step = Coroutine[Any, Any, None]


class SessionHost(Protocol):
    """What a session needs of the process that listens (pony.Pony)."""

    config: Config
    #: the machine's name, when the listener names none
    hostname: str
    #: ``mailriderctl pause smtp``: new sessions are turned away
    paused_smtp: bool
    #: are clients' names looked up before the banner (pony.needs_rdns)?
    rdns_lookup: bool
    session_timeout: float
    greeting_delay: float
    #: the greeting delay applies to loopback clients too (tests)
    greeting_delay_all: bool

    #: spool files ready before a session needs one
    spool_files: pony_spool.SpoolFiles

    def peer(self, name: str) -> Peer:
        """The channel to process ``name`` (``lka``, ``queue``)."""
        ...

    def tls_context(self, index: int) -> ssl.SSLContext | None:
        """The server TLS context of listener ``index``, if it has one."""
        ...

    def count(self, key: str, n: int = 1) -> None: ...

    def session_refused(self, ip: str, client: str, socket_session: bool) -> str | None: ...

    def session_opened(self, session: Session) -> None:
        """``session`` was admitted: it counts against the caps from now on."""
        ...

    def session_closed(self, session: Session) -> None:
        """``session`` is over (whether it was admitted or not)."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task the host keeps until it ends."""
        ...

    def auth_wait(self, client: str) -> float | None: ...

    def auth_failed(self, client: str) -> None: ...


class Session(asyncio.Protocol):
    """One SMTP connection."""

    # hundreds open at once under load: slots instead of a __dict__ each
    # (docs/performance.md §1, "Sessions under load")
    __slots__ = (
        "__weakref__",
        "busy",
        "client",
        "deadline",
        "deliveries",
        "digest",
        "end_reason",
        "fcrdns",
        "fd",
        "filter",
        "filter_data",
        "filtered",
        "greet_timer",
        "greeted",
        "helo",
        "host",
        "hostname",
        "hygiene",
        "id",
        "index",
        "ip",
        "junk",
        "listener",
        "local_user",
        "looked_up",
        "mail_params",
        "masq",
        "msgid",
        "named",
        "pooled",
        "port",
        "precreate",
        "rcpt_accepted",
        "rcpts",
        "rdns",
        "sender",
        "size",
        "srv",
        "timer",
        "tls_early",
        "tls_early_eof",
        "tls_info",
        "transport",
        "tx_junk",
        "txid",
        "written",
    )

    def __init__(self, host: SessionHost, listener: Listener, local_user: str | None = None,
                 index: int = -1) -> None:
        self.host = host
        self.local_user = local_user
        self.listener = listener
        self.index = index
        #: does this session go through filters (docs/filter-protocol.md)?
        self.filtered = bool(listener.filters) and index >= 0
        self.junk = False
        self.hostname = listener.hostname or host.hostname
        #: ``hostnames <t>``: the name is looked up before the banner
        self.named = listener.hostnames is None
        cfg = host.config
        self.srv = SMTPServer(ServerConfig(
            hostname=self.hostname, max_message_size=cfg.max_message_size,
            max_rcpt=cfg.max_rcpt, max_mails=cfg.max_mails, max_errors=limits.MAX_ERRORS,
            dsn=not listener.no_dsn, smtputf8=True, pipelining=True, eightbitmime=True,
            starttls=(listener.tls or listener.tls_require) and not listener.smtps
            and host.tls_context(index) is not None,
            implicit_tls=listener.smtps,
            auth=listener.auth or listener.auth_optional, auth_required=listener.auth,
            tls_required=listener.tls_require,
        ))
        self.tls_info: tuple[str, str] | None = None
        self.rdns = ""
        self.fcrdns = "error"
        self.looked_up = False
        self.transport: asyncio.Transport | None = None
        self.id = os.urandom(8).hex()
        self.ip = ""
        #: what the per-address session cap counts (client_key)
        self.client = ""
        self.port = 0
        self.helo = ""
        self.busy = False
        #: during the STARTTLS handshake: application data that came with the
        #: client's last handshake flight, before the machine knows TLS is up
        self.tls_early: bytearray | None = None
        self.tls_early_eof = False
        self.timer: asyncio.TimerHandle | None = None
        #: loop time after which the session times out; pushed forward by
        #: _arm_timer, checked when the one pending timer fires
        self.deadline = 0.0
        self.greeted = False
        self.greet_timer: asyncio.TimerHandle | None = None
        #: why the session ended, for the "disconnected reason=" line (OpenSMTPD's words)
        self.end_reason: str | None = None
        #: the filter protocol (only used when self.filtered)
        self.filter = FilterClient(self.id, host.peer("lka"), host.spawn, write=self._write,
                                   pause=self._filter_pause, resume=self._filter_resume)
        self._reset_tx()

    def _reset_tx(self) -> None:
        self.precreate: asyncio.Task[tuple[Any, list[int]]] | None = None
        #: the spool file taken from the host's ready ones at the first RCPT
        self.pooled: tuple[str, int] | None = None
        self.txid = ""
        self.tx_junk = False
        #: does the message go through data-line filters?
        self.filter_data = False
        self.filter.reset()
        self.sender: str | None = None
        self.mail_params: Any = None
        #: accepted recipients (address, RCPT parameters); their deliveries
        #: are in self.deliveries, bounded (smtp limit max-deliveries)
        self.rcpts: list[tuple[str, Any]] = []
        self.deliveries = Deliveries(self.host.config.max_deliveries)
        #: recipients lka accepted in this transaction: the same one again
        #: expands to deliveries already held, so lka is not asked twice
        self.rcpt_accepted: set[str] = set()
        self.msgid: str | None = None
        self.fd = -1
        self.size = 0
        #: what went into the spool file: recovery checks it (queue.spool)
        self.digest = hashlib.sha256()
        self.written = 0
        #: ``senders <t> masquerade``: the From: rewriter of this message
        self.masq: FromRewriter | None = None
        #: Bcc: removed, Date:/Message-ID: added where OpenSMTPD adds them
        self.hygiene: HeaderHygiene | None = None

    # -- asyncio protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if self.local_user is not None:
            self.ip = "local"
        elif isinstance(peer, tuple):
            self.ip, self.port = str(peer[0]), int(peer[1])
        else:
            self.ip = "local"
        if self.host.paused_smtp:
            transport.write(b"421 4.3.2 Service paused, try again later\r\n")
            transport.close()
            return
        self.client = client_key(self.ip)
        refused = self.host.session_refused(self.ip, self.client, self.local_user is not None)
        if refused is not None:
            log.event("smtp", "refused", address=self.ip, reason=refused)
            transport.write(b"421 4.7.0 Too many connections from your address\r\n"
                            if refused == "too-many-sessions" else
                            b"421 4.7.0 Too many connections, try again later\r\n")
            transport.close()
            return
        self.host.session_opened(self)
        self.host.count("smtp.session")
        # smtpctl's show stats keys: smtp.session.inet4 / .inet6 / .local
        self.host.count("smtp.session." + ("local" if self.ip == "local" else
                                           "inet6" if ":" in self.ip else "inet4"))
        # OpenSMTPD's line (docs/logging.md), then ours: the client's port,
        # the submitting user of a local session
        log.event("smtp", "connected", session=self.id, address=self.ip, host=self.hostname,
                  port=self.port or None, user=self.local_user)
        self._arm_timer(self.host.session_timeout)
        if self.listener.smtps:
            self.tls_info = tls_summary(transport.get_extra_info("ssl_object"))
            if self.tls_info is not None:
                log.event("smtp", "tls", session=self.id, ciphers=self.tls_info[0])
                self.host.count("smtp.tls")
        delay = 0.0
        if self.local_user is None and (self.host.greeting_delay_all
                                        or not is_loopback(self.ip)):
            delay = self.host.greeting_delay
        if delay > 0:
            self.greet_timer = asyncio.get_running_loop().call_later(delay, self._greet)
        else:
            self._greet()

    def _greet(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self.named:
            self._start(self._lookup_name())
            return
        if self.host.rdns_lookup and self.ip != "local" and not self.looked_up:
            self._start(self._lookup_peer())
            return
        self.greeted = True
        if self.filtered:
            self._start(self._filter_connect())
            return
        self.transport.write(self.srv.greeting())

    async def _lookup_name(self) -> None:
        """``hostnames <t>``: our name for this session, by the local address
        it arrived on (docs/config.md §13); none found keeps the default."""
        self.named = True
        table = self.listener.hostnames
        sock = self.transport.get_extra_info("sockname") if self.transport else None
        local = str(sock[0]) if isinstance(sock, tuple) and sock else ""
        if table is not None and local:
            key = f"[{local}]" if ":" in local else local
            try:
                reply = await self.host.peer("lka").ask(
                    m.MtaLookup(service="addrname", table=table, key=key))
            except TempFail as exc:
                log.warning("smtp", "hostname-lookup-failed", session=self.id, table=table,
                            address=key, error=exc.text)
                reply = None
            name = reply.text.strip() if isinstance(reply, m.Ok) else ""
            if name:
                try:
                    self.srv.rename(name)
                    self.hostname = name
                except ValueError:
                    log.warning("smtp", "hostname-invalid", session=self.id, table=table,
                                address=key)
        if self.transport is None or self.transport.is_closing():
            return
        if self.host.rdns_lookup and self.ip != "local" and not self.looked_up:
            await self._lookup_peer()  # already inside _start: await, don't nest
            return
        self.greeted = True
        if self.filtered:
            await self._filter_connect()
        else:
            self.transport.write(self.srv.greeting())

    async def _lookup_peer(self) -> None:
        """The client's reverse DNS name (lka resolves), before the banner."""
        self.looked_up = True
        try:
            info = await self.host.peer("lka").ask(m.PeerLookup(ip=self.ip))
        except TempFail:
            info = None
        if isinstance(info, m.PeerInfo):
            self.rdns, self.fcrdns = info.rdns, info.fcrdns
        if self.transport is None or self.transport.is_closing():
            return
        self.greeted = True
        if self.filtered:
            await self._filter_connect()  # already inside _start: await, don't nest
        else:
            self.transport.write(self.srv.greeting())

    def _pregreet(self) -> None:
        """The client spoke before our banner (RFC 5321 4.3.1): a spam engine
        or a smuggler that does not read replies; no greeting, no session."""
        log.event("smtp", "pregreet", session=self.id, address=self.ip)
        self.host.count("smtp.pregreet")
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"554 5.7.1 Protocol error: talking before the greeting\r\n")
            self.transport.close()

    def _arm_timer(self, delay: float) -> None:
        """Time out ``delay`` seconds from now. Called on every reply and chunk of
        data: it moves a deadline, and a timer is only made when none is pending
        (one per session, not one per reply)."""
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + delay
        if self.timer is not None and self.timer.when() > self.deadline:
            self.timer.cancel()  # a shorter delay than the pending one
            self.timer = None
        if self.timer is None:
            self.timer = loop.call_at(self.deadline, self._timeout)

    def _timeout(self) -> None:
        self.timer = None
        if self.transport is None or self.transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self.deadline:  # activity since: wait for the rest
            self.timer = loop.call_at(self.deadline, self._timeout)
            return
        self.end_reason = "timeout"
        self.transport.write(b"421 4.4.2 Timeout, closing connection\r\n")
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self.greeted:
            self._pregreet()
            return
        if self.tls_early is not None:
            # decrypted already (only the TLS transport calls us now), but
            # srv.tls_started() comes when _starttls resumes: hold it till then
            self.tls_early += data
            if len(self.tls_early) > limits.TLS_HELD_MAX and self.transport is not None:
                self.transport.abort()
            return
        # RFC 5321 4.5.3.2.7: the timeout runs while awaiting a command; it is
        # re-armed by replies and message data (_flush, _process), not by each
        # byte, so a client trickling a command a byte at a time (slowloris)
        # still times out.
        self.srv.receive(data)
        if not self.busy:
            self._process()
        elif (self.srv.buffered >= limits.PIPELINE_READ_AHEAD and self.transport is not None
              and not self.transport.is_closing()):
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.tls_early is not None:
            self.tls_early_eof = True  # after the early data, once TLS is up
            return None
        self.srv.receive(b"")
        if not self.busy:
            self._process()
        # a client that pipelines and half-closes still gets the replies of the
        # step in flight: keep the transport open; the machine closes it after
        # (over TLS reading is paused meanwhile, so no EOF comes here then)
        return True if self.busy and not self.srv.closed and not self.srv.tls else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.greet_timer is not None:
            self.greet_timer.cancel()
        self.host.session_closed(self)
        self._abort_tx()
        if self.filtered:
            self.filter.end()
        self.filter.detach()
        reason = self.end_reason or (f"io-error: {plain_reason(exc)}" if exc else "disconnect")
        log.event("smtp", "disconnected", session=self.id, reason=reason)

    # -- event processing -------------------------------------------------------------

    def _flush(self) -> None:
        out = self.srv.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)
            self._arm_timer(self.host.session_timeout)
        if self.srv.closed and self.transport is not None:
            self.transport.close()

    def _process(self) -> None:
        """Handle events synchronously until one needs an IPC round trip."""
        while True:
            event = self.srv.next_event()
            if event is None:
                break
            if isinstance(event, ev.DataChunk):
                self._arm_timer(self.host.session_timeout)
                if self.filter_data:
                    self.filter.chunk(event.data)
                else:
                    self._write(event.data)
                continue
            coro = self._handle(event)
            if coro is None:
                self._flush()
                continue
            self._start(coro)
            return
        self._flush()

    def _start(self, coro: Step) -> None:
        """Run one step that needs IPC. Reading goes on into the machine, which
        parses nothing until the answer (so bytes pipelined after STARTTLS or a
        DATA that is refused are seen as such), up to PIPELINE_READ_AHEAD bytes."""
        self.busy = True
        if self.srv.tls and self.transport is not None:
            # asyncio's TLS transport closes at EOF whatever we answer: no read-ahead
            self.transport.pause_reading()
        self.host.spawn(self._await(coro))

    async def _await(self, coro: Step) -> None:
        try:
            await coro
        except Exception as exc:
            log.error("smtp", "internal-error", session=self.id, error=repr(exc))
            self.srv.close(Reply(421, "4.3.0", "Internal error, closing connection"))
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return
        finally:
            self.busy = False
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self._process()
        elif self.srv.closed:
            self._process()  # the events that closed it (ProtocolError, ConnectionClosed)

    def _handle(self, event: Any) -> Step | None:
        """Dispatch one event to its verb: a coroutine for a step that needs
        IPC, else act at once and return None.

        Each verb has a check step (``_check_*``: the state and arguments,
        the senders table, the filters' decision; it replies on failure) and
        a proceed step (``_proceed_*``: act and reply), as OpenSMTPD's
        smtp_session does. The machine has validated syntax and sequence."""
        if isinstance(event, ev.ProtocolError):
            # the machine has queued its 421 and closed the session: _flush sends it
            log.event("smtp", "protocol-error", session=self.id, reason=event.reason)
            self.host.count("smtp.session.protocol-error")
            return None
        if isinstance(event, ev.StartTLS):
            return self._check_starttls()
        if isinstance(event, ev.Auth):
            return self._check_auth(event)
        if isinstance(event, ev.Hello):
            return self._check_hello(event)
        if isinstance(event, ev.MailFrom):
            return self._check_mail(event)
        if isinstance(event, ev.RcptTo):
            return self._check_rcpt(event)
        if isinstance(event, ev.DataStart):
            return self._check_data()
        if isinstance(event, ev.DataEnd):
            return self._check_eom(event)
        if isinstance(event, ev.Reset | ev.Quit | ev.ConnectionClosed):
            if isinstance(event, ev.Quit):
                self.end_reason = "quit"
            self._abort_tx()
        elif self.srv.awaiting_answer:
            self.srv.reject(502, "5.5.1", "Command not implemented")
        return None

    # -- HELO/EHLO, MAIL, RCPT, DATA: check, then proceed ------------------------------

    def _check_hello(self, event: ev.Hello) -> Step | None:
        if self.filtered:
            return self._filter_hello(event)
        self._proceed_hello(event.verb, event.name)
        return None

    def _proceed_hello(self, verb: str, name: str) -> None:
        self.helo = name
        self.srv.accept()
        if self.filtered:
            self._report("link-identify", [verb.upper(), self.helo])

    def _check_mail(self, event: ev.MailFrom) -> Step | None:
        if self.listener.senders is not None and self.srv.auth_user:
            return self._check_senders(event)
        if self.filtered:
            return self._filter_mail(event)
        self._proceed_mail(str(event.sender) if event.sender is not None else "", event.params)
        return None

    def _proceed_mail(self, sender: str, params: Any) -> None:
        if not self.filtered:
            self._begin_tx(sender, params)
            return
        self._begin_tx(sender, params, txid=new_msgid())
        self._report("tx-begin", [self.txid])
        self._report("tx-mail", [self.txid, "ok", sender])

    def _check_rcpt(self, event: ev.RcptTo) -> Step:
        if self.filtered:
            return self._filter_rcpt(event)
        return self._proceed_rcpt(event)

    def _check_data(self) -> Step:
        if self.filtered:
            return self._filter_data()
        return self._proceed_data()

    def _check_eom(self, event: ev.DataEnd) -> Step:
        if self.filtered and event.error is None:
            return self._filter_eom(event)
        return self._proceed_eom(event)

    # -- filters (only for listeners with a ``filter`` option) --------------------------

    def _report(self, event: str, params: list[str]) -> None:
        self.filter.report(event, params)

    async def _filter(self, phase: str, params: list[str]) -> m.FilterDecision:
        return await self.filter.phase(phase, params)

    def _apply(self, d: m.FilterDecision) -> bool:
        """Act on reject/disconnect/junk; True when the command ends here."""
        if d.decision in ("reject", "disconnect"):
            reply = filter_reply(d.param)
            if d.decision == "disconnect" or reply.code == 421:
                self.srv.close(reply)
            else:
                self.srv.reply(reply)
            return True
        if d.decision == "junk":
            if self.txid:
                self.tx_junk = True
            else:
                self.junk = True
        return False

    async def _filter_connect(self) -> None:
        assert self.transport is not None
        sock = self.transport.get_extra_info("sockname")
        dest = f"{sock[0]}:{sock[1]}" if isinstance(sock, tuple) else "local"
        src = "local" if self.ip == "local" else (f"[{self.ip}]" if ":" in self.ip else self.ip)
        link_src = "local" if self.ip == "local" else (
            f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}")
        d = await self.filter.begin(self.index, self.rdns or "<unknown>", self.fcrdns, src,
                                    link_src, dest)
        if d.decision in ("reject", "disconnect"):
            self.transport.write(filter_reply(d.param).to_bytes())
            self.transport.close()
            return
        if d.decision == "junk":
            self.junk = True
        self.transport.write(self.srv.greeting())
        self._report("link-greeting", [self.hostname])

    async def _filter_hello(self, event: ev.Hello) -> None:
        d = await self._filter("ehlo" if event.verb.upper() != "HELO" else "helo", [event.name])
        if self._apply(d):
            return
        self._proceed_hello(event.verb, d.param if d.decision == "rewrite" and d.param
                            else event.name)

    async def _filter_mail(self, event: ev.MailFrom) -> None:
        addr = str(event.sender) if event.sender is not None else ""
        d = await self._filter("mail-from", [addr])
        if self._apply(d):
            return
        if d.decision == "rewrite":
            try:
                new = parse_path(f"<{d.param or ''}>", True, sender=True)
            except AddressError as exc:
                self.srv.reply(exc.reply)
                return
            addr = str(new) if new is not None else ""
        self._proceed_mail(addr, event.params)

    async def _filter_rcpt(self, event: ev.RcptTo) -> None:
        d = await self._filter("rcpt-to", [str(event.rcpt)])
        if self._apply(d):
            self._report("tx-rcpt", [self.txid, "permfail", str(event.rcpt)])
            return
        if d.decision == "rewrite":
            try:
                new = parse_path(f"<{d.param or ''}>", True, postmaster=True)
            except AddressError as exc:
                self.srv.reply(exc.reply)
                return
            if new is not None:
                event = ev.RcptTo(rcpt=new, params=event.params)
        before = len(self.rcpts)
        await self._proceed_rcpt(event)
        ok = len(self.rcpts) > before
        self._report("tx-rcpt", [self.txid, "ok" if ok else "permfail", str(event.rcpt)])

    async def _filter_data(self) -> None:
        d = await self._filter("data", [])
        if self._apply(d):
            self._report("tx-data", [self.txid, "permfail"])
            return
        await self._proceed_data()
        self._report("tx-data", [self.txid, "ok" if self.msgid else "tempfail"])

    async def _filter_eom(self, event: ev.DataEnd) -> None:
        if self.filter_data and not await self._filter_data_end():
            return
        d = await self._filter("commit", [])
        if self._apply(d):
            await self._rollback(self.msgid)
            self._close_fd()
            self._reset_tx()
            return
        await self._proceed_eom(event)

    def _filter_pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def _filter_resume(self) -> None:
        if not self.busy and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def filter_output(self, lines: list[str], error: str) -> None:
        """Lines back from the filters: un-stuffed, into the spool file."""
        self.filter.output(lines, error)

    async def _filter_data_end(self) -> bool:
        error = await self.filter.data_end()
        if error is not None:
            log.warning("smtp", "filter-data-failed", session=self.id, error=error)
            await self._rollback(self.msgid)
            self._close_fd()
            self.srv.close(Reply(421, "4.3.0", "Temporary failure in filter"))
            self._reset_tx()
            return False
        return True

    async def _check_auth(self, event: ev.Auth) -> None:
        """AUTH PLAIN/LOGIN: lka checks, after the wait that this client's
        earlier failures cost (Pony.auth_wait): the delay comes before the
        password is hashed, so guessing cannot make the server work faster."""
        user = event.username
        wait = self.host.auth_wait(self.client)
        if wait is None:
            await asyncio.sleep(limits.AUTH_FAIL_DELAY_MAX)
            log.event("smtp", "authentication", session=self.id, user=user, result="tempfail")
            log.event("smtp", "auth-throttled", session=self.id, user=user)
            self.host.count("smtp.auth.throttled")
            self.srv.reject(454, "4.7.0", "Too many authentication attempts, try again later")
            if self.filtered:
                self._report("link-auth", ["error", user])
            return
        if wait > 0:
            await asyncio.sleep(wait)
        await self._proceed_auth(event, wait)

    async def _proceed_auth(self, event: ev.Auth, wait: float) -> None:
        user = event.username
        try:
            res = await self.host.peer("lka").ask(m.AuthCheck(
                table=self.listener.auth_table, username=user, password=event.password))
        except TempFail:
            res = m.AuthResult("error")
        result = res.result if isinstance(res, m.AuthResult) else "error"
        if result == "ok":
            self.srv.accept()
            # OpenSMTPD's lines exactly: log parsers (fail2ban) anchor on them
            log.event("smtp", "authentication", session=self.id, user=user, result="ok")
            self.host.count("smtp.auth.ok")
        elif result == "fail":
            self.host.auth_failed(self.client)
            log.event("smtp", "authentication", session=self.id, user=user,
                      result="permfail")
            log.event("smtp", "failed-command", session=self.id,
                      command=log.Quoted(f"AUTH {event.mechanism} (...)"),
                      result=log.Quoted("535 5.7.8 Authentication credentials invalid"))
            log.debug("smtp", "auth-failed", session=self.id, mechanism=event.mechanism,
                      delay=f"{wait:.1f}s")
            self.host.count("smtp.auth.fail")
            self.srv.reject(535, "5.7.8", "Authentication credentials invalid")
        else:
            log.event("smtp", "authentication", session=self.id, user=user, result="tempfail")
            reply = res.reply if isinstance(res, m.AuthResult) else None
            self.srv.reply(reply if reply is not None and reply.code >= 400 else AUTH_TEMPORARY)
        if self.filtered:
            self._report("link-auth", [{"ok": "pass", "fail": "fail"}.get(result, "error"),
                                       user])

    async def _check_senders(self, event: ev.MailFrom) -> None:
        """``senders <t>``: an authenticated user sends only as addresses the table maps."""
        sender = str(event.sender) if event.sender is not None else ""
        try:
            res = await self.host.peer("lka").ask(m.SendersCheck(
                table=str(self.listener.senders), username=self.srv.auth_user or "",
                sender=sender))
        except TempFail:
            self.srv.reject(451, "4.3.0", "Temporary failure, try again later")
            return
        if not (isinstance(res, m.Ok) and res.text == "yes"):
            log.event("smtp", "failed-command", session=self.id,
                      command=log.Quoted(f"MAIL FROM:<{sender}>"), result=log.Quoted(
                          "550 5.7.1 Sender address not owned by the authenticated user"),
                      user=self.srv.auth_user)
            self.srv.reject(550, "5.7.1", "Sender address not owned by the authenticated user")
            return
        if self.filtered:
            await self._filter_mail(event)
            return
        self._proceed_mail(sender, event.params)

    async def _check_starttls(self) -> None:
        """RFC 3207: 220, then the handshake; the machine refused pipelined bytes."""
        ctx = self.host.tls_context(self.index)
        if ctx is None or self.transport is None:
            self.srv.reject(454, "4.7.0", "TLS not available")
            return
        await self._proceed_starttls(ctx)

    async def _proceed_starttls(self, ctx: ssl.SSLContext) -> None:
        self.srv.accept()
        self._flush()
        if self.srv.closed or self.transport is None or self.transport.is_closing():
            return  # bytes were pipelined after STARTTLS: 421 instead of 220
        try:
            if not await pony_tls.client_speaks_tls(self.transport,
                                                    limits.TLS_HANDSHAKE_TIMEOUT):
                # commands pipelined after STARTTLS that came after our 220
                self.srv.cleartext_after_starttls()
                return
            self.tls_early = bytearray()
            new = await pony_tls.start_tls(self.transport, self, ctx)
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            self.tls_early = None
            log.event("smtp", "tls-failed", session=self.id, error=str(exc)[:200])
            if self.transport is not None:
                self.transport.abort()
            return
        early, self.tls_early = self.tls_early, None
        if new is None:
            return
        self.transport = new
        self.srv.tls_started()
        if early:
            self.srv.receive(bytes(early))  # _await's _process reads it as commands
        if self.tls_early_eof:
            self.srv.receive(b"")
        self.tls_info = tls_summary(new.get_extra_info("ssl_object"))
        if self.tls_info is not None:
            log.event("smtp", "tls", session=self.id, ciphers=self.tls_info[0])
            self.host.count("smtp.tls")
            if self.filtered:
                self._report("link-tls", [self.tls_info[0]])

    def _session_info(self) -> dict[str, Any]:
        return {"ip": self.ip, "local_socket": self.ip == "local", "helo": self.helo,
                "tag": self.listener.tag or "", "tls": self.srv.tls, "rdns": self.rdns,
                "auth": self.srv.auth_user or ""}

    async def _proceed_rcpt(self, event: ev.RcptTo) -> None:
        rcpt = str(event.rcpt)
        if not event.rcpt.domain:  # <postmaster>
            rcpt = f"{event.rcpt.local}@{self.hostname}"
        if rcpt in self.rcpt_accepted:
            self.rcpts.append((rcpt, event.params))
            self.srv.accept()
            return
        if self.deliveries.exhausted():
            # the transaction already cost lka its share: no more expansions
            log.event("smtp", "failed-command", session=self.id,
                      command=log.Quoted(f"RCPT TO:<{rcpt}>"),
                      result=log.Quoted("452 4.5.3 Too many recipients"),
                      deliveries=len(self.deliveries))
            self.srv.reject(452, "4.5.3", "Too many recipients")
            return
        try:
            res = await self.host.peer("lka").ask(
                m.RcptCheck(session=self._session_info(), sender=self.sender or "", rcpt=rcpt))
        except TempFail as exc:
            log.warning("smtp", "lka-failed", session=self.id, error=exc.text)
            self.srv.reject(451, "4.3.0", "Temporary failure, try again later")
            return
        if not isinstance(res, m.RcptResult) or not res.accepted:
            reply = res.reply if isinstance(res, m.RcptResult) else None
            if reply is None or reply.code < 400:
                reply = TEMPORARY
            log.event("smtp", "failed-command", session=self.id,
                      command=log.Quoted(f"RCPT TO:<{rcpt}>"), result=log.Quoted(str(reply)))
            self.srv.reply(reply)
            return
        if not self.deliveries.add(len(self.rcpts), res.deliveries):
            log.event("smtp", "failed-command", session=self.id,
                      command=log.Quoted(f"RCPT TO:<{rcpt}>"),
                      result=log.Quoted("452 4.5.3 Too many recipients"),
                      deliveries=len(self.deliveries))
            self.srv.reject(452, "4.5.3", "Too many recipients")
            return
        self.rcpts.append((rcpt, event.params))
        self.rcpt_accepted.add(rcpt)
        self.srv.accept()
        if self.precreate is None and self.pooled is None:
            if not self.txid:
                # no filter knows this transaction by an id yet: a spool file
                # asked for ahead, by any session, will do
                self.pooled = self.host.spool_files.take()
            if self.pooled is not None:
                self.host.count("smtp.spool.ready")
            else:
                # the spool file is asked for now, so that DATA does not wait on queue
                self.host.count("smtp.spool.asked")
                self.precreate = asyncio.get_running_loop().create_task(
                    self.host.peer("queue").call(m.MessageCreate(msgid=self.txid)))

    async def _proceed_data(self) -> None:
        pending, self.precreate = self.precreate, None
        pooled, self.pooled = self.pooled, None
        try:
            if pooled is not None:
                reply, fds = m.MessageCreated(msgid=pooled[0]), [pooled[1]]
            elif pending is not None:
                reply, fds = await pending
            else:
                reply, fds = await self.host.peer("queue").call(
                    m.MessageCreate(msgid=self.txid))
        except TempFail as exc:
            self.srv.reply(m.reply_of(exc, TEMPORARY))
            return
        if not isinstance(reply, m.MessageCreated) or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            self.srv.reject(451, "4.3.0", "Temporary failure in queue")
            return
        self.msgid, self.fd = reply.msgid, fds[0]
        single = self.rcpts[0][0] if len(self.rcpts) == 1 else None
        hdr = received_header(
            helo=None if self.listener.mask_src else (self.helo or None),
            rdns=None if self.listener.mask_src else (self.rdns or None),
            ip=None if self.ip == "local" or self.listener.mask_src else self.ip,
            by=self.hostname, with_proto=self.srv.with_protocol, queue_id=self.msgid,
            rcpt=single, tls=self.tls_info[0] if self.tls_info else None,
            auth=(self.srv.auth_user or "") if self.listener.received_auth else None,
        )
        self.size = 0
        if self.junk or self.tx_junk:
            hdr = b"X-Spam: Yes\n" + hdr
        if self.filtered:
            self.filter_data = await self.filter.data_begin(hdr)
        if not self.filter_data:
            self._write(hdr, count=False)
        self.hygiene = HeaderHygiene(self.hostname, self._submission())
        if (self.listener.masquerade and self.listener.senders is not None
                and self.srv.auth_user and self.sender):
            # the sender passed the senders check (_senders): From: becomes it
            self.masq = FromRewriter(self.sender, limits.MASQUERADE_HEADER_MAX)
        self.srv.accept()

    def _write(self, data: bytes, count: bool = True) -> None:
        if self.fd < 0:
            return
        if count:
            self.size += len(data)
            if self.hygiene is not None and not self.hygiene.done:
                data = self.hygiene.feed(data)
            if self.masq is not None and not self.masq.done:
                data = self.masq.feed(data)
                if self.masq.overflowed:
                    log.warning("smtp", "masquerade-skipped", session=self.id,
                                msgid=self.msgid, reason="header section too long")
                if not data:
                    return
        self._spool(data)

    def _submission(self) -> bool:
        """Does this session submit new mail, so that Date: and Message-ID: are
        added when missing (RFC 6409 8.2, 8.3)? Exactly where OpenSMTPD adds
        them: the local socket (sendmail) and a listener on the submission
        port 587; never to mail relayed to us."""
        return self.ip == "local" or self.listener.port == 587

    def _headers_finish(self) -> None:
        """The end of the message: write what the header hygiene and the From:
        rewriter still hold."""
        hygiene, self.hygiene = self.hygiene, None
        masq, self.masq = self.masq, None
        rest = pony_spool.header_tail(hygiene, masq)
        if rest:
            self._spool(rest)
        if masq is not None and masq.rewritten:
            log.event("smtp", "masquerade", session=self.id, msgid=self.msgid,
                      sender=masq.sender, fields=masq.rewritten)

    def _spool(self, data: bytes) -> None:
        if self.fd < 0:
            return
        self.digest.update(data)
        self.written += len(data)
        try:
            pony_spool.write_all(self.fd, data)
        except OSError as exc:
            log.error("smtp", "spool-write-failed", session=self.id, error=exc.strerror)
            os.close(self.fd)
            self.fd = -1

    async def _proceed_eom(self, event: ev.DataEnd) -> None:
        self._headers_finish()
        msgid, fd = self.msgid, self.fd
        self.fd = -1
        write_failed = fd < 0 and msgid is not None
        if fd >= 0:
            os.close(fd)
        if event.error is not None:
            await self._rollback(msgid)
            self.srv.reply(event.error)
            log.event("smtp", "message-refused", session=self.id, msgid=msgid,
                      reason=event.error.text)
            self._reset_tx()
            return
        if event.received_count >= limits.MAX_HOPS:
            await self._rollback(msgid)
            self.srv.reject(554, "5.4.6", "Too many hops, loop detected")
            self._reset_tx()
            return
        if write_failed or msgid is None:
            await self._rollback(msgid)
            self.srv.reject(452, "4.3.1", "Insufficient system storage")
            self._reset_tx()
            return
        envelopes = self._envelopes()
        try:
            await self.host.peer("queue").ask(m.MessageCommit(msgid=msgid, envelopes=envelopes,
                                                                  session=self.id))
        except TempFail as exc:
            reply = m.reply_of(exc, TEMPORARY)
            log.warning("smtp", "commit-failed", session=self.id, msgid=msgid, error=exc.text)
            # the message is not queued: never a permanent refusal
            self.srv.reply(reply if reply.is_temporary else Reply(451, "4.3.0", reply.text))
            self._reset_tx()
            return
        log.event("smtp", "message", session=self.id, msgid=msgid, size=self.size,
                  nrcpt=len(self.rcpts), proto=self.srv.with_protocol,
                  bdat="yes" if self.srv.chunked else None)
        if self.filtered:
            self._report("tx-commit", [self.txid, str(self.size)])
            self._report("tx-reset", [self.txid])
        self.host.count("smtp.message")
        self.srv.accept(f"2.0.0 {msgid} Message accepted for delivery")
        self._reset_tx()

    def _envelopes(self) -> list[Envelope]:
        """One envelope per delivery lka decided (pony_spool.build_envelopes)."""
        tx = pony_spool.Transaction(
            tag=self.listener.tag or "", smtpname=self.hostname, helo=self.helo or "",
            sockaddr=self.ip, sender=self.sender or "", mail_params=self.mail_params,
            rcpts=self.rcpts, size=self.written, digest=self.digest.hexdigest())
        return pony_spool.build_envelopes(self.host.config, tx, self.deliveries, int(time.time()))

    async def _rollback(self, msgid: str | None) -> None:
        if msgid is None:
            return
        try:
            await self.host.peer("queue").ask(m.MessageRollback(msgid=msgid))
        except TempFail:
            pass

    def _close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _begin_tx(self, sender: str, params: Any, txid: str = "") -> None:
        """MAIL accepted: any earlier transaction ends, this one starts."""
        self._abort_tx()
        self.txid = txid
        self.sender = sender
        self.mail_params = params
        self.srv.accept()

    def _drop_precreate(self) -> None:
        """A transaction that ends before DATA gives its spool file back."""
        pooled, self.pooled = self.pooled, None
        if pooled is not None:
            os.close(pooled[1])
            self.host.spawn(self._rollback(pooled[0]))
        pending, self.precreate = self.precreate, None
        if pending is None:
            return

        def give_back(task: asyncio.Task[tuple[Any, list[int]]]) -> None:
            if task.cancelled() or task.exception() is not None:
                return
            reply, fds = task.result()
            for fd in fds:
                os.close(fd)
            if isinstance(reply, m.MessageCreated):
                self.host.spawn(self._rollback(reply.msgid))

        pending.add_done_callback(give_back)

    def _abort_tx(self) -> None:
        self._drop_precreate()
        if self.filtered and self.txid:
            self._report("tx-rollback" if self.msgid else "tx-reset", [self.txid])
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.msgid is not None:
            msgid = self.msgid
            self.msgid = None
            self.host.spawn(self._rollback(msgid))
        self._reset_tx()



#: what a failure without a reply of its own becomes
TEMPORARY = Reply(451, "4.3.0", "Temporary failure")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")


@functools.lru_cache(maxsize=1024)
def client_key(ip: str) -> str:
    """What the per-address session cap counts: an IPv4 address (also when
    mapped into IPv6), an IPv6 client's /64 network, or ``local``."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        net = int(addr) >> (128 - limits.IPV6_CLIENT_PREFIX) << (128 - limits.IPV6_CLIENT_PREFIX)
        return f"{ipaddress.IPv6Address(net)}/{limits.IPV6_CLIENT_PREFIX}"
    return str(addr)


@functools.lru_cache(maxsize=1024)
def is_loopback(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip == "local"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback

