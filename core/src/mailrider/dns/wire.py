"""DNS message encoding and decoding (RFC 1035 4, RFC 3596, RFC 6891).

Invariants:

* :func:`decode_message` either returns a :class:`Message` or raises
  :class:`DNSFormatError`; no other exception escapes it, whatever the
  input.  Every read is bounds-checked; a compression pointer must point
  strictly before the label that holds it (so decoding a name cannot loop)
  and a name is at most 255 octets on the wire (RFC 1035 3.1).
* RDATA of a known type must fill its RDLENGTH exactly; anything else is
  kept as raw bytes.
* Names are text: labels joined by ``"."``, no trailing dot; the root is
  ``"."``.  Octets other than letters, digits, ``-`` and ``_`` are written
  as ``\\DDD`` (and ``.``/``\\`` as ``\\.``/``\\\\``), so a decoded name is
  printable ASCII and never carries CR, LF or a space.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Final

from mailrider.errors import MailriderError

__all__ = [
    "AAAA",
    "CLASS_IN",
    "CNAME",
    "FORMERR",
    "MX",
    "NOERROR",
    "NOTIMP",
    "NS",
    "NXDOMAIN",
    "OPT",
    "PTR",
    "REFUSED",
    "RR",
    "SERVFAIL",
    "SOA",
    "TLSA",
    "TXT",
    "A",
    "DNSFormatError",
    "Header",
    "Message",
    "Question",
    "RData",
    "SOAData",
    "decode_message",
    "encode_message",
    "encode_name",
    "encode_query",
    "name_key",
]

# RFC 1035 3.2.2, RFC 3596 2.1, RFC 6891 6.1.1
A: Final = 1
NS: Final = 2
CNAME: Final = 5
SOA: Final = 6
PTR: Final = 12
MX: Final = 15
TXT: Final = 16
AAAA: Final = 28
OPT: Final = 41
TLSA: Final = 52  # RFC 6698 7.1; RDATA kept raw (crypto/dane.py parses it)
CLASS_IN: Final = 1

# RFC 1035 4.1.1
NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
NOTIMP: Final = 4
REFUSED: Final = 5

_NAME_MAX: Final = 255  # RFC 1035 3.1, wire octets incl. the root label
_LABEL_MAX: Final = 63
_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PLAIN: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


class DNSFormatError(MailriderError):
    """A DNS message (or a name to encode) is malformed."""


@dataclass(frozen=True, slots=True)
class SOAData:
    """SOA RDATA (RFC 1035 3.3.13); ``minimum`` bounds negative caching (RFC 2308 4)."""

    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


#: A/AAAA/NS/CNAME/PTR: str; MX: (preference, exchange); TXT: tuple of
#: character strings; SOA: SOAData; anything else: the raw RDATA.
RData = str | tuple[int, str] | tuple[bytes, ...] | SOAData | bytes


@dataclass(frozen=True, slots=True)
class Header:
    """The message header (RFC 1035 4.1.1; AD/CD from RFC 4035 3.2)."""

    id: int
    qr: bool = False
    opcode: int = 0
    aa: bool = False
    tc: bool = False
    rd: bool = True
    ra: bool = False
    ad: bool = False
    cd: bool = False
    rcode: int = NOERROR

    def flags(self) -> int:
        return (
            (self.qr << 15)
            | ((self.opcode & 0xF) << 11)
            | (self.aa << 10)
            | (self.tc << 9)
            | (self.rd << 8)
            | (self.ra << 7)
            | (self.ad << 5)
            | (self.cd << 4)
            | (self.rcode & 0xF)
        )


@dataclass(frozen=True, slots=True)
class Question:
    name: str
    rtype: int
    rclass: int = CLASS_IN


@dataclass(frozen=True, slots=True)
class RR:
    """A resource record; for OPT ``rclass`` is the UDP payload size."""

    name: str
    rtype: int
    rclass: int
    ttl: int
    data: RData


@dataclass(frozen=True, slots=True)
class Message:
    header: Header
    questions: tuple[Question, ...] = ()
    answers: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = field(default=())


def name_key(name: str) -> str:
    """The form in which names compare: ASCII lower case, no trailing dot."""
    if name in ("", "."):
        return "."
    lowered = name.translate(_LOWER)
    if lowered.endswith(".") and not lowered.endswith("\\."):
        return lowered[:-1]
    return lowered


# ----------------------------------------------------------------- encoding


def _labels(name: str) -> list[bytes]:
    """Split text ``name`` into wire labels, honouring ``\\DDD`` and ``\\X``."""
    if name in ("", "."):
        return []
    labels: list[bytes] = []
    cur = bytearray()
    i = 0
    n = len(name)
    while i < n:
        ch = name[i]
        if ch == "\\":
            digits = name[i + 1 : i + 4]
            if len(digits) == 3 and digits.isdigit() and digits.isascii():
                value = int(digits)
                if value > 255:
                    raise DNSFormatError(f"bad escape in name {name!r}")
                cur.append(value)
                i += 4
                continue
            if i + 1 >= n:
                raise DNSFormatError(f"bad escape in name {name!r}")
            cur += name[i + 1].encode("utf-8")
            i += 2
            continue
        if ch == ".":
            if not cur:
                raise DNSFormatError(f"empty label in {name!r}")
            labels.append(bytes(cur))
            cur.clear()
        else:
            cur += ch.encode("utf-8")
        i += 1
    if cur:
        labels.append(bytes(cur))
    for label in labels:
        if len(label) > _LABEL_MAX:
            raise DNSFormatError(f"label too long in {name!r}")
    if sum(len(x) + 1 for x in labels) + 1 > _NAME_MAX:
        raise DNSFormatError(f"name too long: {name!r}")
    return labels


def encode_name(name: str) -> bytes:
    """The uncompressed wire form of ``name``."""
    return b"".join(bytes([len(x)]) + x for x in _labels(name)) + b"\0"


class _Writer:
    def __init__(self, compress: bool) -> None:
        self.buf = bytearray()
        self.compress = compress
        self.offsets: dict[tuple[bytes, ...], int] = {}

    def name(self, name: str) -> None:
        labels = _labels(name)
        for i in range(len(labels)):
            suffix = tuple(labels[i:])
            where = self.offsets.get(suffix) if self.compress else None
            if where is not None:
                self.buf += struct.pack("!H", 0xC000 | where)
                return
            if len(self.buf) < 0x4000:
                self.offsets[suffix] = len(self.buf)
            self.buf.append(len(labels[i]))
            self.buf += labels[i]
        self.buf.append(0)

    def rdata(self, rr: RR) -> None:
        start = len(self.buf)
        self.buf += b"\0\0"
        data = rr.data
        t = rr.rtype
        if t == A and isinstance(data, str):
            self.buf += ipaddress.IPv4Address(data).packed
        elif t == AAAA and isinstance(data, str):
            self.buf += ipaddress.IPv6Address(data).packed
        elif t in (NS, CNAME, PTR) and isinstance(data, str):
            self.name(data)
        elif t == MX and isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], int):
            pref, exchange = data
            assert isinstance(exchange, str)
            self.buf += struct.pack("!H", pref)
            self.name(exchange)
        elif t == TXT and isinstance(data, tuple):
            for part in data:
                assert isinstance(part, bytes)
                if len(part) > 255:
                    raise DNSFormatError("TXT string longer than 255 octets")
                self.buf.append(len(part))
                self.buf += part
        elif t == SOA and isinstance(data, SOAData):
            self.name(data.mname)
            self.name(data.rname)
            self.buf += struct.pack(
                "!IIIII", data.serial, data.refresh, data.retry, data.expire, data.minimum
            )
        elif isinstance(data, bytes):
            self.buf += data
        else:
            raise DNSFormatError(f"cannot encode RDATA {data!r} for type {t}")
        size = len(self.buf) - start - 2
        if size > 0xFFFF:
            raise DNSFormatError("RDATA too long")
        struct.pack_into("!H", self.buf, start, size)


def encode_message(msg: Message, *, compress: bool = True) -> bytes:
    """The wire form of ``msg`` (names compressed unless ``compress`` is False)."""
    w = _Writer(compress)
    h = msg.header
    w.buf += struct.pack(
        "!HHHHHH",
        h.id,
        h.flags(),
        len(msg.questions),
        len(msg.answers),
        len(msg.authority),
        len(msg.additional),
    )
    for q in msg.questions:
        w.name(q.name)
        w.buf += struct.pack("!HH", q.rtype, q.rclass)
    for rr in (*msg.answers, *msg.authority, *msg.additional):
        w.name(rr.name)
        w.buf += struct.pack("!HHI", rr.rtype, rr.rclass, rr.ttl & 0xFFFFFFFF)
        w.rdata(rr)
    return bytes(w.buf)


def encode_query(qid: int, name: str, rtype: int, *, edns_payload: int | None = None) -> bytes:
    """A recursive query; with ``edns_payload`` an OPT RR (RFC 6891 6.1.2).

    AD is set so that a validating resolver reports authenticated data
    (RFC 6840 5.7).
    """
    extra: tuple[RR, ...] = ()
    if edns_payload is not None:
        extra = (RR(".", OPT, edns_payload, 0, b""),)
    return encode_message(
        Message(Header(qid, rd=True, ad=True), (Question(name, rtype),), additional=extra),
        compress=False,
    )


# ----------------------------------------------------------------- decoding


def _label_text(label: bytes) -> str:
    out: list[str] = []
    for b in label:
        if b in _PLAIN:
            out.append(chr(b))
        elif b in (0x2E, 0x5C):
            out.append("\\" + chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, limit: int) -> bytes:
        end = self.pos + n
        if end > limit:
            raise DNSFormatError("message truncated")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u16(self, limit: int) -> int:
        value: int = struct.unpack("!H", self.take(2, limit))[0]
        return value

    def u32(self, limit: int) -> int:
        value: int = struct.unpack("!I", self.take(4, limit))[0]
        return value

    def name(self, limit: int) -> str:
        """Read a possibly compressed name; the cursor ends after its in-place part."""
        data = self.data
        pos = self.pos
        labels: list[str] = []
        wire_len = 1
        jumped = False
        floor = pos  # a pointer must point strictly before this
        while True:
            # Before a jump the name must lie inside ``limit`` (its RR);
            # after one it may lie anywhere before the pointer.
            end = limit if not jumped else len(data)
            if pos >= end:
                raise DNSFormatError("name runs past its end")
            length = data[pos]
            kind = length & 0xC0
            if kind == 0xC0:
                if pos + 2 > end:
                    raise DNSFormatError("truncated compression pointer")
                target = ((length & 0x3F) << 8) | data[pos + 1]
                if target >= floor:
                    raise DNSFormatError("compression pointer does not point backwards")
                if not jumped:
                    self.pos = pos + 2
                    jumped = True
                pos = floor = target
                continue
            if kind:
                raise DNSFormatError("unknown label type")
            if length == 0:
                if not jumped:
                    self.pos = pos + 1
                break
            wire_len += length + 1
            if wire_len > _NAME_MAX:
                raise DNSFormatError("name too long")
            if pos + 1 + length > end:
                raise DNSFormatError("label runs past its end")
            labels.append(_label_text(data[pos + 1 : pos + 1 + length]))
            pos += 1 + length
        return ".".join(labels) if labels else "."


def _rdata(r: _Reader, rtype: int, end: int) -> RData:
    if rtype == A:
        if end - r.pos != 4:
            raise DNSFormatError("bad A RDATA length")
        return str(ipaddress.IPv4Address(r.take(4, end)))
    if rtype == AAAA:
        if end - r.pos != 16:
            raise DNSFormatError("bad AAAA RDATA length")
        return str(ipaddress.IPv6Address(r.take(16, end)))
    if rtype in (NS, CNAME, PTR):
        return r.name(end)
    if rtype == MX:
        pref = r.u16(end)
        return (pref, r.name(end))
    if rtype == TXT:
        parts: list[bytes] = []
        while r.pos < end:
            n = r.take(1, end)[0]
            parts.append(r.take(n, end))
        if not parts:
            raise DNSFormatError("empty TXT RDATA")
        return tuple(parts)
    if rtype == SOA:
        mname = r.name(end)
        rname = r.name(end)
        values = [r.u32(end) for _ in range(5)]
        return SOAData(mname, rname, *values)
    return r.take(end - r.pos, end)


def _rr(r: _Reader) -> RR:
    size = len(r.data)
    name = r.name(size)
    rtype = r.u16(size)
    rclass = r.u16(size)
    ttl = r.u32(size)
    rdlength = r.u16(size)
    end = r.pos + rdlength
    if end > size:
        raise DNSFormatError("RDATA runs past the message")
    data = _rdata(r, rtype, end)
    if r.pos != end:
        raise DNSFormatError("RDATA does not fill RDLENGTH")
    # RFC 2181 8: a TTL with the top bit set is taken as zero.
    return RR(name, rtype, rclass, 0 if ttl & 0x80000000 else ttl, data)


def decode_message(data: bytes) -> Message:
    """Decode a whole DNS message; raises :class:`DNSFormatError` only."""
    try:
        return _decode(data)
    except DNSFormatError:
        raise
    except (ValueError, IndexError, struct.error) as exc:  # pragma: no cover - defensive
        raise DNSFormatError(f"malformed message: {exc}") from None


def _decode(data: bytes) -> Message:
    if len(data) < 12:
        raise DNSFormatError("message shorter than its header")
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
    header = Header(
        id=qid,
        qr=bool(flags & 0x8000),
        opcode=(flags >> 11) & 0xF,
        aa=bool(flags & 0x0400),
        tc=bool(flags & 0x0200),
        rd=bool(flags & 0x0100),
        ra=bool(flags & 0x0080),
        ad=bool(flags & 0x0020),
        cd=bool(flags & 0x0010),
        rcode=flags & 0xF,
    )
    r = _Reader(data)
    r.pos = 12
    size = len(data)
    questions = []
    for _ in range(qd):
        name = r.name(size)
        questions.append(Question(name, r.u16(size), r.u16(size)))
    # Each RR needs at least 11 octets, so these loops end with the input.
    sections: list[tuple[RR, ...]] = []
    for count in (an, ns, ar):
        sections.append(tuple(_rr(r) for _ in range(count)))
    return Message(header, tuple(questions), sections[0], sections[1], sections[2])
