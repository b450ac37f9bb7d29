"""``mta limit``: how many connections the MTA may hold open, and how often it
may open them, per host, route, source, connector, relay and domain.

OpenSMTPD's names (docs/config.md §8): a *host* is one MX address, a
*source* one local address, a *route* a (source, host) pair, a *relay* one
action and destination (the relay host, or the recipient domain for MX
relaying), a *connector* a (relay, source) pair, a *domain* the recipient
domain. ``mta limit for domain D ...`` applies to mail for D on top of
the plain ``mta limit`` statements.

Invariants:

- Only configured limits bind: the daemon's own caps (``limits.MTA_*``)
  stay as they are without ``mta limit``.
- A connection counts from the moment it is opened until it is closed,
  idle ones included (they hold a socket at the peer); a session waiting
  for a slot first closes an idle connection that holds the full key.
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
        family=merged.get("family"),
    )


def keys_for(lim: Limits, *, domain: str, relay: str, host: str, source: str
             ) -> list[tuple[Key, int, int]]:
    """(key, max connections or 0, delay between connections) for each kind configured."""
    names = {
        "host": host, "route": f"{source}>{host}", "source": source,
        "connector": f"{relay}<{source}", "relay": relay, "domain": domain,
    }
    out = []
    for kind in KINDS:
        mx, delay = lim.max_conn.get(kind, 0), lim.conn_delay.get(kind, 0)
        if mx or delay:
            out.append(((kind, names[kind]), mx, delay))
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

    def _blocking(self, keys: list[tuple[Key, int, int]]) -> Key | None:
        for key, mx, _ in keys:
            if mx and self.count.get(key, 0) >= mx:
                return key
        return None

    async def acquire(self, keys: list[tuple[Key, int, int]],
                      make_room: Callable[[Key], bool]) -> None:
        """Wait until every key has a free slot and its connection delay has
        passed, then take the slots. ``make_room(key)`` may start closing an
        idle connection holding ``key``; it returns True only when the slot
        is already free again."""
        loop = asyncio.get_running_loop()
        while True:
            blocked = self._blocking(keys)
            if blocked is None:
                wait = max((self._last_start.get(k, -1e18) + d - self._clock()
                            for k, _, d in keys if d), default=0.0)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
                continue
            if make_room(blocked):
                continue
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)
        now = self._clock()
        for key, _, delay in keys:
            n = self.count[key] = self.count.get(key, 0) + 1
            self.peak[key[0]] = max(self.peak.get(key[0], 0), n)
            if delay:
                self._last_start[key] = now

    def release(self, keys: list[tuple[Key, int, int]]) -> None:
        for key, _, _ in keys:
            n = self.count.get(key, 0) - 1
            if n > 0:
                self.count[key] = n
            else:
                self.count.pop(key, None)
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
