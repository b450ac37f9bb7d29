"""The Sender Rewriting Scheme, in OpenSMTPD's format (docs/config.md §9).

Pure functions: no clock (``now`` is passed in), no logging, no I/O, so the
forward rewrite (pony, when a ``relay ... srs`` action relays forwarded
mail) and the reverse one (lka, for a bounce to an SRS address of ours)
share one definition and are tested with fixed times.

The format, as OpenSMTPD 7.8 writes it:

- ``SRS0=HHHH=TT=domain=local@ours``: ``TT`` is the day number modulo
  1024 in two base32 letters, ``HHHH`` the first four characters of the
  base64 of SHA-1(key + "TT=domain=local@ours"), with ``/`` written ``_``
  and ``+`` written ``-``;
- an ``SRS0`` sender is forwarded again as
  ``SRS1=HHHH=lasthop==HHHH=TT=domain=local@ours`` and an ``SRS1`` one as
  ``SRS1=HHHH=<its part after the old hash>@ours`` (the hash always covers
  what follows it).

Invariants:

- :func:`decode` answers an address only when its hash verifies under the
  key or the backup key and its timestamp is at most ``ttl_days`` days old
  (or one day ahead, for clocks that differ), as OpenSMTPD checks; anything
  else is None, never an exception.
- :func:`encode` never fails: an address it cannot rewrite (no ``@``, too
  long) is returned unchanged, as OpenSMTPD does.
- Keys are secrets: nothing here formats them into a string.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
#: the timestamp counts days, modulo 1024 (about 2.8 years)
DAY = 86400
_TS_MOD = 1024
#: OpenSMTPD's bounds on each half of an address (SMTPD_MAXLOCALPARTSIZE - 1)
_PART_MAX = 255


def timestamp(now: float) -> int:
    """The 10-bit day number of ``now`` (seconds since the epoch)."""
    return int(now // DAY) % _TS_MOD


def _hash(key: str, text: str) -> str:
    # SHA-1 because the format is OpenSMTPD's (interoperable addresses); four
    # characters of it are a short-lived anti-forgery tag, not a signature
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")
                          + text.encode("utf-8", "surrogateescape"),
                          usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")[:4].replace("/", "_").replace("+", "-")


def _split(address: str) -> tuple[str, str] | None:
    """(local, domain) at the last ``@``, within OpenSMTPD's sizes."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if len(local) > _PART_MAX or len(domain) > _PART_MAX:
        return None
    return local, domain


def is_srs(address: str) -> bool:
    """Whether an address starts as one :func:`decode` reads (SRS0= or SRS1=)."""
    return address[:5].upper() in ("SRS0=", "SRS1=")


def encode(sender: str, rcpt_domain: str, key: str, now: float) -> str:
    """The envelope sender to use when forwarding mail from ``sender``.

    ``rcpt_domain`` is the domain of the recipient we received the mail for
    (ours), which becomes the domain of the rewritten address.
    """
    head = sender[:5].upper()
    if head == "SRS0=":
        parts = _split(sender[5:])
        if parts is None:
            return sender
        local, domain = parts
        tail = f"{domain}=={local}@{rcpt_domain}"
        out = f"SRS1={_hash(key, tail)}={tail}"
    elif head == "SRS1=":
        parts = _split(sender[5:])
        if parts is None:
            return sender
        local, _ = parts
        tmp = f"{local}@{rcpt_domain}"
        # room for the previous hop's hash and its delimiter
        if len(tmp) < 5 or tmp[4] not in "=+-":
            return sender
        tail = tmp[5:]
        out = f"SRS1={_hash(key, tail)}={tail}"
    else:
        parts = _split(sender)
        if parts is None:
            return sender
        local, domain = parts
        ts = timestamp(now)
        tail = f"{BASE32[(ts >> 5) & 0x1F]}{BASE32[ts & 0x1F]}={domain}={local}@{rcpt_domain}"
        out = f"SRS0={_hash(key, tail)}={tail}"
    return out if _split(out) is not None else sender


def _in_range(stamp: int, now: float, ttl_days: int) -> bool:
    """At most ``ttl_days`` days old, or at most one day ahead (modulo 1024)."""
    ref = timestamp(now)
    return (ref - stamp) % _TS_MOD <= ttl_days or (stamp - ref) % _TS_MOD <= 1


def _stamp(text: str) -> int | None:
    if len(text) < 2 or text[0] not in BASE32 or text[1] not in BASE32:
        return None
    return (BASE32.index(text[0]) << 5) | BASE32.index(text[1])


def _verified(rest: str, keys: Sequence[str]) -> bool:
    """``rest`` is ``HHHH=...``: the hash of what follows under one of ``keys``."""
    if len(rest) < 5:
        return False
    return any(_hash(key, rest[5:]) == rest[:4] for key in keys if key)


def decode(rcpt: str, keys: Sequence[str], ttl_days: int, now: float) -> str | None:
    """The address an SRS recipient of ours stands for, or None when it is not valid.

    ``keys``: the key, then the backup key when there is one.
    """
    head, rest = rcpt[:5].upper(), rcpt[5:]
    if head not in ("SRS0=", "SRS1=") or not _verified(rest, keys):
        return None
    rest = rest[5:]
    if head == "SRS0=":
        stamp = _stamp(rest)
        if stamp is None or len(rest) < 3 or not _in_range(stamp, now, ttl_days):
            return None
        parts = _split(rest[3:])
        if parts is None:
            return None
        local, _ = parts
        domain, eq, user = local.partition("=")
        if not eq:
            return None
        out = f"{user}@{domain}"
        return out if _split(out) is not None else None
    parts = _split(rest)
    if parts is None:
        return None
    local, _ = parts
    lasthop, eq, srs0 = local.partition("=")
    if not eq:
        return None
    out = f"SRS0{srs0}@{lasthop}"
    # the SRS0 part's timestamp is checked too (its hash is the last hop's)
    inner = srs0[6:]
    if len(inner) < 3 or inner[2] not in "=+-":
        return None
    stamp = _stamp(inner)
    if stamp is None or not _in_range(stamp, now, ttl_days):
        return None
    return out if _split(out) is not None else None


def forward_sender(sender: str, rcpt: str, dest: str, key: str, now: float) -> str:
    """The MAIL FROM for a relayed envelope of a ``relay ... srs`` action.

    As OpenSMTPD: only forwarded mail is rewritten, that is an envelope
    whose destination is not the recipient we accepted (an alias, virtual
    or ``.forward`` target), and never a bounce (the null sender); the new
    domain is the accepted recipient's.
    """
    if "@" not in sender or "@" not in rcpt or rcpt == dest:
        return sender
    return encode(sender, rcpt.rpartition("@")[2], key, now)
