"""Scheduler behaviour for relay envelopes: pause/resume mta, release of a route."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mailrider.config.model import Config
from mailrider.ipc import messages as m
from mailrider.proc.common import Options
from mailrider.proc.scheduler import Scheduler


class FakeQueue:
    def __init__(self) -> None:
        self.due: list[str] = []

    def notify(self, msg: Any) -> None:
        if isinstance(msg, m.SchedDue):
            self.due += msg.evpids


def run(scenario: Any) -> None:
    async def main() -> None:
        s = Scheduler(Options(statedir="/nonexistent"), Config())
        await s.setup()
        q = FakeQueue()
        s.peers = {"queue": q}  # type: ignore[dict-item]
        task = asyncio.create_task(s.run())
        try:
            await scenario(s, q)
        finally:
            s.stopping.set()
            await asyncio.wait_for(task, 2)

    asyncio.run(main())


def test_pause_mta_holds_relay_envelopes_only() -> None:
    async def scenario(s: Scheduler, q: FakeQueue) -> None:
        s.command(m.Control(command="pause-mta"))
        now = time.time()
        s.insert(m.SchedEntry(evpid="a" * 16, type="mta", ctime=int(now), route="out:x"), now)
        s.insert(m.SchedEntry(evpid="b" * 16, type="mda", ctime=int(now)), now)
        await asyncio.sleep(0.1)
        assert q.due == ["b" * 16]
        s.command(m.Control(command="resume-mta"))
        await asyncio.sleep(0.1)
        assert q.due == ["b" * 16, "a" * 16]

    run(scenario)


def test_success_releases_waiting_envelopes_of_the_route() -> None:
    async def scenario(s: Scheduler, q: FakeQueue) -> None:
        now = time.time()
        for evpid, route in (("1" * 16, "out:x"), ("2" * 16, "out:x"), ("3" * 16, "out:y")):
            s.insert(m.SchedEntry(evpid=evpid, type="mta", ctime=int(now), route=route), now)
        await asyncio.sleep(0.1)
        assert sorted(q.due) == ["1" * 16, "2" * 16, "3" * 16]
        for evpid in ("2" * 16, "3" * 16):
            s.result(m.SchedResult(evpid=evpid, status="tempfail", retry=1))
        q.due.clear()
        await asyncio.sleep(0.1)
        assert q.due == []  # 400 s away
        s.result(m.SchedResult(evpid="1" * 16, status="ok", route="out:x"))
        await asyncio.sleep(0.1)
        assert q.due == ["2" * 16]

    run(scenario)


def test_release_is_capped_by_mta_max_deferred() -> None:
    config = Config()
    config.mta_max_deferred = 2

    async def main() -> None:
        s = Scheduler(Options(statedir="/nonexistent"), config)
        await s.setup()
        q = FakeQueue()
        s.peers = {"queue": q}  # type: ignore[dict-item]
        task = asyncio.create_task(s.run())
        try:
            now = time.time()
            ids = [str(i) * 16 for i in range(1, 6)]
            for i, evpid in enumerate(ids):  # "1..." is the oldest
                s.insert(m.SchedEntry(evpid=evpid, type="mta", ctime=int(now) - 10 + i,
                                      route="out:x"), now)
            await asyncio.sleep(0.1)
            for evpid in ids[1:]:
                s.result(m.SchedResult(evpid=evpid, status="tempfail", retry=1))
            q.due.clear()
            s.result(m.SchedResult(evpid=ids[0], status="ok", route="out:x"))
            await asyncio.sleep(0.1)
            assert sorted(q.due) == ids[1:3]  # the two oldest of the four waiting
        finally:
            s.stopping.set()
            await asyncio.wait_for(task, 2)

    asyncio.run(main())
