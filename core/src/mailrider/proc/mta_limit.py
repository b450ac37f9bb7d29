"""``mta limit``: how many connections the MTA may hold open, and how often it
may open them, per host, route, source, connector, relay and domain.

OpenSMTPD's names (docs/config.md §15): a *host* is one MX address, a
*source* one local address, a *route* a (source, host) pair, a *relay* one
action and destination (the relay host, or the recipient domain for MX
relaying), a *connector* a (relay, source) pair, a *domain* the recipient
domain. ``mta limit for domain D ...`` applies to mail for D on top of
the plain ``mta limit`` statements.

Invariants:

- Only configured limits bind: the daemon's own caps (``limits.MTA_*``)
  stay as they are without ``mta limit``.
- A connection counts from the moment it is opened until it is closed,
  idle ones included (they hold a socket at the peer). A session that finds
  a count full reuses an idle connection to its host when there is one,
  else quits an idle connection holding the full key, else waits for a
  release or a newly idle connection (:meth:`ConnLimiter.changed`).
- Counts are per pony process, the one that makes every outgoing
  connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailrider.config.model import Config

#: max-conn-per-KIND keywords, and conn-delay-KIND (seconds between two
#: connection starts for the same key)
KINDS = ("host", "route", "source", "connector", "relay", "domain")

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Limits:
    """The ``mta limit`` values for one destination domain."""

    max_conn: dict[str, int] = field(default_factory=dict)
    conn_delay: dict[str, int] = field(default_factory=dict)
    session_mail_max: int | None = None
    session_keepalive: int | None = None
    #: seconds between two transactions on one session
    session_transaction_delay: int | None = None
    #: failed transactions after which a session quits
    max_failures_per_session: int | None = None
    #: seconds after a connection on a route closed before the next one opens
    reconn_delay_route: int = 0
    #: 4 or 6: only addresses of that family (``inet4`` / ``inet6``)
    family: int | None = None


def limits_for(config: Config, domain: str) -> Limits:
    """The limits that apply to mail for ``domain`` (default, then per domain)."""
    merged = dict(config.mta_limits.get("", {}))
    merged.update(config.mta_limits.get(domain.lower(), {}))
    return Limits(
        max_conn={k: merged[f"max-conn-per-{k}"] for k in KINDS
                  if f"max-conn-per-{k}" in merged},
        conn_delay={k: merged[f"conn-delay-{k}"] for k in KINDS if f"conn-delay-{k}" in merged},
        session_mail_max=merged.get("session-mail-max"),
        session_keepalive=merged.get("session-keepalive"),
        session_transaction_delay=merged.get("session-transaction-delay"),
        max_failures_per_session=merged.get("max-failures-per-session"),
        reconn_delay_route=merged.get("reconn-delay-route", 0),
        family=merged.get("family"),
    )


def keys_for(lim: Limits, *, domain: str, relay: str, host: str, source: str
             ) -> list[tuple[Key, int, int]]:
    """(key, max connections or 0, delay between connections) for each kind
    configured; ``reconn-delay-route`` is the ("reconnect", route) key, whose
    delay counts from the last close on the route."""
    names = {
        "host": host, "route": f"{source}>{host}", "source": source,
        "connector": f"{relay}<{source}", "relay": relay, "domain": domain,
    }
    out = []
    for kind in KINDS:
        mx, delay = lim.max_conn.get(kind, 0), lim.conn_delay.get(kind, 0)
        if mx or delay:
            out.append(((kind, names[kind]), mx, delay))
    if lim.reconn_delay_route:
        out.append((("reconnect", names["route"]), 0, lim.reconn_delay_route))
    return out


class ConnLimiter:
    """Open-connection counts per key, with waiting for a free slot."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.count: dict[Key, int] = {}
        #: the most connections seen open at once, per kind (show stats, bench)
        self.peak: dict[str, int] = {}
        self._last_start: dict[Key, float] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._clock = clock

    def check(self, keys: list[tuple[Key, int, int]]) -> tuple[Key | None, float]:
        """(a key whose count is full, or None; seconds until every
        connection delay of ``keys`` has passed)."""
        for key, mx, _ in keys:
            if mx and self.count.get(key, 0) >= mx:
                return key, 0.0
        wait = max((self._last_start.get(k, -1e18) + d - self._clock()
                    for k, _, d in keys if d), default=0.0)
        return None, wait

    def take(self, keys: list[tuple[Key, int, int]]) -> None:
        """Count a new connection under ``keys`` (after :meth:`check` allowed it)."""
        now = self._clock()
        for key, _, delay in keys:
            n = self.count[key] = self.count.get(key, 0) + 1
            self.peak[key[0]] = max(self.peak.get(key[0], 0), n)
            if delay and key[0] != "reconnect":
                self._last_start[key] = now

    async def changed(self) -> None:
        """Return at the next release or :meth:`notify` (an idle connection
        that a waiting session may reuse or close)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def release(self, keys: list[tuple[Key, int, int]]) -> None:
        now = self._clock()
        for key, _, delay in keys:
            if key[0] == "reconnect" and delay:
                self._last_start[key] = now  # counts from the close
            n = self.count.get(key, 0) - 1
            if n > 0:
                self.count[key] = n
            else:
                self.count.pop(key, None)
        self.notify()
