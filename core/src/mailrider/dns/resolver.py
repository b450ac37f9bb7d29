"""An asynchronous stub resolver (RFC 1034 5.3.1, RFC 1035, RFC 2308).

Invariants:

* Every UDP query uses a fresh socket (a new ephemeral source port, which
  Linux and the BSDs pick at random) and a random id from :mod:`secrets`.
  A reply counts only if it comes from the address and port queried,
  carries our id, is a response, and repeats our question (name compared
  case-insensitively, type and class).  Anything else is ignored and the
  wait goes on until the timeout (RFC 5452 9.1).
* A truncated (TC) reply is retried over TCP with the same server
  (RFC 1035 4.2.2 framing; RFC 7766).  Queries carry an EDNS0 OPT record
  advertising :data:`limits.DNS_UDP_PAYLOAD` octets (RFC 6891); a FORMERR
  reply makes the same server be asked once more without it.
* Outcomes are typed: NXDOMAIN raises :class:`NXDomain`; SERVFAIL,
  REFUSED, timeouts and unusable replies from every server raise
  :class:`DNSTempError`; NOERROR without records is an :class:`Answer`
  with no records (NODATA).  A "not found" is never confused with
  "the resolver is down".
* Positive answers are cached for their smallest TTL, negative ones
  (NXDOMAIN, NODATA) for the SOA-derived TTL of RFC 2308 5; answers with
  no SOA are not cached negatively.  The cache is bounded (LRU).
  Failures are never cached.
* Identical concurrent lookups share one request.
* CNAME chains are followed for at most :data:`limits.DNS_CNAME_MAX` hops
  and a loop is a temporary failure.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mailrider import limits, paths
from mailrider.dns import wire
from mailrider.dns.hosts import HostsFile
from mailrider.dns.wire import DNSFormatError, Message, Question, RData, SOAData, name_key
from mailrider.errors import MailriderError

__all__ = [
    "Answer",
    "DNSError",
    "DNSTempError",
    "NXDomain",
    "NullMX",
    "Resolver",
    "ResolverConfig",
    "load_resolv_conf",
]


class DNSError(MailriderError):
    """Base of the resolver's failures."""


class NXDomain(DNSError):
    """The name does not exist (RCODE 3): a permanent answer."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name}: no such domain")
        self.name = name


class DNSTempError(DNSError):
    """No usable answer now (SERVFAIL, timeout, bad replies): try later."""


class NullMX(DNSError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail."""

    def __init__(self, domain: str) -> None:
        super().__init__(f"{domain}: domain does not accept mail (null MX)")
        self.domain = domain


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """Where and how to ask; :func:`load_resolv_conf` builds one from resolv.conf."""

    nameservers: list[tuple[str, int]] = field(default_factory=lambda: [("127.0.0.1", 53)])
    search: list[str] = field(default_factory=list)
    timeout: float = limits.DNS_TIMEOUT
    attempts: int = limits.DNS_ATTEMPTS
    ndots: int = 1
    use_tcp: bool = False
    cache_size: int = limits.DNS_CACHE_MAX
    edns_payload: int = limits.DNS_UDP_PAYLOAD


@dataclass(frozen=True, slots=True)
class Answer:
    """The records of type ``rtype`` for ``name``, after CNAMEs were followed.

    ``canonical`` is the name the records belong to; ``ttl`` is the time
    the answer stays valid; ``authentic`` repeats the AD bit, meaningful
    only when the path to the resolver is trusted (RFC 6698 / RFC 4035).
    """

    name: str
    rtype: int
    records: list[RData]
    ttl: int
    rcode: int
    authentic: bool = False
    canonical: str = ""


def load_resolv_conf(path: str = paths.RESOLV_CONF) -> ResolverConfig:
    """Read resolv.conf(5): ``nameserver``, ``search``/``domain``, ``options``.

    As the C library does, the last of ``search``/``domain`` wins and a
    file without a nameserver means the local host.  A missing file gives
    the defaults.
    """
    servers: list[tuple[str, int]] = []
    search: list[str] = []
    timeout = limits.DNS_TIMEOUT
    attempts = limits.DNS_ATTEMPTS
    ndots = 1
    use_tcp = False
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        key, args = words[0], words[1:]
        if key == "nameserver" and args:
            host = args[0].split("%", 1)[0]  # drop an IPv6 zone index
            try:
                ipaddress.ip_address(host)
            except ValueError:
                continue
            if len(servers) < 3:  # resolv.conf(5): MAXNS
                servers.append((host, 53))
        elif key == "domain" and args:
            search = [args[0].rstrip(".")]
        elif key == "search":
            search = [a.rstrip(".") for a in args if a.rstrip(".")][:6]
        elif key == "options":
            for opt in args:
                name, _, value = opt.partition(":")
                if name == "use-vc":
                    use_tcp = True
                    continue
                if not value.isdigit():
                    continue
                if name == "timeout":
                    timeout = float(min(max(int(value), 1), 30))
                elif name == "attempts":
                    attempts = min(max(int(value), 1), 5)
                elif name == "ndots":
                    ndots = min(int(value), 15)
    return ResolverConfig(
        nameservers=servers or [("127.0.0.1", 53)],
        search=search,
        timeout=timeout,
        attempts=attempts,
        ndots=ndots,
        use_tcp=use_tcp,
    )


class _NX:
    """A cached NXDOMAIN."""

    __slots__ = ()


_NXMARK = _NX()
_TEMP_RCODES = frozenset({wire.SERVFAIL, wire.NOTIMP, wire.REFUSED, wire.FORMERR})


class _UDP(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]] | OSError] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        host, port = addr[0], addr[1]
        if isinstance(host, str) and isinstance(port, int):
            self.queue.put_nowait((data, (host, port)))

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            self.queue.put_nowait(exc)


def _same_addr(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return a == b


def _matches(msg: Message, qid: int, question: Question) -> bool:
    if not msg.header.qr or msg.header.id != qid or msg.header.opcode != 0:
        return False
    if len(msg.questions) != 1:
        return False
    q = msg.questions[0]
    return (
        name_key(q.name) == name_key(question.name)
        and q.rtype == question.rtype
        and q.rclass == question.rclass
    )


class Resolver:
    """An asynchronous stub resolver; see the module docstring."""

    def __init__(
        self, config: ResolverConfig, *, clock: Callable[[], float] = time.monotonic,
        hosts: HostsFile | None = None,
    ) -> None:
        if not config.nameservers:
            raise ValueError("no nameserver configured")
        self._config = config
        self._clock = clock
        self._hosts = hosts
        self._cache: OrderedDict[tuple[str, int], tuple[float, Answer | _NX]] = OrderedDict()
        self._inflight: dict[tuple[str, int], asyncio.Future[Answer]] = {}

    @property
    def config(self) -> ResolverConfig:
        return self._config

    def flush_cache(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------- lookups

    async def query(self, name: str, rtype: int, *, search: bool = False) -> Answer:
        """Look ``name`` up; with ``search`` the resolv.conf search list applies."""
        candidates = self._candidates(name, search)
        nodata: Answer | None = None
        for i, cand in enumerate(candidates):
            try:
                answer = await self._cached(cand, rtype)
            except NXDomain:
                if i == len(candidates) - 1 and nodata is None:
                    raise NXDomain(name) from None
                continue
            if answer.records or len(candidates) == 1:
                return answer
            nodata = nodata or answer
        if nodata is not None:
            return nodata
        raise NXDomain(name)  # pragma: no cover - the loop returns or raises

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        """MX records by preference (then name).  NODATA gives ``[]``: the
        caller then uses the domain itself (RFC 5321 5.1).  Raises
        :class:`NullMX` for a null MX (RFC 7505 3), :class:`NXDomain` or
        :class:`DNSTempError`."""
        return (await self.mx_answer(domain))[0]

    async def mx_answer(self, domain: str) -> tuple[list[tuple[int, str]], bool]:
        """:meth:`mx`, and whether the answer was authenticated (the AD bit
        on every step: RFC 7672 §2.2.1 needs it before MX names are used)."""
        answer = await self.query(domain, wire.MX, search=False)
        out: list[tuple[int, str]] = []
        for rec in answer.records:
            if isinstance(rec, tuple) and len(rec) == 2 and isinstance(rec[0], int):
                pref, host = rec
                assert isinstance(host, str)
                if host == ".":
                    raise NullMX(domain)
                out.append((pref, host))
        out.sort()
        return out, answer.authentic

    async def addresses(
        self, host: str, *, inet6: bool = True, inet4: bool = True, search: bool = False
    ) -> list[str]:
        """AAAA then A addresses of ``host`` (an IP literal is returned as is).

        Raises :class:`NXDomain` when the name does not exist, and
        :class:`DNSTempError` only when no family gave an answer.
        """
        return (await self.addresses_answer(host, inet6=inet6, inet4=inet4, search=search))[0]

    async def addresses_answer(
        self, host: str, *, inet6: bool = True, inet4: bool = True, search: bool = False
    ) -> tuple[list[str], bool]:
        """:meth:`addresses`, and whether every family's answer was
        authenticated (RFC 7672 §2.2.2); an IP literal is not."""
        try:
            return [str(ipaddress.ip_address(host.strip("[]")))], False
        except ValueError:
            pass
        types = ([wire.AAAA] if inet6 else []) + ([wire.A] if inet4 else [])
        results = await asyncio.gather(
            *(self.query(host, t, search=search) for t in types), return_exceptions=True
        )
        out: list[str] = []
        temp: BaseException | None = None
        answered = False
        authentic = True
        nx = 0
        for res in results:
            if isinstance(res, Answer):
                answered = True
                authentic = authentic and res.authentic
                out += [r for r in res.records if isinstance(r, str)]
            elif isinstance(res, NXDomain):
                nx += 1
            elif isinstance(res, DNSError):
                temp = res
            else:
                raise res
        authentic = authentic and answered and nx == 0 and temp is None
        if out or (answered and temp is None):
            return out, authentic
        if nx == len(results):
            raise NXDomain(host)
        if temp is not None:
            raise DNSTempError(str(temp))
        return out, False

    async def ptr(self, ip: str) -> str | None:
        """The first PTR name of ``ip``, or None when there is none."""
        names = await self._ptr_names(ip)
        return names[0] if names else None

    async def fcrdns(self, ip: str) -> tuple[str | None, str]:
        """Forward-confirmed reverse DNS: ``(name, "pass"|"fail"|"error")``.

        "pass" when a PTR name of ``ip`` resolves back to ``ip``; "error"
        when DNS failed temporarily on the way; "fail" otherwise. An address
        the hosts file names is answered from the file alone, as the C
        library answers it (``hosts: files dns``): no query is sent.
        """
        if self._hosts is not None:
            local = self._hosts.fcrdns(ip)
            if local is not None:
                return local
        addr = ipaddress.ip_address(ip)
        try:
            names = await self._ptr_names(ip)
        except DNSTempError:
            return None, "error"
        if not names:
            return None, "fail"
        error = False
        for name in names[: limits.DNS_PTR_MAX]:
            try:
                found = await self.addresses(
                    name, inet6=addr.version == 6, inet4=addr.version == 4
                )
            except NXDomain:
                continue
            except DNSTempError:
                error = True
                continue
            if any(ipaddress.ip_address(a) == addr for a in found):
                return name, "pass"
        return names[0], "error" if error else "fail"

    async def _ptr_names(self, ip: str) -> list[str]:
        rev = ipaddress.ip_address(ip).reverse_pointer
        try:
            answer = await self.query(rev, wire.PTR, search=False)
        except NXDomain:
            return []
        return [r for r in answer.records if isinstance(r, str) and r != "."]

    def _candidates(self, name: str, search: bool) -> list[str]:
        if name.endswith(".") or not search or not self._config.search:
            return [name.rstrip(".") or "."]
        listed = [f"{name}.{d}" for d in self._config.search]
        if name.count(".") >= self._config.ndots:
            return [name, *listed]
        return [*listed, name]

    # --------------------------------------------------------------- cache

    async def _cached(self, name: str, rtype: int) -> Answer:
        key = (name_key(name), rtype)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None:
            expires, value = hit
            if expires > now:
                self._cache.move_to_end(key)
                if isinstance(value, _NX):
                    raise NXDomain(name)
                return Answer(
                    value.name,
                    value.rtype,
                    list(value.records),
                    max(0, int(expires - now)),
                    value.rcode,
                    value.authentic,
                    value.canonical,
                )
            del self._cache[key]
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._fetch(name, rtype, key))
            self._inflight[key] = fut
            fut.add_done_callback(lambda f: self._done(key, f))
        return await asyncio.shield(fut)

    def _done(self, key: tuple[str, int], fut: asyncio.Future[Answer]) -> None:
        if self._inflight.get(key) is fut:
            del self._inflight[key]
        if not fut.cancelled():
            fut.exception()  # retrieved: waiters that left must not cause a warning

    def _store(self, key: tuple[str, int], ttl: int, value: Answer | _NX) -> None:
        if ttl <= 0 or self._config.cache_size <= 0:
            return
        if isinstance(value, Answer):
            value = replace(value, records=list(value.records))  # callers may mutate theirs
        self._cache[key] = (self._clock() + ttl, value)
        self._cache.move_to_end(key)
        while len(self._cache) > self._config.cache_size:
            self._cache.popitem(last=False)

    async def _fetch(self, name: str, rtype: int, key: tuple[str, int]) -> Answer:
        """Resolve ``name`` following CNAMEs, then cache the outcome."""
        current = name
        seen = {name_key(name)}
        ttl = limits.DNS_TTL_MAX
        authentic = True
        for _ in range(limits.DNS_CNAME_MAX + 1):
            msg = await self._exchange(current, rtype)
            authentic = authentic and msg.header.ad
            # Follow the chain inside this answer first.
            records: list[RData] = []
            while True:
                here = name_key(current)
                owned = [rr for rr in msg.answers if name_key(rr.name) == here]
                matching = [rr for rr in owned if rr.rtype == rtype]
                if matching:
                    ttl = min(ttl, *(rr.ttl for rr in matching))
                    records = [rr.data for rr in matching]
                    break
                cname = next((rr for rr in owned if rr.rtype == wire.CNAME), None)
                if cname is None or not isinstance(cname.data, str):
                    break
                target = cname.data
                if name_key(target) in seen or len(seen) > limits.DNS_CNAME_MAX:
                    raise DNSTempError(f"{name}: CNAME loop or chain too long")
                seen.add(name_key(target))
                ttl = min(ttl, cname.ttl)
                current = target
            if records or rtype == wire.CNAME:
                answer = Answer(name, rtype, records, ttl, msg.header.rcode, authentic, current)
                self._store(key, ttl, answer)
                return answer
            if msg.header.rcode == wire.NXDOMAIN:
                neg = self._negative_ttl(msg, ttl)
                self._store(key, neg, _NXMARK)
                raise NXDomain(name)
            if name_key(current) != name_key(msg.questions[0].name) and not any(
                rr.rtype == wire.SOA for rr in msg.authority
            ):
                # The chain left this answer without an end: ask for the target.
                continue
            answer = Answer(name, rtype, [], 0, msg.header.rcode, authentic, current)
            neg = self._negative_ttl(msg, ttl)
            self._store(key, neg, answer)
            return Answer(name, rtype, [], neg, msg.header.rcode, authentic, current)
        raise DNSTempError(f"{name}: CNAME chain too long")

    @staticmethod
    def _negative_ttl(msg: Message, ttl: int) -> int:
        """RFC 2308 5: min(SOA TTL, SOA MINIMUM), 0 (uncached) without a SOA."""
        for rr in msg.authority:
            if rr.rtype == wire.SOA and isinstance(rr.data, SOAData):
                return min(rr.ttl, rr.data.minimum, ttl, limits.DNS_NEG_TTL_MAX)
        return 0

    # ----------------------------------------------------------- transport

    async def _exchange(self, name: str, rtype: int) -> Message:
        """One question to the servers, in order, ``attempts`` rounds."""
        cfg = self._config
        question = Question(name, rtype)
        last = "no answer"
        for _ in range(max(1, cfg.attempts)):
            for server in cfg.nameservers:
                try:
                    msg = await self._ask(server, question)
                except (TimeoutError, OSError, DNSFormatError, EOFError) as exc:
                    last = f"{server[0]}#{server[1]}: {type(exc).__name__} {exc}".strip()
                    continue
                if msg.header.rcode in (wire.NOERROR, wire.NXDOMAIN):
                    return msg
                last = f"{server[0]}#{server[1]}: rcode {msg.header.rcode}"
        raise DNSTempError(f"{name}: {last}")

    async def _ask(self, server: tuple[str, int], question: Question) -> Message:
        cfg = self._config
        payload: int | None = cfg.edns_payload
        for _ in range(2):
            qid = secrets.randbelow(0x10000)
            query = wire.encode_query(qid, question.name, question.rtype, edns_payload=payload)
            if cfg.use_tcp:
                msg = await self._tcp(server, query, qid, question)
            else:
                msg = await self._udp(server, query, qid, question)
                if msg.header.tc:
                    msg = await self._tcp(server, query, qid, question)
            # RFC 6891 7: FORMERR without OPT: the server predates EDNS.
            if (
                msg.header.rcode == wire.FORMERR
                and payload is not None
                and not any(rr.rtype == wire.OPT for rr in msg.additional)
            ):
                payload = None
                continue
            return msg
        return msg

    async def _udp(
        self, server: tuple[str, int], query: bytes, qid: int, question: Question
    ) -> Message:
        loop = asyncio.get_running_loop()
        host, port = server
        family = 6 if ":" in host else 4
        local = ("::", 0) if family == 6 else ("0.0.0.0", 0)
        transport, proto = await loop.create_datagram_endpoint(_UDP, local_addr=local)
        try:
            transport.sendto(query, (host, port))
            async with asyncio.timeout(self._config.timeout):
                while True:
                    item = await proto.queue.get()
                    if isinstance(item, OSError):
                        raise item
                    data, (src, sport) = item
                    if sport != port or not _same_addr(src, host):
                        continue  # RFC 5452 9.1: not from the server asked
                    try:
                        msg = wire.decode_message(data)
                    except DNSFormatError:
                        continue
                    if _matches(msg, qid, question):
                        return msg
        finally:
            transport.close()

    async def _tcp(
        self, server: tuple[str, int], query: bytes, qid: int, question: Question
    ) -> Message:
        async with asyncio.timeout(self._config.timeout):
            reader, writer = await asyncio.open_connection(server[0], server[1])
            try:
                writer.write(struct.pack("!H", len(query)) + query)
                await writer.drain()
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                data = await reader.readexactly(size)
            except asyncio.IncompleteReadError as exc:
                raise EOFError("connection closed by the server") from exc
            finally:
                writer.close()
        msg = wire.decode_message(data)
        if not _matches(msg, qid, question):
            raise DNSFormatError("TCP reply does not match the query")
        return msg
