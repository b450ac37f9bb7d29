"""The machine's interfaces and their addresses, from ``getifaddrs(3)``.

Invariants:

- :func:`interface_table` lists every interface the C library's
  ``getifaddrs`` reports, with every IPv4 and IPv6 address (an interface
  without an address is listed with none). It returns None when
  ``getifaddrs`` cannot be called (no C library through ctypes, the call
  fails); the caller then falls back to Linux's ``/proc/net``.
- The C structures are read through a :class:`Layout`: ``struct ifaddrs``
  begins alike everywhere (next, name, flags, addr); a ``struct sockaddr``
  starts with a 16-bit family on Linux and with a length byte then a family
  byte on the BSDs, whose ``AF_INET6`` also differs (28 on FreeBSD, 24 on
  OpenBSD and NetBSD, 30 on macOS). The layout is chosen by ``sys.platform``;
  :func:`decode_sockaddr` is a pure function of bytes so both layouts are
  tested anywhere.
- The BSD kernels embed a link-local address's interface index in bytes 2-3
  of the address (the KAME convention); it is moved into the scope and the
  address cleared, as ifconfig(8) does. Link-local addresses carry a
  ``%interface`` scope so they can be bound.
- Nothing is read past a sockaddr's length: the family is read first, then
  exactly the length that family's structure has (or ``sa_len``, bounded).
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
import sys
from dataclasses import dataclass

Address = tuple[int, str]


@dataclass(frozen=True, slots=True)
class Layout:
    """How one system lays out ``struct sockaddr``."""

    #: the BSD form: ``uint8 sa_len; uint8 sa_family`` (Linux: ``uint16 sa_family``)
    sa_len: bool
    af_inet: int
    af_inet6: int


LINUX = Layout(sa_len=False, af_inet=2, af_inet6=10)
FREEBSD = Layout(sa_len=True, af_inet=2, af_inet6=28)
OPENBSD = Layout(sa_len=True, af_inet=2, af_inet6=24)
NETBSD = Layout(sa_len=True, af_inet=2, af_inet6=24)
DARWIN = Layout(sa_len=True, af_inet=2, af_inet6=30)

#: sizes of struct sockaddr_in and sockaddr_in6 (the same on every system)
SOCKADDR_IN_SIZE = 16
SOCKADDR_IN6_SIZE = 28


def platform_layout(platform: str = sys.platform) -> Layout | None:
    """The layout of ``platform`` (a ``sys.platform`` value), None when unknown."""
    for prefix, layout in (("linux", LINUX), ("freebsd", FREEBSD), ("openbsd", OPENBSD),
                           ("netbsd", NETBSD), ("darwin", DARWIN)):
        if platform.startswith(prefix):
            return layout
    return None


def sockaddr_family(head: bytes, layout: Layout) -> int:
    """The family field of a sockaddr whose first two bytes are ``head``."""
    if layout.sa_len:
        return head[1]
    return int.from_bytes(head[:2], sys.byteorder)


def sockaddr_size(family: int, layout: Layout) -> int:
    """How many bytes :func:`decode_sockaddr` needs for ``family``; 0 for others."""
    if family == layout.af_inet:
        return SOCKADDR_IN_SIZE
    if family == layout.af_inet6:
        return SOCKADDR_IN6_SIZE
    return 0


def decode_sockaddr(data: bytes, layout: Layout) -> tuple[int, str, int] | None:
    """``(socket.AF_INET or AF_INET6, address text, IPv6 scope id)`` of the
    sockaddr in ``data``; None for another family or a short structure."""
    if len(data) < 2:
        return None
    family = sockaddr_family(data, layout)
    size = sockaddr_size(family, layout)
    if not size or len(data) < size or (layout.sa_len and data[0] and data[0] < size):
        return None
    if family == layout.af_inet:
        # family(2) port(2) address(4) zero(8)
        return socket.AF_INET, socket.inet_ntop(socket.AF_INET, data[4:8]), 0
    # family(2) port(2) flowinfo(4) address(16) scope_id(4)
    raw = bytearray(data[8:24])
    (scope,) = struct.unpack_from("=I", data, 24)
    if layout.sa_len and raw[0] == 0xFE and raw[1] & 0xC0 == 0x80 and (raw[2] or raw[3]):
        if not scope:
            scope = int.from_bytes(raw[2:4], "big")
        raw[2] = raw[3] = 0
    return socket.AF_INET6, str(ipaddress.IPv6Address(bytes(raw))), scope


class _IfAddrs(ctypes.Structure):
    pass


# struct ifaddrs: the same first members on Linux and the BSDs; the rest
# (netmask, broadcast/destination, data) is never read
_IfAddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_IfAddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.c_void_p),
]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.getifaddrs.argtypes = [ctypes.POINTER(ctypes.POINTER(_IfAddrs))]
        libc.getifaddrs.restype = ctypes.c_int
        libc.freeifaddrs.argtypes = [ctypes.POINTER(_IfAddrs)]
        libc.freeifaddrs.restype = None
    except (OSError, AttributeError):
        return None
    return libc


def _read_sockaddr(pointer: int, layout: Layout) -> tuple[int, str, int] | None:
    head = ctypes.string_at(pointer, 2)
    size = sockaddr_size(sockaddr_family(head, layout), layout)
    if not size:
        return None
    return decode_sockaddr(ctypes.string_at(pointer, size), layout)


def with_scope(family: int, text: str, scope: int, ifname: str) -> str:
    """``text`` with ``%ifname`` when it is an IPv6 link-local address."""
    if family == socket.AF_INET6 and (scope or ipaddress.IPv6Address(text).is_link_local):
        return f"{text}%{ifname}"
    return text


def interface_table(platform: str = sys.platform) -> dict[str, list[Address]] | None:
    """Every interface's addresses (IPv4 first, in the kernel's order), or None
    when ``getifaddrs`` cannot be used here."""
    layout = platform_layout(platform)
    libc = _libc() if layout is not None else None
    if layout is None or libc is None:
        return None
    head = ctypes.POINTER(_IfAddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        return None
    table: dict[str, list[Address]] = {}
    try:
        node = head
        for _ in range(1 << 16):  # bounded walk of the kernel's list
            if not node:
                break
            entry = node.contents
            raw_name = entry.ifa_name or b""
            name = raw_name.decode("utf-8", "surrogateescape")
            found = table.setdefault(name, [])
            if entry.ifa_addr:
                decoded = _read_sockaddr(entry.ifa_addr, layout)
                if decoded is not None:
                    family, text, scope = decoded
                    address = (family, with_scope(family, text, scope, name))
                    if address not in found:
                        found.append(address)
            node = entry.ifa_next
    finally:
        libc.freeifaddrs(head)
    for found in table.values():
        found.sort(key=lambda a: a[0] != socket.AF_INET)
    return table
