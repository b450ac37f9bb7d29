"""table-sqlite against a real SQLite file (the shared SQL suite, plus SQLite's own)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlsuite
from mailrider.table.sdk import ConfigFileError
from mailrider_table_sqlite import SQLiteBackend


class TestSQLite(sqlsuite.Suite):
    pass


def test_brackets_backticks_and_numbered_placeholder(db: sqlsuite.Database, tmp_path: Path) -> None:
    query = (
        "SELECT [target] FROM `aliases` WHERE source = ?1 AND target <> '?' "
        "AND \"target\" <> ':x' ORDER BY target -- ?"
    )
    b = SQLiteBackend(
        "t", str(sqlsuite.write_config(tmp_path / "t.conf", db, extra={"query_alias": query}))
    )
    assert b.lookup("alias", "root") == "admin@example.org, ops@example.org"


def test_missing_file_is_a_start_error_and_never_created(tmp_path: Path) -> None:
    path = tmp_path / "t.conf"
    missing = tmp_path / "nope.db"
    path.write_text(f"dbpath {missing}\nquery_alias SELECT 1 WHERE ? = 1\n")
    with pytest.raises(ConfigFileError, match="dbpath: no such file"):
        SQLiteBackend("t", str(path))
    assert not missing.exists()


def test_missing_dbpath(tmp_path: Path) -> None:
    path = tmp_path / "t.conf"
    path.write_text("query_alias SELECT 1 WHERE ? = 1\n")
    with pytest.raises(ConfigFileError) as info:
        SQLiteBackend("t", str(path))
    assert str(info.value) == f"{path}: missing required key dbpath"
