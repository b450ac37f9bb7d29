"""The PROXY protocol version 2 header a ``proxy-v2`` listener expects.

A load balancer in front of the listener (HAProxy's ``send-proxy-v2``)
sends, before any SMTP byte, a binary header naming the client's address;
the session then uses that address everywhere (docs/hostile-input-rules.md
"PROXY protocol v2"). Sans-I/O: :func:`parse` takes the bytes read so far and says
whether the header is complete, how long it is, and what it says.

Layout (all integers in network order)::

    signature (12) | ver_cmd (1) | fam (1) | len (2) | addresses | TLVs
    ver_cmd: version 2 in the high nibble; command LOCAL 0 / PROXY 1
    fam: family UNSPEC 0 / INET 1 / INET6 2 / UNIX 3 (high nibble),
         transport UNSPEC 0 / STREAM 1 / DGRAM 2 (low nibble)
    INET: src 4, dst 4, src port 2, dst port 2; INET6: 16, 16, 2, 2

Invariants:

- Every byte is checked as soon as it arrives: a wrong signature byte, a
  version 1 text header (``PROXY ...``), a version other than 2 or an
  unknown command is refused before the rest is read.
- ``len`` is at most :data:`MAX_LENGTH`, so the buffer never holds more than
  ``16 + MAX_LENGTH`` bytes; TLVs are skipped, each one checked to lie
  within ``len``.
- ``LOCAL`` (a health check by the balancer itself) and ``PROXY`` with the
  UNSPEC family keep the socket's own addresses; ``PROXY`` must otherwise
  name a TCP (STREAM) connection over IPv4 or IPv6.
- Nothing here reads a socket, keeps time or logs.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED = 16
#: the largest ``len`` accepted: addresses (at most 216 bytes, AF_UNIX) plus
#: TLVs; HAProxy's TLVs (ALPN, authority, unique id, SSL) stay far below
MAX_LENGTH = 4096
CMD_LOCAL = 0x0
CMD_PROXY = 0x1
AF_UNSPEC = 0x0
AF_INET = 0x1
AF_INET6 = 0x2
AF_UNIX = 0x3
TRANSPORT_STREAM = 0x1
_ADDR_LEN = {AF_INET: 12, AF_INET6: 36, AF_UNIX: 216}


class ProxyError(ValueError):
    """A header that is not a valid PROXY v2 header; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    #: "local" (keep the socket's addresses) or "proxy"
    command: str
    #: the client's (address, port) and the address it connected to, for
    #: "proxy" over INET/INET6; None otherwise
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    #: (type, value) of each TLV, in order
    tlvs: list[tuple[int, bytes]] = field(default_factory=list)


def parse(buf: bytes) -> tuple[ProxyHeader | None, int]:
    """(header, its length) once ``buf`` holds a whole header, else (None,
    bytes still missing at least). Raises :class:`ProxyError` as soon as
    what ``buf`` holds cannot start a valid header."""
    _check_prefix(buf)
    if len(buf) < FIXED:
        return None, FIXED - len(buf)
    ver_cmd, fam, length = struct.unpack_from("!BBH", buf, 12)
    if length > MAX_LENGTH:
        raise ProxyError(f"header length {length} over {MAX_LENGTH}")
    total = FIXED + length
    if len(buf) < total:
        return None, total - len(buf)
    body = buf[FIXED:total]
    command = ver_cmd & 0x0F
    family, transport = fam >> 4, fam & 0x0F
    if family not in (AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX):
        raise ProxyError(f"unknown address family {family}")
    addr_len = _ADDR_LEN.get(family, 0)
    if length < addr_len:
        raise ProxyError(f"header length {length} too short for its addresses")
    tlvs = _tlvs(body[addr_len:])
    if command == CMD_LOCAL:
        return ProxyHeader("local", tlvs=tlvs), total
    if family == AF_UNSPEC:
        return ProxyHeader("local", tlvs=tlvs), total
    if family == AF_UNIX:
        raise ProxyError("AF_UNIX addresses are not supported")
    if transport != TRANSPORT_STREAM:
        raise ProxyError(f"transport {transport} is not TCP")
    if family == AF_INET:
        src, dst = str(ipaddress.IPv4Address(body[0:4])), str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = struct.unpack_from("!HH", body, 8)
    else:
        src, dst = _v6(body[0:16]), _v6(body[16:32])
        sport, dport = struct.unpack_from("!HH", body, 32)
    return ProxyHeader("proxy", (src, sport), (dst, dport), tlvs), total


def _v6(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped or addr)


def _check_prefix(buf: bytes) -> None:
    n = min(len(buf), len(SIGNATURE))
    if buf[:n] != SIGNATURE[:n]:
        if buf[:6] == b"PROXY "[: len(buf[:6])]:
            raise ProxyError("PROXY protocol version 1 (text) header: only version 2 is "
                             "accepted")
        raise ProxyError("no PROXY protocol v2 signature")
    if len(buf) > 12:
        ver_cmd = buf[12]
        if ver_cmd >> 4 != 2:
            raise ProxyError(f"PROXY protocol version {ver_cmd >> 4}, not 2")
        if ver_cmd & 0x0F not in (CMD_LOCAL, CMD_PROXY):
            raise ProxyError(f"unknown PROXY command {ver_cmd & 0x0F}")


def _tlvs(data: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        if len(data) - i < 3:
            raise ProxyError("truncated TLV")
        kind, size = data[i], int.from_bytes(data[i + 1:i + 3], "big")
        if i + 3 + size > len(data):
            raise ProxyError("TLV longer than the header")
        out.append((kind, data[i + 3:i + 3 + size]))
        i += 3 + size
    return out


def build(source: tuple[str, int] | None, destination: tuple[str, int] | None = None,
          tlvs: list[tuple[int, bytes]] | None = None) -> bytes:
    """A PROXY v2 header (``source`` None: LOCAL), for tests and tools."""
    extra = b"".join(bytes([k]) + len(v).to_bytes(2, "big") + v for k, v in tlvs or [])
    if source is None:
        return SIGNATURE + bytes([0x20, 0x00]) + len(extra).to_bytes(2, "big") + extra
    dst = destination or ("0.0.0.0" if ":" not in source[0] else "::", 0)
    s, d = ipaddress.ip_address(source[0]), ipaddress.ip_address(dst[0])
    fam = AF_INET if s.version == 4 else AF_INET6
    addrs = s.packed + d.packed + struct.pack("!HH", source[1], dst[1])
    body = addrs + extra
    return SIGNATURE + bytes([0x21, (fam << 4) | TRANSPORT_STREAM]) + \
        len(body).to_bytes(2, "big") + body


class ProxyReader:
    """The bytes of one connection until its header is complete.

    :meth:`feed` returns the header once it is whole, with the bytes that
    followed it (the client's first SMTP bytes, if it spoke early); until
    then (None, b""). The buffer never exceeds ``FIXED + MAX_LENGTH`` bytes:
    :func:`parse` refuses a longer length before the body arrives.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> tuple[ProxyHeader | None, bytes]:
        self._buf += data
        header, n = parse(bytes(self._buf))
        if header is None:
            return None, b""
        rest = bytes(self._buf[n:])
        self._buf.clear()
        return header, rest
