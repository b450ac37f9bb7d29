"""Typed IPC messages (docs/processes.md §3).

Each message is a frozen dataclass whose fields are JSON values (str, int,
float, bool, None, lists and dicts of those) or values with a codec of
their own: envelopes and deliveries (:mod:`mailrider.queue.envelope`, the
codec of the spool's files), SMTP replies, and records such as the results
of a delivery batch. :func:`encode` turns one into a JSON object tagged with
its type name; :func:`decode` accepts only registered types and exactly
their fields, and a field with a codec only as that codec checks it, so a
peer cannot make us build anything else.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mailrider import limits
from mailrider.errors import SMTPFailure
from mailrider.queue import envelope as envmod
from mailrider.queue.envelope import Delivery, Envelope
from mailrider.smtp.reply import Reply

_REGISTRY: dict[str, type[Any]] = {}
#: every dataclass that travels, messages and the records inside them
_CLASSES: dict[str, type[Any]] = {}
_FIELDS: dict[str, frozenset[str]] = {}
#: type name -> field name -> codec, for the fields that have one
_CODECS: dict[str, dict[str, _Codec]] = {}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Codec:
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


def _list_of(item: _Codec) -> _Codec:
    def decode(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise ValueError("not a list")
        return [item.decode(v) for v in value]

    return _Codec(lambda value: [item.encode(v) for v in value], decode)


def _reply_decode(value: Any) -> Reply:
    if not (isinstance(value, list) and len(value) == 4 and type(value[0]) is int
            and all(isinstance(x, str) for x in value[1:3]) and isinstance(value[3], list)
            and all(isinstance(x, str) for x in value[3])):
        raise ValueError("not a reply")
    return Reply(value[0], value[1], value[2], tuple(value[3]))


def _optional(inner: _Codec) -> _Codec:
    return _Codec(lambda v: None if v is None else inner.encode(v),
                  lambda v: None if v is None else inner.decode(v))


#: an envelope: its ``key: value`` pairs, as in the spool (docs/queue.md §3)
ENVELOPE = _Codec(envmod.to_fields, envmod.from_fields)
ENVELOPES = _list_of(ENVELOPE)
#: envelopes the queue has not named yet (pony's, at commit)
DRAFTS = _list_of(_Codec(envmod.to_fields, lambda v: envmod.from_fields(v, draft=True)))
DELIVERIES = _list_of(_Codec(envmod.delivery_fields, envmod.delivery_from_fields))
#: an SMTP reply: [code, status, text, [continuation lines]]
REPLY = _Codec(lambda r: [r.code, r.status, r.text, list(r.lines)], _reply_decode)
OPTIONAL_REPLY = _optional(REPLY)


def reply_of(exc: SMTPFailure, default: Reply) -> Reply:
    """The reply a failure implies, typed; ``default`` when its code and
    status make no valid failure reply (a 2xx, a status of another class)."""
    try:
        reply = Reply(exc.code, exc.status, exc.text)
    except ValueError:
        return default
    return reply if reply.code >= 400 else default


def _codec(codec: _Codec) -> Any:
    """Field metadata: the field's values travel through ``codec``."""
    return {"codec": codec}


def _describe(cls: type[T]) -> type[T]:
    """Make a frozen dataclass travel (inside a message)."""
    _CLASSES[cls.__name__] = cls
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    _FIELDS[cls.__name__] = frozenset(f.name for f in fields)
    _CODECS[cls.__name__] = {f.name: f.metadata["codec"] for f in fields
                             if "codec" in f.metadata}
    return cls


def register(cls: type[T]) -> type[T]:
    """Make a frozen dataclass decodable by its name."""
    _describe(cls)
    _REGISTRY[cls.__name__] = cls
    return cls


def type_name(obj: Any) -> str:
    return type(obj).__name__


def _fields_of(obj: Any, name: str) -> dict[str, Any]:
    codecs = _CODECS[name]
    out: dict[str, Any] = {}
    for f in _FIELDS[name]:
        value = getattr(obj, f)
        out[f] = codecs[f].encode(value) if f in codecs else value
    return out


def encode(obj: Any) -> dict[str, Any]:
    name = type(obj).__name__
    if name not in _REGISTRY:
        raise TypeError(f"not an IPC message: {name}")
    # the type first: a receiver checks it before it decodes the rest (ipc/channel.py)
    out: dict[str, Any] = {"t": name}
    out.update(_fields_of(obj, name))
    return out


def _build(name: str, data: dict[str, Any]) -> Any:
    if set(data) - _FIELDS[name]:
        raise ValueError(f"unexpected fields in {name}")
    codecs = _CODECS[name]
    args = {k: codecs[k].decode(v) if k in codecs else v for k, v in data.items()}
    return _CLASSES[name](**args)


def decode(data: Any) -> Any:
    if not isinstance(data, dict):
        raise ValueError("frame is not an object")
    name = data.pop("t", None)
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown message type {name!r}")
    return _build(name, data)


def _records(cls: type[Any]) -> _Codec:
    """A list of registered messages carried inside another (without their tag)."""
    name = cls.__name__

    def decode(value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"{name} is not an object")
        return _build(name, dict(value))

    return _list_of(_Codec(lambda obj: _fields_of(obj, name), decode))


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
    #: the SMTP reply when refused
    reply: Reply | None = field(default=None, metadata=_codec(OPTIONAL_REPLY))
    #: lka's decision for each address the recipient expands to, sealed
    deliveries: list[Delivery] = field(default_factory=list, metadata=_codec(DELIVERIES))


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
    """pony -> queue: the envelopes of the message, built from lka's deliveries;
    the queue names each one (they come without an evpid)."""

    msgid: str
    envelopes: list[Envelope] = field(metadata=_codec(DRAFTS))
    #: the SMTP session's id, which leads the queue's ``smtp envelope`` log lines
    session: str = ""


@register
@dataclass(frozen=True, slots=True)
class MessageRollback:
    msgid: str


# -- queue <-> scheduler -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchedEntry:
    """What the scheduler keeps of an envelope (queue -> scheduler)."""

    evpid: str
    type: str = "mda"
    ctime: int = 0
    retry: int = 0
    ttl: int = 0  # 0: the queue's ttl
    route: str = ""  # relay envelopes: action and domain (Envelope.route)

    def __post_init__(self) -> None:
        if not envmod.is_evpid(self.evpid):
            raise ValueError("invalid envelope id")
        if not isinstance(self.type, str) or not isinstance(self.route, str) or not all(
                type(n) is int and n >= 0 for n in (self.ctime, self.retry, self.ttl)):
            raise ValueError("malformed scheduler entry")

    @classmethod
    def of(cls, env: Envelope) -> SchedEntry:
        return cls(evpid=env.evpid, type=env.type, ctime=env.ctime, retry=env.retry,
                   ttl=env.ttl, route=env.route)


_describe(SchedEntry)


@register
@dataclass(frozen=True, slots=True)
class SchedInsert:
    envelopes: list[SchedEntry] = field(metadata=_codec(_records(SchedEntry)))
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

    def __post_init__(self) -> None:
        if not envmod.is_evpid(self.evpid):
            raise ValueError("invalid envelope id")
        if self.status not in SCHED_STATUSES or type(self.retry) is not int or \
                self.retry < 0 or not isinstance(self.route, str):
            raise ValueError("malformed scheduler result")


#: what an attempt can come to (SchedResult.status)
SCHED_STATUSES = frozenset({"ok", "tempfail", "permfail", "expired", "removed"})


@register
@dataclass(frozen=True, slots=True)
class SchedResults:
    """queue -> scheduler: the outcomes of one delivery batch in one message,
    so that the scheduler wakes once per batch rather than once per envelope
    (docs/performance.md §7)."""

    results: list[SchedResult] = field(metadata=_codec(_records(SchedResult)))


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
    """The outcome of one envelope's delivery (parent or pony -> queue).

    ``relay`` names the host that gave the answer (``host [ip]``) or is "";
    ``dsn_relayed`` is true when the DSN parameters were passed on to it."""

    evpid: str
    status: str  # ok, tempfail, permfail
    text: str = ""
    relay: str = ""
    dsn_relayed: bool = False
    #: the id of the mta connection that carried it ("" for local deliveries):
    #: it leads the queue's ``mta delivery`` log line (docs/logging.md)
    session: str = ""

    def __post_init__(self) -> None:
        # the queue acts on it (removes, bounces, writes the text into the
        # envelope): a peer's result is checked as it is decoded
        if not envmod.is_evpid(self.evpid) or self.status not in DELIVERY_STATUSES:
            raise ValueError("malformed delivery result")
        if not (isinstance(self.text, str) and isinstance(self.relay, str)
                and isinstance(self.dsn_relayed, bool)):
            raise ValueError("malformed delivery result")
        if self.session and not envmod.is_evpid(self.session):  # 16 hex digits too
            raise ValueError("malformed delivery result")


DELIVERY_STATUSES = ("ok", "tempfail", "permfail")


# -- pony <-> parent ------------------------------------------------------------


@register
@dataclass(frozen=True, slots=True)
class ForkDelivery:
    """queue -> parent: run one local delivery as the user lka's sealed grant
    names; the message fd travels along. The reply is a DeliveryResult."""

    envelope: Envelope = field(metadata=_codec(ENVELOPE))


@register
@dataclass(frozen=True, slots=True)
class ForkDeliveries:
    """queue -> parent: several local deliveries at once (due together), at
    most :data:`~mailrider.limits.FORK_DELIVERIES_MAX`; one message fd per
    envelope travels along, in the same order. Each is checked and decided
    as a :class:`ForkDelivery` is. The reply is a :class:`DeliveryResults`,
    one per envelope."""

    envelopes: list[Envelope] = field(metadata=_codec(ENVELOPES))


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


@register
@dataclass(frozen=True, slots=True)
class DkimSign:
    """pony -> klondike: the DKIM signature of a message (docs/dkim.md §3).

    ``name`` is a ``dkim`` statement's name; ``data_b64`` the signing input
    (the canonicalised signed header fields, then the DKIM-Signature field
    with an empty ``b=``), which klondike checks against that entry and hashes
    itself. The reply is ``Signed`` with the signature.
    """

    name: str
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
    #: with "error": the reply the client gets, when not the default 454
    reply: Reply | None = field(default=None, metadata=_codec(OPTIONAL_REPLY))


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
    """queue -> pony: relay envelopes of one route (same action and recipient
    domain), of at most ``limits.MTA_BATCH_MESSAGES`` messages, each
    message's envelopes together: one descriptor per message travels along,
    in the order of the messages' first envelopes (pony refuses a batch
    whose descriptors, messages or routes do not match with a 4xx for every
    envelope). Each message goes out in one transaction. The reply is a
    :class:`DeliveryResults`."""

    envelopes: list[Envelope] = field(metadata=_codec(ENVELOPES))


@register
@dataclass(frozen=True, slots=True)
class DeliveryResults:
    """pony -> queue: one result per envelope, in any order."""

    results: list[DeliveryResult] = field(metadata=_codec(_records(DeliveryResult)))


@register
@dataclass(frozen=True, slots=True)
class MxResolve:
    """pony -> lka: where mail for ``domain`` goes (MX, else the domain's own
    addresses), or with ``host`` set the addresses of that one host."""

    domain: str = ""
    host: str = ""


def _check_bool(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError("not a boolean")
    return value


#: a JSON boolean, nothing that merely looks true
BOOL = _Codec(lambda v: bool(v), _check_bool)
#: the most MX hosts, and addresses per host, an MxResult may carry
MX_HOSTS_MAX = 64
MX_ADDRS_MAX = 64


def _mx_host_decode(value: Any) -> list[Any]:
    """[preference, name, [ip, ...], authentic]: ``authentic`` says the host's
    address lookups were authenticated DNSSEC answers (docs/dane.md §2)."""
    if not (isinstance(value, list) and len(value) == 4 and type(value[0]) is int
            and 0 <= value[0] <= 0xFFFF and isinstance(value[1], str)
            and 0 < len(value[1]) <= 255 and value[1].isascii() and value[1].isprintable()
            and isinstance(value[2], list) and len(value[2]) <= MX_ADDRS_MAX
            and type(value[3]) is bool):
        raise ValueError("not an MX host")
    addrs = []
    for addr in value[2]:
        if not isinstance(addr, str) or len(addr) > 64:
            raise ValueError("not an address")
        addrs.append(str(ipaddress.ip_address(addr)))
    return [value[0], value[1], addrs, value[3]]


def _mx_hosts_decode(value: Any) -> list[list[Any]]:
    if not isinstance(value, list) or len(value) > MX_HOSTS_MAX:
        raise ValueError("not a list of MX hosts")
    return [_mx_host_decode(v) for v in value]


MX_HOSTS = _Codec(lambda hosts: [list(h) for h in hosts], _mx_hosts_decode)


@register
@dataclass(frozen=True, slots=True)
class MxResult:
    """lka -> pony: ``status`` ok (``hosts`` = [[preference, name, [ip, ...],
    authentic], ...] in preference order), or tempfail / permfail with an SMTP
    reply in ``text``. ``authentic``: the MX lookup (or, for the implicit MX,
    its NODATA) was an authenticated answer of a trusted resolver, so the MX
    names may be TLSA base names (RFC 7672 §2.2.1, docs/dane.md §2)."""

    status: str
    hosts: list[list[Any]] = field(default_factory=list, metadata=_codec(MX_HOSTS))
    text: str = ""
    authentic: bool = field(default=False, metadata=_codec(BOOL))


#: the most TLSA records a TlsaResult carries, and the longest one (hex of the RDATA)
TLSA_MAX = 32
TLSA_HEX_MAX = 2 * (3 + 16384)


def _tlsa_decode(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > TLSA_MAX:
        raise ValueError("not a list of TLSA records")
    for rec in value:
        if not (isinstance(rec, str) and 8 <= len(rec) <= TLSA_HEX_MAX and len(rec) % 2 == 0
                and all(c in "0123456789abcdef" for c in rec)):
            raise ValueError("not a TLSA record in hex")
    return list(value)


TLSA_RECORDS = _Codec(list, _tlsa_decode)


@register
@dataclass(frozen=True, slots=True)
class TlsaLookup:
    """pony -> lka: the TLSA records of an MX host for DANE (RFC 7672 §2.2).
    lka itself makes the query name, ``_<mta port>._tcp.<host>``: pony can
    ask for nothing else."""

    host: str


@register
@dataclass(frozen=True, slots=True)
class TlsaResult:
    """lka -> pony: ``status`` ``ok`` (``records``: RDATA in lower-case hex,
    ``authentic``: the answer was authenticated by a trusted resolver),
    ``none`` (NXDOMAIN or NODATA), or ``tempfail`` (``text`` says why)."""

    status: str
    records: list[str] = field(default_factory=list, metadata=_codec(TLSA_RECORDS))
    authentic: bool = field(default=False, metadata=_codec(BOOL))
    text: str = ""


@register
@dataclass(frozen=True, slots=True)
class StsTxt:
    """pony -> lka: the ``_mta-sts.<domain>`` TXT records (RFC 8461 §3.1,
    docs/mta-sts.md). lka checks the name before it asks."""

    domain: str

    def __post_init__(self) -> None:
        if not isinstance(self.domain, str) or not 0 < len(self.domain) <= 253:
            raise ValueError("malformed StsTxt")


@register
@dataclass(frozen=True, slots=True)
class StsTxtResult:
    """lka -> pony: ``status`` ok (``records``: each record's strings joined,
    ASCII, at most limits.MTA_STS_TXT_MAX of limits.MTA_STS_TXT_LEN_MAX
    characters), none (no such name or no TXT record) or tempfail."""

    status: str
    records: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status not in ("ok", "none", "tempfail") or not isinstance(self.records, list) \
                or len(self.records) > limits.MTA_STS_TXT_MAX or not all(
                    isinstance(r, str) and len(r) <= limits.MTA_STS_TXT_LEN_MAX
                    and r.isascii() for r in self.records):
            raise ValueError("malformed StsTxtResult")


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
