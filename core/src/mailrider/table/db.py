"""``db:`` tables: the indexed on-disk format built by ``mailriderctl makemap``.

The file is an SQLite 3 database (see :mod:`mailrider.table.makemap` for the
schema). It is opened read-only through a ``file:...?mode=ro`` URI and kept
open on one connection; every lookup is a primary-key probe, so a table of a
million keys answers in microseconds, which is why the blocking sqlite calls
run directly on the event loop. ``update()`` opens the (possibly replaced)
file anew and swaps connections only when the new one is sound.

Pattern entries (``*`` wildcards and CIDR blocks) are listed in the ``wild``
table by makemap, loaded once per open and scanned in memory; every other
match is found by probing the candidate keys (see :mod:`match`). The
``regex`` service has no index: its first use reads every entry once.
"""

from __future__ import annotations

import sqlite3
import urllib.parse

from mailrider.errors import ConfigError, TempFail
from mailrider.table.base import Table
from mailrider.table.match import (
    address_of,
    glob_match,
    mailaddr_candidates,
    match_mailaddr,
    match_regex,
    netaddr_candidates,
    network_of,
)
from mailrider.table.static import BUILTIN_SERVICES
from mailrider.table.values import IPNetwork, Mailaddr, parse_mailaddr

#: the on-disk format version this module reads and makemap writes
DB_FORMAT = "1"
#: kinds of db file: a mapping, a set (keys only), or a mapping of aliases
DB_KINDS = ("map", "set", "aliases")


#: Berkeley DB magic numbers (hash, btree, queue, heap), at offset 12 of the
#: metadata page (DB 2 and later, OpenSMTPD's makemap on Linux) or at offset 0
#: (DB 1.85, OpenBSD's libc dbopen), in either byte order
_BERKELEY_MAGIC = frozenset({0x00061561, 0x00053162, 0x00042253, 0x00074582})


def is_berkeley_db(path: str) -> bool:
    """Whether ``path`` starts like a Berkeley DB file (an OpenSMTPD ``db:`` table)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    if len(head) < 16:
        return False
    for off in (0, 12):
        word = head[off : off + 4]
        if {int.from_bytes(word, "little"), int.from_bytes(word, "big")} & _BERKELEY_MAGIC:
            return True
    return False


def berkeley_hint(name: str, path: str) -> str:
    """The error for a Berkeley DB file, saying how to rebuild it for mailrider."""
    source = path[:-3] if path.endswith(".db") else "SOURCE"
    return (f"table {name}: {path} is a Berkeley DB file (OpenSMTPD's makemap); "
            f"rebuild it from its text source: mailriderctl makemap -o {path} {source} "
            f"(with the -t type given to makemap)")


def open_db_file(name: str, path: str) -> _Db:
    """Open a db file for table ``name``; ConfigError (without a place) when it cannot be."""
    try:
        return _Db(path)
    except (sqlite3.Error, ValueError, KeyError) as exc:
        if is_berkeley_db(path):
            raise ConfigError(berkeley_hint(name, path)) from None
        raise ConfigError(f"table {name}: cannot open db {path}: {exc}") from None


def open_readonly(path: str) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(path) + "?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None)


class _Db:
    """One open database and what was loaded from it."""

    def __init__(self, path: str) -> None:
        conn = open_readonly(path)
        try:
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            if meta.get("format") != DB_FORMAT:
                raise ValueError(f"unsupported db format {meta.get('format')!r}")
            if meta.get("type") not in DB_KINDS:
                raise ValueError(f"unknown db type {meta.get('type')!r}")
            self.kind: str = meta["type"]
            wild = [row[0] for row in conn.execute("SELECT key FROM wild")]
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        self.domains = [w for w in wild if "*" in w]
        nets = (network_of(w) for w in wild if "/" in w)
        self.networks: list[IPNetwork] = [n for n in nets if n is not None]
        pats = (_mailaddr(w) for w in wild if "*" in w)
        self.mailaddrs: list[Mailaddr] = [p for p in pats if p is not None]
        self.regexes: list[str] | None = None

    def has(self, key: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM map WHERE key = ?", (key,)).fetchone()
        return row is not None

    def value(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM map WHERE key = ?", (key,)).fetchone()
        if row is None or row[0] is None:
            return None
        return str(row[0])

    def entries(self) -> list[str]:
        col = "value" if self.kind == "set" else "key"
        return [str(r[0]) for r in self.conn.execute(f"SELECT {col} FROM map")]  # noqa: S608


def _mailaddr(entry: str) -> Mailaddr | None:
    try:
        return parse_mailaddr(entry)
    except ValueError:
        return None


class DbTable(Table):
    """A table read from a makemap-built database."""

    services = BUILTIN_SERVICES

    def __init__(self, name: str, path: str, delim: str = "+") -> None:
        super().__init__(name)
        self.path = path
        self.delim = delim
        self._db: _Db | None = None
        self._cursor: str | None = None

    def _open(self) -> _Db:
        return _Db(self.path)

    async def start(self) -> None:
        self._db = open_db_file(self.name, self.path)

    async def close(self) -> None:
        if self._db is not None:
            self._db.conn.close()
            self._db = None

    async def update(self) -> None:
        try:
            new = self._open()
        except (sqlite3.Error, ValueError, KeyError) as exc:
            raise TempFail(f"table {self.name}: cannot reopen {self.path}: {exc}") from None
        old, self._db, self._cursor = self._db, new, None
        if old is not None:
            old.conn.close()

    def _get(self) -> _Db:
        if self._db is None:
            try:
                self._db = self._open()
            except (sqlite3.Error, ValueError, KeyError) as exc:
                raise TempFail(f"table {self.name}: cannot open {self.path}: {exc}") from None
        return self._db

    @property
    def kind(self) -> str:
        return self._get().kind

    async def check(self, service: str, key: str) -> bool:
        if service == "auth":
            return False
        db = self._get()
        low = key.lower()
        try:
            if service == "domain":
                return db.has(low) or any(glob_match(p, low) for p in db.domains)
            if service == "netaddr":
                if any(db.has(c) for c in netaddr_candidates(low)):
                    return True
                addr = address_of(low)
                return addr is not None and any(
                    addr.version == n.version and addr in n for n in db.networks
                )
            if service == "mailaddr":
                for cand in mailaddr_candidates(low, self.delim):
                    pat = _mailaddr(cand)
                    if pat is not None and db.has(cand) and match_mailaddr(pat, low, self.delim):
                        return True
                return any(match_mailaddr(p, low, self.delim) for p in db.mailaddrs)
            if service == "regex":
                if db.regexes is None:
                    db.regexes = db.entries()
                return any(match_regex(p, key) for p in db.regexes)
            return db.has(low)
        except sqlite3.Error as exc:
            raise TempFail(f"table {self.name}: {exc}") from None

    async def lookup(self, service: str, key: str) -> str | None:
        db = self._get()
        if db.kind == "set":
            return None
        try:
            return db.value(key if service == "auth" else key.lower())
        except sqlite3.Error as exc:
            raise TempFail(f"table {self.name}: {exc}") from None

    async def fetch(self, service: str) -> str | None:
        db = self._get()
        col = "value" if db.kind == "set" else "key"
        try:
            row = None
            if self._cursor is not None:
                row = db.conn.execute(
                    f"SELECT key, {col} FROM map WHERE key > ? ORDER BY key LIMIT 1",  # noqa: S608
                    (self._cursor,),
                ).fetchone()
            if row is None:
                row = db.conn.execute(
                    f"SELECT key, {col} FROM map ORDER BY key LIMIT 1"  # noqa: S608
                ).fetchone()
        except sqlite3.Error as exc:
            raise TempFail(f"table {self.name}: {exc}") from None
        if row is None:
            return None
        self._cursor = str(row[0])
        return str(row[1])
