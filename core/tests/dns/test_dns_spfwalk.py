"""``mailriderctl spf walk`` against a DNS server on loopback.

What smtpctl's walk prints for the same records (OpenSMTPD 7.8 spfwalk.c):
ip4:/ip6: networks as written, the A and AAAA addresses of ``a``, ``a:``
and of the MX hosts of ``mx``, with the term's prefix length, ``include:``
and ``redirect=`` followed, failing terms (``-``/``~``) left out, each
term once, names with macros reported and skipped.
"""

from __future__ import annotations

import asyncio
import io

from dnsserver import DNSServer
from mailrider.cli import spfwalk
from mailrider.dns import wire
from mailrider.dns.resolver import Resolver, ResolverConfig

ZONE: dict[tuple[str, int], list[wire.RData]] = {
    ("example.test", wire.TXT): [
        (b"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx include:inc.test ",
         b"-ip4:198.51.100.1 ~all"),
        (b"google-site-verification=whatever",),
    ],
    ("example.test", wire.A): ["192.0.2.80"],
    ("example.test", wire.MX): [(10, "mx.example.test")],
    ("mx.example.test", wire.A): ["192.0.2.25"],
    ("mx.example.test", wire.AAAA): ["2001:db8::25"],
    ("inc.test", wire.TXT): [(b"v=spf1 a:out.inc.test/28 redirect=red.test "
                              b"include:example.test include:%{i}.macro.test",)],
    ("out.inc.test", wire.A): ["203.0.113.5"],
    ("red.test", wire.TXT): [(b"v=spf1 +ip4:198.51.100.0/25 ?exists:ex.test",)],
    ("ex.test", wire.A): ["127.0.0.2"],
}


def test_walk_prints_what_smtpctl_prints() -> None:
    out, err = io.StringIO(), io.StringIO()

    async def main() -> None:
        async with DNSServer(ZONE) as srv:
            resolver = Resolver(ResolverConfig(nameservers=[srv.address], timeout=0.5,
                                               attempts=1))
            await spfwalk.walk(resolver, ["example.test", "nx.test"], out, err)

    asyncio.run(main())
    assert sorted(out.getvalue().splitlines()) == sorted([
        "192.0.2.0/24", "2001:db8::/32", "192.0.2.80", "192.0.2.25", "2001:db8::25",
        "203.0.113.5/28", "198.51.100.0/25", "127.0.0.2",
    ])
    assert err.getvalue() == \
        "spf walk: %{i}.macro.test contains macros and can't be resolved\n"


def test_targets_with_prefix_lengths() -> None:
    assert spfwalk._target("h.test/24//64") == ("h.test", "/24", "/64")
    assert spfwalk._target("h.test//64") == ("h.test", "", "/64")
    assert spfwalk._target("h.test") == ("h.test", "", "")
