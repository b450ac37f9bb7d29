"""Typed IPC messages (docs/processes.md §3).

Each message is a frozen dataclass whose fields are JSON values (str, int,
float, bool, None, lists and dicts of those). :func:`encode` turns one into a
JSON object tagged with its type name; :func:`decode` accepts only registered
types and exactly their fields, so a peer cannot make us build anything else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

_REGISTRY: dict[str, type[Any]] = {}
_FIELDS: dict[str, frozenset[str]] = {}

T = TypeVar("T")


def register(cls: type[T]) -> type[T]:
    """Make a frozen dataclass decodable by its name."""
    _REGISTRY[cls.__name__] = cls
    _FIELDS[cls.__name__] = frozenset(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    return cls


def type_name(obj: Any) -> str:
    return type(obj).__name__


def encode(obj: Any) -> dict[str, Any]:
    name = type(obj).__name__
    if name not in _REGISTRY:
        raise TypeError(f"not an IPC message: {name}")
    # the type first: a receiver checks it before it decodes the rest (ipc/channel.py)
    out: dict[str, Any] = {"t": name}
    for f in _FIELDS[name]:
        out[f] = getattr(obj, f)
    return out


def decode(data: Any) -> Any:
    if not isinstance(data, dict):
        raise ValueError("frame is not an object")
    name = data.pop("t", None)
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown message type {name!r}")
    if set(data) - _FIELDS[name]:
        raise ValueError(f"unexpected fields in {name}")
    return cls(**data)


# -- generic -----------------------------------------------------------------


@register
@dataclass(frozen=True, slots=True)
class Ok:
    text: str = ""


@register
@dataclass(frozen=True, slots=True)
class Error:
    text: str = ""


# -- pony <-> lka --------------------------------------------------------------


@register
@dataclass(frozen=True, slots=True)
class RcptCheck:
    """Match the rules for one recipient and expand it (pony -> lka)."""

    session: dict[str, Any]  # ip, helo, tag, local, listener, auth
    sender: str  # "" for the null sender
    rcpt: str


@register
@dataclass(frozen=True, slots=True)
class RcptResult:
    accepted: bool
    reply: str = ""  # the full SMTP reply when refused
    deliveries: list[dict[str, Any]] = field(default_factory=list)


@register
@dataclass(frozen=True, slots=True)
class ForwardOpen:
    """lka asks the parent for a system user's ~/.forward (root only); the
    parent finds the home folder itself and reads the file as its owner."""

    user: str


@register
@dataclass(frozen=True, slots=True)
class QueueKey:
    """parent -> queue, once at start with ``queue encryption``: the key of
    the queue files (docs/queue.md §8), read by the parent from the
    configuration or stdin; no other process keeps it."""

    key: str = field(repr=False)


@register
@dataclass(frozen=True, slots=True)
class GrantKey:
    """parent -> lka, once at start: the key that seals delivery grants
    (:mod:`mailrider.delivery.grant`), in hex."""

    key: str = field(repr=False)


@register
@dataclass(frozen=True, slots=True)
class ForwardContent:
    content: str | None = None


# -- pony <-> queue ------------------------------------------------------------


@register
@dataclass(frozen=True, slots=True)
class MessageCreate:
    """Open a new message file in the spool; the reply carries its fd."""

    msgid: str = ""  # the id pony chose at MAIL (filters saw it), or "" for a new one


@register
@dataclass(frozen=True, slots=True)
class MessageCreated:
    msgid: str


@register
@dataclass(frozen=True, slots=True)
class MessageCommit:
    msgid: str
    envelopes: list[dict[str, Any]]


@register
@dataclass(frozen=True, slots=True)
class MessageRollback:
    msgid: str


# -- queue <-> scheduler -------------------------------------------------------


@register
@dataclass(frozen=True, slots=True)
class SchedInsert:
    envelopes: list[dict[str, Any]]  # evpid, msgid, type, ctime, retry, ttl, lasttry
    discover: bool = False  # skip envelopes the scheduler already knows


@register
@dataclass(frozen=True, slots=True)
class SchedDue:
    """scheduler -> queue: try these envelopes now (or, with expire, give up on them)."""

    evpids: list[str]
    expire: bool = False


@register
@dataclass(frozen=True, slots=True)
class SchedResult:
    """queue -> scheduler: the outcome of one attempt."""

    evpid: str
    status: str  # ok, tempfail, permfail, expired, removed
    retry: int = 0
    #: when set with status "ok": retry at once the waiting envelopes of this route
    route: str = ""


@register
@dataclass(frozen=True, slots=True)
class SchedCommand:
    """control -> scheduler: schedule/remove/pause/resume an id or "all"."""

    command: str
    target: str = "all"


# -- queue <-> pony (delivery) -------------------------------------------------


@register
@dataclass(frozen=True, slots=True)
class DeliveryResult:
    evpid: str
    status: str  # ok, tempfail, permfail
    text: str = ""


# -- pony <-> parent ------------------------------------------------------------


@register
@dataclass(frozen=True, slots=True)
class ForkDelivery:
    """queue -> parent: run one local delivery as the user lka's sealed grant
    names; the message fd travels along. The reply is a DeliveryResult."""

    envelope: dict[str, Any]


# -- control -------------------------------------------------------------------


@register
@dataclass(frozen=True, slots=True)
class Control:
    """control -> a process: one mailriderctl command."""

    command: str
    args: list[str] = field(default_factory=list)


@register
@dataclass(frozen=True, slots=True)
class ControlReply:
    ok: bool = True
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@register
@dataclass(frozen=True, slots=True)
class Stats:
    """A process's counters, asked by control."""

    counters: dict[str, int] = field(default_factory=dict)


@register
@dataclass(frozen=True, slots=True)
class Shutdown:
    reason: str = ""


@register
@dataclass(frozen=True, slots=True)
class LocalSession:
    """control/parent -> pony: serve SMTP on the descriptor that travels along
    (a local submission from ``sendmail``/``mailriderctl``)."""

    user: str
    uid: int


# -- pony <-> klondike -----------------------------------------------------------


@register
@dataclass(frozen=True, slots=True)
class Sign:
    """pony -> klondike: one private-key operation for a TLS handshake.

    ``op`` is rsa_priv_enc or ecdsa_sign (klondike never decrypts); ``padding`` is
    OpenSSL's RSA padding number (0 for ECDSA); ``cert_hash`` is the SHA-256
    of the certificate's SubjectPublicKeyInfo, in hex.
    """

    cert_hash: str
    op: str
    data_b64: str
    padding: int = 0


@register
@dataclass(frozen=True, slots=True)
class Signed:
    data_b64: str


# -- filters (pony <-> lka <-> parent) -----------------------------------------


@register
@dataclass(frozen=True, slots=True)
class FilterStart:
    """lka -> parent: start the filter of this name; the parent takes its
    command, user, group and chroot from its own configuration. The reply
    carries the program's stdio and stderr."""

    name: str


@register
@dataclass(frozen=True, slots=True)
class TableStart:
    """lka -> parent: start the backend program of the table of this name,
    as the parent's configuration says, as the unprivileged user for
    programs. The reply carries its stdio and stderr."""

    name: str


@register
@dataclass(frozen=True, slots=True)
class FilterBegin:
    """pony -> lka: a session on a listener with filters starts (connect phase),
    or, with ``relay``, an outgoing session of that relay action connected
    (smtp-out: reports only, no answer expected)."""

    sid: str
    listener: int
    rdns: str
    fcrdns: str
    src: str  # a.b.c.d, [v6] or local
    link_src: str  # ip:port
    link_dest: str
    relay: str = ""  # the relay action's name, for an outgoing session


@register
@dataclass(frozen=True, slots=True)
class FilterPhase:
    sid: str
    phase: str
    params: list[str]


@register
@dataclass(frozen=True, slots=True)
class FilterDecision:
    decision: str = "proceed"
    param: str | None = None


@register
@dataclass(frozen=True, slots=True)
class FilterReport:
    sid: str
    event: str
    params: list[str]


@register
@dataclass(frozen=True, slots=True)
class FilterDataBegin:
    """pony -> lka at DATA: do the message lines go through filters? (Ok text yes/no)"""

    sid: str


@register
@dataclass(frozen=True, slots=True)
class FilterData:
    """Message lines, dot-stuffed, without line ends; "." ends them. pony -> lka
    to filter, lka -> pony with the result; error set when filtering failed."""

    sid: str
    lines: list[str]
    error: str = ""


@register
@dataclass(frozen=True, slots=True)
class FilterEnd:
    sid: str


# -- SMTP AUTH (pony -> lka -> parent) -----------------------------------------


@register
@dataclass(frozen=True, slots=True)
class AuthCheck:
    """pony -> lka: check a login against the listener's table (None: system users)."""

    table: str | None
    username: str
    password: str = field(repr=False)


@register
@dataclass(frozen=True, slots=True)
class AuthResult:
    result: str  # "ok", "fail" or "error"
    reply: str = ""


@register
@dataclass(frozen=True, slots=True)
class SendersCheck:
    """pony -> lka: may this authenticated user send as this address? (senders <t>)"""

    table: str
    username: str
    sender: str


# -- outgoing mail (queue <-> pony mta <-> lka) --------------------------------


@register
@dataclass(frozen=True, slots=True)
class DeliverBatch:
    """queue -> pony: relay envelopes of one message that share a route (same
    action and recipient domain) in one transaction; the message fd travels
    along. The reply is a :class:`DeliveryResults`."""

    envelopes: list[dict[str, Any]]


@register
@dataclass(frozen=True, slots=True)
class DeliveryResults:
    """pony -> queue: one result per envelope, in any order.

    ``relay`` names the host that gave the answer (``host [ip]``) or is "";
    ``dsn_relayed`` is true when the DSN parameters were passed on to it."""

    results: list[dict[str, Any]]  # evpid, status, text, relay, dsn_relayed


@register
@dataclass(frozen=True, slots=True)
class MxResolve:
    """pony -> lka: where mail for ``domain`` goes (MX, else the domain's own
    addresses), or with ``host`` set the addresses of that one host."""

    domain: str = ""
    host: str = ""


@register
@dataclass(frozen=True, slots=True)
class MxResult:
    """lka -> pony: ``status`` ok (``hosts`` = [[preference, name, [ip, ...]], ...]
    in preference order), or tempfail / permfail with an SMTP reply in ``text``."""

    status: str
    hosts: list[list[Any]] = field(default_factory=list)
    text: str = ""


@register
@dataclass(frozen=True, slots=True)
class MtaLookup:
    """pony -> lka: a relay option's table value: ``credentials`` (lookup of
    the relay URL's label), ``source`` (fetch), ``relayhost`` (fetch for
    ``host <t>`` when ``key`` is empty, lookup of the recipient domain for
    ``domain <t>``) or ``addrname`` (lookup of the local address for
    ``helo-src <t>``). The reply is Ok(text=value) or Error when the table
    has nothing; a table failure is a TempFail."""

    service: str
    table: str
    key: str = ""


@register
@dataclass(frozen=True, slots=True)
class PeerLookup:
    """pony -> lka: the client's reverse DNS name and whether it is forward-confirmed."""

    ip: str


@register
@dataclass(frozen=True, slots=True)
class PeerInfo:
    rdns: str  # "" when there is no PTR record
    fcrdns: str  # "pass", "fail" or "error"
