"""scheduler: when each envelope is tried next.

State is in memory only (the spool is the truth; the queue re-inserts every
envelope at start). Retry times follow OpenSMTPD (docs/queue.md §5): the
next attempt is ``ctime + base * n**2`` for the smallest n >= the retry count
that lies in the future, base 10 s for local delivery and bounces, 400 s for
relaying. An envelope whose next attempt would fall after ``ctime + ttl``
expires at that moment instead.

``scheduler limit`` bounds the hand-out (docs/queue.md §9): at most
``max-inflight`` envelopes in flight, at most ``max-schedule`` envelopes and
``max-msg-batch-size`` messages per pass of the loop (the loop yields
between passes), at most ``max-evp-batch-size`` envelopes per SchedDue.

It also keeps what the metrics serve (docs/metrics.md §2): each envelope's
state, and the latency from queueing to each final outcome (measured from
the moment it was inserted when that was right after its commit, else from
its ctime, whole seconds, after a restart).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from dataclasses import dataclass
from typing import Any

from mailrider import limits, log, metrics
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel
from mailrider.proc import common
from mailrider.queue import envelope as envmod
from mailrider.queue.schedule import next_attempt


@dataclass(slots=True)
class Entry:
    evpid: str
    type: str
    ctime: int
    retry: int
    ttl: int
    due: float = 0.0
    inflight: bool = False
    suspended: bool = False
    generation: int = 0
    route: str = ""  # relay envelopes: action and domain (released together)
    since: float = 0.0  # when it was queued, for the latency histograms


#: commands that take an envelope id, a message id or "all"
_TARGETED = frozenset({"schedule", "remove", "pause-envelope", "resume-envelope"})


class Scheduler(common.Process):
    role = "scheduler"
    landlock_fs = True
    landlock_net = True

    def chroot_dir(self) -> str | None:
        return common.empty_dir(self.opts.statedir)

    async def setup(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.heap: list[tuple[float, int, str]] = []
        self.wake = asyncio.Event()
        # mailriderd -P mda / -P mta: held from the start until resumed
        self.paused_mda = "mda" in self.opts.paused
        self.paused_mta = "mta" in self.opts.paused
        #: due entries held back by pause mda/mta
        self.held: list[Entry] = []
        lim = self.config.scheduler_limits
        self.max_inflight = lim.get("max-inflight", limits.SCHEDULER_MAX_INFLIGHT)
        self.max_schedule = lim.get("max-schedule", 0)  # 0: every due envelope
        self.max_evp_batch = lim.get("max-evp-batch-size", 0)
        self.max_msg_batch = lim.get("max-msg-batch-size", 0)
        self.inflight = 0
        #: the largest number of envelopes in flight so far (show stats)
        self.inflight_peak = 0
        #: (type, result) -> queueing-to-outcome latency (metrics.py)
        self.latency: dict[tuple[str, str], metrics.Histogram] = {}
        #: route -> the envelopes of that route that have been tried before
        #: (``retry`` > 0): what a success on the route may release. Scanning
        #: every entry for each success cost a pass over the whole queue per
        #: relayed message (docs/performance.md §7).
        self.retried: dict[str, set[str]] = {}

    def _push(self, e: Entry) -> None:
        e.generation += 1
        heapq.heappush(self.heap, (e.due, e.generation, e.evpid))
        self.wake.set()

    def insert(self, data: m.SchedEntry, now: float) -> None:
        # the type and route strings, alike over thousands of entries, held once
        e = Entry(evpid=data.evpid, type=envmod.share(data.type), ctime=data.ctime or int(now),
                  retry=data.retry, ttl=data.ttl or self.config.queue_ttl,
                  route=envmod.share(data.route))
        # a fresh envelope (committed a moment ago) is timed from now, with
        # sub-second precision; one found again at a restart from its ctime
        e.since = now if not e.retry and 0 <= now - e.ctime < 2 else float(e.ctime)
        if e.retry:
            e.due = next_attempt(e.ctime, e.retry, self._base(e), now)
        else:
            e.due = now
        old = self.entries.get(e.evpid)
        if old is not None:
            self._unindex(old)
        self.entries[e.evpid] = e
        self._index(e)
        self._push(e)

    def _index(self, e: Entry) -> None:
        if e.retry and e.route:
            self.retried.setdefault(e.route, set()).add(e.evpid)

    def _unindex(self, e: Entry) -> None:
        ids = self.retried.get(e.route)
        if ids is not None:
            ids.discard(e.evpid)
            if not ids:
                del self.retried[e.route]

    def _forget(self, e: Entry) -> None:
        del self.entries[e.evpid]
        self._unindex(e)

    @staticmethod
    def _base(e: Entry) -> int:
        return limits.RETRY_BASE_MTA if e.type == "mta" else limits.RETRY_BASE_MDA

    async def _wake_on_stop(self) -> None:
        await self.stopping.wait()
        self.wake.set()

    async def run(self) -> None:
        # the loop sleeps on ``wake`` only, with no timeout when nothing is
        # due: SIGTERM (or a lost peer) must wake it too, or it never exits
        stopper = asyncio.get_running_loop().create_task(self._wake_on_stop())
        try:
            await self._loop()
        finally:
            stopper.cancel()

    async def _loop(self) -> None:
        while not self.stopping.is_set():
            now = time.time()
            due: list[str] = []
            expired: list[str] = []
            msgids: set[str] = set()
            while self.heap and self.heap[0][0] <= now and self.inflight < self.max_inflight:
                if self.max_schedule and len(due) + len(expired) >= self.max_schedule:
                    break
                if (self.max_msg_batch and len(msgids) >= self.max_msg_batch
                        and self.heap[0][2][:8] not in msgids):
                    break
                _, gen, evpid = heapq.heappop(self.heap)
                e = self.entries.get(evpid)
                if e is None or e.generation != gen or e.inflight or e.suspended:
                    continue
                if self.paused_mta if e.type == "mta" else self.paused_mda:
                    # held: back in the heap once resumed (resume re-pushes)
                    self.held.append(e)
                    continue
                e.inflight = True
                self.inflight += 1
                self.inflight_peak = max(self.inflight_peak, self.inflight)
                msgids.add(evpid[:8])
                if now >= e.ctime + e.ttl:
                    expired.append(evpid)
                else:
                    due.append(evpid)
            step = self.max_evp_batch or max(1, len(due) + len(expired))
            for i in range(0, len(due), step):
                self.peers["queue"].notify(m.SchedDue(evpids=due[i:i + step]))
            for i in range(0, len(expired), step):
                self.peers["queue"].notify(m.SchedDue(evpids=expired[i:i + step], expire=True))
            if due or expired:
                self.count("scheduler.batch")
            timeout = None
            if self.heap and self.inflight < self.max_inflight:
                timeout = max(0.0, self.heap[0][0] - time.time())
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                pass

    def result(self, msg: m.SchedResult) -> None:
        e = self.entries.get(msg.evpid)
        if e is None:
            return
        if e.inflight:
            e.inflight = False
            self.inflight -= 1
        if msg.status != "tempfail":
            self._forget(e)
            if msg.status in metrics.RESULTS and e.type in metrics.TYPES:
                key = (e.type, msg.status)
                self.latency.setdefault(key, metrics.Histogram()).observe(time.time() - e.since)
            if msg.status == "ok" and msg.route:
                self._release(msg.route)
            self.wake.set()
            return
        now = time.time()
        e.retry = msg.retry
        self._index(e)
        nxt = next_attempt(e.ctime, e.retry, self._base(e), now)
        e.due = min(nxt, e.ctime + e.ttl)
        log.debug("scheduler", "retry", evpid=e.evpid, retry=e.retry, due=int(e.due))
        self._push(e)

    def _release(self, route: str) -> None:
        """A delivery on this route worked: retry at once the envelopes waiting
        for it (OpenSMTPD releases a route's held envelopes on success), at
        most ``mta max-deferred`` of them, oldest first (OpenSMTPD's hoststat
        cache keeps that many per host); the others keep their retry time."""
        ids = self.retried.get(route)
        if not ids:
            return
        now = time.time()
        waiting = [e for e in map(self.entries.get, ids)
                   if e is not None and e.route == route and e.retry and not e.inflight
                   and not e.suspended and e.due > now]
        waiting.sort(key=lambda e: (e.ctime, e.evpid))
        n = 0
        for e in waiting[:max(0, self.config.mta_max_deferred)]:
            e.due = now
            self._push(e)
            n += 1
        if n:
            log.debug("scheduler", "route-released", route=route, envelopes=n)

    def _resume(self, kind: str) -> None:
        keep = []
        for e in self.held:
            if (e.type == "mta") == (kind == "mta") and e.evpid in self.entries:
                self._push(e)
            else:
                keep.append(e)
        self.held = keep
        self.wake.set()

    def queue_states(self) -> dict[tuple[str, str], int]:
        """Envelopes by (type, state): inflight, suspended (paused one by one),
        held (due while pause mda/mta), deferred (waiting for a retry) or
        pending (new, waiting for its first attempt)."""
        held = {e.evpid for e in self.held}
        now = time.time()
        out: dict[tuple[str, str], int] = {}
        for e in self.entries.values():
            if e.inflight:
                state = "inflight"
            elif e.suspended:
                state = "suspended"
            elif e.evpid in held:
                state = "held"
            elif e.retry and e.due > now:
                state = "deferred"
            else:
                state = "pending"
            key = (e.type if e.type in metrics.TYPES else "mda", state)
            out[key] = out.get(key, 0) + 1
        return out

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out["scheduler.envelope"] = len(self.entries)
        out["scheduler.envelope.inflight"] = self.inflight
        out["scheduler.envelope.inflight.peak"] = self.inflight_peak
        return out

    async def control(self, msg: m.Control) -> m.ControlReply:
        reply = self.command(msg)
        return reply if reply is not None else await super().control(msg)

    def command(self, msg: m.Control) -> m.ControlReply | None:
        cmd, target = msg.command, (msg.args[0] if msg.args else "all")
        if cmd in _TARGETED and (len(msg.args) > 1 or not envmod.is_target(target)):
            log.warning("scheduler", "invalid-id", request=cmd)
            return m.ControlReply(ok=False, lines=["command failed: invalid id"])

        def select() -> list[Entry]:
            if target == "all":
                return list(self.entries.values())
            return [e for e in self.entries.values()
                    if e.evpid == target or e.evpid[:8] == target]

        if cmd == "schedule":
            n = 0
            for e in select():
                if not e.inflight:
                    e.due = time.time()
                    self._push(e)
                    n += 1
            return m.ControlReply(lines=[f"{n} envelope{'s' if n > 1 else ''} scheduled"],
                                  data={"count": n})
        if cmd == "remove":
            chosen = [e for e in select() if not e.inflight]
            for e in chosen:
                self._forget(e)
            return m.ControlReply(data={"evpids": [e.evpid for e in chosen]})
        if cmd in ("pause-envelope", "resume-envelope"):
            n = 0
            for e in select():
                e.suspended = cmd == "pause-envelope"
                if not e.suspended:
                    self._push(e)
                n += 1
            word = "paused" if cmd == "pause-envelope" else "resumed"
            return m.ControlReply(lines=[f"{n} envelope{'s' if n > 1 else ''} {word}"])
        if cmd == "pause-mda":
            self.paused_mda = True
            return m.ControlReply(lines=["command succeeded"])
        if cmd == "resume-mda":
            self.paused_mda = False
            self._resume("mda")
            return m.ControlReply(lines=["command succeeded"])
        if cmd == "metrics":
            return m.ControlReply(data=metrics.scheduler_part(self.queue_states(),
                                                              self.latency))
        if cmd == "runstate":
            now = time.time()
            return m.ControlReply(data={"runstate": {
                e.evpid: ["inflight" if e.inflight else ("suspend" if e.suspended else "pending"),
                          int(max(0, e.due - now))]
                for e in self.entries.values()
            }, "paused_mda": self.paused_mda, "paused_mta": self.paused_mta})
        if cmd in ("pause-mta", "resume-mta"):
            self.paused_mta = cmd == "pause-mta"
            if not self.paused_mta:
                self._resume("mta")
            return m.ControlReply(lines=["command succeeded"])
        return None

    async def handle(self, chan: Channel, msg: Any, fds: list[int]) -> Any:
        if isinstance(msg, m.SchedInsert):
            now = time.time()
            added = 0
            for d in msg.envelopes:
                if not isinstance(d, m.SchedEntry):
                    log.warning("scheduler", "invalid-id", peer=chan.peer, request="insert")
                    continue
                if msg.discover and d.evpid in self.entries:
                    continue
                self.insert(d, now)
                added += 1
            return m.Ok(text=str(added))
        if isinstance(msg, m.SchedResult):
            self.result(msg)
            return None
        if isinstance(msg, m.SchedResults):
            for one in msg.results:
                self.result(one)
            return None
        if isinstance(msg, m.Control):
            return await self.control(msg)
        raise ValueError(f"scheduler: unexpected {m.type_name(msg)} from {chan.peer}")


PROCESS = Scheduler
