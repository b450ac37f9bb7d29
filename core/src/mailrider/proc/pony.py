"""pony: every SMTP session, and the hand-off of local deliveries.

The SMTP protocol itself is the sans-I/O machine of :mod:`mailrider.smtp.server`;
this module owns sockets, timers and IPC. Message bytes go from the socket
straight into the spool file whose descriptor queue handed over at DATA;
they never travel over IPC.

Invariant: ``250`` after DATA is sent only once queue confirmed the commit
(message and envelopes synced to disk).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from mailrider import limits, log
from mailrider.config.model import Listener
from mailrider.errors import ConfigError, TempFail
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel
from mailrider.proc import common, pony_tls
from mailrider.proc.pony_deliveries import Deliveries
from mailrider.proc.pony_tls import ListenerTLS, tls_summary
from mailrider.smtp.hygiene import HeaderHygiene
from mailrider.smtp.masquerade import FromRewriter
from mailrider.smtp.received import received_header
from mailrider.smtp.reply import Reply, split_status
from mailrider.smtp.server import ServerConfig, SMTPServer
from mailrider.smtp.server import events as ev


def _hostname() -> str:
    # no DNS: the configured host name of the machine
    return socket.gethostname() or "localhost"


class Session(asyncio.Protocol):
    """One SMTP connection."""

    def __init__(self, pony: Pony, listener: Listener, local_user: str | None = None,
                 index: int = -1) -> None:
        self.pony = pony
        self.local_user = local_user
        self.listener = listener
        self.index = index
        #: does this session go through filters (docs/filter-protocol.md)?
        self.filtered = bool(listener.filters) and index >= 0
        self.junk = False
        self.hostname = listener.hostname or pony.hostname
        cfg = pony.config
        self.srv = SMTPServer(ServerConfig(
            hostname=self.hostname, max_message_size=cfg.max_message_size,
            max_rcpt=cfg.max_rcpt, max_mails=cfg.max_mails, max_errors=limits.MAX_ERRORS,
            dsn=not listener.no_dsn, smtputf8=True, pipelining=True, eightbitmime=True,
            starttls=(listener.tls or listener.tls_require) and not listener.smtps
            and index in pony.tls.contexts,
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
        #: message bytes sent to the data-line filters and not yet answered by
        #: lka (across transactions: answers may come after the end of one);
        #: reading is paused above limits.FILTER_DATA_WINDOW
        self.f_inflight = 0
        self.f_paused = False
        self._reset_tx()

    def _reset_tx(self) -> None:
        self.precreate: asyncio.Task[tuple[Any, list[int]]] | None = None
        self.txid = ""
        self.tx_junk = False
        self.filter_data = False
        self.fline = b""
        self.fdone: asyncio.Future[None] | None = None
        self.sender: str | None = None
        self.mail_params: Any = None
        #: accepted recipients (address, RCPT parameters); their deliveries
        #: are in self.deliveries, bounded (smtp limit max-deliveries)
        self.rcpts: list[tuple[str, Any]] = []
        self.deliveries = Deliveries(self.pony.config.max_deliveries)
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
        if self.pony.paused_smtp:
            transport.write(b"421 4.3.2 Service paused, try again later\r\n")
            transport.close()
            return
        self.client = client_key(self.ip)
        refused = self.pony.session_refused(self.ip, self.client, self.local_user is not None)
        if refused is not None:
            log.event("smtp", "refused", address=self.ip, reason=refused)
            transport.write(b"421 4.7.0 Too many connections from your address\r\n"
                            if refused == "too-many-sessions" else
                            b"421 4.7.0 Too many connections, try again later\r\n")
            transport.close()
            return
        self.pony.sessions.add(self)
        self.pony.per_ip[self.client] = self.pony.per_ip.get(self.client, 0) + 1
        self.pony.by_id[self.id] = self
        self.pony.count("smtp.session")
        # smtpctl's show stats keys: smtp.session.inet4 / .inet6 / .local
        self.pony.count("smtp.session." + ("local" if self.ip == "local" else
                                           "inet6" if ":" in self.ip else "inet4"))
        log.event("smtp", "connected", session=self.id, address=self.ip,
                  port=self.port or None, user=self.local_user, host=self.hostname)
        self._arm_timer(self.pony.session_timeout)
        if self.listener.smtps:
            self.tls_info = tls_summary(transport.get_extra_info("ssl_object"))
            if self.tls_info is not None:
                log.event("smtp", "tls", session=self.id, ciphers=self.tls_info[1])
                self.pony.count("smtp.tls")
        delay = 0.0
        if self.local_user is None and (self.pony.greeting_delay_all
                                        or not _is_loopback(self.ip)):
            delay = self.pony.greeting_delay
        if delay > 0:
            self.greet_timer = asyncio.get_running_loop().call_later(delay, self._greet)
        else:
            self._greet()

    def _greet(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.pony.rdns_lookup and self.ip != "local" and not self.looked_up:
            self._start(self._lookup_peer())
            return
        self.greeted = True
        if self.filtered:
            self._start(self._filter_connect())
            return
        self.transport.write(self.srv.greeting())

    async def _lookup_peer(self) -> None:
        """The client's reverse DNS name (lka resolves), before the banner."""
        self.looked_up = True
        try:
            info = await self.pony.peers["lka"].ask(m.PeerLookup(ip=self.ip))
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
        self.pony.count("smtp.pregreet")
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
        log.event("smtp", "timeout", session=self.id)
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
        if self in self.pony.sessions:
            self.pony.sessions.discard(self)
            left = self.pony.per_ip.get(self.client, 1) - 1
            if left > 0:
                self.pony.per_ip[self.client] = left
            else:
                self.pony.per_ip.pop(self.client, None)
            self.pony.count("smtp.session.closed")
        self._abort_tx()
        self.pony.by_id.pop(self.id, None)
        if self.filtered:
            self.pony.peers["lka"].notify(m.FilterEnd(sid=self.id))
        log.event("smtp", "disconnected", session=self.id)

    # -- event processing -------------------------------------------------------------

    def _flush(self) -> None:
        out = self.srv.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)
            self._arm_timer(self.pony.session_timeout)
        if self.srv.closed and self.transport is not None:
            self.transport.close()

    def _process(self) -> None:
        """Handle events synchronously until one needs an IPC round trip."""
        while True:
            event = self.srv.next_event()
            if event is None:
                break
            if isinstance(event, ev.DataChunk):
                self._arm_timer(self.pony.session_timeout)
                if self.filter_data:
                    self._filter_chunk(event.data)
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

    def _start(self, coro: Any) -> None:
        """Run one step that needs IPC. Reading goes on into the machine, which
        parses nothing until the answer (so bytes pipelined after STARTTLS or a
        DATA that is refused are seen as such), up to PIPELINE_READ_AHEAD bytes."""
        self.busy = True
        if self.srv.tls and self.transport is not None:
            # asyncio's TLS transport closes at EOF whatever we answer: no read-ahead
            self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._await(coro))
        self.pony.tasks.add(task)
        task.add_done_callback(self.pony.tasks.discard)

    async def _await(self, coro: Any) -> None:
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

    def _handle(self, event: Any) -> Any:
        """Return a coroutine for events that need IPC, else act and return None."""
        if isinstance(event, ev.ProtocolError):
            # the machine has queued its 421 and closed the session: _flush sends it
            log.event("smtp", "protocol-error", session=self.id, reason=event.reason)
            self.pony.count("smtp.session.protocol-error")
            return None
        if isinstance(event, ev.StartTLS):
            return self._starttls()
        if isinstance(event, ev.Auth):
            return self._auth(event)
        if (isinstance(event, ev.MailFrom) and self.listener.senders is not None
                and self.srv.auth_user):
            return self._senders(event)
        if self.filtered:
            coro = self._filtered(event)
            if coro is not None:
                return coro
        if isinstance(event, ev.Hello):
            self.helo = event.name
            self.srv.accept()
        elif isinstance(event, ev.MailFrom):
            self._begin_tx(str(event.sender) if event.sender is not None else "", event.params)
        elif isinstance(event, ev.RcptTo):
            return self._rcpt(event)
        elif isinstance(event, ev.DataStart):
            return self._data_start()
        elif isinstance(event, ev.DataEnd):
            return self._data_end(event)
        elif isinstance(event, ev.Reset):
            self._abort_tx()
        elif isinstance(event, ev.Quit | ev.ConnectionClosed):
            self._abort_tx()
        elif self.srv.awaiting_answer:
            self.srv.reject(502, "5.5.1", "Command not implemented")
        return None

    # -- filters (only for listeners with a ``filter`` option) --------------------------

    def _report(self, event: str, params: list[str]) -> None:
        self.pony.peers["lka"].notify(m.FilterReport(sid=self.id, event=event, params=params))

    async def _filter(self, phase: str, params: list[str]) -> m.FilterDecision:
        try:
            res = await self.pony.peers["lka"].ask(
                m.FilterPhase(sid=self.id, phase=phase, params=params))
        except TempFail as exc:
            log.warning("smtp", "filter-failed", session=self.id, phase=phase, error=exc.text)
            return m.FilterDecision("disconnect", "421 4.3.0 Temporary failure in filter")
        if not isinstance(res, m.FilterDecision):
            return m.FilterDecision("disconnect", "421 4.3.0 Temporary failure in filter")
        if res.decision != "proceed":
            log.event("smtp", "filter-response", session=self.id, phase=phase,
                      response=res.decision, param=res.param)
        return res

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
        try:
            d = await self.pony.peers["lka"].ask(m.FilterBegin(
                sid=self.id, listener=self.index, rdns=self.rdns or "<unknown>",
                fcrdns=self.fcrdns, src=src,
                link_src=link_src, link_dest=dest))
        except TempFail:
            d = m.FilterDecision("disconnect", "421 4.3.0 Temporary failure in filter")
        if isinstance(d, m.FilterDecision) and d.decision in ("reject", "disconnect"):
            self.transport.write(filter_reply(d.param).to_bytes())
            self.transport.close()
            return
        if isinstance(d, m.FilterDecision) and d.decision == "junk":
            self.junk = True
        self.transport.write(self.srv.greeting())
        self._report("link-greeting", [self.hostname])

    def _filtered(self, event: Any) -> Any:
        if isinstance(event, ev.Hello):
            return self._f_hello(event)
        if isinstance(event, ev.MailFrom):
            return self._f_mail(event)
        if isinstance(event, ev.RcptTo):
            return self._f_rcpt(event)
        if isinstance(event, ev.DataStart):
            return self._f_data(event)
        return None

    async def _f_hello(self, event: Any) -> None:
        d = await self._filter("ehlo" if event.verb.upper() != "HELO" else "helo", [event.name])
        if self._apply(d):
            return
        self.helo = d.param if d.decision == "rewrite" and d.param else event.name
        self.srv.accept()
        self._report("link-identify", [event.verb.upper(), self.helo])

    async def _f_mail(self, event: Any) -> None:
        from mailrider.smtp.address import AddressError, parse_path

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
        from mailrider.queue.envelope import new_msgid

        self._begin_tx(addr, event.params, txid=new_msgid())
        self._report("tx-begin", [self.txid])
        self._report("tx-mail", [self.txid, "ok", addr])

    async def _f_rcpt(self, event: Any) -> None:
        from mailrider.smtp.address import AddressError, parse_path

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
        await self._rcpt(event)
        ok = len(self.rcpts) > before
        self._report("tx-rcpt", [self.txid, "ok" if ok else "permfail", str(event.rcpt)])

    async def _f_data(self, event: Any) -> None:
        d = await self._filter("data", [])
        if self._apply(d):
            self._report("tx-data", [self.txid, "permfail"])
            return
        await self._data_start()
        self._report("tx-data", [self.txid, "ok" if self.msgid else "tempfail"])

    def _filter_chunk(self, data: bytes) -> None:
        """Message bytes -> dot-stuffed lines for the data-line filters.

        Backpressure: each batch of lines is a request that lka answers once
        the filters have read it; while more than FILTER_DATA_WINDOW bytes
        are unanswered, the client's socket is not read."""
        buf = self.fline + data
        parts = buf.split(b"\n")
        self.fline = parts.pop()
        if len(self.fline) > limits.FILTER_DATA_WINDOW:
            # no newline for that long: pass it on in pieces (such a line
            # makes the SMTP machine refuse the message at its end anyway)
            parts.append(self.fline)
            self.fline = b""
        if not parts:
            return
        lines = [("." + ln.decode("utf-8", "surrogateescape")) if ln.startswith(b".")
                 else ln.decode("utf-8", "surrogateescape") for ln in parts]
        size = len(buf) - len(self.fline)
        self.f_inflight += size
        task = asyncio.get_running_loop().create_task(self._filter_send(lines, size))
        self.pony.tasks.add(task)
        task.add_done_callback(self.pony.tasks.discard)
        if self.f_inflight > limits.FILTER_DATA_WINDOW and not self.f_paused:
            self.f_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    async def _filter_send(self, lines: list[str], size: int) -> None:
        try:
            await self.pony.peers["lka"].ask(m.FilterData(sid=self.id, lines=lines))
        except TempFail as exc:
            self.filter_output([], exc.text or "filter failed")
        finally:
            self.f_inflight -= size
            if self.f_paused and self.f_inflight <= limits.FILTER_DATA_WINDOW // 2:
                self.f_paused = False
                if (not self.busy and self.transport is not None
                        and not self.transport.is_closing()):
                    self.transport.resume_reading()

    def filter_output(self, lines: list[str], error: str) -> None:
        """Lines back from the filters: un-stuff and write to the spool file."""
        if self.fdone is None or self.fdone.done():
            return
        if error:
            self.fdone.set_exception(TempFail(error, 421, "4.3.0"))
            return
        out = bytearray()
        for line in lines:
            if line == ".":
                self._write(bytes(out))
                self.fdone.set_result(None)
                return
            raw = line.encode("utf-8", "surrogateescape")
            out += (raw[1:] if raw.startswith(b".") else raw) + b"\n"
        self._write(bytes(out))

    async def _filter_data_end(self) -> bool:
        if self.fline:
            self._filter_chunk(b"\n")
        self.pony.peers["lka"].notify(m.FilterData(sid=self.id, lines=["."]))
        assert self.fdone is not None
        try:
            await asyncio.wait_for(self.fdone, limits.DATA_TIMEOUT)
        except (TempFail, TimeoutError) as exc:
            text = exc.text if isinstance(exc, TempFail) else "filter timed out"
            log.warning("smtp", "filter-data-failed", session=self.id, error=text)
            await self._rollback(self.msgid)
            self._close_fd()
            self.srv.close(Reply(421, "4.3.0", "Temporary failure in filter"))
            self._reset_tx()
            return False
        return True

    async def _auth(self, event: Any) -> None:
        """AUTH PLAIN/LOGIN: lka checks, after the wait that this client's
        earlier failures cost (Pony.auth_wait): the delay comes before the
        password is hashed, so guessing cannot make the server work faster."""
        user = event.username
        wait = self.pony.auth_wait(self.client)
        if wait is None:
            await asyncio.sleep(limits.AUTH_FAIL_DELAY_MAX)
            log.event("smtp", "authentication", session=self.id, user=user, result="tempfail",
                      reason="too-many-attempts")
            self.pony.count("smtp.auth.throttled")
            self.srv.reject(454, "4.7.0", "Too many authentication attempts, try again later")
            if self.filtered:
                self._report("link-auth", ["error", user])
            return
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            res = await self.pony.peers["lka"].ask(m.AuthCheck(
                table=self.listener.auth_table, username=user, password=event.password))
        except TempFail:
            res = m.AuthResult("error")
        result = res.result if isinstance(res, m.AuthResult) else "error"
        if result == "ok":
            self.srv.accept()
            log.event("smtp", "authentication", session=self.id, user=user, result="ok",
                      mechanism=event.mechanism)
            self.pony.count("smtp.auth.ok")
        elif result == "fail":
            self.pony.auth_failed(self.client)
            log.event("smtp", "authentication", session=self.id, user=user,
                      result="permfail", mechanism=event.mechanism, delay=f"{wait:.1f}s")
            self.pony.count("smtp.auth.fail")
            self.srv.reject(535, "5.7.8", "Authentication credentials invalid")
        else:
            log.event("smtp", "authentication", session=self.id, user=user, result="tempfail")
            code, status, text = _split_reply(res.reply if isinstance(res, m.AuthResult)
                                              and res.reply else
                                              "454 4.7.0 Temporary authentication failure")
            self.srv.reject(code, status, text)
        if self.filtered:
            self._report("link-auth", [{"ok": "pass", "fail": "fail"}.get(result, "error"),
                                       user])

    async def _senders(self, event: Any) -> None:
        """``senders <t>``: an authenticated user sends only as addresses the table maps."""
        sender = str(event.sender) if event.sender is not None else ""
        try:
            res = await self.pony.peers["lka"].ask(m.SendersCheck(
                table=str(self.listener.senders), username=self.srv.auth_user or "",
                sender=sender))
        except TempFail:
            self.srv.reject(451, "4.3.0", "Temporary failure, try again later")
            return
        if not (isinstance(res, m.Ok) and res.text == "yes"):
            log.event("smtp", "failed-command", session=self.id, command="MAIL",
                      sender=sender, user=self.srv.auth_user, result="sender not owned")
            self.srv.reject(550, "5.7.1", "Sender address not owned by the authenticated user")
            return
        if self.filtered:
            await self._f_mail(event)
            return
        self._begin_tx(sender, event.params)

    async def _starttls(self) -> None:
        """RFC 3207: 220, then the handshake; the machine refused pipelined bytes."""
        ctx = self.pony.tls.contexts.get(self.index)
        if ctx is None or self.transport is None:
            self.srv.reject(454, "4.7.0", "TLS not available")
            return
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
            log.event("smtp", "tls", session=self.id, ciphers=self.tls_info[1])
            self.pony.count("smtp.tls")
            if self.filtered:
                self._report("link-tls", [self.tls_info[0]])

    def _session_info(self) -> dict[str, Any]:
        return {"ip": self.ip, "local_socket": self.ip == "local", "helo": self.helo,
                "tag": self.listener.tag or "", "tls": self.srv.tls, "rdns": self.rdns,
                "auth": self.srv.auth_user or ""}

    async def _rcpt(self, event: Any) -> None:
        rcpt = str(event.rcpt)
        if not event.rcpt.domain:  # <postmaster>
            rcpt = f"{event.rcpt.local}@{self.hostname}"
        if rcpt in self.rcpt_accepted:
            self.rcpts.append((rcpt, event.params))
            self.srv.accept()
            return
        if self.deliveries.exhausted():
            # the transaction already cost lka its share: no more expansions
            log.event("smtp", "failed-command", session=self.id, command="RCPT", rcpt=rcpt,
                      result="too many deliveries", deliveries=len(self.deliveries))
            self.srv.reject(452, "4.5.3", "Too many recipients")
            return
        try:
            res = await self.pony.peers["lka"].ask(
                m.RcptCheck(session=self._session_info(), sender=self.sender or "", rcpt=rcpt))
        except TempFail as exc:
            log.warning("smtp", "lka-failed", session=self.id, error=exc.text)
            self.srv.reject(451, "4.3.0", "Temporary failure, try again later")
            return
        if not isinstance(res, m.RcptResult) or not res.accepted:
            reply = getattr(res, "reply", "") or "451 4.3.0 Temporary failure"
            code, status, text = _split_reply(reply)
            log.event("smtp", "failed-command", session=self.id, command="RCPT",
                      rcpt=rcpt, result=reply)
            self.srv.reject(code, status, text)
            return
        if not self.deliveries.add(len(self.rcpts), res.deliveries):
            log.event("smtp", "failed-command", session=self.id, command="RCPT", rcpt=rcpt,
                      result="too many deliveries", deliveries=len(self.deliveries))
            self.srv.reject(452, "4.5.3", "Too many recipients")
            return
        self.rcpts.append((rcpt, event.params))
        self.rcpt_accepted.add(rcpt)
        self.srv.accept()
        if self.precreate is None:
            # the spool file is asked for now, so that DATA does not wait on queue
            self.precreate = asyncio.get_running_loop().create_task(
                self.pony.peers["queue"].call(m.MessageCreate(msgid=self.txid)))

    async def _data_start(self) -> None:
        pending, self.precreate = self.precreate, None
        try:
            if pending is not None:
                reply, fds = await pending
            else:
                reply, fds = await self.pony.peers["queue"].call(
                    m.MessageCreate(msgid=self.txid))
        except TempFail as exc:
            code, status, text = _split_reply(exc.reply())
            self.srv.reject(code, status, text)
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
            res = await self.pony.peers["lka"].ask(m.FilterDataBegin(sid=self.id))
            self.filter_data = isinstance(res, m.Ok) and res.text == "yes"
        if self.filter_data:
            self.fdone = asyncio.get_running_loop().create_future()
            self.pony.peers["lka"].notify(m.FilterData(
                sid=self.id, lines=hdr.rstrip(b"\n").decode("utf-8", "surrogateescape")
                .split("\n")))
        else:
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
        tail = hygiene.finish() if hygiene is not None else b""
        masq, self.masq = self.masq, None
        if masq is None:
            if tail:
                self._spool(tail)
            return
        rest = masq.feed(tail) + masq.finish()
        if rest:
            self._spool(rest)
        if masq.rewritten:
            log.event("smtp", "masquerade", session=self.id, msgid=self.msgid,
                      sender=masq.sender, fields=masq.rewritten)

    def _spool(self, data: bytes) -> None:
        if self.fd < 0:
            return
        self.digest.update(data)
        self.written += len(data)
        try:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as exc:
            log.error("smtp", "spool-write-failed", session=self.id, error=exc.strerror)
            self._write_error = exc
            os.close(self.fd)
            self.fd = -1

    async def _data_end(self, event: Any) -> None:
        if self.filter_data and event.error is None:
            if not await self._filter_data_end():
                return
        if self.filtered and event.error is None:
            d = await self._filter("commit", [])
            if self._apply(d):
                await self._rollback(self.msgid)
                self._close_fd()
                self._reset_tx()
                return
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
            await self.pony.peers["queue"].ask(m.MessageCommit(msgid=msgid, envelopes=envelopes))
        except TempFail as exc:
            code, status, text = _split_reply(exc.reply())
            log.warning("smtp", "commit-failed", session=self.id, msgid=msgid, error=exc.text)
            self.srv.reject(code if 400 <= code < 500 else 451, status if status.startswith("4")
                            else "4.3.0", text)
            self._reset_tx()
            return
        log.event("smtp", "message", session=self.id, msgid=msgid, sender=self.sender or "<>",
                  size=self.size, nrcpt=len(self.rcpts), proto=self.srv.with_protocol)
        if self.filtered:
            self._report("tx-commit", [self.txid, str(self.size)])
            self._report("tx-reset", [self.txid])
        self.pony.count("smtp.message")
        self.srv.accept(f"2.0.0 {msgid} Message accepted for delivery")
        self._reset_tx()

    def _envelopes(self) -> list[dict[str, Any]]:
        now = str(int(time.time()))
        out: list[dict[str, Any]] = []
        params = self.mail_params
        size, digest = str(self.written), self.digest.hexdigest()
        for index, d in self.deliveries:
            rcpt, rparams = self.rcpts[index]
            action = self.pony.config.actions.get(str(d.get("dispatcher")))
            ttl = (action.ttl if action is not None and action.ttl
                   else self.pony.config.queue_ttl)
            env = d
            env.update({
                "type": "mta" if d.get("mda-method") == "relay" else "mda",
                "tag": self.listener.tag or "", "smtpname": self.hostname,
                "helo": self.helo, "hostname": "<unknown>", "sockaddr": self.ip,
                "sender": self.sender or "", "rcpt": rcpt, "ctime": now, "retry": "0",
                "ttl": str(ttl),
                "dsn-notify": ",".join(sorted(getattr(rparams, "notify", None) or ())),
                "dsn-orcpt": getattr(rparams, "orcpt", None) or "",
                "dsn-ret": getattr(params, "ret", None) or "",
                "dsn-envid": getattr(params, "envid", None) or "",
                "message-size": size,
                "message-sha256": digest,
            })
            out.append(env)
        return out

    async def _rollback(self, msgid: str | None) -> None:
        if msgid is None:
            return
        try:
            await self.pony.peers["queue"].ask(m.MessageRollback(msgid=msgid))
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
                t = asyncio.get_event_loop().create_task(self._rollback(reply.msgid))
                self.pony.tasks.add(t)
                t.add_done_callback(self.pony.tasks.discard)

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
            task = asyncio.get_event_loop().create_task(self._rollback(msgid))
            self.pony.tasks.add(task)
            task.add_done_callback(self.pony.tasks.discard)
        self._reset_tx()


def needs_rdns(config: Any) -> bool:
    """Reverse lookups: asked for with ``smtp rdns``, or needed by a rule or filter."""
    if config.rdns_lookup:
        return True
    conds = [c for mt in config.matches for c in mt.conditions]
    conds += [c for f in config.filters.values() for c in f.conditions]
    return any(c.kind in ("from-rdns", "rdns", "fcrdns") for c in conds)


def _split_reply(reply: str) -> tuple[int, str, str]:
    parts = reply.split(" ", 2)
    try:
        code = int(parts[0])
    except (ValueError, IndexError):
        return 451, "4.3.0", reply or "Temporary failure"
    if len(parts) >= 2 and parts[1][:1] in "245" and parts[1].count(".") == 2:
        return code, parts[1], parts[2] if len(parts) > 2 else ""
    return code, f"{str(code)[0]}.0.0", " ".join(parts[1:])


def filter_reply(param: str | None) -> Reply:
    """A filter's reject/disconnect text as the client will see it: unchanged,
    as OpenSMTPD sends it (``550 text`` gets no enhanced status added). Text
    that is not a 4xx/5xx reply (``NNN text``) becomes a 421 (RFC 5321 4.2)."""
    text = param or ""
    if not (len(text) >= 5 and text[0] in "45" and text[1:3].isdigit() and text[3] == " "):
        return Reply(421, "", "Internal server error")
    code, rest = int(text[:3]), text[4:]
    status, after = split_status(rest)
    if status and status[0] == text[0]:
        return Reply(code, status, after)
    return Reply(code, "", rest)


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


def _is_loopback(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip == "local"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


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
        from mailrider.crypto import libcrypto

        try:
            libcrypto.load()
        except libcrypto.Unavailable:
            pass

    async def setup(self) -> None:
        self.hostname = _hostname()
        self.sign_client: Any = None
        # certificates are read before the privilege drop; keys stay in klondike
        self.tls = ListenerTLS(self.config, self._sign)
        self.tls.build()
        self.sessions: set[Session] = set()
        self.by_id: dict[str, Session] = {}
        #: failed AUTH by client_key: (count in the window, last failure)
        self.auth_failures: dict[str, tuple[int, float]] = {}
        #: by client_key: when its next AUTH attempt may be checked (auth_wait)
        self.auth_next: dict[str, float] = {}
        self.rdns_lookup = needs_rdns(self.config)
        self.tasks: set[asyncio.Task[None]] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.paused_smtp = "smtp" in self.opts.paused  # mailriderd -P smtp
        from mailrider.proc.pony_mta import Mta

        self.mta = Mta(self)
        #: open SMTP sessions by client_key (smtp limit sessions-per-address)
        self.per_ip: dict[str, int] = {}
        self.session_timeout = _env_seconds(limits.SESSION_TIMEOUT_ENV, limits.SESSION_TIMEOUT)
        self.greeting_delay = _env_seconds(limits.GREETING_DELAY_ENV, limits.GREETING_DELAY)
        self.greeting_delay_all = limits.GREETING_DELAY_ENV in os.environ

    def _sign(self, cert_hash: str, op: str, data: bytes, padding: int) -> bytes:
        if self.sign_client is None:
            raise TempFail("no channel to klondike")
        result: bytes = self.sign_client.sign(cert_hash, op, data, padding)
        return result

    def connect(self, fds: dict[str, int]) -> None:
        from mailrider.crypto.signclient import SignClient

        sign_fd = fds.pop("klondike-sign", None)
        if sign_fd is not None:
            # a plain blocking socket: OpenSSL calls us synchronously mid-handshake
            self.sign_client = SignClient(socket.socket(fileno=sign_fd))
        super().connect(fds)

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
            server = await loop.create_server(factory, sock=sock)
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
        local = _is_loopback(ip)
        cap = cfg.max_sessions_per_local if local else cfg.max_sessions_per_address
        if cap and self.per_ip.get(client, 0) >= cap:
            return "too-many-sessions"
        return None

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
        start = max(now, self.auth_next.get(client, 0.0)) + delay
        if start - now > limits.AUTH_FAIL_DELAY_MAX:
            return None
        if len(self.auth_next) > 10000:  # bounded: slots already past are forgotten
            for key in [k for k, t in self.auth_next.items() if t <= now]:
                del self.auth_next[key]
        self.auth_next[client] = start
        return start - now

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
                return await self.mta.deliver(msg, fds[0] if fds else -1)
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
            return await self.control(msg)
        raise ValueError(f"pony: unexpected {m.type_name(msg)} from {chan.peer}")


PROCESS = Pony
