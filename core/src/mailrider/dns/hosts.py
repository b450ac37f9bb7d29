"""The hosts file (hosts(5)), consulted before DNS as the C library does.

``nsswitch.conf``'s usual ``hosts: files dns`` means an address the hosts
file names gets its name from there (``getnameinfo``: the canonical name,
the first one of the first line with that address), and that name's
addresses come from there too (``getaddrinfo``). So a client on 127.0.0.1
is ``localhost``, and no DNS query is sent for it.

Invariants:

- Reading is bounded (:data:`limits.HOSTS_FILE_MAX` bytes); a missing file
  names nothing. The file is read again when its size, modification time or
  inode change, at most once per lookup; a file out of reach (unreadable, or
  in a folder we may not search) keeps the entries read before
  (:meth:`HostsFile.load` runs before the privilege drop).
- Addresses are compared as addresses (``::1`` and ``0:0::1`` are one), so
  are names (case-insensitively, without a trailing dot).
- Lines that are not ``address name [aliases...]`` are skipped, as the C
  library skips them; ``#`` starts a comment.
"""

from __future__ import annotations

import ipaddress
import os

from mailrider import limits

__all__ = ["HostsFile"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _addr(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _key(name: str) -> str:
    return name.rstrip(".").lower()


class HostsFile:
    """The entries of one hosts file; see the module docstring."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._names: dict[IPAddress, str] = {}
        self._addrs: dict[str, list[IPAddress]] = {}

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._names, self._addrs = None, {}, {}
            return
        except OSError:
            return  # out of reach since the privilege drop: keep what was read before
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            with open(self.path, "rb") as f:
                raw = f.read(limits.HOSTS_FILE_MAX)
        except OSError:
            return  # unreadable since the privilege drop: keep what was read before
        names: dict[IPAddress, str] = {}
        addrs: dict[str, list[IPAddress]] = {}
        for line in raw.decode("utf-8", "replace").splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            addr = _addr(fields[0])
            if addr is None:
                continue
            names.setdefault(addr, fields[1].rstrip("."))  # the first line wins
            for name in fields[1:]:
                found = addrs.setdefault(_key(name), [])
                if addr not in found:
                    found.append(addr)
        self._stamp, self._names, self._addrs = stamp, names, addrs

    def load(self) -> HostsFile:
        """Read the file now (before a privilege drop)."""
        self._refresh()
        return self

    def name_of(self, ip: str) -> str | None:
        """The canonical name the file gives ``ip``, or None."""
        addr = _addr(ip)
        if addr is None:
            return None
        self._refresh()
        return self._names.get(addr)

    def addresses(self, name: str) -> list[str]:
        """The addresses the file gives ``name`` (canonical name or alias)."""
        self._refresh()
        return [str(a) for a in self._addrs.get(_key(name), [])]

    def fcrdns(self, ip: str) -> tuple[str, str] | None:
        """``(name, "pass"|"fail")`` when the file names ``ip``, else None
        (then DNS is asked). The forward check uses the file only."""
        name = self.name_of(ip)
        if name is None:
            return None
        addr = _addr(ip)
        confirmed = any(_addr(a) == addr for a in self.addresses(name))
        return name, "pass" if confirmed else "fail"
