"""The configuration model: what the ``smtpd.conf`` grammar parses into.

Every item remembers the ``file`` and ``line`` it came from, so later checks
(a backend that cannot be found, a feature not supported yet) can name the
place. Table references are always table *names*: a bare value where a table
is allowed becomes an anonymous static table registered under a generated
name (``<anon:N>``), so consumers only ever deal with named tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailrider import limits


@dataclass(slots=True)
class Where:
    file: str = "<builtin>"
    line: int = 0
    #: statement number in parse order (across included files), so "the first
    #: use" is well defined when includes interleave files; not part of equality
    seq: int = field(default=0, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(slots=True)
class Table:
    name: str
    #: "static", "file", "db", "getpwnam", or an external backend name
    backend: str
    #: config path for file/db/proc backends (None for static or no argument)
    path: str | None = None
    #: static list tables
    items: list[str] | None = None
    #: static mapping tables
    mapping: dict[str, str] | None = None
    where: Where = field(default_factory=Where)


@dataclass(slots=True)
class Pki:
    name: str
    cert: str | None = None
    key: str | None = None
    dhe: str | None = None
    where: Where = field(default_factory=Where)


@dataclass(slots=True)
class Dkim:
    """A ``dkim`` statement (mailrider only, docs/dkim.md): a signing key that
    klondike loads, with the d= and s= of the signatures it makes."""

    name: str
    key: str
    selector: str
    domain: str
    algorithm: str = "rsa-sha256"
    canonicalization: str = "relaxed/relaxed"
    where: Where = field(default_factory=Where)


@dataclass(slots=True)
class Ca:
    name: str
    cert: str | None = None
    where: Where = field(default_factory=Where)


@dataclass(slots=True)
class Listener:
    #: interface, address, hostname, "all", "egress", "localhost", ..., or "socket"
    address: str
    family: str | None = None  # "inet4" | "inet6" | None
    port: int | None = None  # None: 25, or 465 with smtps
    hostname: str | None = None
    hostnames: str | None = None  # table name
    tag: str | None = None
    tls: bool = False
    tls_require: bool = False
    tls_verify: bool = False
    smtps: bool = False
    pki: list[str] = field(default_factory=list)
    ca: str | None = None
    ciphers: str | None = None
    protocols: str | None = None
    auth: bool = False
    auth_optional: bool = False
    auth_table: str | None = None
    senders: str | None = None
    masquerade: bool = False
    mask_src: bool = False
    received_auth: bool = False
    no_dsn: bool = False
    proxy_v2: bool = False
    filters: list[str] = field(default_factory=list)
    where: Where = field(default_factory=Where)


@dataclass(slots=True)
class Action:
    name: str
    #: maildir, mbox, mda, lmtp, forward-only, expand-only, relay
    method: str
    #: maildir path, mda command, or lmtp destination
    arg: str | None = None
    junk: bool = False  # maildir junk
    rcpt_to: bool = False  # lmtp rcpt-to
    alias: str | None = None  # table name
    virtual: str | None = None  # table name
    userbase: str | None = None  # table name; None means the system (getpwnam)
    user: str | None = None
    wrapper: str | None = None
    ttl: int | None = None  # seconds
    #: relay options (host, domain, backup, backup_mx, helo, helo_src, src, pki,
    #: ca, tls, tls_noverify, auth, mail_from, srs, ciphers, protocols, filter,
    #: dkim: a list of ``dkim`` names).
    #: ``host`` is the relay URL text; ``host <t>`` is stored as ``host_table``
    #: instead. Table-valued options (domain, helo_src, src, auth, host_table)
    #: hold table names; flags (backup, tls, tls_noverify, srs) hold True.
    relay: dict[str, object] = field(default_factory=dict)
    where: Where = field(default_factory=Where)


@dataclass(slots=True)
class Condition:
    """One ``match`` option, e.g. ``from src <t>``, ``!for domain <t>``, ``tag T``.

    ``kind`` is one of: from-any, from-local, from-socket, from-src, from-rdns,
    from-auth, from-mail-from, for-any, for-local, for-domain, for-rcpt-to,
    auth, helo, mail-from, rcpt-to, tag, tls. ``table`` is the table name the
    option refers to (None for options without one, and for bare ``rdns`` or
    ``auth`` without a table).

    Builtin filters (``filter X phase P match ...``) use the same class with
    kinds: fcrdns, rdns, src, helo, auth, mail-from, rcpt-to.

    Defaults: a ``match`` without a ``from`` option gets an explicit
    ``from-local`` condition, and one without ``for`` gets ``for-local``.
    """

    kind: str
    negate: bool = False
    regex: bool = False
    table: str | None = None


@dataclass(slots=True)
class Match:
    conditions: list[Condition]
    action: str | None  # None when reject
    reject: bool = False
    where: Where = field(default_factory=Where)


@dataclass(slots=True)
class Filter:
    """A ``filter`` statement, or (in ``Config.procs``) a ``proc`` statement.

    ``proc`` statements are stored with kind "proc-exec": a named command
    with its user, group and chroot, exactly like an inline proc-exec filter.
    """

    name: str
    #: "proc", "proc-exec", "builtin", "chain"
    kind: str
    command: str | None = None  # proc-exec command, or proc name for "proc"
    user: str | None = None
    group: str | None = None
    chroot: str | None = None
    phase: str | None = None  # builtin
    conditions: list[Condition] = field(default_factory=list)  # builtin
    decision: str | None = None  # builtin: junk, bypass, reject, disconnect, rewrite, report
    decision_arg: str | None = None
    chain: list[str] = field(default_factory=list)
    where: Where = field(default_factory=Where)


@dataclass(slots=True)
class Config:
    file: str = "<builtin>"
    macros: dict[str, str] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    pkis: dict[str, Pki] = field(default_factory=dict)
    cas: dict[str, Ca] = field(default_factory=dict)
    dkims: dict[str, Dkim] = field(default_factory=dict)
    listeners: list[Listener] = field(default_factory=list)
    actions: dict[str, Action] = field(default_factory=dict)
    matches: list[Match] = field(default_factory=list)
    filters: dict[str, Filter] = field(default_factory=dict)
    procs: dict[str, Filter] = field(default_factory=dict)
    #: global options, defaults as in OpenSMTPD (docs/config.md §6)
    hostname: str | None = None  # "smtp hostname"? no: the server name, from the system
    admd: str | None = None
    max_message_size: int = 35 * 1024 * 1024
    max_mails: int = 100
    max_rcpt: int = 1000
    #: ``smtp limit`` (mailrider only, defaults in limits): deliveries one
    #: transaction may expand to; SMTP sessions open at once; per client
    #: address (IPv6 by /64) for other clients, and for loopback and local
    #: socket clients (0: no cap, Postfix's mynetworks exemption)
    max_deliveries: int = limits.MAX_DELIVERIES
    max_sessions: int = limits.MAX_SESSIONS
    max_sessions_per_address: int = limits.MAX_SESSIONS_PER_IP
    max_sessions_per_local: int = limits.MAX_SESSIONS_PER_LOCAL
    sub_addr_delim: str = "+"
    queue_ttl: int = 4 * 86400
    queue_compression: bool = False
    queue_encryption: bool = False
    bounce_warn_interval: list[int] = field(default_factory=lambda: [4 * 3600])
    smtp_ciphers: str | None = None
    #: ``smtp key-in-process``: pony may load TLS keys itself when klondike
    #: delegation is unavailable (never silently: a warning at every start)
    key_in_process: bool = False
    #: ``smtp rdns``: reverse lookups of every client (on as well when a rule or
    #: filter needs the name); off otherwise, so no session waits on DNS
    rdns_lookup: bool = False
    mta_max_deferred: int = 100
    #: ``mta port N`` (mailrider only): the port of MX hosts, 25 unless testing
    mta_port: int = 25
    #: ``resolver nameserver ADDR [port N]`` (mailrider only); empty: resolv.conf
    resolver_nameservers: list[tuple[str, int]] = field(default_factory=list)
    #: ``metrics listen on ADDR port N`` (mailrider only): loopback (address,
    #: port) pairs where control serves the Prometheus metrics
    metrics_listen: list[tuple[str, int]] = field(default_factory=list)
    #: ``resolver timeout N`` / ``resolver attempts N``; None: resolv.conf's or defaults
    resolver_timeout: float | None = None
    resolver_attempts: int | None = None
    #: ``resolver trust-ad``: the AD bit of a non-loopback resolver is believed (docs/dane.md §2)
    resolver_trust_ad: bool = False
    #: queue encryption key as written (None: prompted / stdin); a secret
    queue_key: str | None = None
    #: mda wrapper name -> command
    mda_wrappers: dict[str, str] = field(default_factory=dict)
    #: mda limit keyword -> value (max-session, max-session-per-user, task-*)
    mda_limits: dict[str, int] = field(default_factory=dict)
    #: ``scheduler limit`` keyword -> value (max-inflight, max-schedule,
    #: max-evp-batch-size, max-msg-batch-size; docs/queue.md §9)
    scheduler_limits: dict[str, int] = field(default_factory=dict)
    #: ``mta limit [for domain D] ...``: domain ("" for the default) -> keyword -> value
    mta_limits: dict[str, dict[str, int]] = field(default_factory=dict)
    #: srs secrets (never logged) and ttl in seconds
    srs_key: str | None = field(default=None, repr=False)
    srs_backup_key: str | None = field(default=None, repr=False)
    srs_ttl: int = 4 * 86400
    #: every other global statement, kept as (keyword, words, where) so the
    #: support check can name it
    other: list[tuple[str, list[str], Where]] = field(default_factory=list)
    #: where each global option was set, by option name, for error messages
    option_where: dict[str, Where] = field(default_factory=dict)
