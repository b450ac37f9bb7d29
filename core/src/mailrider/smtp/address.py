"""Reverse- and forward-paths and their ESMTP parameters (RFC 5321 4.1.2).

Invariants:

* An :class:`Address` holds a *decoded* local part (quotes and quoted pairs
  removed) and a domain that is either empty (only for ``<postmaster>``), a
  syntactically valid domain name without a trailing dot, or an address
  literal ``[IPv4]`` / ``[IPv6:...]`` whose address parsed with
  :mod:`ipaddress`.  ``str(address)`` is again a valid path body.
* Neither part of an accepted address, nor any decoded parameter value,
  contains a control character, so they are safe in envelopes and headers.
* Non-ASCII appears only when the caller said SMTPUTF8 was given
  (RFC 6531 3.3); otherwise ``553 5.6.7`` (RFC 6531 3.7.4.1).
* Every refusal is an :class:`AddressError` carrying the reply to send.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

from mailrider import limits
from mailrider.smtp.reply import Reply

__all__ = [
    "Address",
    "AddressError",
    "MailParams",
    "RcptParams",
    "normalise_domain",
    "parse_esmtp_params",
    "parse_mail_params",
    "parse_path",
    "parse_rcpt_params",
    "split_path",
    "xtext_decode",
    "xtext_encode",
]

# RFC 3461 4.4: ENVID at most 100 characters; 4.2: ORCPT at most 500.
ENVID_MAX = 100
ORCPT_MAX = 500


class AddressError(ValueError):
    """A path or ESMTP parameter is unacceptable; ``reply`` says why."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


# RFC 5322 3.2.3 atext, ASCII part.
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_LDH_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
# RFC 5321 4.1.2: Path = "<" [ A-d-l ":" ] Mailbox ">"; the quoted string may
# contain ">" and spaces, so the end of the path is found with this.
_PATH_RE = re.compile(r'<(?:[^">\\]|"(?:[^"\\]|\\.)*")*>')
# RFC 5321 4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _is_dot_atom_text(text: str, utf8: bool) -> bool:
    if not text or text.startswith(".") or text.endswith(".") or ".." in text:
        return False
    for ch in text:
        if ch in _ATEXT or ch == ".":
            continue
        # RFC 6531 3.3: atext =/ UTF8-non-ascii
        if utf8 and ord(ch) > 127 and not _CONTROL_RE.match(ch) and not ch.isspace():
            continue
        return False
    return True


def _needs_quoting(local: str) -> bool:
    return not _is_dot_atom_text(local, utf8=True)


def _quote(local: str) -> str:
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox ``local@domain``; ``domain`` is empty only for bare postmaster."""

    local: str
    domain: str

    def __str__(self) -> str:
        local = _quote(self.local) if _needs_quoting(self.local) else self.local
        return f"{local}@{self.domain}" if self.domain else local

    @property
    def domain_key(self) -> str:
        """The domain in the form used for comparisons and table lookups."""
        return normalise_domain(self.domain)

    @property
    def is_postmaster(self) -> bool:
        """True for ``<postmaster>`` (RFC 5321 4.5.1), case-insensitively."""
        return not self.domain and self.local.lower() == "postmaster"


def normalise_domain(domain: str) -> str:
    """Lower-case a domain; give address literals their canonical form.

    Two domains are the same destination iff their normal forms are equal
    (RFC 5321 2.4: domain names are case-insensitive).
    """
    if domain.startswith("[") and domain.endswith("]"):
        inner = domain[1:-1]
        if inner[:5].lower() == "ipv6:":
            try:
                return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
            except ValueError:
                return domain.lower()
        return domain
    return domain.lower()


def _fail(code: int, status: str, text: str) -> AddressError:
    return AddressError(Reply(code, status, text))


def _check_domain(domain: str, utf8: bool, status: str) -> None:
    """Validate a Domain or address-literal (RFC 5321 4.1.2, 4.1.3)."""
    if domain.startswith("["):
        if not domain.endswith("]"):
            raise _fail(501, status, "Bad address literal")
        inner = domain[1:-1]
        try:
            if inner[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(inner[5:])
            else:
                # RFC 5321 4.1.3: IPv4-address-literal = Snum 3("." Snum)
                ipaddress.IPv4Address(inner)
        except ValueError:
            raise _fail(501, status, "Bad address literal") from None
        return
    if len(domain.encode("utf-8")) > limits.DOMAIN_MAX:
        raise _fail(501, status, "Domain name too long")
    if domain.endswith("."):
        # RFC 5321 4.1.2: Domain = sub-domain *("." sub-domain): no root dot.
        raise _fail(501, status, "Trailing dot in domain name")
    ascii_len = 0
    for label in domain.split("."):
        if label.isascii():
            if not _LDH_RE.fullmatch(label) or len(label) > 63:
                raise _fail(501, status, "Bad domain name syntax")
            ascii_len += len(label) + 1
            continue
        if not utf8:
            raise _fail(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
        # RFC 6531 3.3 / RFC 5890: a U-label; check characters, then the
        # length of its A-label form ("xn--" + punycode) against RFC 1035.
        if label.startswith("-") or label.endswith("-"):
            raise _fail(501, status, "Bad domain name syntax")
        for ch in label:
            if ch == "-" or (ch.isascii() and ch.isalnum()):
                continue
            if ch.isascii() or not (ch.isalnum() or unicodedata.category(ch).startswith("M")):
                raise _fail(501, status, "Bad domain name syntax")
        alabel_len = 4 + len(label.lower().encode("punycode"))
        if alabel_len > 63:
            raise _fail(501, status, "Bad domain name syntax")
        ascii_len += alabel_len + 1
    if ascii_len - 1 > limits.DOMAIN_MAX:
        raise _fail(501, status, "Domain name too long")


def _parse_local(text: str, utf8: bool, status: str) -> tuple[str, str]:
    """Parse a Local-part at the start of ``text``; return (decoded, rest)."""
    if text.startswith('"'):
        out: list[str] = []
        i = 1
        while i < len(text):
            ch = text[i]
            if ch == "\\":
                # RFC 5321 4.1.2: quoted-pairSMTP = %d92 %d32-126
                if i + 1 >= len(text):
                    break
                nxt = text[i + 1]
                if not (" " <= nxt <= "~"):
                    raise _fail(501, status, "Bad quoted pair in local part")
                out.append(nxt)
                i += 2
                continue
            if ch == '"':
                return "".join(out), text[i + 1 :]
            # qtextSMTP = %d32-33 / %d35-91 / %d93-126 (RFC 6531: + UTF8-non-ascii)
            if " " <= ch <= "~":
                out.append(ch)
            elif ord(ch) > 127 and not _CONTROL_RE.match(ch):
                if not utf8:
                    raise _fail(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
                out.append(ch)
            else:
                raise _fail(501, status, "Bad character in local part")
            i += 1
        raise _fail(501, status, "Unterminated quoted string")
    at = text.find("@")
    local = text if at < 0 else text[:at]
    if not local.isascii() and not utf8:
        raise _fail(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
    if not _is_dot_atom_text(local, utf8):
        raise _fail(501, status, "Bad local part syntax")
    return local, text[len(local) :]


def parse_path(
    text: str, smtputf8: bool, *, postmaster: bool = False, sender: bool = False
) -> Address | None:
    """Parse ``<...>``: a reverse-path (``sender``) or forward-path.

    Returns None for the null path ``<>``; the caller decides whether that is
    allowed.  A source route ``<@a,@b:user@d>`` is accepted and dropped
    (RFC 5321 4.1.2 and appendix C).  With ``postmaster`` a bare
    ``<postmaster>`` gives ``Address("postmaster", "")`` (RFC 5321 4.5.1).
    """
    # RFC 3463: X.1.7 / X.1.8 for the sender, X.1.3 / X.1.2 for recipients.
    status = "5.1.7" if sender else "5.1.3"
    dstatus = "5.1.8" if sender else "5.1.2"
    if len(text.encode("utf-8")) > limits.PATH_MAX:
        # RFC 5321 4.5.3.1.3 and 4.5.3.1.10: "501 Path too long".
        raise _fail(501, status, "Path too long")
    if len(text) < 2 or text[0] != "<" or text[-1] != ">":
        raise _fail(501, status, "Address must be enclosed in <>")
    body = text[1:-1]
    if not body:
        return None
    if _CONTROL_RE.search(body):
        raise _fail(501, status, "Control character in address")
    if body.startswith("@"):
        route, colon, rest = body.partition(":")
        if not colon:
            raise _fail(501, status, "Bad source route")
        for hop in route.split(","):
            if not hop.startswith("@"):
                raise _fail(501, status, "Bad source route")
            _check_domain(hop[1:], smtputf8, dstatus)
        body = rest
    local, rest = _parse_local(body, smtputf8, status)
    # RFC 5321 4.5.3.1.1: the local part as written is at most 64 octets.
    if len(body[: len(body) - len(rest)].encode("utf-8")) > limits.LOCAL_PART_MAX:
        raise _fail(501, status, "Local part too long")
    if not rest:
        if postmaster and local.lower() == "postmaster" and not body.startswith('"'):
            return Address(local, "")
        raise _fail(501, status, "Address needs a domain")
    if not rest.startswith("@") or len(rest) < 2:
        raise _fail(501, status, "Bad address syntax")
    domain = rest[1:]
    _check_domain(domain, smtputf8, dstatus)
    return Address(local, domain)


def split_path(arg: str, sender: bool = False) -> tuple[str, str]:
    """Split ``<path> params`` into the path (with brackets) and the rest.

    The rest is empty or starts after exactly the separating spaces.
    """
    status = "5.1.7" if sender else "5.1.3"
    m = _PATH_RE.match(arg)
    if m is None:
        raise _fail(501, status, "Address must be enclosed in <>")
    rest = arg[m.end() :]
    if rest and not rest.startswith(" "):
        raise _fail(501, "5.5.4", "Syntax error after address")
    return m.group(), rest.strip(" ")


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 4 xtext; the result has no control characters.

    ``xtext = *( xchar / hexchar )``, ``hexchar = "+" 2(HEXDIG)``; xchar is
    any of ``!``..``~`` except ``+`` and ``=``.  Lower-case hex digits are
    tolerated on input.
    """
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "+":
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or any(c not in "0123456789ABCDEFabcdef" for c in pair):
                raise _fail(501, "5.5.4", "Bad xtext encoding")
            out.append(int(pair, 16))
            i += 3
            continue
        if not ("!" <= ch <= "~") or ch == "=":
            raise _fail(501, "5.5.4", "Bad xtext encoding")
        out.append(ord(ch))
        i += 1
    try:
        decoded = out.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(501, "5.5.4", "Bad xtext encoding") from None
    if _CONTROL_RE.search(decoded):
        raise _fail(501, "5.5.4", "Control character in parameter")
    return decoded


def xtext_encode(text: str) -> str:
    """Encode ``text`` as RFC 3461 4 xtext (inverse of :func:`xtext_decode`)."""
    out: list[str] = []
    for byte in text.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def parse_esmtp_params(text: str, utf8: bool = False) -> dict[str, str | None]:
    """Parse ``KEY[=VALUE] ...`` (RFC 5321 4.1.2 Mail-parameters).

    Keywords are returned upper-cased; a repeated keyword is a syntax error.
    ``esmtp-value = 1*(%d33-60 / %d62-126)``, plus UTF-8 with SMTPUTF8.
    """
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _KEYWORD_RE.fullmatch(key):
            raise _fail(501, "5.5.4", "Bad parameter syntax")
        if eq:
            if not value or "=" in value or _CONTROL_RE.search(value):
                raise _fail(501, "5.5.4", "Bad parameter value")
            if not value.isascii() and not utf8:
                raise _fail(501, "5.5.4", "Bad parameter value")
        ukey = key.upper()
        if ukey in params:
            raise _fail(501, "5.5.4", f"Duplicate parameter {ukey}")
        params[ukey] = value if eq else None
    return params


def _unsupported(key: str) -> AddressError:
    return _fail(555, "5.5.4", f"Unsupported parameter {key}")


@dataclass(frozen=True, slots=True)
class MailParams:
    """The parameters of MAIL FROM (RFC 1870, 6152, 6531, 3461)."""

    size: int | None = None
    body: Literal["7BIT", "8BITMIME"] | None = None
    smtputf8: bool = False
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None
    raw: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RcptParams:
    """The parameters of RCPT TO (RFC 3461 4.1, 4.2)."""

    notify: frozenset[str] = frozenset()
    orcpt: str | None = None
    raw: dict[str, str | None] = field(default_factory=dict)


def parse_mail_params(
    text: str, *, dsn: bool, eightbitmime: bool, smtputf8: bool, size: bool = True
) -> MailParams:
    """Parse and validate the parameters of MAIL FROM for the enabled extensions."""
    raw = parse_esmtp_params(text, utf8=smtputf8)
    p_size: int | None = None
    p_body: Literal["7BIT", "8BITMIME"] | None = None
    p_utf8 = False
    p_ret: Literal["FULL", "HDRS"] | None = None
    p_envid: str | None = None
    for key, value in raw.items():
        if key == "SIZE" and size:
            # RFC 1870 6: size-value = 1*20DIGIT
            if value is None or not value.isdigit() or not value.isascii() or len(value) > 20:
                raise _fail(501, "5.5.4", "Bad SIZE parameter")
            p_size = int(value)
        elif key == "BODY" and eightbitmime:
            # RFC 6152 2: BODY=7BIT / BODY=8BITMIME
            upper = (value or "").upper()
            if upper == "7BIT":
                p_body = "7BIT"
            elif upper == "8BITMIME":
                p_body = "8BITMIME"
            else:
                raise _fail(501, "5.5.4", "Bad BODY parameter")
        elif key == "SMTPUTF8" and smtputf8:
            # RFC 6531 3.4: SMTPUTF8 takes no value.
            if value is not None:
                raise _fail(501, "5.5.4", "SMTPUTF8 takes no value")
            p_utf8 = True
        elif key == "RET" and dsn:
            upper = (value or "").upper()
            if upper == "FULL":
                p_ret = "FULL"
            elif upper == "HDRS":
                p_ret = "HDRS"
            else:
                raise _fail(501, "5.5.4", "Bad RET parameter")
        elif key == "ENVID" and dsn:
            if value is None:
                raise _fail(501, "5.5.4", "Bad ENVID parameter")
            p_envid = xtext_decode(value)
            if len(p_envid) > ENVID_MAX:
                raise _fail(501, "5.5.4", "ENVID too long")
        else:
            raise _unsupported(key)
    return MailParams(p_size, p_body, p_utf8, p_ret, p_envid, raw)


_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})
# RFC 3461 4.2: addr-type = atom (RFC 5322 3.2.3).
_ADDR_TYPE_RE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")


def parse_rcpt_params(text: str, *, dsn: bool, smtputf8: bool = False) -> RcptParams:
    """Parse and validate the parameters of RCPT TO (RFC 3461 4.1, 4.2)."""
    raw = parse_esmtp_params(text, utf8=smtputf8)
    notify: frozenset[str] = frozenset()
    orcpt: str | None = None
    for key, value in raw.items():
        if key == "NOTIFY" and dsn:
            items = [x.upper() for x in (value or "").split(",")]
            chosen = frozenset(items)
            if len(chosen) != len(items):
                raise _fail(501, "5.5.4", "Bad NOTIFY parameter")
            # RFC 3461 4.1: NEVER, or a list of SUCCESS/FAILURE/DELAY.
            if chosen != {"NEVER"} and not (chosen and chosen <= _NOTIFY):
                raise _fail(501, "5.5.4", "Bad NOTIFY parameter")
            notify = chosen
        elif key == "ORCPT" and dsn:
            # RFC 3461 4.2: orcpt-parameter = "ORCPT=" addr-type ";" xtext
            addr_type, semi, encoded = (value or "").partition(";")
            if not semi or not encoded or not _ADDR_TYPE_RE.fullmatch(addr_type):
                raise _fail(501, "5.5.4", "Bad ORCPT parameter")
            orcpt = f"{addr_type};{xtext_decode(encoded)}"
            if len(orcpt) > ORCPT_MAX:
                raise _fail(501, "5.5.4", "ORCPT too long")
        else:
            raise _unsupported(key)
    return RcptParams(notify, orcpt, raw)
