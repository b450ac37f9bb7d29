"""Turn the ``listen on X`` argument into the addresses to bind.

Invariants:

- No DNS: a host name is looked up only in the hosts file, never with
  ``getaddrinfo`` (the daemon must start when the resolver is down, and a
  listener must not move because a DNS answer changed).
- ``X`` is tried as, in order: an IP literal (``[v6]`` accepted);
  ``localhost``; ``lo``/``lo0`` (loopback, so OpenBSD configurations work
  on Linux); ``all`` (the wildcard addresses); ``egress`` (the interfaces
  carrying a default route); an interface name; a hosts-file name.
- The listener's ``inet4``/``inet6`` restriction is applied last; an empty
  result is an error, as in OpenSMTPD ("invalid virtual ip or interface").
- Results are ``(socket family, address text)`` pairs without duplicates,
  in a stable order (IPv4 first). IPv6 link-local addresses carry their
  ``%interface`` scope so they can be bound.
- Interface data comes from Linux's ``/proc/net`` and the ``SIOCGIFADDR``
  ioctl; where those do not exist the interface forms simply find nothing.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct

from mailrider import paths
from mailrider.config.model import Listener
from mailrider.errors import ConfigError

#: the hosts file, from the paths module
HOSTS_FILE: str | None = paths.HOSTS_FILE
#: the kernel's network tables (a kernel interface, not a porter's choice)
PROC_NET = "/proc/net"

#: Linux ioctl: the primary IPv4 address of an interface (<linux/sockios.h>)
SIOCGIFADDR = 0x8915
#: Linux IFNAMSIZ, including the terminating NUL
IFNAMSIZ = 16
#: /proc/net/if_inet6 scope value of link-local addresses
_SCOPE_LINK = 0x20
#: route flag RTF_REJECT: an "unreachable" default route, not an egress
_RTF_REJECT = 0x0200

Address = tuple[int, str]


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _ipv6_addresses(proc_net: str) -> list[tuple[str, str]]:
    """(address, interface) for every IPv6 address of the machine."""
    out = []
    for line in _read_lines(os.path.join(proc_net, "if_inet6")):
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32:
            continue
        try:
            addr = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            scope = int(fields[3], 16)
        except ValueError:
            continue
        text = str(addr)
        if scope == _SCOPE_LINK:
            text += "%" + fields[5]
        out.append((text, fields[5]))
    return out


def _has_ipv6_loopback(proc_net: str) -> bool:
    return any(addr == "::1" for addr, _ in _ipv6_addresses(proc_net))


def _ipv4_address(ifname: str) -> str | None:
    """The IPv4 address of an interface, or None (no such interface, no address)."""
    name = ifname.encode("utf-8", "surrogateescape")
    if len(name) >= IFNAMSIZ or b"\0" in name or not name:
        return None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            # struct ifreq: the name, then a sockaddr_in whose address the
            # kernel fills in (bytes 20..24 of the reply)
            reply = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name))
    except OSError:
        return None
    return socket.inet_ntoa(reply[20:24])


def _interface_addresses(ifname: str, proc_net: str) -> list[Address]:
    out: list[Address] = []
    v4 = _ipv4_address(ifname)
    if v4 is not None:
        out.append((socket.AF_INET, v4))
    out += [(socket.AF_INET6, a) for a, name in _ipv6_addresses(proc_net) if name == ifname]
    return out


def _interface_exists(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
    except (OSError, ValueError):
        return False
    return True


def _egress_interfaces(proc_net: str) -> list[str]:
    names: list[str] = []
    for line in _read_lines(os.path.join(proc_net, "route"))[1:]:
        fields = line.split()
        # Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
            names.append(fields[0])
    for line in _read_lines(os.path.join(proc_net, "ipv6_route")):
        fields = line.split()
        # dest plen src plen nexthop metric refcnt use flags iface
        if len(fields) < 10 or fields[0] != "0" * 32 or fields[1] != "00":
            continue
        try:
            flags = int(fields[8], 16)
        except ValueError:
            continue
        if not flags & _RTF_REJECT and fields[9] != "lo":
            names.append(fields[9])
    return list(dict.fromkeys(names))


def _hosts_lookup(name: str, hosts_file: str | None) -> list[Address]:
    out: list[Address] = []
    if hosts_file is None:
        return out
    wanted = name.lower()
    for line in _read_lines(hosts_file):
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or wanted not in (f.lower() for f in fields[1:]):
            continue
        family = _literal_family(fields[0])
        if family is not None:
            out.append((family, fields[0]))
    return out


def _literal_family(text: str) -> int | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def _candidates(name: str, proc_net: str, hosts_file: str | None) -> list[Address]:
    literal = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    family = _literal_family(literal)
    if family is not None:
        return [(family, literal)]
    if name == "localhost":
        out: list[Address] = [(socket.AF_INET, "127.0.0.1")]
        if _has_ipv6_loopback(proc_net):
            out.append((socket.AF_INET6, "::1"))
        return out
    if name in ("lo", "lo0"):
        for ifname in (name, "lo", "lo0"):
            if _interface_exists(ifname):
                return _interface_addresses(ifname, proc_net)
        return [(socket.AF_INET, "127.0.0.1")]
    if name == "all":
        out = [(socket.AF_INET, "0.0.0.0")]
        if _ipv6_addresses(proc_net) or (
            not os.path.exists(os.path.join(proc_net, "if_inet6")) and socket.has_ipv6
        ):
            out.append((socket.AF_INET6, "::"))
        return out
    if name == "egress":
        out = []
        for ifname in _egress_interfaces(proc_net):
            out += _interface_addresses(ifname, proc_net)
        return out
    if _interface_exists(name):
        return _interface_addresses(name, proc_net)
    return _hosts_lookup(name, hosts_file)


def resolve_listener(
    listener: Listener, *, proc_net: str = PROC_NET, hosts_file: str | None = HOSTS_FILE
) -> list[tuple[int, str]]:
    """The (family, address) pairs ``listener`` binds; [] for ``listen on socket``.

    Raises ConfigError at the listener's line when nothing matches.
    """
    if listener.address == "socket":
        return []
    found = _candidates(listener.address, proc_net, hosts_file)
    if listener.family == "inet4":
        found = [a for a in found if a[0] == socket.AF_INET]
    elif listener.family == "inet6":
        found = [a for a in found if a[0] == socket.AF_INET6]
    found = sorted(dict.fromkeys(found), key=lambda a: a[0] != socket.AF_INET)
    if not found:
        raise ConfigError(
            f"invalid listen address or interface: {listener.address}",
            listener.where.file,
            listener.where.line,
        )
    return found
