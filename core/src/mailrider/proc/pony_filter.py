"""pony's filter client: one session's side of the filter protocol (docs/filter-protocol.md).

The filters run under lka; this client sends them the session's reports,
asks them for a decision at each phase, and streams the message through
the data-line filters. It returns decisions only: what a ``reject`` or a
``rewrite`` does to the SMTP dialogue is its caller's business, so the
same client serves an incoming session (pony_smtp) and an outgoing one.

Invariants:

- a failed round trip to lka is a ``disconnect`` with a 421 (a backend
  fault is a 4xx, never a 5xx or a silent drop);
- message lines travel dot-stuffed (a line starting with ``.`` gets one
  more), and come back un-stuffed; the line ``.`` ends the message;
- at most ``limits.FILTER_DATA_WINDOW`` bytes are unanswered by lka: above
  that the caller is asked to stop reading its client (``pause``), and
  to read again (``resume``) once half the window is free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from mailrider import limits, log
from mailrider.errors import TempFail
from mailrider.ipc import messages as m
from mailrider.smtp.reply import Reply, split_status

#: what a failed round trip to the filters decides
FILTER_FAILED = "421 4.3.0 Temporary failure in filter"


class Peer(Protocol):
    """The side of an IPC channel a pony module talks to (ipc.channel.Channel)."""

    def notify(self, obj: Any, fds: Sequence[int] = ()) -> None: ...

    async def call(self, obj: Any, fds: Sequence[int] = ()) -> tuple[Any, list[int]]: ...

    async def ask(self, obj: Any, fds: Sequence[int] = ()) -> Any: ...


#: runs a coroutine as a task its owner keeps (and cancels at exit)
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


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


def stuff(lines: list[bytes]) -> list[str]:
    """Message lines (no line end) as the filter protocol carries them."""
    return [("." + ln.decode("utf-8", "surrogateescape")) if ln.startswith(b".")
            else ln.decode("utf-8", "surrogateescape") for ln in lines]


def unstuff(lines: list[str]) -> tuple[bytes, bool]:
    """Lines back from the filters as message bytes (LF line ends), and
    whether the terminating ``.`` was among them (lines after it are ignored)."""
    out = bytearray()
    for line in lines:
        if line == ".":
            return bytes(out), True
        raw = line.encode("utf-8", "surrogateescape")
        out += (raw[1:] if raw.startswith(b".") else raw) + b"\n"
    return bytes(out), False


def _drop_bytes(data: bytes) -> None:
    """Where a detached session's filtered data goes."""


def _nothing() -> None:
    """A detached session's pause and resume."""


class FilterClient:
    """The filter protocol for one session ``sid``, through lka."""

    # one per SMTP session, filtered or not: slots instead of a __dict__ each
    __slots__ = ("done", "inflight", "line", "lka", "pause", "paused", "resume", "sid",
                 "spawn", "subsystem", "write")

    def __init__(self, sid: str, lka: Peer, spawn: Spawn, *,
                 write: Callable[[bytes], None],
                 pause: Callable[[], None], resume: Callable[[], None],
                 subsystem: str = "smtp") -> None:
        self.sid = sid
        self.lka = lka
        self.spawn = spawn
        #: where the filtered message goes (the spool file)
        self.write = write
        self.pause = pause
        self.resume = resume
        self.subsystem = subsystem
        #: message bytes sent to the data-line filters and not yet answered by
        #: lka (across transactions: answers may come after the end of one);
        #: reading is paused above limits.FILTER_DATA_WINDOW
        self.inflight = 0
        self.paused = False
        self.reset()

    def reset(self) -> None:
        """A new transaction: no partial line, no message under way."""
        self.line = b""
        self.done: asyncio.Future[None] | None = None

    # -- reports and decisions ------------------------------------------------------

    def report(self, event: str, params: list[str]) -> None:
        self.lka.notify(m.FilterReport(sid=self.sid, event=event, params=params))

    def end(self) -> None:
        """The session is over: lka forgets it."""
        self.lka.notify(m.FilterEnd(sid=self.sid))

    def detach(self) -> None:
        """The session is gone: drop its callbacks (its own methods). Held,
        they make a reference cycle that only a full garbage collection
        frees, and under load closed sessions piled up by the thousand
        before one ran (docs/performance.md §1). What lka still answers
        for this session goes nowhere."""
        self.write = _drop_bytes
        self.pause = self.resume = _nothing

    async def begin(self, listener: int, rdns: str, fcrdns: str, src: str, link_src: str,
                    link_dest: str) -> m.FilterDecision:
        """The session starts (the ``connect`` phase)."""
        try:
            d = await self.lka.ask(m.FilterBegin(
                sid=self.sid, listener=listener, rdns=rdns, fcrdns=fcrdns, src=src,
                link_src=link_src, link_dest=link_dest))
        except TempFail:
            return m.FilterDecision("disconnect", FILTER_FAILED)
        if not isinstance(d, m.FilterDecision):
            return m.FilterDecision("proceed")
        return d

    def begin_out(self, relay: str, rdns: str, link_src: str, link_dest: str) -> None:
        """An outgoing session of relay action ``relay`` is connected: its
        filters get smtp-out reports, nothing is asked of them. rdns is the
        host's name as routed (an MX name is forward-confirmed: fcrdns pass)."""
        self.lka.notify(m.FilterBegin(sid=self.sid, listener=-1, rdns=rdns, fcrdns="pass",
                                      src="", link_src=link_src, link_dest=link_dest,
                                      relay=relay))

    async def phase(self, phase: str, params: list[str]) -> m.FilterDecision:
        """The filters' decision at ``phase``."""
        try:
            res = await self.lka.ask(m.FilterPhase(sid=self.sid, phase=phase, params=params))
        except TempFail as exc:
            log.warning(self.subsystem, "filter-failed", session=self.sid, phase=phase,
                        error=exc.text)
            return m.FilterDecision("disconnect", FILTER_FAILED)
        if not isinstance(res, m.FilterDecision):
            return m.FilterDecision("disconnect", FILTER_FAILED)
        if res.decision != "proceed":
            log.event(self.subsystem, "filter-response", session=self.sid, phase=phase,
                      response=res.decision, param=res.param)
        return res

    # -- the message ---------------------------------------------------------------

    async def data_begin(self, header: bytes) -> bool:
        """The message starts: True when data-line filters read it; ``header``
        (our trace header) is then their first lines, else the caller writes it."""
        res = await self.lka.ask(m.FilterDataBegin(sid=self.sid))
        if not (isinstance(res, m.Ok) and res.text == "yes"):
            return False
        self.done = asyncio.get_running_loop().create_future()
        self.lka.notify(m.FilterData(
            sid=self.sid, lines=header.rstrip(b"\n").decode("utf-8", "surrogateescape")
            .split("\n")))
        return True

    def chunk(self, data: bytes) -> None:
        """Message bytes -> dot-stuffed lines for the data-line filters.

        Backpressure: each batch of lines is a request that lka answers once
        the filters have read it; while more than FILTER_DATA_WINDOW bytes
        are unanswered, the client's socket is not read."""
        buf = self.line + data
        parts = buf.split(b"\n")
        self.line = parts.pop()
        if len(self.line) > limits.FILTER_DATA_WINDOW:
            # no newline for that long: pass it on in pieces (such a line
            # makes the SMTP machine refuse the message at its end anyway)
            parts.append(self.line)
            self.line = b""
        if not parts:
            return
        lines = stuff(parts)
        size = len(buf) - len(self.line)
        self.inflight += size
        self.spawn(self._send(lines, size))
        if self.inflight > limits.FILTER_DATA_WINDOW and not self.paused:
            self.paused = True
            self.pause()

    async def _send(self, lines: list[str], size: int) -> None:
        try:
            await self.lka.ask(m.FilterData(sid=self.sid, lines=lines))
        except TempFail as exc:
            self.output([], exc.text or "filter failed")
        finally:
            self.inflight -= size
            if self.paused and self.inflight <= limits.FILTER_DATA_WINDOW // 2:
                self.paused = False
                self.resume()

    def output(self, lines: list[str], error: str) -> None:
        """Lines back from the filters: un-stuff and write them."""
        if self.done is None or self.done.done():
            return
        if error:
            self.done.set_exception(TempFail(error, 421, "4.3.0"))
            return
        data, end = unstuff(lines)
        self.write(data)
        if end:
            self.done.set_result(None)

    async def data_end(self) -> str | None:
        """The message has ended: wait for the filters to give all of it back.
        None when they did, else why not."""
        # a last line without its newline goes with the end, in one message: a
        # request of its own would be sent after this notification
        last, self.line = stuff([self.line]) if self.line else [], b""
        self.lka.notify(m.FilterData(sid=self.sid, lines=[*last, "."]))
        assert self.done is not None
        try:
            await asyncio.wait_for(self.done, limits.DATA_TIMEOUT)
        except (TempFail, TimeoutError) as exc:
            return exc.text if isinstance(exc, TempFail) else "filter timed out"
        return None
