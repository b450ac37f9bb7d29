"""MTA-STS (RFC 8461) in pony's mta: policy discovery, fetch, cache (docs/mta-sts.md).

For a relay action with ``mta-sts`` that routes by MX, :meth:`MtaSts.plan`
says before the first connection which policy applies to the recipient
domain; pony_mta then keeps only the MX hosts the policy names (mode
``enforce``), requires verified TLS to them, and in mode ``testing`` logs
what would have failed and delivers as without a policy.

- Discovery: the ``_mta-sts.<domain>`` TXT records, through lka (lka owns
  DNS: :class:`~mailrider.ipc.messages.StsTxt`), read by
  :func:`mailrider.mtasts.txt_id`.
- Fetch: ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` from the
  addresses lka resolves, certificate verified for that name against the
  relay action's ``ca`` (else the system store), no redirect, at most
  ``limits.MTA_STS_RESPONSE_MAX`` bytes in ``limits.MTA_STS_FETCH_TIMEOUT``
  seconds; concurrent deliveries to one domain share one fetch.
- Cache: in pony's memory (pony is chrooted and owns no disk; docs/mta-sts.md
  says why it does not persist), at most ``limits.MTA_STS_CACHE_MAX``
  policies, least recently used out first. A policy is fetched again when
  the TXT id changes or its max_age is over; while it is unexpired it is
  used when the TXT record is missing or the fetch fails (RFC 8461 §5.1).
  A failed fetch without a cached policy is not tried again for
  ``limits.MTA_STS_FAIL_HOLD`` seconds (the domain then has no policy).

The environment variable ``MAILRIDER_MTA_STS_PORT`` replaces port 443, for
tests only (as ``mta port`` replaces 25).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mailrider import limits, log
from mailrider.config.model import Action, Config
from mailrider.errors import TempFail, plain_reason
from mailrider.ipc import messages as m
from mailrider.mtasts import Policy, PolicyError, policy_from_response, txt_id
from mailrider.proc.pony_tls import ca_context

Ask = Callable[[Any], Awaitable[Any]]
PORT_ENV = "MAILRIDER_MTA_STS_PORT"
#: the clock of max_age and of the hold after a failed fetch (tests move it)
clock = time.monotonic
_PATH = "/.well-known/mta-sts.txt"


@dataclass(frozen=True, slots=True)
class Cached:
    policy: Policy
    id: str
    expires: float  # clock()


@dataclass(slots=True)
class Plan:
    """The policy that applies to one delivery (None: no MTA-STS)."""

    domain: str
    policy: Policy | None = None
    id: str = ""

    @property
    def mode(self) -> str | None:
        """enforce or testing; None when no policy applies (or mode none)."""
        if self.policy is None or self.policy.mode == "none":
            return None
        return self.policy.mode

    def strict(self, host: str) -> bool:
        """Whether ``host`` is tried with STARTTLS required and its certificate
        verified for its name (a policy MX of an enforce or testing policy)."""
        return self.mode is not None and self.policy is not None and self.policy.matches(host)

    def select(self, names: list[str]) -> tuple[list[str], str | None]:
        """The MX names (in order) that may be tried, and the temporary
        failure when none may (enforce); testing logs and keeps them all."""
        mode, policy = self.mode, self.policy
        if mode is None or policy is None:
            return names, None
        keep = [n for n in names if policy.matches(n)]
        for n in dict.fromkeys(x for x in names if x not in keep):
            log.emit("mta", "mta-sts-check", {"mta-sts": mode, "domain": self.domain,
                                              "id": self.id, "host": n,
                                              "result": "mx-mismatch"},
                     level=logging.WARNING if mode == "enforce" else logging.INFO)
        if mode == "testing":
            return names, None
        if not keep:
            return [], (f"451 4.7.5 MTA-STS policy of {self.domain} (enforce, id {self.id}): "
                        "no MX host matches the policy")
        return keep, None

    def failed(self, host: str, ip: str, error: str) -> None:
        """A strict attempt failed at TLS (log: the reason, and in testing
        that the delivery goes on without the policy)."""
        if self.mode is None:
            return
        log.emit("mta", "mta-sts-check", {"mta-sts": self.mode, "domain": self.domain,
                                          "id": self.id, "host": host, "address": ip,
                                          "result": "tls-failed", "error": error},
                 level=logging.WARNING if self.mode == "enforce" else logging.INFO)


class MtaSts:
    """The policies of one pony's mta."""

    def __init__(self, config: Config, ask: Ask) -> None:
        self.config = config
        self.ask = ask
        self.cache: OrderedDict[tuple[str, str | None], Cached] = OrderedDict()
        self.held: dict[tuple[str, str | None, str], float] = {}
        self.fetching: dict[tuple[str, str | None], asyncio.Task[Cached | None]] = {}
        port = os.environ.get(PORT_ENV, "")
        self.port = int(port) if port.isdigit() and 0 < int(port) < 65536 else 443
        # built before the privilege drop: the CA files and the system store
        # are out of reach in the chroot
        self.contexts: dict[str | None, ssl.SSLContext] = {}
        for action in config.actions.values():
            if action.method == "relay" and action.relay.get("mta_sts"):
                ca = action.relay.get("ca")
                name = ca if isinstance(ca, str) else None
                if name not in self.contexts:
                    self.contexts[name] = self._context(name)

    def _context(self, ca_name: str | None) -> ssl.SSLContext:
        """A client context for the policy hosts, as pony_mta builds the relay
        ones: the action's ``ca`` (a file that cannot be read is logged and
        the system store used, as for the MX hosts), else the system store."""
        ctx = ca_context(self.config, ca_name)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    # -- the policy of a domain ---------------------------------------------------

    async def plan(self, action: Action, domain: str) -> Plan:
        """The policy for ``domain`` now (a Plan without policy when none applies)."""
        try:
            name = domain.rstrip(".").encode("idna").decode("ascii").lower()
        except UnicodeError:
            return Plan(domain)
        if not name or name.startswith("[") or len(name) > 240:
            return Plan(domain)  # a domain literal has no policy
        ca = action.relay.get("ca")
        cached = await self._policy(name, ca if isinstance(ca, str) else None)
        if cached is None:
            return Plan(domain)
        return Plan(domain, cached.policy, cached.id)

    async def _policy(self, domain: str, ca: str | None) -> Cached | None:
        key = (domain, ca)
        now = clock()
        cached = self.cache.get(key)
        if cached is not None:
            if cached.expires <= now:
                del self.cache[key]
                cached = None
            else:
                self.cache.move_to_end(key)
        try:
            reply = await self.ask(m.StsTxt(domain=domain))
        except TempFail:
            reply = None
        policy_id: str | None = None
        if isinstance(reply, m.StsTxtResult) and reply.status == "ok":
            try:
                policy_id = txt_id(list(reply.records))
            except PolicyError as exc:
                log.debug("mta", "mta-sts-txt", domain=domain, error=str(exc))
        if policy_id is None:
            return cached  # no (usable) record: a cached unexpired policy stays
        if cached is not None and cached.id == policy_id:
            return cached
        hold = (domain, ca, policy_id)
        if self.held.get(hold, 0.0) > now:
            return cached
        task = self.fetching.get(key)
        if task is None:
            task = asyncio.ensure_future(self._refresh(domain, ca, policy_id, cached))
            self.fetching[key] = task
            task.add_done_callback(lambda _t: self.fetching.pop(key, None))
        return await asyncio.shield(task)

    async def _refresh(self, domain: str, ca: str | None, policy_id: str,
                       cached: Cached | None) -> Cached | None:
        started = clock()
        try:
            policy = await self.fetch(domain, ca)
        except (PolicyError, TempFail, OSError, TimeoutError, ssl.SSLError) as exc:
            error = str(exc) if isinstance(exc, PolicyError | TempFail) else plain_reason(exc)
            log.warning("mta", "mta-sts-fetch-failed", domain=domain, id=policy_id,
                        error=error or type(exc).__name__,
                        cached=cached.id if cached is not None else "none")
            now = clock()
            self.held = {k: v for k, v in self.held.items() if v > now}
            if len(self.held) < limits.MTA_STS_CACHE_MAX:
                self.held[(domain, ca, policy_id)] = now + limits.MTA_STS_FAIL_HOLD
            return cached
        now = clock()
        entry = Cached(policy, policy_id, now + policy.max_age)
        key = (domain, ca)
        self.cache[key] = entry
        self.cache.move_to_end(key)
        while len(self.cache) > limits.MTA_STS_CACHE_MAX:
            self.cache.popitem(last=False)
        log.event("mta", "mta-sts-policy", domain=domain, id=policy_id, mode=policy.mode,
                  max_age=policy.max_age, mx=",".join(policy.mx) or "-",
                  ms=int((now - started) * 1000))
        return entry

    # -- the fetch ------------------------------------------------------------------

    async def fetch(self, domain: str, ca: str | None) -> Policy:
        """The policy at ``https://mta-sts.<domain>/.well-known/mta-sts.txt``."""
        host = f"mta-sts.{domain}"
        ctx = self.contexts.get(ca) or self.contexts.get(None)
        if ctx is None:  # an action without mta-sts never asks
            raise PolicyError("no TLS context for the policy fetch")
        async with asyncio.timeout(limits.MTA_STS_FETCH_TIMEOUT):
            reply = await self.ask(m.MxResolve(host=host))
            if not isinstance(reply, m.MxResult) or reply.status != "ok" or not reply.hosts:
                text = reply.text if isinstance(reply, m.MxResult) else "bad reply"
                raise PolicyError(f"{host}: {text}")
            addrs = [str(a) for h in reply.hosts for a in h[2]][:limits.MTA_MAX_HOSTS]
            last: Exception = PolicyError(f"no address for {host}")
            for ip in addrs:
                try:
                    raw = await self._get(ip, host, ctx)
                except (OSError, ssl.SSLError) as exc:
                    last = PolicyError(f"{host} [{ip}]: "
                                       f"{getattr(exc, 'reason', None) or plain_reason(exc)}")
                    continue
                return policy_from_response(raw)
            raise last

    async def _get(self, ip: str, host: str, ctx: ssl.SSLContext) -> bytes:
        reader, writer = await asyncio.open_connection(ip, self.port, ssl=ctx,
                                                       server_hostname=host)
        try:
            authority = host if self.port == 443 else f"{host}:{self.port}"
            writer.write(f"GET {_PATH} HTTP/1.1\r\nHost: {authority}\r\n"
                         "User-Agent: mailrider\r\nAccept: text/plain\r\n"
                         "Connection: close\r\n\r\n".encode("ascii"))
            await writer.drain()
            raw = bytearray()
            while True:
                chunk = await reader.read(16384)
                if not chunk:
                    break
                raw += chunk
                if len(raw) > limits.MTA_STS_RESPONSE_MAX:
                    raise PolicyError("policy response too large")
            return bytes(raw)
        finally:
            writer.close()
