"""Rule matching for one envelope (docs/config.md §8), done by lka.

Rules are tried in file order; the first whose every condition holds wins.
A condition asks a table with the service and key of docs/table-protocol.md §8. A
table that cannot answer raises TempFail, which stops the evaluation: the
recipient gets a 4xx, never a wrong 5xx.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailrider.config.model import Condition, Config, Match
from mailrider.table.base import normalise_key
from mailrider.table.registry import TableSet


@dataclass(frozen=True, slots=True)
class Envelope:
    ip: str  # client address text, "local" for the local socket
    local_socket: bool
    helo: str
    tag: str
    sender: str  # "" for the null sender
    rcpt: str
    auth_user: str = ""
    tls: bool = False
    rdns: str = ""  # the client's reverse DNS name, "" when unknown or not looked up


async def _check(tables: TableSet, name: str | None, service: str, key: str) -> bool:
    if name is None:
        return False
    return await tables.get(name).check(service, normalise_key(service, key))


async def condition_holds(tables: TableSet, c: Condition, e: Envelope) -> bool:
    kind = c.kind
    rx = "regex" if c.regex else None
    if kind in ("from-any", "for-any"):
        ok = True
    elif kind == "from-local":
        ok = e.local_socket or await _check(tables, "localhost", "netaddr", e.ip)
    elif kind == "from-socket":
        ok = e.local_socket
    elif kind == "from-src":
        ok = await _check(tables, c.table, rx or "netaddr", e.ip)
    elif kind in ("from-mail-from", "mail-from"):
        ok = await _check(tables, c.table, rx or "mailaddr", e.sender)
    elif kind == "for-local":
        ok = await _check(tables, "localnames", "domain", e.rcpt.rpartition("@")[2])
    elif kind == "for-domain":
        ok = await _check(tables, c.table, rx or "domain", e.rcpt.rpartition("@")[2])
    elif kind in ("for-rcpt-to", "rcpt-to"):
        ok = await _check(tables, c.table, rx or "mailaddr", e.rcpt)
    elif kind == "tag":
        ok = bool(e.tag) and await _check(tables, c.table, rx or "string", e.tag)
    elif kind == "helo":
        ok = await _check(tables, c.table, rx or "domain", e.helo)
    elif kind in ("from-auth", "auth"):
        if not e.auth_user:
            ok = False
        elif c.table is None:
            ok = True
        else:
            svc = rx or ("mailaddr" if "@" in e.auth_user else "string")
            ok = await _check(tables, c.table, svc, e.auth_user)
    elif kind == "tls":
        ok = e.tls
    elif kind == "from-rdns":
        if c.table is None:
            ok = bool(e.rdns)
        else:
            # docs/table-protocol.md §8: OpenSMTPD asks netaddr with the host name (sic);
            # we ask domain, so that wildcard domains work as they read
            ok = bool(e.rdns) and await _check(tables, c.table, rx or "domain", e.rdns)
    else:
        # the support check refuses configurations with other conditions
        ok = False
    return ok != c.negate


async def match_rule(config: Config, tables: TableSet, e: Envelope) -> Match | None:
    for rule in config.matches:
        for c in rule.conditions:
            if not await condition_holds(tables, c, e):
                break
        else:
            return rule
    return None
