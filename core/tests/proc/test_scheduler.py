import asyncio
import time
from typing import Any

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
    import asyncio

    from mailrider.config.model import Config
    from mailrider.proc.common import Options
    from mailrider.proc.scheduler import Scheduler

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

def _scheduler(ttl: int = 3600) -> tuple[Any, Any]:
    from fakepeer import FakePeer
    from mailrider.config.model import Config
    from mailrider.proc.common import Options
    from mailrider.proc.scheduler import Scheduler

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
    from fakepeer import until, wire
    from mailrider import limits
    from mailrider.ipc import messages as m

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
    from mailrider.ipc import messages as m

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
