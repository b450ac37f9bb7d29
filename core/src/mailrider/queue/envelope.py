"""The envelope: one recipient of one message, as stored in the spool.

On disk an envelope is a small text file of ``key: value`` lines (in the
spirit of OpenSMTPD's, docs/queue.md §3, with our own keys for what lka
resolved at RCPT time). Values never contain CR or LF: :func:`serialise`
refuses them, so a hostile address cannot add a line. Unknown keys are kept,
so a newer daemon's envelopes survive a downgrade.

Identifiers are lowercase hex of a fixed length (a message id 8 digits, an
envelope id 16, the first 8 being its message's) and nothing else: every
handler that receives one checks it with :func:`is_msgid`, :func:`is_evpid`
or :func:`is_target` before it goes anywhere near a path, so an id can never
be ``../..`` or an absolute path.
"""

from __future__ import annotations

import os
import secrets

VERSION = "1"

#: the order keys are written in; others follow alphabetically
ORDER = (
    "version", "evpid", "type", "dispatcher", "tag", "smtpname", "helo", "hostname",
    "sockaddr", "sender", "rcpt", "dest", "ctime", "last-try", "retry", "ttl", "flags",
    "dsn-notify", "dsn-ret", "dsn-envid", "dsn-orcpt", "errorline", "mda-method",
    "mda-arg", "mda-user", "mda-uid", "mda-gid", "mda-home", "bounce-type",
    "message-size", "message-sha256",
)

Envelope = dict[str, str]


def new_msgid() -> str:
    """A random non-zero 32-bit id, 8 lowercase hex digits (docs/queue.md §1)."""
    while True:
        v = secrets.randbits(32)
        if v:
            return f"{v:08x}"


def new_evpid(msgid: str) -> str:
    """msgid followed by a random non-zero 32-bit part: 16 hex digits."""
    while True:
        v = secrets.randbits(32)
        if v:
            return f"{msgid}{v:08x}"


_HEX = frozenset("0123456789abcdef")


def is_msgid(text: object) -> bool:
    return isinstance(text, str) and len(text) == 8 and _HEX.issuperset(text)


def is_evpid(text: object) -> bool:
    return isinstance(text, str) and len(text) == 16 and _HEX.issuperset(text)


def is_target(text: object, *, all_ok: bool = True) -> bool:
    """What ``schedule``, ``remove``, ``pause``/``resume envelope`` take: an
    envelope id, a message id (its every envelope) or, if ``all_ok``, "all"."""
    return (all_ok and text == "all") or is_msgid(text) or is_evpid(text)


def msgid_of(evpid: str) -> str:
    return evpid[:8]


def serialise(env: Envelope) -> bytes:
    keys = [k for k in ORDER if k in env] + sorted(k for k in env if k not in ORDER)
    lines = []
    for k in keys:
        v = str(env[k])
        if "\n" in v or "\r" in v or "\n" in k or ":" in k:
            raise ValueError(f"envelope field {k!r} holds a line break")
        if v == "":
            continue
        lines.append(f"{k}: {v}\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def parse(data: bytes) -> Envelope:
    env: Envelope = {}
    for raw in data.decode("utf-8", "surrogateescape").split("\n"):
        if not raw:
            continue
        key, sep, value = raw.partition(": ")
        if not sep:
            if raw.endswith(":"):
                key, value = raw[:-1], ""
            else:
                raise ValueError(f"bad envelope line {raw[:40]!r}")
        env[key] = value
    if env.get("version") != VERSION:
        raise ValueError(f"unsupported envelope version {env.get('version')!r}")
    if not is_evpid(env.get("evpid", "")):
        raise ValueError("envelope without a valid evpid")
    return env


def write_atomic(path: str, env: Envelope, *, sync: bool = True) -> None:
    """Replace ``path`` with the envelope: temp file, fsync, rename."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, serialise(env))
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
