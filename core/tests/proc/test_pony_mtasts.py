"""pony's MTA-STS cache and plan (proc/pony_mtasts.py), with lka's answers and
the policy fetch stood in: RFC 8461 §5.1's rules (a new id fetches, a failed
fetch keeps the cached policy, a missing TXT record keeps it, expiry drops
it), the cache bound, one fetch for concurrent deliveries, the hold after a
failed fetch, and what Plan says per MX. The real fetch over HTTPS is
covered by core/tests/e2e/test_e2e_mtasts.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mailrider import limits
from mailrider.config import parse_string
from mailrider.errors import TempFail
from mailrider.ipc import messages as m
from mailrider.mtasts import Policy, PolicyError
from mailrider.proc import pony_mtasts
from mailrider.proc.pony_mtasts import MtaSts, Plan

ENFORCE = Policy("enforce", 3600, ("mx.a.test", "*.b.test"))


class Stand:
    """lka's TXT answers, and what each fetch returns or raises."""

    def __init__(self) -> None:
        self.txt: dict[str, m.StsTxtResult | Exception] = {}
        self.policies: dict[str, Policy | Exception] = {}
        self.fetches: list[str] = []
        self.delay = 0.0

    async def ask(self, msg: Any) -> Any:
        assert isinstance(msg, m.StsTxt)
        answer = self.txt.get(msg.domain, m.StsTxtResult("none"))
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def fetch(self, domain: str, ca: str | None) -> Policy:
        self.fetches.append(domain)
        await asyncio.sleep(self.delay)
        result = self.policies[domain]
        if isinstance(result, Exception):
            raise result
        return result


def make(stand: Stand) -> tuple[MtaSts, Any]:
    conf = parse_string("action a relay mta-sts\nmatch from any for any action a\n", "t.conf")
    sts = MtaSts(conf, stand.ask)
    sts.fetch = stand.fetch  # type: ignore[method-assign]
    return sts, conf.actions["a"]


def txt(policy_id: str) -> m.StsTxtResult:
    return m.StsTxtResult("ok", [f"v=STSv1; id={policy_id}"])


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_fetch_once_then_cached_until_the_id_changes() -> None:
    async def main() -> None:
        stand = Stand()
        sts, action = make(stand)
        stand.txt["a.test"] = txt("one")
        stand.policies["a.test"] = ENFORCE
        plan = await sts.plan(action, "A.test")
        assert (plan.mode, plan.id) == ("enforce", "one")
        await sts.plan(action, "a.test")
        assert stand.fetches == ["a.test"]
        stand.txt["a.test"] = txt("two")
        stand.policies["a.test"] = Policy("testing", 60, ("mx.a.test",))
        plan = await sts.plan(action, "a.test")
        assert (plan.mode, plan.id) == ("testing", "two")
        assert stand.fetches == ["a.test", "a.test"]

    run(main())


@pytest.mark.parametrize("failure", [PolicyError("HTTP status 503"), TempFail("lka gone"),
                                     OSError(111, "Connection refused"), TimeoutError()])
def test_failed_fetch_keeps_the_cached_policy(failure: Exception) -> None:
    async def main() -> None:
        stand = Stand()
        sts, action = make(stand)
        stand.txt["a.test"] = txt("one")
        stand.policies["a.test"] = ENFORCE
        await sts.plan(action, "a.test")
        stand.txt["a.test"] = txt("two")
        stand.policies["a.test"] = failure
        plan = await sts.plan(action, "a.test")
        assert (plan.mode, plan.id) == ("enforce", "one")
        # held: the same new id is not fetched again at once
        await sts.plan(action, "a.test")
        assert stand.fetches == ["a.test", "a.test"]

    run(main())


@pytest.mark.parametrize("answer", [
    m.StsTxtResult("none"), m.StsTxtResult("tempfail"),
    m.StsTxtResult("ok", ["v=STSv1; id=x", "v=STSv1; id=y"]),  # two records
    m.StsTxtResult("ok", ["v=STSv1; id=bad-id"]), TempFail("lka error"),
])
def test_no_usable_txt_keeps_the_cached_policy(answer: Any) -> None:
    async def main() -> None:
        stand = Stand()
        sts, action = make(stand)
        stand.txt["a.test"] = txt("one")
        stand.policies["a.test"] = ENFORCE
        await sts.plan(action, "a.test")
        stand.txt["a.test"] = answer
        plan = await sts.plan(action, "a.test")
        assert (plan.mode, plan.id) == ("enforce", "one")
        # and without a cached policy, it means no policy
        sts.cache.clear()
        assert (await sts.plan(action, "a.test")).mode is None
        assert stand.fetches == ["a.test"]

    run(main())


def test_failed_fetch_without_cache_is_no_policy() -> None:
    async def main() -> None:
        stand = Stand()
        sts, action = make(stand)
        stand.txt["a.test"] = txt("one")
        stand.policies["a.test"] = PolicyError("Content-Type text/html, not text/plain")
        assert (await sts.plan(action, "a.test")).mode is None
        assert not sts.cache

    run(main())


def test_expired_policy_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        stand = Stand()
        sts, action = make(stand)
        stand.txt["a.test"] = txt("one")
        stand.policies["a.test"] = Policy("enforce", 10, ("mx.a.test",))
        await sts.plan(action, "a.test")
        now = pony_mtasts.clock() + 11
        monkeypatch.setattr(pony_mtasts, "clock", lambda: now)
        stand.txt["a.test"] = m.StsTxtResult("none")
        assert (await sts.plan(action, "a.test")).mode is None
        assert not sts.cache

    run(main())


def test_concurrent_deliveries_share_one_fetch() -> None:
    async def main() -> None:
        stand = Stand()
        stand.delay = 0.05
        sts, action = make(stand)
        stand.txt["a.test"] = txt("one")
        stand.policies["a.test"] = ENFORCE
        plans = await asyncio.gather(*(sts.plan(action, "a.test") for _ in range(20)))
        assert {p.id for p in plans} == {"one"}
        assert stand.fetches == ["a.test"]

    run(main())


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MTA_STS_CACHE_MAX", 3)

    async def main() -> None:
        stand = Stand()
        sts, action = make(stand)
        for i in range(5):
            d = f"d{i}.test"
            stand.txt[d] = txt(f"id{i}")
            stand.policies[d] = ENFORCE
            await sts.plan(action, d)
        assert [k[0] for k in sts.cache] == ["d2.test", "d3.test", "d4.test"]

    run(main())


def test_domain_literals_and_bad_names_have_no_policy() -> None:
    async def main() -> None:
        stand = Stand()
        sts, action = make(stand)
        for domain in ("[192.0.2.1]", "", "a" * 250 + ".test"):
            assert (await sts.plan(action, domain)).mode is None
        assert stand.fetches == []

    run(main())


def test_plan_per_mx() -> None:
    plan = Plan("a.test", ENFORCE, "one")
    assert plan.strict("MX.a.test.") and plan.strict("x.b.test")
    assert not plan.strict("other.test")
    assert plan.select(["other.test", "mx.a.test"]) == (["mx.a.test"], None)
    names, refusal = plan.select(["other.test"])
    assert names == [] and refusal is not None and refusal.startswith("451 4.7.5 ")
    testing = Plan("a.test", Policy("testing", 1, ("mx.a.test",)), "t")
    assert testing.select(["other.test", "mx.a.test"]) == (["other.test", "mx.a.test"], None)
    assert testing.strict("mx.a.test") and not testing.strict("other.test")
    none = Plan("a.test", Policy("none", 1, ()), "n")
    assert none.mode is None and not none.strict("mx.a.test")
    assert none.select(["x.test"]) == (["x.test"], None)
    assert Plan("a.test").mode is None
