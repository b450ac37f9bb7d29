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
            s.insert({"evpid": evpid, "type": "mda", "ctime": int(now)}, now)
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
                s.insert({"evpid": envmod.new_evpid(msgid), "type": "mda",
                          "ctime": int(now)}, now)
        task = asyncio.create_task(s.run())
        for _ in range(100):
            await asyncio.sleep(0.01)
        s.stopping.set()
        await asyncio.wait_for(task, 2)
        assert sum(len(b) for b in q.batches) == 12
        for b in q.batches:  # one pass = one SchedDue here: <= 3 envelopes, one message
            assert len(b) <= 3 and len({e[:8] for e in b}) == 1

    asyncio.run(scenario())
