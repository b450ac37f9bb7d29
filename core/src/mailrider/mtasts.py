"""MTA-STS (RFC 8461) without I/O: the TXT record, the policy file, MX matching.

The fetch, the cache and the enforcement are pony's (proc/pony_mtasts.py);
this module only decides what bytes mean (docs/mta-sts.md):

- :func:`txt_id`: the ``_mta-sts.<domain>`` TXT records (RFC 8461 §3.1):
  records that do not begin with ``v=STSv1;`` are ignored; anything but
  exactly one remaining, well-formed record means "no policy";
- :func:`policy_from_response`: the raw HTTP response of the policy fetch
  (§3.3): status 200 only (no redirect is followed: a 3xx is a failure),
  ``Content-Type: text/plain``, a body of at most
  :data:`limits.MTA_STS_BODY_MAX` bytes;
- :func:`parse_policy`: the policy body (§3.2): ``version: STSv1``,
  ``mode`` enforce/testing/none, ``max_age`` at most 31557600, ``mx``
  patterns (``*.`` wildcard as the leftmost label only);
- :meth:`Policy.matches`: whether an MX host name is allowed (§4.1).

Every failure raises :class:`PolicyError` with a short reason for the log.
"""

from __future__ import annotations

import http.client
import io
import re
from dataclasses import dataclass

from mailrider import limits

#: §3.1: the id is 1 to 32 letters and digits
_ID_RE = re.compile(r"[A-Za-z0-9]{1,32}")
#: §3.1 sts-ext-name and sts-ext-value
_EXT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_EXT_VALUE_RE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
#: §3.2 policy field name (an extension's too) and value
_FIELD_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_FIELD_VALUE_RE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
#: an mx pattern: a domain name, possibly behind ``*.``
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_MX_RE = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})+")
MODES = ("enforce", "testing", "none")
TXT_PREFIX = "v=STSv1;"


class PolicyError(ValueError):
    """The record or the policy cannot be used (the text is for the log)."""


@dataclass(frozen=True, slots=True)
class Policy:
    mode: str  # enforce, testing, none
    max_age: int  # seconds
    mx: tuple[str, ...]  # lower case, without a trailing dot

    def matches(self, host: str) -> bool:
        """RFC 8461 §4.1: ``host`` is one of the mx patterns; ``*.example.com``
        covers exactly one more leftmost label (not example.com, not a.b.example.com)."""
        name = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, dot, rest = name.partition(".")
                if dot and label and rest == pattern[2:]:
                    return True
            elif name == pattern:
                return True
        return False


def txt_id(records: list[str]) -> str:
    """The policy id of the ``_mta-sts`` TXT records (each record's strings
    already joined); PolicyError when there is no usable record (§3.1)."""
    sts = [r for r in records if r.startswith(TXT_PREFIX)]
    if not sts:
        raise PolicyError("no STSv1 TXT record")
    if len(sts) > 1:
        raise PolicyError(f"{len(sts)} STSv1 TXT records")
    record = sts[0]
    fields = [f.strip(" \t") for f in record.split(";")]
    if fields and fields[-1] == "":
        fields.pop()  # a final ";" is allowed
    found: dict[str, str] = {}
    for i, f in enumerate(fields):
        name, eq, value = f.partition("=")
        if not eq:
            raise PolicyError("malformed TXT record")
        if i == 0:
            if f != "v=STSv1":
                raise PolicyError("malformed TXT record version")
            continue
        if name == "id":
            if not _ID_RE.fullmatch(value):
                raise PolicyError("malformed TXT record id")
        elif not (_EXT_NAME_RE.fullmatch(name) and _EXT_VALUE_RE.fullmatch(value)):
            raise PolicyError("malformed TXT record extension")
        found.setdefault(name, value)
    if "id" not in found:
        raise PolicyError("TXT record without id")
    return found["id"]


def parse_policy(body: bytes) -> Policy:
    """A policy file (§3.2); PolicyError when it is not one."""
    if len(body) > limits.MTA_STS_BODY_MAX:
        raise PolicyError("policy too large")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise PolicyError("policy is not ASCII") from None
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if not line.strip(" \t"):
            continue  # blank lines (a trailing one is common) say nothing
        name, colon, value = line.partition(":")
        name, value = name.strip(" \t"), value.strip(" \t")
        if not colon or not _FIELD_NAME_RE.fullmatch(name) or \
                not _FIELD_VALUE_RE.fullmatch(value):
            raise PolicyError("malformed policy line")
        if name == "mx":
            if len(mx) >= limits.MTA_STS_MX_MAX:
                raise PolicyError("too many mx patterns")
            pattern = value.lower().rstrip(".")
            if len(pattern) > 253 or not _MX_RE.fullmatch(pattern):
                raise PolicyError("malformed mx pattern")
            mx.append(pattern)
        else:
            fields.setdefault(name, value)  # §3.2: the first of a repeated field counts
    if fields.get("version") != "STSv1":
        raise PolicyError("policy version is not STSv1")
    mode = fields.get("mode")
    if mode not in MODES:
        raise PolicyError("policy mode is not enforce, testing or none")
    age = fields.get("max_age", "")
    if not (age.isascii() and age.isdigit() and 1 <= len(age) <= 10):
        raise PolicyError("policy max_age is not a number")
    max_age = int(age)
    if max_age > limits.MTA_STS_MAX_AGE:
        raise PolicyError("policy max_age is over 31557600")
    if not mx and mode != "none":
        raise PolicyError("policy has no mx")
    return Policy(mode, max_age, tuple(mx))


class _Raw:
    """What http.client.HTTPResponse reads from: bytes already received."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.data))


def policy_from_response(raw: bytes) -> Policy:
    """The policy in a complete HTTP/1.1 response (read until the server
    closed); PolicyError for anything §3.3 refuses."""
    resp = http.client.HTTPResponse(_Raw(raw))  # type: ignore[arg-type]
    try:
        resp.begin()
        if resp.status != 200:
            # §3.3: redirects are not followed; any other status is no policy
            raise PolicyError(f"HTTP status {resp.status}")
        ctype = (resp.getheader("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "text/plain":
            raise PolicyError(f"Content-Type {ctype or 'missing'}, not text/plain")
        length = resp.getheader("Content-Length")
        if length is not None and (not length.strip().isdigit()
                                   or int(length) > limits.MTA_STS_BODY_MAX):
            raise PolicyError("policy too large")
        body = resp.read(limits.MTA_STS_BODY_MAX + 1)
    except (http.client.HTTPException, ValueError, OSError) as exc:
        if isinstance(exc, PolicyError):
            raise
        raise PolicyError(f"bad HTTP response: {type(exc).__name__}") from None
    if length is not None and len(body) != int(length):
        raise PolicyError("truncated policy")
    return parse_policy(body)
