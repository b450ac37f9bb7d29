"""lka's answers to pony's mta: MX order, implicit MX, null MX, failures (lka_dns)."""

from __future__ import annotations

import asyncio
from collections import Counter

from dnsserver import DNSServer
from mailrider.config.model import Config
from mailrider.dns import wire
from mailrider.dns.resolver import Resolver, ResolverConfig
from mailrider.ipc import messages as m
from mailrider.proc.lka_dns import resolve, resolver_config, shuffle_equal

ZONE = {
    ("example.test", wire.MX): [(20, "mx2.example.test"), (10, "mx1.example.test"),
                                (10, "mx1b.example.test")],
    ("mx1.example.test", wire.A): ["192.0.2.1"],
    ("mx1b.example.test", wire.A): ["192.0.2.3"],
    ("mx2.example.test", wire.A): ["192.0.2.2"],
    ("mx2.example.test", wire.AAAA): ["2001:db8::2"],
    ("nullmx.test", wire.MX): [(0, ".")],
    ("nomx.test", wire.A): ["192.0.2.9"],
    ("deadmx.test", wire.MX): [(10, "gone.deadmx.test"), (20, "mx1.example.test")],
}


def ask(msg: m.MxResolve, zone: dict = ZONE, behave: tuple[str, ...] = ()) -> m.MxResult:
    async def scenario() -> m.MxResult:
        async with DNSServer(zone) as srv:
            if behave:
                srv.behave(behave[0], *behave[1:])
            r = Resolver(ResolverConfig(nameservers=[srv.address], timeout=0.3, attempts=1))
            return await resolve(r, msg)

    return asyncio.run(scenario())


def test_mx_in_preference_order_with_addresses() -> None:
    res = ask(m.MxResolve(domain="example.test"))
    assert res.status == "ok"
    assert [h[0] for h in res.hosts] == [10, 10, 20]
    assert {h[1] for h in res.hosts[:2]} == {"mx1.example.test", "mx1b.example.test"}
    assert res.hosts[2] == [20, "mx2.example.test", ["2001:db8::2", "192.0.2.2"]]


def test_equal_preferences_are_shuffled() -> None:
    firsts = Counter(shuffle_equal([(10, "a"), (10, "b"), (5, "c")])[1][1] for _ in range(200))
    assert set(firsts) == {"a", "b"} and min(firsts.values()) > 30
    assert all(shuffle_equal([(10, "a"), (10, "b"), (5, "c")])[0] == (5, "c")
               for _ in range(20))


def test_no_mx_means_the_domain_itself() -> None:
    res = ask(m.MxResolve(domain="nomx.test"))
    assert (res.status, res.hosts) == ("ok", [[0, "nomx.test", ["192.0.2.9"]]])


def test_null_mx_is_permanent_556() -> None:
    res = ask(m.MxResolve(domain="nullmx.test"))
    assert res.status == "permfail" and res.text.startswith("556 5.1.10 ")


def test_unknown_domain_is_permanent() -> None:
    res = ask(m.MxResolve(domain="nowhere.test"))
    assert res.status == "permfail" and res.text.startswith("550 5.1.2 ")


def test_mx_without_address_is_skipped() -> None:
    res = ask(m.MxResolve(domain="deadmx.test"))
    assert res.status == "ok" and [h[1] for h in res.hosts] == ["mx1.example.test"]


def test_servfail_is_temporary() -> None:
    res = ask(m.MxResolve(domain="example.test"), behave=("example.test", "servfail"))
    assert res.status == "tempfail" and res.text.startswith("451 4.4.3 ")


def test_relay_host_literal_needs_no_dns() -> None:
    res = ask(m.MxResolve(host="127.0.0.1"), zone={})
    assert (res.status, res.hosts) == ("ok", [[0, "127.0.0.1", ["127.0.0.1"]]])


def test_resolver_statements_override_resolv_conf() -> None:
    c = Config(resolver_nameservers=[("127.0.0.1", 5353)], resolver_timeout=2.0,
               resolver_attempts=3)
    rc = resolver_config(c)
    assert (rc.nameservers, rc.timeout, rc.attempts) == ([("127.0.0.1", 5353)], 2.0, 3)


def test_resolver_and_mta_port_statements() -> None:
    import pytest
    from mailrider.config.parser import parse_string
    from mailrider.errors import ConfigError

    c = parse_string("resolver nameserver 127.0.0.1 port 5353\nresolver nameserver ::1\n"
                     "resolver timeout 2\nresolver attempts 3\nmta port 2525\n")
    assert c.resolver_nameservers == [("127.0.0.1", 5353), ("::1", 53)]
    assert (c.resolver_timeout, c.resolver_attempts, c.mta_port) == (2.0, 3, 2525)
    with pytest.raises(ConfigError, match="invalid nameserver address"):
        parse_string("resolver nameserver example.org\n")
