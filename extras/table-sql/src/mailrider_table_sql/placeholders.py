"""Quote-aware rewrite of a backend query's single placeholder.

OpenSMTPD's SQL backends hand each query to the server with one positional
parameter: ``$1`` for PostgreSQL, ``?`` for MySQL and SQLite. We run queries
through SQLAlchemy's ``text()``, whose only parameter syntax is ``:name``, so
:func:`rewrite` turns every real placeholder into the bound parameter
``:key`` and escapes every other colon (``\\:``), so that a ``:word`` in a
string literal, a comment or a PostgreSQL cast (``::text``) is never taken
for a parameter.

Invariants: a placeholder character inside a string literal, a quoted
identifier, a comment or a dollar-quoted string is text, never a
parameter; the rewrite changes nothing else in the query (apart from the
blanks put around ``:key``); an unterminated quote or comment is an error.
The scanner is pure (no I/O) and linear in the length of the query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: the name of the bound parameter that carries the lookup key
PARAM = "key"

_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")


class PlaceholderError(ValueError):
    """A query that cannot be scanned (unterminated quote or comment, bad placeholder)."""


@dataclass(frozen=True, slots=True)
class Dialect:
    """The lexical rules of one server's SQL that matter for finding placeholders."""

    name: str
    placeholder: str  # "$1" or "?"
    backslash_strings: bool  # MySQL: backslash escapes in '...' and "..."
    backticks: bool  # `identifier`
    brackets: bool  # [identifier] (SQLite)
    hash_comments: bool  # MySQL: # to end of line
    dollar_quotes: bool  # PostgreSQL: $tag$...$tag$ and E'...'
    nested_comments: bool  # PostgreSQL: /* /* */ */


POSTGRES = Dialect("postgres", "$1", False, False, False, False, True, True)
MYSQL = Dialect("mysql", "?", True, True, False, True, False, False)
SQLITE = Dialect("sqlite", "?", False, True, True, False, False, False)


@dataclass(frozen=True, slots=True)
class Rewritten:
    text: str  # for sqlalchemy.text(): placeholders as :key, other colons escaped
    placeholders: int  # how many placeholders the query had


def _quoted_end(query: str, i: int, quote: str, backslash: bool) -> int:
    """Index just past the literal that opens with ``quote`` at ``i``."""
    n = len(query)
    j = i + 1
    while j < n:
        c = query[j]
        if backslash and c == "\\":
            j += 2
            continue
        if c == quote:
            if j + 1 < n and query[j + 1] == quote:  # doubled quote: one literal quote
                j += 2
                continue
            return j + 1
        j += 1
    raise PlaceholderError(f"unterminated {quote} quote")


def _block_comment_end(query: str, i: int, nested: bool) -> int:
    depth = 0
    j = i
    n = len(query)
    while j < n:
        if query.startswith("/*", j):
            depth = depth + 1 if nested or depth == 0 else depth
            j += 2
        elif query.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    raise PlaceholderError("unterminated /* comment")


def _line_end(query: str, i: int) -> int:
    j = query.find("\n", i)
    return len(query) if j < 0 else j


def rewrite(query: str, dialect: Dialect) -> Rewritten:
    """Rewrite ``query``'s placeholders for :func:`sqlalchemy.text`; see the module doc."""
    out: list[str] = []
    count = 0
    n = len(query)
    i = 0
    start = 0  # start of the stretch copied verbatim (colons escaped)

    def copy(upto: int) -> None:
        out.append(query[start:upto].replace(":", "\\:"))

    while i < n:
        c = query[i]
        prev_ident = i > 0 and _IDENT_CHAR.match(query[i - 1]) is not None
        if c == "'":
            backslash = dialect.backslash_strings or (
                dialect.dollar_quotes
                and i > 0
                and query[i - 1] in "eE"
                and not (i > 1 and _IDENT_CHAR.match(query[i - 2]))
            )
            i = _quoted_end(query, i, "'", backslash)
        elif c == '"':
            i = _quoted_end(query, i, '"', dialect.backslash_strings)
        elif c == "`" and dialect.backticks:
            i = _quoted_end(query, i, "`", False)
        elif c == "[" and dialect.brackets:
            j = query.find("]", i + 1)
            if j < 0:
                raise PlaceholderError("unterminated [ identifier")
            i = j + 1
        elif c == "-" and query.startswith("--", i):
            if dialect.name == "mysql" and not (i + 2 == n or query[i + 2] in " \t\r\n\f\v"):
                i += 1  # MySQL: "--" starts a comment only before a blank
            else:
                i = _line_end(query, i)
        elif c == "#" and dialect.hash_comments:
            i = _line_end(query, i)
        elif c == "/" and query.startswith("/*", i):
            i = _block_comment_end(query, i, dialect.nested_comments)
        elif c == "$" and dialect.dollar_quotes and not prev_ident:
            if query.startswith("$1", i) and not (i + 2 < n and query[i + 2].isdigit()):
                copy(i)
                out.append(f" :{PARAM} ")
                count += 1
                i += 2
                start = i
                continue
            if i + 1 < n and query[i + 1].isdigit():
                raise PlaceholderError("only the placeholder $1 is supported")
            m = _DOLLAR_TAG.match(query, i)
            if m is None:
                i += 1
                continue
            tag = m.group(0)
            j = query.find(tag, m.end())
            if j < 0:
                raise PlaceholderError(f"unterminated {tag} quote")
            i = j + len(tag)
        elif c == "?" and dialect.placeholder == "?":
            copy(i)
            j = i + 1
            while j < n and query[j].isdigit():
                j += 1
            if j > i + 1 and (dialect.name != "sqlite" or query[i + 1 : j] != "1"):
                raise PlaceholderError("only the placeholder ? is supported")
            out.append(f" :{PARAM} ")
            count += 1
            i = j
            start = i
        else:
            i += 1
    copy(n)
    return Rewritten("".join(out), count)
