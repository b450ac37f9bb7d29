"""One filter process as lka sees it: handshake, registrations, requests.

The process itself is started by the parent (as the configured user) and
lka gets its stdin/stdout socket and its stderr. Requests of many sessions
are in flight at once; answers are matched by (session id, token). A filter
that dies or misbehaves fails what is pending with :class:`FilterFailed`
(the sessions get a 421), is logged, and is restarted by the host.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from mailrider import log
from mailrider.errors import TempFail
from mailrider.filter import protocol as p

HANDSHAKE_TIMEOUT = 30.0
LINE_MAX = 64 * 1024
#: data streams remembered as closed by their session (see FilterProcess._closed)
CLOSED_MAX = 1024


class FilterFailed(TempFail):
    """The filter could not answer (died, timed out, broke the protocol)."""

    code = 421
    status = "4.3.0"


class FilterProcess:
    def __init__(self, name: str, *, timeout: float = 60.0) -> None:
        self.name = name
        self.timeout = timeout
        #: registered report events ("*" = all) by direction (smtp-in, smtp-out)
        self.registered: dict[str, set[str]] = {"smtp-in": set(), "smtp-out": set()}
        #: the smtp-in ones
        self.reports = self.registered["smtp-in"]
        self.phases: set[str] = set()
        self.alive = False
        self.on_dead: Callable[[FilterProcess], None] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[tuple[str, str], asyncio.Future[p.FilterResult]] = {}
        self._sinks: dict[tuple[str, str], Callable[[str], None]] = {}
        #: data streams closed before the filter returned their last line
        #: (the session ended): what still comes for them is dropped quietly
        self._closed: dict[tuple[str, str], None] = {}
        self._report_sink: Callable[[str, str], None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def wants_report(self, event: str, direction: str = "smtp-in") -> bool:
        events = self.registered.get(direction, set())
        return "*" in events or event in events

    async def start(self, sock: socket.socket, err: socket.socket | None, *, version: str,
                    admd: str, session_timeout: int = 300,
                    subsystems: tuple[str, ...] = ("smtp-in",)) -> None:
        """The handshake; ``subsystems``: where the filter is used (smtp-in for
        a listener, smtp-out for a relay action), as the handshake tells it."""
        self._reader, self._writer = await asyncio.open_connection(sock=sock, limit=LINE_MAX)
        if err is not None:
            er, _ = await asyncio.open_connection(sock=err)
            self._tasks.append(asyncio.get_running_loop().create_task(self._stderr(er)))
        try:
            for line in p.handshake_lines(version=version, subsystems=list(subsystems),
                                          admd=admd,
                                          session_timeout=session_timeout):
                self._writer.write(line.encode() + b"\n")
            await self._writer.drain()
            await asyncio.wait_for(self._register(), HANDSHAKE_TIMEOUT)
        except TimeoutError:
            raise FilterFailed(f"filter {self.name}: no register|ready in time") from None
        except (ConnectionError, OSError) as exc:
            raise FilterFailed(f"filter {self.name}: exited during the handshake ({exc})"
                               ) from None
        self.alive = True
        self._tasks.append(asyncio.get_running_loop().create_task(self._read()))

    async def _register(self) -> None:
        assert self._reader is not None
        while True:
            raw = await self._reader.readline()
            if not raw:
                raise FilterFailed(f"filter {self.name}: exited during the handshake")
            try:
                reg = p.parse_register(raw.decode("utf-8", "replace").rstrip("\n"))
            except p.FilterProtocolError as exc:
                raise FilterFailed(f"filter {self.name}: {exc}") from None
            if reg.kind == "ready":
                return
            if reg.kind == "report" and reg.direction in self.registered:
                self.registered[reg.direction].add(reg.name)
            elif reg.kind == "filter":
                self.phases.add(reg.name)

    async def _stderr(self, reader: asyncio.StreamReader) -> None:
        while raw := await reader.readline():
            log.event("filter", "stderr", filter=self.name,
                      line=raw.decode("utf-8", "replace").rstrip("\n")[:500])

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            while True:
                try:
                    raw = await self._reader.readline()
                except ValueError:  # line longer than LINE_MAX
                    log.error("filter", "line-too-long", filter=self.name)
                    break
                if not raw:
                    break
                self._line(raw.decode("utf-8", "surrogateescape").rstrip("\n"))
        except (ConnectionError, OSError):
            pass
        self._dead("exited")

    def _line(self, line: str) -> None:
        try:
            out = p.parse_output(line)
        except p.FilterProtocolError as exc:
            log.error("filter", "protocol-error", filter=self.name, error=str(exc))
            self._fail_sid(line.split("|")[1] if line.count("|") >= 2 else None,
                           f"filter {self.name} broke the protocol")
            return
        if isinstance(out, p.FilterResult):
            fut = self._pending.pop((out.sid, out.token), None)
            if fut is not None and not fut.done():
                fut.set_result(out)
            return
        if isinstance(out, p.DataLine):
            sink = self._sinks.get((out.sid, out.token))
            if sink is None:
                if (out.sid, out.token) in self._closed:
                    if out.line == ".":
                        del self._closed[(out.sid, out.token)]
                    return
                log.warning("filter", "stray-dataline", filter=self.name, session=out.sid)
                return
            if out.line == ".":
                del self._sinks[(out.sid, out.token)]
            sink(out.line)
            return
        if self._report_sink is not None:
            self._report_sink(out.sid, out.message)

    def _fail_sid(self, sid: str | None, text: str) -> None:
        for key in [k for k in self._pending if sid is None or k[0] == sid]:
            fut = self._pending.pop(key)
            if not fut.done():
                fut.set_exception(FilterFailed(text))
        for key in [k for k in self._sinks if sid is None or k[0] == sid]:
            self._sinks.pop(key)(f"\x00{text}")

    def _dead(self, why: str) -> None:
        if not self.alive:
            return
        self.alive = False
        log.error("filter", "lost", filter=self.name, reason=why)
        self._fail_sid(None, f"filter {self.name} {why}")
        if self._writer is not None:
            self._writer.close()
        if self.on_dead is not None:
            self.on_dead(self)

    def close(self) -> None:
        self.on_dead = None
        self._dead("closed")
        for t in self._tasks:
            t.cancel()

    def set_report_sink(self, sink: Callable[[str, str], None]) -> None:
        self._report_sink = sink

    def _write(self, line: str) -> None:
        if not self.alive or self._writer is None:
            raise FilterFailed(f"filter {self.name} is not running")
        self._writer.write(line.encode("utf-8", "surrogateescape") + b"\n")

    def report(self, event: str, sid: str, params: list[str], direction: str = "smtp-in"
               ) -> None:
        if self.alive and self.wants_report(event, direction):
            self._write(p.report_line(direction, event, sid, params))

    async def query(self, phase: str, sid: str, token: str, params: list[str]
                    ) -> p.FilterResult:
        fut: asyncio.Future[p.FilterResult] = asyncio.get_running_loop().create_future()
        self._pending[(sid, token)] = fut
        try:
            self._write(p.filter_line(phase, sid, token, params))
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            log.error("filter", "timeout", filter=self.name, session=sid, phase=phase)
            raise FilterFailed(f"filter {self.name} timed out") from None
        finally:
            self._pending.pop((sid, token), None)

    def open_data(self, sid: str, token: str, sink: Callable[[str], None]) -> None:
        """Lines the filter returns for (sid, token) go to ``sink``; "." ends them,
        a line starting with NUL reports a failure."""
        self._sinks[(sid, token)] = sink

    def data_line(self, sid: str, token: str, line: str) -> None:
        self._write(p.filter_line("data-line", sid, token, [line]))

    async def drain(self) -> None:
        """Wait until what we wrote to the filter is under the transport's
        high-water mark: the filter reads as fast as it is fed, or the feeder
        waits (data-line backpressure). A filter gone returns at once."""
        if not self.alive or self._writer is None:
            return
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            pass

    def close_data(self, sid: str, token: str) -> None:
        if self._sinks.pop((sid, token), None) is not None:
            self._closed[(sid, token)] = None
            if len(self._closed) > CLOSED_MAX:  # bounded: the oldest are forgotten
                del self._closed[next(iter(self._closed))]
