"""table-postgres against a real PostgreSQL server (the shared SQL suite, plus PostgreSQL's own)."""

from __future__ import annotations

from pathlib import Path

import sqlsuite
from mailrider_table_postgres import PostgresBackend


class TestPostgres(sqlsuite.Suite):
    pass


def test_casts_and_dollar_quotes_are_not_placeholders(
    db: sqlsuite.Database, tmp_path: Path
) -> None:
    query = (
        "SELECT target::text FROM aliases WHERE source = $1::varchar "
        "AND target <> $$ $1 ? :x $$ AND target <> E'\\' $1' ORDER BY target"
    )
    b = PostgresBackend(
        "t", str(sqlsuite.write_config(tmp_path / "t.conf", db, extra={"query_alias": query}))
    )
    assert b.lookup("alias", "root") == "admin@example.org, ops@example.org"


def test_log_shows_connection_without_password(
    db: sqlsuite.Database, tmp_path: Path, caplog: object
) -> None:
    b = PostgresBackend("t", str(sqlsuite.write_config(tmp_path / "t.conf", db)))
    assert b.lookup("alias", "root")
    assert "password" not in b.describe({"conninfo": db.connection_lines()[0].split(" ", 1)[1]})
    assert getattr(db, "dbname") in b.describe(
        {"conninfo": db.connection_lines()[0].split(" ", 1)[1]}
    )
