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
- An interface's addresses (every IPv4 and IPv6 address) come from
  ``getifaddrs(3)`` (:mod:`mailrider.config.ifaddrs`); only where it cannot
  be called, from Linux's ``/proc/net`` and the ``SIOCGIFADDR`` ioctl (one
  IPv4 address per interface then).
- ``egress`` is the interfaces of the default routes: on Linux read from
  ``/proc/net/route`` and ``/proc/net/ipv6_route``; elsewhere from
  ``route -n get default`` (and ``-inet6``), the interface the kernel would
  send to 0.0.0.0 and :: through. On OpenBSD that is the automatic members
  of the ``egress`` interface group; interfaces an administrator adds to the
  group by hand are not seen (docs/config.md §14).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Mapping

from mailrider import paths
from mailrider.config import ifaddrs
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
#: interface name -> its addresses
Table = Mapping[str, list[Address]]

#: ``route -n get`` output: the line naming the route's interface
_ROUTE_INTERFACE = re.compile(r"^\s*interface:\s*(\S+)\s*$", re.MULTILINE)
#: how long ``route -n get`` may take (it reads the kernel's table, no DNS with -n)
_ROUTE_TIMEOUT = 10.0


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


def proc_net_table(proc_net: str) -> dict[str, list[Address]]:
    """The interface table without ``getifaddrs``: Linux's interface list, one
    IPv4 address each (``SIOCGIFADDR``), the IPv6 addresses of ``if_inet6``."""
    table: dict[str, list[Address]] = {}
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    for name in names:
        v4 = _ipv4_address(name)
        table[name] = [(socket.AF_INET, v4)] if v4 is not None else []
    for addr, name in _ipv6_addresses(proc_net):
        table.setdefault(name, []).append((socket.AF_INET6, addr))
    return table


def machine_table(proc_net: str = PROC_NET) -> Table:
    """The machine's interfaces: ``getifaddrs`` when it works, else ``/proc/net``."""
    table = ifaddrs.interface_table()
    return table if table is not None else proc_net_table(proc_net)


def _linux_egress(proc_net: str) -> list[str]:
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


def route_get_interface(output: str) -> str | None:
    """The interface named by ``route -n get``'s output, None when it names none."""
    match = _ROUTE_INTERFACE.search(output)
    return match.group(1) if match else None


def _route_egress() -> list[str]:
    names: list[str] = []
    for family in ("-inet", "-inet6"):
        try:
            done = subprocess.run([paths.ROUTE_PROGRAM, "-n", "get", family, "default"],
                                  capture_output=True, text=True, timeout=_ROUTE_TIMEOUT,
                                  check=False, errors="replace")
        except (OSError, subprocess.SubprocessError):
            continue
        name = route_get_interface(done.stdout) if done.returncode == 0 else None
        if name is not None and not name.startswith("lo"):
            names.append(name)
    return list(dict.fromkeys(names))


def egress_interfaces(proc_net: str = PROC_NET, platform: str = sys.platform) -> list[str]:
    """The interfaces of the default routes (IPv4 then IPv6), without duplicates."""
    if platform.startswith("linux") or os.path.exists(os.path.join(proc_net, "route")):
        return _linux_egress(proc_net)
    return _route_egress()


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


def _candidates(name: str, proc_net: str, hosts_file: str | None,
                table: Table | None) -> list[Address]:
    literal = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    family = _literal_family(literal)
    if family is not None:
        return [(family, literal)]
    if table is None:
        table = machine_table(proc_net)
    if name == "localhost":
        out: list[Address] = [(socket.AF_INET, "127.0.0.1")]
        if any((socket.AF_INET6, "::1") in found for found in table.values()):
            out.append((socket.AF_INET6, "::1"))
        return out
    if name in ("lo", "lo0"):
        for ifname in (name, "lo", "lo0"):
            if ifname in table:
                return list(table[ifname])
        return [(socket.AF_INET, "127.0.0.1")]
    if name == "all":
        out = [(socket.AF_INET, "0.0.0.0")]
        if any(f == socket.AF_INET6 for found in table.values() for f, _ in found):
            out.append((socket.AF_INET6, "::"))
        return out
    if name == "egress":
        out = []
        for ifname in egress_interfaces(proc_net):
            out += table.get(ifname, [])
        return out
    if name in table:
        return list(table[name])
    return _hosts_lookup(name, hosts_file)


def resolve_listener(
    listener: Listener, *, proc_net: str = PROC_NET, hosts_file: str | None = HOSTS_FILE,
    interfaces: Table | None = None,
) -> list[tuple[int, str]]:
    """The (family, address) pairs ``listener`` binds; [] for ``listen on socket``.

    ``interfaces`` replaces the machine's interface table (tests); ``proc_net``
    is where Linux's routes (and the fallback interface data) are read.
    Raises ConfigError at the listener's line when nothing matches.
    """
    if listener.address == "socket":
        return []
    found = _candidates(listener.address, proc_net, hosts_file, interfaces)
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
