"""``mailriderctl makemap``: compile a table(5) text file into a ``db:`` file.

On-disk format (version 1). A ``db:`` file is an SQLite 3 database with
three tables::

    CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE map  (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
    CREATE TABLE wild (key TEXT PRIMARY KEY) WITHOUT ROWID;

- ``meta`` holds ``format`` (``1``), ``type`` (``map``, ``set`` or
  ``aliases``), ``source`` (the text file it was built from) and ``count``
  (the number of keys);
- ``map`` holds one row per entry. Keys are lower-cased (table keys arrive
  lower-cased). For ``map`` and ``aliases`` the value is the value text,
  trimmed; for ``set`` it is the entry as written (so a regular expression
  keeps its case);
- ``wild`` repeats the keys that are patterns rather than literal keys
  (containing ``*`` or ``/``: wildcard domains and addresses, CIDR blocks),
  so a reader scans only those.

The text is parsed exactly as a ``file:`` table is (:mod:`mailrider.table.file`).
``map`` and ``aliases`` need a mapping, ``set`` takes a list (the keys of a
mapping are used if one is given). ``aliases`` also checks every value with
:func:`parse_alias_targets`. Errors are reported as ``file:line: message``.

The database is written to a temporary file in the output's folder, synced,
given the source file's permission bits (secrets stay private) and renamed
over the output, so a running daemon's ``update table`` sees either the old
or the new file, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import tempfile

from mailrider.errors import ConfigError
from mailrider.table.db import DB_FORMAT, DB_KINDS
from mailrider.table.file import ParsedTable, read_table_file
from mailrider.table.match import is_pattern
from mailrider.table.values import parse_alias_targets

_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE map (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID",
    "CREATE TABLE wild (key TEXT PRIMARY KEY) WITHOUT ROWID",
)


def _rows(parsed: ParsedTable, kind: str, source: str) -> list[tuple[str, str | None]]:
    if kind == "set":
        return [(key.lower(), key) for _, key, _ in parsed.entries]
    if parsed.kind != "mapping" and parsed.entries:
        lineno, key, _ = parsed.entries[0]
        raise ConfigError(f"key {key!r} has no value (a {kind} needs 'key value')", source, lineno)
    rows: list[tuple[str, str | None]] = []
    for lineno, key, value in parsed.entries:
        if kind == "aliases":
            try:
                parse_alias_targets(value or "")
            except ValueError as exc:
                raise ConfigError(f"alias {key!r}: {exc}", source, lineno) from None
        rows.append((key.lower(), value))
    return rows


def makemap(source: str, output: str | None = None, kind: str = "map") -> int:
    """Build ``output`` (default ``source + ".db"``) from ``source``; return the key count.

    Raises ConfigError for a bad kind, an unreadable source or a bad line.
    """
    if kind not in DB_KINDS:
        raise ConfigError(f"makemap: unknown type {kind!r} (want one of: {', '.join(DB_KINDS)})")
    out = output if output is not None else source + ".db"
    try:
        parsed = read_table_file(source)
        mode = stat.S_IMODE(os.stat(source).st_mode)
    except OSError as exc:
        raise ConfigError(f"makemap: cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeError:
        raise ConfigError(f"makemap: {source} is not UTF-8 text") from None
    rows = _rows(parsed, kind, source)

    folder = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".makemap-", suffix=".tmp")
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = OFF")
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("BEGIN")
            for ddl in _SCHEMA:
                conn.execute(ddl)
            # sorted rows fill the B-tree sequentially, much faster for big maps
            rows.sort(key=lambda r: r[0])
            conn.executemany("INSERT INTO map (key, value) VALUES (?, ?)", rows)
            conn.executemany(
                "INSERT INTO wild (key) VALUES (?)", ((k,) for k, _ in rows if is_pattern(k))
            )
            meta = {
                "format": DB_FORMAT,
                "type": kind,
                "source": os.path.abspath(source),
                "count": str(len(rows)),
            }
            conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", meta.items())
            conn.execute("COMMIT")
        finally:
            conn.close()
        os.chmod(tmp, mode & 0o666)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return len(rows)
