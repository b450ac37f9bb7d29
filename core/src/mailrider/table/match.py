"""How built-in tables answer ``check`` (docs/table-protocol.md §6).

For static, file and db tables the host side does the matching (proc tables
get the literal key and decide themselves):

- ``domain``: an entry matches exactly, or as a pattern where ``*`` stands
  for any run of characters (``*.example.org`` matches every subdomain but
  not ``example.org`` itself; ``*`` matches everything);
- ``netaddr``: an entry is an address or CIDR block, IPv4 or IPv6, with or
  without brackets, or the word ``local`` (which matches only the key
  ``local``); a key that is not an address (an rDNS name) matches an entry
  equal to it;
- ``mailaddr``: an entry ``user``, ``@domain``, ``user@domain`` or ``@``
  (catch-all) is matched against a full address; the domain may contain
  ``*``; a ``+tag`` in the address is ignored unless the entry itself has a
  tag;
- ``regex``: each entry is a regular expression searched (not anchored,
  case-insensitive) in the key, as POSIX regexec does;
- every other service: exact presence of the key.

Comparisons are case-insensitive; keys normally arrive lower-cased.
Invariants: building an :class:`EntryIndex` never fails; a bad entry (say, a
netaddr entry that is not an address) simply never matches, except an
invalid regular expression, which raises :class:`TempFail` when used so a
broken table delays mail instead of rejecting it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from mailrider.errors import TempFail
from mailrider.table.values import IPAddress, IPNetwork, Mailaddr, parse_mailaddr

_GLOB_CACHE: dict[str, re.Pattern[str]] = {}


def glob_match(pattern: str, name: str) -> bool:
    """Case-insensitive match where ``*`` matches any run of characters."""
    if "*" not in pattern:
        return pattern.lower() == name.lower()
    rx = _GLOB_CACHE.get(pattern)
    if rx is None:
        rx = re.compile(
            ".*".join(re.escape(part) for part in pattern.split("*")),
            re.IGNORECASE | re.DOTALL,
        )
        if len(_GLOB_CACHE) < 4096:
            _GLOB_CACHE[pattern] = rx
    return rx.fullmatch(name) is not None


def match_domain(pattern: str, domain: str) -> bool:
    return glob_match(pattern, domain)


def _strip_brackets(text: str) -> str:
    t = text.strip()
    if t.startswith("[") and "]" in t:
        inner, _, rest = t[1:].partition("]")
        t = inner + rest
    if t.lower().startswith("ipv6:"):
        t = t[5:]
    return t


def address_of(key: str) -> IPAddress | None:
    """The IP address in a netaddr key (``192.0.2.1``, ``[2001:db8::1]``), or None."""
    try:
        addr = ipaddress.ip_address(_strip_brackets(key))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def network_of(entry: str) -> IPNetwork | None:
    """The network an entry denotes (host bits allowed, as OpenSMTPD masks them)."""
    try:
        return ipaddress.ip_network(_strip_brackets(entry), strict=False)
    except ValueError:
        return None


def match_netaddr(pattern: str, key: str) -> bool:
    if pattern.lower() == key.lower():
        return True
    net = network_of(pattern)
    addr = address_of(key)
    if net is None or addr is None:
        return False
    return addr.version == net.version and addr in net


def split_address(address: str) -> tuple[str, str]:
    """(user, domain) of an address; no ``@`` means no domain."""
    if "@" not in address:
        return address.lower(), ""
    user, _, domain = address.rpartition("@")
    return user.lower(), domain.lower()


def match_mailaddr(pattern: Mailaddr, address: str, delim: str = "+") -> bool:
    user, domain = split_address(address)
    if not pattern.user and not pattern.domain:
        return True
    if pattern.domain and not glob_match(pattern.domain, domain):
        return False
    if pattern.user:
        if delim and delim not in pattern.user:
            user = user.split(delim, 1)[0]
        if user != pattern.user:
            return False
    return True


_RX_CACHE: dict[str, re.Pattern[str]] = {}


def compile_regex(pattern: str) -> re.Pattern[str]:
    rx = _RX_CACHE.get(pattern)
    if rx is None:
        try:
            rx = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise TempFail(f"invalid regular expression {pattern!r} in table: {exc}") from None
        if len(_RX_CACHE) < 4096:
            _RX_CACHE[pattern] = rx
    return rx


def match_regex(pattern: str, key: str) -> bool:
    return compile_regex(pattern).search(key) is not None


def mailaddr_candidates(address: str, delim: str = "+") -> list[str]:
    """Entry texts that could match ``address`` exactly (for indexed lookups).

    Entries with ``*`` are not covered: the caller scans those separately.
    """
    user, domain = split_address(address)
    users = [user]
    if delim and delim in user:
        users.append(user.split(delim, 1)[0])
    out: list[str] = []
    for u in users:
        if domain:
            out.append(f"{u}@{domain}")
        out.append(u)
    if domain:
        out.append(f"@{domain}")
    out.append("@")
    return out


def netaddr_candidates(key: str) -> list[str]:
    """Entry texts that could match a netaddr key exactly (single-address entries)."""
    out = [key.lower()]
    addr = address_of(key)
    if addr is not None:
        text = str(addr)
        out += [text, f"{text}/{addr.max_prefixlen}"]
        if addr.version == 6:
            out += [f"[{text}]", f"[{text}]/128", f"ipv6:{text}", f"[ipv6:{text}]"]
    return list(dict.fromkeys(out))


def is_pattern(entry: str) -> bool:
    """Whether an entry may match keys other than itself (wildcard or CIDR)."""
    return "*" in entry or "/" in entry


class EntryIndex:
    """The entries of a list table (or the keys of a mapping), indexed per service.

    Indices are built on first use of a service and kept until the table is
    reloaded (a new index is built then).
    """

    def __init__(self, entries: Iterable[str], delim: str = "+") -> None:
        self.entries: list[str] = list(entries)
        self.delim = delim
        self._exact: set[str] = {e.lower() for e in self.entries}
        self._wild_domains: list[str] | None = None
        self._networks: list[IPNetwork] | None = None
        self._mailaddr_wild: list[Mailaddr] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: str) -> bool:
        return key.lower() in self._exact

    def check(self, service: str, key: str) -> bool:
        low = key.lower()
        if service == "domain":
            if low in self._exact:
                return True
            if self._wild_domains is None:
                self._wild_domains = [e for e in self.entries if "*" in e]
            return any(glob_match(p, low) for p in self._wild_domains)
        if service == "netaddr":
            if low in self._exact:
                return True
            if self._networks is None:
                nets = (network_of(e) for e in self.entries if e.lower() != "local")
                self._networks = [n for n in nets if n is not None]
            addr = address_of(low)
            if addr is None:
                return False
            return any(addr.version == n.version and addr in n for n in self._networks)
        if service == "mailaddr":
            for cand in mailaddr_candidates(low, self.delim):
                if cand in self._exact and match_mailaddr(_safe_mailaddr(cand), low, self.delim):
                    return True
            if self._mailaddr_wild is None:
                pats = (_safe_mailaddr(e) for e in self.entries if "*" in e)
                self._mailaddr_wild = [p for p in pats if p.user or p.domain]
            return any(match_mailaddr(p, low, self.delim) for p in self._mailaddr_wild)
        if service == "regex":
            return any(match_regex(p, key) for p in self.entries)
        return low in self._exact


def _safe_mailaddr(entry: str) -> Mailaddr:
    try:
        return parse_mailaddr(entry)
    except ValueError:
        # an unparsable entry must never match everything
        return Mailaddr("\0", "\0")
