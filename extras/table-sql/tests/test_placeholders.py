"""The quote-aware placeholder rewrite (pure: no database)."""

from __future__ import annotations

import pytest
import sqlalchemy
from mailrider_table_sql.placeholders import (
    MYSQL,
    POSTGRES,
    SQLITE,
    Dialect,
    PlaceholderError,
    rewrite,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite

# SQLAlchemy 1.4 has no psycopg (3) dialect; psycopg2's has the same paramstyle
PSYCOPG = getattr(postgresql, "psycopg", postgresql.psycopg2)


@pytest.mark.parametrize(
    ("dialect", "query", "text", "count"),
    [
        (POSTGRES, "SELECT a FROM t WHERE k = $1", "SELECT a FROM t WHERE k =  :key ", 1),
        (
            POSTGRES,
            "SELECT '$1', \"$1\" FROM t WHERE k=$1",
            "SELECT '$1', \"$1\" FROM t WHERE k= :key ",
            1,
        ),
        (
            POSTGRES,
            "SELECT $$ $1 $$, $x$ $1 $x$ WHERE k = $1::text",
            "SELECT $$ $1 $$, $x$ $1 $x$ WHERE k =  :key \\:\\:text",
            1,
        ),
        (
            POSTGRES,
            "SELECT E'\\' $1' WHERE a$1 = 1 -- $1",
            "SELECT E'\\' $1' WHERE a$1 = 1 -- $1",
            0,
        ),
        (
            POSTGRES,
            "SELECT 1 /* $1 /* $1 */ $1 */ WHERE k = $1",
            "SELECT 1 /* $1 /* $1 */ $1 */ WHERE k =  :key ",
            1,
        ),
        (
            POSTGRES,
            "SELECT ? FROM t WHERE k = $1 OR j = $1",
            "SELECT ? FROM t WHERE k =  :key  OR j =  :key ",
            2,
        ),
        (MYSQL, "SELECT a FROM t WHERE k = ?", "SELECT a FROM t WHERE k =  :key ", 1),
        (
            MYSQL,
            "SELECT 'it\\'s ?', \"?\", `?` WHERE k=? # ?",
            "SELECT 'it\\'s ?', \"?\", `?` WHERE k= :key  # ?",
            1,
        ),
        (MYSQL, "SELECT 1--? \nWHERE k=?", "SELECT 1-- :key  \nWHERE k= :key ", 2),
        (MYSQL, "SELECT 1 -- ?\nWHERE k=?", "SELECT 1 -- ?\nWHERE k= :key ", 1),
        (
            SQLITE,
            "SELECT [?], `?`, 'a''?' WHERE k = ?1",
            "SELECT [?], `?`, 'a''?' WHERE k =  :key ",
            1,
        ),
        (
            SQLITE,
            "SELECT ':x' WHERE k = ? AND t = :y",
            "SELECT '\\:x' WHERE k =  :key  AND t = \\:y",
            1,
        ),
    ],
)
def test_rewrite(dialect: Dialect, query: str, text: str, count: int) -> None:
    out = rewrite(query, dialect)
    assert (out.text, out.placeholders) == (text, count)


@pytest.mark.parametrize(
    ("dialect", "query", "message"),
    [
        (POSTGRES, "SELECT 'a WHERE k = $1", "unterminated ' quote"),
        (POSTGRES, "SELECT $x$ a WHERE k = $1", "unterminated \\$x\\$ quote"),
        (POSTGRES, "SELECT a WHERE k = $2", "only the placeholder \\$1"),
        (POSTGRES, "SELECT a /* WHERE k = $1", "unterminated /\\* comment"),
        (MYSQL, "SELECT `a WHERE k = ?", "unterminated ` quote"),
        (SQLITE, "SELECT [a WHERE k = ?", "unterminated \\[ identifier"),
        (SQLITE, "SELECT a WHERE k = ?2", "only the placeholder \\?"),
    ],
)
def test_rewrite_errors(dialect: Dialect, query: str, message: str) -> None:
    with pytest.raises(PlaceholderError, match=message):
        rewrite(query, dialect)


@pytest.mark.parametrize(
    ("dialect", "sa_dialect", "query", "compiled"),
    [
        (
            POSTGRES,
            PSYCOPG.dialect(),
            "SELECT '%:a' || a::text FROM t WHERE k = $1",
            "SELECT '%%:a' || a::text FROM t WHERE k =  %(key)s ",
        ),
        (
            MYSQL,
            mysql.pymysql.dialect(),
            "SELECT '%?:a' FROM t WHERE k = ?",
            "SELECT '%%?:a' FROM t WHERE k =  %s ",
        ),
        (
            SQLITE,
            sqlite.pysqlite.dialect(),
            "SELECT ':a' FROM t WHERE k = ?",
            "SELECT ':a' FROM t WHERE k =  ? ",
        ),
    ],
)
def test_sqlalchemy_sees_one_parameter(
    dialect: Dialect, sa_dialect: sqlalchemy.Dialect, query: str, compiled: str
) -> None:
    clause = sqlalchemy.text(rewrite(query, dialect).text)
    out = clause.compile(dialect=sa_dialect)
    assert str(out) == compiled
    assert list(out.params) == ["key"]
