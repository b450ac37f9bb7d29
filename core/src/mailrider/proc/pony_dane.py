"""DANE for pony's mta: which MX hosts must be authenticated by TLSA records,
and the check after STARTTLS (RFC 7672; docs/dane.md).

For an action with ``relay dane`` and an MX host whose name came from
authenticated DNS (the MX answer and the host's addresses, flagged by lka:
docs/dane.md §2), :meth:`Dane.policy` asks lka for the TLSA records of
``_<port>._tcp.<host>`` and decides:

- authenticated records, at least one usable: DANE applies (STARTTLS
  mandatory, the peer authenticated by :meth:`Dane.verify`);
- authenticated records, none usable: STARTTLS mandatory, the peer not
  authenticated (RFC 7672 §2.2, as Postfix's ``encrypt`` level);
- no records (NXDOMAIN, NODATA) or an unauthenticated answer: no DANE for
  that host; the action's TLS settings apply as before;
- the lookup failed (SERVFAIL, timeout): the host is unusable now
  (:class:`DaneFailed`, a 4xx), the next MX is tried (RFC 7672 §2.2.1);
  otherwise an attacker who can block TLSA queries would downgrade us.

A host whose name is not from authenticated DNS never has DANE. A failed
check is logged ``dane=fail reason=...`` and fails the host with ``4.7.5``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mailrider import log
from mailrider.crypto import dane, x509chain
from mailrider.ipc import messages as m

__all__ = ["Dane", "DaneFailed", "DanePolicy"]


class DaneFailed(Exception):
    """The host cannot be used now; ``text`` is the SMTP reply (4xx)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True, slots=True)
class DanePolicy:
    """What a host's TLSA records require (part of a connection's profile:
    connections are reused only under the same policy)."""

    base: str  # the TLSA base name: the MX host name
    #: the usable records; empty: TLS is mandatory but not authenticated
    records: tuple[dane.Tlsa, ...]


class Dane:
    """The DANE side of one pony's mta; ``ask`` sends lka a request."""

    def __init__(self, ask: Callable[[Any], Awaitable[Any]],
                 count: Callable[[str], None]) -> None:
        self.ask = ask
        self.count = count
        # bound once (at first use would be after the chroot; it loads nothing)
        self.check_path: dane.PathCheck | None = (
            x509chain.check_path if x509chain.available() else None)

    async def policy(self, host: str, authenticated: bool) -> DanePolicy | None:
        """The host's policy; None: no DANE. Raises :class:`DaneFailed`."""
        if not authenticated:
            self.count("mta.dane.insecure")
            return None
        reply = await self.ask(m.TlsaLookup(host=host))
        if not isinstance(reply, m.TlsaResult) or reply.status not in ("ok", "none",
                                                                       "tempfail"):
            raise DaneFailed("451 4.3.0 Bad reply from lka to a TLSA lookup")
        if reply.status == "tempfail":
            self.count("mta.dane.lookup_failed")
            log.warning("mta", "dane", host=host, dane="tempfail",
                        reason=f"TLSA lookup failed: {reply.text}")
            raise DaneFailed(f"451 4.4.3 TLSA lookup for {host} failed: {reply.text}")
        if reply.status == "none" or not reply.authentic:
            self.count("mta.dane.none")
            return None
        records: list[dane.Tlsa] = []
        for text in reply.records:
            try:
                rec = dane.parse_tlsa(bytes.fromhex(text))
            except ValueError:
                continue
            if dane.usable(rec):
                records.append(rec)
        if not records:
            log.event("mta", "dane", host=host, dane="unusable",
                      reason="no usable TLSA record: TLS required, not authenticated")
        return DanePolicy(host.rstrip(".").lower(), tuple(records))

    def verify(self, policy: DanePolicy, ssl_object: object, session: str,
               relay: str) -> str:
        """After the handshake: "" when the peer is authenticated (or the
        policy only requires TLS), else why not; logged either way."""
        if not policy.records:
            return ""
        started = time.perf_counter()
        chain = x509chain.peer_chain(ssl_object) if ssl_object is not None else []
        outcome = dane.verify(policy.records, chain, [policy.base], self.check_path)
        took = f"{(time.perf_counter() - started) * 1000:.2f}ms"
        if outcome.ok and outcome.record is not None:
            self.count("mta.dane.pass")
            rec = outcome.record
            log.event("mta", "dane", session=session, relay=relay, dane="pass",
                      tlsa=f"{rec.usage} {rec.selector} {rec.mtype}", depth=outcome.depth,
                      took=took)
            return ""
        self.count("mta.dane.fail")
        log.warning("mta", "dane", session=session, relay=relay, dane="fail",
                    reason=outcome.reason, took=took)
        return outcome.reason
