"""Parser for the ``smtpd.conf`` grammar (docs/config.md).

Invariants:

- One pass, in file order, like OpenSMTPD: a ``<table>``, an action, a
  filter, a proc, a pki, a ca or an mda wrapper must be declared *before*
  it is referenced (the built-in tables ``localhost``, ``localnames``,
  ``anyhost``, ``anydestination`` and ``getpwnam`` always exist).
- The first error stops parsing and raises :class:`ConfigError` with the
  file and line of the offending token (for checks that concern a whole
  statement, its first line). Syntax errors name the token:
  ``syntax error near 'x'``, or ``unknown keyword 'x'`` for an unknown word
  where a keyword was expected.
- Reserved words are keywords only when unquoted; quoted strings are always
  values. A value that is a bare word or an inline ``{ ... }`` list where a
  table is allowed becomes an anonymous static table named ``<anon:N>``,
  registered in ``Config.tables``; every table reference in the model is a
  table name.
- No file other than ``include`` targets is opened, no name is resolved and
  no backend is looked for: that is for later stages.
- Macros given by the caller (``-D name=value``) win over definitions in
  the file, as in OpenSMTPD. One deliberate leniency: a reserved word may
  be a macro name (``port = "25"``), which OpenSMTPD refuses.
- Lists in braces take optional commas and may span lines; a trailing comma
  is accepted, a doubled one is not.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterator

from mailrider.config.lexer import ARROW, EOF, NL, STRING, WORD, Lexer, Token
from mailrider.config.model import (
    Action,
    Ca,
    Condition,
    Config,
    Dkim,
    Filter,
    Listener,
    Match,
    Pki,
    Table,
    Where,
)
from mailrider.config.tls import check_ciphers, protocol_range
from mailrider.dkim import ALGORITHMS, CANONICALIZATIONS, DOMAIN_RE, SELECTOR_RE
from mailrider.errors import ConfigError

#: every reserved word of the grammar: unquoted, these are never values
KEYWORDS = frozenset(
    """
    action admd alias any auth auth-optional backup bounce bypass ca cert chain
    chroot ciphers commit compression connect data data-line dhe disconnect
    domain ehlo encryption expand-only fcrdns filter for forward-only from group
    helo helo-src host hostname hostnames include inet4 inet6 junk key limit
    listen lmtp local mail-from maildir mask-src masquerade match max-deferred
    max-message-size mbox mda mta mx no-dsn no-verify noop on phase pki port
    proc proc-exec protocols proxy-v2 queue quit rcpt-to rdns received-auth
    recipient regex reject relay report rewrite rset scheduler senders smtp
    smtp-in smtp-out smtps socket src srs sub-addr-delim table tag tagged tls
    tls-require ttl user userbase verify virtual warn-interval wrapper key-in-process
    resolver metrics dkim selector algorithm canonicalization dane
    """.split()
)

#: ``smtp limit`` keyword -> (Config attribute, smallest value); 0 means
#: "no cap" where it is allowed
_SMTP_LIMITS = {
    "max-mails": ("max_mails", 1),
    "max-rcpt": ("max_rcpt", 1),
    "max-deliveries": ("max_deliveries", 1),
    "sessions": ("max_sessions", 1),
    "sessions-per-address": ("max_sessions_per_address", 1),
    "sessions-per-local-address": ("max_sessions_per_local", 0),
}

#: tables that exist without a declaration (docs/config.md §2)
BUILTIN_TABLES = frozenset({"localhost", "localnames", "anyhost", "anydestination", "getpwnam"})

#: table backends built into the daemon; any other name is a proc table
BUILTIN_BACKENDS = frozenset({"static", "file", "db", "getpwnam", "proc"})

#: deepest chain of ``include`` statements (a guard against symlink loops)
INCLUDE_DEPTH_MAX = 16

#: at most four bounce warnings (OpenSMTPD's MAX_BOUNCE_WARN)
BOUNCE_WARN_MAX = 4

#: well-known ports, used before the services database so ``port smtps`` and
#: ``port submission`` work on systems with a thin /etc/services
WELL_KNOWN_PORTS = {
    "smtp": 25,
    "lmtp": 24,
    "smtps": 465,
    "submissions": 465,
    "submission": 587,
}

_MATCH_OPTIONS = ("from", "for", "auth", "helo", "mail-from", "rcpt-to", "tag", "tls")

LOCAL_METHODS = ("maildir", "mbox", "mda", "lmtp", "forward-only", "expand-only")
#: local methods that run as the recipient, where ``user`` makes no sense
_NO_USER_METHODS = frozenset({"mbox", "forward-only", "expand-only"})

FILTER_PHASES = ("connect", "helo", "ehlo", "auth", "mail-from", "rcpt-to", "data", "commit")
#: builtin filter conditions available in each phase: what the session knows
#: by then (connect: the client; helo: + its name; ...)
_CONNECT_CONDS = frozenset({"fcrdns", "rdns", "src"})
_HELO_CONDS = _CONNECT_CONDS | {"helo"}
_AUTH_CONDS = _HELO_CONDS | {"auth"}
_MAIL_CONDS = _AUTH_CONDS | {"mail-from"}
_RCPT_CONDS = _MAIL_CONDS | {"rcpt-to"}
PHASE_CONDITIONS: dict[str, frozenset[str]] = {
    "connect": _CONNECT_CONDS,
    "helo": _HELO_CONDS,
    "ehlo": _HELO_CONDS,
    "auth": _AUTH_CONDS,
    "mail-from": _MAIL_CONDS,
    "rcpt-to": _RCPT_CONDS,
    "data": _RCPT_CONDS,
    "commit": _RCPT_CONDS,
}
#: decisions of builtin filters, and whether they take a string
FILTER_DECISIONS = {
    "junk": False,
    "bypass": False,
    "reject": True,
    "disconnect": True,
    "rewrite": True,
    "report": True,
}

MDA_LIMITS = frozenset(
    {"max-session", "max-session-per-user", "task-hiwat", "task-lowat", "task-release"}
)
SCHEDULER_LIMITS = frozenset(
    {"max-inflight", "max-evp-batch-size", "max-msg-batch-size", "max-schedule"}
)
_MTA_LIMIT_RE = re.compile(r"[a-z][a-z-]*\Z")
#: OpenSMTPD 7.8's mta limit keywords (limit.c); docs/config.md §15 says which act
MTA_LIMITS = frozenset(
    {f"max-conn-per-{k}" for k in ("host", "route", "source", "connector", "relay", "domain")}
    | {f"conn-delay-{k}" for k in ("host", "route", "source", "connector", "relay", "domain")}
    | {"reconn-delay-route", "session-mail-max", "session-transaction-delay",
       "session-keepalive", "max-failures-per-session", "task-hiwat", "task-lowat",
       "task-release"})

_DURATION_RE = re.compile(r"(\d+)([smhd]?)\Z")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)([bkmgtpe]?)\Z", re.IGNORECASE)
_SIZE_UNITS = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_NUMBER_RE = re.compile(r"\d+\Z")


def parse_duration(text: str) -> int | None:
    """``30s``, ``5m``, ``4h``, ``4d`` or a bare number of seconds; None if invalid."""
    m = _DURATION_RE.match(text)
    if m is None:
        return None
    return int(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(text: str) -> int | None:
    """Bytes, or with a K/M/G/T/P/E suffix (powers of 1024, as scan_scaled)."""
    m = _SIZE_RE.match(text)
    if m is None:
        return None
    number, unit = str(m.group(1)), str(m.group(2)).lower()
    shift = _SIZE_UNITS[unit]
    if "." in number:
        whole, frac = number.split(".")
        scale = int(10 ** len(frac))
        return (int(whole) << shift) + (int(frac) << shift) // scale
    return int(number) << shift


def parse_port(text: str) -> int | None:
    """A port number or service name; None if neither."""
    if _NUMBER_RE.match(text):
        port = int(text)
        return port if 0 < port < 65536 else None
    if text in WELL_KNOWN_PORTS:
        return WELL_KNOWN_PORTS[text]
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        return None


class _Source:
    """One file being read: its lexer and the token iterator over it."""

    def __init__(self, lexer: Lexer) -> None:
        self.lexer = lexer
        self.tokens: Iterator[Token] = lexer.tokens()
        #: line of the last token read: where "end of file" is reported
        self.last_line = 1


class _Parser:
    def __init__(self, file: str, macros: dict[str, str] | None) -> None:
        self.config = Config(file=file)
        # -D macros are fixed: a definition in the file does not replace them
        self._fixed = frozenset((macros or {}).keys())
        self.config.macros.update(macros or {})
        self._sources: list[_Source] = []
        self._lookahead: Token | None = None
        self._last = Token(EOF, "", file, 1)
        self._anon = 0
        self._seq = 0
        self._where = Where(file, 0)
        self._has_socket = False

    # ---- token stream ---------------------------------------------------

    def _macro(self, name: str) -> str | None:
        return self.config.macros.get(name)

    def push(self, text: str, file: str) -> None:
        if len(self._sources) >= INCLUDE_DEPTH_MAX:
            raise ConfigError("includes nested too deeply", self._last.file, self._last.line)
        self._sources.append(_Source(Lexer(text, file, self._macro)))

    def _produce(self) -> Token:
        while self._sources:
            src = self._sources[-1]
            tok = next(src.tokens, None)
            if tok is not None:
                src.last_line = tok.line
                return tok
            self._sources.pop()
            # the end of a file ends its last statement, even without a newline
            return Token(NL, "\n", src.lexer.file, src.last_line)
        return Token(EOF, "", self._last.file, self._last.line)

    def _peek(self) -> Token:
        if self._lookahead is None:
            self._lookahead = self._produce()
        return self._lookahead

    def _next(self) -> Token:
        tok = self._peek()
        if tok.kind != EOF:
            self._lookahead = None
        self._last = tok
        return tok

    # ---- helpers --------------------------------------------------------

    def _err(self, message: str, tok: Token | None = None) -> ConfigError:
        if tok is None:
            return ConfigError(message, self._where.file, self._where.line)
        return ConfigError(message, tok.file, tok.line)

    def _unexpected(self, tok: Token) -> ConfigError:
        if tok.kind == WORD and tok.value not in KEYWORDS:
            return self._err(f"unknown keyword '{tok.value}'", tok)
        return self._err(f"syntax error near {tok.describe()}", tok)

    @staticmethod
    def _is_value(tok: Token) -> bool:
        return tok.kind == STRING or (tok.kind == WORD and tok.value not in KEYWORDS)

    @staticmethod
    def _is_kw(tok: Token, *names: str) -> bool:
        return tok.kind == WORD and tok.value in names

    def _accept(self, *names: str) -> Token | None:
        tok = self._peek()
        if self._is_kw(tok, *names):
            return self._next()
        return None

    def _expect(self, name: str) -> Token:
        tok = self._next()
        if not self._is_kw(tok, name):
            raise self._err(f"syntax error near {tok.describe()}", tok)
        return tok

    def _value(self) -> Token:
        tok = self._next()
        if not self._is_value(tok):
            raise self._err(f"syntax error near {tok.describe()}", tok)
        return tok

    def _at_end(self) -> bool:
        return self._peek().kind in (NL, EOF)

    def _end(self) -> None:
        tok = self._next()
        if tok.kind not in (NL, EOF):
            raise self._unexpected(tok)

    def _skip_nl(self) -> Token:
        while self._peek().kind == NL:
            self._next()
        return self._peek()

    def _number(self, tok: Token, what: str, minimum: int = 0) -> int:
        if not _NUMBER_RE.match(tok.value) or int(tok.value) < minimum:
            raise self._err(f"invalid {what}: {tok.value}", tok)
        return int(tok.value)

    def _duration(self, tok: Token) -> int:
        value = parse_duration(tok.value)
        if value is None:
            raise self._err(f"invalid duration: {tok.value}", tok)
        return value

    # ---- tables ---------------------------------------------------------

    def _table_ref(self) -> str:
        self._next()  # "<"
        name = self._value()
        close = self._next()
        if close.kind != ">":
            raise self._err(f"syntax error near {close.describe()}", close)
        if name.value not in self.config.tables and name.value not in BUILTIN_TABLES:
            raise self._err(f"no such table <{name.value}>", name)
        return name.value

    def _new_anon(self, where: Token) -> Table:
        self._anon += 1
        while f"<anon:{self._anon}>" in self.config.tables:
            self._anon += 1  # a user quoted such a name: never overwrite it
        table = Table(
            f"<anon:{self._anon}>", "static", where=Where(where.file, where.line, self._seq)
        )
        self.config.tables[table.name] = table
        return table

    def _inline_table(self, table: Table) -> None:
        """Fill ``table`` from ``{ v, ... }`` or ``{ k = v, ... }``."""
        self._next()  # "{"
        items: list[str] = []
        mapping: dict[str, str] = {}
        comma = False
        while True:
            tok = self._skip_nl()
            if tok.kind == "}" and (items or mapping):
                self._next()
                break
            # commas are optional between entries, but never doubled
            if tok.kind == "," and (items or mapping) and not comma:
                self._next()
                comma = True
                continue
            comma = False
            key = self._value()
            if self._peek().kind in ("=", ARROW):
                self._next()
                if items:
                    raise self._err("table mixes list and mapping entries", key)
                mapping[key.value] = self._value().value
            else:
                if mapping:
                    raise self._err("table mixes list and mapping entries", key)
                items.append(key.value)
        if mapping:
            table.mapping = mapping
        else:
            table.items = items

    def _table_arg(self) -> str:
        """A table where one is allowed: ``<name>``, ``{ ... }`` or a bare value."""
        tok = self._peek()
        if tok.kind == "<":
            return self._table_ref()
        table = self._new_anon(tok)
        if tok.kind == "{":
            self._inline_table(table)
        else:
            table.items = [self._value().value]
        return table.name

    def _table_arg_follows(self) -> bool:
        tok = self._peek()
        return tok.kind in ("<", "{") or self._is_value(tok)

    def _name_list(self) -> list[Token]:
        """``{ a, b }`` (commas and newlines optional) or a single name."""
        if self._peek().kind != "{":
            return [self._value()]
        self._next()
        names: list[Token] = []
        comma = False
        while True:
            tok = self._skip_nl()
            if tok.kind == "}" and names:
                self._next()
                return names
            if tok.kind == "," and names and not comma:
                self._next()
                comma = True
                continue
            comma = False
            names.append(self._value())

    # ---- statements -----------------------------------------------------

    def parse(self) -> Config:
        while True:
            tok = self._peek()
            if tok.kind == EOF:
                break
            if tok.kind == NL:
                self._next()
                continue
            self._statement()
        self._finish()
        return self.config

    def _statement(self) -> None:
        tok = self._next()
        self._seq += 1
        self._where = Where(tok.file, tok.line, self._seq)
        # "name = value" defines a macro. OpenSMTPD refuses reserved words as
        # names; no statement starts with "keyword =", so accepting them is
        # harmless and lets "port = 25" ... "$port" work
        if tok.kind in (WORD, STRING) and self._peek().kind == "=":
            self._macro_definition(tok)
            return
        if tok.kind == WORD and tok.value in KEYWORDS:
            handler: Callable[[Token], None] | None = getattr(
                self, "_st_" + tok.value.replace("-", "_"), None
            )
            if handler is None:
                raise self._err(f"syntax error near {tok.describe()}", tok)
            handler(tok)
            return
        raise self._unexpected(tok)

    def _macro_definition(self, name: Token) -> None:
        self._next()  # "="
        value = self._value()
        self._end()
        if any(c.isspace() for c in name.value):
            raise self._err("macro name cannot contain whitespace", name)
        if name.value not in self._fixed:
            self.config.macros[name.value] = value.value

    def _st_include(self, kw: Token) -> None:
        target = self._value()
        self._end()
        path = target.value
        base = os.path.dirname(kw.file) if not kw.file.startswith("<") else ""
        if not os.path.isabs(path):
            path = os.path.join(base, path)
        open_files = {os.path.realpath(s.lexer.file) for s in self._sources}
        if os.path.realpath(path) in open_files:
            raise self._err(f"include loop: {target.value}", target)
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as e:
            raise self._err(f"cannot open {path}: {e.strerror}", target) from None
        if self._lookahead is not None and self._lookahead.kind == EOF:
            self._lookahead = None
        self.push(text, path)

    def _st_table(self, kw: Token) -> None:
        name = self._value()
        if name.value in self.config.tables:
            raise self._err(f"table '{name.value}' already defined", name)
        table = Table(name.value, "static", where=self._where)
        if self._peek().kind == "{":
            self._inline_table(table)
        else:
            spec = self._value()
            backend, sep, path = spec.value.partition(":")
            if spec.value.startswith("/"):
                backend, path = "file", spec.value
            elif not sep:
                path = ""
            if sep and not path.startswith("/"):
                raise self._err(
                    f"invalid backend parameter for table '{name.value}': "
                    f"the path after '{backend}:' must be absolute",
                    spec,
                )
            if not backend:
                raise self._err(f"invalid table backend: {spec.value}", spec)
            if backend == "static" and path:
                backend = "file"
            table.backend = backend
            table.path = path or None
        self._end()
        self.config.tables[table.name] = table

    def _st_pki(self, kw: Token) -> None:
        name = self._value()
        key = name.value.lower()  # a host name: case does not matter
        pki = self.config.pkis.get(key)
        if pki is None:
            pki = Pki(key, where=self._where)
            self.config.pkis[key] = pki
        opt = self._next()
        if self._is_kw(opt, "cert", "key"):
            value = self._value().value
            attr = opt.value
            if getattr(pki, attr) is not None:
                raise self._err(f"pki '{key}': {attr} already specified", opt)
            setattr(pki, attr, value)
        elif self._is_kw(opt, "dhe"):
            dhe = self._value()
            if dhe.value not in ("none", "auto", "legacy"):
                raise self._err(f"invalid dhe parameter: {dhe.value}", dhe)
            pki.dhe = dhe.value
        else:
            raise self._unexpected(opt)
        self._end()

    def _st_ca(self, kw: Token) -> None:
        name = self._value()
        if name.value in self.config.cas:
            raise self._err(f"ca '{name.value}' already defined", name)
        self._expect("cert")
        cert = self._value()
        self._end()
        self.config.cas[name.value] = Ca(name.value, cert.value, where=self._where)

    def _st_dkim(self, kw: Token) -> None:
        """``dkim NAME key PATH selector S domain D [algorithm A]
        [canonicalization C]`` (docs/dkim.md §2); options in any order."""
        name = self._value()
        if name.value in self.config.dkims:
            raise self._err(f"dkim '{name.value}' already defined", name)
        opts: dict[str, str] = {}
        while not self._at_end():
            opt = self._next()
            if not self._is_kw(opt, "key", "selector", "domain", "algorithm",
                               "canonicalization"):
                raise self._unexpected(opt)
            if opt.value in opts:
                raise self._err(f"dkim option '{opt.value}' already specified", opt)
            value = self._value()
            text = value.value
            if opt.value == "key" and not text.startswith("/"):
                raise self._err(f"dkim key must be an absolute path: {text}", value)
            if opt.value == "selector" and not (SELECTOR_RE.fullmatch(text) and len(text) < 254):
                raise self._err(f"invalid dkim selector: {text}", value)
            if opt.value == "domain":
                text = text.lower().rstrip(".")
                if not (DOMAIN_RE.fullmatch(text) and len(text) < 254):
                    raise self._err(f"invalid dkim domain: {value.value}", value)
            if opt.value == "algorithm" and text not in ALGORITHMS:
                raise self._err(f"invalid dkim algorithm: {text} "
                                f"(one of {', '.join(ALGORITHMS)})", value)
            if opt.value == "canonicalization" and text not in CANONICALIZATIONS:
                raise self._err(f"invalid dkim canonicalization: {text} "
                                f"(one of {', '.join(CANONICALIZATIONS)})", value)
            opts[opt.value] = text
        self._end()
        for required in ("key", "selector", "domain"):
            if required not in opts:
                raise ConfigError(f"dkim '{name.value}' has no {required}", self._where.file,
                                  self._where.line)
        self.config.dkims[name.value] = Dkim(
            name.value, opts["key"], opts["selector"], opts["domain"],
            opts.get("algorithm", "rsa-sha256"),
            opts.get("canonicalization", "relaxed/relaxed"), where=self._where)

    # ---- listen on ------------------------------------------------------

    def _filter_names(self) -> list[str]:
        brace = self._peek().kind == "{"
        names = self._name_list()
        seen: set[str] = set()
        for tok in names:
            flt = self.config.filters.get(tok.value)
            if flt is None:
                raise self._err(f"no such filter '{tok.value}'", tok)
            if brace and flt.kind == "chain":
                raise self._err(f"filter chains cannot be nested: '{tok.value}'", tok)
            if tok.value in seen:
                raise self._err(f"filter '{tok.value}' listed twice", tok)
            seen.add(tok.value)
        return [t.value for t in names]

    def _st_listen(self, kw: Token) -> None:
        self._expect("on")
        if self._accept("socket"):
            self._socket_listener()
            return
        listener = Listener(self._value().value, where=self._where)
        seen: set[str] = set()
        while not self._at_end():
            opt = self._next()
            if opt.kind != WORD or opt.value not in KEYWORDS:
                raise self._unexpected(opt)
            name = opt.value
            group = {
                "inet4": "family",
                "inet6": "family",
                "tls-require": "tls",
                "smtps": "tls",
                "auth-optional": "auth",
            }.get(name, name)
            if group in seen and group != "pki":
                raise self._err(f"listen option '{name}': {group} already specified", opt)
            seen.add(group)
            self._listen_option(listener, opt)
        self._end()
        # combinations OpenSMTPD refuses when loading the listener
        secure = listener.tls or listener.tls_require or listener.smtps
        if (listener.auth or listener.auth_optional) and not secure:
            raise self._err("listen option 'auth' requires tls, tls-require or smtps")
        if listener.pki and not secure:
            raise self._err("listen option 'pki' requires tls, tls-require or smtps")
        if secure and not listener.pki:
            raise self._err("listen option tls, tls-require or smtps requires 'pki'")
        if listener.ca and not listener.pki:
            raise self._err("listen option 'ca' requires 'pki'")
        if listener.senders and not (listener.auth or listener.auth_optional):
            raise self._err("listen option 'senders' requires 'auth' or 'auth-optional'")
        self._check_listener_tls(listener)
        self.config.listeners.append(listener)

    def _check_listener_tls(self, listener: Listener) -> None:
        """The listener's ``protocols`` and ``ciphers`` as pony builds its TLS
        context from them at start, so ``-n`` refuses what start would."""
        try:
            protocol_range(listener.protocols)
        except ValueError as exc:
            raise self._err(f"listen protocols: {exc}") from None
        if listener.ciphers is not None:
            try:
                check_ciphers(listener.ciphers)
            except ValueError as exc:
                raise self._err(f"listen ciphers: {exc}") from None

    def _listen_option(self, listener: Listener, opt: Token) -> None:
        name = opt.value
        if name in ("inet4", "inet6"):
            listener.family = name
        elif name == "port":
            port = self._next()
            if port.kind not in (WORD, STRING):
                raise self._err(f"syntax error near {port.describe()}", port)
            number = parse_port(port.value)
            if number is None:
                raise self._err(f"invalid port: {port.value}", port)
            listener.port = number
        elif name == "tls":
            listener.tls = True
        elif name in ("tls-require", "smtps"):
            if name == "smtps":
                listener.smtps = True
            else:
                listener.tls_require = True
            if self._accept("verify"):
                listener.tls_verify = True
        elif name == "pki":
            pki = self._value()
            if pki.value.lower() not in self.config.pkis:
                raise self._err(f"no such pki '{pki.value}'", pki)
            listener.pki.append(pki.value.lower())
        elif name == "ca":
            ca = self._value()
            if ca.value not in self.config.cas:
                raise self._err(f"no such ca '{ca.value}'", ca)
            listener.ca = ca.value
        elif name in ("ciphers", "protocols", "hostname", "tag"):
            setattr(listener, name, self._value().value)
        elif name in ("auth", "auth-optional"):
            if name == "auth":
                listener.auth = True
            else:
                listener.auth_optional = True
            if self._table_arg_follows():
                listener.auth_table = self._table_arg()
        elif name == "senders":
            listener.senders = self._table_arg()
            if self._accept("masquerade"):
                listener.masquerade = True
        elif name == "hostnames":
            listener.hostnames = self._table_arg()
        elif name == "filter":
            listener.filters = self._filter_names()
        elif name in ("mask-src", "received-auth", "no-dsn", "proxy-v2"):
            setattr(listener, name.replace("-", "_"), True)
        else:
            raise self._err(f"syntax error near {opt.describe()}", opt)

    def _socket_listener(self) -> None:
        if self._has_socket:
            raise self._err("the socket listener is already configured")
        self._has_socket = True
        listener = Listener("socket", where=self._where)
        seen: set[str] = set()
        while not self._at_end():
            opt = self._next()
            if not self._is_kw(opt, "filter", "mask-src", "no-dsn", "tag"):
                raise self._unexpected(opt)
            if opt.value in seen:
                raise self._err(f"listen option '{opt.value}' already specified", opt)
            seen.add(opt.value)
            self._listen_option(listener, opt)
        self._end()
        self.config.listeners.append(listener)

    # ---- action ---------------------------------------------------------

    def _st_action(self, kw: Token) -> None:
        name = self._value()
        if name.value in self.config.actions:
            raise self._err(f"action '{name.value}' already defined", name)
        method = self._next()
        if not self._is_kw(method, *LOCAL_METHODS, "relay"):
            raise self._unexpected(method)
        action = Action(name.value, method.value, where=self._where)
        if method.value == "maildir":
            if self._is_value(self._peek()):
                action.arg = self._next().value
            if self._accept("junk"):
                action.junk = True
        elif method.value == "lmtp":
            action.arg = self._value().value
            if self._accept("rcpt-to"):
                action.rcpt_to = True
        elif method.value == "mda":
            action.arg = self._value().value
        seen: set[str] = set()
        while not self._at_end():
            opt = self._next()
            if opt.kind != WORD or opt.value not in KEYWORDS:
                raise self._unexpected(opt)
            if opt.value in seen:
                raise self._err(f"action option '{opt.value}' already specified", opt)
            seen.add(opt.value)
            if opt.value == "ttl":
                action.ttl = self._duration(self._value())
            elif method.value == "relay":
                self._relay_option(action, opt)
            else:
                self._local_option(action, opt)
        self._end()
        if method.value == "relay":
            self._check_relay(action)
        self.config.actions[action.name] = action

    def _check_relay(self, action: Action) -> None:
        """What OpenSMTPD's grammar refuses in a relay action (exclusions, the
        kind of a static table), and TLS protocols and ciphers that could never
        work. Relay URLs are not checked here: OpenSMTPD's grammar takes any
        string (compat corpus); ``mailriderd -n`` and the start refuse a bad
        one known in advance (config/relay.py)."""
        relay = action.relay
        routed = "host" in relay or "host_table" in relay
        if routed and "domain" in relay:
            raise self._err("relay options 'host' and 'domain' are mutually exclusive")
        if "auth" in relay and not routed and "domain" not in relay:
            raise self._err("relay option 'auth' requires 'host'")
        if relay.get("backup") and routed:
            raise self._err("relay options 'backup' and 'host' are mutually exclusive")
        if relay.get("backup") and "domain" in relay:
            raise self._err("relay options 'backup' and 'domain' are mutually exclusive")
        if relay.get("dane") and (routed or "domain" in relay):
            # DANE authenticates MX hosts by their TLSA records (docs/dane.md §1)
            raise self._err("relay option 'dane' needs MX relaying: not with 'host' or 'domain'")
        if "helo" in relay and "helo_src" in relay:
            raise self._err("relay options 'helo' and 'helo-src' are mutually exclusive")
        for key, option, kind in (("host_table", "host", "list"), ("domain", "domain", "mapping"),
                                  ("helo_src", "helo-src", "mapping")):
            name = relay.get(key)
            table = self.config.tables.get(name) if isinstance(name, str) else None
            if table is None or table.backend != "static":
                continue  # file, db and proc tables are read at start
            if kind == "mapping" and table.mapping is None:
                raise self._err(f"relay option '{option}' needs a mapping table "
                                f"(key = value), not a list")
            if kind == "list" and table.mapping is not None:
                raise self._err(f"relay option '{option}' needs a list table, not a mapping")
        protocols = relay.get("protocols")
        if isinstance(protocols, str):
            try:
                protocol_range(protocols)
            except ValueError as exc:
                raise self._err(f"relay protocols: {exc}") from None
        ciphers = relay.get("ciphers")
        if isinstance(ciphers, str):
            try:
                check_ciphers(ciphers)
            except ValueError as exc:
                raise self._err(f"relay ciphers: {exc}") from None

    def _local_option(self, action: Action, opt: Token) -> None:
        name = opt.value
        if name in ("alias", "virtual"):
            other = "virtual" if name == "alias" else "alias"
            if getattr(action, other) is not None:
                raise self._err("action options 'alias' and 'virtual' are mutually exclusive", opt)
            setattr(action, name, self._table_arg())
        elif name == "userbase":
            action.userbase = self._table_arg()
        elif name == "user":
            if action.method in _NO_USER_METHODS:
                raise self._err(f"action option 'user' is not allowed with {action.method}", opt)
            action.user = self._value().value
        elif name == "wrapper":
            wrapper = self._value()
            if wrapper.value not in self.config.mda_wrappers:
                raise self._err(f"no such mda wrapper '{wrapper.value}'", wrapper)
            action.wrapper = wrapper.value
        else:
            raise self._err(f"syntax error near {opt.describe()}", opt)

    def _relay_option(self, action: Action, opt: Token) -> None:
        relay = action.relay
        name = opt.value
        if name == "host":
            if self._peek().kind in ("<", "{"):
                relay["host_table"] = self._table_arg()
            else:
                relay["host"] = self._value().value
        elif name == "backup":
            relay["backup"] = True
            if self._accept("mx"):
                relay["backup_mx"] = self._value().value
        elif name in ("domain", "helo-src", "src", "auth"):
            relay[name.replace("-", "_")] = self._table_arg()
        elif name in ("helo", "mail-from", "ciphers", "protocols"):
            relay[name.replace("-", "_")] = self._value().value
        elif name == "pki":
            pki = self._value()
            if pki.value.lower() not in self.config.pkis:
                raise self._err(f"no such pki '{pki.value}'", pki)
            relay["pki"] = pki.value.lower()
        elif name == "ca":
            ca = self._value()
            if ca.value not in self.config.cas:
                raise self._err(f"no such ca '{ca.value}'", ca)
            relay["ca"] = ca.value
        elif name == "tls":
            relay["tls"] = True
            if self._accept("no-verify"):
                relay["tls_noverify"] = True
        elif name == "dane":
            relay["dane"] = True  # mailrider only: docs/dane.md
        elif name == "srs":
            # as OpenSMTPD: the key comes first (docs/config.md §9)
            if self.config.srs_key is None:
                raise self._err("an srs key is required for srs to be specified in an action",
                                opt)
            relay["srs"] = True
        elif name == "dkim":
            names: list[str] = []
            for tok in self._name_list():
                if tok.value not in self.config.dkims:
                    raise self._err(f"no such dkim '{tok.value}'", tok)
                if tok.value in names:
                    raise self._err(f"dkim '{tok.value}' listed twice", tok)
                names.append(tok.value)
            domains = [self.config.dkims[n].domain for n in names]
            if len(set(domains)) != len(domains):
                raise self._err("relay option 'dkim': two keys for one domain", opt)
            relay["dkim"] = names
        elif name == "filter":
            # ``filter NAME`` or ``filter { a b }``: reports of the outgoing
            # sessions (smtp-out) go to these filters (docs/filter-protocol.md §8)
            relay["filter"] = self._filter_names()
        else:
            raise self._err(f"syntax error near {opt.describe()}", opt)

    # ---- match ----------------------------------------------------------

    def _pattern(self, kind: str, negate: bool, optional: bool = False) -> Condition:
        """``[regex] <table>`` after a match or filter option."""
        regex = self._accept("regex") is not None
        if optional and not regex and not self._table_arg_follows():
            return Condition(kind, negate)
        return Condition(kind, negate, regex, self._table_arg())

    def _st_match(self, kw: Token) -> None:
        conditions: list[Condition] = []
        seen: set[str] = set()
        action: str | None = None
        while True:
            tok = self._next()
            negate = tok.kind == "!"
            if negate:
                tok = self._next()
            if not negate and self._is_kw(tok, "action"):
                name = self._value()
                if name.value not in self.config.actions:
                    raise self._err(f"no such action '{name.value}'", name)
                action = name.value
                break
            if not negate and self._is_kw(tok, "reject"):
                break
            if not self._is_kw(tok, *_MATCH_OPTIONS):
                raise self._unexpected(tok)
            if tok.value in seen:
                raise self._err(f"match option '{tok.value}' already specified", tok)
            seen.add(tok.value)
            if tok.value == "from":
                conditions.append(self._match_from(negate))
            elif tok.value == "for":
                conditions.append(self._match_for(negate))
            elif tok.value == "auth":
                conditions.append(self._pattern("auth", negate, optional=True))
            elif tok.value == "tls":
                conditions.append(Condition("tls", negate))
            else:
                conditions.append(self._pattern(tok.value, negate))
        self._end()
        # OpenSMTPD's defaults, made explicit so consumers need no rules
        defaults = []
        if "from" not in seen:
            defaults.append(Condition("from-local"))
        if "for" not in seen:
            defaults.append(Condition("for-local"))
        self.config.matches.append(
            Match(defaults + conditions, action, reject=action is None, where=self._where)
        )

    def _match_from(self, negate: bool) -> Condition:
        tok = self._next()
        if self._is_kw(tok, "any", "local", "socket"):
            return Condition("from-" + tok.value, negate)
        if self._is_kw(tok, "src", "mail-from"):
            return self._pattern("from-" + tok.value, negate)
        if self._is_kw(tok, "rdns", "auth"):
            return self._pattern("from-" + tok.value, negate, optional=True)
        raise self._unexpected(tok)

    def _match_for(self, negate: bool) -> Condition:
        tok = self._next()
        if self._is_kw(tok, "any", "local"):
            return Condition("for-" + tok.value, negate)
        if self._is_kw(tok, "domain", "rcpt-to"):
            return self._pattern("for-" + tok.value, negate)
        raise self._unexpected(tok)

    # ---- filters and procs ----------------------------------------------

    def _exec_options(self, flt: Filter) -> None:
        seen: set[str] = set()
        while not self._at_end():
            opt = self._next()
            if not self._is_kw(opt, "user", "group", "chroot"):
                raise self._unexpected(opt)
            if opt.value in seen:
                raise self._err(f"option '{opt.value}' already specified", opt)
            seen.add(opt.value)
            setattr(flt, opt.value, self._value().value)

    def _st_proc(self, kw: Token) -> None:
        name = self._value()
        if name.value in self.config.procs:
            raise self._err(f"proc '{name.value}' already defined", name)
        proc = Filter(name.value, "proc-exec", command=self._value().value, where=self._where)
        self._exec_options(proc)
        self._end()
        self.config.procs[proc.name] = proc

    def _st_filter(self, kw: Token) -> None:
        name = self._value()
        if name.value in self.config.filters:
            raise self._err(f"filter '{name.value}' already defined", name)
        flt = Filter(name.value, "builtin", where=self._where)
        kind = self._next()
        if self._is_kw(kind, "proc"):
            proc = self._value()
            if proc.value not in self.config.procs:
                raise self._err(f"no such proc '{proc.value}'", proc)
            flt.kind, flt.command = "proc", proc.value
        elif self._is_kw(kind, "proc-exec"):
            flt.kind, flt.command = "proc-exec", self._value().value
            self._exec_options(flt)
        elif self._is_kw(kind, "phase"):
            self._builtin_filter(flt)
        elif self._is_kw(kind, "chain"):
            flt.kind = "chain"
            self._chain(flt)
        else:
            raise self._unexpected(kind)
        self._end()
        self.config.filters[flt.name] = flt

    def _builtin_filter(self, flt: Filter) -> None:
        phase = self._next()
        if not self._is_kw(phase, *FILTER_PHASES):
            raise self._err(f"invalid filter phase {phase.describe()}", phase)
        flt.phase = phase.value
        allowed = PHASE_CONDITIONS[phase.value]
        self._expect("match")
        while True:
            tok = self._next()
            negate = tok.kind == "!"
            if negate:
                tok = self._next()
            if not negate and flt.conditions and self._is_kw(tok, *FILTER_DECISIONS):
                break
            if not self._is_kw(tok, *_RCPT_CONDS):
                raise self._unexpected(tok)
            if tok.value not in allowed:
                raise self._err(
                    f"filter condition '{tok.value}' is not available in phase {phase.value}",
                    tok,
                )
            if tok.value == "fcrdns":
                flt.conditions.append(Condition("fcrdns", negate))
            else:
                optional = tok.value in ("rdns", "auth")
                flt.conditions.append(self._pattern(tok.value, negate, optional=optional))
        if tok.value == "junk" and phase.value == "commit":
            raise self._err("decision 'junk' is not available in phase commit", tok)
        flt.decision = tok.value
        if FILTER_DECISIONS[tok.value]:
            flt.decision_arg = self._value().value

    def _chain(self, flt: Filter) -> None:
        if self._peek().kind != "{":
            tok = self._next()
            raise self._err(f"syntax error near {tok.describe()}", tok)
        procs: set[str] = set()
        for tok in self._name_list():
            member = self.config.filters.get(tok.value)
            if member is None:
                raise self._err(f"no such filter '{tok.value}'", tok)
            if member.kind == "chain":
                raise self._err(f"filter chains cannot be nested: '{tok.value}'", tok)
            if tok.value in flt.chain:
                raise self._err(f"filter '{tok.value}' listed twice", tok)
            if member.kind == "proc" and member.command is not None:
                # one process serves one place in a chain
                if member.command in procs:
                    raise self._err(f"proc '{member.command}' used twice in a chain", tok)
                procs.add(member.command)
            flt.chain.append(tok.value)

    # ---- global options -------------------------------------------------

    def _set(self, option: str) -> None:
        self.config.option_where[option] = self._where

    def _st_admd(self, kw: Token) -> None:
        self.config.admd = self._value().value
        self._end()
        self._set("admd")

    def _st_bounce(self, kw: Token) -> None:
        self._expect("warn-interval")
        delays = [self._duration(self._value())]
        while not self._at_end():
            if self._peek().kind == ",":
                self._next()
            tok = self._value()
            if len(delays) >= BOUNCE_WARN_MAX:
                raise self._err(f"at most {BOUNCE_WARN_MAX} bounce warn-intervals", tok)
            delays.append(self._duration(tok))
        self._end()
        self.config.bounce_warn_interval = delays
        self._set("bounce warn-interval")

    def _st_queue(self, kw: Token) -> None:
        opt = self._next()
        if self._is_kw(opt, "ttl"):
            self.config.queue_ttl = self._duration(self._value())
        elif self._is_kw(opt, "compression"):
            self.config.queue_compression = True
        elif self._is_kw(opt, "encryption"):
            self.config.queue_encryption = True
            tok = self._peek()
            if tok.kind == "-":
                self._next()
            elif self._is_value(tok):
                key = self._next().value
                # "stdin" and "-" mean: read the key when starting
                self.config.queue_key = None if key == "stdin" else key
        else:
            raise self._unexpected(opt)
        self._end()
        self._set("queue " + opt.value)

    def _st_smtp(self, kw: Token) -> None:
        opt = self._next()
        if self._is_kw(opt, "max-message-size"):
            tok = self._value()
            size = parse_size(tok.value)
            if size is None:
                raise self._err(f"invalid size: {tok.value}", tok)
            self.config.max_message_size = size
        elif self._is_kw(opt, "limit"):
            seen = 0
            while not self._at_end() or not seen:
                key = self._next()
                if key.kind == WORD and key.value in _SMTP_LIMITS:
                    attr, minimum = _SMTP_LIMITS[key.value]
                    setattr(self.config, attr, self._number(self._value(), key.value, minimum))
                    seen += 1
                elif key.kind in (NL, EOF):
                    raise self._err(f"syntax error near {key.describe()}", key)
                else:
                    raise self._err(f"invalid smtp limit keyword {key.describe()}", key)
        elif self._is_kw(opt, "sub-addr-delim"):
            tok = self._value()
            if len(tok.value) != 1:
                raise self._err(f"invalid sub-addr-delim: {tok.value}", tok)
            self.config.sub_addr_delim = tok.value
        elif self._is_kw(opt, "ciphers"):
            tok = self._value()
            try:
                check_ciphers(tok.value)
            except ValueError as exc:
                raise self._err(f"smtp ciphers: {exc}", tok) from None
            self.config.smtp_ciphers = tok.value
        elif self._is_kw(opt, "rdns"):
            # mailrider only: look up every client's reverse DNS name (and
            # check it forward) for Received headers, filters and reports
            self.config.rdns_lookup = True
        elif self._is_kw(opt, "key-in-process"):
            # mailrider only: allow pony to hold TLS keys when delegation to
            # klondike is unavailable (logged as a warning at every start)
            self.config.key_in_process = True
        else:
            raise self._unexpected(opt)
        self._end()
        self._set("smtp " + opt.value)

    def _limits(self, allowed: frozenset[str] | None, what: str) -> dict[str, int]:
        limits: dict[str, int] = {}
        while not self._at_end() or not limits:
            key = self._next()
            if allowed is None:
                known = key.kind == WORD and _MTA_LIMIT_RE.match(key.value) is not None
            else:
                known = key.kind == WORD and key.value in allowed
            if key.kind in (NL, EOF):
                raise self._err(f"syntax error near {key.describe()}", key)
            if not known:
                raise self._err(f"invalid {what} limit keyword {key.describe()}", key)
            limits[key.value] = self._number(self._value(), key.value)
        return limits

    def _st_mta(self, kw: Token) -> None:
        opt = self._next()
        if self._is_kw(opt, "max-deferred"):
            self.config.mta_max_deferred = self._number(self._value(), "max-deferred")
        elif self._is_kw(opt, "port"):
            # mailrider only: the port MX hosts are reached on (default 25),
            # for test networks where the peers cannot listen on port 25
            tok = self._value()
            port = parse_port(tok.value)
            if port is None:
                raise self._err(f"invalid port: {tok.value}", tok)
            self.config.mta_port = port
        elif self._is_kw(opt, "limit"):
            words: list[str] = []
            domain = ""
            if self._accept("for"):
                self._expect("domain")
                domain = self._value().value.lower()
                words += ["for", "domain", domain]
            found: dict[str, int] = {}
            family = self._accept("inet4", "inet6")
            if family is not None:
                words.append(family.value)
                found["family"] = 4 if family.value == "inet4" else 6
            if family is None or not self._at_end():
                for key, value in self._limits(None, "mta").items():
                    if key not in MTA_LIMITS:
                        raise self._err(f"invalid mta limit keyword: {key}")
                    words += [key, str(value)]
                    found[key] = value
            self.config.mta_limits.setdefault(domain, {}).update(found)
            self.config.other.append(("mta limit", words, self._where))
        else:
            raise self._unexpected(opt)
        self._end()
        self._set("mta " + opt.value)

    def _st_resolver(self, kw: Token) -> None:
        """mailrider only: where the daemon's stub resolver asks (lka owns DNS).

        ``resolver nameserver ADDR [port N]`` (repeatable, in order),
        ``resolver timeout N`` (seconds per query), ``resolver attempts N``,
        ``resolver trust-ad`` (believe the AD bit of a resolver that is not on
        loopback: docs/dane.md §2).
        Without a nameserver statement /etc/resolv.conf is read at start.
        """
        opt = self._next()
        if opt.kind == WORD and opt.value == "nameserver":
            tok = self._value()
            try:
                addr = str(ipaddress.ip_address(tok.value.strip("[]")))
            except ValueError:
                raise self._err(f"invalid nameserver address: {tok.value}", tok) from None
            port = 53
            if self._accept("port"):
                ptok = self._value()
                parsed = parse_port(ptok.value)
                if parsed is None:
                    raise self._err(f"invalid port: {ptok.value}", ptok)
                port = parsed
            self.config.resolver_nameservers.append((addr, port))
        elif opt.kind == WORD and opt.value == "timeout":
            self.config.resolver_timeout = float(self._number(self._value(), "timeout", 1))
        elif opt.kind == WORD and opt.value == "attempts":
            self.config.resolver_attempts = self._number(self._value(), "attempts", 1)
        elif opt.kind == WORD and opt.value == "trust-ad":
            self.config.resolver_trust_ad = True
        else:
            raise self._unexpected(opt)
        self._end()
        self._set("resolver " + opt.value)

    def _st_metrics(self, kw: Token) -> None:
        """mailrider only: ``metrics listen on ADDR port N`` (repeatable), where
        control serves the Prometheus text format (docs/metrics.md §1). ADDR is
        a loopback address or ``localhost``: the endpoint has no authentication."""
        self._expect("listen")
        self._expect("on")
        tok = self._value()
        text = "127.0.0.1" if tok.value == "localhost" else tok.value.strip("[]")
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise self._err(f"metrics listen on: {tok.value} is not an IP address "
                            "or localhost", tok) from None
        if not addr.is_loopback:
            raise self._err(f"metrics listen on: {tok.value} is not a loopback address "
                            "(the metrics have no authentication)", tok)
        if not self._accept("port"):
            raise self._err("metrics listen on: a port is required", tok)
        ptok = self._value()
        port = parse_port(ptok.value)
        if port is None:
            raise self._err(f"invalid port: {ptok.value}", ptok)
        self._end()
        if (str(addr), port) in self.config.metrics_listen:
            raise self._err(f"metrics listen on {addr} port {port}: already declared", tok)
        self.config.metrics_listen.append((str(addr), port))
        self._set("metrics listen")

    def _st_mda(self, kw: Token) -> None:
        opt = self._next()
        if self._is_kw(opt, "limit"):
            self.config.mda_limits.update(self._limits(MDA_LIMITS, "mda"))
        elif self._is_kw(opt, "wrapper"):
            name = self._value()
            if name.value in self.config.mda_wrappers:
                raise self._err(f"mda wrapper '{name.value}' already defined", name)
            self.config.mda_wrappers[name.value] = self._value().value
        else:
            raise self._unexpected(opt)
        self._end()
        self._set("mda " + opt.value)

    def _st_scheduler(self, kw: Token) -> None:
        self._expect("limit")
        words: list[str] = []
        found = self._limits(SCHEDULER_LIMITS, "scheduler")
        for key, value in found.items():
            if value < 1:
                raise self._err(f"scheduler limit {key} must be at least 1")
            words += [key, str(value)]
        self.config.scheduler_limits.update(found)
        self._end()
        self.config.other.append(("scheduler limit", words, self._where))
        self._set("scheduler limit")

    def _st_srs(self, kw: Token) -> None:
        opt = self._next()
        if self._is_kw(opt, "key"):
            if self._accept("backup"):
                self.config.srs_backup_key = self._value().value
            else:
                self.config.srs_key = self._value().value
        elif self._is_kw(opt, "ttl"):
            ttl = self._value()
            self.config.srs_ttl = self._duration(ttl)
            # the SRS timestamp counts days
            if self.config.srs_ttl < 86400:
                raise self._err(f'ttl delay "{ttl.value}" is too short', ttl)
        else:
            raise self._unexpected(opt)
        self._end()
        self._set("srs " + opt.value)

    # ---- end of input ---------------------------------------------------

    def _finish(self) -> None:
        for pki in self.config.pkis.values():
            for attr in ("cert", "key"):
                if getattr(pki, attr) is None:
                    raise ConfigError(
                        f"pki '{pki.name}' has no {attr}", pki.where.file, pki.where.line
                    )


def parse_string(
    text: str, file: str = "<string>", macros: dict[str, str] | None = None
) -> Config:
    """Parse configuration text; ``file`` names it in errors and bases includes."""
    parser = _Parser(file, macros)
    parser.push(text, file)
    return parser.parse()


def parse_file(path: str, macros: dict[str, str] | None = None) -> Config:
    """Parse the configuration file at ``path`` (``macros``: the -D definitions)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot open {path}: {e.strerror}") from None
    return parse_string(text, path, macros)
