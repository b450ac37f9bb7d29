"""The bounded worker pool: runs off the event loop, refuses past its bound."""

from __future__ import annotations

import asyncio
import threading

import pytest
from mailrider.errors import TempFail
from mailrider.proc.workers import Busy, WorkerPool


def test_runs_in_a_worker_and_bounds_what_waits() -> None:
    release = threading.Event()
    loop_thread: list[int] = []

    def blocking(x: int) -> tuple[int, int]:
        release.wait(10)
        return x * 2, threading.get_ident()

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        pool = WorkerPool(threads=2, pending_max=3, name="t")
        tasks = [asyncio.create_task(pool.run(blocking, i)) for i in range(3)]
        await asyncio.sleep(0)
        assert pool.pending == 3
        with pytest.raises(Busy) as info:
            await pool.run(blocking, 9)
        assert isinstance(info.value, TempFail)
        # the loop is not blocked while the workers are
        await asyncio.wait_for(asyncio.sleep(0.01), 5)
        release.set()
        results = await asyncio.gather(*tasks)
        assert [r for r, _ in results] == [0, 2, 4]
        assert all(ident != loop_thread[0] for _, ident in results)
        assert pool.pending == 0
        assert (await pool.run(blocking, 5))[0] == 10
        pool.close()

    asyncio.run(main())


def test_a_caller_that_stops_waiting_still_counts_until_its_thread_is_done() -> None:
    release = threading.Event()

    async def main() -> None:
        pool = WorkerPool(threads=1, pending_max=1, name="t")
        task = asyncio.create_task(pool.run(release.wait, 10))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        with pytest.raises(Busy):
            await pool.run(release.wait, 10)
        release.set()
        for _ in range(500):
            if pool.pending == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.pending == 0
        pool.close()

    asyncio.run(main())
