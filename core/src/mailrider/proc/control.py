"""control: the unix socket ``mailriderctl`` talks to.

Requests are one JSON line ``{"cmd": [words...]}``; the answer is one JSON
line ``{"ok": bool, "lines": [...], "data": {...}}``. The peer's uid is read
from the socket (SO_PEERCRED): root and the user the daemon was started by
may do everything; anyone else is refused, as smtpctl refuses non-root users.

An envelope or message id is checked here before any process sees it (and
again by the process that acts on it): hex of its fixed length, or "all"
where the command takes it; anything else is answered ``invalid id``.

With ``metrics listen on``, control also serves the metrics over HTTP on
the loopback sockets the parent bound and handed down
(:data:`mailrider.metrics.METRICS_ENV`), since it already gathers every process's counters
and can reach nothing else (docs/metrics.md §3). ``show stats``,
``monitor`` and the endpoint read the same :meth:`Control.collect`.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import struct
import time
from typing import Any

from mailrider import limits, log, metrics, profile
from mailrider.control_format import format_envelope, format_queue_line, invalid_id, socket_path
from mailrider.errors import TempFail, plain_reason
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel
from mailrider.proc import common
from mailrider.queue import envelope as envmod

REQUEST_MAX = 64 * 1024
MESSAGE_SHOW_MAX = 64 * 1024 * 1024
CHILDREN = ("lka", "queue", "scheduler", "pony", "klondike")
TRACE_SUBSYSTEMS = ("imsg", "io", "smtp", "filters", "mta", "bounce", "scheduler", "lookup",
                    "stat", "rules", "mproc", "expand", "all", "queue", "delivery", "lka")
#: smtpctl monitor's columns: (counter, shown absolute rather than as a delta)
MONITOR_COLUMNS = (
    ("smtp.session.current", True), ("smtp.session", False), ("smtp.session.closed", False),
    ("scheduler.envelope", True), ("queue.envelope.enqueued", False),
    ("queue.envelope.dequeued", False), ("scheduler.delivery.ok", False),
    ("scheduler.delivery.tempfail", False), ("scheduler.delivery.permfail", False),
    ("scheduler.delivery.loop", False), ("scheduler.delivery.expired", False),
    ("queue.envelope.removed", False), ("queue.bounce", False),
)
MONITOR_HEADER = [
    "--- client ---  -- envelope --   ---- relay/delivery --- ------- misc -------",
    "curr conn disc  curr  enq  deq   ok tmpfail prmfail loop expire remove bounce",
]
#: the width of each column and the blanks before it, so that numbers end under
#: their header's last letter (smtpctl's row format)
MONITOR_WIDTHS = ((0, 4), (1, 4), (1, 4), (2, 4), (1, 4), (1, 4), (1, 4), (4, 4), (4, 4),
                  (1, 4), (3, 4), (3, 4), (3, 4))


def monitor_row(values: list[int]) -> str:
    """One ``monitor`` row aligned under :data:`MONITOR_HEADER`."""
    return "".join(" " * gap + f"{v:>{width}}" for (gap, width), v in zip(MONITOR_WIDTHS, values,
                                                                           strict=True))


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class Control(common.Process):
    role = "control"
    landlock_fs = True
    landlock_net = True

    def chroot_dir(self) -> str | None:
        # the socket is bound and listening before: clients reach it by its path
        return common.empty_dir(self.opts.statedir)

    async def setup(self) -> None:
        self.path = socket_path(self.opts.statedir)
        self.owner = os.getuid()
        self.started = time.time()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)  # noqa: S103 - access is decided by the peer uid
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.metrics_socks = inherited_metrics_sockets(os.environ.get(metrics.METRICS_ENV, ""))
        self.metrics_clients = 0

    async def run(self) -> None:
        server = await asyncio.start_unix_server(self._client, sock=self.sock)
        scrapers = [await asyncio.start_server(self._scrape, sock=s)
                    for s in self.metrics_socks]
        try:
            await self.stopping.wait()
        finally:
            server.close()
            for s in scrapers:
                s.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass

    async def handle(self, chan: Channel, msg: Any, fds: list[int]) -> Any:
        raise ValueError(f"control: unexpected {m.type_name(msg)} from {chan.peer}")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock)
            line = await asyncio.wait_for(reader.readline(), 10)
            if len(line) > REQUEST_MAX:
                return
            req = json.loads(line)
            words = [str(w) for w in req.get("cmd", [])]
            if words == ["enqueue"]:
                # sendmail: any local user may submit; pony serves SMTP on this
                # socket. Stop reading it first: bytes the client sends once
                # pony greets must reach pony, not this process's buffer.
                writer.transport.pause_reading()  # type: ignore[attr-defined]
                await self._enqueue(sock, uid)
                return
            if uid not in (0, self.owner):
                reply = m.ControlReply(ok=False, lines=["need root privileges"])
            elif words == ["monitor"]:
                await self.monitor(writer)
                return
            else:
                log.event("control", "command", uid=uid, command=" ".join(words[:3]))
                reply = await self.dispatch(words)
            writer.write(json.dumps({"ok": reply.ok, "lines": reply.lines,
                                     "data": reply.data}).encode() + b"\n")
            await writer.drain()
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("control", "client-error", error=plain_reason(exc))
        finally:
            writer.close()

    async def _enqueue(self, sock: socket.socket, uid: int) -> None:
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        fd = os.dup(sock.fileno())
        try:
            await self.peers["pony"].ask(m.LocalSession(user=user, uid=uid), [fd])
        finally:
            os.close(fd)
        log.event("control", "enqueue", uid=uid, user=user)

    async def _ask(self, peer: str, command: str, *args: str) -> m.ControlReply:
        reply = await self.peers[peer].ask(m.Control(command=command, args=list(args)))
        if not isinstance(reply, m.ControlReply):
            return m.ControlReply(ok=False, lines=["command failed"])
        return reply

    async def dispatch(self, words: list[str]) -> m.ControlReply:
        try:
            return await self._dispatch(words)
        except TempFail as exc:
            return m.ControlReply(ok=False, lines=[f"command failed: {exc.text}"])

    async def _broadcast(self, command: str, *args: str) -> m.ControlReply:
        ok = True
        for peer in CHILDREN:
            ok = (await self._ask(peer, command, *args)).ok and ok
        return m.ControlReply(ok=ok, lines=["command succeeded" if ok else "command failed"])

    async def _dispatch(self, w: list[str]) -> m.ControlReply:
        bad = invalid_id(w)
        if bad is not None:
            log.warning("control", "invalid-id", command=" ".join(w[:2]))
            return m.ControlReply(ok=False, lines=["command failed: invalid id"])
        cmd = " ".join(w[:2])
        arg = w[2] if len(w) > 2 else ""
        if cmd == "show queue":
            return await self.show_queue(w[2] if len(w) > 2 else None)
        if cmd == "show envelope" and arg:
            rep = await self._ask("queue", "show-envelope", arg)
            return m.ControlReply(ok=rep.ok, lines=format_envelope(rep.lines) if rep.ok
                                  else rep.lines, data=rep.data)
        if cmd == "show message" and arg:
            return await self.show_message(arg)
        if cmd == "show stats":
            return await self.show_stats()
        if cmd == "show status":
            rs = await self._ask("scheduler", "runstate")
            smtp = await self._ask("pony", "status")

            def word(paused: object) -> str:
                return "paused" if paused else "running"

            return m.ControlReply(lines=[f"MDA {word(rs.data.get('paused_mda'))}",
                                         f"MTA {word(rs.data.get('paused_mta'))}",
                                         f"SMTP {word(smtp.data.get('paused_smtp'))}"])
        if w[:1] == ["schedule"] and len(w) == 2:
            return await self._ask("scheduler", "schedule", w[1])
        if w[:1] == ["remove"] and len(w) == 2:
            rep = await self._ask("scheduler", "remove", w[1])
            evpids = [str(e) for e in rep.data.get("evpids", [])]
            for evpid in evpids:
                await self._ask("queue", "remove", evpid)
            n = len(evpids)
            return m.ControlReply(lines=[f"{n} envelope{'s' if n > 1 else ''} removed"])
        if w[:1] == ["discover"] and len(w) == 2:
            return await self._ask("queue", "discover", w[1])
        if w[:1] in (["pause"], ["resume"]) and len(w) >= 2:
            verb, what = w[0], w[1]
            if what in ("mda", "mta") and len(w) == 2:
                return await self._ask("scheduler", f"{verb}-{what}")
            if what == "smtp" and len(w) == 2:
                return await self._ask("pony", f"{verb}-smtp")
            if what == "envelope" and len(w) == 3:
                return await self._ask("scheduler", f"{verb}-envelope", w[2])
        if cmd in ("show hosts", "show relays", "show routes", "show hoststats") \
                and len(w) == 2:
            return await self._ask("pony", f"show-{w[1]}")
        if cmd == "resume route" and len(w) <= 3:
            return await self._ask("pony", "resume-route", *w[2:])
        if cmd == "update table" and arg:
            return await self._ask("lka", "update-table", arg)
        if cmd in ("log verbose", "log brief"):
            log.set_verbose(w[1] == "verbose")
            return await self._broadcast(f"log-{w[1]}")
        if w[:1] in (["trace"], ["untrace"]) and len(w) == 2:
            if w[1] not in TRACE_SUBSYSTEMS:
                return m.ControlReply(ok=False, lines=[f"invalid trace subsystem: {w[1]}"])
            log.trace(w[1], w[0] == "trace")
            return await self._broadcast(w[0], w[1])
        if w[:1] in (["profile"], ["unprofile"]) and len(w) == 2 \
                and w[1] in (*profile.SUBSYSTEMS, "all"):
            on = w[0] == "profile"
            profile.enable(w[1], on)
            return await self._broadcast(w[0], w[1])
        return m.ControlReply(ok=False, lines=[f"unknown command: {' '.join(w)}"])

    async def show_message(self, ident: str) -> m.ControlReply:
        reply, fds = await self.peers["queue"].call(m.Control(command="show-message",
                                                              args=[ident]))
        if not fds:
            return reply if isinstance(reply, m.ControlReply) else m.ControlReply(ok=False)
        try:
            data = b""
            while len(data) < MESSAGE_SHOW_MAX and (chunk := os.read(fds[0], 1 << 16)):
                data += chunk
        finally:
            for fd in fds:
                os.close(fd)
        return m.ControlReply(lines=data.decode("utf-8", "replace").split("\n")[:-1]
                              if data.endswith(b"\n") else
                              data.decode("utf-8", "replace").split("\n"))

    async def monitor(self, writer: asyncio.StreamWriter) -> None:
        """Counters once a second until the client goes away (smtpctl monitor)."""
        last: dict[str, int] = {}
        n = 0
        while not self.stopping.is_set() and not writer.is_closing():
            counters = (await self.collect(full=False)).counters
            lines = []
            if n % 25 == 0:
                lines += ([""] if n else []) + MONITOR_HEADER
            row = []
            for key, absolute in MONITOR_COLUMNS:
                v = int(counters.get(key, 0))
                row.append(v if absolute or n == 0 else v - last.get(key, 0))
            lines.append(monitor_row(row))
            last = {k: int(counters.get(k, 0)) for k, _ in MONITOR_COLUMNS}
            writer.write(json.dumps({"ok": True, "lines": lines, "data": {}}).encode() + b"\n")
            await writer.drain()
            n += 1
            await asyncio.sleep(1)

    async def collect(self, *, full: bool = True) -> metrics.Snapshot:
        """Every process's counters and, when ``full``, the scheduler's queue
        states and latency histograms: what show stats, monitor and the
        metrics endpoint serve."""
        snap = metrics.Snapshot(uptime=int(time.time() - self.started))
        for peer in (*CHILDREN, "parent"):
            rep = await self._ask(peer, "stats")
            found = rep.data.get("counters", {})
            for k, v in (found.items() if isinstance(found, dict) else []):
                if isinstance(v, int | float) and not isinstance(v, bool):
                    snap.counters[str(k)] = int(v)
        if full:
            metrics.snapshot_part((await self._ask("scheduler", "metrics")).data, snap)
        return snap

    async def show_stats(self) -> m.ControlReply:
        snap = await self.collect(full=False)
        counters, up = snap.counters, snap.uptime
        lines = [f"uptime={up}", f"uptime.human={log.duration_text(up)}"]
        lines += [f"{k}={v}" for k, v in sorted(counters.items())]
        return m.ControlReply(lines=lines, data={"counters": counters})

    async def _scrape(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        """One HTTP request on a metrics socket (metrics.py says what is answered)."""
        if self.metrics_clients >= limits.METRICS_CLIENTS_MAX:
            writer.write(metrics.error_response(503, "Service Unavailable"))
            writer.close()
            return
        self.metrics_clients += 1
        try:
            try:
                head = await asyncio.wait_for(_read_head(reader),
                                              limits.METRICS_REQUEST_TIMEOUT)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                return
            snap: metrics.Snapshot | None = None
            status, _ = metrics.request_target(head)
            if status == 200:
                try:
                    snap = await self.collect()
                except (TempFail, OSError) as exc:
                    log.warning("control", "metrics-failed", error=str(exc))
            writer.write(metrics.answer(head, snap))
            await writer.drain()
            if status != 200:
                log.debug("control", "metrics-refused", status=status)
        except OSError:
            pass
        finally:
            self.metrics_clients -= 1
            writer.close()

    async def show_queue(self, only: str | None) -> m.ControlReply:
        rep = await self._ask("queue", "show-queue")
        rs = (await self._ask("scheduler", "runstate")).data.get("runstate", {})
        lines = []
        rows = []
        for row in rep.data.get("envelopes", []):
            try:
                env = envmod.from_fields(row)
            except ValueError:
                continue
            if only and not env.evpid.startswith(only):
                continue
            state, delay = rs.get(env.evpid, ["pending", 0])
            suspended = state == "suspend"
            if suspended:
                # smtpctl: a paused envelope keeps its run state, its flags say so
                state = "pending"
            lines.append(format_queue_line(env, str(state), str(delay),
                                           ("suspend",) if suspended else ()))
            rows.append(row)
        return m.ControlReply(lines=lines, data={"envelopes": rows})


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """An HTTP request head without its blank line; past the size limit, what
    was read (request_target() then answers 400)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) <= limits.METRICS_REQUEST_MAX:
        chunk = await reader.read(1024)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


def inherited_metrics_sockets(spec: str) -> list[socket.socket]:
    """The listening sockets the parent bound for ``metrics listen on``
    (``spec`` is a comma-separated list of fds)."""
    out = []
    for part in spec.split(","):
        if part.strip().isdigit():
            sock = socket.socket(fileno=int(part))
            sock.setblocking(False)
            out.append(sock)
    return out


PROCESS = Control
