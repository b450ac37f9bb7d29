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
import os
import socket
import time
from typing import Any

from mailrider import limits, log
from mailrider.config.model import Listener
from mailrider.errors import TempFail
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel
from mailrider.proc import common
from mailrider.smtp.received import received_header
from mailrider.smtp.reply import Reply
from mailrider.smtp.server import ServerConfig, SMTPServer
from mailrider.smtp.server import events as ev


def _hostname() -> str:
    # no DNS: the configured host name of the machine
    return socket.gethostname() or "localhost"


class Session(asyncio.Protocol):
    """One SMTP connection."""

    def __init__(self, pony: Pony, listener: Listener, local_user: str | None = None) -> None:
        self.pony = pony
        self.local_user = local_user
        self.listener = listener
        self.hostname = listener.hostname or pony.hostname
        cfg = pony.config
        self.srv = SMTPServer(ServerConfig(
            hostname=self.hostname, max_message_size=cfg.max_message_size,
            max_rcpt=cfg.max_rcpt, max_mails=cfg.max_mails, max_errors=limits.MAX_ERRORS,
            dsn=not listener.no_dsn, starttls=False, smtputf8=True, pipelining=True,
            eightbitmime=True,
        ))
        self.transport: asyncio.Transport | None = None
        self.id = os.urandom(8).hex()
        self.ip = ""
        self.port = 0
        self.helo = ""
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None
        self._reset_tx()

    def _reset_tx(self) -> None:
        self.sender: str | None = None
        self.mail_params: Any = None
        self.rcpts: list[tuple[str, Any, list[dict[str, Any]]]] = []
        self.msgid: str | None = None
        self.fd = -1
        self.size = 0

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
        self.pony.sessions.add(self)
        self.pony.count("smtp.session")
        log.event("smtp", "connected", session=self.id, address=self.ip,
                  port=self.port or None, user=self.local_user, host=self.hostname)
        transport.write(self.srv.greeting())
        self._arm_timer(limits.SESSION_TIMEOUT)

    def _arm_timer(self, delay: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(delay, self._timeout)

    def _timeout(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            log.event("smtp", "timeout", session=self.id)
            self.transport.write(b"421 4.4.2 Timeout, closing connection\r\n")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.srv.receive(data)
        self._arm_timer(limits.SESSION_TIMEOUT)
        if not self.busy:
            self._process()

    def eof_received(self) -> bool | None:
        self.srv.receive(b"")
        if not self.busy:
            self._process()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self in self.pony.sessions:
            self.pony.sessions.discard(self)
            self.pony.count("smtp.session.closed")
        self._abort_tx()
        log.event("smtp", "disconnected", session=self.id)

    # -- event processing -------------------------------------------------------------

    def _flush(self) -> None:
        out = self.srv.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)
        if self.srv.closed and self.transport is not None:
            self.transport.close()

    def _process(self) -> None:
        """Handle events synchronously until one needs an IPC round trip."""
        while True:
            event = self.srv.next_event()
            if event is None:
                break
            if isinstance(event, ev.DataChunk):
                self._write(event.data)
                continue
            coro = self._handle(event)
            if coro is None:
                self._flush()
                continue
            self.busy = True
            if self.transport is not None:
                self.transport.pause_reading()
            task = asyncio.get_running_loop().create_task(self._await(coro))
            self.pony.tasks.add(task)
            task.add_done_callback(self.pony.tasks.discard)
            return
        self._flush()

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

    def _handle(self, event: Any) -> Any:
        """Return a coroutine for events that need IPC, else act and return None."""
        if isinstance(event, ev.Hello):
            self.helo = event.name
            self.srv.accept()
        elif isinstance(event, ev.MailFrom):
            self._abort_tx()
            self.sender = str(event.sender) if event.sender is not None else ""
            self.mail_params = event.params
            self.srv.accept()
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
        elif isinstance(event, ev.StartTLS):
            self.srv.reject(454, "4.7.0", "TLS not available")
        else:
            self.srv.reject(502, "5.5.1", "Command not implemented")
        return None

    def _session_info(self) -> dict[str, Any]:
        return {"ip": self.ip, "local_socket": self.ip == "local", "helo": self.helo,
                "tag": self.listener.tag or ""}

    async def _rcpt(self, event: Any) -> None:
        rcpt = str(event.rcpt)
        if not event.rcpt.domain:  # <postmaster>
            rcpt = f"{event.rcpt.local}@{self.hostname}"
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
        self.rcpts.append((rcpt, event.params, res.deliveries))
        self.srv.accept()

    async def _data_start(self) -> None:
        try:
            reply, fds = await self.pony.peers["queue"].call(m.MessageCreate())
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
            helo=self.helo or None, rdns=None, ip=None if self.ip == "local" else self.ip,
            by=self.hostname, with_proto=self.srv.with_protocol, queue_id=self.msgid,
            rcpt=single, tls=None,
        )
        self.size = 0
        self._write(hdr, count=False)
        self.srv.accept()

    def _write(self, data: bytes, count: bool = True) -> None:
        if self.fd < 0:
            return
        if count:
            self.size += len(data)
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
                  size=event.size, nrcpt=len(self.rcpts), proto=self.srv.with_protocol)
        self.pony.count("smtp.message")
        self.srv.accept(f"2.0.0 {msgid} Message accepted for delivery")
        self._reset_tx()

    def _envelopes(self) -> list[dict[str, Any]]:
        now = str(int(time.time()))
        out: list[dict[str, Any]] = []
        params = self.mail_params
        for rcpt, rparams, deliveries in self.rcpts:
            for d in deliveries:
                action = self.pony.config.actions.get(str(d.get("dispatcher")))
                ttl = (action.ttl if action is not None and action.ttl
                       else self.pony.config.queue_ttl)
                env = dict(d)
                env.update({
                    "type": "mda", "tag": self.listener.tag or "", "smtpname": self.hostname,
                    "helo": self.helo, "hostname": "<unknown>", "sockaddr": self.ip,
                    "sender": self.sender or "", "rcpt": rcpt, "ctime": now, "retry": "0",
                    "ttl": str(ttl),
                    "dsn-notify": ",".join(sorted(getattr(rparams, "notify", None) or ())),
                    "dsn-orcpt": getattr(rparams, "orcpt", None) or "",
                    "dsn-ret": getattr(params, "ret", None) or "",
                    "dsn-envid": getattr(params, "envid", None) or "",
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

    def _abort_tx(self) -> None:
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


def _split_reply(reply: str) -> tuple[int, str, str]:
    parts = reply.split(" ", 2)
    try:
        code = int(parts[0])
    except (ValueError, IndexError):
        return 451, "4.3.0", reply or "Temporary failure"
    if len(parts) >= 2 and parts[1][:1] in "245" and parts[1].count(".") == 2:
        return code, parts[1], parts[2] if len(parts) > 2 else ""
    return code, f"{str(code)[0]}.0.0", " ".join(parts[1:])


class Pony(common.Process):
    role = "pony"

    async def setup(self) -> None:
        self.hostname = _hostname()
        self.sessions: set[Session] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.paused_smtp = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        spec = os.environ.get("MAILRIDER_LISTENERS", "")
        for item in filter(None, spec.split(",")):
            idx, fd = (int(x) for x in item.split(":"))
            lst = self.config.listeners[idx]
            sock = socket.socket(fileno=fd)
            server = await loop.create_server(functools.partial(Session, self, lst), sock=sock)
            self.servers.append(server)
            log.event("smtp", "listening", address=sock.getsockname()[0],
                      port=sock.getsockname()[1])
        await self.stopping.wait()
        for server in self.servers:
            server.close()

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out["smtp.session.current"] = len(self.sessions)
        return out

    def local_listener(self) -> Listener:
        """The ``listen on socket`` options, or the defaults when there is none."""
        for lst in self.config.listeners:
            if lst.address == "socket":
                return lst
        return Listener(address="socket")

    async def local_session(self, msg: m.LocalSession, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        loop = asyncio.get_running_loop()
        factory = functools.partial(Session, self, self.local_listener(), local_user=msg.user)
        await loop.connect_accepted_socket(factory, sock)

    async def deliver(self, msg: m.Deliver, fds: list[int]) -> m.DeliveryResult:
        evpid = str(msg.envelope.get("evpid", ""))
        try:
            reply = await self.peers["parent"].ask(m.ForkDelivery(envelope=msg.envelope), fds)
        except TempFail as exc:
            return m.DeliveryResult(evpid=evpid, status="tempfail", text=exc.reply())
        if isinstance(reply, m.DeliveryResult):
            return reply
        return m.DeliveryResult(evpid=evpid, status="tempfail", text="451 4.3.0 bad reply")

    async def handle(self, chan: Channel, msg: Any, fds: list[int]) -> Any:
        if isinstance(msg, m.Deliver):
            try:
                return await self.deliver(msg, fds)
            finally:
                for fd in fds:
                    os.close(fd)
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
