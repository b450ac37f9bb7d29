"""DNS for outgoing mail, done by lka for pony's mta (docs/processes.md §1: lka owns DNS).

One resolver (one cache, one set of sockets) serves every delivery; pony
asks over IPC once per attempt, which costs far less than the DNS round
trips the cache saves.

:func:`resolve` answers :class:`~mailrider.ipc.messages.MxResolve`:

- MX records in preference order, equal preferences shuffled (RFC 5321
  5.1), each with its addresses (AAAA then A); an MX host without
  addresses is skipped;
- no MX record (NODATA) means the domain itself is the only host, with
  preference 0 (RFC 5321 5.1 implicit MX);
- a null MX (RFC 7505) is a permanent failure ``556 5.1.10``; a domain
  that does not exist is ``550 5.1.2``; a DNS failure is temporary;
- with a resolver whose AD bit is trusted (:func:`ad_trusted`), whether the
  MX answer, and each host's address answers, were authenticated: DANE
  (docs/dane.md §2) uses only MX names from authenticated answers.

:func:`tlsa` answers :class:`~mailrider.ipc.messages.TlsaLookup`: the
TLSA records at ``_<mta port>._tcp.<host>`` (RFC 7672 §2.2), the name made
here from a host name that must be one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import re
from typing import Any

from mailrider.config.model import Config
from mailrider.dns import wire
from mailrider.dns.resolver import (
    DNSError,
    DNSTempError,
    NullMX,
    NXDomain,
    Resolver,
    ResolverConfig,
    load_resolv_conf,
)
from mailrider.ipc import messages as m


def resolver_config(config: Config) -> ResolverConfig:
    """The ``resolver`` statements, else /etc/resolv.conf."""
    base = load_resolv_conf() if not config.resolver_nameservers else ResolverConfig(
        nameservers=list(config.resolver_nameservers))
    changes: dict[str, Any] = {}
    if config.resolver_timeout is not None:
        changes["timeout"] = config.resolver_timeout
    if config.resolver_attempts is not None:
        changes["attempts"] = config.resolver_attempts
    return dataclasses.replace(base, **changes) if changes else base


def shuffle_equal(mxs: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Sort by preference, in random order within one preference (RFC 5321 5.1)."""
    keyed = [(pref, random.random(), host) for pref, host in mxs]
    keyed.sort()
    return [(pref, host) for pref, _, host in keyed]


def ad_trusted(config: Config, rconf: ResolverConfig) -> bool:
    """Whether the AD bit of the resolver's answers means anything: every
    nameserver is on loopback (a validating resolver on this host, as
    Postfix expects), or the configuration says ``resolver trust-ad``
    (docs/dane.md §2). The path to any other resolver is not authenticated."""
    if config.resolver_trust_ad:
        return True
    try:
        return all(ipaddress.ip_address(host).is_loopback for host, _ in rconf.nameservers)
    except ValueError:
        return False


async def resolve(resolver: Resolver, msg: m.MxResolve, trusted: bool = False) -> m.MxResult:
    if msg.host:
        try:
            addrs = await resolver.addresses(msg.host)
        except NXDomain:
            return m.MxResult("permfail", text=f"550 5.1.2 Relay host {msg.host} not found")
        except DNSError as exc:
            return m.MxResult("tempfail", text=f"451 4.4.3 DNS error for {msg.host}: {exc}")
        if not addrs:
            return m.MxResult("tempfail", text=f"451 4.4.3 No address for {msg.host}")
        return m.MxResult("ok", hosts=[[0, msg.host, addrs, False]])
    domain = msg.domain
    try:
        mxs, mx_secure = await resolver.mx_answer(domain)
    except NullMX:
        return m.MxResult("permfail", text="556 5.1.10 Domain does not accept mail (null MX)")
    except NXDomain:
        return m.MxResult("permfail", text=f"550 5.1.2 Domain {domain} not found")
    except DNSError as exc:
        return m.MxResult("tempfail", text=f"451 4.4.3 DNS error for {domain}: {exc}")
    authentic = trusted and mx_secure
    if not mxs:
        mxs = [(0, domain)]
    hosts: list[list[Any]] = []
    temp = ""
    for pref, host in shuffle_equal(mxs):
        try:
            addrs, secure = await resolver.addresses_answer(host)
        except NXDomain:
            continue
        except DNSTempError as exc:
            temp = str(exc)
            continue
        if addrs:
            hosts.append([pref, host, addrs, authentic and secure])
    if not hosts:
        if temp:
            return m.MxResult("tempfail", text=f"451 4.4.3 DNS error for {domain}: {temp}")
        return m.MxResult("tempfail", text=f"451 4.4.4 No address for any MX of {domain}")
    return m.MxResult("ok", hosts=hosts, authentic=authentic)


#: a host name as an MX record holds one: LDH labels (underscore tolerated)
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


async def tlsa(resolver: Resolver, msg: m.TlsaLookup, port: int,
               trusted: bool) -> m.TlsaResult:
    """The TLSA RRset of ``_<port>._tcp.<msg.host>`` (RFC 6698 §3, RFC 7672 §2.2)."""
    host = msg.host
    if not isinstance(host, str) or len(host) > 253 or not _HOSTNAME.fullmatch(host):
        return m.TlsaResult("tempfail", text="not a host name")
    name = f"_{port}._tcp.{host.rstrip('.')}"
    try:
        answer = await resolver.query(name, wire.TLSA)
    except NXDomain:
        return m.TlsaResult("none")
    except DNSError as exc:
        return m.TlsaResult("tempfail", text=str(exc)[:200])
    records = [r.hex() for r in answer.records if isinstance(r, bytes) and 4 <= len(r)
               and len(r) * 2 <= m.TLSA_HEX_MAX][:m.TLSA_MAX]
    authentic = trusted and answer.authentic
    if not records:
        return m.TlsaResult("none", authentic=authentic)
    return m.TlsaResult("ok", records=records, authentic=authentic)
