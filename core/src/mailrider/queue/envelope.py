"""The envelope: one recipient of one message, as stored in the spool and as
it travels between processes.

An :class:`Envelope` is a frozen dataclass; what lka decided for its
recipient (the action, the delivery method and user, the seal of the grant)
is its :class:`Delivery`. Envelopes are built once, from lka's answer, by
pony at commit (and by the queue for a notification), then only read: a
change (a retry count, an error line) is a new envelope made with
:meth:`Envelope.replace`.

One codec serves the disk and the IPC (docs/queue.md §3): :func:`to_fields`
gives the ``key: value`` pairs, :func:`from_fields` checks and types them.
On disk the pairs are lines (:func:`serialise`, :func:`parse`, the format of
every earlier version, so spools written before this module load unchanged);
over IPC they are a JSON object of strings (ipc/messages.py). Invariants of
the codec:

- values never contain CR or LF (:func:`to_fields` refuses them, so a
  hostile address cannot add a line), keys never contain ``:``;
- an empty value and a missing key are the same thing (empty values are
  not written);
- numbers are canonical decimal (``str(int(v)) == v``), so re-encoding gives
  the bytes lka sealed (:mod:`mailrider.delivery.grant`);
- unknown keys are kept (:attr:`Envelope.extra`), so a newer daemon's
  envelopes survive a downgrade;
- an envelope has at most :data:`FIELDS_MAX` keys, each value at most
  :data:`VALUE_MAX` characters.

Identifiers are lowercase hex of a fixed length (a message id 8 digits, an
envelope id 16, the first 8 being its message's) and nothing else: the codec
refuses an envelope whose id is not one (:func:`is_evpid`), and every
handler that receives an id checks it with :func:`is_msgid`,
:func:`is_evpid` or :func:`is_target` before it goes anywhere near a path,
so an id can never be ``../..`` or an absolute path.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

VERSION = "1"

#: the order keys are written in; others follow alphabetically
ORDER = (
    "version", "evpid", "type", "dispatcher", "tag", "smtpname", "helo", "hostname",
    "sockaddr", "sender", "rcpt", "dest", "ctime", "last-try", "retry", "ttl", "flags",
    "dsn-notify", "dsn-ret", "dsn-envid", "dsn-orcpt", "errorline", "mda-method",
    "mda-arg", "mda-user", "mda-uid", "mda-gid", "mda-home", "bounce-type",
    "message-size", "message-sha256",
)
_RANK = {k: i for i, k in enumerate(ORDER)}

#: an envelope has at most this many keys, each value at most this long
FIELDS_MAX = 64
VALUE_MAX = 8192

#: envelope types: local delivery, relaying, a notification's own envelope
TYPES = ("mda", "mta", "bounce")


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


@dataclass(frozen=True, slots=True)
class Delivery:
    """What lka decided for one recipient: where it goes and, for a local
    delivery, as whom. lka seals these fields with the sender
    (:attr:`grant`, see :mod:`mailrider.delivery.grant`); the parent checks
    the seal before it runs anything."""

    dispatcher: str  # the action's name
    rcpt: str  # the recipient as the client gave it
    dest: str  # the address this delivery came from (an alias target, say)
    method: str  # the action's method, file/pipe for an alias target, relay
    arg: str = ""  # file: the path; pipe: the command
    user: str = ""  # the system or virtual user a local delivery runs as
    uid: int | None = None  # None: not given
    gid: int | None = None
    home: str = ""
    local_user: str = ""  # %{user.username}
    subaddress: str = ""  # the tag stripped from the user name
    grant: str = ""  # lka's seal

    @property
    def relayed(self) -> bool:
        return self.method == "relay"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One recipient of one message (docs/queue.md §3 names the keys)."""

    evpid: str
    delivery: Delivery
    type: str = "mda"
    tag: str = ""
    smtpname: str = ""  # our name on the listener that took it
    helo: str = ""
    hostname: str = ""
    sockaddr: str = ""
    sender: str = ""  # "" for the null sender
    ctime: int = 0
    last_try: int | None = None
    retry: int = 0
    ttl: int = 0  # 0: the queue's ttl
    flags: tuple[str, ...] = ()
    dsn_notify: tuple[str, ...] = ()  # as given (RFC 3461 NOTIFY=)
    dsn_ret: str = ""
    dsn_envid: str = ""
    dsn_orcpt: str = ""
    errorline: str = ""
    bounce_type: str = ""
    last_bounce: int | None = None
    message_size: int | None = None
    message_sha256: str = ""
    #: keys this version does not know, kept as they were: (key, value), sorted
    extra: tuple[tuple[str, str], ...] = ()

    # -- what readers ask ---------------------------------------------------

    @property
    def msgid(self) -> str:
        return self.evpid[:8]

    @property
    def rcpt(self) -> str:
        return self.delivery.rcpt

    @property
    def dest(self) -> str:
        return self.delivery.dest

    @property
    def dispatcher(self) -> str:
        return self.delivery.dispatcher

    @property
    def is_bounce(self) -> bool:
        """A notification's own envelope: it never causes another."""
        return self.type == "bounce" or "bounce" in self.flags

    @property
    def route(self) -> str:
        """What a relay envelope's connection depends on: its action and the
        recipient domain ("" for a local delivery)."""
        if self.type != "mta":
            return ""
        return f"{self.delivery.dispatcher}:{self.delivery.dest.rpartition('@')[2].lower()}"

    @property
    def notify(self) -> frozenset[str]:
        """The NOTIFY conditions, upper case."""
        return frozenset(x.strip().upper() for x in self.dsn_notify if x.strip())

    def replace(self, **changes: Any) -> Envelope:
        return dataclasses.replace(self, **changes)


# -- the codec ---------------------------------------------------------------

#: Delivery attribute <-> key
_DELIVERY_KEYS = (
    ("dispatcher", "dispatcher"), ("rcpt", "rcpt"), ("dest", "dest"),
    ("method", "mda-method"), ("arg", "mda-arg"), ("user", "mda-user"),
    ("uid", "mda-uid"), ("gid", "mda-gid"), ("home", "mda-home"),
    ("local_user", "mda-local-user"), ("subaddress", "mda-subaddress"),
    ("grant", "mda-grant"),
)
#: Envelope attribute <-> key (evpid, delivery, extra apart)
_ENVELOPE_KEYS = (
    ("type", "type"), ("tag", "tag"), ("smtpname", "smtpname"), ("helo", "helo"),
    ("hostname", "hostname"), ("sockaddr", "sockaddr"), ("sender", "sender"),
    ("ctime", "ctime"), ("last_try", "last-try"), ("retry", "retry"), ("ttl", "ttl"),
    ("flags", "flags"), ("dsn_notify", "dsn-notify"), ("dsn_ret", "dsn-ret"),
    ("dsn_envid", "dsn-envid"), ("dsn_orcpt", "dsn-orcpt"), ("errorline", "errorline"),
    ("bounce_type", "bounce-type"), ("last_bounce", "last-bounce"),
    ("message_size", "message-size"), ("message_sha256", "message-sha256"),
)
_INTS = frozenset({"uid", "gid", "ctime", "last_try", "retry", "ttl", "last_bounce",
                   "message_size"})
#: integers that may be negative (a relay delivery's uid and gid are -1)
_SIGNED = frozenset({"uid", "gid"})
_KNOWN = frozenset({"version", "evpid"} | {k for _, k in _DELIVERY_KEYS}
                   | {k for _, k in _ENVELOPE_KEYS})


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _put(out: dict[str, str], key: str, value: str) -> None:
    if "\n" in value or "\r" in value:
        raise ValueError(f"envelope field {key!r} holds a line break")
    if value:
        out[key] = value


def delivery_fields(d: Delivery) -> dict[str, str]:
    """The keys of a delivery (what lka answers, what its grant covers)."""
    out: dict[str, str] = {}
    for attr, key in _DELIVERY_KEYS:
        _put(out, key, _text(getattr(d, attr)))
    return out


def to_fields(env: Envelope) -> dict[str, str]:
    """The envelope as ``key: value`` pairs, in the order they are written."""
    if env.evpid and not is_evpid(env.evpid):
        raise ValueError("envelope without a valid evpid")
    fields: dict[str, str] = {"version": VERSION}
    _put(fields, "evpid", env.evpid)
    fields.update(delivery_fields(env.delivery))
    for attr, key in _ENVELOPE_KEYS:
        value = getattr(env, attr)
        if attr == "flags":
            _put(fields, key, " ".join(value))
        elif attr == "dsn_notify":
            _put(fields, key, ",".join(value))
        else:
            _put(fields, key, _text(value))
    for key, value in env.extra:
        if key in _KNOWN or not key or ":" in key or "\n" in key or "\r" in key:
            raise ValueError(f"bad envelope key {key[:40]!r}")
        _put(fields, key, value)
    return dict(sorted(fields.items(), key=lambda kv: (_RANK.get(kv[0], len(ORDER)), kv[0])))


def _int(attr: str, key: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"envelope field {key!r} is not a number") from None
    if str(n) != value or (n < 0 and attr not in _SIGNED):
        raise ValueError(f"envelope field {key!r} is not a number")
    return n


def _typed(attr: str, key: str, value: str) -> object:
    if attr in _INTS:
        return _int(attr, key, value) if value else None
    if attr == "flags":
        return tuple(value.split())
    if attr == "dsn_notify":
        return tuple(x for x in value.split(",") if x)
    return value


def _check(fields: Mapping[str, object]) -> dict[str, str]:
    if not isinstance(fields, Mapping) or len(fields) > FIELDS_MAX:
        raise ValueError("malformed envelope")
    for k, v in fields.items():
        if not isinstance(k, str) or not isinstance(v, str) or len(v) > VALUE_MAX:
            raise ValueError("malformed envelope")
        if "\n" in v or "\r" in v or "\n" in k or "\r" in k or ":" in k:
            raise ValueError(f"envelope field {k[:40]!r} holds a line break")
    return dict(fields)  # type: ignore[arg-type]


def delivery_from_fields(fields: Mapping[str, object]) -> Delivery:
    """A delivery from its keys (others are ignored)."""
    f = _check(fields)
    kw: dict[str, Any] = {}
    for attr, key in _DELIVERY_KEYS:
        kw[attr] = _typed(attr, key, f.get(key, ""))
    return Delivery(**kw)


def from_fields(fields: Mapping[str, object], *, draft: bool = False) -> Envelope:
    """Check and type the pairs of an envelope (from the disk or a peer).

    Raises ValueError for anything but strings to strings within the bounds,
    a version other than :data:`VERSION` (when given), an envelope id that is
    not one, a number that is not canonical. With ``draft`` the envelope has
    no id yet (pony's, before the queue names it) and must not claim one.
    """
    f = _check(fields)
    version = f.get("version", VERSION)
    if version != VERSION:
        raise ValueError(f"unsupported envelope version {version!r}")
    evpid = f.get("evpid", "")
    if draft:
        if evpid:
            raise ValueError("a new envelope names no evpid")
    elif not is_evpid(evpid):
        raise ValueError("envelope without a valid evpid")
    kw: dict[str, Any] = {}
    for attr, key in _ENVELOPE_KEYS:
        value = f.get(key, "")
        if value or attr not in _INTS:
            kw[attr] = _typed(attr, key, value)
    if not kw["type"]:
        del kw["type"]  # a file without one: a local delivery, as always
    extra = tuple(sorted((k, v) for k, v in f.items() if k not in _KNOWN and v))
    return Envelope(evpid=evpid, delivery=delivery_from_fields(f), extra=extra, **kw)


def serialise(env: Envelope) -> bytes:
    """The envelope file: one ``key: value`` line per non-empty field."""
    return "".join(f"{k}: {v}\n" for k, v in to_fields(env).items()).encode(
        "utf-8", "surrogateescape")


def parse_fields(data: bytes) -> dict[str, str]:
    """The pairs of an envelope file (a line ``key:`` is an empty value)."""
    fields: dict[str, str] = {}
    for raw in data.decode("utf-8", "surrogateescape").split("\n"):
        if not raw:
            continue
        key, sep, value = raw.partition(": ")
        if not sep:
            if raw.endswith(":"):
                key, value = raw[:-1], ""
            else:
                raise ValueError(f"bad envelope line {raw[:40]!r}")
        fields[key] = value
    return fields


def parse(data: bytes) -> Envelope:
    """An envelope file, checked (see :func:`from_fields`); it must name its
    version and id."""
    fields = parse_fields(data)
    if fields.get("version") != VERSION:
        raise ValueError(f"unsupported envelope version {fields.get('version')!r}")
    return from_fields(fields)


def write_atomic(path: str, env: Envelope, *, sync: bool = True) -> None:
    """Replace ``path`` with the envelope: temp file, fsync, rename."""
    data = serialise(env)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
