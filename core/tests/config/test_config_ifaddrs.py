"""getifaddrs(3) through ctypes: the sockaddr layouts of Linux and the BSDs,
decoded from synthetic bytes, and the real call on this machine."""

from __future__ import annotations

import socket
import struct
import sys

import pytest
from mailrider.config import ifaddrs
from mailrider.config.ifaddrs import (
    DARWIN,
    FREEBSD,
    LINUX,
    OPENBSD,
    Layout,
    decode_sockaddr,
    platform_layout,
)

V4, V6 = socket.AF_INET, socket.AF_INET6


def linux_in(addr: str, port: int = 0) -> bytes:
    # sa_family_t (host order), port, address, zero
    return (struct.pack("=H", 2) + struct.pack("!H", port) + socket.inet_aton(addr)
            + b"\0" * 8)


def linux_in6(addr: bytes, scope: int = 0) -> bytes:
    return struct.pack("=H", 10) + b"\0\x19" + b"\0" * 4 + addr + struct.pack("=I", scope)


def bsd_in(addr: str, length: int = 16) -> bytes:
    return bytes([length, 2]) + b"\0\0" + socket.inet_aton(addr) + b"\0" * 8


def bsd_in6(layout: Layout, addr: bytes, scope: int = 0, length: int = 28) -> bytes:
    return (bytes([length, layout.af_inet6]) + b"\0\0" + b"\0" * 4 + addr
            + struct.pack("=I", scope))


def v6(text: str) -> bytes:
    return socket.inet_pton(V6, text)


def test_linux_layout() -> None:
    assert decode_sockaddr(linux_in("192.0.2.7", 25), LINUX) == (V4, "192.0.2.7", 0)
    assert decode_sockaddr(linux_in6(v6("2001:db8::7")), LINUX) == (V6, "2001:db8::7", 0)
    assert decode_sockaddr(linux_in6(v6("fe80::7"), 3), LINUX) == (V6, "fe80::7", 3)
    # AF_PACKET (17): not an IP address
    assert decode_sockaddr(struct.pack("=H", 17) + b"\0" * 18, LINUX) is None
    # truncated structures are refused, never read past
    assert decode_sockaddr(linux_in("192.0.2.7")[:7], LINUX) is None
    assert decode_sockaddr(linux_in6(v6("::1"))[:27], LINUX) is None
    assert decode_sockaddr(b"\x02", LINUX) is None


@pytest.mark.parametrize("layout", [FREEBSD, OPENBSD, DARWIN])
def test_bsd_layouts(layout: Layout) -> None:
    assert decode_sockaddr(bsd_in("198.51.100.1"), layout) == (V4, "198.51.100.1", 0)
    assert decode_sockaddr(bsd_in6(layout, v6("2001:db8::1")), layout) == (
        V6, "2001:db8::1", 0)
    # the KAME form: the interface index (5) inside the link-local address
    assert decode_sockaddr(bsd_in6(layout, v6("fe80:5::1")), layout) == (V6, "fe80::1", 5)
    # an explicit scope wins, the embedded bytes are still cleared
    assert decode_sockaddr(bsd_in6(layout, v6("fe80:5::1"), 4), layout) == (V6, "fe80::1", 4)
    # a global address keeps its bytes 2-3
    assert decode_sockaddr(bsd_in6(layout, v6("2001:5::1")), layout) == (V6, "2001:5::1", 0)
    # sa_len shorter than the family's structure: refused
    assert decode_sockaddr(bsd_in("198.51.100.1", length=8), layout) is None
    assert decode_sockaddr(bsd_in6(layout, v6("::1"), length=24), layout) is None
    # AF_LINK (18 on every BSD): not an IP address
    assert decode_sockaddr(bytes([20, 18]) + b"\0" * 18, layout) is None


def test_layouts_differ_where_the_systems_do() -> None:
    # the same bytes mean different things: a Linux AF_INET sockaddr read with
    # the BSD layout has family byte 0 (little-endian) or 2 (big-endian)
    linux = linux_in("192.0.2.7")
    if sys.byteorder == "little":
        assert decode_sockaddr(linux, FREEBSD) is None
    # an OpenBSD AF_INET6 (24) is not FreeBSD's (28)
    assert decode_sockaddr(bsd_in6(OPENBSD, v6("::1")), FREEBSD) is None
    assert decode_sockaddr(bsd_in6(FREEBSD, v6("::1")), OPENBSD) is None


def test_platform_layout() -> None:
    assert platform_layout("linux") is LINUX
    assert platform_layout("freebsd14") is FREEBSD
    assert platform_layout("openbsd7") is OPENBSD
    assert platform_layout("darwin") is DARWIN
    assert platform_layout("sunos5") is None
    # the layout this machine uses has its own socket constants
    here = platform_layout()
    if here is not None:
        assert here.af_inet == V4 and here.af_inet6 == V6


def test_with_scope() -> None:
    assert ifaddrs.with_scope(V6, "fe80::1", 2, "eth0") == "fe80::1%eth0"
    assert ifaddrs.with_scope(V6, "fe80::1", 0, "eth0") == "fe80::1%eth0"
    assert ifaddrs.with_scope(V6, "2001:db8::1", 0, "eth0") == "2001:db8::1"
    assert ifaddrs.with_scope(V4, "192.0.2.1", 0, "eth0") == "192.0.2.1"


def test_getifaddrs_on_this_machine() -> None:
    table = ifaddrs.interface_table()
    if platform_layout() is None:
        assert table is None
        return
    assert table is not None
    # every interface socket.if_nameindex knows and that has an address is listed
    loopback = table.get("lo", table.get("lo0"))
    assert loopback is not None and (V4, "127.0.0.1") in loopback
    names = {name for _, name in socket.if_nameindex()}
    assert set(table) <= names
    for found in table.values():
        assert all(f in (V4, V6) for f, _ in found)
        assert len(found) == len(set(found))
        assert [f for f, _ in found] == sorted((f for f, _ in found), key=lambda f: f != V4)
    assert ifaddrs.interface_table("sunos5") is None
