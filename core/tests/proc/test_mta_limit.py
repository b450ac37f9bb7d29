"""The MTA's connection limiter (proc/mta_limit.py), driven directly."""

from __future__ import annotations

import asyncio

from mailrider.proc.mta_limit import ConnLimiter


def test_counts_block_until_a_release_or_notify() -> None:
    async def scenario() -> None:
        lim = ConnLimiter()
        keys = [(("domain", "example.org"), 2, 0), (("host", "192.0.2.1"), 0, 0)]
        assert lim.check(keys) == (None, 0.0)
        lim.take(keys)
        lim.take(keys)
        assert lim.check(keys) == (("domain", "example.org"), 0.0)
        assert lim.count[("domain", "example.org")] == 2 and lim.peak["domain"] == 2
        waiter = asyncio.create_task(lim.changed())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        lim.release(keys)
        await asyncio.wait_for(waiter, 2)
        assert lim.check(keys) == (None, 0.0)
        waiter = asyncio.create_task(lim.changed())
        await asyncio.sleep(0.01)
        lim.notify()  # an idle connection appeared
        await asyncio.wait_for(waiter, 2)
        lim.release(keys)
        assert lim.count == {}

    asyncio.run(scenario())


def test_connection_delays() -> None:
    now = [100.0]
    lim = ConnLimiter(clock=lambda: now[0])
    keys = [(("relay", "out:example.org"), 0, 5)]
    lim.take(keys)
    assert lim.check(keys) == (None, 5.0)
    now[0] += 5
    assert lim.check(keys)[1] <= 0
    # reconn-delay-route counts from the close, not from the start
    rk = [(("reconnect", ">192.0.2.1"), 0, 3)]
    lim.take(rk)
    assert lim.check(rk)[1] <= 0
    now[0] += 10
    lim.release(rk)
    assert lim.check(rk) == (None, 3.0)
