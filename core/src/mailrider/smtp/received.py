"""The ``Received:`` trace field we prepend to every accepted message.

RFC 5321 4.4 (Stamp: From-domain By-domain Opt-info ";" date-time), date in
RFC 5322 3.3 form.  The field is built from validated tokens only, so
nothing a peer sends (HELO name, recipient) can add a line, a field or a
comment terminator: every token is checked against a strict character set
and offending characters become ``?``.  The result uses LF line endings
(the spool format), its only line breaks are the fold points ``LF TAB``,
and it ends in a single LF.  Non-ASCII passes only for the ``UTF8*``
protocols (RFC 6531 4.3, RFC 6532).
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import re
import time

__all__ = ["WITH_PROTOCOLS", "received_header", "with_protocol"]

# RFC 3848 and RFC 6531 4.3 "with" protocol types (plus plain SMTP/LMTP).
WITH_PROTOCOLS = frozenset(
    {
        "SMTP",
        "ESMTP",
        "ESMTPA",
        "ESMTPS",
        "ESMTPSA",
        "LMTP",
        "LMTPA",
        "LMTPS",
        "LMTPSA",
        "UTF8SMTP",
        "UTF8SMTPA",
        "UTF8SMTPS",
        "UTF8SMTPSA",
        "UTF8LMTP",
        "UTF8LMTPA",
        "UTF8LMTPS",
        "UTF8LMTPSA",
    }
)

_TOKEN_MAX = 255
_QUEUE_ID_RE = re.compile(r"[A-Za-z0-9]{1,64}")
# Characters allowed in a host token besides letters and digits: LDH, dot,
# underscore (common in the wild), and the punctuation of address literals.
_HOST_PUNCT = frozenset("._:[]-")
_ADDR_BAD_RE = re.compile(r"[\x00-\x20\x7f-\x9f<>()\\;]")
_COMMENT_BAD_RE = re.compile(r"[^\x21-\x27\x2a-\x5b\x5d-\x7e ]")


def with_protocol(
    *, esmtp: bool, tls: bool, auth: bool = False, utf8: bool = False, lmtp: bool = False
) -> str:
    """The ``with`` keyword for a session (RFC 3848, RFC 6531 4.3)."""
    if lmtp:
        base = "LMTP"
    elif utf8 or esmtp or tls or auth:
        base = "SMTP" if utf8 else "ESMTP"
    else:
        return "SMTP"
    suffix = ("S" if tls else "") + ("A" if auth else "")
    return ("UTF8" if utf8 else "") + base + suffix


def _host_token(text: str, utf8: bool) -> str:
    """Keep LDH, ``._:[]-`` and (for UTF8 protocols) non-ASCII letters; else ``?``."""
    out = "".join(
        c
        if c in _HOST_PUNCT or (c.isalnum() and (c.isascii() or utf8))
        else "?"
        for c in text[:_TOKEN_MAX]
    )
    return out or "?"


@functools.lru_cache(maxsize=1024)
def _ip_literal(ip: str) -> str | None:
    try:
        addr = ipaddress.ip_address(ip.strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return f"[{addr.ipv4_mapped}]"
        return f"[IPv6:{addr.compressed}]"
    return f"[{addr}]"


def received_header(
    *,
    helo: str | None,
    rdns: str | None,
    ip: str | None,
    by: str,
    with_proto: str,
    queue_id: str,
    rcpt: str | None,
    tls: str | None,
    when: float | None = None,
    auth: str | None = None,
) -> bytes:
    """Build one folded ``Received:`` field ending in LF.

    ``helo`` is the client's HELO/EHLO name, ``rdns`` its verified reverse
    name, ``ip`` its address (``None`` for a local submission), ``by`` our
    host name, ``with_proto`` one of :data:`WITH_PROTOCOLS`, ``queue_id`` the
    message id (alphanumeric), ``rcpt`` the single recipient or None, ``tls``
    a short description of the TLS session (e.g. ``"TLSv1.3:TLS_AES_256_GCM_SHA384:256"``),
    ``auth`` (``received-auth``) the authenticated user, "" for none, None to say nothing.
    Raises ValueError for a bad ``with_proto`` or ``queue_id`` (programming
    errors, not peer input).
    """
    if with_proto not in WITH_PROTOCOLS:
        raise ValueError(f"unknown with protocol {with_proto!r}")
    if not _QUEUE_ID_RE.fullmatch(queue_id):
        raise ValueError(f"bad queue id {queue_id!r}")
    utf8 = with_proto.startswith("UTF8")
    literal = _ip_literal(ip) if ip is not None else None

    lines: list[str] = []
    if helo is not None or literal is not None:
        name = _host_token(helo, utf8) if helo else (literal or "unknown")
        first = f"Received: from {name}"
        if literal is not None:
            rname = _host_token(rdns, utf8) if rdns else "unknown"
            first += f" ({rname} {literal})"
        lines.append(first)
        lines.append(f"by {_host_token(by, utf8)} (mailrider)")
        if auth is not None:  # received-auth: "" for an unauthenticated session
            user = _COMMENT_BAD_RE.sub("?", auth[:_TOKEN_MAX])
            lines[-1] += f" (auth=yes user={user})" if auth else " (auth=no)"
    else:
        lines.append(f"Received: by {_host_token(by, utf8)} (mailrider)")
    with_line = f"with {with_proto}"
    if tls:
        comment = _COMMENT_BAD_RE.sub("?", tls[:_TOKEN_MAX])
        with_line += f" ({comment})"
    lines.append(f"{with_line} id {queue_id}")
    if rcpt is not None:
        addr = rcpt[:_TOKEN_MAX]
        if not utf8:
            addr = "".join(c if c.isascii() else "?" for c in addr)
        lines.append(f"for <{_ADDR_BAD_RE.sub('?', addr)}>;")
    else:
        lines[-1] += ";"
    stamp = time.time() if when is None else when
    lines.append(email.utils.formatdate(stamp, localtime=True))
    return ("\n\t".join(lines) + "\n").encode("utf-8")
