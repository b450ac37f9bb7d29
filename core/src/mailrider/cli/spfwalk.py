"""``mailriderctl spf walk``: the networks the SPF records of domains allow.

Reads one domain a line on stdin and prints, one a line, every address or
network its SPF record (RFC 7208) lets send, following ``include:``,
``redirect=``, ``a``, ``mx`` and ``exists:`` as smtpctl's walk does: what a
``table`` of trusted senders (a greylisting whitelist) is built from. Each
term is followed once (a record that includes itself ends); terms that fail
(``-``, ``~``) are skipped; names with macros cannot be walked and are
reported on stderr. DNS failures are skipped silently: the walk is best
effort, as smtpctl's is. At most :data:`LOOKUPS_MAX` queries are made.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from typing import TextIO

from mailrider import paths
from mailrider.dns import wire
from mailrider.dns.resolver import DNSError, Resolver, load_resolv_conf

#: bound on the DNS queries of one walk (hostile records could fan out)
LOOKUPS_MAX = 1000


class Walk:
    """One walk: the terms seen so far and the lines printed."""

    def __init__(self, resolver: Resolver, out: TextIO, err: TextIO) -> None:
        self.resolver = resolver
        self.out = out
        self.err = err
        self.seen: set[str] = set()
        self.lookups = 0

    async def _query(self, name: str, rtype: int) -> list[wire.RData]:
        if "%" in name:
            shown = "".join(c if c.isprintable() else "?" for c in name)
            print(f"spf walk: {shown} contains macros and can't be resolved", file=self.err)
            return []
        if self.lookups >= LOOKUPS_MAX:
            return []
        self.lookups += 1
        try:
            return list((await self.resolver.query(name, rtype)).records)
        except (DNSError, ValueError):
            return []

    def _print(self, text: str) -> None:
        print(text, file=self.out)

    async def domain(self, name: str) -> None:
        """Walk the SPF record(s) among the TXT records of ``name``."""
        for rdata in await self._query(name, wire.TXT):
            if not isinstance(rdata, tuple):
                continue
            text = b"".join(p for p in rdata if isinstance(p, bytes)).decode("ascii", "replace")
            if text[:7].lower() != "v=spf1 ":
                continue
            await self._record(name, text)

    async def _addresses(self, name: str, cidr4: str, cidr6: str) -> None:
        for rtype, cidr in ((wire.A, cidr4), (wire.AAAA, cidr6)):
            for rdata in await self._query(name, rtype):
                if isinstance(rdata, str):
                    self._print(f"{rdata}{cidr}")

    async def _record(self, owner: str, text: str) -> None:
        for term in text.split(" "):
            if not term or term.lower() == "v=spf1":
                continue
            term = term.removesuffix(".")
            if term in self.seen:
                continue
            self.seen.add(term)
            if term[0] in "-~":
                continue
            if term[0] in "+?":
                term = term[1:]
            low = term.lower()
            if low.startswith(("ip4:", "ip6:")):
                try:
                    ipaddress.ip_network(term[4:], strict=False)
                except ValueError:
                    continue
                self._print(term[4:])
            elif low == "a":
                await self._addresses(owner, "", "")
            elif low.startswith("a:"):
                name, c4, c6 = _target(term[2:])
                await self._addresses(name, c4, c6)
            elif low.startswith("exists:"):
                for rdata in await self._query(term[7:], wire.A):
                    if isinstance(rdata, str):
                        self._print(rdata)
            elif low.startswith("include:"):
                await self.domain(term[8:])
            elif low.startswith("redirect="):
                await self.domain(term[9:])
            elif low == "mx" or low.startswith("mx:"):
                name, c4, c6 = _target(term[3:]) if low != "mx" else (owner, "", "")
                for rdata in await self._query(name, wire.MX):
                    if isinstance(rdata, tuple) and len(rdata) == 2 \
                            and isinstance(rdata[1], str):
                        await self._addresses(rdata[1].rstrip("."), c4, c6)


def _target(text: str) -> tuple[str, str, str]:
    """``name[/cidr4][//cidr6]`` of an ``a:``/``mx:`` term: the name and the
    suffixes to print after its addresses."""
    name, _, rest = text.partition("/")
    c4, _, c6 = rest.partition("/")
    c6 = c6.lstrip("/")
    return name, f"/{c4}" if c4.isdigit() else "", f"/{c6}" if c6.isdigit() else ""


async def walk(resolver: Resolver, domains: list[str], out: TextIO, err: TextIO) -> None:
    w = Walk(resolver, out, err)
    for d in domains:
        await w.domain(d)


def main(stdin: TextIO, stdout: TextIO, resolv_conf: str | None = None) -> int:
    domains = [line.strip() for line in stdin if line.strip()]
    resolver = Resolver(load_resolv_conf(resolv_conf or paths.resolv_conf()))
    asyncio.run(walk(resolver, domains, stdout, sys.stderr))
    return 0
