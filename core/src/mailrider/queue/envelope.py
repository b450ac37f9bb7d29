"""The envelope: one recipient of one message, as stored in the spool and as
it travels between processes.

An :class:`Envelope` is a frozen dataclass; what lka decided for its
recipient (the action, the delivery method and user, the seal of the grant)
is its :class:`Delivery`. Envelopes are built once, from lka's answer, by
pony at commit (and by the queue for a notification), then only read: a
change (a retry count, an error line) is a new envelope made with
``dataclasses.replace``, whose keywords mypy checks.

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


# -- the codec ---------------------------------------------------------------

# How each attribute is written: text as it is, a count (non-negative), an id
# (uid/gid, -1 for none), words (flags, space-separated), a list (NOTIFY,
# comma-separated).
_TEXT, _COUNT, _ID, _WORDS, _LIST = range(5)

#: (key, attribute, kind) of a Delivery
_DELIVERY_SPEC = (
    ("dispatcher", "dispatcher", _TEXT), ("rcpt", "rcpt", _TEXT), ("dest", "dest", _TEXT),
    ("mda-method", "method", _TEXT), ("mda-arg", "arg", _TEXT), ("mda-user", "user", _TEXT),
    ("mda-uid", "uid", _ID), ("mda-gid", "gid", _ID), ("mda-home", "home", _TEXT),
    ("mda-local-user", "local_user", _TEXT), ("mda-subaddress", "subaddress", _TEXT),
    ("mda-grant", "grant", _TEXT),
)
#: (key, attribute, kind) of an Envelope (evpid, delivery and extra apart)
_ENVELOPE_SPEC = (
    ("type", "type", _TEXT), ("tag", "tag", _TEXT), ("smtpname", "smtpname", _TEXT),
    ("helo", "helo", _TEXT), ("hostname", "hostname", _TEXT), ("sockaddr", "sockaddr", _TEXT),
    ("sender", "sender", _TEXT), ("ctime", "ctime", _COUNT), ("last-try", "last_try", _COUNT),
    ("retry", "retry", _COUNT), ("ttl", "ttl", _COUNT), ("flags", "flags", _WORDS),
    ("dsn-notify", "dsn_notify", _LIST), ("dsn-ret", "dsn_ret", _TEXT),
    ("dsn-envid", "dsn_envid", _TEXT), ("dsn-orcpt", "dsn_orcpt", _TEXT),
    ("errorline", "errorline", _TEXT), ("bounce-type", "bounce_type", _TEXT),
    ("last-bounce", "last_bounce", _COUNT), ("message-size", "message_size", _COUNT),
    ("message-sha256", "message_sha256", _TEXT),
)
_DELIVERY_KEYS = frozenset(k for k, _, _ in _DELIVERY_SPEC)
_KNOWN = frozenset({"version", "evpid"} | _DELIVERY_KEYS
                   | {k for k, _, _ in _ENVELOPE_SPEC})
#: the write order: ORDER's keys, then the other known keys and unknown ones,
#: alphabetically; (key, attribute, kind, of the delivery?) of the first part
_HEAD = tuple(sorted(
    [(k, a, kind, True) for k, a, kind in _DELIVERY_SPEC if k in _RANK]
    + [(k, a, kind, False) for k, a, kind in _ENVELOPE_SPEC if k in _RANK],
    key=lambda x: _RANK[x[0]]))
_TAIL = tuple((k, a, kind, True) for k, a, kind in _DELIVERY_SPEC if k not in _RANK) + tuple(
    (k, a, kind, False) for k, a, kind in _ENVELOPE_SPEC if k not in _RANK)


def _render(value: Any, kind: int) -> str:
    if kind == _TEXT:
        return str(value)
    if kind == _WORDS:
        return " ".join(value)
    if kind == _LIST:
        return ",".join(value)
    return "" if value is None else str(value)


def _no_breaks(fields: dict[str, str]) -> dict[str, str]:
    blob = "".join(fields.values())
    if "\n" in blob or "\r" in blob:
        bad = next(k for k, v in fields.items() if "\n" in v or "\r" in v)
        raise ValueError(f"envelope field {bad!r} holds a line break")
    return fields


def delivery_fields(d: Delivery) -> dict[str, str]:
    """The keys of a delivery (what lka answers, what its grant covers)."""
    out: dict[str, str] = {}
    for key, attr, kind, _ in _HEAD + _TAIL:
        if key in _DELIVERY_KEYS:
            text = _render(getattr(d, attr), kind)
            if text:
                out[key] = text
    return _no_breaks(out)


def to_fields(env: Envelope) -> dict[str, str]:
    """The envelope as ``key: value`` pairs, in the order they are written."""
    if env.evpid and not is_evpid(env.evpid):
        raise ValueError("envelope without a valid evpid")
    out: dict[str, str] = {"version": VERSION}
    if env.evpid:
        out["evpid"] = env.evpid
    d = env.delivery
    for key, attr, kind, of_delivery in _HEAD:
        text = _render(getattr(d if of_delivery else env, attr), kind)
        if text:
            out[key] = text
    tail: list[tuple[str, str]] = []
    for key, attr, kind, of_delivery in _TAIL:
        text = _render(getattr(d if of_delivery else env, attr), kind)
        if text:
            tail.append((key, text))
    for key, text in env.extra:
        if key in _KNOWN or not key or ":" in key or "\n" in key or "\r" in key:
            raise ValueError(f"bad envelope key {key[:40]!r}")
        if text:
            tail.append((key, text))
    tail.sort()
    out.update(tail)
    return _no_breaks(out)


def _check(fields: Mapping[str, object]) -> Mapping[str, str]:
    if not isinstance(fields, dict) or len(fields) > FIELDS_MAX:
        raise ValueError("malformed envelope")
    try:
        # str.join takes strings only: one pass in C checks every type
        keys, values = "\0".join(fields), "\0".join(fields.values())
    except TypeError:
        raise ValueError("malformed envelope") from None
    if fields and max(map(len, fields.values())) > VALUE_MAX:
        raise ValueError("malformed envelope")
    if "\n" in values or "\r" in values or "\n" in keys or "\r" in keys or ":" in keys:
        raise ValueError("envelope field holds a line break")
    return fields


def _number(key: str, value: str, signed: bool) -> int:
    digits = value[1:] if signed and value[:1] == "-" else value
    # canonical decimal only: ASCII digits, no sign, no leading zero, no "_"
    if not (digits.isascii() and digits.isdigit()) or (digits[0] == "0" and value != "0"):
        raise ValueError(f"envelope field {key!r} is not a number")
    return int(value)


def _groups(spec: tuple[tuple[str, str, int], ...]) -> tuple[tuple[tuple[str, str], ...], ...]:
    """``spec``'s (key, attribute) pairs by kind."""
    return tuple(tuple((k, a) for k, a, kind in spec if kind == want)
                 for want in (_TEXT, _COUNT, _ID, _WORDS, _LIST))


_DELIVERY_GROUPS = _groups(_DELIVERY_SPEC)
_ENVELOPE_GROUPS = _groups(_ENVELOPE_SPEC)


#: text attributes that the envelopes in memory at once mostly hold alike (the
#: action, the method, the user and home, our names, the client's, the sender,
#: often the recipient): read through :func:`share`, one copy of each value
#: serves them all. The queue holds up to max-inflight envelopes loaded for
#: delivery, and the parent as many decoded (docs/performance.md §1)
_SHARED_ATTRS = frozenset({
    "dispatcher", "rcpt", "dest", "method", "arg", "user", "home", "local_user",
    "subaddress", "type", "tag", "smtpname", "helo", "hostname", "sender", "dsn_ret"})
#: at most this many values kept for sharing, each at most _POOL_VALUE_MAX
#: characters: the pool holds a few tens of kB however varied the envelopes
_POOL_MAX = 256
_POOL_VALUE_MAX = 255
_pool: dict[str, str] = {}


def share(value: str) -> str:
    """``value``, or the equal string an earlier envelope already holds.

    A bounded pool, emptied when full, rather than :func:`sys.intern`: these
    values come from clients, and interned strings are immortal in some
    Python versions."""
    if len(value) > _POOL_VALUE_MAX:
        return value
    got = _pool.get(value)
    if got is not None:
        return got
    if len(_pool) >= _POOL_MAX:
        _pool.clear()
    _pool[value] = value
    return value


def _typed(groups: tuple[tuple[tuple[str, str], ...], ...], f: Mapping[str, str]
           ) -> dict[str, Any]:
    """The attributes that ``f`` gives a value (the others keep their default)."""
    text, counts, ids, words, lists = groups
    get = f.get
    kw: dict[str, Any] = {a: share(v) if a in _SHARED_ATTRS else v
                          for k, a in text if (v := get(k))}
    for k, a in counts:
        if v := get(k):
            kw[a] = _number(k, v, False)
    for k, a in ids:
        if v := get(k):
            kw[a] = _number(k, v, True)
    for k, a in words:
        if v := get(k):
            kw[a] = tuple(v.split())
    for k, a in lists:
        if v := get(k):
            kw[a] = tuple(x for x in v.split(",") if x)
    return kw


def _delivery(f: Mapping[str, str]) -> Delivery:
    kw = _typed(_DELIVERY_GROUPS, f)
    for attr in ("dispatcher", "rcpt", "dest", "method"):
        kw.setdefault(attr, "")
    return Delivery(**kw)


def delivery_from_fields(fields: Mapping[str, object]) -> Delivery:
    """A delivery from its keys (others are ignored)."""
    return _delivery(_check(fields))


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
    kw = _typed(_ENVELOPE_GROUPS, f)
    unknown = f.keys() - _KNOWN
    if unknown:
        kw["extra"] = tuple(sorted((k, f[k]) for k in unknown if f[k]))
    return Envelope(evpid=evpid, delivery=_delivery(f), **kw)


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
