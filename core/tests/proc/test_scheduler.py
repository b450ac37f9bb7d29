"""The scheduler (proc/scheduler.py and queue/schedule.py): retry times,
expiry, the handlers driven with a fake queue (fakepeer.py), control
commands, and relay envelopes (pause/resume mta, release of a route)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fakepeer import FakePeer, until, wire
from mailrider import limits
from mailrider.config.model import Config
from mailrider.ipc import messages as m
from mailrider.proc.common import Options
from mailrider.proc.scheduler import Scheduler
from mailrider.queue.schedule import next_attempt


def test_retry_times_are_anchored_on_creation_time() -> None:
    # docs/queue.md §5: ctime + base * n^2, smallest n >= retry in the future
    assert next_attempt(1000, 1, 400, 1000) == 1400
    assert next_attempt(1000, 2, 400, 1000) == 2600
    # a late attempt skips to the next slot that still lies ahead
    assert next_attempt(1000, 1, 400, 5000) == 1000 + 400 * 16
    assert next_attempt(0, 0, 10, 0) == 10


def test_run_returns_when_stopping_with_nothing_due() -> None:
    # regression: with an empty heap the loop slept on ``wake`` without a
    # timeout and ignored SIGTERM, so every daemon stop waited for SIGKILL

    async def scenario() -> None:
        s = Scheduler(Options(statedir="/nonexistent"), Config())
        await s.setup()
        task = asyncio.create_task(s.run())
        await asyncio.sleep(0.05)
        assert not task.done()
        s.stopping.set()
        await asyncio.wait_for(task, 2)

    asyncio.run(scenario())


# -- the scheduler's handlers, driven with a fake queue (fakepeer.py) ----------

def _scheduler(ttl: int = 3600) -> tuple[Scheduler, FakePeer]:
    config = Config()
    config.queue_ttl = ttl
    s = Scheduler(Options(statedir="/nonexistent"), config)
    asyncio.run(s.setup())
    queue = FakePeer("queue")
    s.peers = {"queue": queue}  # type: ignore[dict-item]
    return s, queue


class _Chan:
    peer = "queue"


def test_a_tempfail_is_retried_on_the_schedule_and_expires_at_ttl() -> None:
    s, queue = _scheduler()
    now = int(time.time())
    local, relay, old = "1" * 16, "2" * 16, "3" * 16

    async def scenario() -> None:
        task = asyncio.create_task(s.run())
        try:
            ins = wire(m.SchedInsert(envelopes=[
                m.SchedEntry(evpid=local, ctime=now),
                m.SchedEntry(evpid=relay, type="mta", ctime=now, route="out:y.example"),
                # created long ago: its ttl has passed, it is due to expire
                m.SchedEntry(evpid=old, ctime=now - 7200)]))
            assert await s.handle(_Chan(), ins, []) == m.Ok(text="3")  # type: ignore[arg-type]
            await until(lambda: len(queue.of(m.SchedDue)) >= 2, "due and expired")
            due = {e for d in queue.of(m.SchedDue) if not d.expire for e in d.evpids}
            expired = {e for d in queue.of(m.SchedDue) if d.expire for e in d.evpids}
            assert (due, expired) == ({local, relay}, {old})
            assert s.inflight == 3
            for evpid in (local, relay):
                await s.handle(_Chan(), wire(m.SchedResult(  # type: ignore[arg-type]
                    evpid=evpid, status="tempfail", retry=1)), [])
            # docs/queue.md §5: ctime + base * n^2, base 10 s local, 400 s relayed
            assert s.entries[local].due == now + limits.RETRY_BASE_MDA
            assert s.entries[relay].due == now + limits.RETRY_BASE_MTA
            assert s.inflight == 1 and not s.entries[local].inflight
            # a retry that would fall after the ttl is due at the ttl instead
            await s.handle(_Chan(), wire(m.SchedResult(  # type: ignore[arg-type]
                evpid=relay, status="tempfail", retry=3)), [])
            assert s.entries[relay].due == now + 3600
            await s.handle(_Chan(), wire(m.SchedResult(evpid=old, status="expired")), [])  # type: ignore[arg-type]
            assert old not in s.entries and s.inflight == 0
            # a second discovery of known envelopes adds nothing
            again = wire(m.SchedInsert(envelopes=[m.SchedEntry(evpid=local)], discover=True))
            assert await s.handle(_Chan(), again, []) == m.Ok(text="0")  # type: ignore[arg-type]
        finally:
            s.stopping.set()
            await asyncio.wait_for(task, 2)

    asyncio.run(scenario())


def test_control_schedule_brings_a_retry_forward() -> None:
    s, _ = _scheduler()
    now = time.time()
    s.insert(m.SchedEntry(evpid="4" * 16, ctime=int(now), retry=2), now)
    assert s.entries["4" * 16].due > now
    reply = s.command(m.Control(command="schedule", args=["4" * 8]))
    assert reply is not None and reply.data == {"count": 1}
    assert s.entries["4" * 16].due <= time.time()
    paused = s.command(m.Control(command="pause-envelope", args=["4" * 16]))
    assert paused is not None and s.entries["4" * 16].suspended
    state = s.command(m.Control(command="runstate"))
    assert state is not None and state.data["runstate"]["4" * 16][0] == "suspend"


# -- relay envelopes: pause/resume mta, release of a route ---------------------

class FakeQueue:
    def __init__(self) -> None:
        self.due: list[str] = []

    def notify(self, msg: Any) -> None:
        if isinstance(msg, m.SchedDue):
            self.due += msg.evpids


def run_with_queue(scenario: Any) -> None:
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

    run_with_queue(scenario)


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

    run_with_queue(scenario)


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


class _FakeQueue:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def notify(self, msg: object) -> None:
        from mailrider.ipc import messages as m

        assert isinstance(msg, m.SchedDue)
        self.batches.append(list(msg.evpids))


def test_scheduler_limit_bounds_the_hand_out() -> None:
    # scheduler limit (docs/queue.md §9): in flight, per pass, per SchedDue, per messages
    import asyncio
    import time

    from mailrider.config import parse_string
    from mailrider.ipc import messages as m
    from mailrider.proc.common import Options
    from mailrider.proc.scheduler import Scheduler
    from mailrider.queue import envelope as envmod

    cfg = parse_string("scheduler limit max-inflight 5 max-schedule 3 "
                       "max-evp-batch-size 2 max-msg-batch-size 2\n")
    assert cfg.scheduler_limits == {"max-inflight": 5, "max-schedule": 3,
                                    "max-evp-batch-size": 2, "max-msg-batch-size": 2}

    async def scenario() -> None:
        s = Scheduler(Options(statedir="/nonexistent"), cfg)
        await s.setup()
        q = _FakeQueue()
        s.peers["queue"] = q  # type: ignore[assignment]
        now = time.time()
        msgids = [envmod.new_msgid() for _ in range(4)]
        evpids = [envmod.new_evpid(msgids[i % 4]) for i in range(12)]
        for evpid in evpids:
            s.insert(m.SchedEntry(evpid=evpid, ctime=int(now)), now)
        task = asyncio.create_task(s.run())
        for _ in range(100):
            await asyncio.sleep(0.01)
        assert sum(len(b) for b in q.batches) == 5  # max-inflight
        assert all(1 <= len(b) <= 2 for b in q.batches)  # max-evp-batch-size
        assert s.inflight == 5 and s.stats()["scheduler.envelope.inflight.peak"] == 5
        # each pass: at most 3 envelopes of at most 2 messages
        assert s.counters["scheduler.batch"] >= 2
        handed = [e for b in q.batches for e in b]
        for done in handed:
            s.result(m.SchedResult(evpid=done, status="ok"))
        for _ in range(100):
            await asyncio.sleep(0.01)
        handed = [e for b in q.batches for e in b]
        assert sorted(set(handed)) == sorted(handed)  # never twice
        assert len(handed) == 10 and s.inflight == 5
        assert s.stats()["scheduler.envelope.inflight.peak"] == 5
        s.stopping.set()
        await asyncio.wait_for(task, 2)

    asyncio.run(scenario())


def test_scheduler_pass_respects_max_schedule_and_messages() -> None:
    import asyncio
    import time

    from mailrider.config import parse_string
    from mailrider.proc.common import Options
    from mailrider.proc.scheduler import Scheduler
    from mailrider.queue import envelope as envmod

    cfg = parse_string("scheduler limit max-schedule 3 max-msg-batch-size 1\n")

    async def scenario() -> None:
        s = Scheduler(Options(statedir="/nonexistent"), cfg)
        await s.setup()
        q = _FakeQueue()
        s.peers["queue"] = q  # type: ignore[assignment]
        now = time.time()
        for msgid in [envmod.new_msgid() for _ in range(3)]:
            for _ in range(4):
                s.insert(m.SchedEntry(evpid=envmod.new_evpid(msgid), ctime=int(now)), now)
        task = asyncio.create_task(s.run())
        for _ in range(100):
            await asyncio.sleep(0.01)
        s.stopping.set()
        await asyncio.wait_for(task, 2)
        assert sum(len(b) for b in q.batches) == 12
        for b in q.batches:  # one pass = one SchedDue here: <= 3 envelopes, one message
            assert len(b) <= 3 and len({e[:8] for e in b}) == 1

    asyncio.run(scenario())


def test_the_results_of_a_batch_arrive_in_one_message_and_release_the_route() -> None:
    # SchedResults (docs/performance.md §7): each result as a SchedResult alone
    async def scenario(s: Scheduler, q: FakeQueue) -> None:
        now = time.time()
        ids = ["1" * 16, "2" * 16, "3" * 16, "4" * 16]
        for evpid in ids:
            s.insert(m.SchedEntry(evpid=evpid, type="mta", ctime=int(now), route="out:x"), now)
        await asyncio.sleep(0.1)
        assert sorted(q.due) == ids
        q.due.clear()
        await s.handle(_Chan(), wire(m.SchedResults(results=[  # type: ignore[arg-type]
            m.SchedResult(evpid=ids[1], status="tempfail", retry=1),
            m.SchedResult(evpid=ids[2], status="tempfail", retry=1),
            m.SchedResult(evpid=ids[3], status="permfail")])), [])
        assert set(s.entries) == set(ids[:3]) and s.inflight == 1
        assert s.retried == {"out:x": {ids[1], ids[2]}}
        await asyncio.sleep(0.1)
        assert q.due == []  # 400 s away
        # the success releases the two waiting on the route, and forgets itself
        await s.handle(_Chan(), wire(m.SchedResults(results=[  # type: ignore[arg-type]
            m.SchedResult(evpid=ids[0], status="ok", route="out:x")])), [])
        await asyncio.sleep(0.1)
        assert sorted(q.due) == ids[1:3]
        for evpid in ids[1:3]:
            s.result(m.SchedResult(evpid=evpid, status="ok", route="out:x"))
        assert s.entries == {} and s.retried == {} and s.inflight == 0

    run_with_queue(scenario)


def test_removed_envelopes_leave_the_route_index() -> None:
    async def scenario(s: Scheduler, q: FakeQueue) -> None:
        now = time.time()
        s.insert(m.SchedEntry(evpid="5" * 16, type="mta", ctime=int(now), retry=2,
                              route="out:z"), now)
        assert s.retried == {"out:z": {"5" * 16}}
        reply = s.command(m.Control(command="remove", args=["5" * 16]))
        assert reply is not None and reply.data == {"evpids": ["5" * 16]}
        assert s.entries == {} and s.retried == {}

    run_with_queue(scenario)


def test_a_malformed_result_is_refused_by_the_codec() -> None:
    for bad in ({"evpid": "nothex", "status": "ok"},
                {"evpid": "1" * 16, "status": "delivered"},
                {"evpid": "1" * 16, "status": "tempfail", "retry": -1},
                {"evpid": "1" * 16, "status": "tempfail", "retry": "1"}):
        with pytest.raises((ValueError, TypeError)):
            m.decode({"t": "SchedResults", "results": [bad]})
    ok = m.decode({"t": "SchedResults", "results": [{"evpid": "1" * 16, "status": "ok"}]})
    assert ok == m.SchedResults(results=[m.SchedResult(evpid="1" * 16, status="ok")])
