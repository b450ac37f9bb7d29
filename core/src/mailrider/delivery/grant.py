"""Delivery grants: proof that lka, and nobody else, chose a local delivery.

A local delivery runs as some user and may run a command or write a file
that an alias table or a ``~/.forward`` named. The parent (root) forks it,
but the request reaches the parent through pony and the queue, and the
envelope rests in the spool meanwhile: none of them may be trusted to say
who to run as or what to run (docs/security.md).

So lka, which read the tables, seals the fields it decided with an
HMAC-SHA256 under a key only the parent and lka hold (the parent keeps it in
a root-only file of the state folder and hands it to lka at start). The seal
covers the sender and the recipient too, so a grant cannot be moved to
another transaction's addresses, which ``%{...}`` formats put on command
lines. The parent recomputes the seal before it acts, and then takes every
credential from its own knowledge: the action from its configuration, the
system user from the password database.

Invariants: :data:`FIELDS` is the whole sealed set, serialised in a fixed
order with lengths so no two field sets share an encoding; a missing field
seals as the empty string; the seal is lowercase hex under ``mda-grant``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping

#: the envelope fields lka decides and the parent relies on
FIELDS = (
    "dispatcher", "sender", "rcpt", "dest", "mda-method", "mda-arg", "mda-user",
    "mda-uid", "mda-gid", "mda-home", "mda-local-user", "mda-subaddress",
)
#: the envelope key of the seal
KEY = "mda-grant"
#: bytes of secret in a grant key
KEY_SIZE = 32
#: the key file's name in the state folder
KEY_FILE = "grant.key"


def _message(env: Mapping[str, object]) -> bytes:
    out = bytearray(b"mailrider-grant-1\0")
    for name in FIELDS:
        value = str(env.get(name, "")).encode("utf-8", "surrogateescape")
        out += name.encode() + b"\0" + str(len(value)).encode() + b"\0" + value
    return bytes(out)


def seal(key: bytes, env: Mapping[str, object]) -> str:
    """The seal of the grant fields of ``env``."""
    if len(key) != KEY_SIZE:
        raise ValueError("grant key of the wrong size")
    return hmac.new(key, _message(env), hashlib.sha256).hexdigest()


def verify(key: bytes, env: Mapping[str, object]) -> bool:
    """True when ``env`` carries a seal lka made for exactly these fields."""
    given = env.get(KEY)
    if not isinstance(given, str) or len(given) != 64:
        return False
    return hmac.compare_digest(seal(key, env), given)


def load_or_create(statedir: str) -> bytes:
    """The grant key of this state folder, made on first use (mode 0600).

    Kept across restarts so that envelopes queued before a restart still
    verify. Only the parent calls this; the file belongs to whoever runs it
    (root in production) and no child can read it.
    """
    path = os.path.join(statedir, KEY_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        key = secrets.token_bytes(KEY_SIZE)
        tmp = f"{path}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        return key
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise PermissionError(f"{path}: must belong to uid {os.geteuid()} with mode 0600")
        key = os.read(fd, KEY_SIZE + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_SIZE:
        raise ValueError(f"{path}: not a grant key ({len(key)} bytes); remove it to make a new one")
    return key
