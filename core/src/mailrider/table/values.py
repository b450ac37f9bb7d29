"""Parsers for the values tables return, one per service (docs/table-protocol.md §7).

Every parser takes the text exactly as a table produced it and either returns
a typed value or raises :class:`ValueError` whose message says what is wrong
with the value (never with a secret in it: credentials errors do not quote
the value). Callers turn that ValueError into a temporary failure when the
value came from a table at run time (the administrator can fix the table and
the mail waits), or into a ConfigError when it came from a file being
compiled (``makemap``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: characters allowed in a local user name target (besides letters and digits)
_USER_CHARS = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=$-]*$")
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?$")
_RELAY_PROTOS = {"smtp": 25, "smtp+tls": 25, "smtp+notls": 25, "smtps": 465, "lmtp": 0}


# --- alias ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AliasTarget:
    """One aliases(5) target.

    ``kind`` is one of ``user`` (a local user name), ``address``
    (``user@domain``), ``file`` (``/path``), ``pipe`` (``|command``; value is
    the command without the bar), ``include`` (``:include:/path``; value is
    the path) or ``error`` (``error:NXX text``; ``code`` is NXX, ``status``
    the enhanced status code, value the text).
    ``escaped`` marks a ``\\user`` target: deliver to that user without
    expanding it again (used in ``.forward`` files).
    """

    kind: str
    value: str
    code: int = 0
    status: str = ""
    escaped: bool = False


def split_list(value: str) -> list[str]:
    """Split a comma-separated list; double quotes group, backslash escapes.

    A backslash escapes only ``"``, ``,`` and ``\\``; before any other
    character it is kept (so ``\\user`` survives). Quotes are removed, items
    are stripped, empty items dropped. An unterminated quote is an error.
    """
    items: list[str] = []
    cur: list[str] = []
    quoted = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n and value[i + 1] in '",\\':
            cur.append(value[i + 1])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            items.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if quoted:
        raise ValueError("unterminated double quote")
    items.append("".join(cur).strip())
    return [item for item in items if item]


def parse_alias_target(text: str) -> AliasTarget:
    """Classify one already-split alias target."""
    if not text:
        raise ValueError("empty alias target")
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError("alias target contains a control character")
    if text.startswith("|"):
        command = text[1:].strip()
        if not command:
            raise ValueError("empty command in pipe target")
        return AliasTarget("pipe", command)
    if text.startswith("/"):
        return AliasTarget("file", text)
    low = text.lower()
    if low.startswith(":include:"):
        path = text[len(":include:") :].strip()
        if not path.startswith("/"):
            raise ValueError(f"include path must be absolute: {path!r}")
        return AliasTarget("include", path)
    if low.startswith("error:"):
        return _parse_error_target(text[len("error:") :])
    if text.startswith("\\"):
        name = text[1:]
        if not _USER_CHARS.match(name):
            raise ValueError(f"invalid user name: {name!r}")
        return AliasTarget("user", name, escaped=True)
    if "@" in text:
        local, _, domain = text.rpartition("@")
        if not local or not domain or any(c.isspace() for c in text):
            raise ValueError(f"invalid address: {text!r}")
        return AliasTarget("address", f"{local}@{domain.lower()}")
    if not _USER_CHARS.match(text):
        raise ValueError(f"invalid user name: {text!r}")
    return AliasTarget("user", text)


def _parse_error_target(rest: str) -> AliasTarget:
    m = re.match(r"^([45][0-9][0-9])(?:[ -](.*))?$", rest.strip())
    if not m:
        raise ValueError(f"invalid error target, want error:4XX or error:5XX text: {rest!r}")
    code = int(m.group(1))
    text = (m.group(2) or "").strip()
    status = f"{m.group(1)[0]}.0.0"
    sm = re.match(r"^([45]\.[0-9]{1,3}\.[0-9]{1,3})(?:\s+(.*))?$", text)
    if sm:
        if sm.group(1)[0] != m.group(1)[0]:
            raise ValueError(f"enhanced status {sm.group(1)} does not agree with code {code}")
        status = sm.group(1)
        text = (sm.group(2) or "").strip()
    return AliasTarget("error", text or "Delivery refused", code=code, status=status)


def parse_alias_targets(value: str) -> list[AliasTarget]:
    """Parse an ``alias`` value: a comma-separated list of targets."""
    items = split_list(value)
    if not items:
        raise ValueError("empty alias value")
    return [parse_alias_target(item) for item in items]


# --- userinfo, credentials ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    uid: int
    gid: int
    home: str


def parse_userinfo(key: str, value: str) -> UserInfo:
    """Parse ``uid:gid:home`` (the home may itself contain ``:``)."""
    parts = value.split(":", 2)
    if len(parts) != 3:
        raise ValueError("userinfo value must be uid:gid:home")
    uid_s, gid_s, home = parts
    if not uid_s.isdigit() or not gid_s.isdigit():
        raise ValueError("userinfo uid and gid must be decimal numbers")
    if not home.startswith("/"):
        raise ValueError("userinfo home must be an absolute path")
    if not key:
        raise ValueError("userinfo key is empty")
    return UserInfo(key, int(uid_s), int(gid_s), home)


def parse_credentials(key: str, value: str) -> tuple[str, str]:
    """Parse a ``credentials`` value into (user, password).

    ``user:password``; without a colon the value is the password and the key
    is the user. The message never quotes the value.
    """
    if ":" not in value:
        if not value:
            raise ValueError("credentials value is empty")
        return key, value
    if len(value) < 3 or value.startswith(":") or value.endswith(":"):
        raise ValueError("credentials value must be user:password")
    user, _, password = value.partition(":")
    return user, password


# --- addresses ----------------------------------------------------------------


def _unbracket(text: str) -> str:
    t = text.strip()
    if t.lower().startswith("ipv6:"):
        t = t[5:]
    if t.startswith("[") and "]" in t:
        inner, _, rest = t[1:].partition("]")
        if inner.lower().startswith("ipv6:"):
            inner = inner[5:]
        return inner + rest
    return t


def parse_netaddr(value: str) -> IPNetwork:
    """An address or CIDR block: ``192.0.2.1``, ``192.0.2.0/24``, ``[2001:db8::1]``,
    ``2001:db8::/32``, ``[2001:db8::]/32``. Host bits set in a CIDR are an error."""
    text = _unbracket(value)
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid network address {value!r}: {exc}") from None


def parse_source(value: str) -> IPAddress:
    """A single IPv4 or IPv6 address (``[...]`` and ``ipv6:`` accepted)."""
    text = _unbracket(value)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid source address {value!r}") from None


@dataclass(frozen=True, slots=True)
class Mailaddr:
    """A mailaddr pattern: ``user``, ``@domain``, ``user@domain``; empty
    parts match anything (``@`` alone is the catch-all)."""

    user: str
    domain: str

    def __str__(self) -> str:
        if not self.domain:
            return self.user if self.user else "@"
        return f"{self.user}@{self.domain}"


def parse_mailaddr(value: str) -> Mailaddr:
    """Parse a mailaddr entry; the domain may contain ``*`` wildcards."""
    text = value.strip()
    if not text:
        raise ValueError("empty mailaddr")
    if any(c.isspace() or c in ",<>" for c in text):
        raise ValueError(f"invalid mailaddr {value!r}")
    if "@" not in text:
        return Mailaddr(text.lower(), "")
    user, _, domain = text.rpartition("@")
    if "@" in user and not user.startswith('"'):
        raise ValueError(f"invalid mailaddr {value!r}")
    return Mailaddr(user.lower(), domain.lower())


def parse_mailaddrmap(value: str) -> list[Mailaddr]:
    """A comma-separated list of mailaddr entries."""
    items = split_list(value)
    if not items:
        raise ValueError("empty mailaddrmap value")
    return [parse_mailaddr(item) for item in items]


# --- relayhost ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayHost:
    """A relay URL ``[proto://[label@]]host[:port]``; ``port`` None means the
    protocol's default (:attr:`effective_port`)."""

    proto: str
    host: str
    port: int | None = None
    label: str | None = None

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else _RELAY_PROTOS[self.proto]


def parse_relayhost(value: str) -> RelayHost:
    """Parse and validate a relay URL (docs/config.md §8)."""
    text = value.strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"invalid relay URL {value!r}")
    proto = "smtp"
    schemeless = "://" not in text
    if not schemeless:
        proto, _, text = text.partition("://")
        proto = proto.lower()
        if proto not in _RELAY_PROTOS:
            raise ValueError(
                f"invalid relay protocol {proto!r} (want one of: {', '.join(_RELAY_PROTOS)})"
            )
    label: str | None = None
    if "@" in text:
        label, _, text = text.rpartition("@")
        if not _LABEL.match(label):
            raise ValueError(f"invalid relay label {label!r}")
        if schemeless:
            # docs/config.md §8: a label means credentials, which only go
            # over verified TLS (OpenSMTPD defers every mail of this URL)
            proto = "smtp+tls"
        if proto not in ("smtp+tls", "smtps"):
            raise ValueError("a relay label (credentials) needs smtp+tls:// or smtps://")
    port: int | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"unterminated '[' in relay URL {value!r}")
        try:
            ipaddress.IPv6Address(host[5:] if host.lower().startswith("ipv6:") else host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address in relay URL {value!r}") from None
        host = f"[{host}]"
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"invalid relay URL {value!r}")
            port = _port(rest[1:], value)
    else:
        host, sep, port_s = text.partition(":")
        if sep:
            port = _port(port_s, value)
        if not re.match(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$", host):
            raise ValueError(f"invalid relay host {host!r}")
    if proto == "lmtp" and port is None:
        raise ValueError("lmtp:// relay URL needs an explicit port")
    return RelayHost(proto, host.lower(), port, label)


def _port(text: str, value: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port in relay URL {value!r}")
    return int(text)


# --- domain -------------------------------------------------------------------


def parse_domain(value: str) -> str:
    """A host or domain name (``*`` wildcards allowed), lower-cased."""
    text = value.strip().lower()
    if not text or len(text) > 255 or not re.match(r"^[a-z0-9_*\[\]:.-]+$", text):
        raise ValueError(f"invalid domain {value!r}")
    return text
