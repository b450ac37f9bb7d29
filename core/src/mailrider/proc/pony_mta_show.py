"""What pony's mta knows of the hosts, relays and routes it uses, for
``mailriderctl show hosts|relays|routes|hoststats`` and ``resume route``.

The lines have smtpctl's layout (mailriderctl(8)): a host is
``address name refcount=N nconn=N lastconn=DURATION``; a relay
``[relay:domain,port=N,proto] refcount=N ntask=N nconn=N lastconn=D timeout=- wait=``
(with ``,mta-sts=MODE:ID`` before the ``]`` when an MTA-STS policy applied);
a route ``ID. source <-> address (name) FLAGS nconn=N nerror=N penalty=N timeout=-``
with the flags N (new), D (disabled), Q (queued) and K (keepalive);
a host status ``domain|time|last error``. Every table is bounded
(:data:`ENTRIES_MAX`, oldest out first); nothing here decides anything.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

from mailrider.log import duration_text

#: bound on each table (hosts, relays, routes, host statuses)
ENTRIES_MAX = 4096


@dataclass(slots=True)
class _Host:
    name: str
    nconn: int = 0
    lastconn: float = 0.0


@dataclass(slots=True)
class _Relay:
    nconn: int = 0
    lastconn: float = 0.0


@dataclass(slots=True)
class _Route:
    ident: int
    new: bool = True
    nconn: int = 0
    nerror: int = 0
    penalty: int = 0
    disabled: bool = False


def relay_text(domain: str, port: int | None, proto: str, auth: str | None = None,
               mta_sts: str | None = None) -> str:
    """``[relay:domain,port=N,proto]`` as smtpctl shows a relay; ours after it:
    ``,mta-sts=MODE:ID`` when an MTA-STS policy applied (docs/mta-sts.md)."""
    scheme = {"smtp": "smtp", "smtp+tls": "smtp+tls", "smtps": "smtps",
              "smtp+notls": "smtp+notls", "lmtp": "lmtp"}.get(proto, "smtp")
    text = f"[relay:{domain}"
    if port:
        text += f",port={port}"
    text += f",{scheme}"
    if auth:
        text += f",auth={auth}"
    if mta_sts:
        text += f",mta-sts={mta_sts}"
    return text + "]"


def _bounded(table: dict[str, object]) -> None:
    while len(table) > ENTRIES_MAX:
        del table[next(iter(table))]


class MtaShow:
    """The mta's bookkeeping; see the module docstring."""

    def __init__(self) -> None:
        self.hosts: dict[str, _Host] = {}
        self.relays: dict[str, _Relay] = {}
        self.routes: dict[str, _Route] = {}
        self.hoststats: dict[str, tuple[int, str]] = {}
        self._next_route = 1
        #: the relay the current delivery task goes through (set per task)
        self.relay_of_task: contextvars.ContextVar[str] = contextvars.ContextVar(
            "relay_of_task", default="")

    def _route(self, src: str | None, ip: str, name: str) -> _Route:
        key = f"{src or '[]'} <-> {ip} ({name})"
        route = self.routes.get(key)
        if route is None:
            route = self.routes[key] = _Route(self._next_route)
            self._next_route += 1
            _bounded(self.routes)  # type: ignore[arg-type]
        return route

    def connected(self, relay: str, src: str | None, ip: str, name: str) -> str:
        """A connection is up; the relay text it counts under (for disconnected)."""
        now = time.time()
        relay = relay or f"[relay:{name},smtp]"
        host = self.hosts.setdefault(ip, _Host(name))
        host.nconn += 1
        host.lastconn = now
        _bounded(self.hosts)  # type: ignore[arg-type]
        r = self.relays.setdefault(relay, _Relay())
        r.nconn += 1
        r.lastconn = now
        route = self._route(src, ip, name)
        route.nconn += 1
        route.new = False
        return relay

    def disconnected(self, relay: str, src: str | None, ip: str, name: str) -> None:
        relay = relay or f"[relay:{name},smtp]"
        if ip in self.hosts:
            self.hosts[ip].nconn = max(0, self.hosts[ip].nconn - 1)
        if relay in self.relays:
            self.relays[relay].nconn = max(0, self.relays[relay].nconn - 1)
        route = self._route(src, ip, name)
        route.nconn = max(0, route.nconn - 1)

    def failed(self, src: str | None, ip: str, name: str, error: str) -> None:
        """A host could not be used: its route counts one more error."""
        self.hosts.setdefault(ip, _Host(name))
        route = self._route(src, ip, name)
        route.nerror += 1
        route.penalty += 1
        route.new = False

    def result(self, domain: str, error: str | None) -> None:
        """The last outcome for ``domain``: kept when it failed, forgotten when it worked."""
        if error is None:
            self.hoststats.pop(domain, None)
        else:
            self.hoststats.pop(domain, None)
            self.hoststats[domain] = (int(time.time()), error)
            _bounded(self.hoststats)  # type: ignore[arg-type]

    def resume(self, ident: int) -> int:
        """``resume route ID`` (0: every route): errors and penalty forgotten; how many."""
        n = 0
        for route in self.routes.values():
            if ident and route.ident != ident:
                continue
            route.disabled = False
            route.nerror = 0
            route.penalty = 0
            route.new = True
            n += 1
        return n

    def lines(self, what: str) -> list[str]:
        now = time.time()

        def ago(t: float) -> str:
            return duration_text(int(now - t)) if t else "-"

        if what == "hosts":
            return [f"{ip} {h.name} refcount={h.nconn} nconn={h.nconn} lastconn={ago(h.lastconn)}"
                    for ip, h in sorted(self.hosts.items())]
        if what == "relays":
            # ntask: mailrider queues no tasks per relay (the scheduler does)
            return [f"{text} refcount={r.nconn} ntask=0 nconn={r.nconn} "
                    f"lastconn={ago(r.lastconn)} timeout=- wait="
                    for text, r in sorted(self.relays.items())]
        if what == "routes":
            out = []
            for text, r in sorted(self.routes.items(), key=lambda kv: kv[1].ident):
                flags = ("N" if r.new else "-") + ("D" if r.disabled else "-") + "--"
                out.append(f"{r.ident}. {text} {flags} nconn={r.nconn} nerror={r.nerror} "
                           f"penalty={r.penalty} timeout=-")
            return out
        if what == "hoststats":
            return [f"{domain}|{t}|{error}" for domain, (t, error) in self.hoststats.items()]
        return []
