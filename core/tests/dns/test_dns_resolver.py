"""The stub resolver against the loopback test server (never the system's)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from dnsserver import (
    DNSServer,
    malformed_bad_rdlength,
    malformed_compression_loop,
    malformed_garbage,
    malformed_pointer_out_of_bounds,
    malformed_truncated_rr,
)
from mailrider import paths
from mailrider.dns import wire
from mailrider.dns.resolver import (
    DNSTempError,
    NullMX,
    NXDomain,
    Resolver,
    ResolverConfig,
    load_resolv_conf,
)
from mailrider.dns.wire import SOAData

T = TypeVar("T")

ZONE: dict[tuple[str, int], list[wire.RData]] = {
    ("example.test", wire.MX): [(20, "mx2.example.test"), (10, "mx1.example.test")],
    ("mx1.example.test", wire.A): ["192.0.2.1"],
    ("mx1.example.test", wire.AAAA): ["2001:db8::1"],
    ("mx2.example.test", wire.A): ["192.0.2.2"],
    ("nullmx.test", wire.MX): [(0, ".")],
    ("nomx.test", wire.A): ["192.0.2.9"],
    ("www.example.test", wire.CNAME): ["web.example.test"],
    ("web.example.test", wire.CNAME): ["mx1.example.test"],
    ("loop1.test", wire.CNAME): ["loop2.test"],
    ("loop2.test", wire.CNAME): ["loop1.test"],
    ("dangling.test", wire.CNAME): ["gone.test"],
    ("1.2.0.192.in-addr.arpa", wire.PTR): ["mx1.example.test"],
    ("9.2.0.192.in-addr.arpa", wire.PTR): ["liar.test"],
    ("liar.test", wire.A): ["192.0.2.200"],
    ("8.2.0.192.in-addr.arpa", wire.PTR): ["broken.test"],
    (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
        wire.PTR,
    ): ["mx1.example.test"],
    ("host.corp.test", wire.A): ["192.0.2.50"],
    ("big.test", wire.TXT): [(b"x" * 200,)] * 10,
}


def run(factory: Callable[[DNSServer], Awaitable[T]], **kw: object) -> T:
    """Start a server with ZONE, run ``factory(server)``, stop the server."""

    async def main() -> T:
        async with DNSServer(ZONE, **kw) as srv:  # type: ignore[arg-type]
            return await factory(srv)

    return asyncio.run(main())


def resolver(srv: DNSServer, **kw: object) -> Resolver:
    cfg = ResolverConfig(nameservers=[srv.address], timeout=0.3, attempts=1, **kw)  # type: ignore[arg-type]
    return Resolver(cfg)


# ------------------------------------------------------------------ basics


def test_mx_sorted_by_preference() -> None:
    async def t(srv: DNSServer) -> list[tuple[int, str]]:
        return await resolver(srv).mx("Example.TEST")

    assert run(t) == [(10, "mx1.example.test"), (20, "mx2.example.test")]


def test_query_answer_fields_and_edns() -> None:
    async def t(srv: DNSServer) -> tuple[object, list[int | None]]:
        ans = await resolver(srv).query("mx2.example.test", wire.A)
        return ans, srv.edns

    ans, edns = run(t)
    assert ans.records == ["192.0.2.2"]  # type: ignore[attr-defined]
    assert ans.ttl == 300 and ans.rcode == wire.NOERROR  # type: ignore[attr-defined]
    assert ans.authentic is False  # type: ignore[attr-defined]
    assert edns == [1232]


def test_authentic_follows_ad_bit() -> None:
    async def t(srv: DNSServer) -> bool:
        return (await resolver(srv).query("mx2.example.test", wire.A)).authentic

    assert run(t, ad=True) is True


def test_null_mx() -> None:
    async def t(srv: DNSServer) -> None:
        with pytest.raises(NullMX):
            await resolver(srv).mx("nullmx.test")

    run(t)


def test_nxdomain_and_nodata() -> None:
    async def t(srv: DNSServer) -> list[tuple[int, str]]:
        r = resolver(srv)
        with pytest.raises(NXDomain):
            await r.mx("nowhere.test")
        with pytest.raises(NXDomain):
            await r.addresses("nowhere.test")
        return await r.mx("nomx.test")  # the name exists, no MX: NODATA

    assert run(t) == []


def test_addresses_v6_first_and_families() -> None:
    async def t(srv: DNSServer) -> tuple[list[str], list[str], list[str]]:
        r = resolver(srv)
        return (
            await r.addresses("mx1.example.test"),
            await r.addresses("mx1.example.test", inet6=False),
            await r.addresses("[2001:db8::5]"),
        )

    both, v4, literal = run(t)
    assert both == ["2001:db8::1", "192.0.2.1"]
    assert v4 == ["192.0.2.1"]
    assert literal == ["2001:db8::5"]


def test_addresses_partial_failure_keeps_the_answer() -> None:
    async def t(srv: DNSServer) -> list[str]:
        srv.behave("mx2.example.test", lambda q: b"" if q.questions[0].rtype == wire.AAAA else
                   wire.encode_message(srv.answer(q)))
        return await resolver(srv).addresses("mx2.example.test")

    assert run(t) == ["192.0.2.2"]


def test_servfail_is_temporary() -> None:
    async def t(srv: DNSServer) -> None:
        srv.behave("example.test", "servfail")
        with pytest.raises(DNSTempError):
            await resolver(srv).mx("example.test")

    run(t)


def test_nxdomain_rcode_mode() -> None:
    async def t(srv: DNSServer) -> None:
        srv.behave("mx1.example.test", "nxdomain")
        with pytest.raises(NXDomain):
            await resolver(srv).query("mx1.example.test", wire.A)

    run(t)


# --------------------------------------------------------- transport paths


def test_truncated_answer_retried_over_tcp() -> None:
    async def t(srv: DNSServer) -> tuple[list[wire.RData], list[str]]:
        srv.behave("big.test", "truncate")
        ans = await resolver(srv).query("big.test", wire.TXT)
        return ans.records, [tr for _, _, tr in srv.queries]

    records, transports = run(t)
    assert len(records) == 10 and records[0] == (b"x" * 200,)
    assert transports == ["udp", "tcp"]


def test_use_tcp_config() -> None:
    async def t(srv: DNSServer) -> list[str]:
        await resolver(srv, use_tcp=True).query("mx1.example.test", wire.A)
        return [tr for _, _, tr in srv.queries]

    assert run(t) == ["tcp"]


def test_source_ports_and_ids_vary() -> None:
    ports: list[int] = []
    ids: list[int] = []

    async def t(srv: DNSServer) -> None:
        orig = srv._handle_udp

        def spy(data: bytes, addr: tuple[str, int]) -> None:
            ports.append(addr[1])
            ids.append(wire.decode_message(data).header.id)
            orig(data, addr)

        srv._handle_udp = spy  # type: ignore[method-assign]
        r = resolver(srv)
        for _ in range(8):
            await r.query("mx1.example.test", wire.A)
            r.flush_cache()

    run(t)
    assert len(ports) == 8
    assert len(set(ports)) > 1 and len(set(ids)) > 1


@pytest.mark.parametrize("bad", ["wrong_id", "wrong_question", "spoof_port", "not_response"])
def test_mismatched_reply_ignored_then_real_one_taken(bad: str) -> None:
    async def t(srv: DNSServer) -> list[wire.RData]:
        srv.behave("mx1.example.test", bad, "ok")
        return (await resolver(srv).query("mx1.example.test", wire.A)).records

    assert run(t) == ["192.0.2.1"]


@pytest.mark.parametrize("bad", ["wrong_id", "wrong_question", "spoof_port", "drop"])
def test_only_mismatched_replies_time_out(bad: str) -> None:
    async def t(srv: DNSServer) -> float:
        srv.behave("mx1.example.test", bad)
        start = time.monotonic()
        with pytest.raises(DNSTempError):
            await resolver(srv).query("mx1.example.test", wire.A)
        return time.monotonic() - start

    elapsed = run(t)
    assert 0.25 < elapsed < 3


@pytest.mark.parametrize(
    "hostile",
    [
        malformed_compression_loop,
        malformed_pointer_out_of_bounds,
        malformed_truncated_rr,
        malformed_bad_rdlength,
        malformed_garbage,
    ],
)
def test_malformed_replies_are_ignored(hostile: Callable[[wire.Message], bytes]) -> None:
    async def t(srv: DNSServer) -> tuple[list[wire.RData], float]:
        srv.behave("mx1.example.test", hostile, "ok")
        r = resolver(srv)
        ans = await r.query("mx1.example.test", wire.A)
        # Only hostile replies: a typed temporary failure, in bounded time.
        srv.behave("mx2.example.test", hostile)
        start = time.monotonic()
        with pytest.raises(DNSTempError):
            await r.query("mx2.example.test", wire.A)
        return ans.records, time.monotonic() - start

    records, elapsed = run(t)
    assert records == ["192.0.2.1"] and elapsed < 3


def test_retries_across_nameservers_and_attempts() -> None:
    async def main() -> tuple[list[wire.RData], int, int]:
        async with DNSServer(ZONE) as bad, DNSServer(ZONE) as good:
            bad.behave("mx1.example.test", "drop")
            good.behave("mx1.example.test", "servfail")
            cfg = ResolverConfig(
                nameservers=[bad.address, good.address], timeout=0.2, attempts=2
            )
            r = Resolver(cfg)
            with pytest.raises(DNSTempError):
                await r.query("mx1.example.test", wire.A)
            tried = (bad.count("mx1.example.test"), good.count("mx1.example.test"))
            good.behave("mx1.example.test", "ok")
            ans = await r.query("mx1.example.test", wire.A)
            return ans.records, *tried

    records, n_bad, n_good = asyncio.run(main())
    assert (n_bad, n_good) == (2, 2)
    assert records == ["192.0.2.1"]


def test_formerr_retried_without_edns() -> None:
    async def t(srv: DNSServer) -> tuple[list[wire.RData], list[int | None]]:
        srv.behave("mx1.example.test", lambda q: wire.encode_message(
            srv.answer(q, wire.FORMERR if q.additional else None)))
        ans = await resolver(srv).query("mx1.example.test", wire.A)
        return ans.records, srv.edns

    records, edns = run(t)
    assert records == ["192.0.2.1"] and edns == [1232, None]


# ------------------------------------------------------------------ CNAMEs


def test_cname_chain_in_one_answer() -> None:
    async def t(srv: DNSServer) -> tuple[object, int]:
        ans = await resolver(srv).query("www.example.test", wire.A)
        return ans, len(srv.queries)

    ans, n = run(t)
    assert ans.records == ["192.0.2.1"] and ans.canonical == "mx1.example.test"  # type: ignore[attr-defined]
    assert ans.name == "www.example.test" and n == 1  # type: ignore[attr-defined]


def test_cname_chain_requeried_when_server_does_not_chase() -> None:
    async def t(srv: DNSServer) -> tuple[list[wire.RData], list[str]]:
        ans = await resolver(srv).query("www.example.test", wire.A)
        return ans.records, [n for n, _, _ in srv.queries]

    records, names = run(t, chase_cnames=False)
    assert records == ["192.0.2.1"]
    assert names == ["www.example.test", "web.example.test", "mx1.example.test"]


@pytest.mark.parametrize("chase", [True, False])
def test_cname_loop_is_temporary_failure(chase: bool) -> None:
    async def t(srv: DNSServer) -> int:
        with pytest.raises(DNSTempError):
            await resolver(srv).query("loop1.test", wire.A)
        return len(srv.queries)

    assert run(t, chase_cnames=chase) <= 10


def test_long_cname_chain_bounded() -> None:
    zone = {(f"c{i}.test", wire.CNAME): [f"c{i + 1}.test"] for i in range(20)}
    zone[("c20.test", wire.A)] = ["192.0.2.20"]

    async def main() -> int:
        async with DNSServer(zone, chase_cnames=False) as srv:  # type: ignore[arg-type]
            with pytest.raises(DNSTempError):
                await resolver(srv).query("c0.test", wire.A)
            ok = await resolver(srv).query("c15.test", wire.A)
            assert ok.records == ["192.0.2.20"]
            return len(srv.queries)

    assert asyncio.run(main()) < 20


def test_dangling_cname_is_nxdomain() -> None:
    async def t(srv: DNSServer) -> None:
        with pytest.raises(NXDomain):
            await resolver(srv).query("dangling.test", wire.A)

    run(t)


# ------------------------------------------------------------- PTR, FCrDNS


def test_ptr_and_fcrdns() -> None:
    async def t(srv: DNSServer) -> list[object]:
        r = resolver(srv)
        srv.behave("broken.test", "servfail")
        return [
            await r.ptr("192.0.2.1"),
            await r.ptr("192.0.2.77"),
            await r.fcrdns("192.0.2.1"),
            await r.fcrdns("2001:db8::1"),
            await r.fcrdns("192.0.2.9"),  # PTR to a name with another address
            await r.fcrdns("192.0.2.77"),  # no PTR
            await r.fcrdns("192.0.2.8"),  # forward lookup fails
        ]

    assert run(t) == [
        "mx1.example.test",
        None,
        ("mx1.example.test", "pass"),
        ("mx1.example.test", "pass"),
        ("liar.test", "fail"),
        (None, "fail"),
        ("broken.test", "error"),
    ]


def test_fcrdns_error_when_ptr_lookup_fails() -> None:
    async def t(srv: DNSServer) -> tuple[str | None, str]:
        srv.behave("1.2.0.192.in-addr.arpa", "servfail")
        return await resolver(srv).fcrdns("192.0.2.1")

    assert run(t) == (None, "error")


# ------------------------------------------------------------------- cache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_positive_cache_respects_ttl() -> None:
    clock = Clock()

    async def t(srv: DNSServer) -> list[int]:
        srv.add("short.test", wire.A, "192.0.2.3", ttl=30)
        r = Resolver(ResolverConfig([srv.address], timeout=0.3), clock=clock)
        seen = []
        a = await r.query("short.test", wire.A)
        assert a.ttl == 30
        clock.now += 10
        b = await r.query("SHORT.test", wire.A)
        assert b.ttl == 20 and b.records == ["192.0.2.3"]
        seen.append(srv.count("short.test"))
        clock.now += 25
        await r.query("short.test", wire.A)
        seen.append(srv.count("short.test"))
        return seen

    assert run(t) == [1, 2]


def test_negative_cache_uses_soa_minimum() -> None:
    clock = Clock()

    async def t(srv: DNSServer) -> list[int]:
        r = Resolver(ResolverConfig([srv.address], timeout=0.3), clock=clock)
        counts = []
        for step in (0, 30, 31):  # SOA TTL 60, MINIMUM 45
            clock.now += step
            with pytest.raises(NXDomain):
                await r.query("nothing.test", wire.A)
            ans = await r.query("nomx.test", wire.MX)
            assert ans.records == []
            counts.append(srv.count("nothing.test") + srv.count("nomx.test"))
        return counts

    soa = SOAData("ns.test", "hostmaster.test", 1, 3600, 600, 86400, 45)
    assert run(t, soa=soa) == [2, 2, 4]


def test_no_negative_cache_without_soa() -> None:
    async def t(srv: DNSServer) -> int:
        r = resolver(srv)
        for _ in range(2):
            with pytest.raises(NXDomain):
                await r.query("nothing.test", wire.A)
        return srv.count("nothing.test")

    assert run(t, soa=None) == 2


def test_failures_not_cached() -> None:
    async def t(srv: DNSServer) -> list[wire.RData]:
        r = resolver(srv)
        srv.behave("mx1.example.test", "servfail")
        with pytest.raises(DNSTempError):
            await r.query("mx1.example.test", wire.A)
        srv.behave("mx1.example.test", "ok")
        return (await r.query("mx1.example.test", wire.A)).records

    assert run(t) == ["192.0.2.1"]


def test_cache_bounded_lru() -> None:
    async def t(srv: DNSServer) -> list[int]:
        for i in range(5):
            srv.add(f"h{i}.test", wire.A, f"192.0.2.{i}")
        r = resolver(srv, cache_size=3)
        for i in range(5):
            await r.query(f"h{i}.test", wire.A)
        await r.query("h4.test", wire.A)  # cached
        await r.query("h0.test", wire.A)  # evicted, asked again
        return [srv.count(f"h{i}.test") for i in range(5)]

    assert run(t) == [2, 1, 1, 1, 1]


def test_concurrent_identical_queries_share_one_request() -> None:
    async def t(srv: DNSServer) -> tuple[int, int]:
        r = resolver(srv)
        results = await asyncio.gather(*(r.mx("example.test") for _ in range(20)))
        assert all(x == results[0] for x in results)
        srv.behave("example.test", "servfail")
        r.flush_cache()
        failed = await asyncio.gather(*(r.mx("example.test") for _ in range(5)),
                                      return_exceptions=True)
        assert all(isinstance(x, DNSTempError) for x in failed)
        return srv.count("example.test"), len(r._inflight)

    assert run(t) == (2, 0)


def test_cancelled_waiter_does_not_cancel_the_others() -> None:
    async def t(srv: DNSServer) -> list[wire.RData]:
        srv.behave("mx1.example.test", "drop", "ok")  # the reply comes after nothing
        r = Resolver(ResolverConfig([srv.address], timeout=0.3))
        first = asyncio.ensure_future(r.query("mx1.example.test", wire.A))
        second = asyncio.ensure_future(r.query("mx1.example.test", wire.A))
        await asyncio.sleep(0.05)
        first.cancel()
        return (await second).records

    assert run(t) == ["192.0.2.1"]


# ------------------------------------------------------------------ search


def test_search_list_and_ndots() -> None:
    async def t(srv: DNSServer) -> tuple[list[wire.RData], list[str], list[str]]:
        r = resolver(srv, search=["corp.test", "other.test"])
        ans = await r.query("host", wire.A, search=True)
        first = [n for n, _, _ in srv.queries]
        srv.queries.clear()
        with pytest.raises(NXDomain):
            await r.query("host", wire.A)  # search=False: the name only
        return ans.records, first, [n for n, _, _ in srv.queries]

    records, first, plain = run(t)
    assert records == ["192.0.2.50"]
    assert first == ["host.corp.test"]
    assert plain == ["host"]


def test_search_dotted_name_tried_as_is_first() -> None:
    async def t(srv: DNSServer) -> list[str]:
        r = resolver(srv, search=["corp.test"])
        with pytest.raises(NXDomain):
            await r.query("a.b", wire.A, search=True)
        await r.query("mx1.example.test.", wire.A, search=True)  # absolute
        return [n for n, _, _ in srv.queries]

    assert run(t) == ["a.b", "a.b.corp.test", "mx1.example.test"]


def test_mx_never_uses_search() -> None:
    async def t(srv: DNSServer) -> list[str]:
        r = resolver(srv, search=["example.test"], ndots=5)
        with pytest.raises(NXDomain):
            await r.mx("mx1")
        return [n for n, _, _ in srv.queries]

    assert run(t) == ["mx1"]


# ------------------------------------------------------------ resolv.conf


def test_load_resolv_conf(tmp_path: Path) -> None:
    f = tmp_path / "resolv.conf"
    f.write_text(
        "# comment\n"
        "domain old.test\n"
        "nameserver 127.0.0.53\n"
        "nameserver fe80::1%eth0\n"
        "nameserver not-an-ip\n"
        "search a.test b.test.  ; trailing comment\n"
        "options ndots:3 timeout:2 attempts:4 rotate use-vc\n"
    )
    cfg = load_resolv_conf(str(f))
    assert cfg.nameservers == [("127.0.0.53", 53), ("fe80::1", 53)]
    assert cfg.search == ["a.test", "b.test"]
    assert (cfg.ndots, cfg.timeout, cfg.attempts, cfg.use_tcp) == (3, 2.0, 4, True)


def test_load_resolv_conf_defaults(tmp_path: Path) -> None:
    cfg = load_resolv_conf(str(tmp_path / "missing"))
    assert cfg.nameservers == [("127.0.0.1", 53)] and cfg.search == []
    assert (cfg.timeout, cfg.attempts, cfg.ndots, cfg.use_tcp) == (5.0, 2, 1, False)
    assert paths.RESOLV_CONF == "/etc/resolv.conf"


def test_resolver_needs_a_nameserver() -> None:
    with pytest.raises(ValueError):
        Resolver(ResolverConfig(nameservers=[]))
