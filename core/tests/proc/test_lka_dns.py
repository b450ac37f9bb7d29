"""lka's answers to pony's mta: MX order, implicit MX, null MX, failures (lka_dns)."""

from __future__ import annotations

import asyncio
from collections import Counter

from dnsserver import DNSServer
from mailrider.config.model import Config
from mailrider.dns import wire
from mailrider.dns.resolver import Resolver, ResolverConfig
from mailrider.ipc import messages as m
from mailrider.proc.lka_dns import ad_trusted, resolve, resolver_config, shuffle_equal, tlsa

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
    assert res.hosts[2] == [20, "mx2.example.test", ["2001:db8::2", "192.0.2.2"], False]


def test_equal_preferences_are_shuffled() -> None:
    firsts = Counter(shuffle_equal([(10, "a"), (10, "b"), (5, "c")])[1][1] for _ in range(200))
    assert set(firsts) == {"a", "b"} and min(firsts.values()) > 30
    assert all(shuffle_equal([(10, "a"), (10, "b"), (5, "c")])[0] == (5, "c")
               for _ in range(20))


def test_no_mx_means_the_domain_itself() -> None:
    res = ask(m.MxResolve(domain="nomx.test"))
    assert (res.status, res.hosts) == ("ok", [[0, "nomx.test", ["192.0.2.9"], False]])


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
    assert (res.status, res.hosts) == ("ok", [[0, "127.0.0.1", ["127.0.0.1"], False]])


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


# -- DANE: authenticated answers and TLSA lookups (docs/dane.md §2) -----------------

SIGNED = {
    ("signed.test", wire.MX): [(10, "mx.signed.test"), (20, "mx.insecure.test")],
    ("mx.signed.test", wire.A): ["192.0.2.10"],
    ("mx.insecure.test", wire.A): ["192.0.2.11"],
    ("_25._tcp.mx.signed.test", wire.TLSA): [bytes([3, 1, 1]) + b"\x11" * 32],
    ("_25._tcp.mx.insecure.test", wire.TLSA): [bytes([3, 1, 1]) + b"\x22" * 32],
    ("_25._tcp.empty.signed.test", wire.A): ["192.0.2.12"],
}


def dane_ask(msg: m.MxResolve | m.TlsaLookup, trusted: bool, unsigned: set[str] = set(),
             behave: tuple[str, ...] = ()) -> m.MxResult | m.TlsaResult:
    async def scenario() -> m.MxResult | m.TlsaResult:
        async with DNSServer(SIGNED, ad=True) as srv:  # type: ignore[arg-type]
            srv.unsigned = unsigned
            if behave:
                srv.behave(behave[0], *behave[1:])
            r = Resolver(ResolverConfig(nameservers=[srv.address], timeout=0.3, attempts=1))
            if isinstance(msg, m.TlsaLookup):
                return await tlsa(r, msg, 25, trusted)
            return await resolve(r, msg, trusted)

    out = asyncio.run(scenario())
    # what pony decodes is what lka encoded
    return m.decode(m.encode(out))  # type: ignore[no-any-return]


def test_authentic_mx_and_addresses_are_flagged_per_host() -> None:
    res = dane_ask(m.MxResolve(domain="signed.test"), True, unsigned={"mx.insecure.test"})
    assert isinstance(res, m.MxResult) and res.authentic
    assert [(h[1], h[3]) for h in res.hosts] == [("mx.signed.test", True),
                                                ("mx.insecure.test", False)]


def test_ad_bit_of_an_untrusted_resolver_counts_for_nothing() -> None:
    res = dane_ask(m.MxResolve(domain="signed.test"), False)
    assert isinstance(res, m.MxResult) and not res.authentic
    assert [h[3] for h in res.hosts] == [False, False]


def test_unsigned_mx_makes_no_host_authentic() -> None:
    res = dane_ask(m.MxResolve(domain="signed.test"), True, unsigned={"signed.test"})
    assert isinstance(res, m.MxResult) and not res.authentic
    assert [h[3] for h in res.hosts] == [False, False]


def test_tlsa_records_authentic_unsigned_none_and_failure() -> None:
    res = dane_ask(m.TlsaLookup(host="mx.signed.test"), True)
    assert res == m.TlsaResult("ok", records=["030101" + "11" * 32], authentic=True)
    res = dane_ask(m.TlsaLookup(host="mx.insecure.test"), True,
                   unsigned={"_25._tcp.mx.insecure.test"})
    assert isinstance(res, m.TlsaResult) and res.status == "ok" and not res.authentic
    assert dane_ask(m.TlsaLookup(host="mx.signed.test"), False) == m.TlsaResult(
        "ok", records=["030101" + "11" * 32], authentic=False)
    # NODATA (the name exists) and NXDOMAIN: no TLSA
    assert isinstance(r := dane_ask(m.TlsaLookup(host="empty.signed.test"), True),
                      m.TlsaResult) and r.status == "none" and r.authentic
    assert dane_ask(m.TlsaLookup(host="nowhere.test"), True).status == "none"  # type: ignore[union-attr]
    res = dane_ask(m.TlsaLookup(host="mx.signed.test"), True,
                   behave=("_25._tcp.mx.signed.test", "servfail"))
    assert isinstance(res, m.TlsaResult) and res.status == "tempfail"


def test_tlsa_query_name_is_made_by_lka_only() -> None:
    for host in ("_25._tcp.x", "a b", "x..y", "", "a" * 254, "-bad.test", "x\\046y", "ä.test"):
        res = dane_ask(m.TlsaLookup(host=host), True)
        if host == "_25._tcp.x":
            # a legal name: still asked under _25._tcp. (lka prefixes it)
            assert isinstance(res, m.TlsaResult) and res.status == "none"
            continue
        assert res == m.TlsaResult("tempfail", text="not a host name"), host


def test_ad_trusted_only_for_loopback_or_trust_ad() -> None:
    loop = ResolverConfig(nameservers=[("127.0.0.1", 53), ("::1", 53)])
    remote = ResolverConfig(nameservers=[("127.0.0.1", 53), ("192.0.2.53", 53)])
    assert ad_trusted(Config(), loop)
    assert not ad_trusted(Config(), remote)
    assert ad_trusted(Config(resolver_trust_ad=True), remote)


def test_tlsa_host_of_another_type_is_refused() -> None:
    res = dane_ask(m.TlsaLookup(host=25), True)  # type: ignore[arg-type]
    assert res == m.TlsaResult("tempfail", text="not a host name")
