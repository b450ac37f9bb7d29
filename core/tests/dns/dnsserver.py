"""A small authoritative DNS server for tests, on 127.0.0.1 (UDP and TCP).

It serves ``records`` (``{(name, rtype): [rdata, ...]}``) and can be told,
per query name, to misbehave: ``server.behave(name, *modes)`` where each
mode is one reply (or non-reply) sent for every query of that name, in
order:

``"ok"``            the correct answer
``"drop"``          nothing (the client times out)
``"truncate"``      over UDP an empty answer with TC set (TCP gets ``ok``)
``"wrong_id"``      the correct answer with another id
``"wrong_question"`` the correct answer to another question
``"not_response"``  the correct answer with QR clear
``"spoof_port"``    the correct answer, sent from another port
``"servfail"`` / ``"nxdomain"`` / ``"refused"`` / ``"formerr"``  that RCODE
a callable          ``f(query: Message) -> bytes``: raw bytes sent as is

With ``ad=True`` every answer has the AD bit set (a validating resolver
vouching for it, as the DANE tests need), except answers to the names in
``server.unsigned`` (an insecure delegation).

``malformed_*`` helpers build hostile replies that echo the query's id and
question.  Other tests (the MTA's) may import this module.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import cast

from mailrider.dns import wire
from mailrider.dns.wire import RR, Header, Message, Question, RData, SOAData, name_key

Mode = str | Callable[[Message], bytes]
Records = dict[tuple[str, int], list[RData]]

DEFAULT_SOA = SOAData("ns.test", "hostmaster.test", 1, 3600, 600, 86400, 60)


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server._handle_udp(data, addr)


class DNSServer:
    """See the module docstring.  Use ``async with DNSServer(records) as srv``."""

    def __init__(
        self,
        records: Records | None = None,
        *,
        ttl: int = 300,
        soa: SOAData | None = DEFAULT_SOA,
        soa_ttl: int = 60,
        chase_cnames: bool = True,
        ad: bool = False,
    ) -> None:
        self.records: Records = {
            (name_key(n), t): list(v) for (n, t), v in (records or {}).items()
        }
        self.ttl = ttl
        self.ttls: dict[tuple[str, int], int] = {}
        self.soa = soa
        self.soa_ttl = soa_ttl
        self.chase_cnames = chase_cnames
        self.ad = ad
        #: names answered without AD even when ``ad`` is set
        self.unsigned: set[str] = set()
        self.modes: dict[str, list[Mode]] = {}
        self.queries: list[tuple[str, int, str]] = []  # (name, type, "udp"|"tcp")
        self.edns: list[int | None] = []  # the OPT payload size of each query
        self.port = 0
        self._udp: _UDP | None = None
        self._spoof: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    # ---------------------------------------------------------------- control

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def behave(self, name: str, *modes: Mode) -> None:
        self.modes[name_key(name)] = list(modes)

    def add(self, name: str, rtype: int, *data: RData, ttl: int | None = None) -> None:
        self.records.setdefault((name_key(name), rtype), []).extend(data)
        if ttl is not None:
            self.ttls[(name_key(name), rtype)] = ttl

    def count(self, name: str, rtype: int | None = None) -> int:
        key = name_key(name)
        return sum(1 for n, t, _ in self.queries if n == key and rtype in (None, t))

    async def start(self) -> DNSServer:
        loop = asyncio.get_running_loop()
        for _ in range(50):
            transport, proto = await loop.create_datagram_endpoint(
                lambda: _UDP(self), local_addr=("127.0.0.1", 0)
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._handle_tcp, "127.0.0.1", port)
            except OSError:
                transport.close()
                continue
            self._udp = proto
            self.port = port
            break
        else:  # pragma: no cover
            raise RuntimeError("no free port for UDP and TCP")
        self._spoof, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        return self

    async def close(self) -> None:
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        if self._spoof is not None:
            self._spoof.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    async def __aenter__(self) -> DNSServer:
        return await self.start()

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---------------------------------------------------------------- answers

    def answer(self, query: Message, rcode: int | None = None) -> Message:
        """The authoritative answer to ``query``."""
        q = query.questions[0]
        ad = self.ad and name_key(q.name) not in {name_key(n) for n in self.unsigned}
        header = Header(query.header.id, qr=True, aa=True, rd=query.header.rd, ad=ad)
        soa = (
            (RR("test", wire.SOA, wire.CLASS_IN, self.soa_ttl, self.soa),)
            if self.soa is not None
            else ()
        )
        if rcode is not None:
            return Message(replace(header, rcode=rcode), (q,))
        answers: list[RR] = []
        current = name_key(q.name)
        for _ in range(12):
            found = self.records.get((current, q.rtype))
            if found:
                ttl = self.ttls.get((current, q.rtype), self.ttl)
                answers += [RR(current, q.rtype, wire.CLASS_IN, ttl, d) for d in found]
                break
            cname = self.records.get((current, wire.CNAME))
            if not cname or q.rtype == wire.CNAME:
                break
            target = cname[0]
            assert isinstance(target, str)
            ttl = self.ttls.get((current, wire.CNAME), self.ttl)
            answers.append(RR(current, wire.CNAME, wire.CLASS_IN, ttl, target))
            current = name_key(target)
            if not self.chase_cnames:
                return Message(header, (q,), tuple(answers))
        if answers and answers[-1].rtype == q.rtype:
            return Message(header, (q,), tuple(answers))
        exists = any(n == current for n, _ in self.records)
        if not exists:
            return Message(replace(header, rcode=wire.NXDOMAIN), (q,), tuple(answers), soa)
        return Message(header, (q,), tuple(answers), soa)

    def _replies(self, query: Message, tcp: bool) -> list[tuple[bytes, bool]]:
        """(bytes, from the spoofing socket) to send for ``query``."""
        q = query.questions[0]
        modes = self.modes.get(name_key(q.name), ["ok"])
        out: list[tuple[bytes, bool]] = []
        rcodes = {
            "servfail": wire.SERVFAIL,
            "nxdomain": wire.NXDOMAIN,
            "refused": wire.REFUSED,
            "formerr": wire.FORMERR,
        }
        for mode in modes:
            if callable(mode):
                out.append((mode(query), False))
                continue
            if mode == "drop":
                continue
            if mode in rcodes:
                out.append((wire.encode_message(self.answer(query, rcodes[mode])), False))
                continue
            msg = self.answer(query)
            if mode == "truncate" and not tcp:
                msg = Message(replace(msg.header, tc=True), msg.questions)
            elif mode == "wrong_id":
                msg = replace(msg, header=replace(msg.header, id=(msg.header.id + 1) & 0xFFFF))
            elif mode == "wrong_question":
                msg = replace(msg, questions=(Question("other.test", q.rtype),))
            elif mode == "not_response":
                msg = replace(msg, header=replace(msg.header, qr=False))
            elif mode not in ("ok", "truncate", "spoof_port"):
                raise ValueError(f"unknown mode {mode!r}")
            out.append((wire.encode_message(msg), mode == "spoof_port" and not tcp))
        return out

    def _parse(self, data: bytes, transport: str) -> Message | None:
        try:
            query = wire.decode_message(data)
        except wire.DNSFormatError:
            return None
        if len(query.questions) != 1:
            return None
        q = query.questions[0]
        self.queries.append((name_key(q.name), q.rtype, transport))
        opt = next((rr for rr in query.additional if rr.rtype == wire.OPT), None)
        self.edns.append(opt.rclass if opt is not None else None)
        return query

    def _handle_udp(self, data: bytes, addr: tuple[str, int]) -> None:
        query = self._parse(data, "udp")
        if query is None or self._udp is None or self._udp.transport is None:
            return
        for payload, spoof in self._replies(query, tcp=False):
            if spoof and self._spoof is not None:
                self._spoof.sendto(payload, addr)
            else:
                self._udp.transport.sendto(payload, addr)

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(2)
                data = await reader.readexactly(struct.unpack("!H", head)[0])
                query = self._parse(data, "tcp")
                if query is None:
                    break
                for payload, _ in self._replies(query, tcp=True):
                    writer.write(struct.pack("!H", len(payload)) + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


# ------------------------------------------------------------- hostile replies


def _echo(query: Message, body: bytes, ancount: int = 1) -> bytes:
    """A response header + question echoing ``query``, then ``body``."""
    q = query.questions[0]
    head = struct.pack("!HHHHHH", query.header.id, 0x8180, 1, ancount, 0, 0)
    return head + wire.encode_name(q.name) + struct.pack("!HH", q.rtype, q.rclass) + body


def malformed_compression_loop(query: Message) -> bytes:
    """An answer whose owner name is a pointer to itself."""
    offset = 12 + len(wire.encode_name(query.questions[0].name)) + 4
    return _echo(query, struct.pack("!H", 0xC000 | offset) + struct.pack("!HHIH", 1, 1, 60, 4))


def malformed_pointer_out_of_bounds(query: Message) -> bytes:
    """An answer whose owner name points past the end of the message."""
    return _echo(query, struct.pack("!H", 0xC000 | 0x3FFF) + struct.pack("!HHIH", 1, 1, 60, 4))


def malformed_truncated_rr(query: Message) -> bytes:
    """An A record whose RDLENGTH promises more than the message holds."""
    return _echo(query, b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x7f\x00")


def malformed_bad_rdlength(query: Message) -> bytes:
    """An A record with 5 octets of RDATA."""
    return _echo(query, b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 5) + b"\x7f\x00\x00\x01\x00")


def malformed_garbage(query: Message) -> bytes:
    """The query id followed by noise."""
    return struct.pack("!H", query.header.id) + b"\xff" * 7
