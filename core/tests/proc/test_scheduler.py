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
