"""The filter host in lka: chains, built-in filters, proc filters, data lines.

Each listener has a chain (its ``filter`` option, chains flattened). For a
phase the chain is walked in order: a built-in filter whose phase matches
and whose conditions all hold decides (``report`` does not end the walk,
``bypass`` skips the rest); a proc filter registered for the phase is asked
and anything but ``proceed``/``report`` ends the walk. We treat a proc
filter's ``report`` decision as a report followed by proceed (OpenSMTPD 7.8
uses its text as the new argument, which is a bug).

Message lines go through every filter registered for ``data-line``, the
output of one feeding the next; what the last returns goes back to pony.

An outgoing session (pony's mta) of a relay action with a ``filter`` option
is a session of direction ``smtp-out``: it has only reports, sent to the
filters of that chain that registered them (docs/filter-protocol.md §8).
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mailrider import log
from mailrider.config.model import Condition, Config, Filter
from mailrider.errors import TempFail
from mailrider.filter import protocol as p
from mailrider.filter.proc import FilterFailed, FilterProcess
from mailrider.filter.programs import (
    expand_chain,
    filter_subsystems,
    relay_filters,
    used_filters,
)
from mailrider.table.base import normalise_key
from mailrider.table.registry import TableSet

#: starts one filter program (through the parent) and returns (stdio, stderr) sockets
Starter = Callable[[Filter], Awaitable[tuple[socket.socket, socket.socket | None]]]
#: (sid, lines, error) back to pony
DataOut = Callable[[str, list[str], str], None]

RESTART_MIN = 1.0
RESTART_MAX = 60.0
DATA_TIMEOUT = 300.0

INTERNAL = "421 4.3.0 Internal server error"


@dataclass(slots=True)
class Decision:
    decision: str = "proceed"  # proceed, junk, reject, disconnect, rewrite
    param: str | None = None


@dataclass(slots=True)
class Session:
    sid: str
    chain: list[Filter]
    rdns: str = "<unknown>"
    fcrdns: str = "error"
    src: str = ""
    #: smtp-in (a listener's session) or smtp-out (an outgoing one, reports only)
    direction: str = "smtp-in"
    helo: str = ""
    sender: str = ""
    rcpt: str = ""
    auth: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    data_filters: list[FilterProcess] = field(default_factory=list)
    data_done: asyncio.Event = field(default_factory=asyncio.Event)

    def token(self, name: str) -> str:
        if name not in self.tokens:
            self.tokens[name] = secrets.token_hex(8)
        return self.tokens[name]


class FilterHost:
    def __init__(self, config: Config, tables: TableSet, start: Starter, *, version: str,
                 admd: str, timeout: float = 60.0) -> None:
        self.config = config
        self.tables = tables
        self.starter = start
        self.version = version
        self.admd = admd
        self.timeout = timeout
        self.procs: dict[str, FilterProcess] = {}  # by the filter/proc key
        self.sessions: dict[str, Session] = {}
        self.data_out: DataOut | None = None
        self._restarts: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- processes -----------------------------------------------------------

    def _key(self, f: Filter) -> str | None:
        if f.kind == "proc-exec":
            return f"filter:{f.name}"
        if f.kind == "proc" and f.command is not None:
            return f"proc:{f.command}"
        return None

    def _program(self, f: Filter) -> Filter:
        if f.kind == "proc" and f.command is not None:
            return self.config.procs[f.command]
        return f

    def used_filters(self) -> list[Filter]:
        return used_filters(self.config)

    async def start(self) -> None:
        """Start every proc filter a listener uses; fail if one cannot register."""
        for f in self.used_filters():
            key = self._key(f)
            if key is not None and key not in self.procs:
                self.procs[key] = await self._spawn(key, f)

    async def _spawn(self, key: str, f: Filter) -> FilterProcess:
        sock, err = await self.starter(self._program(f))
        proc = FilterProcess(f.name if f.kind == "proc-exec" else str(f.command),
                             timeout=self.timeout)
        # where this program is used: every filter naming it counts
        used = filter_subsystems(self.config)
        where = set().union(*(v for name, v in used.items()
                              if self._key(self.config.filters[name]) == key)) or {"smtp-in"}
        await proc.start(sock, err, version=self.version, admd=self.admd,
                         subsystems=tuple(sorted(where)))
        proc.on_dead = functools.partial(self._on_dead, key, f)
        proc.set_report_sink(functools.partial(self._filter_sent_report, name=proc.name))
        log.event("filter", "started", filter=proc.name, phases=",".join(sorted(proc.phases)),
                  reports=",".join(sorted(proc.reports)))
        return proc

    def _on_dead(self, key: str, f: Filter, proc: FilterProcess) -> None:
        self._schedule_restart(key, f)

    def _schedule_restart(self, key: str, f: Filter) -> None:
        delay = min(RESTART_MAX, self._restarts.get(key, RESTART_MIN / 2) * 2)
        self._restarts[key] = delay

        async def again() -> None:
            await asyncio.sleep(delay)
            try:
                self.procs[key] = await self._spawn(key, f)
                self._restarts[key] = RESTART_MIN / 2
            except (TempFail, OSError) as exc:
                log.error("filter", "restart-failed", filter=f.name, error=str(exc))
                self._schedule_restart(key, f)

        task = asyncio.get_running_loop().create_task(again())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for proc in self.procs.values():
            proc.close()
        for t in self._tasks:
            t.cancel()

    # -- sessions --------------------------------------------------------------

    def chain_for(self, listener: int) -> list[Filter]:
        if not 0 <= listener < len(self.config.listeners):
            return []
        return expand_chain(self.config, self.config.listeners[listener].filters)

    def relay_chain(self, action: str) -> list[Filter]:
        """The chain of relay action ``action``'s ``filter`` option ([] if none)."""
        act = self.config.actions.get(action)
        return expand_chain(self.config, relay_filters(self.config, act)) if act else []

    def _proc(self, f: Filter) -> FilterProcess | None:
        key = self._key(f)
        return self.procs.get(key) if key is not None else None

    def _session_procs(self, s: Session) -> list[FilterProcess]:
        out: list[FilterProcess] = []
        for f in s.chain:
            proc = self._proc(f)
            if proc is not None and proc not in out:
                out.append(proc)
        return out

    def begin(self, sid: str, listener: int, *, rdns: str, fcrdns: str, src: str,
              link_src: str, link_dest: str) -> Session:
        s = Session(sid, self.chain_for(listener), rdns=rdns or "<unknown>", fcrdns=fcrdns,
                    src=src)
        self.sessions[sid] = s
        self.report(sid, "link-connect", [s.rdns, fcrdns, link_src, link_dest])
        return s

    def begin_out(self, sid: str, action: str, *, rdns: str, fcrdns: str, link_src: str,
                  link_dest: str) -> Session | None:
        """An outgoing session of relay action ``action`` is connected (smtp-out)."""
        chain = self.relay_chain(action)
        if not chain or sid in self.sessions:
            return None
        s = Session(sid, chain, rdns=rdns or "<unknown>", fcrdns=fcrdns, direction="smtp-out")
        self.sessions[sid] = s
        self.report(sid, "link-connect", [s.rdns, fcrdns, link_src, link_dest])
        return s

    def end(self, sid: str) -> None:
        if sid in self.sessions:
            self.report(sid, "link-disconnect", [])
            s = self.sessions.pop(sid)
            for i, proc in enumerate(s.data_filters):
                proc.close_data(sid, s.token(f"data{i}"))

    def report(self, sid: str, event: str, params: list[str]) -> None:
        s = self.sessions.get(sid)
        if s is None:
            return
        if event == "link-auth" and len(params) == 2 and params[0] == "pass":
            s.auth = params[1]  # for built-in ``auth`` conditions
        for proc in self._session_procs(s):
            try:
                proc.report(event, sid, params, s.direction)
            except FilterFailed:
                pass

    def _filter_sent_report(self, sid: str, message: str, *, name: str) -> None:
        self.report(sid, "filter-report", ["proc", name, message])

    # -- phases ----------------------------------------------------------------

    async def phase(self, sid: str, phase: str, params: list[str]) -> Decision:
        s = self.sessions.get(sid)
        if s is None or s.direction != "smtp-in":  # smtp-out sessions only report
            return Decision()
        value = params[0] if params else ""
        if phase in ("helo", "ehlo"):
            s.helo = value
        elif phase == "mail-from":
            s.sender = value
        elif phase == "rcpt-to":
            s.rcpt = value
        for f in s.chain:
            if f.kind == "builtin":
                if f.phase != phase or not await self._conditions(s, f.conditions):
                    continue
                decision = f.decision or "proceed"
                if decision == "report":
                    self.report(sid, "filter-report", ["builtin", f.name, f.decision_arg or ""])
                    continue
                if decision == "bypass":
                    return Decision()
                return self._checked(Decision(decision, f.decision_arg))
            proc = self._proc(f)
            if proc is None or phase not in proc.phases:
                continue
            res = await proc.query(phase, sid, s.token(f.name), params)
            rphase = p.RESPONSE_PHASE.get(phase, phase)
            self.report(sid, "filter-response",
                        [rphase, res.decision] + ([res.param] if res.param is not None else []))
            if res.decision == "proceed":
                continue
            if res.decision == "report":
                self.report(sid, "filter-report", ["proc", proc.name, res.param or ""])
                continue
            if res.decision == "junk" and phase == "commit":
                raise FilterFailed(f"filter {proc.name} sent junk at commit")
            return self._checked(Decision(res.decision, res.param))
        return Decision()

    @staticmethod
    def _checked(d: Decision) -> Decision:
        if d.decision in ("reject", "disconnect"):
            text = d.param or ""
            if not p.valid_reply(text):
                return Decision("disconnect", INTERNAL)
            if text.startswith("421"):
                return Decision("disconnect", text)
        return d

    async def _conditions(self, s: Session, conds: list[Condition]) -> bool:
        for c in conds:
            if await self._condition(s, c) == c.negate:
                return False
        return True

    async def _condition(self, s: Session, c: Condition) -> bool:
        if c.kind == "fcrdns":
            return s.fcrdns == "pass"
        if c.kind == "rdns" and c.table is None:
            return s.rdns not in ("", "<unknown>")
        if c.kind == "auth" and c.table is None:
            return bool(s.auth)
        key_service = {
            "src": (s.src, "netaddr"), "rdns": (s.rdns, "domain"), "helo": (s.helo, "domain"),
            "auth": (s.auth, "string"), "mail-from": (s.sender, "mailaddr"),
            "rcpt-to": (s.rcpt, "mailaddr"),
        }.get(c.kind)
        if key_service is None or c.table is None:
            return False
        key, service = key_service
        if c.regex:
            service = "regex"
        table = self.tables.get(c.table)
        return await table.check(service, normalise_key(service, key))

    # -- data lines --------------------------------------------------------------

    def wants_data(self, sid: str) -> bool:
        s = self.sessions.get(sid)
        if s is None or s.direction != "smtp-in":
            return False
        return any((proc := self._proc(f)) is not None and "data-line" in proc.phases
                   for f in s.chain)

    def data_begin(self, sid: str) -> None:
        s = self.sessions[sid]
        procs = []
        for f in s.chain:
            proc = self._proc(f)
            if proc is not None and "data-line" in proc.phases and proc not in procs:
                procs.append(proc)
        s.data_filters = procs
        s.data_done = asyncio.Event()
        out: list[str] = []

        def flush() -> None:
            if out and self.data_out is not None:
                self.data_out(sid, list(out), "")
            out.clear()

        def final(line: str) -> None:
            if line.startswith("\x00"):
                s.data_done.set()
                if self.data_out is not None:
                    self.data_out(sid, [], "421 4.3.0 " + line[1:])
                return
            if not out:
                asyncio.get_running_loop().call_soon(flush)
            out.append(line)
            if line == ".":
                s.data_done.set()

        for i, proc in enumerate(procs):
            sink = final if i == len(procs) - 1 else self._forwarder(
                sid, procs[i + 1], s.token(f"data{i + 1}"), final)
            proc.open_data(sid, s.token(f"data{i}"), sink)

    @staticmethod
    def _forwarder(sid: str, proc: FilterProcess, token: str,
                   final: Callable[[str], None]) -> Callable[[str], None]:
        """Lines out of one data-line filter become lines into the next."""

        def forward(line: str) -> None:
            if line.startswith("\x00"):
                final(line)
                return
            try:
                proc.data_line(sid, token, line)
            except FilterFailed as exc:
                final("\x00" + exc.text)

        return forward

    async def data_drain(self, sid: str) -> None:
        """Wait until the session's data-line filters have read what they were
        given (their input buffers in lka under the high-water mark); pony
        sends no more than a window of lines before this returns, so what lka
        holds for one session is bounded. Raises FilterFailed when a filter
        does not read its input within the timeout."""
        s = self.sessions.get(sid)
        if s is None:
            return
        for proc in list(s.data_filters):
            try:
                await asyncio.wait_for(proc.drain(), self.timeout)
            except TimeoutError:
                log.error("filter", "timeout", filter=proc.name, session=sid, phase="data-line")
                raise FilterFailed(f"filter {proc.name} does not read its input") from None

    def data_lines(self, sid: str, lines: list[str]) -> None:
        s = self.sessions.get(sid)
        if s is None or not s.data_filters:
            return
        first = s.data_filters[0]
        try:
            for line in lines:
                first.data_line(sid, s.token("data0"), line)
        except FilterFailed as exc:
            if self.data_out is not None:
                self.data_out(sid, [], "421 4.3.0 " + exc.text)
