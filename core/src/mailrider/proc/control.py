"""control: the unix socket ``mailriderctl`` talks to.

Requests are one JSON line ``{"cmd": [words...]}``; the answer is one JSON
line ``{"ok": bool, "lines": [...], "data": {...}}``. The peer's uid is read
from the socket (SO_PEERCRED): root and the user the daemon was started by
may do everything; anyone else is refused, as smtpctl refuses non-root users.

An envelope or message id is checked here before any process sees it (and
again by the process that acts on it): hex of its fixed length, or "all"
where the command takes it; anything else is answered ``invalid id``.
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

from mailrider import log, profile
from mailrider.control_format import format_queue_line, invalid_id, socket_path
from mailrider.errors import TempFail
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
    "--- client ---  -- envelope --  ---- relay/delivery --- ------- misc -------",
    "curr conn disc  curr  enq  deq   ok tmpfail prmfail loop expire remove bounce",
]


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

    async def run(self) -> None:
        server = await asyncio.start_unix_server(self._client, sock=self.sock)
        try:
            await self.stopping.wait()
        finally:
            server.close()
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
            log.warning("control", "client-error", error=str(exc))
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
            return await self._ask("queue", "show-envelope", arg)
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
        if w[:1] in (["profile"], ["unprofile"]) and len(w) == 2 and w[1] in ("imsg", "queue"):
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
            counters = (await self.show_stats()).data.get("counters", {})
            lines = []
            if n % 25 == 0:
                lines += MONITOR_HEADER
            row = []
            for key, absolute in MONITOR_COLUMNS:
                v = int(counters.get(key, 0))
                row.append(v if absolute or n == 0 else v - last.get(key, 0))
            lines.append(" ".join(f"{v:>7}" for v in row))
            last = {k: int(counters.get(k, 0)) for k, _ in MONITOR_COLUMNS}
            writer.write(json.dumps({"ok": True, "lines": lines, "data": {}}).encode() + b"\n")
            await writer.drain()
            n += 1
            await asyncio.sleep(1)

    async def show_stats(self) -> m.ControlReply:
        counters: dict[str, int] = {}
        for peer in ("lka", "queue", "scheduler", "pony", "klondike"):
            rep = await self._ask(peer, "stats")
            counters.update({str(k): int(v) for k, v in rep.data.get("counters", {}).items()})
        up = int(time.time() - self.started)
        lines = [f"uptime={up}", f"uptime.human={up // 86400}d{up % 86400 // 3600}h"
                 f"{up % 3600 // 60}m{up % 60}s"]
        lines += [f"{k}={v}" for k, v in sorted(counters.items())]
        return m.ControlReply(lines=lines, data={"counters": counters})

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
            lines.append(format_queue_line(env, str(state), str(delay)))
            rows.append(row)
        return m.ControlReply(lines=lines, data={"envelopes": rows})


PROCESS = Control
